package headnode

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A cut's hold waits for the writes admitted before it, holds the writes
// that come after until it is let go, and refuses a hold that arrives
// after its cut was let go or while another cut holds.
func TestCutHold(t *testing.T) {
	h := newCutHold()
	ctx := context.Background()
	exit, err := h.enter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() { held <- h.hold(ctx, 7) }()
	select {
	case err := <-held:
		t.Fatalf("the hold returned (%v) with a write still in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	// A write that comes now waits.
	entered := make(chan func(), 1)
	go func() {
		exit, err := h.enter(ctx)
		if err != nil {
			t.Error(err)
		}
		entered <- exit
	}()
	exit()
	if err := <-held; err != nil {
		t.Fatalf("hold: %v", err)
	}
	select {
	case <-entered:
		t.Fatal("a write got through a hold")
	case <-time.After(50 * time.Millisecond):
	}
	if !h.holding(7) {
		t.Fatal("not holding cut 7")
	}
	if err := h.hold(ctx, 8); !errors.Is(err, errCutOver) {
		t.Fatalf("a second cut's hold: %v, want errCutOver", err)
	}
	if err := h.hold(ctx, 7); err != nil {
		t.Fatalf("a repeated hold of the same cut: %v", err)
	}
	if !h.release(7) {
		t.Fatal("release of the holding cut said no")
	}
	(<-entered)()
	if err := h.hold(ctx, 7); !errors.Is(err, errCutOver) {
		t.Fatalf("a hold after its cut was let go: %v, want errCutOver", err)
	}
	// A cut let go before its hold arrives is refused too.
	h.release(9)
	if err := h.hold(ctx, 9); !errors.Is(err, errCutOver) {
		t.Fatalf("a late hold: %v, want errCutOver", err)
	}

	// A hold whose caller gives up while writes drain is let go.
	exit, _ = h.enter(ctx)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err = h.hold(cctx, 10)
	cancel()
	if err == nil || h.holding(10) {
		t.Fatalf("a hold whose drain timed out: %v, still holding %v", err, h.holding(10))
	}
	exit()

	// A write held past its own deadline fails; close lets everything go.
	if err := h.hold(ctx, 11); err != nil {
		t.Fatal(err)
	}
	cctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = h.enter(cctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a held write past its deadline: %v", err)
	}
	h.close()
	exit, err = h.enter(ctx)
	if err != nil {
		t.Fatalf("enter after close: %v", err)
	}
	exit()
	if err := h.hold(ctx, 12); !errors.Is(err, errCutOver) {
		t.Fatalf("hold after close: %v, want errCutOver", err)
	}
}
