package bufpool

import (
	"math/bits"
	"sync"
)

// Size classes run from 4 KiB to 64 MiB, beyond any transfer the servers
// accept; a larger buffer is allocated and not recycled.
const (
	minShift = 12
	maxShift = 26
)

var pools [maxShift - minShift + 1]sync.Pool

// Get returns a buffer of at least n bytes (n > 0); its length is its
// capacity, a power of two.
func Get(n int) *[]byte {
	shift := max(bits.Len(uint(n-1)), minShift)
	if shift > maxShift {
		b := make([]byte, n)
		return &b
	}
	if p, ok := pools[shift-minShift].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<shift)
	return &b
}

// Put recycles a buffer from Get; nil and buffers of other sizes are
// ignored.
func Put(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	if c == 0 {
		return
	}
	shift := bits.Len(uint(c)) - 1
	if c != 1<<shift || shift < minShift || shift > maxShift {
		return
	}
	*p = (*p)[:c]
	pools[shift-minShift].Put(p)
}
