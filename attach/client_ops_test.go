package attach

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestOpTrackerKnowsTheOldestWithoutAnAnswer(t *testing.T) {
	var tr opTracker
	step := func(wantOp, wantOldest uint64) {
		t.Helper()
		op, oldest := tr.start()
		if op != wantOp || oldest != wantOldest {
			t.Fatalf("start: op %d oldest %d, want %d and %d", op, oldest, wantOp, wantOldest)
		}
	}
	step(1, 1)
	step(2, 1)
	step(3, 1)
	tr.finish(2)
	step(4, 1) // 1 still waits
	tr.finish(1)
	step(5, 3) // 2 answered already
	tr.finish(3)
	tr.finish(4)
	tr.finish(5)
	step(6, 6) // nothing waits but the new one
}

func TestWritersAreNamedApart(t *testing.T) {
	seen := map[uint64]bool{}
	for range 100 {
		w := newWriter()
		if w == 0 || seen[w] {
			t.Fatalf("writer name %d repeats or is 0", w)
		}
		seen[w] = true
	}
}

// breakingHeadNode drops the stream of the first write it receives, with
// no answer, as a head node that died or a network that broke would.
type breakingHeadNode struct {
	oldHeadNode
	mu     sync.Mutex
	writes []*ballastpb.IORequest
}

func (h *breakingHeadNode) IO(stream ballastpb.BlockIO_IOServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		if req.Op == ballastpb.IOOp_IO_OP_WRITE {
			h.mu.Lock()
			h.writes = append(h.writes, req)
			first := len(h.writes) == 1
			h.mu.Unlock()
			if first {
				return errors.New("stream broken")
			}
		}
		if err := stream.Send(&ballastpb.IOReply{Id: req.Id}); err != nil {
			return err
		}
	}
}

// A write sent again after its stream broke carries its identity and says
// it is a resend; a first send never does (the head node looks for an
// earlier send only then).
func TestResendsAreMarked(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &breakingHeadNode{oldHeadNode: oldHeadNode{addr: l.Addr().String()}}
	srv := rpc.NewServer()
	ballastpb.RegisterAdminServer(srv, h)
	ballastpb.RegisterBlockIOServer(srv, h)
	go srv.Serve(l)
	defer srv.Stop()
	c := &Client{HeadNodes: [][]string{{h.addr}}, IOWire: IOWireGRPC, RequestTimeout: 20 * time.Second,
		Logger: slog.New(slog.DiscardHandler)}
	defer c.Close()
	ctx := context.Background()
	v, err := c.OpenVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dev := NewDevice(v)
	for range 2 {
		if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.writes) != 3 {
		t.Fatalf("%d write requests reached the head node, want 3", len(h.writes))
	}
	first, again, next := h.writes[0], h.writes[1], h.writes[2]
	if first.Client == 0 || first.Resend || !again.Resend || again.Client != first.Client || again.WriteOp != first.WriteOp {
		t.Fatalf("first send %v, its resend %v", first, again)
	}
	if next.Resend || next.WriteOp == first.WriteOp {
		t.Fatalf("the next write %v", next)
	}
}
