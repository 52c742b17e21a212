package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BenchmarkHandoff measures the handoff as the destination sees it: the
// latency of its first write, which the primary holds from its arrival
// through the switchover (the source's writes in flight complete, the
// attachment commits) to its completion. A rack of processes with agents
// for hosts h1 and h2, a writer on each keeping one 4 KiB write in
// flight, and BALLAST_HANDOFFS handoffs (default 100), each prepared by
// the benchmark and switched over by the destination's writer. Run it
// once:
//
//	go test -run '^$' -bench Handoff -benchtime 1x ./e2e/
func BenchmarkHandoff(b *testing.B) {
	handoffs := 100
	if s := os.Getenv("BALLAST_HANDOFFS"); s != "" {
		handoffs, _ = strconv.Atoi(s)
	}
	r := newRack(b)
	r.startProcesses()
	h2Addr, _ := r.startSecondAgent()
	c := r.rackClient()
	if out, err := r.cli("volume", "create", "hb", "--size", "64MiB", "--attach", "h1"); err != nil {
		b.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("hb", r.agent)
	var next atomic.Uint64
	// Each write takes a block of its own: 16384 blocks last a few
	// thousand handoffs.
	writers := []*handoffWriter{
		{host: "h1", addr: r.nbdAddr, volume: "hb", next: &next, blocks: 16384},
		{host: "h2", addr: h2Addr, volume: "hb", next: &next, blocks: 16384},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, w := range writers {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, b) }()
	}
	b.ResetTimer()
	owner := "h1"
	for i := 0; i < handoffs; i++ {
		to := map[string]string{"h1": "h2", "h2": "h1"}[owner]
		actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := changeAttachment(actx, c, "hb", ballastpb.AttachmentChange_ATTACHMENT_CHANGE_PREPARE_MIGRATION, to)
		acancel()
		if err != nil {
			b.Fatalf("handoff %d: %v", i, err)
		}
		waitAttached(b, c, "hb", to)
		owner = to
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	var held []time.Duration
	for _, w := range writers {
		held = append(held, w.firstHeld...)
	}
	slices.Sort(held)
	if len(held) == 0 {
		b.Fatal("no handoff measured")
	}
	p50, p99 := held[len(held)/2], held[len(held)*99/100]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.Logf("%d handoffs: destination's first write p50 %v p99 %v max %v", len(held), p50, p99, held[len(held)-1])
}

// BenchmarkLiveMigration runs the shared VM harness's live migration
// (vm-migrate-demo.sh) twice in one run: against its own stand-in (nbdkit
// serving memory, one export both QEMUs open) and against `ballast demo
// --hosts 2` (the source QEMU on h1's agent, the destination's on h2's,
// the switchover on the destination's first write), and reports QEMU's
// downtime and the pause the guest saw, and their ratios Ballast /
// stand-in (target ≤ 1.2), the medians over b.N pairs of runs (the rack
// and the hypervisors on separate CPUs; BALLAST_BENCH_SHARED_CPUS=1 lets
// them share):
//
//	go test -run '^$' -bench LiveMigration -benchtime 5x ./e2e/
func BenchmarkLiveMigration(b *testing.B) {
	script := vmScript(b, "vm-migrate-demo.sh")
	// The storage runs on machines of its own, not on the hypervisor's
	// cores: unless BALLAST_BENCH_SHARED_CPUS=1, the rack is pinned to the
	// last CPU and the QEMUs (and the stand-in) to the others, so that
	// neither slows the other's TCG guest.
	var storageCPUs, hypervisorCPUs string
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() >= 2 && os.Getenv("BALLAST_BENCH_SHARED_CPUS") != "1" {
		last := runtime.NumCPU() - 1
		storageCPUs, hypervisorCPUs = strconv.Itoa(last), fmt.Sprintf("0-%d", last-1)
		b.Logf("the rack on CPU %s, the hypervisors on CPUs %s", storageCPUs, hypervisorCPUs)
	}
	run := func(args ...string) (downtime, pause float64) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
		if hypervisorCPUs != "" {
			cmd = exec.CommandContext(ctx, "taskset", append([]string{"-c", hypervisorCPUs, "bash", script}, args...)...)
		}
		cmd.Dir = b.TempDir()
		cmd.Env = append(os.Environ(), "SKIP_ATTACH=1", "COUNT=600", "MIGRATE_AT=150")
		out, err := cmd.CombinedOutput()
		// (The harness's PASS also needs every ACK line of the source's
		// console, one of which can be lost as it stops: the numbers
		// measured do not depend on it.)
		if m := regexp.MustCompile(`DATA CHECK: (\d+)/(\d+)`).FindSubmatch(out); err != nil || m == nil || string(m[1]) != string(m[2]) {
			b.Fatalf("vm-migrate-demo.sh %v: %v\n%s", args, err, tail(string(out), 6000))
		}
		d := regexp.MustCompile(`downtime=(\d+) ms`).FindSubmatch(out)
		p := regexp.MustCompile(`pause between last source ACK and first destination ACK: ([0-9.]+) ms`).FindSubmatch(out)
		if d == nil || p == nil {
			b.Fatalf("no downtime or pause in the output:\n%s", tail(string(out), 6000))
		}
		downtime, _ = strconv.ParseFloat(string(d[1]), 64)
		pause, _ = strconv.ParseFloat(string(p[1]), 64)
		return downtime, pause
	}
	b.ResetTimer()
	r := newRack(b)
	r.nbdAddr = twoFreePorts(b)
	demoArgs := withLogLevel([]string{"demo", "--data", r.dataDir, "--size", "64MiB",
		"--nbd", r.nbdAddr, "--port", fmt.Sprint(r.port), "--hosts", "2", "--sleds", "0"})
	if storageCPUs != "" {
		r.demo = startCmd(b, "demo", exec.Command("taskset", append([]string{"-c", storageCPUs, ballastBin}, demoArgs...)...))
	} else {
		r.demo = startCmd(b, "demo", exec.Command(ballastBin, demoArgs...))
	}
	r.waitServed("demo", r.demo)
	host, port, _ := net.SplitHostPort(r.nbdAddr)
	p, _ := strconv.Atoi(port)
	uriOf := map[string]string{"h1": r.uri("demo"), "h2": fmt.Sprintf("nbd://%s/demo", net.JoinHostPort(host, strconv.Itoa(p+1)))}
	// b.N pairs, each the stand-in then Ballast, the volume migrating
	// back and forth: one pair's ratio is noise on a shared machine, the
	// median of several is the number.
	var downRatios, pauseRatios []float64
	from, to := "h1", "h2"
	for i := range b.N {
		standinDown, standinPause := run()
		if out, err := r.cli("migrate", "demo", "--to", to); err != nil {
			b.Fatalf("migrate: %v\n%s", err, out)
		}
		ballastDown, ballastPause := run(uriOf[from], uriOf[to])
		from, to = to, from
		downRatios = append(downRatios, ballastDown/standinDown)
		pauseRatios = append(pauseRatios, ballastPause/standinPause)
		b.Logf("pair %d: QEMU downtime: stand-in %.0f ms, Ballast %.0f ms (ratio %.2f); guest-visible pause: stand-in %.1f ms, Ballast %.1f ms (ratio %.2f)",
			i+1, standinDown, ballastDown, ballastDown/standinDown, standinPause, ballastPause, ballastPause/standinPause)
	}
	b.StopTimer()
	median := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		if len(xs)%2 == 1 {
			return xs[len(xs)/2]
		}
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	b.ReportMetric(median(downRatios), "downtime-ratio-p50")
	b.ReportMetric(median(pauseRatios), "pause-ratio-p50")
}
