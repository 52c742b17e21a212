package bench

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Metric is a number of a Result that a goal compares.
type Metric string

// Metrics goals compare.
const (
	MetricIOPS  Metric = "iops"
	MetricMBps  Metric = "mb_per_s"
	MetricP50Us Metric = "p50_us"
	MetricP99Us Metric = "p99_us"
	// MetricCPUPerGB is the CPU seconds all of the target's processes
	// spent per GB (10^9 bytes) the workload moved.
	MetricCPUPerGB Metric = "cpu_s_per_gb"
	// MetricFirstWindowIOPS and MetricLastWindowIOPS are the IOPS of the
	// first and the last whole window of a workload with windows
	// (Result.WindowIOPS).
	MetricFirstWindowIOPS Metric = "first_window_iops"
	MetricLastWindowIOPS  Metric = "last_window_iops"
	// MetricSparseCopyS and MetricDataCopyS are the median seconds of a
	// copy workload's copies (Result.Copy): of the sparse volume whole,
	// and of the data it holds alone.
	MetricSparseCopyS Metric = "sparse_copy_s"
	MetricDataCopyS   Metric = "data_copy_s"
)

// value returns the metric of a result, or why it has none.
func (m Metric) value(r *Result) (float64, string) {
	switch {
	case r == nil:
		return 0, "did not run"
	case r.Error != "":
		return 0, r.Error
	case r.Skipped != "":
		return 0, "skipped: " + r.Skipped
	}
	switch m {
	case MetricIOPS:
		return r.IOPS, ""
	case MetricMBps:
		return r.MBps, ""
	case MetricP50Us, MetricP99Us:
		if r.Latency == nil {
			return 0, "no latency measured"
		}
		if m == MetricP50Us {
			return r.Latency.P50Us, ""
		}
		return r.Latency.P99Us, ""
	case MetricCPUPerGB:
		if r.CPUSecondsPerGB == nil {
			return 0, "the target's CPU time was not measured"
		}
		return *r.CPUSecondsPerGB, ""
	case MetricFirstWindowIOPS, MetricLastWindowIOPS:
		if len(r.WindowIOPS) == 0 {
			return 0, "no whole window of IOPS was recorded"
		}
		if m == MetricFirstWindowIOPS {
			return r.WindowIOPS[0], ""
		}
		return r.WindowIOPS[len(r.WindowIOPS)-1], ""
	case MetricSparseCopyS, MetricDataCopyS:
		c := r.Copy
		if c == nil || len(c.SparseS) == 0 || len(c.DataS) == 0 {
			return 0, "no copy was timed"
		}
		if m == MetricSparseCopyS {
			return c.SparseMedianS, ""
		}
		return c.DataMedianS, ""
	}
	return 0, fmt.Sprintf("no metric %q", m)
}

// higherIsBetter says which way the metric improves: a goal on it is a
// floor (at least) when it does, else a ceiling (at most).
func (m Metric) higherIsBetter() bool {
	switch m {
	case MetricIOPS, MetricMBps, MetricFirstWindowIOPS, MetricLastWindowIOPS:
		return true
	}
	return false
}

// unit is how a value of the metric is written.
func (m Metric) unit() string {
	switch m {
	case MetricIOPS, MetricFirstWindowIOPS, MetricLastWindowIOPS:
		return "IOPS"
	case MetricMBps:
		return "MB/s"
	case MetricP50Us, MetricP99Us:
		return "µs"
	case MetricCPUPerGB:
		return "s/GB"
	case MetricSparseCopyS, MetricDataCopyS:
		return "s"
	}
	return string(m)
}

// What a goal compares its subject with, besides a baseline's name.
const (
	// BaselineSelf compares the subject with its own BaselineMetric on
	// the same workload (p99 ≤ 10× its own p50).
	BaselineSelf = "self"
	// BaselineNone makes the goal an absolute threshold on the metric
	// (CPU s/GB ≤ 6).
	BaselineNone = ""
)

// Goal is a performance target on one workload. It compares the
// subject's Metric with one of:
//   - a baseline's Metric (Baseline names the baseline): a ratio;
//   - the subject's own BaselineMetric on the same workload (Baseline is
//     BaselineSelf): a ratio;
//   - nothing (Baseline is BaselineNone): the metric's own value.
//
// The ratio or the value must be at least Threshold when the metric is
// better higher (IOPS, MB/s), at most when it is better lower (latency,
// CPU). Goals are reported, never gated.
type Goal struct {
	Name string `json:"name"`
	// Issue is the issue that set the goal.
	Issue    int    `json:"issue"`
	Workload string `json:"workload"`
	Metric   Metric `json:"metric"`
	Baseline string `json:"baseline,omitempty"`
	// BaselineMetric is the metric of the baseline's result compared
	// (default Metric).
	BaselineMetric Metric  `json:"baseline_metric,omitempty"`
	Threshold      float64 `json:"threshold"`
}

func (g Goal) baselineMetric() Metric {
	if g.BaselineMetric != "" {
		return g.BaselineMetric
	}
	return g.Metric
}

// goals are the performance goals of issue 16 (the write data plane) and
// issue 17 (reads), mostly against qemu-nbd --cache=none on the same
// machine: the device's limit through NBD. Ballast keeps two copies on
// the one disk the baselines have to themselves, so about 0.5× is its
// limit on writes. The copy goal of issue 17 compares two copies Ballast
// serves: a sparse volume copied whole with the holes its block status
// reports skipped, against its data alone.
var goals = []Goal{
	{Name: "4k randwrite QD32 IOPS ≥ 0.4× cache=none", Issue: 16, Workload: "4k-randwrite-qd32",
		Metric: MetricIOPS, Baseline: BaselineCacheNone, Threshold: 0.4},
	{Name: "4k randwrite QD32 IOPS ≥ 2× writethrough", Issue: 16, Workload: "4k-randwrite-qd32",
		Metric: MetricIOPS, Baseline: BaselineWritethrough, Threshold: 2},
	{Name: "4k randwrite QD1 p50 ≤ 2.5× cache=none's", Issue: 16, Workload: "4k-randwrite-qd1",
		Metric: MetricP50Us, Baseline: BaselineCacheNone, Threshold: 2.5},
	{Name: "4k randwrite QD1 p99 ≤ 10× its own p50", Issue: 16, Workload: "4k-randwrite-qd1",
		Metric: MetricP99Us, Baseline: BaselineSelf, BaselineMetric: MetricP50Us, Threshold: 10},
	{Name: "1M sequential write QD8 MB/s ≥ 0.4× cache=none", Issue: 16, Workload: "1m-write-qd8",
		Metric: MetricMBps, Baseline: BaselineCacheNone, Threshold: 0.4},
	{Name: "4k write + flush QD1 IOPS ≥ 0.5× cache=none", Issue: 16, Workload: "4k-randwrite-flush-qd1",
		Metric: MetricIOPS, Baseline: BaselineCacheNone, Threshold: 0.5},
	{Name: "CPU s per GB written (1M sequential write) ≤ 6", Issue: 16, Workload: "1m-write-qd8",
		Metric: MetricCPUPerGB, Baseline: BaselineNone, Threshold: 6},
	{Name: "sustained 4k randwrite QD32: last minute's IOPS ≥ 0.8× the first's", Issue: 16, Workload: "sustain-4k-randwrite-qd32",
		Metric: MetricLastWindowIOPS, Baseline: BaselineSelf, BaselineMetric: MetricFirstWindowIOPS, Threshold: 0.8},

	{Name: "4k randread QD32 IOPS, working set in cache, ≥ 0.8× cache=none", Issue: 17, Workload: "4k-randread-qd32-hot",
		Metric: MetricIOPS, Baseline: BaselineCacheNone, Threshold: 0.8},
	{Name: "4k randread QD32 IOPS, reads missing the cache, ≥ 0.3× cache=none", Issue: 17, Workload: "4k-randread-qd32",
		Metric: MetricIOPS, Baseline: BaselineCacheNone, Threshold: 0.3},
	{Name: "4k randread QD1 p50 ≤ 2× cache=none's", Issue: 17, Workload: "4k-randread-qd1",
		Metric: MetricP50Us, Baseline: BaselineCacheNone, Threshold: 2},
	{Name: "4k randread QD1 p99 ≤ 10× its own p50", Issue: 17, Workload: "4k-randread-qd1",
		Metric: MetricP99Us, Baseline: BaselineSelf, BaselineMetric: MetricP50Us, Threshold: 10},
	{Name: "1M sequential read QD8 MB/s ≥ 0.7× cache=none", Issue: 17, Workload: "1m-read-qd8",
		Metric: MetricMBps, Baseline: BaselineCacheNone, Threshold: 0.7},
	{Name: "nbdcopy of a 4 GiB volume holding 512 MiB ≤ 1.5× copying the 512 MiB alone", Issue: 17, Workload: sparseCopyID,
		Metric: MetricSparseCopyS, Baseline: BaselineSelf, BaselineMetric: MetricDataCopyS, Threshold: 1.5},
}

// Goal statuses.
const (
	GoalMet     = "met"
	GoalMissed  = "missed"
	GoalUnknown = "unknown"
)

// GoalResult is a goal evaluated for one subject.
type GoalResult struct {
	Goal
	Subject string `json:"subject"`
	Status  string `json:"status"`
	// Value is the subject's metric, and BaselineValue what it was
	// compared with (a baseline's, or the subject's own BaselineMetric).
	Value         *float64 `json:"value,omitempty"`
	BaselineValue *float64 `json:"baseline_value,omitempty"`
	// Ratio is Value over BaselineValue; nil for an absolute goal.
	Ratio *float64 `json:"ratio,omitempty"`
	// Note says by how much a missed goal is missed, or why it is unknown.
	Note string `json:"note"`
	// Profiles are the CPU profile summaries of the subject on the goal's
	// workload, when taken.
	Profiles []string `json:"profiles,omitempty"`
}

// evaluate checks a goal for subject against the results.
func (g Goal) evaluate(subject string, find func(workload, target string) *Result) GoalResult {
	gr := GoalResult{Goal: g, Subject: subject, Status: GoalUnknown}
	s := find(g.Workload, subject)
	sv, why := g.Metric.value(s)
	if why != "" {
		gr.Note = fmt.Sprintf("no %s of %s on %s: %s", g.Metric, subject, g.Workload, why)
		return gr
	}
	gr.Value = &sv
	for _, f := range s.Files {
		if strings.HasSuffix(f, ".txt") {
			gr.Profiles = append(gr.Profiles, f)
		}
	}
	measured := sv
	if g.Baseline != BaselineNone {
		baseline, b := g.Baseline, s
		if g.Baseline == BaselineSelf {
			baseline = subject
		} else {
			b = find(g.Workload, g.Baseline)
		}
		bv, why := g.baselineMetric().value(b)
		if why != "" {
			gr.Note = fmt.Sprintf("no %s of %s on %s: %s", g.baselineMetric(), baseline, g.Workload, why)
			return gr
		}
		gr.BaselineValue = &bv
		gr.Ratio = ratio(sv, bv)
		if gr.Ratio == nil {
			gr.Note = fmt.Sprintf("%s of %s measured 0", g.baselineMetric(), baseline)
			return gr
		}
		measured = *gr.Ratio
	}
	floor := g.Metric.higherIsBetter()
	if (floor && measured >= g.Threshold) || (!floor && measured <= g.Threshold) {
		gr.Status = GoalMet
	} else {
		gr.Status = GoalMissed
	}
	gr.Note = g.measuredText(measured)
	if gr.Status == GoalMissed {
		word := "short"
		if !floor {
			word = "over"
		}
		gr.Note += fmt.Sprintf(": %.0f%% %s", shortfall(measured, g.Threshold, floor), word)
	}
	if (g.Metric == MetricFirstWindowIOPS || g.Metric == MetricLastWindowIOPS) && s.WindowS > 0 {
		// The quick suite's windows are seconds, not minutes.
		gr.Note += fmt.Sprintf("; %d windows of %s", len(s.WindowIOPS), humanDuration(time.Duration(s.WindowS*float64(time.Second))))
	}
	return gr
}

// measuredText writes a measurement beside the goal: "0.35× (goal ≥
// 0.4×)" for a ratio, "12.3 s/GB (goal ≤ 6 s/GB)" for a value.
func (g Goal) measuredText(v float64) string {
	cmp := "≥"
	if !g.Metric.higherIsBetter() {
		cmp = "≤"
	}
	if g.Baseline == BaselineNone {
		u := g.Metric.unit()
		return fmt.Sprintf("%.3g %s (goal %s %.3g %s)", v, u, cmp, g.Threshold, u)
	}
	return fmt.Sprintf("%.2f× (goal %s %.3g×)", v, cmp, g.Threshold)
}

// shortfall is by how much (percent of the goal) a measurement misses
// it: for a floor, how far below; for a ceiling, how far above. Zero
// when met.
func shortfall(r, threshold float64, floor bool) float64 {
	if threshold == 0 {
		return 0
	}
	if floor {
		return math.Max(0, (1-r/threshold)*100)
	}
	return math.Max(0, (r/threshold-1)*100)
}
