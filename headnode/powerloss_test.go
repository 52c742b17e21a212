package headnode

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
)

// Power losses of whole head nodes: a primary and its secondary whose
// block stores lose what they had not synced, under writes, flushes and
// the rest of maintenance. The block store's own crash tests are in
// headnode/blockstore (journalstore_test.go), whose crashableStore this
// is a copy of (a package's test helpers cannot be imported).

// crashableStore opens a store on a filesystem that forgets what was not
// synced when crash is called, as a power loss would.
type crashableStore struct {
	fs  *vfs.MemFS
	jfs *crashfs.FS
	s   *blockstore.Store
	o   blockstore.Options
}

// crashJournalFS puts the journal on a crashfs, which also tears the last
// write a power loss interrupts.
type crashJournalFS struct{ *crashfs.FS }

func (c crashJournalFS) OpenFile(name string, flag int, perm os.FileMode) (journal.File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

var crashSeed atomic.Uint64

func openCrashable(t *testing.T, o blockstore.Options) *crashableStore {
	t.Helper()
	c := &crashableStore{fs: vfs.NewStrictMem(), jfs: crashfs.New(crashSeed.Add(1)), o: o}
	c.o.FS = c.fs
	c.o.JournalFS = crashJournalFS{c.jfs}
	c.o.JournalPath = "/journal"
	c.reopen(t)
	t.Cleanup(func() {
		if c.s != nil {
			c.s.Close()
		}
	})
	return c
}

func (c *crashableStore) reopen(t *testing.T) {
	t.Helper()
	s, err := blockstore.Open("db", c.o)
	if err != nil {
		t.Fatal(err)
	}
	c.s = s
}

// crash loses everything not synced, then opens the store again. The
// journal goes first: pebble may sync after it (a release does), never
// the journal after pebble, which a real power loss, cutting both at
// once, cannot do either.
func (c *crashableStore) crash(t *testing.T) {
	t.Helper()
	c.jfs.Crash()
	c.fs.SetIgnoreSyncs(true)
	c.s.Close()
	c.fs.ResetToSyncedState()
	c.fs.SetIgnoreSyncs(false)
	c.reopen(t)
}

// A client write into a journal at its high-water mark waits, before it
// is ordered, for a release rather than failing, and asks for a flush;
// what frees the journal (here a trim, which carries no data) is not held
// back, and the write goes on once there is room.
func TestJournalFullHoldsWritesBack(t *testing.T) {
	const size = 4 << 20
	p := newPair(t, size)
	p.primary.Close()
	opts := blockstore.Options{JournalBytes: blockstore.MinJournalBytes, ReleaseInterval: 5 * time.Millisecond}
	p.pStore, p.sStore = openCrashable(t, opts).s, openCrashable(t, opts).s
	p.start(t)
	var written uint64
	for !p.pStore.JournalHigh() {
		p.write(t, written, pattern(blockSize, byte(written/blockSize)))
		written += blockSize
	}
	pressured := make(chan struct{}, 1)
	p.pStore.SetJournalPressureFunc(func() {
		select {
		case pressured <- struct{}{}:
		default:
		}
	})
	done := make(chan error, 1)
	go func() {
		done <- p.primary.write(context.Background(), size-blockSize, blockSize, pattern(blockSize, 7), false, false, writeID{})
	}()
	select {
	case err := <-done:
		t.Fatalf("a write into a full journal returned at once: %v", err)
	case <-pressured:
	case <-time.After(10 * time.Second):
		t.Fatal("a full journal asked for no flush")
	}
	select {
	case err := <-done:
		t.Fatalf("the held write returned before any room was made: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := p.primary.write(context.Background(), 0, written, nil, true, true, writeID{}); err != nil {
		t.Fatalf("trim while the journal is full: %v", err)
	}
	clear(p.model[:written])
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held write never went through after the journal was freed")
	}
	copy(p.model[size-blockSize:], pattern(blockSize, 7))
	p.checkReplicas(t)
}

// TestPowerLossKeepsEveryAcknowledgedWrite runs writes, flushes and the
// rest of maintenance on a primary and secondary whose stores and journals
// live on filesystems that forget what was not synced, and cuts the power
// of both at random moments: every acknowledged write reads back, the
// replicas agree and the stores stay consistent.
func TestPowerLossKeepsEveryAcknowledgedWrite(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := newStorageRig(t, 512<<10, 7, 64<<10)
			opts := blockstore.Options{JournalBytes: 4 << 20, ReleaseInterval: 5 * time.Millisecond}
			ps, ss := openCrashable(t, opts), openCrashable(t, opts)
			r.primary.Close()
			r.pStore, r.sStore = ps.s, ss.s
			r.start(t)
			rng := rand.New(rand.NewSource(seed))
			for round := 0; round < 8; round++ {
				for range 50 + rng.Intn(150) {
					b := uint64(rng.Intn(128))
					r.write(t, b*blockSize, pattern(blockSize, byte(rng.Intn(256))))
				}
				switch rng.Intn(3) {
				case 0:
					r.m().flush(r.ctx)
				case 1:
					r.m().flush(r.ctx)
					r.m().maintain(r.ctx)
				}
				// The power goes: the primary stops where it is, and both
				// nodes lose what they had not synced.
				r.primary.Close()
				ps.crash(t)
				ss.crash(t)
				r.pStore, r.sStore = ps.s, ss.s
				r.start(t)
				r.check(t)
			}
			if err := r.m().flush(r.ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.m().maintain(r.ctx); err != nil {
				t.Fatal(err)
			}
			r.check(t)
		})
	}
}

// TestPowerLossAtEveryStep loses power on the primary, the secondary or
// both at a named step of the write path (journal written, journal
// durable, pebble applied, journal released) or of the maintenance
// (shards written, segment committed), in the middle of a workload of
// writes, flushes and compactions: every write acknowledged before must
// read back after both restart, a write cut short reads as before or
// after it, and the replicas agree.
func TestPowerLossAtEveryStep(t *testing.T) {
	storePoints := []string{"append:journaled", "append:durable", "append:applied", "release:synced", "release:done"}
	maintPoints := []string{"flush:shards-written", "compact:shards-written", "compact:committed", "free:committed", "segment-write:shards-written"}
	type tc struct {
		point      string
		store      bool // a store's step (else the maintenance's)
		prim, secd bool // whose power goes
	}
	var cases []tc
	for _, p := range storePoints {
		cases = append(cases, tc{p, true, true, false}, tc{p, true, false, true}, tc{p, true, true, true})
	}
	for _, p := range maintPoints {
		cases = append(cases, tc{p, false, true, false}, tc{p, false, true, true})
	}
	for i, c := range cases {
		name := fmt.Sprintf("%s/primary=%v,secondary=%v", c.point, c.prim, c.secd)
		t.Run(name, func(t *testing.T) {
			t.Parallel() // each case has stores, sleds and a primary of its own
			rng := rand.New(rand.NewSource(int64(i + 1)))
			r := newStorageRig(t, 256<<10, 7, 64<<10)
			r.remote.cfg.DirectWriteBytes = 32 << 10 // the workload's 8-block writes go straight to segments
			opts := blockstore.Options{JournalBytes: 2 << 20, ReleaseInterval: 2 * time.Millisecond}
			ps, ss := openCrashable(t, opts), openCrashable(t, opts)
			r.primary.Close()
			r.pStore, r.sStore = ps.s, ss.s
			r.start(t)

			var crashed atomic.Bool
			powerOff := func() {
				if crashed.Swap(true) {
					return
				}
				for _, n := range []struct {
					c  *crashableStore
					on bool
				}{{ps, c.prim}, {ss, c.secd}} {
					if n.on {
						n.c.jfs.Crash()
						n.c.fs.SetIgnoreSyncs(true)
					}
				}
			}
			nth := int64(1 + rng.Intn(40))
			var hits atomic.Int64
			hit := func(point string) {
				if point == c.point && hits.Add(1) == nth {
					powerOff()
				}
			}
			if c.store {
				for _, n := range []*crashableStore{ps, ss} {
					n.s.SetCrashHook(hit)
				}
			} else {
				nth = 1 + int64(rng.Intn(2))
				r.remote.crashAt = func(step string) error { hit(step); return nil }
			}

			// One writer: at most one write is cut short by the crash.
			size := int(r.vol.SizeBytes / blockSize)
			uncertain := map[uint64][][]byte{}
			for op := 0; op < 2000 && !crashed.Load(); op++ {
				switch {
				case op%40 == 39:
					r.m().flush(r.ctx)
					if op%120 == 119 {
						r.m().maintain(r.ctx)
					}
				default:
					// Mostly single blocks through the journals; now and
					// then eight at once, straight to a segment.
					blocks := 1
					if op%8 == 3 {
						blocks = 8
					}
					b := uint64(rng.Intn(size/2 - blocks + 1)) // rewrites, so compaction has work
					data := make([]byte, 0, blocks*blockSize)
					for range blocks {
						data = append(data, pattern(blockSize, byte(rng.Intn(256)))...)
					}
					// Named, as the agent names every write: the replicas'
					// tables of them must survive the crash alike.
					id := writeID{client: 77, op: uint64(op + 1), oldest: uint64(op + 1)}
					err := r.primary.write(r.ctx, b*blockSize, uint64(len(data)), data, false, false, id)
					if err != nil || crashed.Load() {
						for i := range uint64(blocks) {
							if uncertain[b+i] == nil {
								uncertain[b+i] = [][]byte{slices.Clone(r.model[(b+i)*blockSize : (b+i+1)*blockSize])}
							}
							uncertain[b+i] = append(uncertain[b+i], data[i*blockSize:(i+1)*blockSize])
						}
					}
					if err == nil {
						copy(r.model[b*blockSize:], data)
					} else if !crashed.Load() {
						t.Fatalf("write before the power went: %v", err)
					}
				}
			}
			if !crashed.Load() {
				t.Fatalf("the workload never reached step %s %d times (%d)", c.point, nth, hits.Load())
			}
			r.primary.Close()
			for _, n := range []*crashableStore{ps, ss} {
				n.s.SetCrashHook(nil)
			}
			r.remote.crashAt = nil
			if c.prim {
				ps.crash(t)
			}
			if c.secd {
				ss.crash(t)
			}
			r.pStore, r.sStore = ps.s, ss.s
			r.start(t)
			// A write opens a session, whose reconciliation may bring back
			// from the secondary a write cut short on the primary (its
			// outcome was unknown; it may take effect now). The workload
			// wrote only the first half.
			r.write(t, r.vol.SizeBytes-blockSize, pattern(blockSize, 0xee))
			// Settle the blocks whose last write was cut short, then the
			// replicas must agree with the model.
			for b, candidates := range uncertain {
				got := make([]byte, blockSize)
				if err := r.primary.read(r.ctx, b*blockSize, got); err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(candidates, func(d []byte) bool { return bytes.Equal(d, got) }) {
					t.Fatalf("block %d reads as none of the %d writes it may hold", b, len(candidates))
				}
				copy(r.model[b*blockSize:], got)
			}
			r.check(t)
		})
	}
}
