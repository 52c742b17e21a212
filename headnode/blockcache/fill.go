package blockcache

import (
	"math"
	"sync/atomic"
)

// MaxFillBlocks is the most blocks one fill covers; StartFill caps count
// at it.
const MaxFillBlocks = 4096

// Fill is a reader's registration for installing blocks it fetches
// after a miss (doc.go, contract 2). It is used by one goroutine;
// invalidations from others mark its blocks stale.
type Fill struct {
	c                *Cache
	vol, first, last uint64
	shards           uint64 // bit i: registered in shard i
	done             atomic.Bool
	// stale has bit b-first set once a write or invalidation touched
	// block b. A word's bits belong to blocks of different shards, so
	// they are set with atomic OR, each under its own shard's lock; a
	// bit is read under its block's shard lock.
	stale [MaxFillBlocks / 64]atomic.Uint64
}

// noFill is what a cache that holds nothing hands out: its methods do
// nothing.
var noFill = &Fill{}

// StartFill registers a fill of blocks first .. first+count-1 (count
// capped at MaxFillBlocks, and at the last block number). Call it before
// looking up where the blocks live, and Done when finished.
func (c *Cache) StartFill(vol, first, count uint64) *Fill {
	if len(c.shards) == 0 || count == 0 {
		return noFill
	}
	f := &Fill{c: c, vol: vol, first: first, last: lastOf(first, min(count, MaxFillBlocks))}
	if f.last-f.first+1 < uint64(len(c.shards)) {
		for b := first; ; b++ {
			f.shards |= 1 << c.shardIndex(key{vol, b})
			if b == f.last {
				break
			}
		}
	} else {
		f.shards = math.MaxUint64 >> (64 - len(c.shards))
	}
	for i := range c.shards {
		if f.shards&(1<<i) != 0 {
			s := &c.shards[i]
			s.mu.Lock()
			s.fills = append(s.fills, f)
			s.mu.Unlock()
		}
	}
	return f
}

// Put installs a copy of the block's data if the block is in the fill's
// range, the fill is not done, nothing touched the block since StartFill
// and the cache does not hold it already. data must be BlockSize bytes.
func (f *Fill) Put(block uint64, data []byte) {
	if f.c == nil || len(data) != BlockSize || block < f.first || block > f.last {
		return
	}
	k := key{f.vol, block}
	s := f.c.shardOf(k)
	s.mu.Lock()
	if !f.done.Load() && !f.staleBit(block-f.first) {
		if _, ok := s.index[k]; !ok {
			copy(s.slot(s.insertLocked(k)), data)
		}
	}
	s.mu.Unlock()
}

// Done unregisters the fill; later Puts do nothing. It is idempotent.
func (f *Fill) Done() {
	if f.c == nil || f.done.Swap(true) {
		return
	}
	for i := range f.c.shards {
		if f.shards&(1<<i) == 0 {
			continue
		}
		s := &f.c.shards[i]
		s.mu.Lock()
		for j, g := range s.fills {
			if g == f {
				last := len(s.fills) - 1
				s.fills[j] = s.fills[last]
				s.fills[last] = nil
				s.fills = s.fills[:last]
				break
			}
		}
		s.mu.Unlock()
	}
}

func (f *Fill) staleBit(off uint64) bool {
	return f.stale[off/64].Load()&(1<<(off%64)) != 0
}

// markFillsLocked marks blocks first..last of vol stale in the shard's
// active fills.
func (s *shard) markFillsLocked(vol, first, last uint64) {
	for _, f := range s.fills {
		if f.vol == vol {
			f.markStale(first, last)
		}
	}
}

// markStale marks the fill's blocks within first..last. It may mark
// blocks of other shards too: a needless refusal, never a stale install.
func (f *Fill) markStale(first, last uint64) {
	lo, hi := max(first, f.first), min(last, f.last)
	if lo > hi {
		return
	}
	lo, hi = lo-f.first, hi-f.first
	for w := lo / 64; w <= hi/64; w++ {
		m := uint64(math.MaxUint64)
		if w == lo/64 {
			m &= math.MaxUint64 << (lo % 64)
		}
		if w == hi/64 {
			m &= math.MaxUint64 >> (63 - hi%64)
		}
		f.stale[w].Or(m)
	}
}
