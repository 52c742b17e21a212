package blockcache

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestFillRace: a fill fetched version 1 of blocks 0..15; before it
// installs, writes touch some of them. The touched blocks keep the
// write's data or stay absent; the others are installed.
func TestFillRace(t *testing.T) {
	c := New(1024 * BlockSize) // 8 shards: the fill spans them
	c.Put(1, 2, blockData(1, 2, 1))
	f := c.StartFill(1, 0, 16)
	c.Put(1, 3, blockData(1, 3, 2))
	c.Invalidate(1, 5)
	c.InvalidateRange(1, 8, 2)
	c.InvalidateRange(1, 14, math.MaxUint64) // through the entry scan
	c.Invalidate(2, 6)                       // another volume
	c.InvalidateRange(2, 0, 100)
	c.DropVolume(3)
	for b := range uint64(16) {
		f.Put(b, blockData(1, b, 1))
	}
	f.Put(16, blockData(1, 16, 1)) // outside the fill
	f.Done()

	for b := range uint64(16) {
		switch b {
		case 3:
			wantBlock(t, c, 1, b, 2)
		case 5, 8, 9, 14, 15:
			wantAbsent(t, c, 1, b)
		default:
			wantBlock(t, c, 1, b, 1)
		}
	}
	wantAbsent(t, c, 1, 16)
	if st := c.Stats(); st.Inserts != 2+9 {
		t.Fatalf("stats %+v", st)
	}
	checkInvariants(t, c)
}

// TestFillKeepsNewerEntry: a fill never replaces an entry, and a block
// written after StartFill stays refused even once the write's entry has
// been evicted.
func TestFillKeepsNewerEntry(t *testing.T) {
	c := New(20 * BlockSize)
	f := c.StartFill(1, 100, 1)
	c.Put(1, 100, blockData(1, 100, 2))
	f.Put(100, blockData(1, 100, 1))
	wantBlock(t, c, 1, 100, 2)
	f.Done()

	g := c.StartFill(1, 101, 1)
	c.Put(1, 101, blockData(1, 101, 2))
	for b := range uint64(40) { // evict block 101, never hit
		c.Put(1, b, blockData(1, b, 0))
	}
	if _, ok := c.shards[0].index[key{1, 101}]; ok {
		t.Fatal("block 101 not evicted")
	}
	g.Put(101, blockData(1, 101, 1))
	wantAbsent(t, c, 1, 101)
	g.Done()

	// A fill that sees an entry leaves it as it is: the cache holds
	// only current data, so the entry is at least as new.
	c.Put(1, 200, blockData(1, 200, 5))
	h := c.StartFill(1, 200, 1)
	h.Put(200, blockData(1, 200, 4))
	h.Done()
	wantBlock(t, c, 1, 200, 5)
	checkInvariants(t, c)
}

func TestFillDoneAndBounds(t *testing.T) {
	c := New(1024 * BlockSize)
	f := c.StartFill(1, 10, 3)
	f.Done()
	f.Done()
	f.Put(10, blockData(1, 10, 1)) // after Done
	wantAbsent(t, c, 1, 10)
	for i := range c.shards {
		if n := len(c.shards[i].fills); n != 0 {
			t.Fatalf("shard %d: %d fills after Done", i, n)
		}
	}

	g := c.StartFill(1, 0, 1<<40) // capped at MaxFillBlocks
	g.Put(MaxFillBlocks-1, blockData(1, MaxFillBlocks-1, 1))
	g.Put(MaxFillBlocks, blockData(1, MaxFillBlocks, 1))
	g.Put(5, make([]byte, 10)) // wrong size
	g.Done()
	wantBlock(t, c, 1, MaxFillBlocks-1, 1)
	wantAbsent(t, c, 1, MaxFillBlocks)
	wantAbsent(t, c, 1, 5)

	top := uint64(math.MaxUint64)
	h := c.StartFill(1, top-1, 10) // capped at the last block
	h.Put(top, blockData(1, top, 1))
	h.Put(0, blockData(1, 0, 1))
	h.Done()
	wantBlock(t, c, 1, top, 1)
	wantAbsent(t, c, 1, 0)

	if c.StartFill(1, 5, 0) != noFill {
		t.Fatal("a fill of no blocks registered")
	}
	checkInvariants(t, c)
}

// TestFillRegistersInItsShards: a short fill registers only in the
// shards of its blocks, a long one in all.
func TestFillRegistersInItsShards(t *testing.T) {
	c := New(64 << 20) // 64 shards
	f := c.StartFill(4, 1000, 3)
	g := c.StartFill(4, 0, 64)
	for i := range c.shards {
		want := 1
		for b := uint64(1000); b < 1003; b++ {
			if c.shardIndex(key{4, b}) == i {
				want = 2
			}
		}
		if n := len(c.shards[i].fills); n != want {
			t.Fatalf("shard %d: %d fills, want %d", i, n, want)
		}
	}
	f.Done()
	g.Done()
}

// TestMarkStale checks the bit ranges against a loop over the blocks.
func TestMarkStale(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		f := &Fill{first: 1000, last: 1000 + rng.Uint64N(MaxFillBlocks)}
		first := 900 + rng.Uint64N(MaxFillBlocks+200)
		last := first + rng.Uint64N(300)
		if rng.IntN(10) == 0 {
			last = math.MaxUint64
		}
		f.markStale(first, last)
		for b := f.first; b <= f.last; b++ {
			if want := b >= first && b <= last; f.staleBit(b-f.first) != want {
				t.Fatalf("fill %d..%d, marked %d..%d: block %d stale %v", f.first, f.last, first, last, b, !want)
			}
		}
		for off := f.last - f.first + 1; off < MaxFillBlocks; off++ {
			if f.staleBit(off) {
				t.Fatalf("fill %d..%d, marked %d..%d: bit %d beyond the fill", f.first, f.last, first, last, off)
			}
		}
	}
}
