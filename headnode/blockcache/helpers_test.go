package blockcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// blockData is version ver of a block: its identity in the first 24
// bytes and a pattern derived from it after, so that a torn or misplaced
// copy shows.
func blockData(vol, block, ver uint64) []byte {
	b := make([]byte, BlockSize)
	fillBlock(b, vol, block, ver)
	return b
}

func fillBlock(b []byte, vol, block, ver uint64) {
	binary.LittleEndian.PutUint64(b[0:], vol)
	binary.LittleEndian.PutUint64(b[8:], block)
	binary.LittleEndian.PutUint64(b[16:], ver)
	copy(b[24:BlockSize], pattern(vol, block, ver))
}

// ramp[i] is byte(i); a block's pattern is a window of it (one copy, not
// a loop, which the race detector would check byte by byte).
var ramp = func() []byte {
	r := make([]byte, 2*BlockSize)
	for i := range r {
		r[i] = byte(i)
	}
	return r
}()

func pattern(vol, block, ver uint64) []byte {
	x := int(byte(key{vol, block ^ ver<<20}.hash()))
	return ramp[x+24 : x+BlockSize]
}

// versionOf checks that b is a whole version of vol/block and returns it.
func versionOf(b []byte, vol, block uint64) (uint64, error) {
	ver := binary.LittleEndian.Uint64(b[16:])
	if binary.LittleEndian.Uint64(b[0:]) != vol || binary.LittleEndian.Uint64(b[8:]) != block ||
		!bytes.Equal(b[24:BlockSize], pattern(vol, block, ver)) {
		return 0, fmt.Errorf("block %d/%d: not a whole version (header %x)", vol, block, b[:24])
	}
	return ver, nil
}

// wantBlock fails unless the cache holds version ver of the block.
func wantBlock(t *testing.T, c *Cache, vol, block, ver uint64) {
	t.Helper()
	buf := make([]byte, BlockSize)
	if !c.Get(vol, block, buf) {
		t.Fatalf("block %d/%d: miss, want version %d", vol, block, ver)
	}
	if !bytes.Equal(buf, blockData(vol, block, ver)) {
		got, err := versionOf(buf, vol, block)
		t.Fatalf("block %d/%d: version %d (%v), want %d", vol, block, got, err, ver)
	}
}

// wantAbsent fails if the cache holds the block.
func wantAbsent(t *testing.T, c *Cache, vol, block uint64) {
	t.Helper()
	if c.Get(vol, block, make([]byte, BlockSize)) {
		t.Fatalf("block %d/%d: hit, want absent", vol, block)
	}
}

// checkInvariants walks every shard: queues linked both ways with the
// right counts, index and slots in agreement, every key in its shard,
// free slots unused, bytes within capacity.
func checkInvariants(t *testing.T, c *Cache) {
	t.Helper()
	var held int64
	for si := range c.shards {
		s := &c.shards[si]
		s.mu.Lock()
		for _, q := range []struct {
			q     *queue
			where uint8
		}{{&s.small, inSmall}, {&s.main, inMain}} {
			n, prev := int32(0), int32(-1)
			for i := q.q.head; i >= 0; i = s.ents[i].next {
				e := s.ents[i]
				switch {
				case e.where != q.where:
					t.Fatalf("shard %d slot %d: where %d in queue %d", si, i, e.where, q.where)
				case e.prev != prev:
					t.Fatalf("shard %d slot %d: prev %d, want %d", si, i, e.prev, prev)
				case s.index[e.key] != i:
					t.Fatalf("shard %d slot %d: index has %d for %v", si, i, s.index[e.key], e.key)
				case c.shardIndex(e.key) != si:
					t.Fatalf("shard %d slot %d: key %v of shard %d", si, i, e.key, c.shardIndex(e.key))
				case e.freq > maxFreq:
					t.Fatalf("shard %d slot %d: freq %d", si, i, e.freq)
				}
				prev = i
				n++
				if n > int32(len(s.ents)) {
					t.Fatalf("shard %d: queue %d loops", si, q.where)
				}
			}
			if q.q.tail != prev || q.q.n != n {
				t.Fatalf("shard %d queue %d: tail %d n %d, walked to %d n %d", si, q.where, q.q.tail, q.q.n, prev, n)
			}
		}
		if int(s.small.n+s.main.n) != len(s.index) || len(s.free)+len(s.index) != len(s.ents) ||
			s.used.Load() != int64(len(s.index)) {
			t.Fatalf("shard %d: small %d main %d index %d free %d slots %d used %d",
				si, s.small.n, s.main.n, len(s.index), len(s.free), len(s.ents), s.used.Load())
		}
		for _, i := range s.free {
			if s.ents[i].where != inFree {
				t.Fatalf("shard %d: free slot %d is in queue %d", si, i, s.ents[i].where)
			}
		}
		if len(s.ghost.seq) > len(s.ghost.ring) {
			t.Fatalf("shard %d: ghost remembers %d keys in a ring of %d", si, len(s.ghost.seq), len(s.ghost.ring))
		}
		held += int64(len(s.index))
		s.mu.Unlock()
	}
	if st := c.Stats(); st.Bytes != held*BlockSize || st.Bytes > st.CapacityBytes {
		t.Fatalf("stats %+v, held %d blocks", st, held)
	}
}
