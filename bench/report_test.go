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
// numbers: one fio-like workload on three targets and a timeline.
func syntheticReport() *Report {
	lat := func(p50 float64) *Latency {
		return &Latency{P50Us: p50, P99Us: 4 * p50, P999Us: 8 * p50, CDF: pts(0, p50/2, 50, p50, 99, 4*p50, 100, 10*p50)}
	}
	cpu := 1.5
	r := &Report{
		Metadata: Metadata{Date: "2026-11-23T00:00:00Z", CommandLine: []string{"ballast", "bench"}, Machine: Machine{CPUs: 2, CPUModel: "Test CPU", Kernel: "6.1"}},
		Suite:    SuiteInfo{Name: "test"},
		Targets: []TargetInfo{
			{Name: BaselineWritethrough, Role: RoleBaseline},
			{Name: BaselineWriteback, Role: RoleBaseline},
			{Name: "ballast", Role: RoleSubject},
		},
		Workloads: []WorkloadInfo{{Name: "4k-randwrite-qd32", Description: "random writes"}, {Name: "timeline", Description: "over time"}},
		Results: []Result{
			{Workload: "4k-randwrite-qd32", Target: "ballast", IOPS: 3000, MBps: 12.3, Latency: lat(200), CPUSecondsPerGB: &cpu},
			{Workload: "4k-randwrite-qd32", Target: BaselineWritethrough, IOPS: 2000, MBps: 8.2, Latency: lat(400)},
			{Workload: "4k-randwrite-qd32", Target: BaselineWriteback, IOPS: 12000, MBps: 49, Latency: lat(40)},
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
		"| workload | target | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | CPU s/GB | vs writethrough (IOPS, p50) | vs writeback (IOPS, p50) |",
		// Subjects first; 3000/2000 IOPS and 200/400 µs against writethrough.
		"| 4k-randwrite-qd32 | ballast | 3000 | 12.3 | 200 | 800 | 1600 | 1.50 | 1.50×, 0.50× | 0.25×, 5.00× |",
		"| 4k-randwrite-qd32 | qemu-nbd-writethrough | 2000 | 8.2 | 400 | 1600 | 3200 | — | — | 0.17×, 10.00× |",
		"| 4k-randwrite-qd32 | qemu-nbd-writeback | 12000 | 49.0 | 40.0 | 160 | 320 | — | 6.00×, 0.10× | — |",
		// A baseline that was skipped leaves its ratio column empty.
		"| timeline | ballast | 100 | 0.0 | 100 | 400 | 800 | — | 1.11×, 1.00× | — |",
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

func TestOutputsAreWellFormed(t *testing.T) {
	dir := t.TempDir()
	r := syntheticReport()
	if err := r.writeOutputs(dir); err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, dir, r)
	md, _ := os.ReadFile(filepath.Join(dir, "results.md"))
	for _, want := range []string{"## Goals", "4k randwrite QD32 IOPS ≥ 0.6× writethrough MET — 1.50×", "timeline on qemu-nbd-writeback skipped"} {
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
	// workload is in the standard suite.
	for _, name := range SuiteNames() {
		s, _ := suiteByName(name, suiteOptions{})
		seen := map[string]bool{}
		for _, w := range s.Workloads {
			if seen[w.Name()] {
				t.Errorf("suite %s lists %s twice", name, w.Name())
			}
			seen[w.Name()] = true
		}
		if name == SuiteStandard {
			for _, g := range goals {
				if !seen[g.Workload] {
					t.Errorf("goal %q names workload %s, not in the standard suite", g.Name, g.Workload)
				}
			}
		}
	}
}
