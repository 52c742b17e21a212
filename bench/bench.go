package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Run runs a suite against every target and writes the results into
// cfg.OutDir. It returns the report even when some workloads failed (each
// failure is in its result); an error means the run could not be made or
// its outputs written.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	suite, _ := cfg.suite() // validated
	suite.only(cfg.Workloads)
	return run(ctx, cfg, suite)
}

// run runs suite with a validated configuration.
func run(ctx context.Context, cfg Config, suite *Suite) (*Report, error) {
	began := time.Now()
	log := cfg.Logger
	if _, err := exec.LookPath(cfg.FioBinary); err != nil {
		return nil, fmt.Errorf("bench: fio is needed (Debian package fio): %w", err)
	}
	if !cfg.NoBaselines && !suite.SubjectOnly {
		if _, err := exec.LookPath(cfg.QemuNBDBinary); err != nil {
			return nil, fmt.Errorf("bench: qemu-nbd is needed for the baselines (Debian package qemu-utils; or --no-baselines): %w", err)
		}
	}
	outDir, err := filepath.Abs(cfg.OutDir)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	for _, d := range []string{outDir, filepath.Join(outDir, "fio")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("bench: output directory: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: work directory: %w", err)
	}
	work, err := os.MkdirTemp(cfg.WorkDir, "ballast-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: work directory: %w", err)
	}
	if cfg.KeepWorkDir {
		log.Info("keeping the work directory", "dir", work)
	} else {
		defer os.RemoveAll(work)
	}

	env := &runEnv{cfg: &cfg, suite: suite, outDir: outDir, log: log}
	rep := &Report{
		Metadata: collectMetadata(ctx, &cfg, suite.Name, work),
		Suite: SuiteInfo{Name: suite.Name, RegionBytes: suite.RegionBytes, RegionNote: suite.RegionNote,
			RuntimeS: suite.Runtime.Seconds(), RampS: suite.Ramp.Seconds(),
			JournalBytes: cmp.Or(cfg.JournalBytes, DefaultJournalBytes), JournalBytesAssumed: cfg.JournalBytes == 0},
	}
	for _, w := range suite.Workloads {
		rep.Workloads = append(rep.Workloads, WorkloadInfo{Name: w.Name(), Description: w.Description(), Params: w.Params()})
	}

	// Baselines go first: each is stopped (and its file deleted) before
	// the next target starts, and the rack, whose background work (flushes
	// to the sleds, compaction) outlives a workload, comes last.
	providers := plan(&cfg, work, suite)
	var steps int
	var total time.Duration
	for _, p := range providers {
		steps += 2 + len(suite.Workloads)
		total += p.startupEstimate() + fillEstimate(suite.RegionBytes)
		if flushes(p) {
			steps++
			total += flushEstimate(suite.RegionBytes)
		}
		for _, w := range suite.Workloads {
			total += w.Planned(suite)
		}
	}
	prog := newProgress(cfg.Progress, steps, total)
	defer prog.finish()
	env.log = prog.logger(log)

	for _, p := range providers {
		if ctx.Err() != nil {
			break
		}
		info, results := runTarget(ctx, env, prog, p, suite)
		rep.Targets = append(rep.Targets, info)
		rep.Results = append(rep.Results, results...)
	}
	if v := env.fioVersion; v != "" {
		rep.Metadata.FioVersion = v
	}
	rep.evaluateGoals()
	rep.Metadata.DurationS = time.Since(began).Seconds()
	prog.finish()
	prog = nil
	// An interrupted run still writes what it measured.
	if err := rep.writeOutputs(outDir); err != nil {
		return rep, fmt.Errorf("bench: %w", err)
	}
	return rep, ctx.Err()
}

// plan returns the providers of the targets in the order they run.
func plan(cfg *Config, work string, suite *Suite) []provider {
	size := suite.RegionBytes + suite.RegionBytes/4
	var ps []provider
	if !cfg.NoBaselines && !suite.SubjectOnly {
		for _, name := range baselineNames {
			ps = append(ps, newQemuNBD(name, cfg.QemuNBDBinary, filepath.Join(work, "baselines"), size))
		}
	}
	if len(cfg.Targets) > 0 {
		for _, t := range cfg.Targets {
			ps = append(ps, &external{spec: t})
		}
		return ps
	}
	return append(ps, &rack{kind: cfg.Rack, bin: cfg.BallastBinary, dir: filepath.Join(work, "rack"),
		sleds: max(cfg.RackSleds, 0), sizeBytes: size, journalBytes: cfg.JournalBytes, readCache: cfg.ReadCache, log: cfg.Logger})
}

// flushes says whether p's target is a Ballast rack whose head nodes
// the harness asks, after the fill, whether its data is on the sleds.
func flushes(p provider) bool {
	switch p := p.(type) {
	case *rack:
		return true
	case *external:
		return len(p.spec.HeadNodes) > 0
	}
	return false
}

func fillEstimate(region uint64) time.Duration {
	return time.Duration(float64(region)/100e6*float64(time.Second)) + time.Second
}

// runTarget starts a target, fills its region, runs every workload
// against it and stops it. A target that cannot start or be filled gets
// an error result for every workload.
func runTarget(ctx context.Context, env *runEnv, prog *progress, p provider, suite *Suite) (TargetInfo, []Result) {
	log := env.log.With("target", p.name())
	fail := func(info TargetInfo, err error) (TargetInfo, []Result) {
		info.Error = err.Error()
		log.Error("target failed", "err", err)
		var rs []Result
		for _, w := range suite.Workloads {
			rs = append(rs, Result{Workload: w.Name(), Target: p.name(), Error: "target failed: " + err.Error()})
		}
		return info, rs
	}
	info := TargetInfo{Name: p.name(), Role: p.role()}
	prog.begin(p.name()+": starting", p.startupEstimate())
	began := time.Now()
	t, err := p.start(ctx)
	prog.end()
	log.Debug("target started", "took", time.Since(began).Round(time.Millisecond))
	defer func() {
		began := time.Now()
		if err := p.stop(); err != nil {
			log.Warn("stopping target", "err", err)
		}
		log.Debug("target stopped", "took", time.Since(began).Round(time.Millisecond))
	}()
	if err != nil {
		return fail(info, err)
	}
	info = t.info()
	log.Info("target is up", "uri", t.URI)

	prog.begin(p.name()+": filling "+humanBytes(suite.RegionBytes), fillEstimate(suite.RegionBytes))
	began = time.Now()
	fr, err := fill(ctx, env, t)
	prog.end()
	if err != nil {
		return fail(info, fmt.Errorf("fill: %w", err))
	}
	log.Info("filled", "mb_per_s", fr.BytesPerS/1e6, "took", time.Since(began).Round(time.Millisecond))

	// The workloads measure the steady state: the fill flushed to the
	// sleds, not a volume whose data all sits in the head nodes' logs.
	if len(t.HeadNodes) > 0 {
		prog.begin(p.name()+": waiting for the fill to reach the sleds", flushEstimate(suite.RegionBytes))
		timeout := flushTimeout(env.cfg, suite.RegionBytes)
		fw := waitFlushed(ctx, t.HeadNodes, timeout, log)
		prog.end()
		info.Flush = &fw
		switch fw.Status {
		case FlushDone:
			log.Info("the fill is flushed to the sleds", "took", time.Duration(fw.WaitedS*float64(time.Second)).Round(time.Second))
		case FlushNoSleds:
			log.Info("no flush to wait for", "why", fw.Note)
		default:
			log.Warn("the fill was not flushed to the sleds in time; measuring anyway", "why", fw.Note)
		}
	}

	var results []Result
	for _, w := range suite.Workloads {
		if ctx.Err() != nil {
			break
		}
		prog.begin(p.name()+": "+w.Name(), w.Planned(suite))
		began := time.Now()
		results = append(results, runWorkload(ctx, env, w, t))
		prog.end()
		log.Debug("workload finished", "workload", w.Name(), "took", time.Since(began).Round(time.Millisecond))
	}
	return info, results
}

// runWorkload runs one workload on one target and never fails: what went
// wrong is in the result.
func runWorkload(ctx context.Context, env *runEnv, w Workload, t *Target) Result {
	if err := w.Supports(t); err != nil {
		return Result{Workload: w.Name(), Target: t.Name, Skipped: err.Error()}
	}
	r, err := w.Run(ctx, env, t)
	if r == nil {
		r = &Result{Workload: w.Name(), Target: t.Name}
	}
	switch {
	case errors.Is(err, ErrNotSupported):
		r.Skipped = err.Error()
	case err != nil:
		r.Error = err.Error()
		env.log.Warn("workload failed", "workload", w.Name(), "target", t.Name, "err", err)
	default:
		env.log.Debug("workload done", "workload", w.Name(), "target", t.Name, "iops", r.IOPS)
	}
	sanitize(r)
	return *r
}

// sanitize makes every number of a result encodable as JSON.
func sanitize(r *Result) {
	for _, f := range []*float64{&r.DurationS, &r.Ops, &r.Bytes, &r.Errors, &r.IOPS, &r.MBps} {
		*f = finite(*f)
	}
	for _, l := range []*Latency{r.Latency, r.ServiceTime} {
		if l == nil {
			continue
		}
		for _, f := range []*float64{&l.MeanUs, &l.MinUs, &l.P50Us, &l.P90Us, &l.P99Us, &l.P999Us, &l.MaxUs} {
			*f = finite(*f)
		}
		for i := range l.CDF {
			l.CDF[i].LatencyUs = finite(l.CDF[i].LatencyUs)
		}
	}
	for i := range r.WindowIOPS {
		r.WindowIOPS[i] = finite(r.WindowIOPS[i])
	}
	if r.Timeline != nil {
		for i := range r.Timeline.IOPS {
			r.Timeline.IOPS[i] = finite(r.Timeline.IOPS[i])
		}
	}
	if c := r.Copy; c != nil {
		for _, f := range []*float64{&c.SparseMedianS, &c.DataMedianS} {
			*f = finite(*f)
		}
		for _, s := range [][]float64{c.SparseS, c.DataS} {
			for i := range s {
				s[i] = finite(s[i])
			}
		}
	}
	for _, p := range []**float64{&r.CPUSeconds, &r.CPUSecondsPerGB, &r.ClientCPUPercent} {
		if *p != nil && finite(**p) != **p {
			*p = nil
		}
	}
}
