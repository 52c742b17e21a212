package headnode

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
	"github.com/hashicorp/raft"
)

// bareNode is a head node with only what the lease keeper and the
// replication server read: its id, a directory group (whose commands the
// test applies itself) and a block store. No raft, no network.
func bareNode(t *testing.T, id string, store *blockstore.Store) *Node {
	t.Helper()
	dir := volume.NewGroupDirectory(txnGroupOf(0))
	return &Node{
		cfg:       Config{ID: id},
		log:       slog.New(slog.DiscardHandler),
		blocks:    store,
		directory: dir,
		groups:    []*vgroup{{id: 0, fsm: dir}},
		primaries: map[uint64]*primaryVolume{},
	}
}

// dirIndex numbers the commands applyDir applies, as a raft log would.
var dirIndex atomic.Uint64

// applyDir applies one directory command on n, as its raft group would.
func applyDir(t *testing.T, n *Node, cmd *ballastpb.DirectoryCommand) *ballastpb.Volume {
	t.Helper()
	res := n.directory.ApplyCommand(dirIndex.Add(1), cmd, 0)
	if res.Err != nil {
		t.Fatalf("apply %v: %v", cmd, res.Err)
	}
	return res.Volume
}

func createCmd(name, primary string, secondaries ...string) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_CreateVolume{CreateVolume: &ballastpb.CreateVolumeCommand{
		Volume: &ballastpb.Volume{Name: name, SizeBytes: 1 << 20, Primary: primary, Secondaries: secondaries},
	}}}
}

// TestSuspendedPrimaryServesNothing: a primary whose machine is suspended
// for longer than its lease serves no read and acknowledges no write when
// it resumes, though its monotonic clock says hardly any time has passed:
// the lease is timed on the clock that counts the suspension, the one the
// group's leader waited on before promoting another replica.
func TestSuspendedPrimaryServesNothing(t *testing.T) {
	cfg := volume.LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}
	boot := clock.NewManual(time.Hour)
	a := bareNode(t, "a", openMemStore(t))
	vol := applyDir(t, a, createCmd("v", "a", "b"))
	k := newLeaseKeeper(a, cfg, boot)

	// The lease is renewed, as renew does once the group applied it.
	l := volume.NewPrimaryLease(cfg, vol.Epoch)
	l.Renewed(l.StartRenewal(k.clock.Now()))
	k.leases[vol.Id] = l

	p := &pair{pStore: a.blocks, sStore: openMemStore(t), faults: &faults{}, vol: vol,
		model: make([]byte, vol.SizeBytes), replTimeout: 200 * time.Millisecond}
	p.start(t)
	p.primary.auth = k
	p.write(t, 0, pattern(8192, 1))
	p.checkReplicas(t)

	// Suspended for 10 s: CLOCK_BOOTTIME ran on, CLOCK_MONOTONIC did not,
	// and in the meantime the group promoted the secondary.
	boot.Advance(10 * time.Second)

	buf := make([]byte, 4096)
	if err := p.primary.read(context.Background(), 0, buf); !errors.Is(err, ErrStopped) {
		t.Fatalf("read after the lease ran out during a suspend: %v, want ErrStopped (no lease)", err)
	}
	err := p.primary.write(context.Background(), 0, 4096, pattern(4096, 2), false, false, writeID{})
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("write after the lease ran out during a suspend: %v, want it not acknowledged (ErrStopped)", err)
	}
	if held, err := k.check(vol.Id, vol.Epoch); held || err != nil {
		t.Fatalf("lease check after the suspend: held %v, err %v; want not held", held, err)
	}
}

// TestClassifyPeers: which head nodes count as live (may become a
// secondary) and which as silent (their secondaries may be replaced); a
// node whose renewals stopped but which answers health probes is live.
func TestClassifyPeers(t *testing.T) {
	cfg := volume.LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}
	t0 := clock.Instant{}.Add(1000 * time.Second)
	peers := []Peer{{ID: "hn1"}, {ID: "hn2"}, {ID: "hn3"}, {ID: "hn4"}, {ID: "hn5"}}
	now := t0.Add(time.Minute)
	seen := map[string]clock.Instant{
		"hn2": now.Add(-time.Second),      // renewed a moment ago
		"hn3": now.Add(-5 * time.Second),  // late, not yet two periods
		"hn4": now.Add(-10 * time.Second), // silent two periods, answers probes
		"hn5": now.Add(-10 * time.Second), // silent two periods, no path answers
	}
	answers := func(p Peer) bool { return p.ID == "hn4" }
	noteAnswering(seen, peers[3:], answers, now)
	live, silent := classifyPeers(peers, "hn1", seen, t0, now, cfg)
	if want := []string{"hn1", "hn2", "hn4"}; !slices.Equal(live, want) {
		t.Errorf("live = %v, want %v", live, want)
	}
	if len(silent) != 1 || !silent["hn5"] {
		t.Errorf("silent = %v, want only hn5 (hn4 is slow but reachable)", silent)
	}

	// A leader that took office a moment ago has seen no renewals yet:
	// every node counts as renewed when it took office.
	live, silent = classifyPeers(peers, "hn1", map[string]clock.Instant{}, now.Add(-time.Second), now, cfg)
	if len(live) != len(peers) || len(silent) != 0 {
		t.Errorf("new leader: live %v silent %v, want all live and none silent", live, silent)
	}
}

// TestGroupServers: three voters per group, rotating over the head nodes
// by id, the rest non-voters; the first voter is the preferred leader.
func TestGroupServers(t *testing.T) {
	peers := []Peer{{ID: "hn3"}, {ID: "hn1"}, {ID: "hn5"}, {ID: "hn2"}, {ID: "hn4"}}
	describe := func(g uint64) (voters, others []string) {
		for _, s := range groupServers(peers, g) {
			if s.Suffrage == raft.Voter {
				voters = append(voters, string(s.ID))
			} else {
				others = append(others, string(s.ID))
			}
		}
		return voters, others
	}
	for _, tc := range []struct {
		group          uint64
		voters, others []string
	}{
		{0, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
		{1, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
		{2, []string{"hn2", "hn3", "hn4"}, []string{"hn5", "hn1"}},
		{5, []string{"hn5", "hn1", "hn2"}, []string{"hn3", "hn4"}},
		{6, []string{"hn1", "hn2", "hn3"}, []string{"hn4", "hn5"}},
	} {
		voters, others := describe(tc.group)
		if !slices.Equal(voters, tc.voters) || !slices.Equal(others, tc.others) {
			t.Errorf("group %d: voters %v non-voters %v, want %v and %v", tc.group, voters, others, tc.voters, tc.others)
		}
	}
	// A rack of three: every head node votes in every group.
	for _, s := range groupServers(peers[:3], 4) {
		if s.Suffrage != raft.Voter {
			t.Errorf("with three head nodes %s is a %v", s.ID, s.Suffrage)
		}
	}
}

// A volume a group reports deleted keeps its copy until the directory,
// asked, no longer knows it: not while it is still there (it moved to
// another group), nor while the directory cannot be asked.
func TestDropLoopDropsOnlyWhatTheDirectoryDeleted(t *testing.T) {
	store := openMemStore(t)
	n := bareNode(t, "a", store)
	n.repl = &replicationServer{node: n}
	n.drops = make(chan uint64)
	const vol = 5
	if err := store.Append(vol, []*ballastpb.LogRecord{{Seq: 1, Blocks: []*ballastpb.BlockWrite{{Block: 0, Data: pattern(4096, 1)}}}}, 0); err != nil {
		t.Fatal(err)
	}
	answers := make(chan func() (bool, error))
	asked := make(chan struct{}, 1)
	ended := make(chan struct{})
	n.confirmDeleted = func(ctx context.Context, id uint64) (bool, error) {
		select {
		case answer := <-answers:
			defer func() { asked <- struct{}{} }()
			return answer()
		case <-ended:
			return false, errors.New("test ended")
		}
	}
	n.serving.Add(1)
	go n.dropLoop(context.Background())
	defer func() { close(ended); close(n.drops); n.serving.Wait() }()

	report := func(answer func() (bool, error)) {
		t.Helper()
		n.drops <- vol
		answers <- answer
		<-asked
	}
	held := func() bool {
		last, err := store.LastSeq(vol)
		if err != nil {
			t.Fatal(err)
		}
		return last == 1
	}
	report(func() (bool, error) { return false, nil }) // moved: still in the directory
	report(func() (bool, error) { return false, errors.New("no directory leader") })
	// The loop takes a report only once it is done with the one before:
	// when this send returns, the first two have had their outcome.
	n.drops <- vol
	if !held() {
		t.Fatal("the copy was dropped while the directory still held the volume, or could not be asked")
	}
	answers <- func() (bool, error) { return true, nil }
	<-asked
	deadline := time.Now().Add(5 * time.Second)
	for held() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if held() {
		t.Fatal("the copy of a volume the directory deleted was not dropped")
	}
}
