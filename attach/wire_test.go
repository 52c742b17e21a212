package attach

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// fakeFramed is a head node that speaks only the framed protocol, for the
// transport's tests: it answers every request with handle, and pings with
// pongs while answerPings says so.
type fakeFramed struct {
	addr        string
	handle      func(f blockwire.Frame, data []byte) (blockwire.Frame, []byte)
	answerPings atomic.Bool
	pings       atomic.Int32
}

func startFakeFramed(t *testing.T, handle func(f blockwire.Frame, data []byte) (blockwire.Frame, []byte)) *fakeFramed {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeFramed{addr: l.Addr().String(), handle: handle}
	s.answerPings.Store(true)
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				s.serve(c)
			}()
		}
	}()
	return s
}

func (s *fakeFramed) serve(c net.Conn) {
	var pre [blockwire.PreambleBytes]byte
	if _, err := io.ReadFull(c, pre[:]); err != nil {
		return
	}
	c.Write(blockwire.AppendPreamble(nil))
	send, recv := blockwire.NewSender(c), blockwire.NewReader(c, 64<<10)
	for {
		var f blockwire.Frame
		if err := recv.Next(&f); err != nil {
			return
		}
		data := make([]byte, f.DataLen)
		if err := recv.ReadData(data); err != nil {
			return
		}
		if f.Kind == blockwire.KindPing {
			s.pings.Add(1)
			if s.answerPings.Load() {
				send.Send(&blockwire.Frame{Kind: blockwire.KindPong, ID: f.ID}, nil)
			}
			continue
		}
		r, rdata := s.handle(f, data)
		send.Send(&r, rdata)
	}
}

// memDisk answers reads and writes from memory.
func memDisk() func(f blockwire.Frame, data []byte) (blockwire.Frame, []byte) {
	var mu sync.Mutex
	disk := make([]byte, 1<<20)
	return func(f blockwire.Frame, data []byte) (blockwire.Frame, []byte) {
		mu.Lock()
		defer mu.Unlock()
		r := blockwire.Frame{Kind: blockwire.KindReply, ID: f.ID}
		switch {
		case f.Op == blockwire.OpFlush:
		case f.Offset+max(f.Length, uint64(len(data))) > uint64(len(disk)):
			r.Status, r.Error = blockwire.StatusOutOfRange, "past the end"
		case f.Op == blockwire.OpWrite:
			copy(disk[f.Offset:], data)
		case f.Op == blockwire.OpRead:
			out := bytes.Clone(disk[f.Offset : f.Offset+f.Length])
			r.DataLen = len(out)
			return r, out
		case f.Op == blockwire.OpTrim:
			r.Status, r.Error = blockwire.StatusFenced, "fenced: "+f.Host
		}
		return r, nil
	}
}

// openFramed returns a stream over a framed connection to s.
func openFramed(t *testing.T, s *fakeFramed, timing wireTiming) *ioStream {
	t.Helper()
	conn, err := rpc.DialPaths([]string{s.addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ft, err := dialFramed(context.Background(), conn, timing)
	if err != nil {
		t.Fatal(err)
	}
	st := newIOStream(ft)
	t.Cleanup(func() { st.close(errors.New("test over")) })
	return st
}

// Requests from many goroutines over one framed connection get their own
// replies, statuses and error texts as the head node gave them; a request
// that cannot be framed is answered INVALID without harming the stream.
func TestFramedTransportRoundTrips(t *testing.T) {
	s := startFakeFramed(t, memDisk())
	st := openFramed(t, s, wireTiming{time: time.Minute, timeout: time.Minute})
	v := &Volume{client: &Client{}, name: "v", size: 1 << 20, stream: st, primary: []string{s.addr}}
	dev := NewDevice(v)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g)}, 4096)
			off := uint64(g) * 4096
			for range 50 {
				if err := dev.WriteAt(ctx, buf, off, false); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, 4096)
				if err := dev.ReadAt(ctx, got, off); err != nil || !bytes.Equal(got, buf) {
					t.Errorf("read back at %d: %v", off, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := dev.ReadAt(ctx, make([]byte, 10), 1<<20); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("read past the end: %v", err)
	}
	v.session.Host = "h9"
	if err := dev.Trim(ctx, 0, 4096); !errors.Is(err, blockdev.ErrNotPermitted) || !strings.Contains(err.Error(), "fenced: h9") {
		t.Errorf("fenced trim: %v", err)
	}
	r, err := st.roundTrip(ctx, &ballastpb.IORequest{Id: 1, Op: 42})
	if err != nil || r.Status != ballastpb.IOStatus_IO_STATUS_INVALID {
		t.Errorf("request of an unknown op: %+v, %v", r, err)
	}
	if err := dev.Flush(ctx); err != nil {
		t.Errorf("flush after the invalid request: %v", err)
	}
}

// A framed connection pings while quiet and stays up while the head node
// answers; when it stops answering, the connection ends within the
// timeout, as gRPC's keepalive would end a stream.
func TestFramedKeepalive(t *testing.T) {
	s := startFakeFramed(t, memDisk())
	st := openFramed(t, s, wireTiming{time: 50 * time.Millisecond, timeout: 50 * time.Millisecond})
	time.Sleep(400 * time.Millisecond)
	if n := s.pings.Load(); n < 2 {
		t.Fatalf("%d pings in 400 ms of quiet", n)
	}
	select {
	case <-st.done:
		t.Fatalf("the stream ended while the head node answered its pings: %v", st.err)
	default:
	}
	s.answerPings.Store(false)
	select {
	case <-st.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived a head node that stopped answering")
	}
	if !strings.Contains(st.err.Error(), "did not answer a ping") {
		t.Errorf("the stream ended with %v", st.err)
	}
}

// oldHeadNode is a head node from before the framed protocol: gRPC only,
// with the admin call a client opens a volume with and BlockIO.
type oldHeadNode struct {
	ballastpb.UnimplementedAdminServer
	ballastpb.UnimplementedBlockIOServer
	addr    string
	streams atomic.Int32
}

func (h *oldHeadNode) GetVolume(ctx context.Context, req *ballastpb.GetVolumeRequest) (*ballastpb.GetVolumeResponse, error) {
	return &ballastpb.GetVolumeResponse{
		Volume:   &ballastpb.Volume{Id: 5, Name: req.Name, SizeBytes: 1 << 20, Primary: "hn1"},
		Replicas: []*ballastpb.HeadNode{{Id: "hn1", Addresses: []string{h.addr}}},
	}, nil
}

func (h *oldHeadNode) IO(stream ballastpb.BlockIO_IOServer) error {
	h.streams.Add(1)
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		if err := stream.Send(&ballastpb.IOReply{Id: req.Id}); err != nil {
			return err
		}
	}
}

// Against a head node that does not speak the framed protocol, block I/O
// falls back to gRPC, saying so once.
func TestFallbackToGRPC(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &oldHeadNode{addr: l.Addr().String()}
	srv := rpc.NewServer()
	ballastpb.RegisterAdminServer(srv, h)
	ballastpb.RegisterBlockIOServer(srv, h)
	go srv.Serve(l)
	defer srv.Stop()

	var logs syncBuffer
	c := &Client{HeadNodes: [][]string{{h.addr}}, Logger: slog.New(slog.NewTextHandler(&logs, nil)), RequestTimeout: 20 * time.Second}
	defer c.Close()
	ctx := context.Background()
	for range 2 {
		v, err := c.OpenVolume(ctx, "old")
		if err != nil {
			t.Fatal(err)
		}
		if err := NewDevice(v).WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
	if n := h.streams.Load(); n != 2 {
		t.Errorf("%d gRPC streams, want one per volume opened", n)
	}
	if got := strings.Count(logs.String(), "falls back to gRPC"); got != 1 {
		t.Errorf("%d log lines of the fallback, want 1:\n%s", got, logs.String())
	}
}

// With IOWire grpc the client does not try the framed protocol.
func TestIOWireGRPC(t *testing.T) {
	if _, err := ParseIOWire("udp"); err == nil {
		t.Error("an unknown protocol parsed")
	}
	if w, err := ParseIOWire(""); err != nil || w != IOWireFramed {
		t.Errorf("the default protocol: %q, %v", w, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &oldHeadNode{addr: l.Addr().String()}
	srv := rpc.NewServer()
	ballastpb.RegisterAdminServer(srv, h)
	ballastpb.RegisterBlockIOServer(srv, h)
	go srv.Serve(l)
	defer srv.Stop()
	var logs syncBuffer
	c := &Client{HeadNodes: [][]string{{h.addr}}, IOWire: IOWireGRPC, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	defer c.Close()
	v, err := c.OpenVolume(context.Background(), "old")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := NewDevice(v).Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 0 {
		t.Errorf("logged %q", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Len()
}

// A flush goes to the head node only until it has acknowledged a write of
// the session (the first flush of a host taking a volume over moves the
// attachment); after that every write that returned is durable on both
// replicas already, and the flush is answered at once.
func TestFlushAfterAnAcknowledgedWriteStaysLocal(t *testing.T) {
	var flushes atomic.Int32
	disk := memDisk()
	s := startFakeFramed(t, func(f blockwire.Frame, data []byte) (blockwire.Frame, []byte) {
		if f.Op == blockwire.OpFlush {
			flushes.Add(1)
		}
		return disk(f, data)
	})
	st := openFramed(t, s, wireTiming{time: time.Minute, timeout: time.Minute})
	v := &Volume{client: &Client{}, name: "v", size: 1 << 20, stream: st, primary: []string{s.addr}}
	dev := NewDevice(v)
	ctx := context.Background()
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := flushes.Load(); n != 1 {
		t.Fatalf("%d flushes reached the head node before any write, want 1", n)
	}
	// A write the head node refuses proves nothing durable.
	if err := dev.WriteAt(ctx, make([]byte, 4096), 2<<20, false); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	if err := dev.Flush(ctx); err != nil || flushes.Load() != 2 {
		t.Fatalf("flush after a refused write: %v, %d reached the head node, want 2", err, flushes.Load())
	}
	if err := dev.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := dev.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := flushes.Load(); n != 2 {
		t.Fatalf("%d flushes reached the head node after an acknowledged write, want still 2", n)
	}
}
