package logstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// countFSM counts the commands applied to it; its snapshot is the count.
type countFSM struct {
	mu sync.Mutex
	n  uint64
}

func (f *countFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l.Type == raft.LogCommand {
		f.n++
	}
	return f.n
}

func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return countSnapshot(f.n), nil
}

func (f *countFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var b [8]byte
	if _, err := io.ReadFull(rc, b[:]); err != nil {
		return err
	}
	f.mu.Lock()
	f.n = binary.BigEndian.Uint64(b[:])
	f.mu.Unlock()
	return nil
}

func (f *countFSM) count() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

type countSnapshot uint64

func (s countSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(binary.BigEndian.AppendUint64(nil, uint64(s))); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (countSnapshot) Release() {}

// raftNode is one node of the test cluster: one Store shared by its member
// of every group.
type raftNode struct {
	id    string
	store *Store
	rafts map[uint64]*raft.Raft
	fsms  map[uint64]*countFSM
	trans map[uint64]*raft.InmemTransport
}

type raftCluster struct {
	t      *testing.T
	dir    string
	groups []uint64
	nodes  []*raftNode
}

func addr(node string, group uint64) raft.ServerAddress {
	return raft.ServerAddress(fmt.Sprintf("%s/group-%d", node, group))
}

// open opens every node's store.
func (c *raftCluster) open() {
	t := c.t
	for _, n := range c.nodes {
		s, err := OpenWithOptions(filepath.Join(c.dir, n.id, "raftlog"), Options{Logger: quietLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		n.store = s
		n.rafts = map[uint64]*raft.Raft{}
		n.fsms = map[uint64]*countFSM{}
		n.trans = map[uint64]*raft.InmemTransport{}
	}
}

// startGroups starts every node's member of every group on its store;
// bootstrap says whether the groups are new.
func (c *raftCluster) startGroups(bootstrap bool) {
	t := c.t
	for _, g := range c.groups {
		var voters []raft.Server
		for _, n := range c.nodes {
			_, n.trans[g] = raft.NewInmemTransport(addr(n.id, g))
			voters = append(voters, raft.Server{ID: raft.ServerID(n.id), Address: addr(n.id, g)})
		}
		for _, a := range c.nodes {
			for _, b := range c.nodes {
				if a != b {
					a.trans[g].Connect(addr(b.id, g), b.trans[g])
				}
			}
		}
		for _, n := range c.nodes {
			conf := raft.DefaultConfig()
			conf.LocalID = raft.ServerID(n.id)
			conf.HeartbeatTimeout = 100 * time.Millisecond
			conf.ElectionTimeout = 100 * time.Millisecond
			conf.LeaderLeaseTimeout = 100 * time.Millisecond
			conf.CommitTimeout = 5 * time.Millisecond
			// Snapshots are taken by hand (TestRaftCluster), not by timer.
			conf.SnapshotThreshold = 1 << 30
			conf.SnapshotInterval = time.Hour
			conf.TrailingLogs = 32
			conf.Logger = hclog.NewNullLogger()
			store := n.store.Group(g)
			snaps, err := raft.NewFileSnapshotStoreWithLogger(
				filepath.Join(c.dir, n.id, "snapshots", fmt.Sprintf("group-%d", g)), 2, conf.Logger)
			if err != nil {
				t.Fatal(err)
			}
			has, err := raft.HasExistingState(store, store, snaps)
			if err != nil {
				t.Fatal(err)
			}
			if has == bootstrap {
				t.Fatalf("node %s group %d: HasExistingState = %v on a %s", n.id, g, has,
					map[bool]string{true: "new group", false: "restart"}[bootstrap])
			}
			if !has {
				if err := raft.BootstrapCluster(conf, store, store, snaps, n.trans[g], raft.Configuration{Servers: voters}); err != nil {
					t.Fatal(err)
				}
			}
			n.fsms[g] = &countFSM{}
			r, err := raft.NewRaft(conf, n.fsms[g], store, store, snaps, n.trans[g])
			if err != nil {
				t.Fatalf("node %s group %d: %v", n.id, g, err)
			}
			n.rafts[g] = r
		}
	}
}

// stop shuts every raft instance down and closes the stores.
func (c *raftCluster) stop() {
	c.stopRafts()
	for _, n := range c.nodes {
		if err := n.store.Close(); err != nil {
			c.t.Error(err)
		}
	}
}

func (c *raftCluster) leader(g uint64) *raft.Raft {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range c.nodes {
			if r := n.rafts[g]; r.State() == raft.Leader {
				return r
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("group %d: no leader", g)
	return nil
}

// apply applies n commands to group g through its leader, retrying those
// refused because leadership moved. (A command whose outcome is unknown
// may apply twice; the tests compare counts across restarts, not with n.)
func (c *raftCluster) apply(g uint64, n int) error {
	for n > 0 {
		r := c.leader(g)
		futures := make([]raft.ApplyFuture, n)
		for i := range futures {
			futures[i] = r.Apply([]byte("+1"), 5*time.Second)
		}
		n = 0
		for _, f := range futures {
			switch err := f.Error(); {
			case err == nil:
			case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
				n++
			default:
				return fmt.Errorf("group %d: apply: %w", g, err)
			}
		}
	}
	return nil
}

// settle waits until every member of group g has applied all the leader
// has, and returns that count.
func (c *raftCluster) settle(g uint64) (uint64, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r := c.leader(g)
		if err := r.Barrier(5 * time.Second).Error(); err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var want uint64
		for _, n := range c.nodes {
			if n.rafts[g] == r {
				want = n.fsms[g].count()
			}
		}
		for time.Now().Before(deadline) {
			same := true
			for _, n := range c.nodes {
				same = same && n.fsms[g].count() == want
			}
			if same {
				return want, nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return 0, fmt.Errorf("group %d: members did not converge", g)
}

// forEachGroup runs f for every group concurrently, so the groups' appends
// meet in each node's store.
func (c *raftCluster) forEachGroup(f func(g uint64) error) {
	var wg sync.WaitGroup
	errs := make([]error, len(c.groups))
	for i, g := range c.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(g)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.t.Fatal(err)
	}
}

// TestRaftCluster runs three voters of two groups, every node's members
// sharing one Store, through appends, compaction by snapshot, a full stop
// and a restart, and checks that the log and the state are recovered and
// that the groups elect leaders and take commands again.
func TestRaftCluster(t *testing.T) {
	c := &raftCluster{t: t, dir: t.TempDir(), groups: []uint64{1, 2}}
	for _, id := range []string{"n1", "n2", "n3"} {
		c.nodes = append(c.nodes, &raftNode{id: id})
	}
	c.open()
	c.startGroups(true)

	counts := map[uint64]uint64{}
	var countsMu sync.Mutex
	c.forEachGroup(func(g uint64) error {
		if err := c.apply(g, 150); err != nil {
			return err
		}
		if _, err := c.settle(g); err != nil {
			return err
		}
		// Every member snapshots and compacts its log (DeleteRange of a
		// prefix) while the other group keeps appending.
		for _, n := range c.nodes {
			if err := n.rafts[g].Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
				return fmt.Errorf("node %s group %d: snapshot: %w", n.id, g, err)
			}
		}
		if err := c.apply(g, 150); err != nil {
			return err
		}
		n, err := c.settle(g)
		countsMu.Lock()
		counts[g] = n
		countsMu.Unlock()
		return err
	})

	type bounds struct{ first, last uint64 }
	before := map[string]bounds{}
	for _, n := range c.nodes {
		for _, g := range c.groups {
			if n.rafts[g].State() == raft.Leader {
				// Stop the leaders first, so that no entry is appended
				// on some members after the others have stopped.
				_ = n.rafts[g].Shutdown().Error()
			}
		}
	}
	c.stopRafts()
	for _, n := range c.nodes {
		for _, g := range c.groups {
			s := n.store.Group(g)
			first, _ := s.FirstIndex()
			last, _ := s.LastIndex()
			if first <= 1 {
				t.Errorf("node %s group %d: first index %d: the log was never compacted", n.id, g, first)
			}
			before[fmt.Sprint(n.id, g)] = bounds{first, last}
			t.Logf("node %s group %d: first=%d last=%d fsm=%d", n.id, g, first, last, n.fsms[g].count())
		}
		if err := n.store.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// Restart: the stores reopen with the same logs, then raft recovers the
	// state from the snapshot and the log.
	c.open()
	for _, n := range c.nodes {
		for _, g := range c.groups {
			s := n.store.Group(g)
			first, _ := s.FirstIndex()
			last, _ := s.LastIndex()
			if b := before[fmt.Sprint(n.id, g)]; first != b.first || last != b.last {
				t.Fatalf("node %s group %d: after reopen first=%d last=%d, before first=%d last=%d",
					n.id, g, first, last, b.first, b.last)
			}
			if ids, err := n.store.Groups(); err != nil || len(ids) != len(c.groups) {
				t.Fatalf("node %s: Groups() = %v, %v", n.id, ids, err)
			}
		}
	}
	c.startGroups(false)
	c.forEachGroup(func(g uint64) error {
		n, err := c.settle(g)
		if err != nil {
			return err
		}
		if n != counts[g] {
			return fmt.Errorf("group %d: state after restart %d, before %d", g, n, counts[g])
		}
		if err := c.apply(g, 50); err != nil {
			return err
		}
		if n, err = c.settle(g); err != nil {
			return err
		}
		if n < counts[g]+50 {
			return fmt.Errorf("group %d: state %d after 50 more commands on %d", g, n, counts[g])
		}
		return nil
	})
	c.stop()
}

// stopRafts shuts every raft instance down, leaving the stores open. The
// transports are cut first, so no log changes while members stop one by
// one.
func (c *raftCluster) stopRafts() {
	for _, n := range c.nodes {
		for _, tr := range n.trans {
			tr.DisconnectAll()
		}
	}
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		for _, r := range n.rafts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := r.Shutdown().Error(); err != nil {
					c.t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
}
