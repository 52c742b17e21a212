package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/metadata"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// consume answers tr's RPCs with handle until the test ends.
func consume(t *testing.T, tr *Transport, handle func(raft.RPC)) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case rpc := <-tr.Consumer():
				handle(rpc)
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
}

// answer is a follower that agrees to everything.
func answer(rpc raft.RPC) {
	switch c := rpc.Command.(type) {
	case *raft.AppendEntriesRequest:
		last := c.PrevLogEntry
		if n := len(c.Entries); n > 0 {
			last = c.Entries[n-1].Index
		}
		rpc.Respond(&raft.AppendEntriesResponse{Term: c.Term, LastLog: last, Success: true}, nil)
	case *raft.RequestVoteRequest:
		rpc.Respond(&raft.RequestVoteResponse{Term: c.Term, Granted: true}, nil)
	case *raft.RequestPreVoteRequest:
		rpc.Respond(&raft.RequestPreVoteResponse{Term: c.Term, Granted: true}, nil)
	case *raft.TimeoutNowRequest:
		rpc.Respond(&raft.TimeoutNowResponse{}, nil)
	case *raft.InstallSnapshotRequest:
		n, err := io.Copy(io.Discard, rpc.Reader)
		if err == nil && n != c.Size {
			err = errors.New("short read")
		}
		rpc.Respond(&raft.InstallSnapshotResponse{Term: c.Term, Success: err == nil}, err)
	default:
		rpc.Respond(nil, errors.New("unexpected command"))
	}
}

func vote(tr *Transport, target raft.ServerAddress, term uint64) error {
	var resp raft.RequestVoteResponse
	err := tr.RequestVote("peer", target, &raft.RequestVoteRequest{Term: term}, &resp)
	if err == nil && (!resp.Granted || resp.Term != term) {
		return errors.New("vote not granted")
	}
	return err
}

func heartbeat(tr *Transport, target raft.ServerAddress) error {
	var resp raft.AppendEntriesResponse
	return tr.AppendEntries("peer", target, &raft.AppendEntriesRequest{RPCHeader: testHeader(), Term: 3, Leader: []byte(tr.LocalAddr())}, &resp)
}

func within(t *testing.T, what string, max time.Duration, f func()) {
	t.Helper()
	start := time.Now()
	f()
	if d := time.Since(start); d > max {
		t.Errorf("%s took %v, want at most %v", what, d, max)
	}
}

func TestEveryRPCKind(t *testing.T) {
	a, b := newNode(t, "a", Config{SnapshotChunkBytes: 64 << 10}), newNode(t, "b", Config{})
	ta, tb := a.m.Transport(1, a.addr), b.m.Transport(1, b.addr)
	var snap []byte
	var hbs atomic.Int32
	tb.SetHeartbeatHandler(func(rpc raft.RPC) {
		hbs.Add(1)
		answer(rpc)
	})
	consume(t, tb, func(rpc raft.RPC) {
		if c, ok := rpc.Command.(*raft.InstallSnapshotRequest); ok {
			var buf bytes.Buffer
			n, err := io.Copy(&buf, rpc.Reader)
			snap = buf.Bytes()
			rpc.Respond(&raft.InstallSnapshotResponse{Term: c.Term, Success: err == nil && n == c.Size}, err)
			return
		}
		answer(rpc)
	})

	var ae raft.AppendEntriesResponse
	req := &raft.AppendEntriesRequest{Term: 2, PrevLogEntry: 4, Entries: []*raft.Log{{Index: 5, Data: []byte("x")}}}
	if err := ta.AppendEntries("b", b.addr, req, &ae); err != nil || !ae.Success || ae.LastLog != 5 {
		t.Fatalf("AppendEntries: %v %+v", err, ae)
	}
	if err := heartbeat(ta, b.addr); err != nil || hbs.Load() != 1 {
		t.Fatalf("heartbeat: %v, handler saw %d", err, hbs.Load())
	}
	if err := vote(ta, b.addr, 3); err != nil {
		t.Fatalf("RequestVote: %v", err)
	}
	var pv raft.RequestPreVoteResponse
	if err := ta.RequestPreVote("b", b.addr, &raft.RequestPreVoteRequest{Term: 4}, &pv); err != nil || !pv.Granted {
		t.Fatalf("RequestPreVote: %v %+v", err, pv)
	}
	var tn raft.TimeoutNowResponse
	if err := ta.TimeoutNow("b", b.addr, &raft.TimeoutNowRequest{RPCHeader: testHeader()}, &tn); err != nil {
		t.Fatalf("TimeoutNow: %v", err)
	}
	data := make([]byte, 1<<20+12345)
	_, _ = rand.Read(data)
	var is raft.InstallSnapshotResponse
	sreq := &raft.InstallSnapshotRequest{Term: 5, SnapshotVersion: 1, Size: int64(len(data))}
	if err := ta.InstallSnapshot("b", b.addr, sreq, &is, bytes.NewReader(data)); err != nil || !is.Success {
		t.Fatalf("InstallSnapshot: %v %+v", err, is)
	}
	if !bytes.Equal(snap, data) {
		t.Fatalf("snapshot arrived as %d bytes, differing from the %d sent", len(snap), len(data))
	}
	// A snapshot shorter than announced fails, and the stream is unharmed.
	sreq.Size++
	if err := ta.InstallSnapshot("b", b.addr, sreq, &is, bytes.NewReader(data)); !errors.Is(err, ErrRemote) {
		t.Fatalf("short InstallSnapshot: %v, want ErrRemote", err)
	}
	if err := vote(ta, b.addr, 6); err != nil {
		t.Fatal(err)
	}
	if st := a.m.Stats(); st.StreamsOpened != 1 || len(st.Outbound) != 1 {
		t.Errorf("a's streams: %+v, want one", st)
	}
}

func TestPipelineDeliversInOrder(t *testing.T) {
	a, b := newNode(t, "a", Config{MaxPipelineInFlight: 8}), newNode(t, "b", Config{})
	ta, tb := a.m.Transport(1, a.addr), b.m.Transport(1, b.addr)
	var mu sync.Mutex
	var seen []uint64
	consume(t, tb, func(rpc raft.RPC) {
		if c, ok := rpc.Command.(*raft.AppendEntriesRequest); ok && len(c.Entries) > 0 {
			mu.Lock()
			seen = append(seen, c.Entries[0].Index)
			mu.Unlock()
		}
		answer(rpc)
	})
	p, err := ta.AppendEntriesPipeline("b", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	got := make(chan uint64, n)
	go func() {
		defer close(got)
		for i := 0; i < n; i++ {
			f := <-p.Consumer()
			if f.Error() != nil || !f.Response().Success || f.Response().LastLog != f.Request().Entries[0].Index {
				t.Errorf("future %d: %v %+v", i, f.Error(), f.Response())
				return
			}
			got <- f.Response().LastLog
		}
	}()
	for i := uint64(1); i <= n; i++ {
		req := &raft.AppendEntriesRequest{Term: 1, PrevLogEntry: i - 1, Entries: []*raft.Log{{Index: i, Data: []byte("e")}}}
		if _, err := p.AppendEntries(req, new(raft.AppendEntriesResponse)); err != nil {
			t.Fatal(err)
		}
	}
	next := uint64(1)
	for idx := range got {
		if idx != next {
			t.Fatalf("future for entry %d delivered when %d was due", idx, next)
		}
		next++
	}
	if next != n+1 {
		t.Fatalf("got %d futures, want %d", next-1, n)
	}
	mu.Lock()
	for i, idx := range seen {
		if idx != uint64(i+1) {
			t.Fatalf("raft received entry %d at position %d", idx, i)
		}
	}
	mu.Unlock()
	_ = p.Close()
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1}, new(raft.AppendEntriesResponse)); !errors.Is(err, raft.ErrPipelineShutdown) {
		t.Errorf("AppendEntries after Close: %v", err)
	}
}

func TestUnreachablePeerFailsFast(t *testing.T) {
	a := newNode(t, "a", Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := raft.ServerAddress(lis.Addr().String())
	lis.Close()
	ta := a.m.Transport(1, a.addr)
	within(t, "RequestVote to a closed port", 2*time.Second, func() {
		if err := vote(ta, dead, 1); !errors.Is(err, ErrUnavailable) {
			t.Errorf("got %v, want ErrUnavailable", err)
		}
	})
	within(t, "InstallSnapshot to a closed port", 2*time.Second, func() {
		err := ta.InstallSnapshot("x", dead, &raft.InstallSnapshotRequest{Size: 3}, new(raft.InstallSnapshotResponse), bytes.NewReader([]byte("abc")))
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("got %v, want ErrUnavailable", err)
		}
	})
}

func TestSilentPeerTimesOut(t *testing.T) {
	// A peer that accepts connections and never says a word.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	a := newNode(t, "a", Config{RPCTimeout: 500 * time.Millisecond})
	ta := a.m.Transport(1, a.addr)
	within(t, "RequestVote to a silent peer", 2*time.Second, func() {
		if err := vote(ta, raft.ServerAddress(lis.Addr().String()), 1); !errors.Is(err, ErrTimeout) {
			t.Errorf("got %v, want ErrTimeout", err)
		}
	})
}

func TestUnknownGroup(t *testing.T) {
	a, b := newNode(t, "a", Config{}), newNode(t, "b", Config{})
	ta := a.m.Transport(7, a.addr)
	within(t, "RequestVote to an unknown group", time.Second, func() {
		if err := vote(ta, b.addr, 1); !errors.Is(err, ErrUnknownGroup) {
			t.Errorf("got %v, want ErrUnknownGroup", err)
		}
	})
	err := ta.InstallSnapshot("b", b.addr, &raft.InstallSnapshotRequest{Size: 3}, new(raft.InstallSnapshotResponse), bytes.NewReader([]byte("abc")))
	if !errors.Is(err, ErrUnknownGroup) {
		t.Errorf("InstallSnapshot: got %v, want ErrUnknownGroup", err)
	}
	// Once b starts the group, the same stream carries its traffic.
	consume(t, b.m.Transport(7, b.addr), answer)
	if err := vote(ta, b.addr, 2); err != nil {
		t.Fatal(err)
	}
	// A closed group is unknown again; reopening it works.
	tb := b.m.Transport(7, b.addr)
	_ = tb.Close()
	if err := vote(ta, b.addr, 3); !errors.Is(err, ErrUnknownGroup) {
		t.Errorf("after Close: got %v, want ErrUnknownGroup", err)
	}
	if tb2 := b.m.Transport(7, b.addr); tb2 == tb {
		t.Error("Transport returned the closed transport")
	} else {
		consume(t, tb2, answer)
	}
	if err := vote(ta, b.addr, 4); err != nil {
		t.Fatal(err)
	}
	if st := a.m.Stats(); st.StreamsOpened != 1 {
		t.Errorf("a opened %d streams, want 1", st.StreamsOpened)
	}
}

func TestServerStopFailsInFlightAndReconnects(t *testing.T) {
	a, b := newNode(t, "a", Config{}), newNode(t, "b", Config{})
	ta, tb := a.m.Transport(1, a.addr), b.m.Transport(1, b.addr)
	// Nobody consumes b's group yet: the request waits on b.
	errc := make(chan error, 1)
	go func() { errc <- vote(ta, b.addr, 1) }()
	time.Sleep(200 * time.Millisecond)
	b.stopServer()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStreamBroken) {
			t.Errorf("in-flight RPC failed with %v, want ErrStreamBroken", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("in-flight RPC still pending 2s after the peer's server stopped")
	}
	if err := vote(ta, b.addr, 2); err == nil {
		t.Fatal("RPC to a stopped server succeeded")
	}

	consume(t, tb, answer)
	b.restartServer()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := vote(ta, b.addr, 3)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect after the server restarted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := a.m.Stats(); st.StreamsOpened != 2 || len(st.Outbound) != 1 {
		t.Errorf("a's streams %+v, want 2 opened and 1 open", st)
	}
	if in := b.m.Stats().Inbound; in["a"] != 1 || len(in) != 1 {
		t.Errorf("b's inbound streams %v, want one from a", in)
	}
}

// One group whose raft is stuck (its Consumer is never read) must not
// stop another group's RPCs, nor its own heartbeats, on the same stream.
func TestStuckGroupDoesNotBlockOthers(t *testing.T) {
	a := newNode(t, "a", Config{RPCTimeout: 3 * time.Second})
	b := newNode(t, "b", Config{GroupQueueLen: 8})
	stuckA, okA := a.m.Transport(1, a.addr), a.m.Transport(2, a.addr)
	stuck, ok := b.m.Transport(1, b.addr), b.m.Transport(2, b.addr)
	stuck.SetHeartbeatHandler(answer)
	consume(t, ok, answer)

	const flood = 40
	var wg sync.WaitGroup
	var busy, timedOut, other atomic.Int32
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp raft.AppendEntriesResponse
			err := stuckA.AppendEntries("b", b.addr, &raft.AppendEntriesRequest{Term: 1, PrevLogEntry: 1}, &resp)
			switch {
			case errors.Is(err, ErrBusy):
				busy.Add(1)
			case errors.Is(err, ErrTimeout):
				timedOut.Add(1)
			default:
				other.Add(1)
				t.Errorf("stuck group's RPC: %v", err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	var slowest time.Duration
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		if err := vote(okA, b.addr, uint64(i+1)); err != nil {
			t.Fatalf("other group's RPC %d: %v", i, err)
		}
		if err := heartbeat(stuckA, b.addr); err != nil {
			t.Fatalf("stuck group's heartbeat %d: %v", i, err)
		}
		slowest = max(slowest, time.Since(t0))
	}
	if slowest > time.Second {
		t.Errorf("slowest round trip past the stuck group took %v", slowest)
	}
	t.Logf("100 RPCs past a stuck group in %v (slowest %v)", time.Since(start), slowest)
	wg.Wait()
	if busy.Load() == 0 || busy.Load()+timedOut.Load() != flood {
		t.Errorf("stuck group's RPCs: %d busy, %d timed out, %d other; want all refused, some busy", busy.Load(), timedOut.Load(), other.Load())
	}
	if st := a.m.Stats(); st.StreamsOpened != 1 {
		t.Errorf("a opened %d streams, want 1: the stuck group broke the stream", st.StreamsOpened)
	}
}

func TestCloseFailsPendingRPCs(t *testing.T) {
	a, b := newNode(t, "a", Config{}), newNode(t, "b", Config{})
	_ = b.m.Transport(1, b.addr) // never consumed
	_ = b.m.Transport(2, b.addr)

	// Closing a group's transport fails its RPCs in flight.
	t1 := a.m.Transport(1, a.addr)
	errc := make(chan error, 1)
	go func() { errc <- vote(t1, b.addr, 1) }()
	time.Sleep(100 * time.Millisecond)
	within(t, "Transport.Close", time.Second, func() { _ = t1.Close() })
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("after Transport.Close: %v, want ErrClosed", err)
	}
	if err := vote(t1, b.addr, 2); !errors.Is(err, ErrClosed) {
		t.Errorf("RPC on a closed transport: %v, want ErrClosed", err)
	}

	// Closing the peer's Manager ends the stream under the RPC.
	t2 := a.m.Transport(2, a.addr)
	go func() { errc <- vote(t2, b.addr, 1) }()
	time.Sleep(100 * time.Millisecond)
	within(t, "peer Manager.Close", time.Second, b.m.Close)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStreamBroken) {
			t.Errorf("after the peer closed: %v, want ErrStreamBroken", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("RPC still pending after the peer's Manager closed")
	}

	// Closing the Manager fails everything in flight.
	c := newNode(t, "c", Config{})
	_ = c.m.Transport(3, c.addr)
	t3 := a.m.Transport(3, a.addr)
	go func() { errc <- vote(t3, c.addr, 1) }()
	time.Sleep(100 * time.Millisecond)
	within(t, "Manager.Close", time.Second, a.m.Close)
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("after Manager.Close: %v, want ErrClosed", err)
	}
	if tr := a.m.Transport(4, a.addr); vote(tr, c.addr, 1) == nil {
		t.Error("RPC after Manager.Close succeeded")
	}
}

func TestMessageTooLarge(t *testing.T) {
	a := newNode(t, "a", Config{MaxMessageBytes: 64 << 10, SnapshotChunkBytes: 16 << 10})
	b := newNode(t, "b", Config{})
	ta := a.m.Transport(1, a.addr)
	consume(t, b.m.Transport(1, b.addr), answer)
	big := &raft.AppendEntriesRequest{Term: 1, Entries: []*raft.Log{{Index: 1, Data: make([]byte, 100<<10)}}}
	if err := ta.AppendEntries("b", b.addr, big, new(raft.AppendEntriesResponse)); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("got %v, want ErrMessageTooLarge", err)
	}
	if err := vote(ta, b.addr, 1); err != nil {
		t.Fatal(err)
	}
	if st := a.m.Stats(); st.StreamsOpened != 1 {
		t.Errorf("a opened %d streams, want 1", st.StreamsOpened)
	}
}

// Malformed messages from the network get error responses; the stream
// survives them.
func TestInvalidMessages(t *testing.T) {
	a, b := newNode(t, "a", Config{}), newNode(t, "b", Config{})
	consume(t, b.m.Transport(1, b.addr), answer)
	conn, err := a.pool.dial(context.Background(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	client := raftpb.NewRaftTransportClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := client.Stream(metadata.AppendToOutgoingContext(ctx, nodeMetadataKey, "raw"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  *raftpb.Request
		code raftpb.ErrorCode
	}{
		{&raftpb.Request{Id: 1, Group: 1}, raftpb.ErrorCode_ERROR_CODE_INVALID},
		{&raftpb.Request{Id: 2, Group: 1, Body: &raftpb.Request_AppendEntries{AppendEntries: &raftpb.AppendEntriesRequest{
			Entries: []*raftpb.Log{{Type: 999}}}}}, raftpb.ErrorCode_ERROR_CODE_INVALID},
		{&raftpb.Request{Id: 3, Group: 42, Body: &raftpb.Request_TimeoutNow{}}, raftpb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP},
		{&raftpb.Request{Id: 4, Group: 1, Body: &raftpb.Request_RequestVote{RequestVote: &raftpb.RequestVoteRequest{Term: 5}}}, raftpb.ErrorCode_ERROR_CODE_UNSPECIFIED},
	} {
		if err := st.Send(c.req); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetId() != c.req.GetId() || resp.GetCode() != c.code {
			t.Errorf("request %d: got id %d code %v (%s), want code %v", c.req.GetId(), resp.GetId(), resp.GetCode(), resp.GetError(), c.code)
		}
	}
	_ = st.CloseSend()

	// A snapshot call without its request, and one with a request where
	// data belongs.
	ss, err := client.InstallSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = ss.Send(&raftpb.SnapshotChunk{Data: []byte("x")})
	if resp, err := ss.CloseAndRecv(); err != nil || resp.GetCode() != raftpb.ErrorCode_ERROR_CODE_INVALID {
		t.Errorf("snapshot without request: %v %v", resp, err)
	}
	ss, err = client.InstallSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = ss.Send(&raftpb.SnapshotChunk{Group: 1, Request: &raftpb.InstallSnapshotRequest{Term: 1, Size: 10}})
	_ = ss.Send(&raftpb.SnapshotChunk{Group: 1, Request: &raftpb.InstallSnapshotRequest{Term: 1, Size: 10}})
	if resp, err := ss.CloseAndRecv(); err != nil || resp.GetCode() != raftpb.ErrorCode_ERROR_CODE_REMOTE {
		t.Errorf("snapshot with a stray request: %v %v", resp, err)
	}
}

func TestConfigValidation(t *testing.T) {
	dial := (&connPool{}).dial
	for _, c := range []Config{
		{Dial: dial},
		{NodeID: "a"},
		{NodeID: "a", Dial: dial, RPCTimeout: -1},
		{NodeID: "a", Dial: dial, MaxMessageBytes: 64 << 10}, // default chunk does not fit
	} {
		if _, err := NewManagerWithConfig(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	m := NewManager("a", nil)
	defer m.Close()
	if err := vote(m.Transport(1, "x"), "127.0.0.1:1", 1); !errors.Is(err, ErrUnavailable) {
		t.Errorf("RPC without Dial: %v", err)
	}
}
