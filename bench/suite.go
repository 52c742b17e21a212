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
	// SuiteStandard is the suite `make bench` runs: about a quarter of
	// an hour on two cores (four targets, three minutes of workloads
	// each, and Ballast's fill and wait for its flush).
	SuiteStandard = "standard"
	// SuiteSustain writes 4 KiB blocks at random for ten minutes over
	// four times the head nodes' journal, against Ballast alone: whether
	// the last minute keeps up with the first once the journal is full.
	SuiteSustain = "sustain"
)

// DefaultJournalBytes is the head-node journal's size the sustain suite
// assumes when Config.JournalBytes is not set (a rack it did not start,
// whose size it cannot know); `ballast bench` sets it, and passes it to
// the rack it starts.
const DefaultJournalBytes = 256 << 20

// suiteOptions are what the suites' sizes depend on.
type suiteOptions struct {
	// journalBytes is the head nodes' journal size; journalAssumed says
	// it was not given, so DefaultJournalBytes stands in.
	journalBytes   uint64
	journalAssumed bool
}

// humanDuration writes whole minutes and seconds as people do.
func humanDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0 s"
	case d%time.Minute == 0:
		return fmt.Sprintf("%d min", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return d.String()
}

// Suite is a set of workloads and the sizes they run with.
type Suite struct {
	Name string
	// RegionBytes is the part of each export the workloads use; it is
	// filled before the workloads run, so reads hit data. RegionNote
	// says why it has that size, when that is not obvious.
	RegionBytes uint64
	RegionNote  string
	// Runtime is how long each workload measures, after Ramp (fio's
	// ramp_time, not counted).
	Runtime time.Duration
	Ramp    time.Duration
	// Workloads run in this order against each target.
	Workloads []Workload
	// SubjectOnly runs no baselines: the suite's goals compare Ballast
	// with itself.
	SubjectOnly bool
}

// suites is the registry of suites. A new workload is added by listing it
// in the suites it belongs to; a goal about it goes in goals.go.
var suites = map[string]func(suiteOptions) *Suite{
	SuiteQuick:    quickSuite,
	SuiteStandard: standardSuite,
	SuiteSustain:  sustainSuite,
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

func suiteByName(name string, o suiteOptions) (*Suite, error) {
	f, ok := suites[name]
	if !ok {
		return nil, fmt.Errorf("suite %q: want one of %s", name, strings.Join(SuiteNames(), ", "))
	}
	if o.journalBytes == 0 {
		o.journalBytes, o.journalAssumed = DefaultJournalBytes, true
	}
	return f(o), nil
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

// Describe lists the workloads of cfg's suite and the faults there are,
// one a line.
func Describe(cfg Config) (string, error) {
	cfg.EnsureDefaults()
	s, err := cfg.suite()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "suite %s: region %s per target, %s per workload after a %s ramp\n",
		s.Name, humanBytes(s.RegionBytes), humanDuration(s.Runtime), humanDuration(s.Ramp))
	if s.RegionNote != "" {
		fmt.Fprintf(&b, "  region: %s\n", s.RegionNote)
	}
	if s.SubjectOnly {
		b.WriteString("  no baselines: its goals compare Ballast with itself\n")
	}
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

// writeFlush is 4 KiB random writes at QD1, each followed by a flush
// that the next write waits for: what a database's commit does.
func writeFlush() *FioWorkload {
	return &FioWorkload{
		ID:   "4k-randwrite-flush-qd1",
		Desc: "fio: 4 KiB random writes, 1 in flight, a flush (NBD_CMD_FLUSH) after each; latency is the write's, the flush's time shows in IOPS",
		RW:   "randwrite", BlockBytes: 4096, IODepth: 1, Fsync: 1,
	}
}

// hotRead is 4 KiB random reads at QD32 over a working set small enough
// for a cache to hold.
func hotRead(workingSet uint64) *FioWorkload {
	return &FioWorkload{
		ID:   "4k-randread-qd32-hot",
		Desc: fmt.Sprintf("fio: 4 KiB random reads, 32 in flight, over the first %s of the region (a working set a cache holds)", humanBytes(workingSet)),
		RW:   "randread", BlockBytes: 4096, IODepth: 32, WorkingSetBytes: workingSet,
	}
}

// sustain is 4 KiB random writes at QD32 for d over the whole region,
// with IOPS per window: the sustain goal compares the last window with
// the first.
func sustain(d, window, interval time.Duration) *FioWorkload {
	return &FioWorkload{
		ID: "sustain-4k-randwrite-qd32",
		Desc: fmt.Sprintf("fio: 4 KiB random writes, 32 in flight, for %s over the whole region; IOPS every %s and per %s, the last %s against the first",
			humanDuration(d), humanDuration(interval), humanDuration(window), humanDuration(window)),
		RW: "randwrite", BlockBytes: 4096, IODepth: 32,
		Runtime: d, TimelineInterval: interval, Window: window,
	}
}

// multiConn is 4 KiB random 70/30 over several NBD connections at once.
func multiConn(conns, qd int) *FioWorkload {
	return &FioWorkload{
		ID:   fmt.Sprintf("4k-randrw70-%dconn-qd%d", conns, qd),
		Desc: fmt.Sprintf("fio: 4 KiB random 70/30 over %d NBD connections, %d in flight on each", conns, qd),
		RW:   "randrw", ReadPercent: 70, BlockBytes: 4096, IODepth: qd, NumJobs: conns,
	}
}

// sparseCopyID is the copy workload of issue 17's goal.
const sparseCopyID = "sparse-copy-4g-512m"

// sparseCopy times nbdcopy of a 4 GiB volume holding 512 MiB (64 runs of
// 8 MiB, 64 MiB apart) against nbdcopy of a 512 MiB volume holding the
// same data, five times each: issue 17's goal of at most 1.5×.
func sparseCopy() *CopyWorkload {
	return &CopyWorkload{
		ID: sparseCopyID,
		Desc: "nbdcopy to null: of a new 4 GiB volume holding 512 MiB (64 runs of 8 MiB, 64 MiB apart, holes between) " +
			"and of a new 512 MiB volume holding the same data, alternately, five times each after the data reached the sleds; " +
			"the medians compared (Ballast only)",
		ExportBytes: 4 << 30, DataBytes: 512 << 20, RunBytes: 8 << 20,
		Repeats: 5, WaitFlushed: true,
	}
}

func standardSuite(suiteOptions) *Suite {
	s := &Suite{Name: SuiteStandard, RegionBytes: 1 << 30, Runtime: 10 * time.Second, Ramp: 2 * time.Second}
	s.Workloads = []Workload{
		seq("write"), seq("read"),
		random4k("randwrite", 1), random4k("randwrite", 32), writeFlush(),
		random4k("randread", 1), random4k("randread", 32), hotRead(64 << 20),
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
		// Last: it writes a gigabyte into volumes of its own, waits for
		// it to reach the sleds and deletes the volumes afterwards, which
		// leaves the rack work to do that no other workload should meet.
		sparseCopy(),
	}
	return s
}

func quickSuite(suiteOptions) *Suite {
	s := &Suite{Name: SuiteQuick, RegionBytes: 32 << 20, Runtime: time.Second}
	s.Workloads = []Workload{
		seq("write"), random4k("randwrite", 32), writeFlush(), random4k("randread", 32), multiConn(2, 4),
		sustain(3*time.Second, time.Second, 500*time.Millisecond),
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

// sustainSuite writes over four times the journal, so that the journal
// fills and the last minutes run at the pace of its flush to the sleds.
func sustainSuite(o suiteOptions) *Suite {
	s := &Suite{Name: SuiteSustain, RegionBytes: 4 * o.journalBytes, Runtime: 10 * time.Minute, SubjectOnly: true,
		RegionNote: fmt.Sprintf("four times a head-node journal of %s", humanBytes(o.journalBytes))}
	if o.journalAssumed {
		s.RegionNote += ", assumed: the journal's planned size, not read from the rack (--journal-size sets it)"
	}
	s.Workloads = []Workload{sustain(10*time.Minute, time.Minute, time.Second)}
	return s
}
