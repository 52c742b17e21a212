package headnode

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/replwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// replWireRig is a secondary head node that serves replication on a
// loopback port as a node does (its listener sniffs the protocol), and a
// primary volume whose sessions reach it over framed connections.
type replWireRig struct {
	*pair
	srv  *replWireServer // nil: the secondary speaks gRPC only
	addr string
	lis  *rpc.SniffListener
}

func newReplWireRig(t *testing.T, serveFramed bool, replTimeout time.Duration) *replWireRig {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	sStore := openMemStore(t)
	sec := bareNode(t, "b", sStore)
	vol := applyDir(t, sec, createCmd("v", "a", "b"))
	r := &replWireRig{}
	if serveFramed {
		r.srv = newReplWireServer(&replicationServer{node: sec}, log)
		r.srv.tick = 50 * time.Millisecond
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	r.lis = newWireListener(l, nil, r.srv, log)
	go func() { // no gRPC server here: close what would be its connections
		for {
			c, err := r.lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		r.lis.Close()
		if r.srv != nil {
			r.srv.close()
			r.srv.wait()
		}
	})
	r.pair = &pair{pStore: openMemStore(t), sStore: sStore, faults: &faults{}, vol: vol, model: make([]byte, vol.SizeBytes), replTimeout: replTimeout}
	dial := func(ctx context.Context, vol *ballastpb.Volume, secondary string) (replicaLink, error) {
		return dialFramedAddr(ctx, r.addr, context.Background(), func() {}, 100*time.Millisecond, 100*time.Millisecond)
	}
	r.primary = newPrimaryVolume(vol, r.pStore, dial, replTimeout, log, nil, nil)
	t.Cleanup(r.primary.Close)
	return r
}

// Writes replicate over a framed session, many in flight at once, and
// the secondary ends up with what the primary holds.
func TestFramedReplication(t *testing.T) {
	r := newReplWireRig(t, true, 10*time.Second)
	rng := rand.New(rand.NewSource(1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				// Each writer owns its blocks, so the model's order is the
				// order of its writes.
				// The volume's 256 blocks, 32 to a writer.
				block := uint64(w*32 + i%30)
				mu.Lock()
				data := make([]byte, blockSize*(1+i%3))
				rng.Read(data)
				mu.Unlock()
				r.write(t, block*blockSize, data)
			}
		}()
	}
	wg.Wait()
	if n := r.srv.sessions(); n != 1 {
		t.Fatalf("%d framed sessions open on the secondary, want 1", n)
	}
	r.checkReplicas(t)
}

// A session that breaks fails the batches in flight on it at once: they
// are settled on a new session, not each after its deadline.
func TestBrokenFramedSessionFailsItsBatchesAtOnce(t *testing.T) {
	r := newReplWireRig(t, true, 20*time.Second)
	// Hold the secondary's batches so that several are in flight, then
	// cut the connection under them.
	hold := make(chan struct{})
	var holding atomic.Bool
	var once sync.Once
	r.srv.repl.testBeforeApply = func(uint64) {
		if holding.Load() {
			once.Do(func() { <-hold })
		}
	}
	r.write(t, 0, bytes.Repeat([]byte{1}, blockSize))
	holding.Store(true)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(i + 2)}, blockSize)
			r.write(t, uint64(i+1)*blockSize, data)
		}()
	}
	time.Sleep(200 * time.Millisecond)
	r.srv.conns.mu.Lock()
	for c := range r.srv.conns.conns {
		c.Close()
	}
	r.srv.conns.mu.Unlock()
	close(hold)
	wg.Wait()
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the writes behind a broken session took %v; their deadline is 20s", d)
	}
	r.checkReplicas(t)
}

// A secondary that stops answering is found out by the keepalive while
// nothing is in flight, and the link fails what waits on it.
func TestFramedLinkNoticesASilentSecondary(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	served := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		var pre [replwire.PreambleBytes]byte
		io.ReadFull(c, pre[:])
		c.Write(replwire.AppendPreamble(nil))
		served <- c
		io.Copy(io.Discard, c) // reads, never answers
	}()
	link, err := dialFramedAddr(context.Background(), l.Addr().String(), context.Background(), func() {}, 50*time.Millisecond, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	c := <-served
	defer c.Close()
	select {
	case <-link.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the link stayed open to a secondary that answers no ping")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := link.Wait(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a closed link: %v, want the link's failure", err)
	}
}

// A head node that does not serve framed replication (an older build,
// or one told to speak gRPC only) is told apart from a failure: the
// primary then uses gRPC.
func TestSecondaryWithoutFramedReplication(t *testing.T) {
	r := newReplWireRig(t, false, time.Second)
	_, err := dialReplPreamble(context.Background(), r.addr)
	if !errors.Is(err, errNoReplWire) {
		t.Fatalf("dial a node without framed replication: %v, want errNoReplWire", err)
	}
	// A server of another version answers with its own preamble.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var pre [replwire.PreambleBytes]byte
		io.ReadFull(c, pre[:])
		c.Write([]byte("BLSTRP\x02\x00"))
	}()
	if _, err := dialReplPreamble(context.Background(), l.Addr().String()); !errors.Is(err, errNoReplWire) {
		t.Fatalf("dial a node of version 2: %v, want errNoReplWire", err)
	}
}

// The secondary closes a connection that sends nothing (a primary pings
// a quiet one every keepalive period), and one that sends garbage.
func TestFramedSessionsEndOnSilenceAndGarbage(t *testing.T) {
	r := newReplWireRig(t, true, time.Second)
	for name, send := range map[string][]byte{
		"silent":  nil,
		"garbage": bytes.Repeat([]byte{0xff}, 64),
	} {
		nc, err := dialReplPreamble(context.Background(), r.addr)
		if err != nil {
			t.Fatal(err)
		}
		if send != nil {
			nc.Write(send)
		}
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, nc); err != nil {
			t.Errorf("%s: the secondary did not close the connection: %v", name, err)
		}
		nc.Close()
	}
}
