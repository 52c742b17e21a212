package consensus

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
)

// restartAt starts node id again over dir, at the address its group knows
// it by, and puts it in the cluster in place of the old one.
func (c *testCluster) restartAt(old *testNode) *testNode {
	c.t.Helper()
	var lis net.Listener
	waitFor(c.t, "the old address to be free", func() error {
		var err error
		lis, err = net.Listen("tcp", string(old.addr))
		return err
	})
	n := &testNode{id: old.id, addr: old.addr, pool: &connPool{}}
	var err error
	n.node, err = Open(Config{NodeID: n.id, Address: n.addr, Dir: filepath.Join(c.dir, n.id),
		Dial: n.pool.dial, Logger: testLogger(n.id), Raft: testRaftConfig()})
	if err != nil {
		c.t.Fatal(err)
	}
	n.srv = grpc.NewServer()
	n.node.Register(n.srv)
	go func() { _ = n.srv.Serve(lis) }()
	c.mu.Lock()
	for i, m := range c.nodes {
		if m == old {
			c.nodes[i] = n
		}
	}
	c.mu.Unlock()
	return n
}

// TestWipedVoterAbstains: a voter whose state is lost must not help a
// candidate that lacks an entry the voter had stored to win. An entry is
// committed by the leader and one voter while the third is down; the
// leader stops, the voter that stored the entry loses its directory and
// rejoins, and the stale voter comes back. Without the rejoined voter's
// vote no leader can be elected; once the old leader returns and
// readmits it, it catches up and counts again.
func TestWipedVoterAbstains(t *testing.T) {
	const g = 1
	c := newTestCluster(t, 3, g)
	c.writeN(g, "a", 3)
	nodes := c.snapshotNodes()
	voters := []raft.Server{nodes[0].voter(), nodes[1].voter(), nodes[2].voter()}
	leader := c.leader(g)
	var others []*testNode
	for _, n := range nodes {
		if n != leader {
			others = append(others, n)
		}
	}
	stale, wiped := others[0], others[1]

	if err := stale.close(); err != nil {
		t.Fatal(err)
	}
	c.writeN(g, "e", 1) // on the leader and wiped only
	c.waitHasN(wiped, g, "e", 1)
	for _, n := range []*testNode{leader, wiped} {
		if err := n.close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(c.dir, wiped.id)); err != nil {
		t.Fatal(err)
	}

	wiped = c.restartAt(wiped)
	fsm := newKVFSM()
	if _, err := wiped.node.RejoinGroup(g, fsm); err != nil {
		t.Fatal(err)
	}
	c.setFSM(wiped, g, fsm)
	if !wiped.node.Abstaining(g) {
		t.Fatal("a member that rejoined with no state does not abstain")
	}
	stale = c.restartAt(stale)
	c.startGroup(stale, g, voters)

	// Many election timeouts: the stale voter campaigns, and must lose.
	deadline := time.Now().Add(10 * testRaftConfig().ElectionTimeout)
	for time.Now().Before(deadline) {
		if l := c.findLeader(g); l != nil {
			_, has := c.fsm(l, g).get("e-0")
			t.Fatalf("%s was elected with the vote of the wiped voter (holds the committed entry: %v)", l.id, has)
		}
		time.Sleep(10 * time.Millisecond)
	}

	leader = c.restartAt(leader)
	c.startGroup(leader, g, voters)
	if l := c.leader(g); l != leader {
		t.Fatalf("%s leads; only %s holds every committed entry", l.id, leader.id)
	}
	index, err := leader.node.Readmit(testContext(t), g, raft.ServerID(wiped.id))
	if err != nil {
		t.Fatal(err)
	}
	if err := wiped.node.Readmitted(testContext(t), g, index); err != nil {
		t.Fatal(err)
	}
	if wiped.node.Abstaining(g) {
		t.Fatal("still abstaining once readmitted")
	}
	c.waitHasN(wiped, g, "e", 1)
	waitServers(t, leader, g, fmt.Sprint(stale.id, ":Voter"), fmt.Sprint(wiped.id, ":Voter"), fmt.Sprint(leader.id, ":Voter"))

	// It votes again: without the old leader, the other two elect one.
	if err := leader.close(); err != nil {
		t.Fatal(err)
	}
	l := c.leader(g)
	if !slices.Contains([]*testNode{stale, wiped}, l) {
		t.Fatalf("unexpected leader %s", l.id)
	}
	c.writeN(g, "f", 1)
	c.waitHasN(l, g, "e", 1)
}
