package headnode

import (
	"errors"
	"math/rand"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// newDirectRig is a storage rig whose aligned writes of at least least
// bytes go straight to segments. It writes and flushes the volume's last
// block: the session that write opens says whether the secondary applies
// segment writes, and large writes go to segments only once it has.
func newDirectRig(t *testing.T, size uint64, segmentBytes, least int64) *storageRig {
	t.Helper()
	r := newStorageRig(t, size, 7, segmentBytes)
	r.remote.cfg.DirectWriteBytes = least
	r.write(t, size-blockSize, pattern(blockSize, 0x5e))
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLargeWritesGoStraightToSegments(t *testing.T) {
	r := newDirectRig(t, 2<<20, 256<<10, 64<<10)
	rng := rand.New(rand.NewSource(11))
	data := make([]byte, 600<<10) // two full segments and a part of one
	rng.Read(data)
	r.write(t, 64<<10, data)
	if n := r.dirty(t); n != 0 {
		t.Fatalf("%d blocks in the log after a large write; want none", n)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	var live []uint32
	for _, seg := range segs {
		live = append(live, seg.LiveBlocks)
	}
	slices.Sort(live)
	if !slices.Equal(live, []uint32{1, 22, 64, 64}) { // the rig's block, then the write's
		t.Fatalf("segments after a 600 KiB write in 256 KiB segments: %v", segs)
	}
	if got := r.remote.stats.directBytes.Load(); got != uint64(len(data)) {
		t.Fatalf("direct bytes counted %d, want %d", got, len(data))
	}
	r.check(t)
	r.checkShardsMatch(t)

	// Small and unaligned writes over them land in the log (the partial
	// ones read-modify-write from the sleds); a large write over the log
	// and over segments supersedes both.
	r.write(t, 70<<10, pattern(4096, 3))
	r.write(t, 100_000, pattern(9000, 4))
	r.check(t)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.write(t, 96<<10, pattern(4096, 5)) // in the log again
	over := make([]byte, 320<<10)
	rng.Read(over)
	r.write(t, 0, over)
	r.check(t)
	if n := r.dirty(t); n != 0 {
		t.Fatalf("%d blocks left in the log under a large write", n)
	}
	// Compaction and frees reclaim the overwritten segments.
	for range 3 {
		if err := r.m().maintain(r.ctx); err != nil {
			t.Fatal(err)
		}
	}
	r.check(t)
	r.checkShardsMatch(t)

	// A trim over segment-written blocks makes them holes.
	if err := r.primary.write(r.ctx, 0, 128<<10, nil, true, true, writeID{}); err != nil {
		t.Fatal(err)
	}
	clear(r.model[:128<<10])
	r.check(t)

	// The state survives a restart of the primary (replayed records).
	r.restart(t)
	r.check(t)
}

// TestLargeWriteTakesTheJournalWithoutSleds: with fewer sleds up than a
// segment needs, the write goes through the journals rather than fail.
func TestLargeWriteTakesTheJournalWithoutSleds(t *testing.T) {
	r := newDirectRig(t, 1<<20, 256<<10, 64<<10)
	for _, s := range []string{sledName(0), sledName(1)} {
		r.dir.setState(s, ballastpb.SledState_SLED_STATE_DOWN)
	}
	r.write(t, 0, pattern(512<<10, 9))
	if n := r.dirty(t); n != 128 {
		t.Fatalf("%d blocks in the log, want the write's 128", n)
	}
	if got := r.remote.stats.directBytes.Load(); got != 0 {
		t.Fatalf("direct bytes counted %d with too few sleds", got)
	}
	r.check(t)
}

// TestSegmentWriteCutShortLeavesOnlyOrphans: a write whose shards are on
// the sleds but whose record never got ordered (as after a crash there)
// takes the journal, and the audit collects its shards.
func TestSegmentWriteCutShortLeavesOnlyOrphans(t *testing.T) {
	r := newDirectRig(t, 1<<20, 256<<10, 64<<10)
	r.remote.crashAt = func(step string) error {
		if step == "segment-write:shards-written" {
			return errors.New("injected crash")
		}
		return nil
	}
	r.write(t, 0, pattern(256<<10, 2))
	r.remote.crashAt = nil
	if n := r.dirty(t); n != 64 {
		t.Fatalf("%d blocks in the log, want the write's 64", n)
	}
	r.write(t, 256<<10, pattern(256<<10, 3))
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
	r.checkShardsMatch(t) // no shard that no segment names
}

// TestSegmentWritesInterleaveWithSmallOnes: random writes of every size
// over a small volume, with flushes and compaction between, keep the
// replicas equal to the model and the stores consistent.
func TestSegmentWritesInterleaveWithSmallOnes(t *testing.T) {
	r := newDirectRig(t, 1<<20, 128<<10, 16<<10)
	rng := rand.New(rand.NewSource(12))
	for round := range 12 {
		for range 30 {
			var off, n uint64
			if rng.Intn(3) == 0 {
				n = uint64(4+rng.Intn(60)) * blockSize
				off = uint64(rng.Intn(int(r.vol.SizeBytes-n)/blockSize)) * blockSize
			} else {
				n = uint64(1 + rng.Intn(3*blockSize))
				off = uint64(rng.Intn(int(r.vol.SizeBytes - n)))
			}
			buf := make([]byte, n)
			rng.Read(buf)
			r.write(t, off, buf)
		}
		if round%3 == 0 {
			if err := r.m().flush(r.ctx); err != nil {
				t.Fatal(err)
			}
		}
		if round%4 == 1 {
			if err := r.m().maintain(r.ctx); err != nil {
				t.Fatal(err)
			}
		}
		r.check(t)
	}
	if r.remote.stats.directBytes.Load() == 0 {
		t.Fatal("no write went straight to a segment")
	}
	r.checkShardsMatch(t)
}

// TestQueuedLargeWritesShareASegment: writes that queue while segments
// are on their way to the sleds go together into the next one, in the
// order they came; a block two of them write holds the later one's data.
func TestQueuedLargeWritesShareASegment(t *testing.T) {
	r := newDirectRig(t, 2<<20, 256<<10, 64<<10)
	release := make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(let) // before the primary closes, should the test fail
	r.shards.set(func(m *memShards) { m.hold = func() { <-release } })
	w := r.primary.segWriter
	queued := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.queue)
	}
	type write struct {
		off  uint64
		data []byte
	}
	errs := make(chan error, 8)
	start := func(wr write) {
		go func() {
			errs <- r.primary.write(r.ctx, wr.off, uint64(len(wr.data)), wr.data, false, false, writeID{})
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// Two writes, one after the other, take both segments in flight and
	// wait at the sleds.
	first := []write{{0, pattern(64<<10, 1)}, {1 << 20, pattern(64<<10, 2)}}
	for i, wr := range first {
		start(wr)
		waitFor("a segment in flight", func() bool { return len(w.slots) == i+1 && queued() == 0 })
	}
	// Four more queue, one at a time so their order is known; the third
	// writes the first one's blocks again.
	later := []write{{256 << 10, pattern(64<<10, 3)}, {512 << 10, pattern(64<<10, 4)}, {256 << 10, pattern(64<<10, 5)}, {768 << 10, pattern(64<<10, 6)}}
	for i, wr := range later {
		start(wr)
		waitFor("a queued write", func() bool { return queued() == i+1 })
	}
	let()
	for range len(first) + len(later) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, wr := range append(first, later...) {
		copy(r.model[wr.off:], wr.data)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	if len(segs) != 4 {
		t.Fatalf("%d segments for the rig's block, 2 writes in flight and 4 queued behind them, want 4: %v", len(segs), segs)
	}
	shared := 0
	for _, seg := range segs {
		if seg.Blocks == 64 {
			shared++
			if seg.LiveBlocks != 48 {
				t.Fatalf("the shared segment has %d live blocks, want 48 (16 overwritten within it)", seg.LiveBlocks)
			}
		}
	}
	if shared != 1 {
		t.Fatalf("no segment holds the four queued writes: %v", segs)
	}
	r.check(t)
	r.checkShardsMatch(t)
}

// TestLargeWritesWaitForASecondaryThatAppliesThem: a secondary of an older
// build names no features in its hello and would read a segment-write
// record as an empty write; large writes take the journals while the
// session is with one.
func TestLargeWritesWaitForASecondaryThatAppliesThem(t *testing.T) {
	r := newStorageRig(t, 1<<20, 7, 256<<10)
	r.remote.cfg.DirectWriteBytes = 64 << 10
	r.faults.set(func(f *faults) { f.olderSecondary = true })
	r.write(t, 0, pattern(4096, 1)) // opens the session
	r.write(t, 256<<10, pattern(256<<10, 2))
	if got := r.remote.stats.directBytes.Load(); got != 0 {
		t.Fatalf("%d bytes went straight to segments with a secondary that cannot apply them", got)
	}
	if n := r.dirty(t); n != 65 {
		t.Fatalf("%d blocks in the log, want 65", n)
	}
	r.check(t)
	// A session with a secondary that applies them: large writes go to
	// segments again.
	r.faults.set(func(f *faults) { f.olderSecondary = false })
	r.restart(t)
	r.write(t, 0, pattern(4096, 3))
	r.write(t, 512<<10, pattern(256<<10, 4))
	if got := r.remote.stats.directBytes.Load(); got != 256<<10 {
		t.Fatalf("%d bytes went straight to segments, want 256 KiB", got)
	}
	r.check(t)
}
