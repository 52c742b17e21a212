package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// fioPercentiles are the latency percentiles asked of fio (it accepts at
// most 20); with the minimum and maximum they draw the CDF.
const fioPercentiles = "1:5:10:20:30:40:50:60:70:80:90:95:99:99.5:99.9:99.95:99.99"

// FioWorkload is a fio job through fio's nbd engine (libnbd), time-based
// over the suite's region, reads and writes reported together.
type FioWorkload struct {
	ID   string
	Desc string
	// RW is fio's --rw: randread, randwrite, randrw, read, write.
	RW         string
	BlockBytes int
	IODepth    int
	// NumJobs is the number of fio jobs, each with its own NBD
	// connection, over disjoint slices of the region (default 1).
	NumJobs int
	// ReadPercent is the share of reads of a mixed workload.
	ReadPercent int
	// Fsync, when set, has fio send a flush after every Fsync writes
	// (fio's fsync=; its nbd engine sends NBD_CMD_FLUSH). At an iodepth
	// of 1 a write waits for the flush of the one before. IOPS and latency
	// count the writes; a flush's time shows in the IOPS, not in the
	// latency (fio does not report the flushes of an async engine).
	Fsync int
	// WorkingSetBytes, when set, confines the workload to the first this
	// many bytes of the region: a working set that a cache can hold.
	WorkingSetBytes uint64
	// Runtime, when set, replaces the suite's runtime.
	Runtime time.Duration
	// TimelineInterval, when set, records IOPS over time at this
	// resolution (fio's IOPS log, averaged over each interval).
	TimelineInterval time.Duration
	// Window, when set (a multiple of TimelineInterval), reports IOPS per
	// window of the run too (Result.WindowIOPS): per minute, for a run of
	// minutes that must not slow down.
	Window time.Duration
}

func (w *FioWorkload) Name() string        { return w.ID }
func (w *FioWorkload) Description() string { return w.Desc }

func (w *FioWorkload) Params() map[string]any {
	p := map[string]any{"rw": w.RW, "block_bytes": w.BlockBytes, "iodepth": w.IODepth, "numjobs": w.jobs()}
	if w.ReadPercent > 0 {
		p["read_percent"] = w.ReadPercent
	}
	if w.Fsync > 0 {
		p["fsync"] = w.Fsync
	}
	if w.WorkingSetBytes > 0 {
		p["working_set_bytes"] = w.WorkingSetBytes
	}
	if w.Runtime > 0 {
		p["runtime_s"] = w.Runtime.Seconds()
	}
	if w.TimelineInterval > 0 {
		p["timeline_interval_s"] = w.TimelineInterval.Seconds()
	}
	if w.Window > 0 {
		p["window_s"] = w.Window.Seconds()
	}
	return p
}

func (w *FioWorkload) jobs() int { return max(w.NumJobs, 1) }

func (w *FioWorkload) Supports(t *Target) error { return nil }

func (w *FioWorkload) Planned(s *Suite) time.Duration { return s.Ramp + w.runtime(s) + time.Second }

func (w *FioWorkload) runtime(s *Suite) time.Duration {
	if w.Runtime > 0 {
		return w.Runtime
	}
	return s.Runtime
}

// region is the part of the export the workload uses.
func (w *FioWorkload) region(s *Suite) uint64 {
	if w.WorkingSetBytes > 0 {
		return min(w.WorkingSetBytes, s.RegionBytes)
	}
	return s.RegionBytes
}

// args returns fio's command line against uri over region bytes; with
// a timeline, fio writes its IOPS log to files named iopsLog_iops.N.log.
func (w *FioWorkload) args(uri string, region uint64, runtime, ramp time.Duration, iopsLog string) []string {
	jobs := w.jobs()
	slice := region / uint64(jobs) / uint64(w.BlockBytes) * uint64(w.BlockBytes)
	a := []string{
		"--name=" + w.ID, "--ioengine=nbd", "--uri=" + uri,
		"--rw=" + w.RW, fmt.Sprintf("--bs=%d", w.BlockBytes), fmt.Sprintf("--iodepth=%d", w.IODepth),
		fmt.Sprintf("--size=%d", slice),
		"--time_based", fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()),
		"--output-format=json", "--lat_percentiles=1", "--percentile_list=" + fioPercentiles,
		"--unified_rw_reporting=mixed", "--group_reporting",
	}
	if ramp > 0 {
		a = append(a, fmt.Sprintf("--ramp_time=%dms", ramp.Milliseconds()))
	}
	if jobs > 1 {
		a = append(a, fmt.Sprintf("--numjobs=%d", jobs), fmt.Sprintf("--offset_increment=%d", slice))
	}
	if w.ReadPercent > 0 {
		a = append(a, fmt.Sprintf("--rwmixread=%d", w.ReadPercent))
	}
	if w.Fsync > 0 {
		a = append(a, fmt.Sprintf("--fsync=%d", w.Fsync))
	}
	if w.TimelineInterval > 0 && iopsLog != "" {
		a = append(a, "--write_iops_log="+iopsLog, fmt.Sprintf("--log_avg_msec=%d", w.TimelineInterval.Milliseconds()))
	}
	return a
}

func (w *FioWorkload) Run(ctx context.Context, env *runEnv, t *Target) (*Result, error) {
	s := env.suite
	base := filepath.Join("fio", fmt.Sprintf("%s-%s", t.Name, w.ID))
	var iopsLog string
	if w.TimelineInterval > 0 {
		iopsLog = base
		// A log an earlier run left in the output directory must not be
		// read as this run's.
		old, _ := filepath.Glob(filepath.Join(env.outDir, base+"_iops.*.log"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	args := w.args(t.URI, w.region(s), w.runtime(s), s.Ramp, iopsLog)
	raw := base + ".json"
	r := &Result{Workload: w.ID, Target: t.Name, Engine: "fio", Path: "nbd", Files: []string{raw}}
	var m *measurement
	out, err := runFio(ctx, env, args, filepath.Join(env.outDir, raw), s.Ramp, func() {
		m = env.measure(ctx, t, w.ID, w.runtime(s))
	})
	var fr *fioResult
	if err == nil {
		fr, err = parseFioJSON(out)
	}
	if err == nil {
		env.noteFioVersion(fr.Version)
		r.DurationS = fr.RuntimeS
		r.Ops, r.Bytes, r.IOPS, r.MBps = fr.Ops, fr.IOBytes, fr.IOPS, fr.BytesPerS/1e6
		lat := fr.Latency
		r.Latency = &lat
		cpu := fr.ClientCPU
		r.ClientCPUPercent = &cpu
	}
	if err == nil && iopsLog != "" {
		var logs []string
		r.Timeline, logs, err = readIOPSLogs(env.outDir, iopsLog, w.TimelineInterval)
		r.Files = append(r.Files, logs...)
		if err == nil && w.Window > 0 {
			r.WindowS, r.WindowIOPS = w.Window.Seconds(), r.Timeline.windows(w.Window)
		}
	}
	if m != nil {
		m.finish(r)
	}
	return r, err
}

// runFio runs fio with args, saves its output to rawPath, and returns
// it. atMeasureStart is called once the ramp is over (fio does not
// count the ramp in its results, so neither does the CPU account).
func runFio(ctx context.Context, env *runEnv, args []string, rawPath string, ramp time.Duration, atMeasureStart func()) ([]byte, error) {
	cmd := exec.CommandContext(ctx, env.cfg.FioBinary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// fio writes its verify and state files into the working directory.
	cmd.Dir = env.outDir
	env.log.Debug("running fio", "args", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fio: %w", err)
	}
	rampDone := time.NewTimer(ramp)
	defer rampDone.Stop()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case <-rampDone.C:
		atMeasureStart()
		err = <-waited
	case err = <-waited:
		atMeasureStart()
	}
	if werr := os.WriteFile(rawPath, stdout.Bytes(), 0o644); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("fio %s: %w: %s", strings.Join(args[:1], " "), err, truncate(stderr.String()+stdout.String(), 1500))
	}
	return stdout.Bytes(), nil
}

// fill writes the whole region with 1 MiB sequential writes, so reads
// hit data rather than holes.
func fill(ctx context.Context, env *runEnv, t *Target) (*fioResult, error) {
	args := []string{
		"--name=fill", "--ioengine=nbd", "--uri=" + t.URI, "--rw=write", "--bs=1M", "--iodepth=8",
		fmt.Sprintf("--size=%d", env.suite.RegionBytes), "--output-format=json",
	}
	out, err := runFio(ctx, env, args, filepath.Join(env.outDir, "fio", t.Name+"-fill.json"), 0, func() {})
	if err != nil {
		return nil, err
	}
	return parseFioJSON(out)
}

func (env *runEnv) noteFioVersion(v string) {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.fioVersion == "" {
		env.fioVersion = v
	}
}
