package volume

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func create(name string, size uint64, primary, secondary string) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_CreateVolume{CreateVolume: &ballastpb.CreateVolumeCommand{
		Volume: &ballastpb.Volume{Name: name, SizeBytes: size, Primary: primary, Secondaries: []string{secondary}},
	}}}
}

func applyLog(t *testing.T, d *Directory, index uint64, cmd *ballastpb.DirectoryCommand) ApplyResult {
	t.Helper()
	data, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return d.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(ApplyResult)
}

func TestDirectoryCommands(t *testing.T) {
	d := NewDirectory()
	var deleted []string
	d.OnDelete = func(v *ballastpb.Volume) { deleted = append(deleted, v.Name) }

	res := applyLog(t, d, 1, create("a", 1<<30, "hn1", "hn2"))
	if res.Err != nil || res.Volume.Id != 1 || res.Volume.Epoch != 1 || res.Volume.BlockSizeBytes != BlockSizeBytes {
		t.Fatalf("create a: %+v", res)
	}
	if res := applyLog(t, d, 2, create("a", 1<<30, "hn2", "hn3")); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("duplicate create: %v, want ErrExists", res.Err)
	}
	for _, bad := range []*ballastpb.DirectoryCommand{
		create("b", 0, "hn1", "hn2"),
		create("b", 4097, "hn1", "hn2"),
		create("bad name", 4096, "hn1", "hn2"),
		create("b", 4096, "", ""),
	} {
		if res := applyLog(t, d, 3, bad); !errors.Is(res.Err, ErrInvalid) {
			t.Fatalf("invalid create %v: %v, want ErrInvalid", bad, res.Err)
		}
	}
	if res := applyLog(t, d, 4, create("b", 8192, "hn2", "hn3")); res.Err != nil || res.Volume.Id != 2 {
		t.Fatalf("create b: %+v", res)
	}
	resize := func(name string, size uint64) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ResizeVolume{ResizeVolume: &ballastpb.ResizeVolumeCommand{Name: name, SizeBytes: size}}}
	}
	if res := applyLog(t, d, 5, resize("a", 1<<29)); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("shrink: %v, want ErrInvalid", res.Err)
	}
	if res := applyLog(t, d, 6, resize("nosuch", 1<<29)); !errors.Is(res.Err, ErrNotFound) {
		t.Fatalf("resize unknown: %v, want ErrNotFound", res.Err)
	}
	before, ok := d.Shared(1)
	if !ok || before.SizeBytes != 1<<30 {
		t.Fatalf("Shared(1) = %v, %v", before, ok)
	}
	if res := applyLog(t, d, 7, resize("a", 2<<30)); res.Err != nil || res.Volume.SizeBytes != 2<<30 {
		t.Fatalf("grow: %+v", res)
	}
	// A shared record is never changed in place: readers holding it keep a
	// consistent view, and the next lookup sees the new one.
	if after, _ := d.Shared(1); before.SizeBytes != 1<<30 || after.SizeBytes != 2<<30 {
		t.Fatalf("shared records: before %d, after %d", before.SizeBytes, after.SizeBytes)
	}

	// Snapshot, then delete, then restore: the restored state has the
	// volume back, and a restore that drops a volume reports it deleted.
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	del := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_DeleteVolume{DeleteVolume: &ballastpb.DeleteVolumeCommand{Name: "b"}}}
	if res := applyLog(t, d, 8, del); res.Err != nil {
		t.Fatal(res.Err)
	}
	if _, err := d.Get("b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted volume still found: %v", err)
	}
	if _, err := d.ByID(2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted volume still found by id: %v", err)
	}
	if len(deleted) != 1 || deleted[0] != "b" {
		t.Fatalf("OnDelete saw %v", deleted)
	}
	if res := applyLog(t, d, 9, create("c", 4096, "hn1", "hn3")); res.Err != nil || res.Volume.Id != 3 {
		t.Fatalf("ids must never be reused: %+v", res)
	}

	restored := NewDirectory()
	restored.OnDelete = func(v *ballastpb.Volume) { deleted = append(deleted, "restore:"+v.Name) }
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if vs := restored.List(); len(vs) != 2 || vs[0].Name != "a" || vs[1].Name != "b" || vs[0].SizeBytes != 2<<30 {
		t.Fatalf("restored volumes: %v", vs)
	}
	if res := restored.ApplyCommand(100, create("d", 4096, "hn1", "hn2"), 0); res.Volume.Id != 3 {
		t.Fatalf("restored next id: %d, want 3", res.Volume.Id)
	}
	// Restoring the older snapshot into d drops volume c.
	if err := d.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if deleted[len(deleted)-1] != "c" {
		t.Fatalf("restore did not report dropped volume c: %v", deleted)
	}
}

func TestPlaceSpreadsPrimariesAndReplicas(t *testing.T) {
	nodes := []string{"hn3", "hn1", "hn2"}
	var vols []*ballastpb.Volume
	primaries := map[string]int{}
	for i := 0; i < 9; i++ {
		p, s, err := Place(nodes, vols)
		if err != nil {
			t.Fatal(err)
		}
		if p == s {
			t.Fatalf("primary and secondary on one node %s", p)
		}
		primaries[p]++
		vols = append(vols, &ballastpb.Volume{Primary: p, Secondaries: []string{s}})
	}
	for _, n := range nodes {
		if primaries[n] != 3 {
			t.Fatalf("primaries not spread: %v", primaries)
		}
	}
	if _, _, err := Place([]string{"hn1"}, nil); !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("one node: %v, want ErrNoPlacement", err)
	}
}

type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }

func TestDirectorySleds(t *testing.T) {
	d := NewDirectory()
	var index uint64
	reg := func(id string, addrs ...string) ApplyResult {
		index++
		return d.ApplyCommand(index, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RegisterSled{
			RegisterSled: &ballastpb.RegisterSledCommand{Sled: &ballastpb.Sled{Id: id, Addresses: addrs}},
		}}, 100)
	}
	set := func(id string, st, ifState ballastpb.SledState) ApplyResult {
		index++
		return d.ApplyCommand(index, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SetSledState{
			SetSledState: &ballastpb.SetSledStateCommand{Id: id, State: st, IfState: ifState},
		}}, 200)
	}
	const (
		up       = ballastpb.SledState_SLED_STATE_UP
		down     = ballastpb.SledState_SLED_STATE_DOWN
		draining = ballastpb.SledState_SLED_STATE_DRAINING
		removed  = ballastpb.SledState_SLED_STATE_REMOVED
		any      = ballastpb.SledState_SLED_STATE_UNSPECIFIED
	)
	if res := reg("s1", "a:1", "b:1"); res.Err != nil || res.Sled.State != up {
		t.Fatalf("register: %+v", res)
	}
	for _, bad := range []ApplyResult{reg("bad id"), reg("s2")} {
		if !errors.Is(bad.Err, ErrInvalid) {
			t.Fatalf("bad registration: %v, want ErrInvalid", bad.Err)
		}
	}
	if res := set("nosuch", down, any); !errors.Is(res.Err, ErrNotFound) {
		t.Fatalf("unknown sled: %v", res.Err)
	}
	// The monitor's down only applies to a sled that is up.
	if res := set("s1", down, up); res.Err != nil || res.Sled.State != down {
		t.Fatalf("down: %+v", res)
	}
	// Registering again (the sled restarted) brings it up, with new
	// addresses; a drained sled stays draining.
	if res := reg("s1", "a:2", "b:2"); res.Err != nil || res.Sled.State != up || res.Sled.Addresses[0] != "a:2" || res.Sled.RegisteredUnixNanos != 100 {
		t.Fatalf("re-register: %+v", res)
	}
	if res := set("s1", draining, any); res.Err != nil || res.Sled.State != draining {
		t.Fatalf("drain: %+v", res)
	}
	if res := set("s1", down, up); !errors.Is(res.Err, ErrConflict) {
		t.Fatalf("monitor's down over a drain: %v, want ErrConflict", res.Err)
	}
	if res := reg("s1", "a:2"); res.Sled.State != draining {
		t.Fatalf("a draining sled that registers again: %v", res.Sled.State)
	}
	// Removal is for good.
	if res := set("s1", removed, any); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := set("s1", up, any); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("un-remove: %v", res.Err)
	}
	if res := reg("s1", "a:3"); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("a removed sled registers again: %v", res.Err)
	}
	reg("s0", "c:1")
	if got := d.Sleds(); len(got) != 2 || got[0].Id != "s0" || got[1].State != removed {
		t.Fatalf("sleds: %v", got)
	}
	// Sleds survive a snapshot.
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	restored := NewDirectory()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, ok := restored.Sled("s1"); !ok || got.State != removed || got.Addresses[0] != "a:2" {
		t.Fatalf("restored sled: %v %v", got, ok)
	}
}

// TestPlacements: the directory group takes names and spends ids for
// volume groups, in turn over the groups; a volume group takes the record
// with the id it was given.
func TestPlacements(t *testing.T) {
	dir := NewDirectory()
	place := func(name string) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PlaceVolume{PlaceVolume: &ballastpb.PlaceVolumeCommand{Name: name, Groups: 4}}}
	}
	// A volume of the directory group's own (from before volume groups)
	// keeps its name.
	if res := applyLog(t, dir, 1, create("old", 4096, "hn1", "hn2")); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := applyLog(t, dir, 2, place("old")); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("placing a name the directory holds: %v, want ErrExists", res.Err)
	}
	var groups []uint64
	for i, name := range []string{"a", "b", "c", "d", "e"} {
		res := applyLog(t, dir, uint64(3+i), place(name))
		if res.Err != nil || res.Placement.Id != uint64(2+i) {
			t.Fatalf("place %s: %+v", name, res)
		}
		groups = append(groups, res.Placement.Group)
	}
	if want := []uint64{2, 3, 4, 1, 2}; !slices.Equal(groups, want) {
		t.Fatalf("groups %v, want %v (in turn by id)", groups, want)
	}
	if res := applyLog(t, dir, 10, place("a")); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("placing a taken name: %v, want ErrExists", res.Err)
	}
	if res := applyLog(t, dir, 11, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PlaceVolume{PlaceVolume: &ballastpb.PlaceVolumeCommand{Name: "z"}}}); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("placing in zero groups: %v, want ErrInvalid", res.Err)
	}

	drain := func(node string, on bool) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SetDraining{SetDraining: &ballastpb.SetDrainingCommand{HeadNode: node, Draining: on}}}
	}
	addHN := func(id string, addrs ...string) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_AddHeadNode{AddHeadNode: &ballastpb.AddHeadNodeCommand{
			HeadNode: &ballastpb.HeadNode{Id: id, Addresses: addrs}}}}
	}
	removeHN := func(id string) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RemoveHeadNode{RemoveHeadNode: &ballastpb.RemoveHeadNodeCommand{HeadNode: id}}}
	}
	if res := applyLog(t, dir, 15, addHN("hn4")); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("adding a head node without addresses: %v, want ErrInvalid", res.Err)
	}
	applyLog(t, dir, 16, addHN("hn4", "a:1", "b:1"))
	applyLog(t, dir, 17, addHN("hn5", "a:2", "b:2"))
	applyLog(t, dir, 18, removeHN("hn5"))
	if res := applyLog(t, dir, 19, addHN("hn5", "a:2", "b:2")); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("adding a removed head node again: %v, want ErrInvalid (its id is spent)", res.Err)
	}
	applyLog(t, dir, 20, drain("hn3", true))
	applyLog(t, dir, 21, drain("hn1", true))
	applyLog(t, dir, 22, drain("hn1", false))

	// The placements and the drained nodes survive a snapshot.
	snap, err := dir.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := NewDirectory()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !restored.Draining("hn3") || restored.Draining("hn1") {
		t.Fatal("the drained head node was not restored from the snapshot")
	}
	if added, removed := restored.HeadNodes(); len(added) != 1 || added[0].Id != "hn4" || !slices.Equal(removed, []string{"hn5"}) {
		t.Fatalf("restored head nodes: added %v, removed %v", added, removed)
	}
	if p, ok := restored.Placement("c"); !ok || p.Id != 4 || p.Group != 4 {
		t.Fatalf("restored placement of c: %+v %v", p, ok)
	}
	unplace := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_UnplaceVolume{UnplaceVolume: &ballastpb.UnplaceVolumeCommand{Name: "c", Id: 99}}}
	if res := applyLog(t, restored, 12, unplace); !errors.Is(res.Err, ErrNotFound) {
		t.Fatalf("unplace with a wrong id: %v, want ErrNotFound", res.Err)
	}
	unplace.GetUnplaceVolume().Id = 4
	if res := applyLog(t, restored, 13, unplace); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := applyLog(t, restored, 14, place("c")); res.Err != nil || res.Placement.Id != 7 {
		t.Fatalf("placing a freed name again: %+v (ids are never reused)", res)
	}

	// A volume group takes the record with its given id, once.
	vg := NewDirectory()
	withID := create("a", 4096, "hn1", "hn2")
	withID.GetCreateVolume().Volume.Id = 2
	withID.GetCreateVolume().Volume.Group = 2
	if res := applyLog(t, vg, 1, withID); res.Err != nil || res.Volume.Id != 2 || res.Volume.Group != 2 {
		t.Fatalf("create in a volume group: %+v", res)
	}
	withID.GetCreateVolume().Volume.Name = "other"
	if res := applyLog(t, vg, 2, withID); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("a second record with the same id: %v, want ErrExists", res.Err)
	}
}
