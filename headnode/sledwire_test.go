package headnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/internal/sledwire"
	"github.com/ballast-storage/ballast/sled"
)

// oldSledProxy stands for a sled of a build before the framed protocol in
// front of a real one: it forwards gRPC and closes a connection that opens
// with the framed preamble, as such a sled's listener did.
type oldSledProxy struct {
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	framed int // connections refused
}

func startOldSledProxy(t *testing.T, target string) *oldSledProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &oldSledProxy{l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c, target)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *oldSledProxy) serve(c net.Conn, target string) {
	first := make([]byte, sledwire.PreambleBytes)
	if _, err := io.ReadFull(c, first); err != nil {
		c.Close()
		return
	}
	if _, err := sledwire.ParsePreamble(first); err == nil {
		p.mu.Lock()
		p.framed++
		p.mu.Unlock()
		c.Close()
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.mu.Unlock()
	up.Write(first)
	go io.Copy(c, up)
	io.Copy(up, c)
	c.Close()
	up.Close()
}

func startWireTestSled(t *testing.T) *sled.Sled {
	t.Helper()
	sl, err := sled.Start(sled.Config{ID: "s1", DataDir: t.TempDir(), Devices: 1, ListenAddresses: []string{"127.0.0.1:0"},
		Logger: slog.New(slog.DiscardHandler), ScrubBytesPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Close() })
	return sl
}

// wireShardsOnATestSled starts a sled and returns a shard store that
// reaches it as "s1" over the framed protocol, and a context for the test.
func wireShardsOnATestSled(t *testing.T) (*grpcShards, *sledWire, context.Context) {
	t.Helper()
	sl := startWireTestSled(t)
	pool := &rpc.Pool{}
	t.Cleanup(func() { pool.Close() })
	wire := newSledWire()
	t.Cleanup(wire.close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return &grpcShards{addresses: func(string) ([]string, bool) { return sl.Addresses(), true }, pool: pool, wire: wire}, wire, ctx
}

// TestSledWirePutsAndReconnects: shard puts go over one framed connection
// per sled, concurrently; the sled's refusals come back in the head node's
// classes; a connection that breaks is replaced by the next put.
func TestSledWirePutsAndReconnects(t *testing.T) {
	g, wire, ctx := wireShardsOnATestSled(t)

	shards := map[shardID][]byte{}
	for i := range 16 {
		data := make([]byte, (i+1)<<16)
		rand.New(rand.NewSource(int64(i))).Read(data)
		shards[shardID{volume: 1, segment: 5, index: uint32(i)}] = data
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(shards))
	for id, data := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- g.Put(ctx, "s1", id, 4, data)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wire.mu.Lock()
	c := wire.conns["s1"]
	wire.mu.Unlock()
	if c == nil || c.sent.Load() < uint64(len(shards)) {
		t.Fatalf("the puts did not take the framed connection")
	}
	sentBefore := c.sent.Load()
	for id, data := range shards {
		got, stamp, err := g.Get(ctx, "s1", id, 0, uint64(len(data)))
		if err != nil || !bytes.Equal(got, data) || stamp.epoch != 4 || stamp.id != id {
			t.Fatalf("%s reads back wrong (epoch %d, id %s): %v", id, stamp.epoch, stamp.id, err)
		}
		part, _, err := g.Get(ctx, "s1", id, 4096, 8192)
		if err != nil || !bytes.Equal(part, data[4096:4096+8192]) {
			t.Fatalf("a range of %s reads back wrong: %v", id, err)
		}
	}
	if _, _, err := g.Get(ctx, "s1", shardID{volume: 1, segment: 99}, 0, 4096); !errors.Is(err, errShardMissing) {
		t.Fatalf("a read of a shard the sled does not hold: %v, want errShardMissing", err)
	}
	if got := c.sent.Load() - sentBefore; got != 2*uint64(len(shards))+1 {
		t.Fatalf("%d of %d range reads took the framed connection", got, 2*len(shards)+1)
	}
	// A put at an older epoch than the shard's is fenced.
	id := shardID{volume: 1, segment: 5, index: 0}
	if err := g.Put(ctx, "s1", id, 3, []byte("old writer")); !errors.Is(err, errStaleEpoch) {
		t.Fatalf("a put at an older epoch: %v", err)
	}
	// The connection breaks: the next put opens another.
	c.nc.Close()
	<-c.done
	if err := g.Put(ctx, "s1", id, 4, []byte("again")); err != nil {
		t.Fatal(err)
	}
	wire.mu.Lock()
	c2 := wire.conns["s1"]
	wire.mu.Unlock()
	if c2 == nil || c2 == c || c2.sent.Load() != 1 {
		t.Fatalf("no new framed connection after the old one broke")
	}
	wire.close()
	select {
	case <-c2.ended:
	default:
		t.Fatal("close returned before the connection's goroutines ended")
	}
}

// TestSledWireFallsBackToGRPCForAnOldSled: a sled that closes the framed
// preamble unanswered gets its puts over gRPC, and is not asked again
// until noBatchRetry has passed.
func TestSledWireFallsBackToGRPCForAnOldSled(t *testing.T) {
	sl := startWireTestSled(t)
	proxy := startOldSledProxy(t, sl.Addresses()[0])
	var pool rpc.Pool
	defer pool.Close()
	wire := newSledWire()
	defer wire.close()
	g := &grpcShards{addresses: func(string) ([]string, bool) { return []string{proxy.l.Addr().String()}, true }, pool: &pool, wire: wire}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		id := shardID{volume: 1, segment: 6, index: uint32(i)}
		data := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := g.Put(ctx, "s1", id, 1, data); err != nil {
			t.Fatal(err)
		}
		got, _, err := g.Get(ctx, "s1", id, 0, 4096)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("shard %d reads back wrong: %v", i, err)
		}
	}
	proxy.mu.Lock()
	refused := proxy.framed
	proxy.mu.Unlock()
	if refused != 1 {
		t.Fatalf("the old sled was offered the framed protocol %d times, want once", refused)
	}
	wire.mu.Lock()
	_, noted := wire.noWire["s1"]
	n := len(wire.conns)
	wire.mu.Unlock()
	if !noted || n != 0 {
		t.Fatalf("refusal noted %v, %d framed connections", noted, n)
	}
}

// TestSledWireCallerGivingUpLeavesTheConnection: a request whose caller
// has given up (a read that has its shards from other sleds cancels the
// rest; a put whose segment failed on another sled) fails alone, and not
// as a sled that is down, whatever the cancellation's cause; the
// connection, which other requests share, stays.
func TestSledWireCallerGivingUpLeavesTheConnection(t *testing.T) {
	g, wire, ctx := wireShardsOnATestSled(t)
	id := shardID{volume: 1, segment: 8, index: 0}
	if err := g.Put(ctx, "s1", id, 1, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	wire.mu.Lock()
	c := wire.conns["s1"]
	wire.mu.Unlock()
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gctx, gcancel := context.WithCancelCause(ctx)
			if i%2 == 0 {
				// Given up before or while it is sent, because another
				// sled failed.
				gcancel(fmt.Errorf("%w: sled s9: put: refused", errSledDown))
			}
			res, err := g.GetRanges(gctx, "s1", []shardRange{{id: id, off: 0, length: 64 << 10}})
			gcancel(nil)
			if i%2 == 1 && (err != nil || res[0].err != nil) {
				t.Errorf("a read beside the abandoned ones failed: %v %v", err, res)
			}
			if i%2 == 0 && errors.Is(err, errSledDown) {
				t.Errorf("an abandoned read says its sled is down: %v", err)
			}
		}()
	}
	wg.Wait()
	if c.isClosed() {
		t.Fatalf("an abandoned request closed the shared connection: %v", c.closedErr(nil))
	}
}

// TestSledWireRedialsADownSledOnlyAfterAPause: a sled whose framed
// connection cannot be opened gets its requests over gRPC (which then
// says it is down), and the next ones do not each pay a dial first.
func TestSledWireRedialsADownSledOnlyAfterAPause(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	var pool rpc.Pool
	defer pool.Close()
	wire := newSledWire()
	defer wire.close()
	g := &grpcShards{addresses: func(string) ([]string, bool) { return []string{addr}, true }, pool: &pool, wire: wire}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Put(ctx, "s1", shardID{volume: 1, segment: 1}, 1, []byte("x")); !errors.Is(err, errSledDown) {
		t.Fatalf("a put to a sled that is down: %v", err)
	}
	conn, _ := g.conn("s1")
	_, err = wire.conn(ctx, "s1", conn)
	if err == nil || !strings.Contains(err.Error(), "just now") {
		t.Fatalf("the framed connection was dialled again at once: %v", err)
	}
}
