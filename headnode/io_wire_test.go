package headnode

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// startSharedServer serves BlockIO over gRPC (with the health service, as
// every Ballast server) and over the framed protocol on one address, as a
// head node does, with cfg's bounds over handle, and framed connections
// watched every tick.
func startSharedServer(t *testing.T, cfg IOConfig, tick time.Duration, handle func(context.Context, *ballastpb.IORequest) *ballastpb.IOReply) (*blockIOServer, string) {
	t.Helper()
	s := newBlockIOServer(cfg, slog.Default(), handle)
	srv := rpc.NewServer()
	ballastpb.RegisterBlockIOServer(srv, s)
	wire := newWireServer(s, slog.Default())
	wire.tick = tick
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(newWireListener(l, wire, nil, slog.Default()))
	}()
	t.Cleanup(func() {
		srv.Stop()
		wire.close()
		<-served
		wire.wait()
	})
	return s, l.Addr().String()
}

// wireClient is a bare framed connection for tests.
type wireClient struct {
	conn net.Conn
	send *blockwire.Sender
	recv *blockwire.Reader
}

func dialWire(t *testing.T, addr string) *wireClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(blockwire.AppendPreamble(nil)); err != nil {
		t.Fatal(err)
	}
	var answer [blockwire.PreambleBytes]byte
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		t.Fatalf("preamble answer: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	if v, err := blockwire.ParsePreamble(answer[:]); err != nil || v != blockwire.Version {
		t.Fatalf("preamble answer %q: %v", answer, err)
	}
	return &wireClient{conn: c, send: blockwire.NewSender(c), recv: blockwire.NewReader(c, 64<<10)}
}

// reply reads the next reply (skipping pongs unless asked for) and its data.
func (c *wireClient) reply() (blockwire.Frame, []byte, error) {
	var f blockwire.Frame
	if err := c.recv.Next(&f); err != nil {
		return f, nil, err
	}
	data := make([]byte, f.DataLen)
	err := c.recv.ReadData(data)
	return f, data, err
}

func echoHandler(ctx context.Context, req *ballastpb.IORequest) *ballastpb.IOReply {
	switch req.Op {
	case ballastpb.IOOp_IO_OP_READ:
		return &ballastpb.IOReply{Id: req.Id, Data: make([]byte, req.Length)}
	case ballastpb.IOOp_IO_OP_TRIM:
		return &ballastpb.IOReply{Id: req.Id, Status: ballastpb.IOStatus_IO_STATUS_FENCED, Error: "fenced: " + req.Host}
	}
	return &ballastpb.IOReply{Id: req.Id}
}

// The framed protocol's op and status numbers are the protobuf enums'
// (the server converts by number).
func TestWireEnumsMatchProtobuf(t *testing.T) {
	ops := map[blockwire.Op]ballastpb.IOOp{
		blockwire.OpRead: ballastpb.IOOp_IO_OP_READ, blockwire.OpWrite: ballastpb.IOOp_IO_OP_WRITE,
		blockwire.OpFlush: ballastpb.IOOp_IO_OP_FLUSH, blockwire.OpTrim: ballastpb.IOOp_IO_OP_TRIM,
		blockwire.OpWriteZeroes: ballastpb.IOOp_IO_OP_WRITE_ZEROES, blockwire.OpBlockStatus: ballastpb.IOOp_IO_OP_BLOCK_STATUS,
	}
	for w, p := range ops {
		if int32(w) != int32(p) {
			t.Errorf("op %d is %v in protobuf", w, p)
		}
	}
	if len(ops) != len(ballastpb.IOOp_name)-1 { // but UNSPECIFIED
		t.Errorf("protobuf has ops the framed protocol lacks: %v", ballastpb.IOOp_name)
	}
	statuses := map[blockwire.Status]ballastpb.IOStatus{
		blockwire.StatusOK: ballastpb.IOStatus_IO_STATUS_OK, blockwire.StatusIOError: ballastpb.IOStatus_IO_STATUS_IO_ERROR,
		blockwire.StatusOutOfRange: ballastpb.IOStatus_IO_STATUS_OUT_OF_RANGE, blockwire.StatusInvalid: ballastpb.IOStatus_IO_STATUS_INVALID,
		blockwire.StatusNotPrimary: ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, blockwire.StatusNoSuchVolume: ballastpb.IOStatus_IO_STATUS_NO_SUCH_VOLUME,
		blockwire.StatusNoSpace: ballastpb.IOStatus_IO_STATUS_NO_SPACE, blockwire.StatusFenced: ballastpb.IOStatus_IO_STATUS_FENCED,
	}
	for w, p := range statuses {
		if int32(w) != int32(p) {
			t.Errorf("status %d is %v in protobuf", w, p)
		}
	}
	if len(statuses) != len(ballastpb.IOStatus_name) {
		t.Errorf("protobuf has statuses the framed protocol lacks: %v", ballastpb.IOStatus_name)
	}
	// One it does not know goes out as an I/O error, not nowhere.
	f := replyFrame(&ballastpb.IOReply{Id: 3, Status: 99, Error: "new"})
	if f.Status != blockwire.StatusIOError || f.ID != 3 {
		t.Errorf("unknown status sent as %+v", f.Frame)
	}
}

// gRPC and framed clients share one port, at once; a client that connects
// and sends nothing holds up neither; garbage and an unknown version are
// closed.
func TestWireListenerSharesThePort(t *testing.T) {
	_, addr := startSharedServer(t, IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 64 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}, time.Second, echoHandler)

	silent, err := net.Dial("tcp", addr) // says nothing, for the whole test
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := net.Dial("tcp", addr) // says half a preamble
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.Write([]byte("BLST"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(2)
		go func() { // gRPC: the health service and a BlockIO stream
			defer wg.Done()
			if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Errorf("gRPC health check: %v", err)
				return
			}
			st, err := ballastpb.NewBlockIOClient(cc).IO(ctx)
			if err != nil {
				t.Errorf("gRPC stream: %v", err)
				return
			}
			for i := range 20 {
				if err := st.Send(&ballastpb.IORequest{Id: uint64(i), Op: ballastpb.IOOp_IO_OP_READ, Length: 4096}); err != nil {
					t.Errorf("gRPC send: %v", err)
					return
				}
				r, err := st.Recv()
				if err != nil || r.Id != uint64(i) || len(r.Data) != 4096 {
					t.Errorf("gRPC reply %d: %v", i, err)
					return
				}
			}
		}()
		go func() { // framed
			defer wg.Done()
			c := dialWire(t, addr)
			for i := range 20 {
				id := uint64(g*100 + i)
				if err := c.send.Send(&blockwire.Frame{Kind: blockwire.KindRequest, ID: id, Op: blockwire.OpRead, Length: 4096}, nil); err != nil {
					t.Errorf("framed send: %v", err)
					return
				}
				f, data, err := c.reply()
				if err != nil || f.ID != id || len(data) != 4096 {
					t.Errorf("framed reply %d: %+v, %v", id, f, err)
					return
				}
			}
		}()
	}
	wg.Wait()

	for _, c := range []struct {
		name, first string
		answer      bool
	}{
		{"garbage", "GET / HTTP/1.1\r\n\r\n", false},
		{"a version to come", "BLSTIO\x02\x00", true},
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(c.first))
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn)
		conn.Close()
		// Closed with bytes unread, the server's end resets.
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: not closed: %v", c.name, err)
		}
		if want := string(blockwire.AppendPreamble(nil)); c.answer && string(got) != want || !c.answer && len(got) > 0 {
			t.Errorf("%s: answered %q", c.name, got)
		}
	}
}

// Pings are answered at once, requests with their replies' statuses and
// error texts as the handler gave them, and a client that sends a reply is
// cut off.
func TestWirePingsStatusesAndMisbehaviour(t *testing.T) {
	_, addr := startSharedServer(t, IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 64 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}, time.Second, echoHandler)
	c := dialWire(t, addr)
	if err := c.send.Send(&blockwire.Frame{Kind: blockwire.KindPing, ID: 77}, nil); err != nil {
		t.Fatal(err)
	}
	if f, _, err := c.reply(); err != nil || f.Kind != blockwire.KindPong || f.ID != 77 {
		t.Fatalf("ping answered with %+v, %v", f, err)
	}
	c.send.Send(&blockwire.Frame{Kind: blockwire.KindRequest, ID: 1, Op: blockwire.OpTrim, Length: 1, Host: "h7"}, nil)
	if f, _, err := c.reply(); err != nil || f.Status != blockwire.StatusFenced || f.Error != "fenced: h7" {
		t.Fatalf("trim answered with %+v, %v", f, err)
	}
	c.send.Send(&blockwire.Frame{Kind: blockwire.KindReply, ID: 2}, nil)
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.reply(); !errors.Is(err, io.EOF) {
		t.Fatalf("after a reply from the client: %v, want the connection closed", err)
	}
}

// floodWire sends n writes of size bytes on a new framed connection and
// returns a function that reads the replies and returns how many came.
func floodWire(t *testing.T, addr string, n, size int, sent *atomic.Int32) func() int {
	t.Helper()
	c := dialWire(t, addr)
	data := make([]byte, size)
	go func() {
		for i := range n {
			if err := c.send.Send(&blockwire.Frame{Kind: blockwire.KindRequest, ID: uint64(i), Op: blockwire.OpWrite, DataLen: size}, data); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	return func() int {
		for i := range n {
			if _, _, err := c.reply(); err != nil {
				return i
			}
		}
		return n
	}
}

// As TestIOStreamBoundsBytesHeld, over a framed connection: the head node
// admits no more than the connection's bound, reads no more data than it
// admits, and the agent's sends block; once the backend answers, every
// write is.
func TestWireConnBoundsBytesHeld(t *testing.T) {
	cfg := IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 8 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}
	b := &slowBackend{release: make(chan struct{})}
	s, addr := startSharedServer(t, cfg, time.Second, b.handle)
	const n, size = 100, 1 << 20
	var sent atomic.Int32
	replies := floodWire(t, addr, n, size, &sent)
	waitCond(t, func() bool { return b.held.Load() == 8<<20 }, "8 MiB of writes in the backend")
	time.Sleep(200 * time.Millisecond) // time for more to arrive, if they could
	if p := b.peak.Load(); p > 8<<20 {
		t.Errorf("the backend held %d bytes at once, over the connection's bound of 8 MiB", p)
	}
	st := s.stats()
	if st.Node.PeakBytes > 8<<20 || st.Node.Bytes != 8<<20 || st.WaitingBytes != 0 {
		t.Errorf("stats %+v: want 8 MiB admitted, nothing read beyond", st)
	}
	if k := sent.Load(); k >= n {
		t.Errorf("all %d sends returned while the head node held 8 MiB: no backpressure", k)
	}
	close(b.release)
	if got := replies(); got != n {
		t.Fatalf("%d replies of %d", got, n)
	}
	// A reply may reach the client just before its request is released.
	waitCond(t, func() bool { return s.stats().Node.Bytes == 0 }, "every request released")
	if st := s.stats(); st.Node.PeakBytes > 8<<20 {
		t.Errorf("stats after the flood %+v", st)
	}
}

// The node's bound is one for gRPC streams and framed connections
// together.
func TestWireAndGRPCShareTheNodeBound(t *testing.T) {
	cfg := IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 8 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 12 << 20}
	b := &slowBackend{release: make(chan struct{})}
	s, addr := startSharedServer(t, cfg, time.Second, b.handle)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var sent atomic.Int32
	grpcReplies := flood(t, ctx, conn, 30, 1<<20, &sent)
	wireReplies := floodWire(t, addr, 30, 1<<20, &sent)
	waitCond(t, func() bool { return b.held.Load() == 12<<20 }, "12 MiB of writes in the backend")
	time.Sleep(200 * time.Millisecond)
	if p := b.peak.Load(); p > 12<<20 {
		t.Errorf("the backend held %d bytes at once, over the node's bound of 12 MiB", p)
	}
	if st := s.stats(); st.Node.PeakBytes > 12<<20 {
		t.Errorf("stats %+v", st)
	}
	close(b.release)
	if g, w := grpcReplies(), wireReplies(); g != 30 || w != 30 {
		t.Fatalf("%d gRPC and %d framed replies of 30 each", g, w)
	}
}

// A connection's requests in flight are bounded by count too, and end
// (their contexts cancelled, their bounds released) when the client goes.
func TestWireConnCountBoundAndClientGone(t *testing.T) {
	cfg := IOConfig{StreamMaxRequests: 4, StreamMaxBytes: 64 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}
	b := &slowBackend{release: make(chan struct{})} // never released: the client's leaving ends them
	s, addr := startSharedServer(t, cfg, 50*time.Millisecond, b.handle)
	c := dialWire(t, addr)
	for i := range 10 {
		c.send.Send(&blockwire.Frame{Kind: blockwire.KindRequest, ID: uint64(i), Op: blockwire.OpFlush}, nil)
	}
	waitCond(t, func() bool { return b.holdingReqs.Load() == 4 }, "4 requests in the backend")
	time.Sleep(100 * time.Millisecond)
	if h := b.holdingReqs.Load(); h != 4 {
		t.Fatalf("%d requests in the backend, over the connection's bound of 4", h)
	}
	c.conn.Close()
	waitCond(t, func() bool { return b.holdingReqs.Load() == 0 && s.stats().Node.Count == 0 }, "the requests to end with the connection")
}

// A framed connection from which nothing comes for wireIdleTicks periods
// while the server waits to read is closed; one that pings is not.
func TestWireSilentConnClosed(t *testing.T) {
	_, addr := startSharedServer(t, IOConfig{StreamMaxRequests: 128, StreamMaxBytes: 64 << 20, NodeMaxRequests: 4096, NodeMaxBytes: 1 << 30}, 50*time.Millisecond, echoHandler)
	silent, pinging := dialWire(t, addr), dialWire(t, addr)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if pinging.send.Send(&blockwire.Frame{Kind: blockwire.KindPing, ID: i}, nil) != nil {
				return
			}
		}
	}()
	silent.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := silent.reply(); !errors.Is(err, io.EOF) {
		t.Fatalf("silent connection: %v, want it closed", err)
	}
	for range 10 {
		pinging.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if f, _, err := pinging.reply(); err != nil || f.Kind != blockwire.KindPong {
			t.Fatalf("pinging connection: %+v, %v", f, err)
		}
	}
}
