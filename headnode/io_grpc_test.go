package headnode

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// slowBackend stands for a primary that has stopped acknowledging: every
// request waits until release is closed. It records the bytes of the
// requests it holds at once.
type slowBackend struct {
	release     chan struct{}
	calls       atomic.Int32
	held, peak  atomic.Int64
	holdingReqs atomic.Int32
}

func (b *slowBackend) handle(ctx context.Context, req *ballastpb.IORequest) *ballastpb.IOReply {
	b.calls.Add(1)
	n := ioCost(req)
	h := b.held.Add(n)
	b.holdingReqs.Add(1)
	for p := b.peak.Load(); h > p && !b.peak.CompareAndSwap(p, h); p = b.peak.Load() {
	}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	b.held.Add(-n)
	b.holdingReqs.Add(-1)
	return &ballastpb.IOReply{Id: req.Id}
}

// startIOServer serves BlockIO with cfg's bounds over the backend, with
// the options every Ballast server has, and returns a client connection
// that may send messages larger than the servers accept.
func startIOServer(t *testing.T, cfg IOConfig, b *slowBackend) (*blockIOServer, *grpc.ClientConn) {
	t.Helper()
	s := newBlockIOServer(cfg, slog.Default(), b.handle)
	srv := grpc.NewServer(rpc.ServerOptions()...)
	ballastpb.RegisterBlockIOServer(srv, s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return s, conn
}

// flood sends n writes of size bytes on a new stream and counts the sends
// that returned; the replies are counted by the returned function's
// result once it has read them all.
func flood(t *testing.T, ctx context.Context, conn *grpc.ClientConn, n, size int, sent *atomic.Int32) func() int {
	t.Helper()
	st, err := ballastpb.NewBlockIOClient(conn).IO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size) // every request shares it: the test holds 1 copy
	go func() {
		for i := range n {
			if err := st.Send(&ballastpb.IORequest{Id: uint64(i), Op: ballastpb.IOOp_IO_OP_WRITE, Data: data}); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	return func() int {
		for i := range n {
			if _, err := st.Recv(); err != nil {
				return i
			}
		}
		return n
	}
}

// A flood of large writes on one stream against a backend that does not
// answer: the head node holds no more than the stream's bound (plus the
// one request waiting for room), stops receiving, and the agent's sends
// block; once the backend answers, every write is.
func TestIOStreamBoundsBytesHeld(t *testing.T) {
	cfg := IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 8 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}
	b := &slowBackend{release: make(chan struct{})}
	s, conn := startIOServer(t, cfg, b)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const n, size = 100, 1 << 20
	var sent atomic.Int32
	replies := flood(t, ctx, conn, n, size, &sent)
	waitCond(t, func() bool { return b.held.Load() == 8<<20 }, "8 MiB of writes in the backend")
	time.Sleep(200 * time.Millisecond) // time for more to arrive, if they could
	if p := b.peak.Load(); p > 8<<20 {
		t.Errorf("the backend held %d bytes at once, over the stream's bound of 8 MiB", p)
	}
	st := s.stats()
	if st.Node.PeakBytes > 8<<20 || st.Node.Bytes != 8<<20 || st.PeakHeldBytes > 9<<20 || st.WaitingBytes != 1<<20 {
		t.Errorf("stats %+v: want 8 MiB admitted, 1 MiB waiting, never more than 9 MiB held", st)
	}
	if k := sent.Load(); k >= n {
		t.Errorf("all %d sends returned while the head node held 8 MiB: no backpressure", k)
	}
	close(b.release)
	if got := replies(); got != n {
		t.Fatalf("%d replies of %d", got, n)
	}
	// A request's bytes are let go just after its reply is sent.
	waitCond(t, func() bool { return s.stats().Node.Bytes == 0 }, "every request's bytes let go")
	if st := s.stats(); st.Node.PeakBytes > 8<<20 || st.PeakHeldBytes > 9<<20 {
		t.Errorf("stats after the flood %+v", st)
	}
}

// Two streams each within their own bound still share the node's.
func TestIONodeBoundsEveryStream(t *testing.T) {
	cfg := IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 8 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 12 << 20}
	b := &slowBackend{release: make(chan struct{})}
	s, conn := startIOServer(t, cfg, b)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var sent atomic.Int32
	var wg sync.WaitGroup
	for range 2 {
		replies := flood(t, ctx, conn, 30, 1<<20, &sent)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := replies(); got != 30 {
				t.Errorf("%d replies of 30", got)
			}
		}()
	}
	waitCond(t, func() bool { return b.held.Load() == 12<<20 }, "12 MiB of writes in the backend")
	time.Sleep(200 * time.Millisecond)
	if p := b.peak.Load(); p > 12<<20 {
		t.Errorf("the backend held %d bytes at once, over the node's bound of 12 MiB", p)
	}
	if st := s.stats(); st.Node.PeakBytes > 12<<20 {
		t.Errorf("stats %+v", st)
	}
	close(b.release)
	wg.Wait()
}

// A message over the per-message cap ends the stream with
// ResourceExhausted before the backend sees it.
func TestIOMessageOverCapRefused(t *testing.T) {
	b := &slowBackend{release: make(chan struct{})}
	close(b.release)
	cfg := IOConfig{}
	cfg.EnsureDefaults()
	_, conn := startIOServer(t, cfg, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := ballastpb.NewBlockIOClient(conn).IO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE, Data: make([]byte, rpc.MaxMessageBytes+1)})
	_, err = st.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream ended with %v, want ResourceExhausted", err)
	}
	if c := b.calls.Load(); c != 0 {
		t.Errorf("the backend saw %d requests", c)
	}
}

func TestIOConfigValidate(t *testing.T) {
	var c IOConfig
	c.EnsureDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c.StreamMaxBytes = 1 << 20 // below one 32 MiB request
	if err := c.Validate(); err == nil {
		t.Error("a stream bound below one request accepted")
	}
}

func waitCond(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
