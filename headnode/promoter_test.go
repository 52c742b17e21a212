package headnode

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
	"github.com/hashicorp/raft"
)

// leadingGroup is a one-node raft group, led by this node, over fsm: what
// a promoter needs to step.
func leadingGroup(t *testing.T, fsm *volume.Directory) *vgroup {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "a"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.LogOutput = io.Discard
	addr, trans := raft.NewInmemTransport("a")
	logs := raft.NewInmemStore()
	r, err := raft.NewRaft(conf, fsm, logs, logs, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown().Error() })
	if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: "a", Address: addr}}}).Error(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("the one-node group elected no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &vgroup{id: 0, fsm: fsm, raft: r}
}

// TestPromoterStepDoesNotDeadlockWithRenewals: the group's state machine
// calls the promoter's renewal hook while it holds its own lock, so the
// promoter must not wait for that lock (reading the group's volumes or
// the head nodes) while it holds its own. Found by the chaos harness
// (seed 1001): the two locked each other on the leader of a volume group;
// that group applied nothing more and answered no read while its leader
// kept heartbeating, so its volume stayed unavailable for good, and every
// lookup of a volume on that node (holding the node's lock) hung too.
func TestPromoterStepDoesNotDeadlockWithRenewals(t *testing.T) {
	cfg := volume.LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}
	dir := volume.NewGroupDirectory(txnGroupOf(0))
	n := &Node{
		cfg:       Config{ID: "a"},
		log:       slog.New(slog.DiscardHandler),
		directory: dir,
		primaries: map[uint64]*primaryVolume{},
	}
	g := leadingGroup(t, dir)
	n.groups = []*vgroup{g}
	p := &promoter{node: n, group: g, cfg: cfg, clock: clock.NewManual(time.Hour), log: n.log}
	g.promoter = p
	// The hook as the node installs it, but slow to take the promoter's
	// lock: a loaded machine preempting the state machine's goroutine
	// there. That widens the window the deadlock needs; it does not
	// create it.
	dir.OnLeasesRenewed = func(holder string, vols []uint64) {
		time.Sleep(time.Millisecond)
		p.renewed(holder, vols)
	}
	dir.OnVolumeAdded = p.added
	if res := dir.ApplyCommand(1, createCmd("v", "a", "b"), 0); res.Err != nil {
		t.Fatal(res.Err)
	}

	var stop atomic.Bool
	stepped := make(chan struct{})
	go func() {
		defer close(stepped)
		for !stop.Load() {
			p.step(t.Context(), p.clock.Now())
		}
	}()
	renewals := make(chan struct{})
	go func() {
		defer close(renewals)
		renew := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{
			RenewLeases: &ballastpb.RenewLeasesCommand{Holder: "b"}}}
		for i := uint64(0); i < 300; i++ {
			dir.ApplyCommand(2+i, renew, 0)
		}
	}()
	select {
	case <-renewals:
	case <-time.After(10 * time.Second):
		t.Fatal("renewals applied in the group stopped: the state machine and the promoter wait for each other")
	}
	stop.Store(true)
	select {
	case <-stepped:
	case <-time.After(5 * time.Second):
		t.Fatal("the promoter's step never returned")
	}
}
