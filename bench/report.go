package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Report is everything a run measured; results.json holds it.
type Report struct {
	Metadata  Metadata       `json:"metadata"`
	Suite     SuiteInfo      `json:"suite"`
	Targets   []TargetInfo   `json:"targets"`
	Workloads []WorkloadInfo `json:"workloads"`
	Results   []Result       `json:"results"`
	Goals     []GoalResult   `json:"goals"`
	// Files are the outputs, relative to the output directory.
	Files []string `json:"files"`
}

// SuiteInfo records a suite's sizes.
type SuiteInfo struct {
	Name        string  `json:"name"`
	RegionBytes uint64  `json:"region_bytes"`
	RegionNote  string  `json:"region_note,omitempty"`
	RuntimeS    float64 `json:"runtime_s"`
	RampS       float64 `json:"ramp_s"`
	// JournalBytes is the head-node journal size the sizes assume (the
	// sustain suite's region is four times it); JournalBytesAssumed says
	// it was not given (DefaultJournalBytes).
	JournalBytes        uint64 `json:"journal_bytes"`
	JournalBytesAssumed bool   `json:"journal_bytes_assumed"`
}

// WorkloadInfo records a workload.
type WorkloadInfo struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Params      map[string]any `json:"params"`
}

// Result returns the result of a workload on a target, or nil.
func (r *Report) Result(workload, target string) *Result {
	for i := range r.Results {
		if r.Results[i].Workload == workload && r.Results[i].Target == target {
			return &r.Results[i]
		}
	}
	return nil
}

func (r *Report) targetsByRole(role Role) []string {
	var out []string
	for _, t := range r.Targets {
		if t.Role == role {
			out = append(out, t.Name)
		}
	}
	return out
}

// tableOrder lists targets as the table shows them: subjects, then
// baselines.
func (r *Report) tableOrder() []string {
	return append(r.targetsByRole(RoleSubject), r.targetsByRole(RoleBaseline)...)
}

// evaluateGoals fills in r.Goals for every subject: each goal whose
// workload is in the run and whose baseline ran (or that compares the
// subject with itself, or with a fixed threshold).
func (r *Report) evaluateGoals() {
	r.Goals = nil
	baselines := r.targetsByRole(RoleBaseline)
	for _, s := range r.targetsByRole(RoleSubject) {
		for _, g := range goals {
			if !r.hasWorkload(g.Workload) {
				continue
			}
			if g.Baseline == BaselineSelf || g.Baseline == BaselineNone || slices.Contains(baselines, g.Baseline) {
				r.Goals = append(r.Goals, g.evaluate(s, r.Result))
			}
		}
	}
}

func (r *Report) hasWorkload(name string) bool {
	return slices.ContainsFunc(r.Workloads, func(w WorkloadInfo) bool { return w.Name == name })
}

// goalsElsewhere lists the goals whose workload this run did not have,
// each with the suites that have it.
func (r *Report) goalsElsewhere() []string {
	var out []string
	for _, g := range goals {
		if r.hasWorkload(g.Workload) {
			continue
		}
		var in []string
		for _, name := range SuiteNames() {
			if s, err := suiteByName(name, suiteOptions{}); err == nil && slices.Contains(s.workloadNames(), g.Workload) {
				in = append(in, name)
			}
		}
		where := "no suite"
		switch len(in) {
		case 0:
		case 1:
			where = "suite " + in[0]
		default:
			where = "suites " + strings.Join(in, ", ")
		}
		out = append(out, fmt.Sprintf("%s (issue %d; %s)", g.Name, g.Issue, where))
	}
	return out
}

// Table renders the results as a Markdown table: one row per workload and
// target, with the ratio of IOPS and of median latency to each baseline.
func (r *Report) Table() string {
	var b strings.Builder
	baselines := r.targetsByRole(RoleBaseline)
	b.WriteString("| workload | target | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | CPU s/GB |")
	for _, base := range baselines {
		fmt.Fprintf(&b, " vs %s (IOPS, p50) |", shortName(base))
	}
	b.WriteString("\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for range baselines {
		b.WriteString(" ---: |")
	}
	b.WriteString("\n")
	for _, w := range r.Workloads {
		for _, tn := range r.tableOrder() {
			res := r.Result(w.Name, tn)
			if res == nil || res.Skipped != "" {
				continue
			}
			if res.Error != "" {
				fmt.Fprintf(&b, "| %s | %s | error |  |  |  |  |  |", w.Name, tn)
				for range baselines {
					b.WriteString("  |")
				}
				b.WriteString("\n")
				continue
			}
			lat := res.Latency
			if lat == nil {
				lat = &Latency{}
			}
			iops := fmtIOPS(res.IOPS)
			if res.Copy != nil {
				// A copy has no IOPS of its own to show; its times are
				// in the notes and the goals.
				iops = "—"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |", w.Name, tn,
				iops, fmtMBps(res.MBps), fmtUs(lat.P50Us), fmtUs(lat.P99Us), fmtUs(lat.P999Us), fmtPtr(res.CPUSecondsPerGB, 2))
			for _, base := range baselines {
				br := r.Result(w.Name, base)
				if base == tn || br == nil || br.Error != "" || br.Skipped != "" || br.Latency == nil {
					b.WriteString(" — |")
					continue
				}
				fmt.Fprintf(&b, " %s, %s |", fmtRatio(ratio(res.IOPS, br.IOPS)), fmtRatio(ratio(lat.P50Us, br.Latency.P50Us)))
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// GoalsText lists the goals, one a line.
func (r *Report) GoalsText() string {
	var b strings.Builder
	for _, g := range r.Goals {
		fmt.Fprintf(&b, "- %s: %s %s — %s\n", g.Subject, g.Name, strings.ToUpper(g.Status), g.Note)
	}
	return b.String()
}

// GoalsTable renders the goals as a Markdown table: what each compares,
// the two numbers, and how it came out.
func (r *Report) GoalsTable() string {
	var b strings.Builder
	b.WriteString("| goal | issue | subject | measured | against | status |\n| --- | ---: | --- | ---: | ---: | --- |\n")
	for _, g := range r.Goals {
		measured, against := "—", "—"
		if g.Value != nil {
			measured = fmtMetric(*g.Value, g.Metric)
		}
		switch {
		case g.BaselineValue != nil && g.Baseline == BaselineSelf:
			against = fmt.Sprintf("own %s %s", metricName(g.baselineMetric()), fmtMetric(*g.BaselineValue, g.baselineMetric()))
		case g.BaselineValue != nil:
			against = fmt.Sprintf("%s %s", shortName(g.Baseline), fmtMetric(*g.BaselineValue, g.baselineMetric()))
		case g.Baseline == BaselineNone:
			against = "fixed"
		}
		status := strings.ToUpper(g.Status) + ": " + g.Note
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s |\n", g.Name, g.Issue, g.Subject, measured, against, status)
	}
	return b.String()
}

// metricName is how the goals table names a metric.
func metricName(m Metric) string {
	switch m {
	case MetricP50Us:
		return "p50"
	case MetricP99Us:
		return "p99"
	case MetricFirstWindowIOPS:
		return "first window"
	case MetricLastWindowIOPS:
		return "last window"
	case MetricSparseCopyS:
		return "sparse copy"
	case MetricDataCopyS:
		return "copy of the data alone"
	}
	return m.unit()
}

// fmtMetric writes a value with its unit.
func fmtMetric(v float64, m Metric) string {
	switch m {
	case MetricP50Us, MetricP99Us:
		return fmtUs(v) + " µs"
	case MetricMBps:
		return fmtMBps(v) + " MB/s"
	case MetricCPUPerGB:
		return fmt.Sprintf("%.2f s/GB", v)
	case MetricSparseCopyS, MetricDataCopyS:
		return fmt.Sprintf("%.2f s", v)
	}
	return fmtIOPS(v) + " IOPS"
}

// Markdown is results.md: the table, the goals, the workloads, what was
// skipped or failed, and where and how it was measured.
func (r *Report) Markdown() string {
	var b strings.Builder
	m := r.Metadata
	fmt.Fprintf(&b, "# Ballast benchmark: suite %s\n\n", r.Suite.Name)
	fmt.Fprintf(&b, "`%s`, %s, %.0f s. %s\n\n", strings.Join(m.CommandLine, " "), m.Date, m.DurationS, r.MachineLine())
	b.WriteString(r.Table())
	b.WriteString("\nLatency is from submission to completion (fio's lat; the Go load generator's open loop counts from each request's intended send time). ")
	b.WriteString("Ratios are the target's over the baseline's: above 1 is more IOPS, or a slower median. ")
	b.WriteString("CPU s/GB is the CPU time of the target's processes per 10^9 bytes moved.\n\n")
	if len(r.Goals) > 0 {
		b.WriteString("## Goals\n\n")
		b.WriteString("Goals are reported, never enforced. A ratio is the subject's number over the one it is compared with.\n\n")
		b.WriteString(r.GoalsTable())
		b.WriteString("\n")
	}
	if other := r.goalsElsewhere(); len(other) > 0 {
		b.WriteString("Goals this suite does not measure: " + strings.Join(other, "; ") + ".\n\n")
	}
	b.WriteString("## Targets\n\n")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "- **%s** (%s): %s", t.Name, t.Role, t.Description)
		if t.Error != "" {
			fmt.Fprintf(&b, " — failed: %s", t.Error)
		}
		if f := t.Flush; f != nil {
			b.WriteString(" — before the workloads: " + flushText(f, "the fill"))
		}
		b.WriteString("\n")
	}
	if s := r.Suite; s.RegionNote != "" {
		fmt.Fprintf(&b, "\nRegion: %s, %s.\n", humanBytes(s.RegionBytes), s.RegionNote)
	}
	b.WriteString("\n## Workloads\n\n")
	for _, w := range r.Workloads {
		fmt.Fprintf(&b, "- `%s`: %s\n", w.Name, w.Description)
	}
	var notes []string
	for _, res := range r.Results {
		switch {
		case res.Error != "":
			notes = append(notes, fmt.Sprintf("- %s on %s failed: %s", res.Workload, res.Target, res.Error))
		case res.Skipped != "":
			notes = append(notes, fmt.Sprintf("- %s on %s skipped: %s", res.Workload, res.Target, res.Skipped))
		case res.Engine == "go":
			notes = append(notes, fmt.Sprintf("- %s on %s went through %s%s", res.Workload, res.Target, pathName(res.Path), eventsNote(res)))
		case len(res.WindowIOPS) > 0:
			notes = append(notes, fmt.Sprintf("- %s on %s: %s", res.Workload, res.Target, windowsText(res)))
		case res.Copy != nil:
			notes = append(notes, fmt.Sprintf("- %s on %s: %s", res.Workload, res.Target, copyText(res.Copy)))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		b.WriteString(strings.Join(notes, "\n"))
		b.WriteString("\n")
	}
	return b.String()
}

// flushText says how the wait for what (the fill) to reach the sleds
// went.
func flushText(f *FlushWait, what string) string {
	switch f.Status {
	case FlushDone:
		return fmt.Sprintf("%s was flushed to the sleds after %.0f s (steady state)", what, f.WaitedS)
	case FlushNoSleds:
		return "no flush to wait for: " + f.Note
	}
	return fmt.Sprintf("%s was NOT all flushed to the sleds (%.0f s): %s", what, f.WaitedS, f.Note)
}

// copyText says what a copy workload timed: each copy, the medians and
// their ratio, what the block status reported, and how the wait for the
// sleds went.
func copyText(c *CopyResult) string {
	secs := func(vs []float64) string {
		var out []string
		for _, v := range vs {
			out = append(out, fmt.Sprintf("%.2f", v))
		}
		return strings.Join(out, ", ")
	}
	text := fmt.Sprintf("%s to %s of the %s volume holding %s (%d runs of %s): median %.2f s (%s s); of the %s alone: median %.2f s (%s s); %s",
		c.Tool, c.Destination, humanBytes(c.ExportBytes), humanBytes(c.DataBytes), c.Runs, humanBytes(c.RunBytes),
		c.SparseMedianS, secs(c.SparseS), humanBytes(c.DataBytes), c.DataMedianS, secs(c.DataS),
		fmtRatio(ratio(c.SparseMedianS, c.DataMedianS)))
	switch {
	case c.AllocatedBytes != nil:
		text += fmt.Sprintf("; its block status reported %s of data", humanBytes(*c.AllocatedBytes))
	case c.AllocationNote != "":
		text += "; its block status could not be read: " + c.AllocationNote
	}
	if c.Flush != nil {
		text += "; before the copies: " + flushText(c.Flush, "the data")
	}
	return text
}

// windowsText lists IOPS per window and the last over the first.
func windowsText(res Result) string {
	var ws []string
	for _, v := range res.WindowIOPS {
		ws = append(ws, fmtIOPS(v))
	}
	text := fmt.Sprintf("IOPS per %s: %s", humanDuration(time.Duration(res.WindowS*float64(time.Second))), strings.Join(ws, ", "))
	if n := len(res.WindowIOPS); n > 1 {
		text += "; last over first " + fmtRatio(ratio(res.WindowIOPS[n-1], res.WindowIOPS[0]))
	}
	return text
}

func pathName(p string) string {
	if p == "attach" {
		return "the attach client (the agent's path to the head nodes)"
	}
	return "NBD"
}

func eventsNote(res Result) string {
	if res.Timeline == nil || len(res.Timeline.Events) == 0 {
		return ""
	}
	var ev []string
	for _, e := range res.Timeline.Events {
		ev = append(ev, fmt.Sprintf("%.2f s %s", e.AtS, e.Label))
	}
	return "; events: " + strings.Join(ev, ", ")
}

// MachineLine describes the machine in one sentence.
func (r *Report) MachineLine() string {
	mc := r.Metadata.Machine
	disk := mc.DataDisk.Device
	if mc.DataDisk.Model != "" {
		disk += " (" + mc.DataDisk.Model + ")"
	}
	if mc.DataDisk.Filesystem != "" {
		disk += ", " + mc.DataDisk.Filesystem
	}
	virt := ""
	if mc.Virtualized {
		virt = " virtual machine"
	}
	commit := r.Metadata.GitCommit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if r.Metadata.GitModified {
		commit += " (modified)"
	}
	return fmt.Sprintf("Machine: %d× %s%s, %s RAM, Linux %s; data on %s; commit %s.",
		mc.CPUs, mc.CPUModel, virt, humanize.IBytes(mc.MemoryMiB<<20), mc.Kernel, disk, commit)
}

// writeJSON writes results.json.
func (r *Report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// writeOutputs writes results.json, results.md and the plots into dir.
func (r *Report) writeOutputs(dir string) error {
	plots, err := writePlots(r, dir)
	if err != nil {
		return err
	}
	r.Files = append([]string{"results.json", "results.md"}, plots...)
	for _, res := range r.Results {
		r.Files = append(r.Files, res.Files...)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("write results.md: %w", err)
	}
	return r.writeJSON(filepath.Join(dir, "results.json"))
}

func shortName(target string) string {
	return strings.TrimPrefix(target, "qemu-nbd-")
}

func fmtIOPS(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func fmtMBps(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func fmtUs(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

func fmtPtr(v *float64, prec int) string {
	if v == nil || math.IsNaN(*v) {
		return "—"
	}
	return fmt.Sprintf("%.*f", prec, *v)
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f×", *v)
}

func humanBytes(n uint64) string { return humanize.IBytes(n) }
