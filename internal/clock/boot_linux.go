package clock

import "golang.org/x/sys/unix"

// Boot returns the clock of CLOCK_BOOTTIME: the time since the machine
// booted, suspensions included.
func Boot() Clock { return bootClock{} }

type bootClock struct{}

// Now implements Clock. CLOCK_BOOTTIME has been in Linux since 2.6.39 and
// clock_gettime cannot fail for a valid clock and address, so an error
// here means the process cannot tell time at all: that is a broken
// invariant, not an input to handle.
func (bootClock) Now() Instant {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("clock: clock_gettime(CLOCK_BOOTTIME): " + err.Error())
	}
	return Instant{ts.Nano()}
}
