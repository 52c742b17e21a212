package driver

import (
	"sync"
	"time"

	"github.com/ballast-storage/ballast/txn"
)

// Clock is a hybrid logical clock: the wall clock in nanoseconds, never
// going back and never giving the same reading twice. txn takes every
// time from it; clocks only decide when things happen there, never what
// is decided, so clocks of different nodes need not agree.
type Clock struct {
	mu   sync.Mutex
	last txn.Timestamp
	wall func() time.Time
}

// NewClock returns a clock over wall, or over time.Now if wall is nil.
func NewClock(wall func() time.Time) *Clock {
	if wall == nil {
		wall = time.Now
	}
	return &Clock{wall: wall}
}

// Now returns a reading later than every earlier one.
func (c *Clock) Now() txn.Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := txn.Timestamp(max(c.wall().UnixNano(), 0))
	if now <= c.last {
		now = c.last + 1
	}
	c.last = now
	return now
}
