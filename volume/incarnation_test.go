package volume

import (
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func register(node, inc string) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RegisterIncarnation{
		RegisterIncarnation: &ballastpb.RegisterIncarnationCommand{HeadNode: node, Incarnation: inc}}}
}

func renewAs(vol uint64, holder, inc string, epoch uint64) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{RenewLeases: &ballastpb.RenewLeasesCommand{
		Holder: holder, Incarnation: inc, Leases: []*ballastpb.RenewLeaseCommand{{VolumeId: vol, Epoch: epoch}}}}}
}

func inSyncAs(vol, epoch uint64, node, inc string) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SecondaryInSync{SecondaryInSync: &ballastpb.SecondaryInSyncCommand{
		VolumeId: vol, Epoch: epoch, Node: node, Incarnation: inc}}}
}

// TestIncarnationVoidsCopies is the operator's lost disk in the group's
// log: the secondary comes back as a new incarnation, so it is not
// promoted until its primary reports it mirrored under that incarnation;
// a primary that comes back as a new one cannot renew its lease.
func TestIncarnationVoidsCopies(t *testing.T) {
	d := NewDirectory()
	live := []string{"hn1", "hn2", "hn3"}
	applyLog(t, d, 1, register("hn1", "a1"))
	applyLog(t, d, 2, register("hn2", "b1"))
	v := applyLog(t, d, 3, create("a", 1<<30, "hn1", "hn2")).Volume
	if !slices.EqualFunc(v.Copies, []*ballastpb.ReplicaCopy{{HeadNode: "hn1", Incarnation: "a1"}, {HeadNode: "hn2", Incarnation: "b1"}},
		func(a, b *ballastpb.ReplicaCopy) bool {
			return a.HeadNode == b.HeadNode && a.Incarnation == b.Incarnation
		}) {
		t.Fatalf("copies of a new volume: %v", v.Copies)
	}
	if res := applyLog(t, d, 4, renewAs(v.Id, "hn1", "a1", 1)); len(res.Refused) != 0 {
		t.Fatalf("the primary's renewal was refused: %+v", res)
	}

	// hn2's data directory is emptied; it restarts and registers anew.
	applyLog(t, d, 5, register("hn2", "b2"))
	cur, _ := d.ByID(v.Id)
	if d.HoldsCopy(cur, "hn2") {
		t.Fatal("a new incarnation is credited with the copy of the old one")
	}
	if plan, err := PlanPromotionOf(cur, live, func(n string) bool { return d.HoldsCopy(cur, n) }); err == nil {
		t.Fatalf("planned the promotion of an emptied secondary: %+v", plan)
	}
	forced := &ballastpb.PromoteVolumeCommand{VolumeId: v.Id, IfEpoch: 1, IfLeaseRenewals: cur.LeaseRenewals, Primary: "hn2", Secondaries: []string{"hn3"}}
	if res := applyLog(t, d, 6, promote(forced)); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("promotion of an emptied secondary: %v, want ErrInvalid", res.Err)
	}
	// A copy mirrored to the old incarnation does not count.
	if res := applyLog(t, d, 7, inSyncAs(v.Id, 1, "hn2", "b1")); !errors.Is(res.Err, ErrConflict) {
		t.Fatalf("in-sync report for a lost incarnation: %v, want ErrConflict", res.Err)
	}
	if res := applyLog(t, d, 8, inSyncAs(v.Id, 1, "hn2", "b2")); res.Err != nil || !d.HoldsCopy(res.Volume, "hn2") {
		t.Fatalf("in-sync report for the new incarnation: %+v", res)
	}
	cur, _ = d.ByID(v.Id)
	plan, err := PlanPromotionOf(cur, live, func(n string) bool { return d.HoldsCopy(cur, n) })
	if err != nil || plan.Primary != "hn2" {
		t.Fatalf("promotion once mirrored: %+v %v", plan, err)
	}

	// hn1, the primary, loses its data: its renewals are refused, from the
	// new incarnation before it registers and after.
	if res := applyLog(t, d, 9, renewAs(v.Id, "hn1", "a2", 1)); !slices.Equal(res.Refused, []uint64{v.Id}) {
		t.Fatalf("renewal by an unregistered incarnation: %+v", res)
	}
	applyLog(t, d, 10, register("hn1", "a2"))
	if res := applyLog(t, d, 11, renewAs(v.Id, "hn1", "a2", 1)); !slices.Equal(res.Refused, []uint64{v.Id}) {
		t.Fatalf("renewal by a primary that lost its copy: %+v", res)
	}
	// Failing over drops hn1's copy; hn3 catches up.
	cur, _ = d.ByID(v.Id)
	plan, err = PlanPromotionOf(cur, live, func(n string) bool { return d.HoldsCopy(cur, n) })
	if err != nil {
		t.Fatal(err)
	}
	res := applyLog(t, d, 12, promote(plan))
	if res.Err != nil || res.Volume.Primary != "hn2" || !slices.Equal(res.Volume.CatchingUp, []string{"hn3"}) || len(res.Volume.Copies) != 1 {
		t.Fatalf("failover from a primary that lost its copy: %+v", res)
	}
	if r := applyLog(t, d, 13, renewAs(v.Id, "hn2", "b2", 2)); len(r.Refused) != 0 {
		t.Fatalf("the new primary's renewal: %+v", r)
	}

	// The registry survives a snapshot.
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	e := NewDirectory()
	if err := e.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if inc, ok := e.Incarnation("hn1"); !ok || inc != "a2" {
		t.Fatalf("restored incarnation of hn1: %q %v", inc, ok)
	}
	old, _ := e.ByID(v.Id)
	old.Copies = nil
	if e.HoldsCopy(old, "hn1") || !e.HoldsCopy(old, "hn3") {
		t.Fatal("restored registry: a replaced node holds an uncredited copy, or a node never registered does not")
	}
}

// TestIncarnationFirstRegistration: copies certified before a node first
// registers (volumes from before incarnations) are its first
// incarnation's.
func TestIncarnationFirstRegistration(t *testing.T) {
	d := NewDirectory()
	v := applyLog(t, d, 1, create("a", 1<<30, "hn1", "hn2")).Volume
	if len(v.Copies) != 0 {
		t.Fatalf("copies credited to unregistered nodes: %v", v.Copies)
	}
	applyLog(t, d, 2, register("hn2", "b1"))
	applyLog(t, d, 3, register("hn2", "b1")) // a plain restart
	if !d.HoldsCopy(v, "hn2") {
		t.Fatal("a node's first incarnation lost the copy certified before it registered")
	}
	applyLog(t, d, 4, register("hn2", "b2"))
	if d.HoldsCopy(v, "hn2") {
		t.Fatal("a new incarnation holds the copy certified before the node first registered")
	}
}
