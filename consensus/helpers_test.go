package consensus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// Helpers shared by the tests and the benchmarks: a node on loopback with
// its own gRPC server and connection pool, and a key-value FSM.

// testNode is one Node in this process, serving its raft transport on a
// loopback port.
type testNode struct {
	id   string
	addr raft.ServerAddress
	node *Node
	srv  *grpc.Server
	pool *connPool
}

// startTestNode opens a Node in dir/id and serves it on 127.0.0.1.
func startTestNode(dir, id string, rc *raft.Config) (*testNode, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	n := &testNode{id: id, addr: raft.ServerAddress(lis.Addr().String()), pool: &connPool{}}
	n.node, err = Open(Config{
		NodeID:  n.id,
		Address: n.addr,
		Dir:     filepath.Join(dir, n.id),
		Dial:    n.pool.dial,
		Logger:  testLogger(id),
		Raft:    rc,
	})
	if err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("open %s: %w", n.id, err)
	}
	n.srv = grpc.NewServer()
	n.node.Register(n.srv)
	go func() { _ = n.srv.Serve(lis) }()
	return n, nil
}

// voter is the node as a voter of a group.
func (n *testNode) voter() raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.id), Address: n.addr}
}

// close shuts the node down, then its server and connections. Closing
// twice is harmless.
func (n *testNode) close() error {
	err := n.node.Close()
	n.srv.Stop()
	n.pool.close()
	if err != nil {
		return fmt.Errorf("close %s: %w", n.id, err)
	}
	return nil
}

// connPool is a node's pool of client connections; the transport never
// closes them.
type connPool struct {
	mu     sync.Mutex
	conns  map[raft.ServerAddress]*grpc.ClientConn
	closed bool
}

// dial has Config.Dial's type.
func (p *connPool) dial(_ context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("connection pool closed")
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	// A node here has one address: the first of the list.
	target := strings.Split(string(addr), ",")[0]
	c, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
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
	p.conns = nil
}

// kvFSM is an in-memory map; a command is a key and a value joined by a
// NUL byte.
type kvFSM struct {
	mu sync.Mutex
	m  map[string]string
}

func newKVFSM() *kvFSM { return &kvFSM{m: map[string]string{}} }

func (f *kvFSM) Apply(l *raft.Log) any {
	k, v, ok := strings.Cut(string(l.Data), "\x00")
	if !ok {
		return fmt.Errorf("kv: malformed command %q", l.Data)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[k] = v
	return nil
}

func (f *kvFSM) get(k string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[k]
	return v, ok
}

func (f *kvFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]string, len(f.m))
	for k, v := range f.m {
		m[k] = v
	}
	return kvSnapshot(m), nil
}

func (f *kvFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m := map[string]string{}
	if err := json.NewDecoder(rc).Decode(&m); err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m = m
	return nil
}

type kvSnapshot map[string]string

func (s kvSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(map[string]string(s)); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("kv: persist: %w", err)
	}
	return sink.Close()
}

func (s kvSnapshot) Release() {}

func kvCommand(key, value string) []byte { return []byte(key + "\x00" + value) }

// Test clusters.

// testRaftConfig is raft's defaults with timeouts short enough that
// elections take well under a second, yet long enough that a loaded
// machine under the race detector rarely stalls past the leader lease
// (stalls of 150 ms, across every group at once, were seen on 2 cores). Nothing
// snapshots on its own: tests that want a snapshot take one, and the few
// trailing logs make a new member catch up from it.
func testRaftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 400 * time.Millisecond
	rc.CommitTimeout = 10 * time.Millisecond
	rc.SnapshotInterval = time.Hour
	rc.SnapshotThreshold = 1 << 30
	rc.TrailingLogs = 4
	return rc
}

// waitTimeout bounds every wait in the tests.
const waitTimeout = 15 * time.Second

// testCluster is nodes n0, n1, ... in this process and their members of
// some groups, each with a kvFSM.
type testCluster struct {
	t   *testing.T
	dir string

	mu    sync.Mutex
	nodes []*testNode
	fsms  map[string]map[uint64]*kvFSM
}

// newTestCluster starts size nodes and bootstraps every group in groups
// with all of them as voters, then waits for every group to elect a
// leader. The cluster closes when the test ends.
func newTestCluster(t *testing.T, size int, groups ...uint64) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir(), fsms: map[string]map[uint64]*kvFSM{}}
	t.Cleanup(c.close)
	var voters []raft.Server
	for range size {
		voters = append(voters, c.addNode().voter())
	}
	for _, n := range c.snapshotNodes() {
		for _, g := range groups {
			c.startGroup(n, g, voters)
		}
	}
	for _, g := range groups {
		c.leader(g)
	}
	return c
}

// addNode starts a new node with no groups.
func (c *testCluster) addNode() *testNode {
	c.t.Helper()
	c.mu.Lock()
	id := fmt.Sprintf("n%d", len(c.nodes))
	c.mu.Unlock()
	n, err := startTestNode(c.dir, id, testRaftConfig())
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.fsms[id] = map[uint64]*kvFSM{}
	c.mu.Unlock()
	return n
}

func (c *testCluster) snapshotNodes() []*testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*testNode(nil), c.nodes...)
}

// startGroup starts n's member of group g, bootstrapped with voters.
func (c *testCluster) startGroup(n *testNode, g uint64, voters []raft.Server) {
	c.t.Helper()
	fsm := newKVFSM()
	if _, err := n.node.StartGroup(g, fsm, voters); err != nil {
		c.t.Fatal(err)
	}
	c.setFSM(n, g, fsm)
}

// joinGroup starts n's member of group g with the join path.
func (c *testCluster) joinGroup(n *testNode, g uint64) *raft.Raft {
	c.t.Helper()
	fsm := newKVFSM()
	r, err := n.node.JoinGroup(g, fsm)
	if err != nil {
		c.t.Fatal(err)
	}
	c.setFSM(n, g, fsm)
	return r
}

func (c *testCluster) setFSM(n *testNode, g uint64, fsm *kvFSM) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fsms[n.id][g] = fsm
}

func (c *testCluster) fsm(n *testNode, g uint64) *kvFSM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fsms[n.id][g]
}

// raftOf returns n's running member of group g, or nil.
func raftOf(n *testNode, g uint64) *raft.Raft {
	grp, err := n.node.group(g)
	if err != nil {
		return nil
	}
	return grp.r
}

// findLeader returns the node leading group g, if any: of two members
// that both believe they lead (the old one not yet told), the one with the
// higher term.
func (c *testCluster) findLeader(g uint64) *testNode {
	var best *testNode
	var term uint64
	for _, n := range c.snapshotNodes() {
		r := raftOf(n, g)
		if r == nil || r.State() != raft.Leader {
			continue
		}
		if t := r.CurrentTerm(); best == nil || t > term {
			best, term = n, t
		}
	}
	return best
}

// leader waits for group g to have a leader and returns it.
func (c *testCluster) leader(g uint64) *testNode {
	c.t.Helper()
	var l *testNode
	waitFor(c.t, fmt.Sprintf("group %d leader", g), func() error {
		if l = c.findLeader(g); l == nil {
			return errors.New("no leader")
		}
		return nil
	})
	return l
}

// write commits key=value in group g through its leader, following the
// leadership when it moves. It does not call t.Fatal, so that background
// writers can use it.
func (c *testCluster) write(g uint64, key, value string) error {
	deadline := time.Now().Add(waitTimeout)
	for {
		var err error
		if l := c.findLeader(g); l == nil {
			err = errors.New("no leader")
		} else if r := raftOf(l, g); r == nil {
			err = errors.New("leader stopped")
		} else {
			f := r.Apply(kvCommand(key, value), time.Second)
			if err = f.Error(); err == nil {
				if rerr, ok := f.Response().(error); ok {
					return rerr
				}
				return nil
			}
			// The leadership moving is expected; anything else is not.
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) &&
				!errors.Is(err, raft.ErrLeadershipTransferInProgress) && !errors.Is(err, raft.ErrRaftShutdown) &&
				!errors.Is(err, raft.ErrEnqueueTimeout) {
				return fmt.Errorf("group %d: write %s: %w", g, key, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %d: write %s: %w", g, key, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// onLeader runs op on group g's leader, again on the new leader while it
// fails because the leadership moved, and returns the node it succeeded
// on. op must be safe to repeat.
func (c *testCluster) onLeader(g uint64, op func(l *testNode) error) *testNode {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		l := c.leader(g)
		err := op(l)
		if err == nil {
			return l
		}
		if !leadershipMoved(err) || time.Now().After(deadline) {
			c.t.Fatalf("group %d, on leader %s: %v", g, l.id, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leadershipMoved reports whether err says the leadership moved away.
func leadershipMoved(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress)
}

// writeN commits keys prefix-0 .. prefix-(count-1) in group g, each with
// its own name as value.
func (c *testCluster) writeN(g uint64, prefix string, count int) {
	c.t.Helper()
	for i := range count {
		k := fmt.Sprintf("%s-%d", prefix, i)
		if err := c.write(g, k, k); err != nil {
			c.t.Fatal(err)
		}
	}
}

// waitHasN waits until n's FSM of group g holds every key writeN wrote.
func (c *testCluster) waitHasN(n *testNode, g uint64, prefix string, count int) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("%s to apply %s-* in group %d", n.id, prefix, g), func() error {
		fsm := c.fsm(n, g)
		for i := range count {
			k := fmt.Sprintf("%s-%d", prefix, i)
			if v, ok := fsm.get(k); !ok || v != k {
				return fmt.Errorf("%s = %q, %v", k, v, ok)
			}
		}
		return nil
	})
}

// servers returns n's latest configuration of group g, as "id:suffrage"
// strings in id order, for comparing.
func servers(t *testing.T, n *testNode, g uint64) []string {
	t.Helper()
	r := raftOf(n, g)
	if r == nil {
		t.Fatalf("%s has no member of group %d", n.id, g)
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range f.Configuration().Servers {
		out = append(out, fmt.Sprintf("%s:%s", s.ID, s.Suffrage))
	}
	slices.Sort(out)
	return out
}

// waitServers waits until n's configuration of group g is want.
func waitServers(t *testing.T, n *testNode, g uint64, want ...string) {
	t.Helper()
	slices.Sort(want)
	waitFor(t, fmt.Sprintf("%s's configuration of group %d", n.id, g), func() error {
		if got := servers(t, n, g); !slices.Equal(got, want) {
			return fmt.Errorf("servers %v, want %v", got, want)
		}
		return nil
	})
}

// waitFor polls cond until it returns nil, failing the test with cond's
// last error after waitTimeout.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ctx returns a context that ends after waitTimeout or with the test.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// close closes every node, in parallel: each shuts its groups down one by
// one.
func (c *testCluster) close() {
	var wg sync.WaitGroup
	for _, n := range c.snapshotNodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.close(); err != nil {
				c.t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// testLogger discards the node's logs, unless CONSENSUS_TEST_LOG is set:
// then they go to stderr, tagged with the node.
func testLogger(id string) *slog.Logger {
	if os.Getenv("CONSENSUS_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
}
