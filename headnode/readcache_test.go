package headnode

import (
	"bytes"
	"context"
	"math/rand"
	"testing"
)

// TestReadCacheFollowsTheStore drives writes, partial writes, trims,
// zeroes, flushes, compactions and a restart of the primary at random
// between reads, each checked against the model: the cache must never
// serve what the store no longer holds. Small enough a cache that it
// evicts too.
func TestReadCacheFollowsTheStore(t *testing.T) {
	const size = 2 << 20
	r := newStorageRig(t, size, 7, 128<<10)
	r.cache = nil // a smaller one than the rig's, set before the restart below
	r.primary.Close()
	r.cache = newReadCache(256 << 10) // 64 blocks of the volume's 512
	r.pStore.SetBlockHook(r.cache.follow)
	r.start(t)
	rng := rand.New(rand.NewSource(17))
	ctx := context.Background()
	read := func() {
		off := uint64(rng.Intn(size/blockSize)) * blockSize
		n := uint64(1+rng.Intn(16)) * blockSize
		if rng.Intn(4) == 0 {
			off, n = uint64(rng.Intn(size-1)), uint64(1+rng.Intn(20000))
		}
		n = min(n, size-off)
		got := make([]byte, n)
		if err := r.primary.read(ctx, off, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, r.model[off:off+n]) {
			t.Fatalf("read %d+%d differs from the model at byte %d", off, n, firstDiff(got, r.model[off:off+n]))
		}
	}
	for step := range 1500 {
		switch k := rng.Intn(100); {
		case k < 45:
			read()
		case k < 75:
			off := uint64(rng.Intn(size/blockSize)) * blockSize
			n := min(uint64(1+rng.Intn(8))*blockSize, size-off)
			if rng.Intn(5) == 0 {
				off, n = uint64(rng.Intn(size-1)), uint64(1+rng.Intn(9000))
				n = min(n, size-off)
			}
			r.write(t, off, pattern(int(n), byte(step)))
		case k < 85:
			off := uint64(rng.Intn(size - 1))
			n := min(uint64(1+rng.Intn(64<<10)), size-off)
			removable := rng.Intn(2) == 0
			if err := r.primary.write(ctx, off, n, nil, true, removable, writeID{}); err != nil {
				t.Fatal(err)
			}
			clear(r.model[off : off+n])
		case k < 93:
			if err := r.m().flush(ctx); err != nil {
				t.Fatal(err)
			}
		case k < 99:
			if err := r.m().maintain(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			r.restart(t)
		}
	}
	r.check(t)
	st := r.cache.c.Stats()
	if st.Hits == 0 || st.Misses == 0 || st.Evictions == 0 {
		t.Fatalf("the cache saw %d hits, %d misses, %d evictions: the test did not exercise it", st.Hits, st.Misses, st.Evictions)
	}
	t.Logf("cache: %d hits, %d misses, %d evictions, %d invalidations", st.Hits, st.Misses, st.Evictions, st.Invalidations)
}
