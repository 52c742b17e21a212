// Package clock reads the time that leases are measured in.
//
// Go's monotonic clock (the reading time.Now carries) is CLOCK_MONOTONIC on
// Linux, which stops while the machine is suspended. A primary whose lease
// is timed on it would, after a suspend longer than the lease, still count
// the lease as held while the rest of the rack, whose clocks ran on, has
// promoted another replica. Boot() reads CLOCK_BOOTTIME, which counts the
// time suspended, so a lease runs out across a suspend as it would across
// any other pause.
//
// Only lease arithmetic needs this clock; logs, metrics and timeouts keep
// using package time. Instants of this clock are their own type, so they
// cannot be compared with a time.Time by mistake, and Manual lets tests
// move the clock as a suspend would.
//
// It is a leaf: it imports nothing of the module.
package clock
