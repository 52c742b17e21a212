package nvmetcp

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/inflight"
)

// Connections past MaxConnections get their Connect refused with
// Controller Busy, while the controller already connected keeps working;
// once it is gone, a new host connects.
func TestConnectionLimitRefusesExcess(t *testing.T) {
	tt := startTarget(t, func(tg *Target) { tg.MaxConnections = 3 })
	h1 := tt.connect(t, testNQN, HostOptions{IOQueues: 2, KATO: 5 * time.Second}) // admin + 2 I/O queues
	ctx := ctxT(t)

	_, err := Connect(ctx, tt.addr, testNQN2, HostOptions{KATO: 5 * time.Second})
	expectStatus(t, err, statusConnectControllerBusy)
	waitFor(t, "the refusal logged", func() bool {
		return logContains(tt, "NVMe/TCP connection refused: too many connections") && logContains(tt, "limit=3")
	})
	if s := tt.t.Stats(); s.Refused != 1 || s.Connections != 3 {
		t.Errorf("stats %+v, want 3 connections and 1 refused", s)
	}

	data := pattern(3, 64<<10)
	if err := h1.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatalf("write on the first controller: %v", err)
	}
	got := make([]byte, len(data))
	if err := h1.ReadAt(ctx, got, 0); err != nil || string(got) != string(data) {
		t.Fatalf("read back on the first controller: %v", err)
	}

	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first controller's queues gone", func() bool { return tt.t.Stats().Connections == 0 })
	tt.connect(t, testNQN2, HostOptions{IOQueues: 2, KATO: 5 * time.Second})
}

// A Limit shared by several controllers bounds their data in flight
// together: R2T writes from two hosts against a stalled device hold no
// more than the bound; the rest wait, and all complete once it moves.
func TestSharedLimitBoundsEveryConnection(t *testing.T) {
	shared := inflight.New(0, 2<<20)
	tt := startTarget(t, func(tg *Target) { tg.Shared = shared })
	release := make(chan struct{})
	var running, peak atomic.Int32
	tt.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		if op != "write" {
			return nil
		}
		n := running.Add(1)
		defer running.Add(-1)
		for m := peak.Load(); n > m && !peak.CompareAndSwap(m, n); m = peak.Load() {
		}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for i := range 2 {
		h := tt.connect(t, testNQN, HostOptions{IOQueues: 1, KATO: 5 * time.Second})
		for j := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				off := uint64(i*6+j) % 8 * (1 << 20)
				if err := h.WriteAt(ctx, pattern(byte(j), 1<<20), off, false); err != nil {
					t.Errorf("write: %v", err)
				}
			}()
		}
	}
	waitFor(t, "two writes in the device", func() bool { return running.Load() >= 2 })
	time.Sleep(100 * time.Millisecond) // more would start now, if they could
	if n := peak.Load(); n != 2 {
		t.Errorf("%d writes of 1 MiB in the device at once, want 2 (2 MiB shared)", n)
	}
	if s := shared.Stats(); s.PeakBytes > 2<<20 || s.Bytes != 2<<20 {
		t.Errorf("shared stats %+v, want 2 MiB in flight at most", s)
	}
	close(release)
	wg.Wait()
	// A buffer returns once its response is written: just after the host
	// has it.
	waitFor(t, "every buffer returned", func() bool { return shared.Stats().Bytes == 0 })
	if s := shared.Stats(); s.PeakBytes > 2<<20 {
		t.Errorf("shared stats after the writes %+v", s)
	}
}
