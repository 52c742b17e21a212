package logstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/hashicorp/raft"
)

// entry returns the test entry of a group at an index: its content is a
// function of both, so a read can be checked without a model.
func entry(group, index, term uint64) *raft.Log {
	return &raft.Log{
		Index:      index,
		Term:       term,
		Type:       raft.LogCommand,
		Data:       []byte(fmt.Sprintf("group %d entry %d", group, index)),
		Extensions: []byte{byte(group)},
		AppendedAt: time.Unix(int64(index), int64(group)),
	}
}

func checkEntry(t testing.TB, g *Group, index, term uint64) {
	t.Helper()
	var got raft.Log
	if err := g.GetLog(index, &got); err != nil {
		t.Fatalf("group %d: GetLog(%d): %v", g.ID(), index, err)
	}
	want := entry(g.ID(), index, term)
	if got.Index != index || got.Term != term || got.Type != want.Type ||
		!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
		!got.AppendedAt.Equal(want.AppendedAt) {
		t.Fatalf("group %d: GetLog(%d) = %+v, want %+v", g.ID(), index, got, want)
	}
}

func checkBounds(t testing.TB, g *Group, first, last uint64) {
	t.Helper()
	f, err1 := g.FirstIndex()
	l, err2 := g.LastIndex()
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("group %d: bounds: %v", g.ID(), err)
	}
	if f != first || l != last {
		t.Fatalf("group %d: first=%d last=%d, want first=%d last=%d", g.ID(), f, l, first, last)
	}
}

func storeRange(t testing.TB, g *Group, from, to, term uint64) {
	t.Helper()
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, entry(g.ID(), i, term))
	}
	if err := g.StoreLogs(logs); err != nil {
		t.Fatalf("group %d: StoreLogs(%d-%d): %v", g.ID(), from, to, err)
	}
}

func openMem(t testing.TB, fs vfs.FS) *Store {
	t.Helper()
	s, err := OpenWithOptions("db", Options{FS: fs, Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReopen writes many groups on a real directory, some of it flushed to
// sstables and some only in the WAL, and checks every entry, index and
// stable key after Close and Open.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenWithOptions(dir, Options{Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	const groups, perGroup = 12, 120
	for id := uint64(1); id <= groups; id++ {
		g := s.Group(id)
		storeRange(t, g, 1, perGroup/2, 1)
		if err := g.SetUint64([]byte("CurrentTerm"), id); err != nil {
			t.Fatal(err)
		}
	}
	// Half of the data goes to sstables, the rest stays in the WAL.
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= groups; id++ {
		g := s.Group(id)
		storeRange(t, g, perGroup/2+1, perGroup, 2)
		if err := g.DeleteRange(1, id); err != nil { // compaction of id entries
			t.Fatal(err)
		}
		if id%3 == 0 { // and a truncated suffix
			if err := g.DeleteRange(perGroup-id+1, perGroup); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for round := 0; round < 2; round++ {
		s, err = OpenWithOptions(dir, Options{Logger: quietLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := s.Groups()
		if err != nil || len(ids) != groups {
			t.Fatalf("Groups() = %v, %v", ids, err)
		}
		for id := uint64(1); id <= groups; id++ {
			g := s.Group(id)
			last := uint64(perGroup)
			if id%3 == 0 {
				last -= id
			}
			checkBounds(t, g, id+1, last)
			for i := id + 1; i <= last; i++ {
				term := uint64(1)
				if i > perGroup/2 {
					term = 2
				}
				checkEntry(t, g, i, term)
			}
			var l raft.Log
			if err := g.GetLog(id, &l); err != raft.ErrLogNotFound {
				t.Fatalf("group %d: compacted entry: %v", id, err)
			}
			if v, err := g.GetUint64([]byte("CurrentTerm")); err != nil || v != id {
				t.Fatalf("group %d: CurrentTerm = %d, %v", id, v, err)
			}
		}
		if round == 0 {
			// The second reopen reads everything from sstables.
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConcurrentGroups runs, for each of several groups, an appender (raft's
// main loop), a compactor (its snapshot goroutine) and a reader (its
// replication goroutines) at once, under the race detector, and checks
// every read and the final state.
func TestConcurrentGroups(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	defer s.Close()
	const groups, entries = 6, 300
	var wg sync.WaitGroup
	errc := make(chan error, 3*groups)
	for id := uint64(1); id <= groups; id++ {
		g := s.Group(id)
		done := make(chan struct{})
		wg.Add(3)
		go func() { // appender
			defer wg.Done()
			defer close(done)
			rng := rand.New(rand.NewPCG(id, 1))
			for next := uint64(1); next <= entries; {
				n := min(1+rng.Uint64N(8), entries-next+1)
				var logs []*raft.Log
				for i := next; i < next+n; i++ {
					logs = append(logs, entry(id, i, 1))
				}
				if err := g.StoreLogs(logs); err != nil {
					errc <- err
					return
				}
				next += n
			}
		}()
		go func() { // compactor: keeps the last 50 entries
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				last, _ := g.LastIndex()
				if last > 50 {
					first, _ := g.FirstIndex()
					if err := g.DeleteRange(first, last-50); err != nil {
						errc <- err
						return
					}
				}
				time.Sleep(time.Millisecond)
			}
		}()
		go func() { // reader
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				first, _ := g.FirstIndex()
				last, _ := g.LastIndex()
				if first != 0 && first > last { // last only grows here

					errc <- fmt.Errorf("group %d: first=%d last=%d", id, first, last)
					return
				}
				for _, i := range []uint64{first, (first + last) / 2, last} {
					var l raft.Log
					err := g.GetLog(i, &l)
					if err == raft.ErrLogNotFound {
						continue // compacted meanwhile
					}
					if err != nil {
						errc <- err
						return
					}
					if want := entry(id, i, 1); l.Index != i || !bytes.Equal(l.Data, want.Data) {
						errc <- fmt.Errorf("group %d: GetLog(%d) = %+v", id, i, l)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for id := uint64(1); id <= groups; id++ {
		g := s.Group(id)
		last, _ := g.LastIndex()
		first, _ := g.FirstIndex()
		if last != entries || first < 1 || first > entries-50+1 {
			t.Fatalf("group %d: first=%d last=%d", id, first, last)
		}
		for i := first; i <= last; i++ {
			checkEntry(t, g, i, 1)
		}
	}
}

// TestCorruption shows that bad data yields errors wrapping ErrCorrupt,
// never a panic.
func TestCorruption(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	g := s.Group(7)
	storeRange(t, g, 1, 3, 1)
	for i, bad := range [][]byte{nil, {9}, {2, 0, 0, 1}, {1, 0, 0, 1, 0xff}} {
		if err := s.db.Set(logKey(7, 2), bad, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		var l raft.Log
		err := g.GetLog(2, &l)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("case %d: GetLog of %x: %v, want ErrCorrupt", i, bad, err)
		}
		t.Logf("case %d: %v", i, err)
	}
	checkEntry(t, g, 3, 1)
	if err := s.db.Set(stableKey(7, []byte("CurrentTerm")), []byte{1, 2, 3}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetUint64([]byte("CurrentTerm")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetUint64 of 3 bytes: %v, want ErrCorrupt", err)
	}

	// A malformed key in the log key space fails Open.
	if err := s.db.Set(append(groupPrefix(kindLog, 8), 1, 2, 3), []byte{}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenWithOptions("db", Options{FS: fs, Logger: quietLogger{}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a malformed log key: %v, want ErrCorrupt", err)
	} else {
		t.Log(err)
	}
}

// TestFormatVersion shows that a store of an unknown format is refused.
func TestFormatVersion(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	if err := s.db.Set(metaFormatKey, []byte{2}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := OpenWithOptions("db", Options{FS: fs, Logger: quietLogger{}})
	if err == nil {
		t.Fatal("Open of a version 2 store succeeded")
	}
	t.Log(err)

	// A store with keys but no format version is damaged.
	db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	err = errors.Join(
		db.Delete(metaFormatKey, pebble.Sync),
		db.Set(logKey(1, 1), appendLogValue(nil, entry(1, 1, 1)), pebble.Sync),
		db.Close())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenWithOptions("db", Options{FS: fs, Logger: quietLogger{}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open without a format version: %v, want ErrCorrupt", err)
	} else {
		t.Log(err)
	}
}

// TestGroupHandles shows that every Group(id) shares one cache, so a write
// through one handle is seen by another.
func TestGroupHandles(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	defer s.Close()
	a, b := s.Group(3), s.Group(3)
	storeRange(t, a, 1, 5, 1)
	checkBounds(t, b, 1, 5)
	if err := b.DeleteRange(1, 2); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, a, 3, 5)
	if err := s.DeleteGroup(3); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, a, 0, 0)
}
