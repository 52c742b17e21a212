package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Summary is the result of a chaos run of one or more schedules.
type Summary struct {
	Seeds     []int64
	Schedules int
	Duration  time.Duration // set by the caller: the run's length
	Steps     []string      // every schedule's steps, each prefixed with its seed

	Operations, AckedWrites, UnknownWrites, Lost, Violations, StaleReads, CorruptReads int
	// TimedOut counts registers whose linearizability was not decided (an
	// addition to the first draft of the API, as Result.TimedOut).
	TimedOut int

	// Unavailability is per fault kind, over every schedule's faults,
	// merged as mergeQuantiles says (an estimate past one schedule).
	Unavailability map[string]Quantiles
	Details        []string

	// Runs is each schedule's own counts, to tell which seed to replay (an
	// addition to the first draft of the API).
	Runs []Run

	// unavail keeps each fault kind's quantiles from every Add, to merge.
	unavail map[string][]Quantiles
}

// Run is one schedule's part of a Summary.
type Run struct {
	Seed                                                     int64
	Steps                                                    int
	Operations, AckedWrites, UnknownWrites, Lost, Violations int
	StaleReads, CorruptReads, TimedOut                       int
}

// Add merges one schedule's result. Duration is the caller's to set.
func (s *Summary) Add(seed int64, steps []Step, r Result, unavail map[string]Quantiles) {
	s.Seeds = append(s.Seeds, seed)
	s.Schedules++
	s.Runs = append(s.Runs, Run{
		Seed: seed, Steps: len(steps), Operations: r.Operations, AckedWrites: r.AckedWrites,
		UnknownWrites: r.UnknownWrites, Lost: r.Lost, Violations: r.Violations,
		StaleReads: r.StaleReads, CorruptReads: r.CorruptReads, TimedOut: r.TimedOut,
	})
	for _, st := range steps {
		s.Steps = append(s.Steps, fmt.Sprintf("seed %d: %s", seed, st))
	}
	s.Operations += r.Operations
	s.AckedWrites += r.AckedWrites
	s.UnknownWrites += r.UnknownWrites
	s.Lost += r.Lost
	s.Violations += r.Violations
	s.StaleReads += r.StaleReads
	s.CorruptReads += r.CorruptReads
	s.TimedOut += r.TimedOut
	for _, d := range r.Details {
		if len(s.Details) >= maxDetails {
			break
		}
		s.Details = append(s.Details, fmt.Sprintf("seed %d: %s", seed, d))
	}
	if s.unavail == nil {
		s.unavail = map[string][]Quantiles{}
	}
	if s.Unavailability == nil {
		s.Unavailability = map[string]Quantiles{}
	}
	for kind, q := range unavail {
		s.unavail[kind] = append(s.unavail[kind], q)
		s.Unavailability[kind] = mergeQuantiles(s.unavail[kind])
	}
}

// mergeQuantiles combines the quantiles of several schedules for one fault
// kind. The values themselves are gone, so this is an estimate: the
// count-weighted P50, and the worst P99 and Max (p99 of a few faults per
// schedule is close to their max anyway, and the report errs towards the
// pessimistic).
func mergeQuantiles(qs []Quantiles) Quantiles {
	var out Quantiles
	var p50 float64
	for _, q := range qs {
		out.Count += q.Count
		p50 += float64(q.P50) * float64(q.Count)
		out.P99 = max(out.P99, q.P99)
		out.Max = max(out.Max, q.Max)
	}
	if out.Count > 0 {
		out.P50 = time.Duration(p50 / float64(out.Count))
	}
	return out
}

// Line is the one line scripts read at the end of a run.
func (s Summary) Line() string {
	return fmt.Sprintf("chaos: %d schedules, %d acknowledged writes, %d lost, %d linearizability violations, %d stale reads",
		s.Schedules, s.AckedWrites, s.Lost, s.Violations, s.StaleReads)
}

// Failed says whether the run found data lost or a linearizability
// violation (corrupt reads are counted as violations too).
func (s Summary) Failed() bool { return s.Lost > 0 || s.Violations > 0 }

// summaryJSON is the summary's file format: snake_case names, durations
// in milliseconds. Scripts read it: add fields, never rename them.
type summaryJSON struct {
	Seeds          []int64                  `json:"seeds"`
	Schedules      int                      `json:"schedules"`
	DurationMS     float64                  `json:"duration_ms"`
	Steps          []string                 `json:"steps"`
	Operations     int                      `json:"operations"`
	AckedWrites    int                      `json:"acknowledged_writes"`
	UnknownWrites  int                      `json:"unknown_writes"`
	Lost           int                      `json:"lost"`
	Violations     int                      `json:"linearizability_violations"`
	StaleReads     int                      `json:"stale_reads"`
	CorruptReads   int                      `json:"corrupt_reads"`
	TimedOut       int                      `json:"timed_out_checks"`
	Unavailability map[string]quantilesJSON `json:"unavailability"`
	Details        []string                 `json:"details"`
	Runs           []runJSON                `json:"runs"`
	Failed         bool                     `json:"failed"`
	Line           string                   `json:"line"`
}

type runJSON struct {
	Seed          int64 `json:"seed"`
	Steps         int   `json:"steps"`
	Operations    int   `json:"operations"`
	AckedWrites   int   `json:"acknowledged_writes"`
	UnknownWrites int   `json:"unknown_writes"`
	Lost          int   `json:"lost"`
	Violations    int   `json:"linearizability_violations"`
	StaleReads    int   `json:"stale_reads"`
	CorruptReads  int   `json:"corrupt_reads"`
	TimedOut      int   `json:"timed_out_checks"`
}

type quantilesJSON struct {
	Count int     `json:"count"`
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// MarshalJSON writes the summary in its file format.
func (s Summary) MarshalJSON() ([]byte, error) {
	j := summaryJSON{
		Seeds: s.Seeds, Schedules: s.Schedules, DurationMS: ms(s.Duration), Steps: s.Steps,
		Operations: s.Operations, AckedWrites: s.AckedWrites, UnknownWrites: s.UnknownWrites,
		Lost: s.Lost, Violations: s.Violations, StaleReads: s.StaleReads, CorruptReads: s.CorruptReads,
		TimedOut: s.TimedOut, Unavailability: map[string]quantilesJSON{}, Details: s.Details,
		Failed: s.Failed(), Line: s.Line(),
	}
	for _, r := range s.Runs {
		j.Runs = append(j.Runs, runJSON(r))
	}
	for k, q := range s.Unavailability {
		j.Unavailability[k] = quantilesJSON{Count: q.Count, P50MS: ms(q.P50), P99MS: ms(q.P99), MaxMS: ms(q.Max)}
	}
	return json.MarshalIndent(j, "", "  ")
}

// UnmarshalJSON reads a summary WriteJSON wrote.
func (s *Summary) UnmarshalJSON(b []byte) error {
	var j summaryJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("chaos: summary: %w", err)
	}
	*s = Summary{
		Seeds: j.Seeds, Schedules: j.Schedules, Duration: fromMS(j.DurationMS), Steps: j.Steps,
		Operations: j.Operations, AckedWrites: j.AckedWrites, UnknownWrites: j.UnknownWrites,
		Lost: j.Lost, Violations: j.Violations, StaleReads: j.StaleReads, CorruptReads: j.CorruptReads,
		TimedOut: j.TimedOut, Details: j.Details,
	}
	for _, r := range j.Runs {
		s.Runs = append(s.Runs, Run(r))
	}
	if j.Unavailability != nil {
		s.Unavailability = map[string]Quantiles{}
		for k, q := range j.Unavailability {
			s.Unavailability[k] = Quantiles{Count: q.Count, P50: fromMS(q.P50MS), P99: fromMS(q.P99MS), Max: fromMS(q.MaxMS)}
		}
	}
	return nil
}

// WriteJSON writes the summary to path, durations as milliseconds.
func (s Summary) WriteJSON(path string) error {
	b, err := s.MarshalJSON()
	if err != nil {
		return fmt.Errorf("chaos: encode summary: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("chaos: write summary: %w", err)
	}
	return nil
}

// ReadSummary reads a summary WriteJSON wrote (an addition to the API, for
// scripts and tests that compare runs).
func ReadSummary(path string) (Summary, error) {
	var s Summary
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("chaos: read summary: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, err
	}
	return s, nil
}
