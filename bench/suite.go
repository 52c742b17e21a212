package bench

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Suite names.
const (
	// SuiteQuick runs one of each kind of workload for a second or two
	// over a small region: for tests, well under a minute.
	SuiteQuick = "quick"
	// SuiteStandard is the suite `make bench` runs: under ten minutes on
	// two cores.
	SuiteStandard = "standard"
)

// Suite is a set of workloads and the sizes they run with.
type Suite struct {
	Name string
	// RegionBytes is the part of each export the workloads use; it is
	// filled before the workloads run, so reads hit data.
	RegionBytes uint64
	// Runtime is how long each workload measures, after Ramp (fio's
	// ramp_time, not counted).
	Runtime time.Duration
	Ramp    time.Duration
	// Workloads run in this order against each target.
	Workloads []Workload
}

// suites is the registry of suites. A new workload is added by listing it
// in the suites it belongs to; a goal about it goes in goals.go.
var suites = map[string]func() *Suite{
	SuiteQuick:    quickSuite,
	SuiteStandard: standardSuite,
}

// SuiteNames lists the suites.
func SuiteNames() []string {
	var names []string
	for n := range suites {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func suiteByName(name string) (*Suite, error) {
	f, ok := suites[name]
	if !ok {
		return nil, fmt.Errorf("suite %q: want one of %s", name, strings.Join(SuiteNames(), ", "))
	}
	return f(), nil
}

func (s *Suite) workloadNames() []string {
	var names []string
	for _, w := range s.Workloads {
		names = append(names, w.Name())
	}
	return names
}

// only keeps the named workloads (all when names is empty).
func (s *Suite) only(names []string) {
	if len(names) == 0 {
		return
	}
	s.Workloads = slices.DeleteFunc(s.Workloads, func(w Workload) bool { return !slices.Contains(names, w.Name()) })
}

// Describe lists a suite's workloads and the faults there are, one a line.
func Describe(suite string) (string, error) {
	s, err := suiteByName(suite)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "suite %s: region %s per target, %v per workload after a %v ramp\n",
		s.Name, humanBytes(s.RegionBytes), s.Runtime, s.Ramp)
	for _, w := range s.Workloads {
		fmt.Fprintf(&b, "  %-27s %s\n", w.Name(), w.Description())
	}
	b.WriteString("faults:\n")
	var names []string
	for n := range faults {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-27s %s\n", n, faults[n])
	}
	return b.String(), nil
}

// seq is a 1 MiB sequential fio workload ("read" or "write").
func seq(rw string) *FioWorkload {
	return &FioWorkload{
		ID:   fmt.Sprintf("1m-%s-qd8", rw),
		Desc: fmt.Sprintf("fio: 1 MiB sequential %ss, 8 in flight", rw),
		RW:   rw, BlockBytes: 1 << 20, IODepth: 8,
	}
}

// random4k is a 4 KiB random fio workload: "randread", "randwrite" or
// "randrw70" (70% reads).
func random4k(rw string, qd int) *FioWorkload {
	w := &FioWorkload{ID: fmt.Sprintf("4k-%s-qd%d", rw, qd), RW: rw, BlockBytes: 4096, IODepth: qd}
	what := map[string]string{"randwrite": "random writes", "randread": "random reads", "randrw70": "random 70% reads, 30% writes"}[rw]
	w.Desc = fmt.Sprintf("fio: 4 KiB %s, %d in flight", what, qd)
	if rw == "randrw70" {
		w.RW, w.ReadPercent = "randrw", 70
	}
	return w
}

// multiConn is 4 KiB random 70/30 over several NBD connections at once.
func multiConn(conns, qd int) *FioWorkload {
	return &FioWorkload{
		ID:   fmt.Sprintf("4k-randrw70-%dconn-qd%d", conns, qd),
		Desc: fmt.Sprintf("fio: 4 KiB random 70/30 over %d NBD connections, %d in flight on each", conns, qd),
		RW:   "randrw", ReadPercent: 70, BlockBytes: 4096, IODepth: qd, NumJobs: conns,
	}
}

func standardSuite() *Suite {
	s := &Suite{Name: SuiteStandard, RegionBytes: 1 << 30, Runtime: 10 * time.Second, Ramp: 2 * time.Second}
	s.Workloads = []Workload{
		seq("write"), seq("read"),
		random4k("randwrite", 1), random4k("randwrite", 32),
		random4k("randread", 1), random4k("randread", 32),
		random4k("randrw70", 1), random4k("randrw70", 32),
		multiConn(4, 8),
		&LoadWorkload{
			ID:         "open-4k-randrw70-1000iops",
			Desc:       "Go load generator: open loop, 1000 requests/s of 4 KiB random 70/30; latency from the intended send time",
			BlockBytes: 4096, ReadPercent: 70, RateIOPS: 1000,
		},
		&LoadWorkload{
			ID:         "volumes8-4k-randwrite-qd4",
			Desc:       "Go load generator: 8 new volumes at once, 4 KiB random writes, 4 in flight on each (Ballast only)",
			BlockBytes: 4096, QueueDepth: 4, Volumes: 8, VolumeBytes: 256 << 20,
		},
		&LoadWorkload{
			ID:         "timeline-4k-randrw70-qd8",
			Desc:       "Go load generator: IOPS over time, 4 KiB random 70/30, 8 in flight; the target is paused for 1 s at 5 s",
			BlockBytes: 4096, ReadPercent: 70, QueueDepth: 8,
			Duration: 15 * time.Second, TimelineInterval: 250 * time.Millisecond,
			Faults: []FaultAt{{At: 5 * time.Second, Fault: PauseFault{Duration: time.Second}}},
		},
		&LoadWorkload{
			ID:         "timeline-restart-headnode",
			Desc:       "Go load generator: IOPS over time, 4 KiB random 70/30, 8 in flight; a head node holding no replica is killed at 5 s and restarted 2 s later (rack of processes only)",
			BlockBytes: 4096, ReadPercent: 70, QueueDepth: 8,
			Duration: 15 * time.Second, TimelineInterval: 250 * time.Millisecond,
			Faults:        []FaultAt{{At: 5 * time.Second, Fault: RestartHeadNodeFault{Down: 2 * time.Second}}},
			RequireFaults: true,
		},
		&LoadWorkload{
			ID:         "timeline-kill-sled",
			Desc:       "Go load generator: IOPS over time, 4 KiB random 70/30, 8 in flight; a sled is killed at 5 s (reads go degraded, its shards are rebuilt after 3 s) and restarted 8 s later (rack of processes only)",
			BlockBytes: 4096, ReadPercent: 70, QueueDepth: 8,
			Duration: 20 * time.Second, TimelineInterval: 250 * time.Millisecond,
			Faults:        []FaultAt{{At: 5 * time.Second, Fault: KillSledFault{Down: 8 * time.Second}}},
			RequireFaults: true,
		},
	}
	return s
}

func quickSuite() *Suite {
	s := &Suite{Name: SuiteQuick, RegionBytes: 32 << 20, Runtime: time.Second}
	s.Workloads = []Workload{
		seq("write"), random4k("randwrite", 32), random4k("randread", 32), multiConn(2, 4),
		&LoadWorkload{
			ID:         "open-4k-randrw70-200iops",
			Desc:       "Go load generator: open loop, 200 requests/s of 4 KiB random 70/30; latency from the intended send time",
			BlockBytes: 4096, ReadPercent: 70, RateIOPS: 200, MaxInFlight: 32,
		},
		&LoadWorkload{
			ID:         "volumes2-4k-randwrite-qd2",
			Desc:       "Go load generator: 2 new volumes at once, 4 KiB random writes, 2 in flight on each (Ballast only)",
			BlockBytes: 4096, QueueDepth: 2, Volumes: 2, VolumeBytes: 32 << 20,
		},
		&LoadWorkload{
			ID:         "timeline-4k-randrw70-qd4",
			Desc:       "Go load generator: IOPS over time, 4 KiB random 70/30, 4 in flight; the target is paused for 0.3 s at 0.5 s",
			BlockBytes: 4096, ReadPercent: 70, QueueDepth: 4,
			Duration: 1500 * time.Millisecond, TimelineInterval: 100 * time.Millisecond,
			Faults: []FaultAt{{At: 500 * time.Millisecond, Fault: PauseFault{Duration: 300 * time.Millisecond}}},
		},
	}
	return s
}
