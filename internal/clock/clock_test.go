package clock

import (
	"testing"
	"time"
)

// TestBootAdvances: the boot clock reads a positive time that does not go
// backwards and keeps pace with the runtime's clock while awake.
func TestBootAdvances(t *testing.T) {
	c := Boot()
	a := c.Now()
	wall := time.Now()
	time.Sleep(20 * time.Millisecond)
	b := c.Now()
	slept := time.Since(wall)
	if a.IsZero() || !a.Before(b) {
		t.Fatalf("boot clock read %v then %v", a, b)
	}
	// Awake, CLOCK_BOOTTIME and CLOCK_MONOTONIC move together.
	if d := b.Sub(a); d < 20*time.Millisecond || d > slept+50*time.Millisecond {
		t.Fatalf("boot clock moved %v across a sleep of %v", d, slept)
	}
}

func TestManual(t *testing.T) {
	m := NewManual(time.Hour)
	a := m.Now()
	m.Advance(-time.Second)
	if m.Now() != a {
		t.Fatal("a manual clock went backwards")
	}
	m.Advance(10 * time.Second)
	if got := m.Now().Sub(a); got != 10*time.Second {
		t.Fatalf("advanced %v, want 10s", got)
	}
	if !a.Before(m.Now()) || !m.Now().After(a) || a.IsZero() || !(Instant{}).IsZero() {
		t.Fatal("instant comparisons are wrong")
	}
}

// BenchmarkBoot: a lease check reads this clock on every read and every
// batch; clock_gettime(CLOCK_BOOTTIME) is a system call, not a vDSO read.
func BenchmarkBoot(b *testing.B) {
	c := Boot()
	for b.Loop() {
		c.Now()
	}
}
