package driver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/internal/consensustest"
	"github.com/ballast-storage/ballast/txn"
)

// testRack is a few consensus nodes in this process, each a member of
// every txn group, each with a keeper, and a Local that reaches them.
type testRack struct {
	t      testing.TB
	dir    string
	groups []txn.GroupID
	faults *consensustest.Faults
	local  *Local
	rc     *raft.Config

	mu    sync.Mutex
	nodes []*rackNode // by index; a down node has node == nil
}

// rackNode is one node's slot: the node when it runs, its FSMs, and the
// proposer and keeper it runs for its groups.
type rackNode struct {
	id       string
	index    uint32
	addr     raft.ServerAddress
	node     *consensustest.Node
	fsms     map[txn.GroupID]*FSM
	service  *Service // serves fsms over gRPC
	proposer *Proposer
	keeper   *Keeper
	// incarnation tells the proposers of successive runs apart.
	incarnation uint32
}

// testConfig keeps transactions short-lived so that recovery and garbage
// collection happen within a test.
var testCoordinator = txn.CoordinatorConfig{Lifetime: 500 * time.Millisecond, BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestRack(t testing.TB, size int, groups ...txn.GroupID) *testRack {
	t.Helper()
	rc := consensustest.RaftConfig()
	// Small snapshots often, so that restores and snapshot installs run.
	rc.SnapshotThreshold = 64
	rc.SnapshotInterval = 300 * time.Millisecond
	rc.TrailingLogs = 32
	r := &testRack{t: t, dir: t.TempDir(), groups: groups, faults: consensustest.NewFaults(), local: NewLocal(), rc: rc}
	for i := range size {
		r.nodes = append(r.nodes, &rackNode{id: fmt.Sprintf("n%d", i+1), index: uint32(i + 1)})
	}
	// Addresses first: every member bootstraps with all the voters.
	for _, n := range r.nodes {
		r.open(n)
	}
	var voters []raft.Server
	for _, n := range r.nodes {
		voters = append(voters, n.node.Voter())
	}
	for _, n := range r.nodes {
		r.startGroups(n, voters)
	}
	t.Cleanup(r.close)
	return r
}

func (r *testRack) open(n *rackNode) {
	r.t.Helper()
	node, err := consensustest.StartNode(consensustest.NodeConfig{Dir: r.dir, ID: n.id, Addr: n.addr, Raft: r.rc, Faults: r.faults, Logger: quietLogger(),
		Register: func(s grpc.ServiceRegistrar, cn *consensus.Node) { n.service = NewService(cn); n.service.Register(s) }})
	if err != nil {
		r.t.Fatal(err)
	}
	n.node, n.addr = node, node.Addr
}

// startGroups starts (or restarts, from disk) n's members, then its
// proposer and keeper.
func (r *testRack) startGroups(n *rackNode, voters []raft.Server) {
	r.t.Helper()
	n.fsms = map[txn.GroupID]*FSM{}
	for _, g := range r.groups {
		fsm := NewFSM(g)
		if _, err := n.node.StartGroup(uint64(g), fsm, voters); err != nil {
			r.t.Fatalf("start group %d on %s: %v", g, n.id, err)
		}
		n.fsms[g] = fsm
		n.service.Add(fsm)
		r.local.Add(Member{Node: n.node.Node, Host: fsm})
	}
	n.incarnation++
	p, err := NewProposer(ProposerConfig{Node: 1000*n.incarnation + n.index, Groups: r.local, Coordinator: testCoordinator, RequestTimeout: time.Second, Logger: quietLogger()})
	if err != nil {
		r.t.Fatal(err)
	}
	n.proposer = p
	members := make([]Member, 0, len(n.fsms))
	for _, f := range n.fsms {
		members = append(members, Member{Node: n.node.Node, Host: f})
	}
	n.keeper = StartKeeper(KeeperConfig{Proposer: p, Members: func() []Member { return members }, Interval: 100 * time.Millisecond, Linger: time.Second})
}

func (r *testRack) voters() []raft.Server {
	var vs []raft.Server
	for _, n := range r.nodes {
		vs = append(vs, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.id), Address: n.addr})
	}
	return vs
}

// kill stops node i as a crash would, as far as its peers can tell.
func (r *testRack) kill(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[i]
	if n.node == nil {
		return
	}
	n.keeper.Stop()
	n.proposer.Close()
	r.local.Remove(n.node.Node)
	if err := n.node.Close(); err != nil {
		r.t.Errorf("kill %s: %v", n.id, err)
	}
	n.node = nil
}

// restart brings node i back from its disk, at its address.
func (r *testRack) restart(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[i]
	if n.node != nil {
		return
	}
	r.open(n)
	r.startGroups(n, r.voters())
}

func (r *testRack) up(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[i].node != nil
}

func (r *testRack) close() {
	for i := range r.nodes {
		r.kill(i)
	}
}

// pending counts, over the groups' leaders, the locks and the records
// not yet forgotten.
func (r *testRack) pending() (holders, records int, staging int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.groups {
		for _, n := range r.nodes {
			if n.node == nil || !n.node.Leads(uint64(g)) {
				continue
			}
			holders += len(n.fsms[g].Holders())
			for _, rec := range n.fsms[g].Records() {
				records++
				if rec.State == txn.RecordStaging {
					staging++
				}
			}
		}
	}
	return holders, records, staging
}

// waitQuiet waits until no lock, STAGING record or (if forgotten is set)
// record is left: every transaction finished and, with forgotten, was
// garbage-collected.
func (r *testRack) waitQuiet(ctx context.Context, forgotten bool) error {
	for {
		h, rec, st := r.pending()
		if h == 0 && st == 0 && (!forgotten || rec == 0) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still %d locks held, %d records (%d staging): %w", h, rec, st, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
