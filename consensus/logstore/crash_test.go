package logstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/hashicorp/raft"
)

// The crash tests run the store on pebble's strict in-memory filesystem,
// which keeps only what was synced when ResetToSyncedState simulates power
// loss. A crash is: SetIgnoreSyncs(true) (nothing more becomes durable),
// Close, ResetToSyncedState, SetIgnoreSyncs(false), Open.

// bigEntry is a test entry whose size (0 to 6 KiB) and bytes are a function
// of group and index, so batches span pebble's 32 KiB WAL blocks.
func bigEntry(group, index uint64) *raft.Log {
	size := (index*7919 + group*104729) % 6144
	return &raft.Log{
		Index: index,
		Term:  index,
		Type:  raft.LogCommand,
		Data:  bytes.Repeat([]byte{byte(index), byte(group)}, int(size/2)),
	}
}

func checkBigEntry(g *Group, index uint64) error {
	var l raft.Log
	if err := g.GetLog(index, &l); err != nil {
		return fmt.Errorf("group %d: GetLog(%d): %w", g.ID(), index, err)
	}
	want := bigEntry(g.ID(), index)
	if l.Index != index || l.Term != want.Term || !bytes.Equal(l.Data, want.Data) {
		return fmt.Errorf("group %d: entry %d is wrong (term %d, %d bytes)", g.ID(), index, l.Term, len(l.Data))
	}
	return nil
}

// crashWriter is one group's writer and what it knows of its history.
type crashWriter struct {
	mu sync.Mutex
	// batchEnds holds the last index of every batch StoreLogs was called
	// with, whether or not it returned.
	batchEnds map[uint64]bool
	// The acknowledged (returned) state: last index stored, highest index
	// compacted by DeleteRange(1, x), and term set.
	ackedLast, ackedFloor, ackedTerm uint64
}

type acked struct{ last, floor, term uint64 }

func (w *crashWriter) snapshot() acked {
	w.mu.Lock()
	defer w.mu.Unlock()
	return acked{w.ackedLast, w.ackedFloor, w.ackedTerm}
}

// run appends batches of 1 to 6 entries, sets the term after each, and now
// and then compacts, until the store is closed.
func (w *crashWriter) run(g *Group, rng *rand.Rand) error {
	next, term := uint64(1), uint64(0)
	for {
		n := 1 + rng.Uint64N(6)
		var logs []*raft.Log
		for i := next; i < next+n; i++ {
			logs = append(logs, bigEntry(g.ID(), i))
		}
		w.mu.Lock()
		w.batchEnds[next+n-1] = true
		w.mu.Unlock()
		if err := g.StoreLogs(logs); err != nil {
			return err
		}
		next += n
		w.mu.Lock()
		w.ackedLast = next - 1
		w.mu.Unlock()

		term++
		if err := g.SetUint64([]byte("CurrentTerm"), term); err != nil {
			return err
		}
		w.mu.Lock()
		w.ackedTerm = term
		w.mu.Unlock()

		if next > 8 && rng.IntN(3) == 0 {
			floor := next - 5
			if err := g.DeleteRange(1, floor); err != nil {
				return err
			}
			w.mu.Lock()
			w.ackedFloor = floor
			w.mu.Unlock()
		}
	}
}

// TestCrashKeepsAcknowledgedWrites crashes a store while several groups
// write to it concurrently, at a random moment, and checks that every write
// that returned before the crash survived, that each group's log is whole
// batches with no hole, and that the store works afterwards.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			crashOnce(t, seed)
		})
	}
}

func crashOnce(t *testing.T, seed uint64) {
	const groups = 4
	rng := rand.New(rand.NewPCG(seed, 0))
	mem := vfs.NewStrictMem()
	s := openMem(t, mem)

	writers := make([]*crashWriter, groups)
	var wg sync.WaitGroup
	errc := make(chan error, groups)
	for i := range writers {
		w := &crashWriter{batchEnds: map[uint64]bool{}}
		writers[i] = w
		g := s.Group(uint64(i + 1))
		wrng := rand.New(rand.NewPCG(seed, uint64(i+1)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(g, wrng); !errors.Is(err, ErrClosed) {
				errc <- err
			}
		}()
	}

	// The crash. What was acknowledged is read before syncs stop, so all of
	// it was synced.
	time.Sleep(time.Duration(5+rng.IntN(50)) * time.Millisecond)
	before := make([]acked, groups)
	for i, w := range writers {
		before[i] = w.snapshot()
	}
	mem.SetIgnoreSyncs(true)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	mem.ResetToSyncedState()
	mem.SetIgnoreSyncs(false)

	s = openMem(t, mem)
	defer s.Close()
	for i, w := range writers {
		g := s.Group(uint64(i + 1))
		a := before[i]
		first, _ := g.FirstIndex()
		last, _ := g.LastIndex()
		t.Logf("group %d: acknowledged last=%d floor=%d term=%d; recovered first=%d last=%d",
			g.ID(), a.last, a.floor, a.term, first, last)
		if last < a.last {
			t.Fatalf("group %d: lost acknowledged entries: last=%d, acknowledged %d", g.ID(), last, a.last)
		}
		if last != 0 && !w.batchEnds[last] {
			t.Fatalf("group %d: last index %d ends no batch: a batch was partly recovered", g.ID(), last)
		}
		if a.floor > 0 && first <= a.floor {
			t.Fatalf("group %d: first=%d, but entries up to %d were deleted", g.ID(), first, a.floor)
		}
		for i := first; last != 0 && i <= last; i++ {
			if err := checkBigEntry(g, i); err != nil {
				t.Fatal(err)
			}
		}
		term, err := g.GetUint64([]byte("CurrentTerm"))
		if err != nil && !(a.term == 0 && err == ErrKeyNotFound) {
			t.Fatalf("group %d: term: %v", g.ID(), err)
		}
		if term < a.term {
			t.Fatalf("group %d: term %d, acknowledged %d", g.ID(), term, a.term)
		}
		// The store takes writes after the crash.
		if err := g.StoreLogs([]*raft.Log{bigEntry(g.ID(), last+1)}); err != nil {
			t.Fatal(err)
		}
		if err := checkBigEntry(g, last+1); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCrashTornWrite loses power in the middle of a WAL write: half of it
// reaches the disk, synced, and nothing after. Each operation must then be
// entirely absent, leaving exactly the state before it.
func TestCrashTornWrite(t *testing.T) {
	ops := []struct {
		name string
		op   func(s *Store) error
	}{
		{"StoreLogs", func(s *Store) error {
			// About 24 KiB: more than half a WAL block.
			var logs []*raft.Log
			for i := uint64(5); i <= 12; i++ {
				l := bigEntry(1, i)
				l.Data = bytes.Repeat([]byte{byte(i)}, 3000)
				logs = append(logs, l)
			}
			return s.Group(1).StoreLogs(logs)
		}},
		{"StoreLogs-large", func(s *Store) error {
			// About 100 KiB: several WAL blocks, so several writes.
			var logs []*raft.Log
			for i := uint64(5); i <= 24; i++ {
				l := bigEntry(1, i)
				l.Data = bytes.Repeat([]byte{byte(i)}, 5000)
				logs = append(logs, l)
			}
			return s.Group(1).StoreLogs(logs)
		}},
		{"DeleteRange", func(s *Store) error { return s.Group(1).DeleteRange(1, 3) }},
		{"SetUint64", func(s *Store) error { return s.Group(2).SetUint64([]byte("CurrentTerm"), 99) }},
		{"DeleteGroup", func(s *Store) error { return s.DeleteGroup(1) }},
	}
	for _, tc := range ops {
		t.Run(tc.name, func(t *testing.T) {
			mem := vfs.NewStrictMem()
			fs := &walFS{FS: mem}
			s := openMem(t, fs)
			g1, g2 := s.Group(1), s.Group(2)
			for i := uint64(1); i <= 4; i++ {
				if err := g1.StoreLog(bigEntry(1, i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := g1.Set([]byte("LastVoteCand"), []byte("n1")); err != nil {
				t.Fatal(err)
			}
			if err := g2.SetUint64([]byte("CurrentTerm"), 7); err != nil {
				t.Fatal(err)
			}

			var fired atomic.Bool
			fs.setHook(func(f vfs.File, p []byte) (int, error) {
				fired.Store(true)
				half := len(p) / 2
				if _, err := f.Write(p[:half]); err != nil {
					return 0, err
				}
				if err := f.Sync(); err != nil {
					return 0, err
				}
				mem.SetIgnoreSyncs(true) // the power fails here
				n, err := f.Write(p[half:])
				return half + n, err
			})
			// The process sees success: its sync was lost with the power.
			if err := tc.op(s); err != nil {
				t.Fatal(err)
			}
			if !fired.Load() {
				t.Fatal("the operation wrote nothing to the WAL")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			mem.ResetToSyncedState()
			mem.SetIgnoreSyncs(false)

			s = openMem(t, fs)
			defer s.Close()
			g1, g2 = s.Group(1), s.Group(2)
			checkBounds(t, g1, 1, 4)
			for i := uint64(1); i <= 4; i++ {
				if err := checkBigEntry(g1, i); err != nil {
					t.Fatal(err)
				}
			}
			var l raft.Log
			if err := g1.GetLog(5, &l); err != raft.ErrLogNotFound {
				t.Fatalf("entry 5 of the torn batch: %v", err)
			}
			if v, err := g1.Get([]byte("LastVoteCand")); err != nil || string(v) != "n1" {
				t.Fatalf("LastVoteCand = %q, %v", v, err)
			}
			if v, err := g2.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
				t.Fatalf("CurrentTerm = %d, %v", v, err)
			}
			if ids, err := s.Groups(); err != nil || !slices.Equal(ids, []uint64{1, 2}) {
				t.Fatalf("Groups() = %v, %v", ids, err)
			}
			// And the store takes writes again.
			if err := g1.StoreLog(bigEntry(1, 5)); err != nil {
				t.Fatal(err)
			}
			checkBounds(t, g1, 1, 5)
		})
	}
}
