package bench

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// needTools skips the test unless every named client is installed, except
// in CI (CI set), where `make test` has installed them and a skip would
// hide a test that never ran.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := tool + " is not installed (Debian packages fio, qemu-utils and libnbd-bin; `make test` installs them)"
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

var ballastBin struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if ballastBin.dir != "" {
		os.RemoveAll(ballastBin.dir)
	}
	os.Exit(code)
}

// buildBallast builds the ballast binary the harness runs the rack with,
// once for every test.
func buildBallast(t *testing.T) string {
	t.Helper()
	b := &ballastBin
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp("", "ballast-bench-bin")
		if b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "ballast")
		b.out, b.err = exec.Command("go", "build", "-o", b.path, "../cmd/ballast").CombinedOutput()
	})
	if b.err != nil {
		t.Fatalf("build ballast: %v\n%s", b.err, b.out)
	}
	return b.path
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestQuickSuite runs the quick suite for real: a demo rack, the three
// qemu-nbd baselines, fio and the Go load generator. It checks that the
// outputs exist and are well formed, and that every workload ran; not the
// numbers.
func TestQuickSuite(t *testing.T) {
	t.Parallel()
	needTools(t, "fio", "qemu-nbd")
	bin := buildBallast(t)
	out, work := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	began := time.Now()
	rep, err := Run(ctx, Config{
		OutDir:        out,
		Suite:         SuiteQuick,
		WorkDir:       work,
		BallastBinary: bin,
		Profile:       true,
		CommandLine:   []string{"go", "test"},
		Logger:        testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("quick suite took %v\n%s", time.Since(began).Round(time.Second), rep.Table())
	got := checkOutputs(t, out, rep)

	suite, _ := suiteByName(SuiteQuick, suiteOptions{})
	wantTargets := []string{SubjectName, BaselineCacheNone, BaselineWritethrough, BaselineWriteback}
	if len(got.Targets) != len(wantTargets) {
		t.Errorf("targets = %+v, want %v", got.Targets, wantTargets)
	}
	for _, w := range suite.Workloads {
		for _, tn := range wantTargets {
			r := got.Result(w.Name(), tn)
			switch {
			case r == nil:
				t.Errorf("no result for %s on %s", w.Name(), tn)
			case r.Error != "":
				t.Errorf("%s on %s failed: %s", w.Name(), tn, r.Error)
			case r.Skipped != "":
				if lw, ok := w.(*LoadWorkload); !ok || lw.Volumes == 0 || tn == SubjectName {
					t.Errorf("%s on %s skipped: %s", w.Name(), tn, r.Skipped)
				}
			default:
				if r.Latency == nil || len(r.Latency.CDF) < 3 || r.CPUSeconds == nil {
					t.Errorf("%s on %s lacks its latency CDF or CPU time: %+v", w.Name(), tn, r)
				}
				if r.Engine == "fio" {
					if _, err := os.Stat(filepath.Join(out, "fio", tn+"-"+w.Name()+".json")); err != nil {
						t.Errorf("raw fio output: %v", err)
					}
				}
			}
		}
	}
	// The timeline marks the pause on every target, and Ballast's Go load
	// generator went through the attach client.
	for _, tn := range wantTargets {
		r := got.Result("timeline-4k-randrw70-qd4", tn)
		if r == nil || r.Timeline == nil || len(r.Timeline.Events) != 2 || len(r.Timeline.IOPS) == 0 {
			t.Errorf("timeline on %s: %+v", tn, r)
		}
	}
	if r := got.Result("open-4k-randrw70-200iops", SubjectName); r == nil || r.Path != "attach" || r.ServiceTime == nil {
		t.Errorf("open loop on ballast: %+v", r)
	}
	// Profiles of Ballast were taken and summarised.
	if profs, _ := filepath.Glob(filepath.Join(out, "profiles", "ballast-demo-*.txt")); len(profs) == 0 {
		t.Error("no CPU profile summaries of ballast")
	}
	// Every goal on a workload of the suite is evaluated and decided;
	// no other is evaluated.
	var want int
	for _, g := range goals {
		if slices.Contains(suite.workloadNames(), g.Workload) {
			want++
		}
	}
	if len(got.Goals) != want || want == 0 {
		t.Errorf("%d goals evaluated, want %d", len(got.Goals), want)
	}
	for _, g := range got.Goals {
		if g.Status != GoalMet && g.Status != GoalMissed {
			t.Errorf("goal %q: %s (%s)", g.Name, g.Status, g.Note)
		}
	}
	// Ballast's fill was flushed to the sleds before the workloads, and
	// the cache=none baseline says which --aio it ran with.
	for _, ti := range got.Targets {
		switch ti.Name {
		case SubjectName:
			if ti.Flush == nil || ti.Flush.Status != FlushDone {
				t.Errorf("ballast's flush wait: %+v", ti.Flush)
			}
		case BaselineCacheNone:
			if !strings.Contains(ti.Description, "--cache=none --aio=") || ti.Copies != 1 {
				t.Errorf("cache=none baseline: %+v", ti)
			}
		}
	}
	// The sustained run has IOPS per window on every target, and a
	// timeline of its 500 ms intervals: six in 3 s, or five when fio's run
	// ends just before it logs the last one (seen on a loaded machine).
	for _, tn := range wantTargets {
		if r := got.Result("sustain-4k-randwrite-qd32", tn); r == nil || len(r.WindowIOPS) != 3 || r.Timeline == nil || len(r.Timeline.IOPS) < 5 {
			t.Errorf("sustain on %s: %+v", tn, r)
		}
	}
	m := got.Metadata
	if m.Machine.CPUs == 0 || m.Machine.Kernel == "" || m.Machine.DataDisk.MountPoint == "" || m.Date == "" || m.FioVersion == "" {
		t.Errorf("metadata incomplete: %+v", m)
	}
	// The work directory (rack data, baseline files) is gone.
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("work directory left behind: %v", left)
	}
}

// runOnProcessRack runs one timeline workload on a rack of processes
// with the given sleds (-1: none) and returns its result, which must have
// a timeline; out is the output directory.
func runOnProcessRack(t *testing.T, sleds int, w *LoadWorkload) (r *Result, out string) {
	t.Helper()
	needTools(t, "fio")
	bin := buildBallast(t)
	out, work := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	suite := &Suite{Name: "test", RegionBytes: 8 << 20, Runtime: time.Second, Workloads: []Workload{w}}
	cfg := Config{OutDir: out, WorkDir: work, BallastBinary: bin, Rack: RackProcesses, RackSleds: sleds,
		NoBaselines: true, Logger: testLogger(t), CommandLine: []string{"go", "test"}}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, cfg, suite)
	if err != nil {
		t.Fatal(err)
	}
	r = rep.Result(w.ID, SubjectName)
	if r == nil || r.Error != "" || r.Skipped != "" || r.Timeline == nil {
		t.Fatalf("result: %+v", r)
	}
	// I/O went on after the fault: the last second completed requests.
	if tail := r.Timeline.IOPS[len(r.Timeline.IOPS)-10:]; slices.Max(tail) == 0 {
		t.Errorf("no I/O after the fault: %v", r.Timeline.IOPS)
	}
	return r, out
}

func eventLabels(r *Result) []string {
	var labels []string
	for _, e := range r.Timeline.Events {
		labels = append(labels, e.Label)
	}
	return labels
}

// TestProcessRackRestartsAHeadNode runs a rack of processes (no sleds, to
// stay small) and a timeline during which a head node holding no replica
// is killed and restarted: the events are marked and I/O goes on.
func TestProcessRackRestartsAHeadNode(t *testing.T) {
	t.Parallel()
	r, out := runOnProcessRack(t, -1, &LoadWorkload{
		ID: "restart", Desc: "restart a head node", BlockBytes: 4096, ReadPercent: 50, QueueDepth: 2,
		Duration: 3 * time.Second, TimelineInterval: 100 * time.Millisecond,
		Faults:        []FaultAt{{At: time.Second, Fault: RestartHeadNodeFault{Down: 300 * time.Millisecond}}},
		RequireFaults: true,
	})
	labels := eventLabels(r)
	if len(labels) != 2 || !strings.HasPrefix(labels[0], "kill -9 hn") || !strings.HasSuffix(labels[1], " restarted") {
		t.Errorf("events = %q, want a kill and a restart", labels)
	}
	if _, err := os.Stat(filepath.Join(out, "timeline-restart.png")); err != nil {
		t.Error(err)
	}
}

// TestProcessRackKillsASled runs a rack of processes with seven sleds and
// a timeline during which a sled is killed and restarted: the events are
// marked and I/O goes on through it.
func TestProcessRackKillsASled(t *testing.T) {
	t.Parallel()
	r, _ := runOnProcessRack(t, 7, &LoadWorkload{
		ID: "sled", Desc: "kill a sled", BlockBytes: 4096, ReadPercent: 50, QueueDepth: 2,
		Duration: 3 * time.Second, TimelineInterval: 100 * time.Millisecond,
		Faults:        []FaultAt{{At: time.Second, Fault: KillSledFault{Down: 500 * time.Millisecond}}},
		RequireFaults: true,
	})
	if labels := eventLabels(r); !slices.Equal(labels, []string{"kill -9 s1", "s1 restarted"}) {
		t.Errorf("events = %q, want a kill and a restart of s1", labels)
	}
}
