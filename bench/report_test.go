package bench

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
)

// syntheticReport is a report as a run would leave it, with made-up
// numbers: fio-like workloads on four targets, a sustained run with
// windows, and a timeline.
func syntheticReport() *Report {
	lat := func(p50 float64) *Latency {
		return &Latency{P50Us: p50, P99Us: 4 * p50, P999Us: 8 * p50, CDF: pts(0, p50/2, 50, p50, 99, 4*p50, 100, 10*p50)}
	}
	cpu, cpuWrite := 1.5, 7.8
	r := &Report{
		Metadata: Metadata{Date: "2026-11-23T00:00:00Z", CommandLine: []string{"ballast", "bench"}, Machine: Machine{CPUs: 2, CPUModel: "Test CPU", Kernel: "6.1"}},
		Suite:    SuiteInfo{Name: "test"},
		Targets: []TargetInfo{
			{Name: BaselineCacheNone, Role: RoleBaseline},
			{Name: BaselineWritethrough, Role: RoleBaseline},
			{Name: BaselineWriteback, Role: RoleBaseline},
			{Name: "ballast", Role: RoleSubject, Flush: &FlushWait{Status: FlushDone, WaitedS: 23}},
		},
		Workloads: []WorkloadInfo{
			{Name: "4k-randwrite-qd32", Description: "random writes"},
			{Name: "4k-randwrite-qd1", Description: "random writes, one at a time"},
			{Name: "1m-write-qd8", Description: "sequential writes"},
			{Name: "sustain-4k-randwrite-qd32", Description: "random writes for long"},
			{Name: "timeline", Description: "over time"},
		},
		Results: []Result{
			{Workload: "4k-randwrite-qd32", Target: "ballast", IOPS: 3000, MBps: 12.3, Latency: lat(200), CPUSecondsPerGB: &cpu},
			{Workload: "4k-randwrite-qd32", Target: BaselineCacheNone, IOPS: 6000, MBps: 24.6, Latency: lat(100)},
			{Workload: "4k-randwrite-qd32", Target: BaselineWritethrough, IOPS: 2000, MBps: 8.2, Latency: lat(400)},
			{Workload: "4k-randwrite-qd32", Target: BaselineWriteback, IOPS: 12000, MBps: 49, Latency: lat(40)},
			{Workload: "4k-randwrite-qd1", Target: "ballast", IOPS: 500, Latency: lat(250)},
			{Workload: "4k-randwrite-qd1", Target: BaselineCacheNone, IOPS: 2000, Latency: lat(100)},
			{Workload: "4k-randwrite-qd1", Target: BaselineWritethrough, Error: "fio failed"},
			{Workload: "1m-write-qd8", Target: "ballast", MBps: 100, Latency: lat(5000), CPUSecondsPerGB: &cpuWrite},
			{Workload: "1m-write-qd8", Target: BaselineCacheNone, MBps: 400, Latency: lat(1000)},
			{Workload: "sustain-4k-randwrite-qd32", Target: "ballast", IOPS: 900, Latency: lat(300),
				WindowS: 60, WindowIOPS: []float64{1000, 1000, 700}},
			{Workload: "timeline", Target: "ballast", IOPS: 100, Latency: lat(100), Timeline: &Timeline{
				IntervalS: 0.5, IOPS: []float64{100, 120, 0, 0, 110}, Errors: []float64{0, 0, 0, 0, 0},
				Events: []Event{{AtS: 1, Label: "pause 1s"}, {AtS: 2, Label: "resume"}},
			}},
			{Workload: "timeline", Target: BaselineWritethrough, IOPS: 90, Latency: lat(100), Timeline: &Timeline{
				IntervalS: 0.5, IOPS: []float64{90, 95, 0, 0, 90}, Errors: []float64{0, 0, 0, 0, 0},
				Events: []Event{{AtS: 1.01, Label: "pause 1s"}, {AtS: 2.02, Label: "resume"}},
			}},
			{Workload: "timeline", Target: BaselineWriteback, Skipped: "not supported"},
		},
	}
	r.evaluateGoals()
	return r
}

func TestTableRatios(t *testing.T) {
	table := syntheticReport().Table()
	for _, want := range []string{
		"| workload | target | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | CPU s/GB | vs cache-none (IOPS, p50) | vs writethrough (IOPS, p50) | vs writeback (IOPS, p50) |",
		// Subjects first; 3000/2000 IOPS and 200/400 µs against writethrough.
		"| 4k-randwrite-qd32 | ballast | 3000 | 12.3 | 200 | 800 | 1600 | 1.50 | 0.50×, 2.00× | 1.50×, 0.50× | 0.25×, 5.00× |",
		"| 4k-randwrite-qd32 | qemu-nbd-cache-none | 6000 | 24.6 | 100 | 400 | 800 | — | — | 3.00×, 0.25× | 0.50×, 2.50× |",
		"| 4k-randwrite-qd32 | qemu-nbd-writethrough | 2000 | 8.2 | 400 | 1600 | 3200 | — | 0.33×, 4.00× | — | 0.17×, 10.00× |",
		"| 4k-randwrite-qd32 | qemu-nbd-writeback | 12000 | 49.0 | 40.0 | 160 | 320 | — | 2.00×, 0.40× | 6.00×, 0.10× | — |",
		// A baseline that was skipped, or did not run the workload,
		// leaves its ratio column empty.
		"| timeline | ballast | 100 | 0.0 | 100 | 400 | 800 | — | — | 1.11×, 1.00× | — |",
	} {
		if !strings.Contains(table, want+"\n") {
			t.Errorf("table lacks row\n%s\nin\n%s", want, table)
		}
	}
	if strings.Contains(table, "| timeline | qemu-nbd-writeback |") {
		t.Error("a skipped result has a row")
	}
	if i, j := strings.Index(table, "| 4k-randwrite-qd32 | ballast"), strings.Index(table, "| 4k-randwrite-qd32 | qemu"); i > j {
		t.Error("subjects should come before baselines")
	}
}

// TestGoals evaluates the goals of the synthetic report: against a
// baseline, against the subject itself, and against a fixed threshold;
// met, missed, and unknown when the baseline failed.
func TestGoals(t *testing.T) {
	r := syntheticReport()
	got := map[string]GoalResult{}
	for _, g := range r.Goals {
		if g.Subject != "ballast" {
			t.Errorf("goal %q evaluated for %s", g.Name, g.Subject)
		}
		got[g.Name] = g
	}
	for _, want := range []struct{ name, status, note string }{
		{"4k randwrite QD32 IOPS ≥ 0.4× cache=none", GoalMet, "0.50× (goal ≥ 0.4×)"},
		{"4k randwrite QD32 IOPS ≥ 2× writethrough", GoalMissed, "1.50× (goal ≥ 2×): 25% short"},
		{"4k randwrite QD1 p50 ≤ 2.5× cache=none's", GoalMet, "2.50× (goal ≤ 2.5×)"},
		{"4k randwrite QD1 p99 ≤ 10× its own p50", GoalMet, "4.00× (goal ≤ 10×)"},
		{"1M sequential write QD8 MB/s ≥ 0.4× cache=none", GoalMissed, "0.25× (goal ≥ 0.4×): 38% short"},
		{"CPU s per GB written (1M sequential write) ≤ 6", GoalMissed, "7.8 s/GB (goal ≤ 6 s/GB): 30% over"},
		{"sustained 4k randwrite QD32: last minute's IOPS ≥ 0.8× the first's", GoalMissed, "0.70× (goal ≥ 0.8×): 13% short; 3 windows of 1 min"},
	} {
		g, ok := got[want.name]
		if !ok {
			t.Errorf("goal %q not evaluated", want.name)
			continue
		}
		if g.Status != want.status || g.Note != want.note {
			t.Errorf("goal %q: %s, %q; want %s, %q", want.name, g.Status, g.Note, want.status, want.note)
		}
	}
	if g := got["CPU s per GB written (1M sequential write) ≤ 6"]; g.Ratio != nil || g.Value == nil || *g.Value != 7.8 {
		t.Errorf("an absolute goal has a ratio or lacks its value: %+v", g)
	}
	if g := got["4k randwrite QD1 p99 ≤ 10× its own p50"]; g.BaselineValue == nil || *g.BaselineValue != 250 {
		t.Errorf("a goal against the subject's own p50: %+v", g)
	}
	// Goals on workloads the run did not have are not evaluated; goals
	// whose baseline ran but failed are unknown.
	for _, g := range r.Goals {
		if g.Issue == 17 {
			t.Errorf("goal %q evaluated though its workload is not in the run", g.Name)
		}
	}
	r.Results[6] = Result{Workload: "4k-randwrite-qd32", Target: BaselineWritethrough, Error: "fio failed"}
	r.Results[2] = Result{Workload: "4k-randwrite-qd32", Target: BaselineWritethrough, Error: "fio failed"}
	r.evaluateGoals()
	for _, g := range r.Goals {
		if g.Name == "4k randwrite QD32 IOPS ≥ 2× writethrough" && (g.Status != GoalUnknown || !strings.Contains(g.Note, "fio failed")) {
			t.Errorf("goal against a failed baseline: %s, %q", g.Status, g.Note)
		}
	}
	// Without baselines, only the goals that need none are evaluated.
	r.Targets = r.Targets[3:]
	r.evaluateGoals()
	if len(r.Goals) != 3 {
		t.Errorf("without baselines, %d goals evaluated, want the 3 that need none: %+v", len(r.Goals), r.Goals)
	}
}

func TestGoalsTable(t *testing.T) {
	r := syntheticReport()
	table := r.GoalsTable()
	for _, want := range []string{
		"| goal | issue | subject | measured | against | status |",
		"| 4k randwrite QD32 IOPS ≥ 0.4× cache=none | 16 | ballast | 3000 IOPS | cache-none 6000 IOPS | MET: 0.50× (goal ≥ 0.4×) |",
		"| 4k randwrite QD1 p99 ≤ 10× its own p50 | 16 | ballast | 1000 µs | own p50 250 µs | MET: 4.00× (goal ≤ 10×) |",
		"| CPU s per GB written (1M sequential write) ≤ 6 | 16 | ballast | 7.80 s/GB | fixed | MISSED: 7.8 s/GB (goal ≤ 6 s/GB): 30% over |",
		"| sustained 4k randwrite QD32: last minute's IOPS ≥ 0.8× the first's | 16 | ballast | 700 IOPS | own first window 1000 IOPS | MISSED: 0.70× (goal ≥ 0.8×): 13% short; 3 windows of 1 min |",
	} {
		if !strings.Contains(table, want+"\n") {
			t.Errorf("goals table lacks row\n%s\nin\n%s", want, table)
		}
	}
	md := r.Markdown()
	for _, want := range []string{
		"Goals this suite does not measure: 4k write + flush QD1 IOPS ≥ 0.5× cache=none (issue 16; suites quick, standard); ",
		"; 4k randread QD32 IOPS, working set in cache, ≥ 0.8× cache=none (issue 17; suite standard); ",
		"**ballast** (subject):  — before the workloads: the fill was flushed to the sleds after 23 s (steady state)",
		"- sustain-4k-randwrite-qd32 on ballast: IOPS per 1 min: 1000, 1000, 700; last over first 0.70×",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
}

func TestOutputsAreWellFormed(t *testing.T) {
	dir := t.TempDir()
	r := syntheticReport()
	if err := r.writeOutputs(dir); err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, dir, r)
	md, _ := os.ReadFile(filepath.Join(dir, "results.md"))
	for _, want := range []string{"## Goals", "| 4k randwrite QD32 IOPS ≥ 2× writethrough | 16 | ballast |", "timeline on qemu-nbd-writeback skipped"} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
}

// checkOutputs asserts that results.json parses and lists the same
// results as rep, and that every PNG it names decodes and has a size.
func checkOutputs(t *testing.T, dir string, rep *Report) *Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got Report
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if len(got.Results) != len(rep.Results) || len(got.Targets) != len(rep.Targets) {
		t.Errorf("results.json has %d results and %d targets, want %d and %d", len(got.Results), len(got.Targets), len(rep.Results), len(rep.Targets))
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || !bytes.Contains(md, []byte("| workload | target | IOPS |")) {
		t.Errorf("results.md has no table (%v)", err)
	}
	var cdfs, timelines int
	for _, f := range got.Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("results.json names %s: %v", f, err)
		}
		if !strings.HasSuffix(f, ".png") {
			continue
		}
		if strings.HasPrefix(f, "cdf-") {
			cdfs++
		}
		if strings.HasPrefix(f, "timeline-") {
			timelines++
		}
		pf, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(pf)
		pf.Close()
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
			t.Errorf("%s is only %v", f, b)
		}
	}
	if cdfs == 0 || timelines == 0 {
		t.Errorf("%d CDF and %d timeline plots among %v; want both kinds", cdfs, timelines, got.Files)
	}
	return &got
}

func TestProfileSummary(t *testing.T) {
	fn := func(id uint64, name string) *profile.Function { return &profile.Function{ID: id, Name: name} }
	leaf := fn(1, "github.com/cockroachdb/pebble.(*DB).Get")
	alloc := fn(2, "runtime.mallocgc")
	inlined := fn(3, "github.com/ballast-storage/ballast/headnode.readBlock")
	top := fn(4, "main.main")
	loc := func(id uint64, fns ...*profile.Function) *profile.Location {
		l := &profile.Location{ID: id}
		for _, f := range fns {
			l.Line = append(l.Line, profile.Line{Function: f})
		}
		return l
	}
	lLeaf, lAlloc, lMid, lTop := loc(1, leaf), loc(2, alloc), loc(3, inlined), loc(4, top)
	p := &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		DurationNanos: 1e9,
		Sample: []*profile.Sample{
			{Location: []*profile.Location{lLeaf, lMid, lTop}, Value: []int64{3, 30e6}},
			// Recursion counts a function once in cum.
			{Location: []*profile.Location{lAlloc, lLeaf, lLeaf, lTop}, Value: []int64{1, 10e6}},
		},
		Location: []*profile.Location{lLeaf, lAlloc, lMid, lTop},
		Function: []*profile.Function{leaf, alloc, inlined, top},
	}
	funcs, pkgs, total := profileTop(p)
	if total != 40e6 {
		t.Fatalf("total = %d", total)
	}
	want := map[string][2]int64{
		leaf.Name: {30e6, 40e6}, alloc.Name: {10e6, 10e6}, inlined.Name: {0, 30e6}, top.Name: {0, 40e6},
	}
	for _, e := range funcs {
		if w := want[e.Name]; e.Flat != w[0] || e.Cum != w[1] {
			t.Errorf("%s: flat, cum = %d, %d; want %d, %d", e.Name, e.Flat, e.Cum, w[0], w[1])
		}
	}
	if len(pkgs) != 2 || pkgs[0].Name != "github.com/cockroachdb/pebble" || pkgs[0].FlatPct != 75 || pkgs[1].Name != "runtime" {
		t.Errorf("packages = %+v", pkgs)
	}
	s := summarizeProfile(p, 10)
	for _, want := range []string{"40ms of samples over 1s (4% of one core)", "75.0%  github.com/cockroachdb/pebble\n", "100.0%  main.main\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	for fn, pkg := range map[string]string{
		"github.com/cockroachdb/pebble.(*DB).Get":                        "github.com/cockroachdb/pebble",
		"google.golang.org/grpc/internal/transport.(*http2Client).Write": "google.golang.org/grpc/internal/transport",
		"runtime.mallocgc": "runtime",
		"github.com/ballast-storage/ballast/attach/nbd.(*conn).serve.func1": "github.com/ballast-storage/ballast/attach/nbd",
	} {
		if got := packageOf(fn); got != pkg {
			t.Errorf("packageOf(%s) = %s, want %s", fn, got, pkg)
		}
	}
}

func TestConfig(t *testing.T) {
	ts, err := ParseTargetSpec("mine=nbd://127.0.0.1:10809/demo")
	if err != nil || ts.Name != "mine" || ts.URI != "nbd://127.0.0.1:10809/demo" {
		t.Errorf("ParseTargetSpec = %+v, %v", ts, err)
	}
	if ts, err := ParseTargetSpec("nbd://h/x"); err != nil || ts.Name != "" {
		t.Errorf("unnamed target: %+v, %v", ts, err)
	}
	if addr, export, err := parseNBDURI("nbd://h/x"); err != nil || addr != "h:10809" || export != "x" {
		t.Errorf("parseNBDURI default port: %s %s %v", addr, export, err)
	}
	for _, bad := range []string{"http://x/y", "x=/dev/nbd0", "nbd:///x"} {
		if _, err := ParseTargetSpec(bad); err == nil {
			t.Errorf("ParseTargetSpec(%q) accepted it", bad)
		}
	}
	cfg := Config{Suite: "huge", Rack: "vm", Workloads: []string{"nope"}}
	cfg.EnsureDefaults()
	err = cfg.Validate()
	for _, want := range []string{`suite "huge"`, `rack "vm"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %s", err, want)
		}
	}
	cfg = Config{Suite: SuiteQuick, Workloads: []string{"nope"}, Targets: []TargetSpec{{Name: BaselineWriteback, URI: "nbd://h/x"}}}
	cfg.EnsureDefaults()
	err = cfg.Validate()
	for _, want := range []string{`workload "nope" is not in suite quick`, `target name "qemu-nbd-writeback" is used twice`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %s", err, want)
		}
	}
	cfg = Config{}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil || cfg.Suite != SuiteStandard || cfg.OutDir == "" {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	// Every suite's workloads have distinct names, and every goal's
	// workload is in the standard suite, but the sustain goal's, which is
	// the sustain suite's.
	inSuite := map[string]map[string]bool{}
	for _, name := range SuiteNames() {
		s, _ := suiteByName(name, suiteOptions{})
		seen := map[string]bool{}
		for _, w := range s.Workloads {
			if seen[w.Name()] {
				t.Errorf("suite %s lists %s twice", name, w.Name())
			}
			seen[w.Name()] = true
		}
		inSuite[name] = seen
	}
	for _, g := range goals {
		want := SuiteStandard
		if g.Metric == MetricLastWindowIOPS {
			want = SuiteSustain
		}
		if !inSuite[want][g.Workload] {
			t.Errorf("goal %q names workload %s, not in the %s suite", g.Name, g.Workload, want)
		}
	}
	// The sustain suite writes over four times the journal, against
	// Ballast alone.
	for _, c := range []struct {
		journal, region uint64
		assumed         bool
	}{{0, 4 * DefaultJournalBytes, true}, {1 << 30, 4 << 30, false}} {
		cfg := Config{Suite: SuiteSustain, JournalBytes: c.journal}
		cfg.EnsureDefaults()
		s, err := cfg.suite()
		if err != nil || s.RegionBytes != c.region || !s.SubjectOnly || strings.Contains(s.RegionNote, "assumed") != c.assumed {
			t.Errorf("sustain suite with a journal of %d: %+v, %v", c.journal, s, err)
		}
	}
}
