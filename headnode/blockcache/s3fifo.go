package blockcache

// A shard's S3-FIFO: the small and main queues are intrusive doubly
// linked lists over slot numbers (so an invalidation unlinks an entry in
// O(1)), and the ghost is a ring of keys with a map for membership.

const maxFreq = 3 // 2-bit counter

// Where an entry is.
const (
	inFree uint8 = iota
	inSmall
	inMain
)

// entry is a slot's metadata; it holds no pointers.
type entry struct {
	key        key
	prev, next int32 // toward the queue's head (newer) and tail (older); -1 at the ends
	freq       uint8 // hits since insertion or since the last pass of main's tail, capped at maxFreq
	where      uint8
}

// queue is a FIFO of slots: insertion at head, eviction at tail.
type queue struct{ head, tail, n int32 }

func (s *shard) queueOf(where uint8) *queue {
	if where == inSmall {
		return &s.small
	}
	return &s.main
}

func (s *shard) pushLocked(where uint8, i int32) {
	q := s.queueOf(where)
	e := &s.ents[i]
	e.where, e.prev, e.next = where, -1, q.head
	if q.head >= 0 {
		s.ents[q.head].prev = i
	} else {
		q.tail = i
	}
	q.head = i
	q.n++
}

func (s *shard) unlinkLocked(i int32) {
	e := &s.ents[i]
	q := s.queueOf(e.where)
	if e.prev >= 0 {
		s.ents[e.prev].next = e.next
	} else {
		q.head = e.next
	}
	if e.next >= 0 {
		s.ents[e.next].prev = e.prev
	} else {
		q.tail = e.prev
	}
	e.where = inFree
	q.n--
}

// touchLocked counts an access; only the counter changes, so a hit moves
// nothing (the FIFOs' advantage over LRU's list surgery on every hit).
func (s *shard) touchLocked(i int32) {
	if e := &s.ents[i]; e.freq < maxFreq {
		e.freq++
	}
}

// insertLocked gives k a slot, evicting if none is free, and returns it.
// A key the ghost remembers goes straight to main.
func (s *shard) insertLocked(k key) int32 {
	if s.data == nil {
		s.data = make([]byte, len(s.ents)*BlockSize)
	}
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		i = s.evictLocked()
	}
	s.ents[i].key, s.ents[i].freq = k, 0
	if s.ghost.take(k) {
		s.pushLocked(inMain, i)
	} else {
		s.pushLocked(inSmall, i)
	}
	s.index[k] = i
	s.used.Add(1)
	s.inserts.Add(1)
	return i
}

// evictLocked frees one slot of a full shard and returns it. Each pass
// of the loop frees a slot, moves an entry from small to main, or
// decrements a counter in main, so it ends within maxFreq+2 passes per
// entry.
func (s *shard) evictLocked() int32 {
	for {
		if s.small.n > 0 && (s.small.n >= s.smallTarget || s.main.n == 0) {
			i := s.small.tail
			s.unlinkLocked(i)
			e := &s.ents[i]
			if e.freq > 0 {
				// Hit while in small: keep it, with its counter cleared.
				e.freq = 0
				s.pushLocked(inMain, i)
				continue
			}
			s.ghost.add(e.key)
			s.evictedLocked(i)
			return i
		}
		i := s.main.tail
		s.unlinkLocked(i)
		e := &s.ents[i]
		if e.freq > 0 {
			e.freq--
			s.pushLocked(inMain, i)
			continue
		}
		s.evictedLocked(i)
		return i
	}
}

func (s *shard) evictedLocked(i int32) {
	delete(s.index, s.ents[i].key)
	s.used.Add(-1)
	s.evictions.Add(1)
}

// removeLocked drops an entry and frees its slot.
func (s *shard) removeLocked(i int32) {
	s.unlinkLocked(i)
	delete(s.index, s.ents[i].key)
	s.free = append(s.free, i) // within capacity: no allocation
	s.used.Add(-1)
}

// ghost remembers the last keys evicted from the small queue, as many as
// the main queue holds blocks. seq maps a key to the number of its add,
// so that overwriting its place in the ring forgets it unless it was
// added again since.
type ghost struct {
	ring []key
	seq  map[key]uint64
	n    uint64 // adds so far
}

func (g *ghost) init(size int) {
	g.ring = make([]key, size)
	g.seq = make(map[key]uint64, size)
}

func (g *ghost) add(k key) {
	size := uint64(len(g.ring))
	if size == 0 {
		return
	}
	pos := g.n % size
	if g.n >= size {
		old := g.ring[pos]
		if n, ok := g.seq[old]; ok && n == g.n-size {
			delete(g.seq, old)
		}
	}
	g.ring[pos] = k
	g.seq[k] = g.n
	g.n++
}

// take reports whether k is remembered, and forgets it.
func (g *ghost) take(k key) bool {
	if _, ok := g.seq[k]; !ok {
		return false
	}
	delete(g.seq, k)
	return true
}
