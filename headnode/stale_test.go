package headnode

import (
	"slices"
	"testing"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestStaleCopies(t *testing.T) {
	rack := []*ballastpb.Volume{
		{Id: 1, Primary: "hn1", Secondaries: []string{"hn2"}},
		{Id: 2, Primary: "hn2", Secondaries: []string{"hn3"}},                              // hn1 was replaced
		{Id: 3, Primary: "hn3", Secondaries: []string{"hn2"}, CatchingUp: []string{"hn1"}}, // hn1 being filled
		{Id: 4, Primary: "hn2", Secondaries: []string{"hn1"}},
	}
	// Volume 5 was deleted while hn1 was away.
	got := staleCopies([]uint64{1, 2, 3, 4, 5}, rack, "hn1")
	if want := []uint64{2, 5}; !slices.Equal(got, want) {
		t.Fatalf("stale copies on hn1 = %v, want %v", got, want)
	}
}

// TestVolumesListsEveryCopy: the store lists a volume whatever keys it
// holds, and forgets it once dropped.
func TestVolumesListsEveryCopy(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(8192, 1))
	for _, s := range []*blockstore.Store{p.pStore, p.sStore} {
		vols, err := s.Volumes()
		if err != nil || !slices.Equal(vols, []uint64{p.vol.Id}) {
			t.Fatalf("Volumes() = %v, %v; want [%d]", vols, err, p.vol.Id)
		}
	}
	p.primary.Close()
	if err := p.sStore.DropVolume(p.vol.Id); err != nil {
		t.Fatal(err)
	}
	if vols, err := p.sStore.Volumes(); err != nil || len(vols) != 0 {
		t.Fatalf("after the drop: Volumes() = %v, %v; want none", vols, err)
	}
}

// TestDropRefusesSessions: while a stale copy is dropped no replication
// session may start on it, and a copy that became a replica again before
// the drop is kept.
func TestDropRefusesSessions(t *testing.T) {
	s := &replicationServer{node: &Node{cfg: Config{ID: "hn1"}}}
	var refusedDuring bool
	dropped, err := s.dropUnlessReplica(9, func() bool { return true }, func() error {
		s.mu.Lock()
		refusedDuring = s.dropping[9]
		s.mu.Unlock()
		return nil
	})
	if err != nil || !dropped || !refusedDuring {
		t.Fatalf("drop: dropped %v err %v, sessions refused during it %v", dropped, err, refusedDuring)
	}
	if s.dropping[9] {
		t.Fatal("sessions still refused after the drop")
	}
	called := false
	dropped, err = s.dropUnlessReplica(9, func() bool { return false }, func() error { called = true; return nil })
	if err != nil || dropped || called {
		t.Fatalf("a copy that is a replica again was dropped (dropped %v, err %v)", dropped, err)
	}
}
