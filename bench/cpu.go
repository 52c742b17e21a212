package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 on every architecture Go supports (sysconf's
// _SC_CLK_TCK reports the same constant).
const userHZ = 100

// ErrNoProcess is returned when a process to account for has exited.
var ErrNoProcess = errors.New("bench: process not found")

// cpuSeconds returns the user plus system CPU time a process (all its
// threads) has used, from /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: pid %d", ErrNoProcess, pid)
	}
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	ticks, err := parseProcStat(b)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	return float64(ticks) / userHZ, nil
}

// parseProcStat returns utime+stime (fields 14 and 15, in clock ticks) of
// a /proc/<pid>/stat line. The command name (field 2) is in parentheses
// and may itself hold spaces and parentheses, so fields are counted after
// the last ')'.
func parseProcStat(b []byte) (uint64, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", truncate(string(b), 80))
	}
	// After ")": field 3 (state) is the first.
	fields := bytes.Fields(b[end+1:])
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("/proc stat line has %d fields after the name, want more than %d", len(fields), stime)
	}
	u, err := strconv.ParseUint(string(fields[utime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	s, err := strconv.ParseUint(string(fields[stime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return u + s, nil
}

// cpuMeter measures the CPU a set of processes spends over an interval.
// A process that exits (a fault killed it) or appears (it was restarted)
// in the interval counts from what can be seen: the harness reads the
// processes of a target before and after, by PID.
type cpuMeter struct {
	pids  func() []int
	start map[int]float64
}

func newCPUMeter(pids func() []int) *cpuMeter {
	m := &cpuMeter{pids: pids}
	m.start = m.sample()
	return m
}

func (m *cpuMeter) sample() map[int]float64 {
	out := map[int]float64{}
	if m.pids == nil {
		return out
	}
	for _, pid := range m.pids() {
		if s, err := cpuSeconds(pid); err == nil {
			out[pid] = s
		}
	}
	return out
}

// restart begins the interval again.
func (m *cpuMeter) restart() { m.start = m.sample() }

// elapsed returns the CPU seconds spent since the interval began, or
// false when the target has no processes to measure.
func (m *cpuMeter) elapsed() (float64, bool) {
	if m.pids == nil || len(m.pids()) == 0 {
		return 0, false
	}
	total := 0.0
	for pid, s := range m.sample() {
		total += s - m.start[pid] // a new process counts from 0
	}
	return max(total, 0), true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
