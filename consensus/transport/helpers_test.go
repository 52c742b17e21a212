package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// verbose turns on raft's and the transport's logs.
var verbose = os.Getenv("TRANSPORT_TEST_LOG") != ""

func testLogger() *slog.Logger {
	if verbose {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// connPool is a node's pool of client connections, as the caller of the
// transport keeps it: the transport never closes them.
type connPool struct {
	mu     sync.Mutex
	conns  map[raft.ServerAddress]*grpc.ClientConn
	closed bool
}

func (p *connPool) dial(_ context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("pool closed")
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	// Tests use one address per node; the first of the list.
	target := strings.Split(string(addr), ",")[0]
	c, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		}))
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = map[raft.ServerAddress]*grpc.ClientConn{}
	}
	p.conns[addr] = c
	return c, nil
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// node is one test node: a gRPC server on loopback, a Manager, and its
// raft groups.
type node struct {
	t    *testing.T
	id   string
	addr raft.ServerAddress
	m    *Manager
	pool *connPool

	mu     sync.Mutex
	srv    *grpc.Server
	groups map[uint64]*group
}

// group is one node's member of a raft group.
type group struct {
	r     *raft.Raft
	fsm   *testFSM
	logs  *raft.InmemStore
	snaps raft.SnapshotStore
	trans *Transport
}

func listenLoopback(t *testing.T, addr string) net.Listener {
	t.Helper()
	var lis net.Listener
	var err error
	// A restarted server may find its port briefly busy.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			return lis
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("listen %s: %v", addr, err)
	return nil
}

// newNode starts a node with cfg (NodeID, Dial and Logger are filled in).
func newNode(t *testing.T, id string, cfg Config) *node {
	t.Helper()
	lis := listenLoopback(t, "127.0.0.1:0")
	n := &node{t: t, id: id, addr: raft.ServerAddress(lis.Addr().String()), pool: &connPool{}, groups: map[uint64]*group{}}
	cfg.NodeID = id
	cfg.Dial = n.pool.dial
	cfg.Logger = testLogger()
	m, err := NewManagerWithConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.m = m
	n.serve(lis)
	t.Cleanup(n.shutdown)
	return n
}

func (n *node) serve(lis net.Listener) {
	srv := grpc.NewServer()
	n.m.Register(srv)
	n.mu.Lock()
	n.srv = srv
	n.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// stopServer kills the node's gRPC server: every connection to it drops.
func (n *node) stopServer() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// restartServer serves the node's Manager again at the same address.
func (n *node) restartServer() {
	n.serve(listenLoopback(n.t, string(n.addr)))
}

func (n *node) shutdown() {
	n.mu.Lock()
	groups := n.groups
	n.groups = map[uint64]*group{}
	n.mu.Unlock()
	for _, g := range groups {
		_ = g.r.Shutdown().Error()
	}
	n.m.Close()
	n.stopServer()
	n.pool.close()
}

func raftConfig(id string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.HeartbeatTimeout = 200 * time.Millisecond
	c.ElectionTimeout = 200 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotInterval = time.Hour
	c.SnapshotThreshold = 1 << 20
	level := hclog.Off
	if verbose {
		level = hclog.Debug
	}
	c.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft-" + id, Level: level, Output: os.Stderr})
	return c
}

func voters(nodes []*node) []raft.Server {
	var out []raft.Server
	for _, n := range nodes {
		out = append(out, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.id), Address: n.addr})
	}
	return out
}

// startGroup starts the node's member of group gid, bootstrapping it with
// servers unless its stores (from prev) already hold state.
func (n *node) startGroup(gid uint64, servers []raft.Server, tune func(*raft.Config), prev *group) *group {
	n.t.Helper()
	c := raftConfig(n.id)
	if tune != nil {
		tune(c)
	}
	g := &group{fsm: &testFSM{}, trans: n.m.Transport(gid, n.addr)}
	if prev != nil {
		g.logs, g.snaps = prev.logs, prev.snaps
	} else {
		g.logs = raft.NewInmemStore()
		g.snaps = raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(c, g.logs, g.logs, g.snaps, g.trans, raft.Configuration{Servers: servers}); err != nil {
			n.t.Fatalf("bootstrap %s/%d: %v", n.id, gid, err)
		}
	}
	r, err := raft.NewRaft(c, g.fsm, g.logs, g.logs, g.snaps, g.trans)
	if err != nil {
		n.t.Fatalf("start %s/%d: %v", n.id, gid, err)
	}
	g.r = r
	n.mu.Lock()
	n.groups[gid] = g
	n.mu.Unlock()
	return g
}

// stopGroup shuts the node's member of gid down (raft closes its
// Transport) and returns it, for a restart on the same stores.
func (n *node) stopGroup(gid uint64) *group {
	n.mu.Lock()
	g := n.groups[gid]
	delete(n.groups, gid)
	n.mu.Unlock()
	if err := g.r.Shutdown().Error(); err != nil {
		n.t.Fatal(err)
	}
	return g
}

func (n *node) group(gid uint64) *group {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.groups[gid]
}

// waitLeader returns the node that leads gid among nodes.
func waitLeader(t *testing.T, nodes []*node, gid uint64, timeout time.Duration) *node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if g := n.group(gid); g != nil && g.r.State() == raft.Leader {
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("group %d: no leader after %v", gid, timeout)
	return nil
}

// applyAll applies cmds to group gid in batches, following the leader.
func applyAll(t *testing.T, nodes []*node, gid uint64, cmds []string) error {
	const batch = 32
	for len(cmds) > 0 {
		n := min(batch, len(cmds))
		leader := waitLeader(t, nodes, gid, 10*time.Second)
		g := leader.group(gid)
		futures := make([]raft.ApplyFuture, n)
		for i := 0; i < n; i++ {
			futures[i] = g.r.Apply([]byte(cmds[i]), 5*time.Second)
		}
		done := 0
		for i, f := range futures {
			if err := f.Error(); err != nil {
				if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
					break // retry from here (a lost one may be applied twice)
				}
				return fmt.Errorf("group %d apply: %w", gid, err)
			}
			done = i + 1
		}
		cmds = cmds[done:]
	}
	return nil
}

// waitConverged waits until every running member of gid has applied the
// same commands, want of them at least, and returns them.
func waitConverged(t *testing.T, nodes []*node, gid uint64, want int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var states [][]string
	for time.Now().Before(deadline) {
		states = states[:0]
		for _, n := range nodes {
			if g := n.group(gid); g != nil {
				states = append(states, g.fsm.commands())
			}
		}
		same := len(states[0]) >= want
		for _, s := range states[1:] {
			same = same && equalStrings(s, states[0])
		}
		if same {
			return states[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	lens := make([]int, len(states))
	for i, s := range states {
		lens[i] = len(s)
	}
	t.Fatalf("group %d: replicas did not converge on %d commands: lengths %v", gid, want, lens)
	return nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func commands(gid uint64, from, n, size int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("g%d-%06d-", gid, from+i)
		if pad := size - len(s); pad > 0 {
			s += strings.Repeat("x", pad)
		}
		out[i] = s
	}
	return out
}

// testFSM records the commands it applied, in order.
type testFSM struct {
	mu       sync.Mutex
	cmds     []string
	restores int
}

func (f *testFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, string(l.Data))
	return nil
}

func (f *testFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fsmSnapshot(append([]string(nil), f.cmds...)), nil
}

func (f *testFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var cmds []string
	if err := json.NewDecoder(rc).Decode(&cmds); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = cmds
	f.restores++
	return nil
}

func (f *testFSM) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func (f *testFSM) restoreCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restores
}

type fsmSnapshot []string

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}

// checkOneStreamPerPair asserts that every node has exactly one stream to
// and one stream from every other node.
func checkOneStreamPerPair(t *testing.T, nodes []*node) {
	t.Helper()
	checkAtMostOneStreamPerPair(t, nodes)
	for _, n := range nodes {
		st := n.m.Stats()
		var wantOut []raft.ServerAddress
		wantIn := map[string]int{}
		for _, o := range nodes {
			if o != n {
				wantOut = append(wantOut, o.addr)
				wantIn[o.id] = 1
			}
		}
		got := map[raft.ServerAddress]bool{}
		for _, a := range st.Outbound {
			got[a] = true
		}
		if len(st.Outbound) != len(wantOut) {
			t.Errorf("%s: outbound streams %v, want one to each of %v", n.id, st.Outbound, wantOut)
		}
		for _, a := range wantOut {
			if !got[a] {
				t.Errorf("%s: no outbound stream to %s (have %v)", n.id, a, st.Outbound)
			}
		}
		if fmt.Sprint(st.Inbound) != fmt.Sprint(wantIn) {
			t.Errorf("%s: inbound streams %v, want %v", n.id, st.Inbound, wantIn)
		}
	}
}

// checkAtMostOneStreamPerPair asserts that no node has more than one
// stream from another (a node's outbound streams are keyed by address, so
// it cannot have two to one peer).
func checkAtMostOneStreamPerPair(t *testing.T, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		for from, k := range n.m.Stats().Inbound {
			if k > 1 {
				t.Errorf("%s has %d streams from %s", n.id, k, from)
			}
		}
	}
}

// transferTo makes n the leader of gid, retrying while a loaded machine
// makes transfers time out.
func transferTo(t *testing.T, nodes []*node, gid uint64, n *node) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		leader := waitLeader(t, nodes, gid, 10*time.Second)
		if leader == n {
			return
		}
		f := leader.group(gid).r.LeadershipTransferToServer(raft.ServerID(n.id), n.addr)
		if err := f.Error(); err != nil {
			t.Logf("group %d transfer %s -> %s: %v", gid, leader.id, n.id, err)
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Fatalf("group %d: could not make %s the leader", gid, n.id)
}
