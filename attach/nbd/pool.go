package nbd

import (
	"context"
	"sync"
)

// budget bounds one connection's requests in flight, by count and by
// payload bytes, from the moment a request is read until its reply is
// written. Only the connection's reader acquires; any goroutine releases.
type budget struct {
	mu       sync.Mutex
	count    int
	bytes    int
	maxCount int
	maxBytes int
	wake     chan struct{} // capacity 1: a release since the last wait
}

func newBudget(maxCount, maxBytes int) *budget {
	return &budget{maxCount: maxCount, maxBytes: maxBytes, wake: make(chan struct{}, 1)}
}

// acquire waits until one more request of n payload bytes fits. A request
// larger than the whole byte budget is let through alone.
func (b *budget) acquire(ctx context.Context, n int) error {
	for {
		b.mu.Lock()
		if b.count < b.maxCount && (b.bytes+n <= b.maxBytes || b.bytes == 0) {
			b.count++
			b.bytes += n
			b.mu.Unlock()
			return nil
		}
		b.mu.Unlock()
		select {
		case <-b.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int) {
	b.mu.Lock()
	b.count--
	b.bytes -= n
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}
