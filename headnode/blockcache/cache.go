package blockcache

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
)

// BlockSize is the size of a cached block in bytes.
const BlockSize = 4096

const (
	// maxShards bounds the shards; a fill registers in up to all of them.
	maxShards = 64
	// minShardSlots keeps a shard's small queue long enough (10%) to
	// hold a block until its second access.
	minShardSlots = 128
	// loopMin is the range length always invalidated block by block.
	loopMin = 64
)

// key names a block. It holds no pointers, so neither do the maps keyed
// by it.
type key struct{ vol, block uint64 }

// hash mixes both words (murmur3's finalizer) so that the blocks of a
// sequential range spread over the shards.
func (k key) hash() uint64 {
	h := k.vol*0x9e3779b97f4a7c15 ^ k.block
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// Cache is a read cache of 4 KiB blocks keyed by volume and block number.
// The zero value and a Cache from New(0) hold nothing.
type Cache struct {
	shards   []shard
	shift    uint   // shard index = hash >> shift
	loopMax  uint64 // longest range invalidated block by block
	capacity int64
}

// Stats are counters since New and the bytes held now.
type Stats struct {
	Hits   uint64 // Gets that found the block
	Misses uint64 // Gets that did not
	// Inserts counts new entries (by Put or Fill.Put); a Put that
	// replaces an entry's data is not one.
	Inserts uint64
	// Evictions counts entries dropped to make room.
	Evictions uint64
	// Invalidations counts entries dropped by Invalidate,
	// InvalidateRange and DropVolume.
	Invalidations uint64
	Bytes         int64 // held now
	CapacityBytes int64
}

// New returns a cache of capacityBytes rounded down to whole blocks; 0
// or less gives a cache that holds nothing.
func New(capacityBytes int64) *Cache {
	// Slot numbers are int32: at most 2^31-1 slots (8 TiB) per shard.
	slots := min(max(capacityBytes, 0)/BlockSize, maxShards*math.MaxInt32)
	if slots == 0 {
		return &Cache{}
	}
	n := int64(1)
	for n*2 <= maxShards && slots/(n*2) >= minShardSlots {
		n *= 2
	}
	c := &Cache{
		shards:   make([]shard, n),
		loopMax:  uint64(max(loopMin, slots/16)),
		capacity: slots * BlockSize,
	}
	c.shift = uint(64 - bits.TrailingZeros64(uint64(n)))
	ents := make([]entry, slots)
	var off int64
	for i := range c.shards {
		k := slots / n
		if int64(i) < slots%n {
			k++
		}
		c.shards[i].init(ents[off : off+k : off+k])
		off += k
	}
	return c
}

func (c *Cache) shardIndex(k key) int { return int(k.hash() >> c.shift) }

func (c *Cache) shardOf(k key) *shard { return &c.shards[c.shardIndex(k)] }

// Get copies the block into dst and reports whether it was cached. dst
// must hold at least BlockSize bytes, or Get reports false.
func (c *Cache) Get(vol, block uint64, dst []byte) bool {
	if len(c.shards) == 0 || len(dst) < BlockSize {
		return false
	}
	k := key{vol, block}
	s := c.shardOf(k)
	s.mu.Lock()
	i, ok := s.index[k]
	if !ok {
		s.mu.Unlock()
		s.misses.Add(1)
		return false
	}
	copy(dst[:BlockSize], s.slot(i))
	s.touchLocked(i)
	s.mu.Unlock()
	s.hits.Add(1)
	return true
}

// Put stores a copy of the newest data of the block, replacing what the
// cache holds of it; data must be exactly BlockSize bytes, or Put does
// nothing. Fills that started before it do not install the block.
func (c *Cache) Put(vol, block uint64, data []byte) {
	if len(c.shards) == 0 || len(data) != BlockSize {
		return
	}
	k := key{vol, block}
	s := c.shardOf(k)
	s.mu.Lock()
	s.markFillsLocked(vol, block, block)
	i, ok := s.index[k]
	if ok {
		s.touchLocked(i)
	} else {
		i = s.insertLocked(k)
	}
	copy(s.slot(i), data)
	s.mu.Unlock()
}

// Invalidate drops the block, and keeps fills that started before it
// from installing it.
func (c *Cache) Invalidate(vol, block uint64) {
	if len(c.shards) == 0 {
		return
	}
	k := key{vol, block}
	s := c.shardOf(k)
	s.mu.Lock()
	s.markFillsLocked(vol, block, block)
	if i, ok := s.index[k]; ok {
		s.removeLocked(i)
		s.invalidations.Add(1)
	}
	s.mu.Unlock()
}

// InvalidateRange invalidates blocks first .. first+count-1 of the volume
// (up to the last block number). Its cost is bounded by the cache's size,
// not by count: a range longer than max(64, slots/16) blocks is dropped
// by scanning each shard's slots instead of looking up every block.
func (c *Cache) InvalidateRange(vol, first, count uint64) {
	if len(c.shards) == 0 || count == 0 {
		return
	}
	last := lastOf(first, count)
	if count <= c.loopMax {
		for b := first; ; b++ {
			c.Invalidate(vol, b)
			if b == last {
				return
			}
		}
	}
	c.dropRange(vol, first, last)
}

// DropVolume drops every block of the volume, scanning every slot.
func (c *Cache) DropVolume(vol uint64) {
	if len(c.shards) == 0 {
		return
	}
	c.dropRange(vol, 0, math.MaxUint64)
}

// dropRange invalidates blocks first..last of vol shard by shard, each
// under its lock.
func (c *Cache) dropRange(vol, first, last uint64) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.markFillsLocked(vol, first, last)
		for j := range s.ents {
			e := &s.ents[j]
			if e.where != inFree && e.key.vol == vol && e.key.block >= first && e.key.block <= last {
				s.removeLocked(int32(j))
				s.invalidations.Add(1)
			}
		}
		s.mu.Unlock()
	}
}

// CapacityBytes is the most the cache holds (its size rounded down to
// whole blocks).
func (c *Cache) CapacityBytes() int64 { return c.capacity }

// Stats returns the counters, each read atomically (not all at one
// instant).
func (c *Cache) Stats() Stats {
	st := Stats{CapacityBytes: c.capacity}
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		st.Inserts += s.inserts.Load()
		st.Evictions += s.evictions.Load()
		st.Invalidations += s.invalidations.Load()
		st.Bytes += s.used.Load() * BlockSize
	}
	return st
}

// lastOf is first+count-1 (count > 0), capped at the last block number.
func lastOf(first, count uint64) uint64 {
	if count-1 > math.MaxUint64-first {
		return math.MaxUint64
	}
	return first + count - 1
}

// shard is one lock's worth of the cache: its own slots, index and
// S3-FIFO queues (s3fifo.go), and the fills that may install in it.
type shard struct {
	mu    sync.Mutex
	index map[key]int32 // key -> slot
	ents  []entry       // per slot
	// data is len(ents) * BlockSize, allocated at the first insert: a
	// cache sized for a busy primary costs nothing on a node that is
	// primary of nothing (a test's many nodes, a demo's head nodes).
	data  []byte
	free  []int32 // unused slots; capacity len(ents), never grows
	small queue
	main  queue
	// smallTarget is the small queue's share (10% of the slots): above
	// it eviction takes from small, below it from main.
	smallTarget int32
	ghost       ghost
	// fills are the active fills that cover blocks of this shard; short
	// (about the reads in flight), scanned by every write.
	fills []*Fill

	// Updated under mu, read by Stats without it.
	hits, misses, inserts, evictions, invalidations atomic.Uint64
	used                                            atomic.Int64 // entries held

	_ [64]byte // keep neighbouring shards' locks off one cache line
}

func (s *shard) init(ents []entry) {
	n := int32(len(ents))
	s.ents = ents
	s.index = make(map[key]int32, n)
	s.free = make([]int32, n)
	for i := range n {
		s.free[i] = n - 1 - i // hand out slot 0 first
	}
	s.small = queue{head: -1, tail: -1}
	s.main = queue{head: -1, tail: -1}
	s.smallTarget = max(1, n/10)
	s.ghost.init(int(n - s.smallTarget))
	s.fills = make([]*Fill, 0, 8)
}

func (s *shard) slot(i int32) []byte {
	off := int(i) * BlockSize
	return s.data[off : off+BlockSize : off+BlockSize]
}
