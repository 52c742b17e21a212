package bench

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// fakeRackStatus answers RackStatus from a list of replies, the last one
// for ever after.
type fakeRackStatus struct {
	ballastpb.UnimplementedAdminServer
	mu      sync.Mutex
	replies []*ballastpb.RackStatusResponse
}

func (f *fakeRackStatus) RackStatus(context.Context, *ballastpb.RackStatusRequest) (*ballastpb.RackStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.replies[0]
	if len(f.replies) > 1 {
		f.replies = f.replies[1:]
	}
	return r, nil
}

func serveRackStatus(t *testing.T, replies ...*ballastpb.RackStatusResponse) [][]string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	ballastpb.RegisterAdminServer(s, &fakeRackStatus{replies: replies})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return [][]string{{l.Addr().String()}}
}

func rackStatus(dirty uint64, sleds int, unreachable ...string) *ballastpb.RackStatusResponse {
	r := &ballastpb.RackStatusResponse{Redundancy: &ballastpb.Redundancy{DirtyBytes: dirty}, UnreachableHeadNodes: unreachable}
	for range sleds {
		r.Sleds = append(r.Sleds, &ballastpb.SledStatus{})
	}
	return r
}

// TestWaitFlushed: the wait ends when the head nodes, every one of them
// answering, report nothing left in their logs; at once when the rack
// has no sleds; and at the timeout, saying how much was left, otherwise.
func TestWaitFlushed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	log := testLogger(t)

	hn := serveRackStatus(t, rackStatus(8<<20, 7), rackStatus(0, 7, "hn2"), rackStatus(0, 7))
	if fw := waitFlushed(ctx, hn, time.Minute, log); fw.Status != FlushDone || fw.DirtyBytes != 0 || fw.WaitedS < 1.5 {
		t.Errorf("flushed: %+v", fw)
	}

	hn = serveRackStatus(t, rackStatus(8<<20, 0))
	if fw := waitFlushed(ctx, hn, time.Minute, log); fw.Status != FlushNoSleds || !strings.Contains(fw.Note, "no sleds") {
		t.Errorf("no sleds: %+v", fw)
	}

	hn = serveRackStatus(t, rackStatus(3<<20, 7))
	fw := waitFlushed(ctx, hn, 1500*time.Millisecond, log)
	if fw.Status != FlushTimedOut || fw.DirtyBytes != 3<<20 || !strings.Contains(fw.Note, "3.0 MiB of volume data was still in the head nodes' logs") {
		t.Errorf("timed out: %+v", fw)
	}
}
