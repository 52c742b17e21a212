package headnode

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ballast-storage/ballast/headnode/blockcache"
	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The read cache
//
// A primary keeps the blocks it read and wrote last in memory
// (headnode/blockcache), one cache per node for all the volumes it is
// primary of. The cache follows the store, not the write path: the
// store's block hook (blockstore.SetBlockHook) puts every committed
// write's data and drops every removed, segment-written or synced block,
// in commit order under the volume's index lock. A read that misses
// starts a fill before it looks its blocks up in the store, so a commit
// between the lookup and the fill marks the fill stale: the cache never
// holds what the store no longer does, and a read served from it sees
// exactly what a read of the store would (a write still in flight is
// shown only once the store holds it, as before).
//
// Only volumes with a running primary here are cached (a refcount: an old
// primary may stop after a new one started); each start drops what an
// earlier time as primary left, since the store changed without the
// cache following while no primary ran.
type readCache struct {
	c *blockcache.Cache
	// aheadBlocks counts blocks the readahead fetched (readahead.go).
	aheadBlocks atomic.Uint64
	mu          sync.Mutex
	vols        map[uint64]int // running primaries per volume
}

func newReadCache(bytes int64) *readCache {
	return &readCache{c: blockcache.New(bytes), vols: map[uint64]int{}}
}

// cacheBytes resolves the configured size: 0 is the default from the
// machine's memory, negative is none.
func cacheBytes(configured int64) int64 {
	switch {
	case configured < 0:
		return 0
	case configured > 0:
		return configured
	}
	total, err := blockcache.MemoryTotal()
	if err != nil {
		return blockcache.MinDefaultCapacity
	}
	return blockcache.DefaultCapacity(total)
}

func (rc *readCache) start(vol uint64) {
	rc.mu.Lock()
	rc.vols[vol]++
	rc.mu.Unlock()
	rc.c.DropVolume(vol)
}

func (rc *readCache) stop(vol uint64) {
	rc.mu.Lock()
	if rc.vols[vol]--; rc.vols[vol] <= 0 {
		delete(rc.vols, vol)
	}
	rc.mu.Unlock()
	rc.c.DropVolume(vol)
}

func (rc *readCache) cached(vol uint64) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.vols[vol] > 0
}

// follow is the store's block hook.
func (rc *readCache) follow(vol uint64, changes []blockstore.BlockChange) {
	if !rc.cached(vol) {
		return
	}
	for _, ch := range changes {
		switch {
		case ch.Data != nil:
			rc.c.Put(vol, ch.First, ch.Data)
		case ch.Count == blockstore.AllBlocks:
			rc.c.DropVolume(vol)
		case ch.Count == 1:
			rc.c.Invalidate(vol, ch.First)
		default:
			rc.c.InvalidateRange(vol, ch.First, ch.Count)
		}
	}
}

// readCached fills dst (whole blocks from first) from the cache if every
// block is there.
func (rc *readCache) readCached(vol, first uint64, dst []byte) bool {
	for i := 0; i < len(dst); i += blockSize {
		if !rc.c.Get(vol, first+uint64(i/blockSize), dst[i:i+blockSize]) {
			return false
		}
	}
	return true
}

func (rc *readCache) status() *ballastpb.ReadCacheStatus {
	st := rc.c.Stats()
	return &ballastpb.ReadCacheStatus{CapacityBytes: uint64(st.CapacityBytes), Bytes: uint64(st.Bytes),
		Hits: st.Hits, Misses: st.Misses, Evictions: st.Evictions, ReadaheadBlocks: rc.aheadBlocks.Load()}
}

// Metrics: the caches of every head node in the process (a demo runs
// several), read when scraped.
var (
	cacheMetricsOnce sync.Once
	cacheMetrics     = &cacheCollector{caches: map[string]*readCache{}}
)

type cacheCollector struct {
	mu     sync.Mutex
	caches map[string]*readCache
}

var (
	cacheHitsDesc   = prometheus.NewDesc("ballast_headnode_read_cache_hits_total", "Blocks read from the primary's read cache.", []string{"headnode"}, nil)
	cacheMissesDesc = prometheus.NewDesc("ballast_headnode_read_cache_misses_total", "Reads that missed the read cache.", []string{"headnode"}, nil)
	cacheEvictDesc  = prometheus.NewDesc("ballast_headnode_read_cache_evictions_total", "Blocks evicted from the read cache.", []string{"headnode"}, nil)
	cacheBytesDesc  = prometheus.NewDesc("ballast_headnode_read_cache_bytes", "Bytes the read cache holds.", []string{"headnode"}, nil)
	cacheCapDesc    = prometheus.NewDesc("ballast_headnode_read_cache_capacity_bytes", "The read cache's size.", []string{"headnode"}, nil)
	cacheAheadDesc  = prometheus.NewDesc("ballast_headnode_readahead_blocks_total", "Blocks fetched into the read cache ahead of sequential reads.", []string{"headnode"}, nil)
)

func (cc *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheHitsDesc, cacheMissesDesc, cacheEvictDesc, cacheBytesDesc, cacheCapDesc, cacheAheadDesc} {
		ch <- d
	}
}

func (cc *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for id, rc := range cc.caches {
		st := rc.c.Stats()
		ch <- prometheus.MustNewConstMetric(cacheHitsDesc, prometheus.CounterValue, float64(st.Hits), id)
		ch <- prometheus.MustNewConstMetric(cacheMissesDesc, prometheus.CounterValue, float64(st.Misses), id)
		ch <- prometheus.MustNewConstMetric(cacheEvictDesc, prometheus.CounterValue, float64(st.Evictions), id)
		ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(st.Bytes), id)
		ch <- prometheus.MustNewConstMetric(cacheCapDesc, prometheus.GaugeValue, float64(st.CapacityBytes), id)
		ch <- prometheus.MustNewConstMetric(cacheAheadDesc, prometheus.CounterValue, float64(rc.aheadBlocks.Load()), id)
	}
}

// registerCacheMetrics adds a node's cache to the process's metrics; the
// returned func removes it.
func registerCacheMetrics(id string, rc *readCache) func() {
	cacheMetricsOnce.Do(func() { prometheus.MustRegister(cacheMetrics) })
	cacheMetrics.mu.Lock()
	cacheMetrics.caches[id] = rc
	cacheMetrics.mu.Unlock()
	return func() {
		cacheMetrics.mu.Lock()
		if cacheMetrics.caches[id] == rc {
			delete(cacheMetrics.caches, id)
		}
		cacheMetrics.mu.Unlock()
	}
}
