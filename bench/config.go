package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Rack kinds: how the harness runs the Ballast rack it starts.
const (
	// RackDemo runs `ballast demo`: the whole rack in one process.
	RackDemo = "demo"
	// RackProcesses runs every head node, sled and the agent as its own
	// process, so faults can kill and restart one of them.
	RackProcesses = "processes"
)

// Config is everything a run needs. Zero values take the defaults that
// EnsureDefaults fills in; Validate says what is wrong.
type Config struct {
	// OutDir receives results.json, results.md, the plots, the raw fio
	// outputs and the profiles. Created if missing; files in it are
	// overwritten. Default "bench-out".
	OutDir string
	// Suite names the set of workloads and their sizes: SuiteQuick,
	// SuiteStandard (the default) or SuiteSustain.
	Suite string
	// Workloads, when not empty, keeps only these workloads of the suite.
	Workloads []string
	// Targets are running systems to measure, instead of starting a rack.
	Targets []TargetSpec
	// Rack is how the harness starts its own rack: RackDemo (default) or
	// RackProcesses. Ignored when Targets is set.
	Rack string
	// RackSleds is the number of sleds of a RackProcesses rack: 0 takes
	// the default, 7 (as `ballast demo`); a negative number runs none (the
	// head nodes keep all data). A demo rack runs the demo's default.
	RackSleds int
	// NoBaselines skips the qemu-nbd baselines.
	NoBaselines bool
	// JournalBytes is the head nodes' journal size: the sustain suite
	// writes over four times it. When set, it is also passed as
	// --journal-size to the rack the harness starts, if the ballast
	// binary has that flag (the journal is not in every build yet). 0
	// assumes DefaultJournalBytes and leaves the rack's own default.
	JournalBytes uint64
	// ReadCache is passed as --read-cache to the rack the harness starts
	// (a size, or "off"), if the binary has that flag; "" leaves the
	// rack's default. The standard suite's read goals want the hot
	// working set (64 MiB) inside it and the 1 GiB region well beyond.
	ReadCache string
	// FlushTimeout bounds the wait, after the fill and before the
	// workloads, for a Ballast rack to flush its volume's data to the
	// sleds (default 90 s plus a second per 8 MiB of region). A wait that
	// times out is reported, and the workloads run anyway.
	FlushTimeout time.Duration
	// WorkDir is where the temporary directory holding the rack's data and
	// the baselines' files is made (default $TMPDIR, else /var/tmp: a real
	// disk, where /tmp may be memory). It is removed at the end.
	WorkDir string
	// KeepWorkDir keeps the temporary directory (with the processes' logs).
	KeepWorkDir bool
	// BallastBinary is the ballast binary that runs the rack (default:
	// this executable).
	BallastBinary string
	// FioBinary, QemuNBDBinary and NBDCopyBinary name the clients
	// (default "fio", "qemu-nbd" and "nbdcopy", looked up in PATH).
	FioBinary     string
	QemuNBDBinary string
	NBDCopyBinary string
	// Profile takes a CPU profile of each Ballast process that serves
	// pprof during each workload and writes its top entries to the output
	// directory.
	Profile bool
	// CommandLine is recorded in the results (default os.Args).
	CommandLine []string
	// Progress receives a progress display; nil shows none (see
	// ProgressWriter).
	Progress io.Writer
	// Logger receives what the harness does; default slog.Default().
	Logger *slog.Logger
}

// TargetSpec is a running system to measure.
type TargetSpec struct {
	// Name labels the target in the results (default "target<N>").
	Name string
	// URI is the NBD URI fio and the load generator use,
	// nbd://HOST:PORT/EXPORT.
	URI string
	// HeadNodes, when set, are the rack's head nodes (one address per
	// network each): the Go load generator then uses the attach client
	// and may create volumes.
	HeadNodes [][]string
	// PIDs are the processes whose CPU time is the target's cost (none:
	// CPU is not reported).
	PIDs []int
}

// ParseTargetSpec parses "[NAME=]nbd://HOST:PORT/EXPORT".
func ParseTargetSpec(s string) (TargetSpec, error) {
	var t TargetSpec
	if name, rest, ok := strings.Cut(s, "="); ok && !strings.Contains(name, "://") {
		t.Name, s = name, rest
	}
	t.URI = s
	if _, _, err := parseNBDURI(s); err != nil {
		return t, err
	}
	return t, nil
}

// parseNBDURI returns the host:port and the export name of an NBD URI.
func parseNBDURI(s string) (addr, export string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("target %q: %w", s, err)
	}
	if u.Scheme != "nbd" || u.Host == "" {
		return "", "", fmt.Errorf("target %q: want nbd://HOST:PORT/EXPORT", s)
	}
	addr = u.Host
	if u.Port() == "" {
		addr += ":10809"
	}
	return addr, strings.TrimPrefix(u.Path, "/"), nil
}

// suite returns the configured suite, sized by the configuration.
func (c *Config) suite() (*Suite, error) {
	return suiteByName(c.Suite, suiteOptions{journalBytes: c.JournalBytes})
}

// EnsureDefaults fills in every zero field that has a default.
func (c *Config) EnsureDefaults() {
	if c.OutDir == "" {
		c.OutDir = "bench-out"
	}
	if c.Suite == "" {
		c.Suite = SuiteStandard
	}
	if c.Rack == "" {
		c.Rack = RackDemo
	}
	if c.RackSleds == 0 {
		c.RackSleds = 7
	}
	if c.WorkDir == "" {
		c.WorkDir = os.Getenv("TMPDIR")
		if c.WorkDir == "" {
			c.WorkDir = "/var/tmp"
		}
	}
	if c.BallastBinary == "" && len(c.Targets) == 0 {
		if exe, err := os.Executable(); err == nil {
			c.BallastBinary = exe
		}
	}
	if c.FioBinary == "" {
		c.FioBinary = "fio"
	}
	if c.QemuNBDBinary == "" {
		c.QemuNBDBinary = "qemu-nbd"
	}
	if c.NBDCopyBinary == "" {
		c.NBDCopyBinary = "nbdcopy"
	}
	if c.CommandLine == nil {
		c.CommandLine = os.Args
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for i := range c.Targets {
		if c.Targets[i].Name == "" {
			c.Targets[i].Name = fmt.Sprintf("target%d", i+1)
		}
	}
}

// Validate reports what is wrong with the configuration (after
// EnsureDefaults).
func (c *Config) Validate() error {
	var errs []error
	s, err := c.suite()
	if err != nil {
		errs = append(errs, err)
	} else {
		for _, w := range c.Workloads {
			if !slices.ContainsFunc(s.Workloads, func(x Workload) bool { return x.Name() == w }) {
				errs = append(errs, fmt.Errorf("workload %q is not in suite %s (it has %s)", w, s.Name, strings.Join(s.workloadNames(), ", ")))
			}
		}
	}
	if c.Rack != RackDemo && c.Rack != RackProcesses {
		errs = append(errs, fmt.Errorf("rack %q: want %s or %s", c.Rack, RackDemo, RackProcesses))
	}
	if len(c.Targets) == 0 && c.BallastBinary == "" {
		errs = append(errs, errors.New("no ballast binary to start a rack with"))
	}
	names := map[string]bool{}
	for _, t := range c.Targets {
		if _, _, err := parseNBDURI(t.URI); err != nil {
			errs = append(errs, err)
		}
		if names[t.Name] || isBaselineName(t.Name) {
			errs = append(errs, fmt.Errorf("target name %q is used twice", t.Name))
		}
		names[t.Name] = true
	}
	if c.OutDir == "" {
		errs = append(errs, errors.New("no output directory"))
	}
	return errors.Join(errs...)
}
