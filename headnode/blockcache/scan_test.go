package blockcache

import (
	"container/list"
	"testing"
)

// lru is a plain LRU of block keys, the comparison for TestScanResistance.
type lru struct {
	cap   int
	order *list.List // front: most recent
	at    map[key]*list.Element
}

func (l *lru) access(k key) bool {
	if e, ok := l.at[k]; ok {
		l.order.MoveToFront(e)
		return true
	}
	if l.order.Len() == l.cap {
		delete(l.at, l.order.Remove(l.order.Back()).(key))
	}
	l.at[k] = l.order.PushFront(k)
	return false
}

// TestScanResistance: a hot set of a quarter of the cache, read twice,
// then re-read between passes of a sequential scan of a volume four
// times the cache's size. The cache keeps the hot set through every
// pass; an LRU of the same size loses all of it to each pass.
func TestScanResistance(t *testing.T) {
	const (
		slots  = 1024 // 8 shards
		hot    = slots / 4
		scan   = 4 * slots
		passes = 5
	)
	c := New(slots * BlockSize)
	l := &lru{cap: slots, order: list.New(), at: map[key]*list.Element{}}
	buf := make([]byte, BlockSize)
	data := make([]byte, BlockSize)
	// read reads through both caches; a miss fills as a reader would.
	read := func(vol, b uint64) (cacheHit, lruHit bool) {
		lruHit = l.access(key{vol, b})
		if c.Get(vol, b, buf) {
			return true, lruHit
		}
		f := c.StartFill(vol, b, 1)
		fillBlock(data, vol, b, 0)
		f.Put(b, data)
		f.Done()
		return false, lruHit
	}
	for range 2 {
		for b := range uint64(hot) {
			read(1, b*3)
		}
	}
	var cacheHits, lruHits int
	for range passes {
		for b := range uint64(scan) {
			read(2, b)
		}
		for b := range uint64(hot) {
			ch, lh := read(1, b*3)
			if ch {
				cacheHits++
			}
			if lh {
				lruHits++
			}
		}
	}
	cacheRatio := float64(cacheHits) / (passes * hot)
	lruRatio := float64(lruHits) / (passes * hot)
	t.Logf("hot set hit ratio after scans: S3-FIFO %.3f, LRU %.3f", cacheRatio, lruRatio)
	if cacheRatio < 0.9 {
		t.Errorf("S3-FIFO kept %.3f of the hot set, want at least 0.9", cacheRatio)
	}
	if lruRatio > 0.1 {
		t.Errorf("the LRU kept %.3f of the hot set: the scan is too short to show anything", lruRatio)
	}
	checkInvariants(t, c)
}
