package bench

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	for _, c := range []struct {
		name, line string
		want       uint64
	}{
		{"plain", "4242 (qemu-nbd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 5 0 12345 1000000 300 18446744073709551615", 325},
		// The name may hold spaces and parentheses; fields count from the last ')'.
		{"odd name", "17 (my (odd) proc) R 1 17 17 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 99 0 0", 10},
	} {
		got, err := parseProcStat([]byte(c.line))
		if err != nil || got != c.want {
			t.Errorf("%s: parseProcStat = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "12 no parens S 1", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 3"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) accepted a malformed line", bad)
		}
	}
}

func TestCPUSecondsOfThisProcess(t *testing.T) {
	m := newCPUMeter(func() []int { return []int{os.Getpid()} })
	// Burn a little CPU; the meter counts in 10 ms ticks.
	deadline := time.Now().Add(150 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	got, ok := m.elapsed()
	if !ok || got <= 0 || got > 10 {
		t.Errorf("CPU seconds after busy-looping 150 ms = %v, %v", got, ok)
	}
	if _, err := cpuSeconds(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Errorf("cpuSeconds of a process that does not exist: %v, want ErrNoProcess", err)
	}
	// A target without processes has no CPU figure.
	if _, ok := newCPUMeter(nil).elapsed(); ok {
		t.Error("a meter without processes reported CPU")
	}
}
