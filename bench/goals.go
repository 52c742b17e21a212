package bench

import (
	"fmt"
	"math"
)

// Metric is a number of a Result that a goal compares.
type Metric string

// Metrics goals compare.
const (
	MetricIOPS  Metric = "iops"
	MetricMBps  Metric = "mb_per_s"
	MetricP50Us Metric = "p50_us"
	MetricP99Us Metric = "p99_us"
)

// value returns the metric of a result, or false when it has none.
func (m Metric) value(r *Result) (float64, bool) {
	if r == nil || r.Error != "" || r.Skipped != "" {
		return 0, false
	}
	switch m {
	case MetricIOPS:
		return r.IOPS, true
	case MetricMBps:
		return r.MBps, true
	case MetricP50Us, MetricP99Us:
		if r.Latency == nil {
			return 0, false
		}
		if m == MetricP50Us {
			return r.Latency.P50Us, true
		}
		return r.Latency.P99Us, true
	}
	return 0, false
}

// higherIsBetter says which way the metric improves.
func (m Metric) higherIsBetter() bool { return m == MetricIOPS || m == MetricMBps }

// Goal is a performance target: the ratio of a subject's metric to a
// baseline's on one workload, at least (or, for latency, at most)
// Threshold. Goals are reported, never gated.
type Goal struct {
	Name      string  `json:"name"`
	Workload  string  `json:"workload"`
	Metric    Metric  `json:"metric"`
	Baseline  string  `json:"baseline"`
	Threshold float64 `json:"threshold"`
}

// goals are the targets: with two durable copies, against qemu-nbd
// writethrough on the same machine.
var goals = []Goal{
	{Name: "4k randwrite QD32 IOPS ≥ 0.6× writethrough", Workload: "4k-randwrite-qd32", Metric: MetricIOPS, Baseline: BaselineWritethrough, Threshold: 0.6},
	{Name: "4k randread QD32 IOPS ≥ 0.8× writethrough", Workload: "4k-randread-qd32", Metric: MetricIOPS, Baseline: BaselineWritethrough, Threshold: 0.8},
	{Name: "4k randwrite QD1 p50 latency ≤ 2× writethrough", Workload: "4k-randwrite-qd1", Metric: MetricP50Us, Baseline: BaselineWritethrough, Threshold: 2},
	{Name: "1M sequential write MB/s ≥ 0.7× writethrough", Workload: "1m-write-qd8", Metric: MetricMBps, Baseline: BaselineWritethrough, Threshold: 0.7},
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
	Subject string   `json:"subject"`
	Status  string   `json:"status"`
	Ratio   *float64 `json:"ratio,omitempty"`
	// Note says by how much a missed goal is missed, or why it is unknown.
	Note string `json:"note"`
	// Profiles are the CPU profile summaries of the subject on the goal's
	// workload, when taken.
	Profiles []string `json:"profiles,omitempty"`
}

// evaluate checks a goal for subject against the results.
func (g Goal) evaluate(subject string, find func(workload, target string) *Result) GoalResult {
	gr := GoalResult{Goal: g, Subject: subject, Status: GoalUnknown}
	s, b := find(g.Workload, subject), find(g.Workload, g.Baseline)
	sv, sok := g.Metric.value(s)
	bv, bok := g.Metric.value(b)
	switch {
	case s == nil || b == nil:
		gr.Note = fmt.Sprintf("workload %s did not run against both %s and %s", g.Workload, subject, g.Baseline)
		return gr
	case !sok || !bok:
		gr.Note = "no measurement: " + firstNonEmpty(s.Error, s.Skipped, b.Error, b.Skipped)
		return gr
	}
	gr.Ratio = ratio(sv, bv)
	if gr.Ratio == nil {
		gr.Note = "the baseline measured 0"
		return gr
	}
	if s != nil {
		for _, f := range s.Files {
			if len(f) > 4 && f[len(f)-4:] == ".txt" {
				gr.Profiles = append(gr.Profiles, f)
			}
		}
	}
	r := *gr.Ratio
	if g.Metric.higherIsBetter() {
		if r >= g.Threshold {
			gr.Status, gr.Note = GoalMet, fmt.Sprintf("%.2f× (goal ≥ %.2g×)", r, g.Threshold)
		} else {
			gr.Status = GoalMissed
			gr.Note = fmt.Sprintf("%.2f× (goal ≥ %.2g×): %.0f%% short", r, g.Threshold, shortfall(r, g.Threshold, true))
		}
	} else {
		if r <= g.Threshold {
			gr.Status, gr.Note = GoalMet, fmt.Sprintf("%.2f× (goal ≤ %.2g×)", r, g.Threshold)
		} else {
			gr.Status = GoalMissed
			gr.Note = fmt.Sprintf("%.2f× (goal ≤ %.2g×): %.0f%% over", r, g.Threshold, shortfall(r, g.Threshold, false))
		}
	}
	return gr
}

// shortfall is by how much (percent of the goal) a ratio misses it: for a
// floor, how far below; for a ceiling, how far above. Zero when met.
func shortfall(r, threshold float64, floor bool) float64 {
	if threshold == 0 {
		return 0
	}
	if floor {
		return math.Max(0, (1-r/threshold)*100)
	}
	return math.Max(0, (r/threshold-1)*100)
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
