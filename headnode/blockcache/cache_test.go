package blockcache

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestNewRoundsCapacity(t *testing.T) {
	for _, tc := range []struct {
		in, want int64
		shards   int
	}{
		{-1, 0, 0},
		{0, 0, 0},
		{BlockSize - 1, 0, 0},
		{BlockSize, BlockSize, 1},
		{10000, 2 * BlockSize, 1},
		{255 * BlockSize, 255 * BlockSize, 1},
		{256 * BlockSize, 256 * BlockSize, 2},
		{64 << 20, 64 << 20, 64},
	} {
		c := New(tc.in)
		if got := c.Stats().CapacityBytes; got != tc.want || len(c.shards) != tc.shards {
			t.Errorf("New(%d): capacity %d in %d shards, want %d in %d", tc.in, got, len(c.shards), tc.want, tc.shards)
		}
	}
}

func TestGetPutReplace(t *testing.T) {
	c := New(16 * BlockSize)
	buf := make([]byte, BlockSize)
	if c.Get(1, 5, buf) {
		t.Fatal("hit in an empty cache")
	}
	c.Put(1, 5, blockData(1, 5, 1))
	wantBlock(t, c, 1, 5, 1)
	wantAbsent(t, c, 2, 5) // another volume
	c.Put(1, 5, blockData(1, 5, 2))
	wantBlock(t, c, 1, 5, 2)

	c.Put(1, 6, make([]byte, BlockSize-1)) // wrong sizes are ignored
	c.Put(1, 6, make([]byte, BlockSize+1))
	wantAbsent(t, c, 1, 6)
	if c.Get(1, 5, make([]byte, BlockSize-1)) {
		t.Fatal("Get into a short buffer reported a hit")
	}
	big := make([]byte, 2*BlockSize)
	if !c.Get(1, 5, big) || versionMust(t, big, 1, 5) != 2 {
		t.Fatal("Get into a long buffer")
	}

	st := c.Stats()
	if st.Hits != 3 || st.Misses != 3 || st.Inserts != 1 || st.Bytes != BlockSize || st.Evictions != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkInvariants(t, c)
}

func versionMust(t *testing.T, b []byte, vol, block uint64) uint64 {
	t.Helper()
	v, err := versionOf(b, vol, block)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestEvictionStaysWithinCapacity(t *testing.T) {
	const slots = 300 // 2 shards of 150
	c := New(slots*BlockSize + 123)
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, BlockSize)
	for i := range 20000 {
		b := rng.Uint64N(2000)
		if !c.Get(9, b, buf) {
			c.Put(9, b, blockData(9, b, 0))
		} else if v := versionMust(t, buf, 9, b); v != 0 {
			t.Fatalf("block %d: version %d", b, v)
		}
		if st := c.Stats(); st.Bytes > st.CapacityBytes {
			t.Fatalf("op %d: %d bytes held, capacity %d", i, st.Bytes, st.CapacityBytes)
		}
	}
	checkInvariants(t, c)
	st := c.Stats()
	if st.Bytes != slots*BlockSize || st.Evictions == 0 || st.Inserts != st.Evictions+slots {
		t.Fatalf("stats %+v", st)
	}
}

// TestS3FIFOQueues follows blocks through one shard's queues: 20 slots,
// a small queue of 2, a ghost of 18.
func TestS3FIFOQueues(t *testing.T) {
	c := New(20 * BlockSize)
	s := &c.shards[0]
	where := func(b uint64) uint8 {
		i, ok := s.index[key{1, b}]
		if !ok {
			return inFree
		}
		return s.ents[i].where
	}
	for b := range uint64(20) {
		c.Put(1, b, blockData(1, b, 0))
	}
	c.Get(1, 0, make([]byte, BlockSize))

	// Full: block 0 was hit in small, so it moves to main; block 1 was
	// not, so it goes to the ghost and makes room for 20.
	c.Put(1, 20, blockData(1, 20, 0))
	if where(0) != inMain || where(1) != inFree || where(20) != inSmall {
		t.Fatalf("after 20: block 0 in %d, 1 in %d, 20 in %d", where(0), where(1), where(20))
	}
	// The ghost remembers block 1: back, it goes straight to main.
	c.Put(1, 1, blockData(1, 1, 0))
	if where(1) != inMain || where(2) != inFree {
		t.Fatalf("after 1 again: block 1 in %d, 2 in %d", where(1), where(2))
	}
	// Main is [1 0] (0 oldest), small [3..20]. Hit 0 and all of small,
	// then evict: 3..19 move to main until small is below its share
	// (only 20 is left), then main's tail goes: 0, hit, is re-inserted
	// with its counter decremented, and 1, never hit in main, is evicted.
	for _, b := range []uint64{0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20} {
		c.Get(1, b, make([]byte, BlockSize))
	}
	c.Put(1, 21, blockData(1, 21, 0))
	if where(0) != inMain || where(1) != inFree || where(3) != inMain || where(19) != inMain ||
		where(20) != inSmall || where(21) != inSmall {
		t.Fatalf("blocks 0 1 3 19 20 21 in %d %d %d %d %d %d", where(0), where(1), where(3), where(19), where(20), where(21))
	}
	if f := s.ents[s.index[key{1, 0}]].freq; f != 0 || s.main.head != s.index[key{1, 0}] {
		t.Fatalf("block 0: freq %d, main head %d", f, s.main.head)
	}
	checkInvariants(t, c)
}

func TestInvalidate(t *testing.T) {
	c := New(64 * BlockSize)
	for b := range uint64(8) {
		c.Put(1, b, blockData(1, b, 1))
		c.Put(2, b, blockData(2, b, 1))
	}
	c.Invalidate(1, 3)
	c.Invalidate(1, 100) // absent: nothing
	wantAbsent(t, c, 1, 3)
	wantBlock(t, c, 1, 2, 1)
	wantBlock(t, c, 2, 3, 1)
	if st := c.Stats(); st.Invalidations != 1 || st.Bytes != 15*BlockSize {
		t.Fatalf("stats %+v", st)
	}
	c.Put(1, 3, blockData(1, 3, 2)) // the slot is reused
	wantBlock(t, c, 1, 3, 2)
	checkInvariants(t, c)
}

func TestInvalidateRange(t *testing.T) {
	const top = math.MaxUint64
	for _, tc := range []struct {
		name         string
		first, count uint64
	}{
		{"empty", 10, 0},
		{"one", 10, 1},
		{"small", 5, 10},
		{"1TiB trim", 0, 1 << 28},
		{"everything", 0, top},
		{"from 12 to the end", 12, top},
		{"wraps past the last block", top - 2, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(1024 * BlockSize) // loopMax 64: huge counts scan the entries
			blocks := []uint64{0, 4, 5, 6, 14, 15, 16, 40, top - 3, top - 2, top - 1, top}
			for _, b := range blocks {
				c.Put(1, b, blockData(1, b, 1))
				c.Put(2, b, blockData(2, b, 1))
			}
			c.InvalidateRange(1, tc.first, tc.count)
			for _, b := range blocks {
				if b >= tc.first && b-tc.first < tc.count {
					wantAbsent(t, c, 1, b)
				} else {
					wantBlock(t, c, 1, b, 1)
				}
				wantBlock(t, c, 2, b, 1)
			}
			checkInvariants(t, c)
		})
	}
}

func TestDropVolume(t *testing.T) {
	c := New(1024 * BlockSize)
	for b := range uint64(300) {
		c.Put(1, b*7, blockData(1, b*7, 1))
		c.Put(2, b, blockData(2, b, 1))
	}
	c.Put(1, math.MaxUint64, blockData(1, math.MaxUint64, 1))
	c.DropVolume(1)
	for b := range uint64(300) {
		wantAbsent(t, c, 1, b*7)
		wantBlock(t, c, 2, b, 1)
	}
	wantAbsent(t, c, 1, math.MaxUint64)
	if st := c.Stats(); st.Invalidations != 301 || st.Bytes != 300*BlockSize {
		t.Fatalf("stats %+v", st)
	}
	checkInvariants(t, c)
}

func TestZeroCapacity(t *testing.T) {
	for _, c := range []*Cache{New(0), New(-4096), New(BlockSize - 1), {}} {
		buf := make([]byte, BlockSize)
		c.Put(1, 1, blockData(1, 1, 1))
		if c.Get(1, 1, buf) {
			t.Fatal("a cache of no capacity hit")
		}
		c.Invalidate(1, 1)
		c.InvalidateRange(1, 0, math.MaxUint64)
		c.DropVolume(1)
		f := c.StartFill(1, 0, 10)
		f.Put(1, blockData(1, 1, 1))
		f.Done()
		f.Done()
		if c.Get(1, 1, buf) {
			t.Fatal("a cache of no capacity hit after a fill")
		}
		if st := c.Stats(); st != (Stats{}) {
			t.Fatalf("stats %+v", st)
		}
	}
}

// TestRandomOpsAgainstModel runs seeded random operations, fills
// interleaved with writes among them, against a model of the backing
// store: every hit must be the model's current version. Invalidations
// stand for writes that do not install data (trims), so they bump the
// version too.
func TestRandomOpsAgainstModel(t *testing.T) {
	const (
		vols   = 2
		blocks = 1500
	)
	seed := uint64(7)
	rng := rand.New(rand.NewPCG(seed, seed))
	c := New(512 * BlockSize) // 4 shards of 128
	model := map[key]uint64{}
	bump := func(vol, b uint64) uint64 {
		model[key{vol, b}]++
		return model[key{vol, b}]
	}
	buf := make([]byte, BlockSize)
	check := func(vol, b uint64) {
		if c.Get(vol, b, buf) {
			if v := versionMust(t, buf, vol, b); v != model[key{vol, b}] {
				t.Fatalf("seed %d: block %d/%d: version %d, model %d", seed, vol, b, v, model[key{vol, b}])
			}
		}
	}
	// write does one random write-side operation.
	write := func(vol, b uint64) {
		switch r := rng.IntN(100); {
		case r < 60:
			c.Put(vol, b, blockData(vol, b, bump(vol, b)))
		case r < 80:
			bump(vol, b)
			c.Invalidate(vol, b)
		case r < 97:
			n := 1 + rng.Uint64N(20)
			if rng.IntN(4) == 0 {
				n = 1 << 28 // scans the entries
			}
			for x := b; x < min(b+n, blocks); x++ {
				bump(vol, x)
			}
			c.InvalidateRange(vol, b, n)
		default:
			for x := range uint64(blocks) {
				bump(vol, x)
			}
			c.DropVolume(vol)
		}
	}
	for range 30000 {
		vol, b := rng.Uint64N(vols), rng.Uint64N(blocks)
		switch r := rng.IntN(100); {
		case r < 45:
			check(vol, b)
		case r < 65:
			write(vol, b)
		default:
			// A fill of n blocks fetched now, with writes before it installs.
			n := 1 + rng.Uint64N(32)
			f := c.StartFill(vol, b, n)
			fetched := make([]uint64, n)
			for i := range n {
				fetched[i] = model[key{vol, b + i}]
			}
			for range rng.IntN(4) {
				write(vol, b+rng.Uint64N(n))
			}
			for i := range n {
				f.Put(b+i, blockData(vol, b+i, fetched[i]))
			}
			f.Done()
			for i := range n {
				check(vol, b+i)
			}
		}
	}
	checkInvariants(t, c)
	for k := range model {
		check(k.vol, k.block)
	}
	if st := c.Stats(); st.Hits == 0 || st.Evictions == 0 || st.Invalidations == 0 {
		t.Fatalf("stats %+v: the run did not exercise the cache", st)
	}
}
