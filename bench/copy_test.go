package bench

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSpreadRuns(t *testing.T) {
	const mib = 1 << 20
	// Issue 17's layout: 64 runs of 8 MiB, one every 64 MiB of 4 GiB.
	offs, err := spreadRuns(4<<30, 512*mib, 8*mib)
	if err != nil {
		t.Fatal(err)
	}
	if len(offs) != 64 || offs[0] != 0 || offs[1] != 64*mib || offs[63] != 63*64*mib {
		t.Fatalf("offsets = %v", offs)
	}
	checkRuns(t, offs, 4<<30, 8*mib)

	// A size the runs do not divide: the stride rounds down to whole runs,
	// so the runs stay aligned and the space left is a hole at the end.
	offs, err = spreadRuns(100*mib, 48*mib, 8*mib)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 16 * mib, 32 * mib, 48 * mib, 64 * mib, 80 * mib}; !slices.Equal(offs, want) {
		t.Errorf("offsets = %v, want %v", offs, want)
	}
	checkRuns(t, offs, 100*mib, 8*mib)

	// Data as large as the volume: runs back to back, no holes.
	offs, err = spreadRuns(32*mib, 32*mib, 8*mib)
	if err != nil || !slices.Equal(offs, []uint64{0, 8 * mib, 16 * mib, 24 * mib}) {
		t.Errorf("a full volume: %v, %v", offs, err)
	}

	for _, c := range []struct {
		export, data, run uint64
		why               string
	}{
		{4 << 30, 512 * mib, 0, "above zero"},
		{4 << 30, 0, 8 * mib, "above zero"},
		{4 << 30, 20 * mib, 8 * mib, "whole number"},
		{16 * mib, 32 * mib, 8 * mib, "do not fit"},
	} {
		if _, err := spreadRuns(c.export, c.data, c.run); err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("spreadRuns(%d, %d, %d) = %v, want an error saying %q", c.export, c.data, c.run, err, c.why)
		}
	}
}

// checkRuns checks that the runs at offs lie inside the volume, in
// order, without overlapping, each aligned to its size.
func checkRuns(t *testing.T, offs []uint64, export, run uint64) {
	t.Helper()
	for i, off := range offs {
		if off%run != 0 || off+run > export || i > 0 && off < offs[i-1]+run {
			t.Errorf("run %d at %d (of %d bytes) in a volume of %d: misplaced (%v)", i, off, run, export, offs)
		}
	}
}

func TestRunData(t *testing.T) {
	a, b := runData(3, 1<<20), runData(3, 1<<20)
	if !bytes.Equal(a, b) {
		t.Error("run 3's data differs between calls: the two volumes would not hold the same data")
	}
	if bytes.Equal(a, runData(4, 1<<20)) {
		t.Error("runs 3 and 4 hold the same data")
	}
	if zeroes := bytes.Count(a, []byte{0}); zeroes > len(a)/100 {
		t.Errorf("%d zero bytes of %d: not random", zeroes, len(a))
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{2}, 2},
		{[]float64{3, 1, 2}, 2},
		{[]float64{0.9, 0.6, 1.5, 0.7}, 0.8},
		{[]float64{5, 1, 4, 2, 3}, 3},
	} {
		in := slices.Clone(c.in)
		if got := median(in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median reordered its argument: %v", in)
		}
	}
}

func TestCopyOrderAlternates(t *testing.T) {
	var order []bool
	for i := range 4 {
		order = append(order, copyOrder(i))
	}
	if !slices.Equal(order, []bool{true, false, true, false}) {
		t.Errorf("sparse first in rounds 0-3: %v", order)
	}
}

func TestCopyWorkloadNeedsHeadNodes(t *testing.T) {
	w := sparseCopy()
	if err := w.Supports(&Target{Name: BaselineCacheNone}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("on a baseline: %v, want ErrNotSupported", err)
	}
	if err := w.Supports(&Target{Name: SubjectName, HeadNodes: [][]string{{"127.0.1.1:7400"}}}); err != nil {
		t.Errorf("on a rack: %v", err)
	}
}

// TestSparseCopyInStandardSuite: the copy workload is in the standard
// suite, listed by --list, and its goal is on it.
func TestSparseCopyInStandardSuite(t *testing.T) {
	s, err := suiteByName(SuiteStandard, suiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.workloadNames(), sparseCopyID) {
		t.Errorf("standard suite lacks %s: %v", sparseCopyID, s.workloadNames())
	}
	list, err := Describe(Config{Suite: SuiteStandard})
	if err != nil || !strings.Contains(list, "  "+sparseCopyID+" ") {
		t.Errorf("--list lacks %s (%v):\n%s", sparseCopyID, err, list)
	}
	var found bool
	for _, g := range goals {
		if g.Workload == sparseCopyID {
			found = true
			if g.Issue != 17 || g.Metric != MetricSparseCopyS || g.Baseline != BaselineSelf || g.BaselineMetric != MetricDataCopyS || g.Threshold != 1.5 {
				t.Errorf("copy goal: %+v", g)
			}
		}
	}
	if !found {
		t.Error("no goal on the copy workload")
	}
}

// TestEveryGoalHasASuite: a goal whose workload no suite runs is never
// evaluated.
func TestEveryGoalHasASuite(t *testing.T) {
	in := map[string]bool{}
	for _, name := range SuiteNames() {
		s, err := suiteByName(name, suiteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range s.workloadNames() {
			in[w] = true
		}
	}
	for _, g := range goals {
		if !in[g.Workload] {
			t.Errorf("goal %q: no suite runs workload %s", g.Name, g.Workload)
		}
	}
}

// copyReport is a report with one copy result: the sparse copy's
// median over the data copy's is sparse/data.
func copyReport(sparse, data []float64) *Report {
	alloc := uint64(512 << 20)
	c := &CopyResult{Tool: "nbdcopy 1.14.2", Destination: "null:", ExportBytes: 4 << 30, DataBytes: 512 << 20, Runs: 64, RunBytes: 8 << 20,
		AllocatedBytes: &alloc, SparseS: sparse, DataS: data, SparseMedianS: median(sparse), DataMedianS: median(data),
		Flush: &FlushWait{Status: FlushDone, WaitedS: 31}}
	r := &Report{
		Suite:     SuiteInfo{Name: "test"},
		Targets:   []TargetInfo{{Name: SubjectName, Role: RoleSubject}, {Name: BaselineCacheNone, Role: RoleBaseline}},
		Workloads: []WorkloadInfo{{Name: sparseCopyID, Description: "copies"}},
		Results: []Result{
			{Workload: sparseCopyID, Target: SubjectName, Engine: "nbdcopy", Path: "nbd", MBps: 536.870912 / c.SparseMedianS, Copy: c},
			{Workload: sparseCopyID, Target: BaselineCacheNone, Skipped: "needs the rack's head nodes"},
		},
	}
	r.evaluateGoals()
	return r
}

func TestSparseCopyGoal(t *testing.T) {
	const name = "nbdcopy of a 4 GiB volume holding 512 MiB ≤ 1.5× copying the 512 MiB alone"
	for _, c := range []struct {
		sparse, data []float64
		status, note string
	}{
		{[]float64{0.65, 0.99, 0.60}, []float64{0.66, 1.45, 0.64}, GoalMet, "0.98× (goal ≤ 1.5×)"},
		{[]float64{1.5, 1.5, 1.5}, []float64{1, 1, 1}, GoalMet, "1.50× (goal ≤ 1.5×)"},
		// Every byte read, holes too: eight times the data.
		{[]float64{5.3, 5.2, 5.4}, []float64{0.66, 0.7, 0.62}, GoalMissed, "8.03× (goal ≤ 1.5×): 435% over"},
	} {
		r := copyReport(c.sparse, c.data)
		if len(r.Goals) != 1 {
			t.Fatalf("goals = %+v, want the copy goal alone", r.Goals)
		}
		g := r.Goals[0]
		if g.Name != name || g.Status != c.status || g.Note != c.note {
			t.Errorf("sparse %v, data %v: %s, %q; want %s, %q", c.sparse, c.data, g.Status, g.Note, c.status, c.note)
		}
		if g.Value == nil || *g.Value != median(c.sparse) || g.BaselineValue == nil || *g.BaselineValue != median(c.data) {
			t.Errorf("goal compares %v with %v, want the medians", g.Value, g.BaselineValue)
		}
	}

	// Without a copy timed (a failed run), the goal is unknown.
	r := copyReport([]float64{1}, []float64{1})
	r.Results[0] = Result{Workload: sparseCopyID, Target: SubjectName, Error: "nbdcopy failed"}
	r.evaluateGoals()
	if g := r.Goals[0]; g.Status != GoalUnknown || !strings.Contains(g.Note, "nbdcopy failed") {
		t.Errorf("goal on a failed copy: %s, %q", g.Status, g.Note)
	}
	r.Results[0] = Result{Workload: sparseCopyID, Target: SubjectName, Copy: &CopyResult{}}
	r.evaluateGoals()
	if g := r.Goals[0]; g.Status != GoalUnknown || g.Note != "no sparse_copy_s of ballast on sparse-copy-4g-512m: no copy was timed" {
		t.Errorf("goal on a result without copies: %s, %q", g.Status, g.Note)
	}
}

func TestSparseCopyReport(t *testing.T) {
	r := copyReport([]float64{0.65, 0.99, 0.60}, []float64{0.66, 1.45, 0.64})
	table := r.Table()
	// No IOPS; MB/s is the data over the sparse copy's median.
	if want := "| sparse-copy-4g-512m | ballast | — | 826 | — | — | — | — | — |\n"; !strings.Contains(table, want) {
		t.Errorf("table lacks\n%sin\n%s", want, table)
	}
	goalsTable := r.GoalsTable()
	if want := "| nbdcopy of a 4 GiB volume holding 512 MiB ≤ 1.5× copying the 512 MiB alone | 17 | ballast | 0.65 s | own copy of the data alone 0.66 s | MET: 0.98× (goal ≤ 1.5×) |\n"; !strings.Contains(goalsTable, want) {
		t.Errorf("goals table lacks\n%sin\n%s", want, goalsTable)
	}
	md := r.Markdown()
	if want := "- sparse-copy-4g-512m on ballast: nbdcopy 1.14.2 to null: of the 4.0 GiB volume holding 512 MiB (64 runs of 8.0 MiB): " +
		"median 0.65 s (0.65, 0.99, 0.60 s); of the 512 MiB alone: median 0.66 s (0.66, 1.45, 0.64 s); 0.98×; " +
		"its block status reported 512 MiB of data; before the copies: the data was flushed to the sleds after 31 s (steady state)\n"; !strings.Contains(md, want) {
		t.Errorf("results.md lacks\n%sin\n%s", want, md)
	}
	if !strings.Contains(md, "- sparse-copy-4g-512m on qemu-nbd-cache-none skipped: needs the rack's head nodes") {
		t.Errorf("results.md does not say the baseline skipped the copy:\n%s", md)
	}
}

// TestCopyWorkloadOnDemoRack runs a small copy workload for real on a
// demo rack: its two volumes are created, written, served over NBD
// beside the rack's own and copied with nbdcopy, and the sparse one's
// block status reports its holes.
func TestCopyWorkloadOnDemoRack(t *testing.T) {
	t.Parallel()
	needTools(t, "fio", "nbdcopy")
	bin := buildBallast(t)
	out, work := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := &CopyWorkload{ID: "copy", Desc: "a small sparse copy", ExportBytes: 64 << 20, DataBytes: 8 << 20, RunBytes: 1 << 20, Repeats: 2}
	suite := &Suite{Name: "test", RegionBytes: 8 << 20, Runtime: time.Second, Workloads: []Workload{w}}
	cfg := Config{OutDir: out, WorkDir: work, BallastBinary: bin, NoBaselines: true,
		Logger: testLogger(t), CommandLine: []string{"go", "test"}}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, cfg, suite)
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Result(w.ID, SubjectName)
	if r == nil || r.Error != "" || r.Skipped != "" || r.Copy == nil {
		t.Fatalf("result: %+v", r)
	}
	c := r.Copy
	if len(c.SparseS) != 2 || len(c.DataS) != 2 || c.SparseMedianS <= 0 || c.DataMedianS <= 0 || r.Bytes != 4*(8<<20) {
		t.Errorf("copies: %+v (bytes %v)", c, r.Bytes)
	}
	if c.Runs != 8 || !strings.HasPrefix(c.Tool, "nbdcopy") {
		t.Errorf("copy result: %+v", c)
	}
	// Every run is data; most of the volume is holes.
	if c.AllocatedBytes == nil || *c.AllocatedBytes < c.DataBytes || *c.AllocatedBytes >= c.ExportBytes/2 {
		t.Errorf("block status of the sparse volume: %v bytes of data (%s)", c.AllocatedBytes, c.AllocationNote)
	}
}
