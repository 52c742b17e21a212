//go:build !linux

package clock

import "time"

// Boot returns, where there is no CLOCK_BOOTTIME, the runtime's monotonic
// clock: leases are then not protected against suspension. Ballast runs
// on Linux; this keeps the module building elsewhere for development.
func Boot() Clock { return monoClock{} }

type monoClock struct{}

var start = time.Now()

// Now implements Clock. The offset keeps the first reading non-zero.
func (monoClock) Now() Instant { return Instant{int64(time.Since(start)) + 1} }
