package rpc

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// cuttableLink forwards TCP connections to a server and can be cut the way
// a network is: bytes stop flowing both ways, nothing is closed or reset,
// so only timeouts tell the two ends.
type cuttableLink struct {
	l       net.Listener
	target  string
	cut     atomic.Bool
	accepts atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
}

func newCuttableLink(t *testing.T, target string) *cuttableLink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &cuttableLink{l: l, target: target}
	go k.serve()
	t.Cleanup(k.close)
	return k
}

func (k *cuttableLink) addr() string { return k.l.Addr().String() }

func (k *cuttableLink) serve() {
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		if k.cut.Load() {
			// A cut network drops the SYN; hold the connection unanswered.
			k.track(c)
			continue
		}
		k.accepts.Add(1)
		s, err := net.Dial("tcp", k.target)
		if err != nil {
			c.Close()
			continue
		}
		k.track(c)
		k.track(s)
		go k.pipe(c, s)
		go k.pipe(s, c)
	}
}

func (k *cuttableLink) track(c net.Conn) {
	k.mu.Lock()
	k.conns = append(k.conns, c)
	k.mu.Unlock()
}

func (k *cuttableLink) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		// While cut, what was read is lost, as on a dead wire.
		if k.cut.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func (k *cuttableLink) close() {
	k.l.Close()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
}

// startHealthServer serves the health service on loopback.
func startHealthServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer()
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// twoPathConn connects to a health server over two cuttable links.
func twoPathConn(t *testing.T) (*Conn, *cuttableLink, *cuttableLink) {
	t.Helper()
	server := startHealthServer(t)
	linkA, linkB := newCuttableLink(t, server), newCuttableLink(t, server)
	c, err := DialPaths([]string{linkA.addr(), linkB.addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, linkA, linkB
}

// streamEnd waits (at most 30 s) for a watch stream to end and returns why.
func streamEnd(t *testing.T, watch healthpb.Health_WatchClient) error {
	t.Helper()
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := watch.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the stream never ended")
		return nil
	}
}

func pathUp(c *Conn, i int) bool { return c.Paths()[i].Up }

// TestCutPathMovesTraffic cuts the path a stream and calls use: the stream
// ends with Unavailable long before keepalive would notice, new calls go
// over the other path, and the first path is used again once it heals.
func TestCutPathMovesTraffic(t *testing.T) {
	c, linkA, linkB := twoPathConn(t)
	health := healthpb.NewHealthClient(c)
	ctx := context.Background()

	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check over path A: %v", err)
	}
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("first watch message: %v", err)
	}
	if linkA.accepts.Load() == 0 {
		t.Fatal("nothing went over path A, the preferred one")
	}

	linkA.cut.Store(true)
	cutAt := time.Now()
	err = streamEnd(t, watch)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "is down") {
		t.Fatalf("stream over the cut path ended with %v, want Unavailable naming the path", err)
	}
	// Keepalive alone would take KeepaliveTime+KeepaliveTimeout.
	if d := time.Since(cutAt); d >= KeepaliveTime+KeepaliveTimeout {
		t.Logf("stream cut after %v (keepalive would have done it too)", d)
	}
	if pathUp(c, 0) || !pathUp(c, 1) {
		t.Fatalf("paths after cutting A: %+v", c.Paths())
	}
	if p := c.Paths()[0]; p.LastError == "" {
		t.Fatalf("a down path should say why: %+v", p)
	}
	for i := 0; i < 5; i++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			t.Fatalf("check %d with path A cut: %v", i, err)
		}
	}
	if got := c.pick().addr; got != linkB.addr() {
		t.Fatalf("calls go over %s with A cut, want B (%s)", got, linkB.addr())
	}

	linkA.cut.Store(false)
	waitFor(t, "path A to come back up", func() bool { return pathUp(c, 0) })
	if c.pick().addr != linkA.addr() {
		t.Fatalf("healed path A is not preferred again")
	}
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check after healing A: %v", err)
	}
}

// TestAllPathsDownCutsNothing: when every path fails (the node died, or the
// machine is too loaded to answer probes), calls are left to gRPC rather
// than cut, and the path seen up last is used.
func TestAllPathsDownCutsNothing(t *testing.T) {
	c, linkA, linkB := twoPathConn(t)
	health := healthpb.NewHealthClient(c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	linkB.cut.Store(true)
	waitFor(t, "path B down", func() bool { return !pathUp(c, 1) })
	linkA.cut.Store(true)
	waitFor(t, "path A down", func() bool { return !pathUp(c, 0) })
	if got := c.pick().addr; got != linkA.addr() {
		t.Fatalf("with both down, picked %s, want A (seen up last)", got)
	}
	// The stream on A is left to gRPC, whose keepalive ends it in its own
	// time; the health checker must not have cut it.
	if err := streamEnd(t, watch); strings.Contains(err.Error(), "is down") {
		t.Fatalf("the health checker cut a stream with no other path up: %v", err)
	}
}

// TestStreamEndReleasesPath: streams read to their end or cancelled do not
// stay registered on their path.
func TestStreamEndReleasesPath(t *testing.T) {
	server := startHealthServer(t)
	c, err := DialPaths([]string{server, server})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	health := healthpb.NewHealthClient(c)
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := w.Recv(); err == nil || err == io.EOF {
			t.Fatalf("cancelled stream: %v", err)
		}
	}
	for _, p := range c.paths {
		waitFor(t, "streams to let go of "+p.addr, func() bool { return p.bound.Load() == 0 })
	}
}

// TestIdempotentCallResent: a call in flight when its path fails is resent
// over the other path if marked Idempotent, and fails with Unavailable if
// not.
func TestIdempotentCallResent(t *testing.T) {
	c, linkA, _ := twoPathConn(t)
	health := healthpb.NewHealthClient(c)
	ctx := context.Background()
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	// Cut A before the probes notice: the next call still goes over A and
	// hangs there until the path is declared down.
	linkA.cut.Store(true)
	_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "is down") {
		t.Fatalf("plain call over a path cut under it: %v, want Unavailable naming the path", err)
	}

	linkA.cut.Store(false)
	waitFor(t, "path A back up", func() bool { return pathUp(c, 0) })
	linkA.cut.Store(true)
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, Idempotent); err != nil {
		t.Fatalf("idempotent call over a path cut under it: %v, want it resent over B", err)
	}
	if pathUp(c, 0) {
		t.Fatal("path A should be down")
	}
}

// A pool whose nodes have all gone silent closes without waiting out the
// probes in flight: a head node shutting down after its peers would
// otherwise spend a probe timeout (or more) per peer.
func TestPoolCloseDoesNotWaitForProbes(t *testing.T) {
	const nodes = 8
	server := startHealthServer(t)
	var pool Pool
	var links []*cuttableLink
	for i := 0; i < nodes; i++ {
		a, b := newCuttableLink(t, server), newCuttableLink(t, server)
		links = append(links, a, b)
		if _, err := pool.Get([]string{a.addr(), b.addr()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range links {
		k.cut.Store(true)
	}
	// Every probe from now on hangs until its timeout.
	time.Sleep(ProbeInterval + ProbeTimeout/2)
	start := time.Now()
	pool.Close()
	// Waiting for the probes would take about nodes × ProbeTimeout/2.
	if took := time.Since(start); took >= ProbeTimeout {
		t.Fatalf("closing a pool of %d silent nodes took %v", nodes, took)
	}
}
