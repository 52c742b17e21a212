package nvmetcp

import (
	"context"
	"sync"
)

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
