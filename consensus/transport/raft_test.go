package transport

import (
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func newCluster(t *testing.T, size int, cfg Config) []*node {
	nodes := make([]*node, size)
	for i := range nodes {
		nodes[i] = newNode(t, string(rune('a'+i)), cfg)
	}
	return nodes
}

// Three nodes run four groups over one stream per ordered pair of nodes;
// every group replicates a few hundred commands concurrently.
func TestRaftGroupsShareOneStreamPerPair(t *testing.T) {
	nodes := newCluster(t, 3, Config{})
	groups := []uint64{1, 2, 3, 4}
	for _, gid := range groups {
		for _, n := range nodes {
			n.startGroup(gid, voters(nodes), nil, nil)
		}
	}
	// Every node leads a group, so that every node talks to every other
	// one (a follower alone may never send anything to another follower).
	for i, gid := range groups {
		transferTo(t, nodes, gid, nodes[i%len(nodes)])
	}

	const perGroup = 300
	var wg sync.WaitGroup
	errs := make(chan error, len(groups))
	for _, gid := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- applyAll(t, nodes, gid, commands(gid, 0, perGroup, 16))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, gid := range groups {
		got := waitConverged(t, nodes, gid, perGroup, 10*time.Second)
		checkAllApplied(t, gid, got, commands(gid, 0, perGroup, 16))
	}

	checkOneStreamPerPair(t, nodes)
	for _, n := range nodes {
		st := n.m.Stats()
		if st.StreamsOpened != 2 {
			t.Errorf("%s opened %d streams, want 2 (streams broke?)", n.id, st.StreamsOpened)
		}
		if st.Groups != len(groups) {
			t.Errorf("%s has %d groups, want %d", n.id, st.Groups, len(groups))
		}
	}
	var pipelines uint64
	for _, n := range nodes {
		pipelines += n.m.pipelinesOpened.Load()
	}
	if pipelines == 0 {
		t.Error("raft never replicated through a pipeline")
	}
}

// A member that was down while the leader snapshotted and compacted its
// log catches up by InstallSnapshot, streamed in several chunks.
func TestRaftInstallSnapshot(t *testing.T) {
	nodes := newCluster(t, 3, Config{SnapshotChunkBytes: 16 << 10})
	const gid = 9
	tune := func(c *raft.Config) {
		c.TrailingLogs = 10
		c.SnapshotThreshold = 50
	}
	for _, n := range nodes {
		n.startGroup(gid, voters(nodes), tune, nil)
	}
	leader := waitLeader(t, nodes, gid, 10*time.Second)
	if err := applyAll(t, nodes, gid, commands(gid, 0, 20, 1024)); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, nodes, gid, 20, 10*time.Second)

	// Stop a follower's member; the others keep going without it and
	// compact their logs past what it has.
	var down *node
	for _, n := range nodes {
		if n != leader {
			down = n
			break
		}
	}
	prev := down.stopGroup(gid)
	if err := applyAll(t, nodes, gid, commands(gid, 20, 200, 1024)); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if g := n.group(gid); g != nil {
			if err := g.r.Snapshot().Error(); err != nil {
				t.Fatalf("%s snapshot: %v", n.id, err)
			}
		}
	}
	leader = waitLeader(t, nodes, gid, 10*time.Second)
	first, err := leader.group(gid).logs.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := prev.logs.LastIndex()
	if first <= last+1 {
		t.Fatalf("leader's log starts at %d, the stopped member has up to %d: no snapshot needed", first, last)
	}

	// Restart it on its old stores: it must get the snapshot (~220 KiB,
	// 14 chunks) and then the trailing log.
	g := down.startGroup(gid, nil, tune, prev)
	got := waitConverged(t, nodes, gid, 220, 15*time.Second)
	if g.fsm.restoreCount() == 0 {
		t.Error("the restarted member caught up without installing a snapshot")
	}
	checkAllApplied(t, gid, got, commands(gid, 0, 220, 1024))
	checkAtMostOneStreamPerPair(t, nodes)
}

// Leadership transfer (TimeoutNow) moves the leader, and the group keeps
// committing.
func TestRaftLeadershipTransfer(t *testing.T) {
	nodes := newCluster(t, 3, Config{})
	for _, gid := range []uint64{1, 2} {
		for _, n := range nodes {
			n.startGroup(gid, voters(nodes), nil, nil)
		}
	}
	for _, gid := range []uint64{1, 2} {
		old := waitLeader(t, nodes, gid, 10*time.Second)
		if err := old.group(gid).r.LeadershipTransfer().Error(); err != nil {
			t.Fatalf("group %d transfer: %v", gid, err)
		}
		now := waitLeader(t, nodes, gid, 10*time.Second)
		if now == old {
			t.Fatalf("group %d: leader still %s after transfer", gid, old.id)
		}
		// And to a chosen server.
		var target *node
		for _, n := range nodes {
			if n != now {
				target = n
				break
			}
		}
		f := now.group(gid).r.LeadershipTransferToServer(raft.ServerID(target.id), target.addr)
		if err := f.Error(); err != nil {
			t.Fatalf("group %d transfer to %s: %v", gid, target.id, err)
		}
		if got := waitLeader(t, nodes, gid, 10*time.Second); got != target {
			t.Fatalf("group %d: leader %s, want %s", gid, got.id, target.id)
		}
		if err := applyAll(t, nodes, gid, commands(gid, 0, 20, 8)); err != nil {
			t.Fatal(err)
		}
		waitConverged(t, nodes, gid, 20, 10*time.Second)
	}
}

// A node's server dies and comes back at the same address: the streams to
// it break, reconnect, and its groups catch up.
func TestRaftServerRestart(t *testing.T) {
	nodes := newCluster(t, 3, Config{RPCTimeout: 2 * time.Second})
	a, c := nodes[0], nodes[2]
	groups := []uint64{1, 2}
	for _, gid := range groups {
		for _, n := range nodes {
			n.startGroup(gid, voters(nodes), nil, nil)
		}
	}
	// Let a lead every group, so that it must reach c.
	for _, gid := range groups {
		transferTo(t, nodes, gid, a)
		if err := applyAll(t, nodes, gid, commands(gid, 0, 10, 8)); err != nil {
			t.Fatal(err)
		}
		waitConverged(t, nodes, gid, 10, 10*time.Second)
	}
	opened := a.m.Stats().StreamsOpened

	c.stopServer()
	for _, gid := range groups {
		if err := applyAll(t, nodes, gid, commands(gid, 10, 50, 8)); err != nil {
			t.Fatal(err)
		}
	}
	// a's stream to c is gone.
	deadline := time.Now().Add(5 * time.Second)
	for hasOutbound(a, c) {
		if time.Now().After(deadline) {
			t.Fatal("a still has a stream to the stopped c")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	c.restartServer()
	for _, gid := range groups {
		waitConverged(t, nodes, gid, 60, 20*time.Second)
	}
	if got := a.m.Stats().StreamsOpened; got <= opened {
		t.Errorf("a opened %d streams in all, %d before c stopped: no reconnect?", got, opened)
	}
	if !hasOutbound(a, c) || c.m.Stats().Inbound[a.id] != 1 {
		t.Errorf("a -> c: outbound %v, c's inbound %v; want one stream", a.m.Stats().Outbound, c.m.Stats().Inbound)
	}
	checkAtMostOneStreamPerPair(t, nodes)
}

func hasOutbound(from, to *node) bool {
	for _, a := range from.m.Stats().Outbound {
		if a == to.addr {
			return true
		}
	}
	return false
}

// checkAllApplied asserts that got holds every command of want. (A command
// whose Apply failed with the leader's loss is retried, so it may appear
// twice.)
func checkAllApplied(t *testing.T, gid uint64, got, want []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range got {
		seen[c] = true
	}
	for _, c := range want {
		if !seen[c] {
			t.Fatalf("group %d lost command %.20q", gid, c)
		}
	}
}
