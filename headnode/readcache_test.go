package headnode

import (
	"bytes"
	"context"
	"math/rand"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ballast-storage/ballast/headnode/blockstore"
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

// TestReadaheadFollowsSequentialReads: a volume read 64 KiB at a time from
// the start gets the blocks ahead fetched into the cache, so most reads
// hit it; reads at random places fetch nothing ahead; a write between the
// readahead and the read that reaches its blocks wins.
func TestReadaheadFollowsSequentialReads(t *testing.T) {
	const size = 16 << 20
	r := newStorageRigJournal(t, size, 7, 1<<20, 64<<20)
	r.primary.Close()
	r.cache = newReadCache(128 << 20) // room for a full readahead in its small queue
	r.pStore.SetBlockHook(r.cache.follow)
	r.start(t)
	data := make([]byte, size)
	rand.New(rand.NewSource(5)).Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.dropCache()
	read := func(off, n uint64) {
		t.Helper()
		got := make([]byte, n)
		if err := r.primary.read(r.ctx, off, got); err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(got, r.model[off:off+n]); i >= 0 {
			t.Fatalf("read %d+%d differs from the model at byte %d", off, n, i)
		}
	}
	rng := rand.New(rand.NewSource(6))
	for range 50 {
		read(uint64(rng.Intn(size/blockSize))*blockSize, blockSize)
	}
	if n := r.cache.aheadBlocks.Load(); n != 0 {
		t.Fatalf("random reads fetched %d blocks ahead", n)
	}
	r.dropCache()
	before := r.cache.c.Stats()
	const chunk = 64 << 10
	for off := uint64(0); off < size/2; off += chunk {
		read(off, chunk)
		if off == 4<<20 {
			// Over blocks the readahead may hold already: the write wins.
			r.write(t, off+2*chunk, pattern(chunk, 77))
		}
	}
	st := r.cache.c.Stats()
	hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
	if r.cache.aheadBlocks.Load() == 0 || hits < 10*misses {
		t.Fatalf("sequential reads: %d blocks read ahead, %d hits, %d misses", r.cache.aheadBlocks.Load(), hits, misses)
	}
	t.Logf("sequential reads of 64 KiB: %d blocks read ahead, %d hits, %d misses", r.cache.aheadBlocks.Load(), hits, misses)
	r.check(t)
}

// TestReadCacheMetrics: a node's cache is in the process's metrics by its
// head node's name, with the counts the cache keeps, until it is removed.
func TestReadCacheMetrics(t *testing.T) {
	rc := newReadCache(1 << 20)
	rc.start(3)
	rc.follow(3, []blockstore.BlockChange{{First: 1, Count: 1, Data: pattern(blockSize, 1)}})
	buf := make([]byte, blockSize)
	if !rc.readCached(3, 1, buf) || rc.readCached(3, 2, buf) {
		t.Fatal("the cache does not hold what the hook put")
	}
	remove := registerCacheMetrics("hn-metrics-test", rc)
	value := func(name string) (float64, bool) {
		mfs, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "headnode" && l.GetValue() == "hn-metrics-test" {
						if c := m.GetCounter(); c != nil {
							return c.GetValue(), true
						}
						return m.GetGauge().GetValue(), true
					}
				}
			}
		}
		return 0, false
	}
	for name, want := range map[string]float64{
		"ballast_headnode_read_cache_hits_total":     1,
		"ballast_headnode_read_cache_misses_total":   1,
		"ballast_headnode_read_cache_bytes":          blockSize,
		"ballast_headnode_read_cache_capacity_bytes": 1 << 20,
	} {
		if got, ok := value(name); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	remove()
	if _, ok := value("ballast_headnode_read_cache_hits_total"); ok {
		t.Fatal("a removed cache is still in the metrics")
	}
}
