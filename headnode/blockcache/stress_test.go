package blockcache

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentWritesAndFills races writers against readers that fill
// under the documented protocol. A writer owns a run of blocks; for each
// write it bumps the block's version in the backing store, then Puts
// the new data or invalidates (a trim), then publishes the version as
// done. A reader notes the done versions, then Gets; on a miss it starts
// a fill, reads the backing store, yields (the slow fetch) and installs.
// Every hit must be whole and no older than the version done before the
// Get began. Without the stale marks a fill that read the backing store
// before an invalidation installs the old version after it, and this
// test fails within a few thousand reads.
func TestConcurrentWritesAndFills(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blocks uint64
		slots  int64
	}{
		{"all cached", 64, 256},        // 2 shards; races on few blocks
		{"evicting", 1024, 256},        // evictions let stale fills past an entry
		{"many shards", 4096, 64 << 8}, // 64 shards, 8 blocks per fill on average
	} {
		t.Run(tc.name, func(t *testing.T) {
			stress(t, tc.blocks, tc.slots)
		})
	}
}

func stress(t *testing.T, blocks uint64, slots int64) {
	const (
		vol     = 3
		writers = 2
		readers = 4
	)
	reads := 10000
	if testing.Short() {
		reads = 2000
	}
	c := New(slots * BlockSize)
	backing := make([]atomic.Uint64, blocks) // version written
	done := make([]atomic.Uint64, blocks)    // version whose cache update returned
	var stop, failed atomic.Bool
	fail := func(format string, args ...any) {
		if !failed.Swap(true) {
			t.Errorf(format, args...)
		}
	}

	var ww, rw sync.WaitGroup
	for w := range uint64(writers) {
		ww.Add(1)
		go func() {
			defer ww.Done()
			rng := rand.New(rand.NewPCG(1, w))
			own := blocks / writers
			lo := w * own
			buf := make([]byte, BlockSize)
			for !stop.Load() {
				b := lo + rng.Uint64N(own)
				n := min(1+rng.Uint64N(8), lo+own-b)
				op := rng.IntN(10)
				if op != 1 && op != 2 {
					n = 1 // Put or Invalidate
				}
				for x := b; x < b+n; x++ {
					backing[x].Add(1)
				}
				switch {
				case op >= 3:
					fillBlock(buf, vol, b, backing[b].Load())
					c.Put(vol, b, buf)
				case op >= 1:
					c.InvalidateRange(vol, b, n)
				default:
					c.Invalidate(vol, b)
				}
				for x := b; x < b+n; x++ {
					done[x].Store(backing[x].Load())
				}
				if rng.IntN(2000) == 0 {
					c.DropVolume(vol) // no new versions: only a flush
				}
				runtime.Gosched() // keep pace with the readers on few CPUs

			}
		}()
	}
	for r := range uint64(readers) {
		rw.Add(1)
		go func() {
			defer rw.Done()
			rng := rand.New(rand.NewPCG(2, r))
			buf := make([]byte, BlockSize)
			var floor [16]uint64
			check := func(b, min uint64) {
				v, err := versionOf(buf, vol, b)
				if err != nil {
					fail("%v", err)
				} else if v < min {
					fail("block %d: version %d, but %d was done before the Get", b, v, min)
				}
			}
			for i := 0; i < reads && !failed.Load(); i++ {
				b := rng.Uint64N(blocks)
				n := min(1+rng.Uint64N(16), blocks-b)
				for j := range n {
					floor[j] = done[b+j].Load()
				}
				missed := false
				for j := range n {
					if c.Get(vol, b+j, buf) {
						check(b+j, floor[j])
					} else {
						missed = true
					}
				}
				if !missed {
					continue
				}
				f := c.StartFill(vol, b, n)
				var fetched [16]uint64
				for j := range n {
					fetched[j] = backing[b+j].Load()
				}
				runtime.Gosched()
				for j := range n {
					fillBlock(buf, vol, b+j, fetched[j])
					f.Put(b+j, buf)
				}
				f.Done()
			}
		}()
	}
	rw.Wait()
	stop.Store(true)
	ww.Wait()
	checkInvariants(t, c)
	st := c.Stats()
	t.Logf("%+v", st)
	if st.Hits == 0 || st.Inserts == 0 {
		t.Fatalf("stats %+v: the run did not exercise the cache", st)
	}
}
