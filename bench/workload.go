package bench

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"
)

// Workload is one measurement the harness makes against each target.
type Workload interface {
	// Name identifies the workload in the results, the table and file
	// names (lower case, no spaces).
	Name() string
	// Description is one line for people.
	Description() string
	// Params are the workload's parameters, recorded in the results.
	Params() map[string]any
	// Supports returns nil when the workload can run against t, or an
	// error saying why not (the result is then marked skipped).
	Supports(t *Target) error
	// Planned is about how long a run takes, for the progress display.
	Planned(s *Suite) time.Duration
	// Run measures t. It calls env.measure to account the target's CPU
	// (and take a profile) over the measured part of the run.
	Run(ctx context.Context, env *runEnv, t *Target) (*Result, error)
}

// ErrNotSupported marks a workload or fault that cannot run against a
// target; the result is reported as skipped.
var ErrNotSupported = errors.New("bench: not supported by this target")

// Result is what one workload measured on one target.
type Result struct {
	Workload string `json:"workload"`
	Target   string `json:"target"`
	// Engine is "fio", "go" (the built-in load generator) or "nbdcopy".
	Engine string `json:"engine"`
	// Path is how the requests reached the target: "nbd" or "attach"
	// (the agent's client of the head nodes, without NBD).
	Path    string `json:"path"`
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`

	DurationS float64 `json:"duration_s"`
	Ops       float64 `json:"ops"`
	Bytes     float64 `json:"bytes"`
	Errors    float64 `json:"errors"`
	IOPS      float64 `json:"iops"`
	// MBps is throughput in MB/s (10^6 bytes).
	MBps    float64  `json:"mb_per_s"`
	Latency *Latency `json:"latency,omitempty"`
	// ServiceTime is, for an open-loop workload, the latency from when
	// each request was actually sent (Latency counts from when it was
	// meant to be sent, so a stall is charged to every request it held
	// up).
	ServiceTime *Latency `json:"service_time,omitempty"`
	// CPUSeconds is the CPU (user+system) the target's processes used in
	// the measured interval, and CPUSecondsPerGB that over the GB (10^9
	// bytes) moved. Nil when the target's processes are unknown.
	CPUSeconds      *float64 `json:"cpu_seconds,omitempty"`
	CPUSecondsPerGB *float64 `json:"cpu_seconds_per_gb,omitempty"`
	// ClientCPUPercent is fio's own CPU use (percent of one core).
	ClientCPUPercent *float64 `json:"client_cpu_percent,omitempty"`
	// Timeline is IOPS over time, with the faults injected.
	Timeline *Timeline `json:"timeline,omitempty"`
	// WindowS and WindowIOPS are the IOPS of each whole window of the run
	// (a minute for the sustain workload), from its start: the goal
	// compares the last with the first.
	WindowS    float64   `json:"window_s,omitempty"`
	WindowIOPS []float64 `json:"window_iops,omitempty"`
	// Volumes is the number of volumes driven at once (Go load generator).
	Volumes int `json:"volumes,omitempty"`
	// Copy is what a copy workload (CopyWorkload) timed; its Bytes are
	// what the copies read, and MBps the sparse copy's pace over the
	// data it holds.
	Copy *CopyResult `json:"copy,omitempty"`
	// Files are the raw outputs and profiles, relative to the output
	// directory.
	Files []string `json:"files,omitempty"`
}

// Timeline is IOPS over time.
type Timeline struct {
	IntervalS float64 `json:"interval_s"`
	// IOPS holds one value per interval, from the start of the run.
	IOPS   []float64 `json:"iops"`
	Errors []float64 `json:"errors"`
	Events []Event   `json:"events"`
}

// windows averages the timeline over windows of w (a multiple of its
// interval), from its start; a last window the run did not fill is left
// out.
func (t *Timeline) windows(w time.Duration) []float64 {
	per := int(math.Round(w.Seconds() / t.IntervalS))
	if per < 1 {
		return nil
	}
	var out []float64
	for i := 0; i < len(t.IOPS); i += per {
		end := min(i+per, len(t.IOPS))
		if 2*(end-i) < per {
			// Less than half a window: fio may not log the run's last
			// interval at all, so a window at least half logged counts,
			// less does not.
			break
		}
		var sum float64
		for _, v := range t.IOPS[i:end] {
			sum += v
		}
		out = append(out, sum/float64(end-i))
	}
	return out
}

// Event is something that happened during a run, such as a fault.
type Event struct {
	AtS   float64 `json:"at_s"`
	Label string  `json:"label"`
}

// runEnv is what a workload runs with.
type runEnv struct {
	cfg    *Config
	suite  *Suite
	outDir string
	log    *slog.Logger
	// fioVersion is filled by the first fio run.
	mu         sync.Mutex
	fioVersion string
}

// measurement accounts a target's CPU (and profiles it) over the
// measured part of a run.
type measurement struct {
	env      *runEnv
	t        *Target
	workload string
	cpu      *cpuMeter
	start    time.Time
	profiles *profileCapture
}

// measure begins measuring t now, for a run expected to last d.
func (env *runEnv) measure(ctx context.Context, t *Target, workload string, d time.Duration) *measurement {
	m := &measurement{env: env, t: t, workload: workload, cpu: newCPUMeter(t.PIDs), start: time.Now()}
	if env.cfg.Profile && len(t.Profilers) > 0 && d >= time.Second {
		m.profiles = startProfiles(ctx, env, t, workload, d)
	}
	return m
}

// finish ends the measurement and records CPU use and profiles in r,
// whose Bytes must be set.
func (m *measurement) finish(r *Result) {
	if cpu, ok := m.cpu.elapsed(); ok {
		r.CPUSeconds = &cpu
		if r.Bytes > 0 {
			r.CPUSecondsPerGB = ratio(cpu, r.Bytes/1e9)
		}
	}
	if m.profiles != nil {
		r.Files = append(r.Files, m.profiles.wait()...)
	}
}
