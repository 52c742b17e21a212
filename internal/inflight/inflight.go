package inflight

import (
	"context"
	"sync"
)

// Limit bounds requests and bytes in flight. The zero value is not usable;
// call New. It is safe for concurrent use.
type Limit struct {
	maxCount int64
	maxBytes int64

	mu        sync.Mutex
	count     int64
	bytes     int64
	peakCount int64
	peakBytes int64
	waits     uint64
	wake      chan struct{} // closed and replaced on every release
}

// New returns a Limit of maxCount requests and maxBytes bytes; 0 leaves
// that dimension unbounded.
func New(maxCount int, maxBytes int64) *Limit {
	return &Limit{maxCount: int64(maxCount), maxBytes: maxBytes, wake: make(chan struct{})}
}

// Stats is a snapshot of a Limit's counters.
type Stats struct {
	Count, Bytes         int64  // in flight now
	PeakCount, PeakBytes int64  // the most ever in flight at once
	Waits                uint64 // acquisitions that had to wait
	MaxCount, MaxBytes   int64  // the bounds (0: unbounded)
}

// Acquire waits until one more request of n bytes fits, then counts it.
// A request larger than the whole byte bound is admitted alone, when
// nothing else is in flight, so that it cannot wait forever; callers that
// must not allow that check n against MaxBytes first. It returns ctx's
// error if ctx ends first, and then counts nothing.
func (l *Limit) Acquire(ctx context.Context, n int64) error {
	waited := false
	for {
		l.mu.Lock()
		if l.fitsLocked(n) {
			l.count++
			l.bytes += n
			l.peakCount = max(l.peakCount, l.count)
			l.peakBytes = max(l.peakBytes, l.bytes)
			if waited {
				l.waits++
			}
			l.mu.Unlock()
			return nil
		}
		wake := l.wake
		l.mu.Unlock()
		waited = true
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *Limit) fitsLocked(n int64) bool {
	if l.maxCount > 0 && l.count >= l.maxCount {
		return false
	}
	return l.maxBytes <= 0 || l.bytes+n <= l.maxBytes || l.count == 0
}

// Release returns one request of n bytes admitted by Acquire.
func (l *Limit) Release(n int64) {
	l.mu.Lock()
	l.count--
	l.bytes -= n
	if l.count < 0 || l.bytes < 0 {
		l.mu.Unlock()
		panic("inflight: Release without Acquire")
	}
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
}

// Stats returns the counters.
func (l *Limit) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{
		Count: l.count, Bytes: l.bytes,
		PeakCount: l.peakCount, PeakBytes: l.peakBytes,
		Waits:    l.waits,
		MaxCount: l.maxCount, MaxBytes: l.maxBytes,
	}
}
