package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Every test here runs real raft groups over the real transport, on
// loopback, with testRaftConfig's timeouts.

func TestStartGroupConcurrent(t *testing.T) {
	dir := t.TempDir()
	n, err := startTestNode(dir, "n0", testRaftConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.close() })
	voters := []raft.Server{n.voter()}

	// Distinct groups start at once; four starts of one group race, and
	// exactly one may win.
	var wg sync.WaitGroup
	errs := make([]error, 12)
	for i := range errs {
		g := uint64(i + 1)
		if i >= 8 {
			g = 100
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = n.node.StartGroup(g, newKVFSM(), voters)
		}()
	}
	wg.Wait()
	for i, err := range errs[:8] {
		if err != nil {
			t.Errorf("group %d: %v", i+1, err)
		}
	}
	won := 0
	for _, err := range errs[8:] {
		switch {
		case err == nil:
			won++
		case !strings.Contains(err.Error(), "already"):
			t.Errorf("duplicate start: %v, want an \"already started\" error", err)
		}
	}
	if won != 1 {
		t.Errorf("%d of 4 starts of group 100 succeeded, want 1", won)
	}
	if _, err := n.node.StartGroup(1, newKVFSM(), voters); err == nil {
		t.Error("second StartGroup of group 1 succeeded")
	}
	if _, err := n.node.StartGroup(200, nil, voters); err == nil {
		t.Error("StartGroup with a nil FSM succeeded")
	}
	waitFor(t, "every single-voter group to elect n0", func() error {
		for _, s := range n.node.Status() {
			if s.State != raft.Leader {
				return fmt.Errorf("group %d: %v", s.Group, s.State)
			}
		}
		return nil
	})

	// Starts racing Close either finish before Close takes the groups (and
	// are shut down by it) or fail with ErrClosed.
	m, err := startTestNode(dir, "m0", testRaftConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.close() })
	errs = make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.node.StartGroup(uint64(i+1), newKVFSM(), []raft.Server{m.voter()})
		}()
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("group %d racing Close: %v", i+1, err)
		}
	}
	if _, err := m.node.StartGroup(50, newKVFSM(), []raft.Server{m.voter()}); !errors.Is(err, ErrClosed) {
		t.Errorf("StartGroup after Close: %v, want ErrClosed", err)
	}
	if got := m.node.Status(); len(got) != 0 {
		t.Errorf("Status after Close reports %d groups", len(got))
	}
}

func TestJoinGroupDoesNotElect(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	n3 := c.addNode()
	// Group 1 runs without n3; no node knows group 2.
	c.joinGroup(n3, 1)
	c.joinGroup(n3, 2)
	// Several election timeouts: a member with voters would have
	// campaigned by now.
	time.Sleep(5 * testRaftConfig().ElectionTimeout)
	for _, s := range n3.node.Status() {
		if s.State != raft.Follower || s.Term != 0 || s.LeaderID != "" || len(s.Servers) != 0 || s.LastLogIndex != 0 {
			t.Errorf("group %d: joined member has state %v, term %d, leader %q, servers %v, last index %d; want an idle follower",
				s.Group, s.State, s.Term, s.LeaderID, s.Servers, s.LastLogIndex)
		}
	}
	// The running group did not notice.
	for _, n := range c.snapshotNodes()[:3] {
		waitServers(t, n, 1, "n0:Voter", "n1:Voter", "n2:Voter")
	}
}

func TestAddVoterWithJoin(t *testing.T) {
	groups := []uint64{1, 2, 3}
	c := newTestCluster(t, 3, groups...)
	ctx := testContext(t)
	for _, g := range groups {
		c.writeN(g, "before", 20)
	}
	// Group 1's members compact their logs, so the new member must catch
	// up from a snapshot (InstallSnapshot over the transport), whoever
	// leads.
	for _, n := range c.snapshotNodes() {
		c.waitHasN(n, 1, "before", 20)
		if err := raftOf(n, 1).Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}

	n3 := c.addNode()
	for _, g := range groups {
		c.joinGroup(n3, g)
	}
	for _, g := range groups {
		l := c.leader(g)
		var follower *testNode
		for _, n := range c.snapshotNodes()[:3] {
			if n != l {
				follower = n
				break
			}
		}
		err := follower.node.AddVoter(ctx, g, raft.ServerID(n3.id), n3.addr)
		var nl *NotLeaderError
		if !errors.Is(err, raft.ErrNotLeader) || !errors.As(err, &nl) {
			t.Fatalf("AddVoter on follower %s: %v, want a NotLeaderError", follower.id, err)
		}
		if nl.Group != g || nl.LeaderID == raft.ServerID(follower.id) {
			t.Errorf("NotLeaderError %+v, want group %d and a leader other than %s", nl, g, follower.id)
		}
		c.onLeader(g, func(l *testNode) error {
			return l.node.AddVoter(ctx, g, raft.ServerID(n3.id), n3.addr)
		})
	}
	if err := n3.node.AddVoter(ctx, 99, "x", "127.0.0.1:1"); !errors.Is(err, ErrNoGroup) {
		t.Errorf("AddVoter to an unknown group: %v, want ErrNoGroup", err)
	}
	for _, g := range groups {
		c.writeN(g, "after", 20)
	}
	for _, g := range groups {
		c.waitHasN(n3, g, "before", 20)
		c.waitHasN(n3, g, "after", 20)
		for _, n := range c.snapshotNodes() {
			waitServers(t, n, g, "n0:Voter", "n1:Voter", "n2:Voter", "n3:Voter")
		}
	}
	if idx := raftOf(n3, 1).Stats()["last_snapshot_index"]; idx == "0" {
		t.Error("n3 caught up with group 1 without installing a snapshot")
	}
}

func TestRemoveServer(t *testing.T) {
	c := newTestCluster(t, 3, 1, 2)
	ctx := testContext(t)
	nodes := c.snapshotNodes()
	c.writeN(1, "before", 5)
	c.writeN(2, "before", 5)

	// Group 1 loses a follower.
	l1 := c.leader(1)
	var gone *testNode
	for _, n := range nodes {
		if n != l1 {
			gone = n
			break
		}
	}
	if err := gone.node.RemoveServer(ctx, 1, raft.ServerID(l1.id)); !errors.Is(err, raft.ErrNotLeader) {
		t.Errorf("RemoveServer on a follower: %v, want ErrNotLeader", err)
	}
	c.onLeader(1, func(l *testNode) error { return l.node.RemoveServer(ctx, 1, raft.ServerID(gone.id)) })
	c.onLeader(1, func(l *testNode) error { return l.node.RemoveServer(ctx, 1, "not-a-member") })
	if err := gone.node.StopGroup(1); err != nil {
		t.Fatal(err)
	}
	if err := gone.node.StopGroup(1); !errors.Is(err, ErrNoGroup) {
		t.Errorf("second StopGroup: %v, want ErrNoGroup", err)
	}

	// Group 2's leader removes itself: it steps down and shuts its member
	// down, and the other two elect a leader. (If the leadership moves
	// first, the new leader removes it.)
	l2 := c.leader(2)
	selfRemoved := c.onLeader(2, func(l *testNode) error { return l.node.RemoveServer(ctx, 2, raft.ServerID(l2.id)) }) == l2
	waitFor(t, "group 2 to elect a new leader", func() error {
		if l := c.findLeader(2); l == nil || l == l2 {
			return errors.New("no new leader yet")
		}
		return nil
	})

	c.writeN(1, "after", 10)
	c.writeN(2, "after", 10)
	for _, n := range nodes {
		if n != gone {
			c.waitHasN(n, 1, "after", 10)
			waitServers(t, n, 1, voterNames(nodes, gone)...)
		}
		if n != l2 {
			c.waitHasN(n, 2, "after", 10)
			waitServers(t, n, 2, voterNames(nodes, l2)...)
		}
	}
	if _, ok := c.fsm(gone, 1).get("after-0"); ok {
		t.Errorf("removed %s applied a later write of group 1", gone.id)
	}
	if s := raftOf(l2, 2).State(); selfRemoved && s != raft.Shutdown {
		t.Errorf("group 2's removed leader is %v, want Shutdown", s)
	}
}

func TestMoveVoter(t *testing.T) {
	groups := []uint64{1, 2, 3, 4}
	c := newTestCluster(t, 3, groups...)
	ctx := testContext(t)
	for _, g := range groups {
		c.writeN(g, "before", 10)
	}
	n3 := c.addNode()
	for _, g := range groups[:3] {
		c.joinGroup(n3, g)
	}
	to := n3.voter()

	// Group 1 moves a follower, group 2 its leader.
	moved := map[uint64]*testNode{}
	for _, g := range groups[:2] {
		l := c.leader(g)
		from := l
		if g == 1 {
			from = otherThan(c.snapshotNodes()[:3], l)
		}
		move := func(l *testNode) error { return l.node.MoveVoter(ctx, g, raft.ServerID(from.id), to) }
		c.onLeader(g, move)
		moved[g] = from
		// Done already: a retry, on whichever node leads now, succeeds
		// without a change.
		c.onLeader(g, move)
	}

	// Group 3: only the leader may move.
	l3 := c.leader(3)
	f3 := otherThan(c.snapshotNodes()[:3], l3)
	if err := f3.node.MoveVoter(ctx, 3, raft.ServerID(f3.id), to); !errors.Is(err, raft.ErrNotLeader) {
		t.Errorf("MoveVoter on a follower: %v, want ErrNotLeader", err)
	}
	if err := l3.node.MoveVoter(ctx, 3, "not-a-member", to); err == nil {
		t.Error("moving a server not in the configuration succeeded")
	}

	// Group 4: n3 does not run the group, so it never catches up, and
	// the old voter must stay.
	f4 := otherThan(c.snapshotNodes()[:3], c.leader(4))
	for try := 0; ; try++ {
		l4 := c.leader(4)
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := l4.node.MoveVoter(short, 4, raft.ServerID(f4.id), to)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), f4.id+" not removed") {
			break
		}
		if err == nil || !leadershipMoved(err) || try == 3 {
			t.Fatalf("MoveVoter to a server not running the group: %v, want a deadline error saying %s was not removed", err, f4.id)
		}
	}
	if got := servers(t, c.leader(4), 4); !slices.Contains(got, f4.id+":Voter") {
		t.Errorf("group 4's servers are %v after a failed move; %s was removed", got, f4.id)
	}
	// Once n3 runs the group, a retry completes the move.
	c.joinGroup(n3, 4)
	c.onLeader(4, func(l *testNode) error { return l.node.MoveVoter(ctx, 4, raft.ServerID(f4.id), to) })
	moved[4] = f4

	for _, g := range []uint64{1, 2, 4} {
		c.writeN(g, "after", 10)
		c.waitHasN(n3, g, "before", 10)
		c.waitHasN(n3, g, "after", 10)
		want := voterNames(c.snapshotNodes(), moved[g])
		for _, n := range c.snapshotNodes() {
			if n != moved[g] {
				waitServers(t, n, g, want...)
			}
		}
	}
}

func TestTransferLeadership(t *testing.T) {
	groups := []uint64{1, 2, 3}
	c := newTestCluster(t, 3, groups...)
	ctx := testContext(t)
	nodes := c.snapshotNodes()
	for i, g := range groups {
		l := c.leader(g)
		// Each group goes to a different node, the leader or not.
		target := nodes[i]
		if target == l {
			target = otherThan(nodes, l)
		}
		if err := otherThan(nodes, l).node.TransferLeadership(ctx, g, raft.ServerID(target.id)); !errors.Is(err, raft.ErrNotLeader) {
			t.Errorf("transfer on a follower: %v, want ErrNotLeader", err)
		}
		if err := l.node.TransferLeadership(ctx, g, raft.ServerID(l.id)); err == nil {
			t.Error("transfer to the leader itself succeeded")
		}
		if err := l.node.TransferLeadership(ctx, g, "nobody"); err == nil {
			t.Error("transfer to a server not in the group succeeded")
		}
		if err := transferTo(ctx, c, g, target); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("every node to see %s lead group %d", target.id, g), func() error {
			for _, n := range nodes {
				if _, id := raftOf(n, g).LeaderWithID(); id != raft.ServerID(target.id) {
					return fmt.Errorf("%s sees leader %q", n.id, id)
				}
			}
			return nil
		})
		c.writeN(g, "after", 5)
	}

	// Without a target, any other voter takes over.
	l := c.onLeader(1, func(l *testNode) error { return l.node.TransferLeadership(ctx, 1, "") })
	if nl := c.leader(1); nl == l {
		t.Errorf("%s still leads group 1 after a transfer to any voter", l.id)
	}
	c.writeN(1, "any", 5)
}

func TestDrain(t *testing.T) {
	groups := []uint64{1, 2, 3, 4, 5, 6}
	c := newTestCluster(t, 3, groups...)
	ctx := testContext(t)
	n0 := c.snapshotNodes()[0]
	for _, g := range groups {
		if err := transferTo(ctx, c, g, n0); err != nil {
			t.Fatal(err)
		}
	}

	// Writers keep every group busy through the drain.
	var written [7]atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("bg-%d", i)
				if err := c.write(g, k, k); err != nil {
					t.Errorf("background write: %v", err)
					return
				}
				written[g].Add(1)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	t0 := time.Now()
	if err := n0.node.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("drained %d groups in %v", len(groups), time.Since(t0).Round(time.Millisecond))
	var atDrain [7]int64
	for _, g := range groups {
		atDrain[g] = written[g].Load()
	}
	for _, s := range n0.node.Status() {
		if s.State == raft.Leader {
			t.Errorf("n0 still leads group %d", s.Group)
		}
	}
	for _, g := range groups {
		c.writeN(g, "after", 3)
		if l := c.leader(g); l == n0 {
			t.Errorf("n0 leads group %d again", g)
		}
	}
	waitFor(t, "background writes to go on after the drain", func() error {
		for _, g := range groups {
			if written[g].Load() <= atDrain[g] {
				return fmt.Errorf("group %d: no write since the drain", g)
			}
		}
		return nil
	})

	// A group with no other voter cannot be drained, and Drain says so.
	c.startGroup(n0, 7, []raft.Server{n0.voter()})
	c.leader(7)
	err := n0.node.Drain(ctx)
	var de *DrainError
	if !errors.As(err, &de) || len(de.Groups) != 1 || de.Groups[7] == nil {
		t.Fatalf("Drain with a single-voter group: %v, want a DrainError for group 7 only", err)
	}
}

func TestStatus(t *testing.T) {
	groups := []uint64{3, 1, 2}
	c := newTestCluster(t, 3, groups...)
	nodes := c.snapshotNodes()
	for _, g := range groups {
		c.writeN(g, "k", 10)
	}
	hb := testRaftConfig().HeartbeatTimeout
	waitFor(t, "every node's status to agree", func() error {
		all := map[string][]GroupStatus{}
		for _, n := range nodes {
			st := n.node.Status()
			if len(st) != 3 || st[0].Group != 1 || st[1].Group != 2 || st[2].Group != 3 {
				return fmt.Errorf("%s reports groups %v, want 1, 2, 3 in order", n.id, st)
			}
			all[n.id] = st
		}
		for i := range groups {
			ref := all["n0"][i]
			leaders := 0
			for _, n := range nodes {
				s := all[n.id][i]
				if s.State == raft.Leader {
					leaders++
					if s.LeaderID != raft.ServerID(n.id) || s.LeaderAddress != n.addr || s.SinceContact != 0 {
						return fmt.Errorf("group %d: leader %s reports leader %s at %s, since contact %v", s.Group, n.id, s.LeaderID, s.LeaderAddress, s.SinceContact)
					}
				} else if s.LastContact.IsZero() || s.SinceContact > hb {
					return fmt.Errorf("group %d: follower %s last heard from the leader %v ago", s.Group, n.id, s.SinceContact)
				}
				if s.Term != ref.Term || s.LeaderID != ref.LeaderID || s.LeaderAddress != ref.LeaderAddress {
					return fmt.Errorf("group %d: %s sees term %d leader %s, n0 term %d leader %s", s.Group, n.id, s.Term, s.LeaderID, ref.Term, ref.LeaderID)
				}
				if s.LastLogIndex != ref.LastLogIndex || s.CommitIndex != ref.CommitIndex || s.AppliedIndex != ref.AppliedIndex {
					return fmt.Errorf("group %d: %s has last/commit/applied %d/%d/%d, n0 %d/%d/%d", s.Group, n.id,
						s.LastLogIndex, s.CommitIndex, s.AppliedIndex, ref.LastLogIndex, ref.CommitIndex, ref.AppliedIndex)
				}
				// Bootstrap configuration, the leader's no-op, 10 writes.
				if s.AppliedIndex < 12 || s.CommitIndex != s.LastLogIndex || s.AppliedIndex != s.CommitIndex {
					return fmt.Errorf("group %d: %s has last/commit/applied %d/%d/%d, want all equal and at least 12", s.Group, n.id,
						s.LastLogIndex, s.CommitIndex, s.AppliedIndex)
				}
				if len(s.Servers) != 3 {
					return fmt.Errorf("group %d: %s has servers %v", s.Group, n.id, s.Servers)
				}
				for _, srv := range s.Servers {
					if srv.Suffrage != raft.Voter {
						return fmt.Errorf("group %d: %s has servers %v", s.Group, n.id, s.Servers)
					}
				}
			}
			if leaders != 1 {
				return fmt.Errorf("group %d has %d leaders", ref.Group, leaders)
			}
		}
		return nil
	})
}

// transferTo moves group g's leadership to target, asking whichever node
// leads, until target leads: an election may go to another voter.
func transferTo(ctx context.Context, c *testCluster, g uint64, target *testNode) error {
	var last error
	for ctx.Err() == nil {
		l := c.findLeader(g)
		switch {
		case l == target:
			return nil
		case l != nil:
			last = l.node.TransferLeadership(ctx, g, raft.ServerID(target.id))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("group %d: move leadership to %s: %v (last error %v)", g, target.id, ctx.Err(), last)
}

// otherThan returns the first of nodes that is not n.
func otherThan(nodes []*testNode, n *testNode) *testNode {
	for _, o := range nodes {
		if o != n {
			return o
		}
	}
	return nil
}

// voterNames returns "id:Voter" for each of nodes but the excluded one.
func voterNames(nodes []*testNode, except *testNode) []string {
	var out []string
	for _, n := range nodes {
		if n != except {
			out = append(out, n.id+":Voter")
		}
	}
	return out
}

// TestAddNonvoter: a node added as a non-voter applies the group's log
// but is no voter; adding it again leaves it as it is.
func TestAddNonvoter(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	ctx := testContext(t)
	c.writeN(1, "before", 10)
	n3 := c.addNode()
	c.joinGroup(n3, 1)
	for i := 0; i < 2; i++ {
		c.onLeader(1, func(l *testNode) error {
			return l.node.AddNonvoter(ctx, 1, raft.ServerID(n3.id), n3.addr)
		})
	}
	c.writeN(1, "after", 10)
	c.waitHasN(n3, 1, "before", 10)
	c.waitHasN(n3, 1, "after", 10)
	for _, n := range c.snapshotNodes() {
		waitServers(t, n, 1, "n0:Voter", "n1:Voter", "n2:Voter", "n3:Nonvoter")
	}
}

// TestMoveVote: the vote moves to the new member, the old voter stays as
// a non-voter that still applies the log; a retry is a no-op.
func TestMoveVote(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	ctx := testContext(t)
	c.writeN(1, "before", 10)
	n3 := c.addNode()
	c.joinGroup(n3, 1)
	// The vote moves off the leader itself: it must hand over the
	// leadership rather than demote (and so shut down) its own member.
	from := c.leader(1)
	for i := 0; i < 2; i++ {
		c.onLeader(1, func(l *testNode) error {
			return l.node.MoveVote(ctx, 1, raft.ServerID(from.id), raft.Server{ID: raft.ServerID(n3.id), Address: n3.addr})
		})
	}
	if st := raftOf(from, 1).State(); st == raft.Shutdown {
		t.Fatalf("%s's member was shut down by moving its vote", from.id)
	}
	c.writeN(1, "after", 10)
	c.waitHasN(n3, 1, "after", 10)
	c.waitHasN(from, 1, "after", 10)
	var want []string
	for _, id := range []string{"n0", "n1", "n2", "n3"} {
		if id == from.id {
			want = append(want, id+":Nonvoter")
		} else {
			want = append(want, id+":Voter")
		}
	}
	waitServers(t, n3, 1, want...)
}
