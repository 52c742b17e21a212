package clock

import (
	"sync"
	"time"
)

// Instant is a reading of a Clock: the time since some fixed point of that
// clock (for Boot, the machine's boot). Instants of different clocks must
// not be compared. The zero Instant is earlier than every reading.
type Instant struct{ ns int64 }

// Add returns the instant d after t.
func (t Instant) Add(d time.Duration) Instant { return Instant{t.ns + int64(d)} }

// Sub returns the duration t-u.
func (t Instant) Sub(u Instant) time.Duration { return time.Duration(t.ns - u.ns) }

// Before says whether t is earlier than u.
func (t Instant) Before(u Instant) bool { return t.ns < u.ns }

// After says whether t is later than u.
func (t Instant) After(u Instant) bool { return t.ns > u.ns }

// IsZero says whether t is the zero Instant.
func (t Instant) IsZero() bool { return t.ns == 0 }

// String shows the instant as a duration since the clock's fixed point.
func (t Instant) String() string { return time.Duration(t.ns).String() }

// Clock tells the time for lease arithmetic.
type Clock interface {
	// Now returns the current instant; it never goes backwards.
	Now() Instant
}

// Manual is a clock that moves only when told to, for tests. Advancing it
// without any real time passing is what a suspend looks like to code that
// reads CLOCK_BOOTTIME while the monotonic clock stood still.
type Manual struct {
	mu  sync.Mutex
	now Instant
}

// NewManual returns a manual clock reading start.
func NewManual(start time.Duration) *Manual { return &Manual{now: Instant{}.Add(start)} }

// Now implements Clock.
func (m *Manual) Now() Instant {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Advance moves the clock forward by d (a negative d is ignored: clocks
// never go backwards).
func (m *Manual) Advance(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d > 0 {
		m.now = m.now.Add(d)
	}
}
