package nvmetcp

import (
	"context"
	"math/bits"
	"sync"
)

// Data buffers are recycled by power-of-two size class, from 4 KiB to
// 64 MiB (beyond any transfer the target allows).
const (
	minBufShift = 12
	maxBufShift = 26
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// getBuf returns a buffer of at least n bytes (n > 0).
func getBuf(n int) *[]byte {
	shift := max(bits.Len(uint(n-1)), minBufShift)
	if shift > maxBufShift {
		b := make([]byte, n)
		return &b
	}
	if p, ok := bufPools[shift-minBufShift].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<shift)
	return &b
}

// putBuf recycles a buffer from getBuf.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	shift := bits.Len(uint(c)) - 1
	if c != 1<<shift || shift < minBufShift || shift > maxBufShift {
		return
	}
	*p = (*p)[:c]
	bufPools[shift-minBufShift].Put(p)
}

// budget bounds the data bytes one connection holds in buffers for
// commands in flight. Any goroutine acquires and releases.
type budget struct {
	mu    sync.Mutex
	bytes int
	max   int
	wake  chan struct{} // closed and replaced on every release
}

func newBudget(max int) *budget {
	return &budget{max: max, wake: make(chan struct{})}
}

// acquire waits until n more bytes fit. A request larger than the whole
// budget is let through alone.
func (b *budget) acquire(ctx context.Context, n int) error {
	for {
		b.mu.Lock()
		if b.bytes+n <= b.max || b.bytes == 0 {
			b.bytes += n
			b.mu.Unlock()
			return nil
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.bytes -= n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
