package volume

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
)

func txnEntry(t *testing.T, c txn.Command) *ballastpb.DirectoryCommand {
	t.Helper()
	data, err := txn.MarshalCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_Txn{Txn: data}}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A volume created by a transaction across the directory (group 1) and a
// volume group (group 2) appears in both decoded views when it commits,
// the group's own commands wait while the transaction holds the volume,
// and a transactional delete reclaims the volume's data.
func TestDirectoryAsTxnParticipant(t *testing.T) {
	dir, vg := NewGroupDirectory(1), NewGroupDirectory(2)
	var reclaimed []string
	vg.OnDelete = func(v *ballastpb.Volume) { reclaimed = append(reclaimed, v.Name) }
	var added []uint64
	vg.OnVolumeAdded = func(id uint64) { added = append(added, id) }
	place := &ballastpb.VolumePlacement{Name: "a", Id: 7, Group: 1}
	rec := &ballastpb.Volume{Name: "a", Id: 7, Group: 1, SizeBytes: 1 << 20, BlockSizeBytes: BlockSizeBytes, Epoch: 1, Primary: "hn1", Secondaries: []string{"hn2"}}
	create := txn.TxnID{HLC: 1, Node: 1, Counter: 1}
	prep := func(g txn.GroupID, conds []txn.Condition, w txn.Write) *txn.Prepare {
		return &txn.Prepare{Txn: create, Prio: txn.PrioOf(create), Home: 1, Participants: []txn.GroupID{1, 2}, Deadline: 1000,
			Conditions: conds, Writes: []txn.Write{w}}
	}
	r := dir.ApplyCommand(1, txnEntry(t, prep(1, []txn.Condition{{Key: NameKey("a")}}, txn.Write{Key: NameKey("a"), Value: marshal(t, place)})), 0)
	if r.Txn == nil || r.Txn.Vote != txn.VotePrepared {
		t.Fatalf("directory prepare: %+v", r)
	}
	r = vg.ApplyCommand(1, txnEntry(t, prep(2, nil, txn.Write{Key: VolumeKey("a"), Value: marshal(t, rec)})), 0)
	if r.Txn == nil || r.Txn.Vote != txn.VotePrepared {
		t.Fatalf("volume group prepare: %+v", r)
	}
	if _, ok := dir.Placement("a"); ok {
		t.Fatal("placement visible before the commit")
	}
	// The name is locked: the old two-step placement waits.
	if r := dir.ApplyCommand(2, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PlaceVolume{
		PlaceVolume: &ballastpb.PlaceVolumeCommand{Name: "a", Groups: 1}}}, 0); !errors.Is(r.Err, ErrBusy) {
		t.Fatalf("placement under the lock: %v, want ErrBusy", r.Err)
	}
	dir.ApplyCommand(3, txnEntry(t, &txn.Resolve{Txn: create, Outcome: txn.Commit, Deadline: 1000}), 0)
	vg.ApplyCommand(2, txnEntry(t, &txn.Resolve{Txn: create, Outcome: txn.Commit, Deadline: 1000}), 0)
	if p, ok := dir.Placement("a"); !ok || p.Id != 7 {
		t.Fatalf("placement after the commit: %v %v", p, ok)
	}
	if v, err := vg.ByID(7); err != nil || v.Name != "a" || v.Primary != "hn1" {
		t.Fatalf("volume after the commit: %v %v", v, err)
	}
	if r := vg.TxnRead(VolumeKey("a")); !r.Found || r.Version != 2 {
		t.Fatalf("volume key after the commit: %+v", r)
	}
	if len(added) != 1 || added[0] != 7 {
		t.Fatalf("volumes reported added: %v, want [7]", added)
	}

	// A lease renewal changes the record but not its version; a
	// promotion changes both.
	vg.ApplyCommand(3, renew(7, "hn1", 1), 0)
	if v, _ := vg.ByID(7); v.LeaseRenewals != 1 || vg.TxnRead(VolumeKey("a")).Version != 2 {
		t.Fatalf("after a renewal: renewals %d, version %d", v.LeaseRenewals, vg.TxnRead(VolumeKey("a")).Version)
	}
	v, _ := vg.ByID(7)
	plan, err := PlanPromotion(v, []string{"hn2", "hn3"})
	if err != nil {
		t.Fatal(err)
	}
	if r := vg.ApplyCommand(4, promote(plan), 0); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := vg.TxnRead(VolumeKey("a")).Version; got != 4 {
		t.Fatalf("after a promotion the key's version is %d, want 4", got)
	}
	if len(added) != 1 {
		t.Fatalf("a renewal or promotion reported the volume added again: %v", added)
	}

	// The snapshot carries the transactional state.
	snap, err := vg.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := NewGroupDirectory(2)
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, want := restored.TxnRead(VolumeKey("a")), vg.TxnRead(VolumeKey("a")); got.Version != want.Version || !bytes.Equal(got.Value, want.Value) {
		t.Fatalf("restored key %+v, want %+v", got, want)
	}
	if err := NewGroupDirectory(3).Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err == nil {
		t.Fatal("a snapshot of group 2 restored into group 3")
	}

	// A one-group transaction deletes the volume.
	del := txn.TxnID{HLC: 2, Node: 1, Counter: 1}
	r = vg.ApplyCommand(5, txnEntry(t, &txn.PrepareCommit{Txn: del, Prio: txn.PrioOf(del), Deadline: 2000,
		Conditions: []txn.Condition{{Key: VolumeKey("a"), Version: 4}}, Writes: []txn.Write{{Key: VolumeKey("a"), Delete: true}}}), 0)
	if r.Txn == nil || r.Txn.Vote != txn.VoteResolvedCommit {
		t.Fatalf("delete: %+v", r)
	}
	if _, err := vg.ByID(7); !errors.Is(err, ErrNotFound) || len(reclaimed) != 1 || reclaimed[0] != "a" {
		t.Fatalf("after the delete: %v, reclaimed %v", err, reclaimed)
	}

	// A txn entry that does not decode is refused, and spends its index.
	r = vg.ApplyCommand(6, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_Txn{Txn: []byte{0xff}}}, 0)
	if r.Txn == nil || !errors.Is(r.Txn.Err, txn.ErrMalformed) {
		t.Fatalf("garbage txn entry: %+v", r)
	}
}

// A volume moved away leaves the decoded view without losing its data,
// keeps a forwarding copy, and a renewal sent to the old group is
// neither granted nor a deposition.
func TestDirectoryMovedVolume(t *testing.T) {
	a := NewGroupDirectory(2)
	var reclaimed []string
	a.OnDelete = func(v *ballastpb.Volume) { reclaimed = append(reclaimed, v.Name) }
	rec := &ballastpb.Volume{Name: "m", Id: 9, Group: 1, SizeBytes: 1 << 20, BlockSizeBytes: BlockSizeBytes, Epoch: 3, Primary: "hn1", Secondaries: []string{"hn2"}}
	put := func(index uint64, id txn.TxnID, v *ballastpb.Volume) {
		t.Helper()
		r := a.ApplyCommand(index, txnEntry(t, &txn.PrepareCommit{Txn: id, Prio: txn.PrioOf(id), Deadline: 1000,
			Writes: []txn.Write{{Key: VolumeKey("m"), Value: marshal(t, v)}}}), 0)
		if r.Txn == nil || r.Txn.Vote != txn.VoteResolvedCommit {
			t.Fatalf("write %v: %+v", v, r)
		}
	}
	put(1, txn.TxnID{HLC: 1, Node: 1, Counter: 1}, rec)
	stub := proto.Clone(rec).(*ballastpb.Volume)
	stub.MovedTo = 5
	put(2, txn.TxnID{HLC: 2, Node: 1, Counter: 1}, stub)
	if _, err := a.ByID(9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("moved volume still in the view: %v", err)
	}
	if m, ok := a.MovedCopy(9); !ok || m.MovedTo != 5 || m.Epoch != 3 {
		t.Fatalf("forwarding copy: %v %v", m, ok)
	}
	if len(reclaimed) != 0 {
		t.Fatalf("moving a volume reclaimed its data: %v", reclaimed)
	}
	r := a.ApplyCommand(3, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{RenewLeases: &ballastpb.RenewLeasesCommand{
		Holder: "hn1", Leases: []*ballastpb.RenewLeaseCommand{{VolumeId: 9, Epoch: 3}}}}}, 0)
	if len(r.Moved) != 1 || len(r.Refused) != 0 {
		t.Fatalf("renewal in the old group: moved %v, refused %v", r.Moved, r.Refused)
	}

	// The forwarding copy survives a snapshot; moving back restores the
	// volume to the view.
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	b := NewGroupDirectory(2)
	if err := b.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.MovedCopy(9); !ok {
		t.Fatal("forwarding copy lost in the snapshot")
	}
	put(4, txn.TxnID{HLC: 3, Node: 1, Counter: 1}, rec)
	if _, ok := a.MovedCopy(9); ok {
		t.Fatal("forwarding copy kept after moving back")
	}
	if v, err := a.ByID(9); err != nil || v.Epoch != 3 {
		t.Fatalf("after moving back: %v %v", v, err)
	}
}

// A record a transaction rewrites from its key (an attachment change)
// keeps the renewals the view counted since, and the attachment is the
// new one.
func TestTxnRewriteKeepsLeaseRenewals(t *testing.T) {
	d := NewGroupDirectory(2)
	rec := &ballastpb.Volume{Name: "r", Id: 4, Group: 1, SizeBytes: 1 << 20, BlockSizeBytes: BlockSizeBytes, Epoch: 2, Primary: "hn1", Secondaries: []string{"hn2"}}
	put := func(index uint64, v *ballastpb.Volume) {
		t.Helper()
		id := txn.TxnID{HLC: index, Node: 1, Counter: 1}
		r := d.ApplyCommand(index, txnEntry(t, &txn.PrepareCommit{Txn: id, Prio: txn.PrioOf(id), Deadline: 1000,
			Writes: []txn.Write{{Key: VolumeKey("r"), Value: marshal(t, v)}}}), 0)
		if r.Txn == nil || r.Txn.Vote != txn.VoteResolvedCommit {
			t.Fatalf("write %v: %+v", v, r)
		}
	}
	put(1, rec)
	for i := uint64(2); i < 5; i++ {
		d.ApplyCommand(i, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{RenewLeases: &ballastpb.RenewLeasesCommand{
			Holder: "hn1", Leases: []*ballastpb.RenewLeaseCommand{{VolumeId: 4, Epoch: 2}}}}}, 0)
	}
	before, err := d.ByID(4)
	if err != nil || before.LeaseRenewals == 0 {
		t.Fatalf("renewals not counted: %v %v", before, err)
	}
	attached := proto.Clone(rec).(*ballastpb.Volume)
	attached.AttachedHost, attached.AttachGeneration, attached.LastGeneration = "h1", 1, 1
	put(5, attached)
	after, err := d.ByID(4)
	if err != nil || after.LeaseRenewals != before.LeaseRenewals || after.AttachedHost != "h1" {
		t.Fatalf("after the rewrite: renewals %d (before %d), host %q, err %v", after.GetLeaseRenewals(), before.LeaseRenewals, after.GetAttachedHost(), err)
	}
}

// A lagging node that still holds a volume in its view installs a
// snapshot taken after the volume moved to another group: the volume
// leaves the view, but it was not deleted, so its data is not reclaimed.
// A volume the snapshot no longer holds at all is.
func TestRestoreDoesNotReclaimAMovedVolume(t *testing.T) {
	write := func(d *Directory, index uint64, id txn.TxnID, v *ballastpb.Volume) {
		t.Helper()
		r := d.ApplyCommand(index, txnEntry(t, &txn.PrepareCommit{Txn: id, Prio: txn.PrioOf(id), Deadline: 1000,
			Writes: []txn.Write{{Key: VolumeKey(v.Name), Value: marshal(t, v)}}}), 0)
		if r.Txn == nil || r.Txn.Vote != txn.VoteResolvedCommit {
			t.Fatalf("write %v: %+v", v, r)
		}
	}
	moving := &ballastpb.Volume{Name: "m", Id: 9, Group: 2, SizeBytes: 1 << 20, BlockSizeBytes: BlockSizeBytes, Epoch: 3, Primary: "hn1", Secondaries: []string{"hn2"}}
	deleted := &ballastpb.Volume{Name: "d", Id: 10, Group: 2, SizeBytes: 1 << 20, BlockSizeBytes: BlockSizeBytes, Epoch: 1, Primary: "hn1", Secondaries: []string{"hn2"}}

	// The leader's group: both volumes, then m moves to group 5 and d is
	// deleted.
	leader := NewGroupDirectory(2)
	write(leader, 1, txn.TxnID{HLC: 1, Node: 1, Counter: 1}, moving)
	write(leader, 2, txn.TxnID{HLC: 2, Node: 1, Counter: 1}, deleted)
	stub := proto.Clone(moving).(*ballastpb.Volume)
	stub.MovedTo = 5
	write(leader, 3, txn.TxnID{HLC: 3, Node: 1, Counter: 1}, stub)
	r := leader.ApplyCommand(4, txnEntry(t, &txn.PrepareCommit{Txn: txn.TxnID{HLC: 4, Node: 1, Counter: 1}, Prio: txn.PrioOf(txn.TxnID{HLC: 4, Node: 1, Counter: 1}), Deadline: 1000,
		Writes: []txn.Write{{Key: VolumeKey("d"), Delete: true}}}), 0)
	if r.Txn == nil || r.Txn.Vote != txn.VoteResolvedCommit {
		t.Fatalf("delete: %+v", r)
	}
	snap, err := leader.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}

	// A lagging follower applied only the creates.
	lagging := NewGroupDirectory(2)
	var reclaimed []string
	lagging.OnDelete = func(v *ballastpb.Volume) { reclaimed = append(reclaimed, v.Name) }
	write(lagging, 1, txn.TxnID{HLC: 1, Node: 1, Counter: 1}, moving)
	write(lagging, 2, txn.TxnID{HLC: 2, Node: 1, Counter: 1}, deleted)
	if err := lagging.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if len(reclaimed) != 1 || reclaimed[0] != "d" {
		t.Fatalf("reclaimed %v, want only the deleted volume d (m moved to group 5)", reclaimed)
	}
	if m, ok := lagging.MovedCopy(9); !ok || m.MovedTo != 5 {
		t.Fatalf("forwarding copy after restore: %v %v", m, ok)
	}
}
