package bench

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Role says whether a target is measured (a subject) or measured against
// (a baseline).
type Role string

// Roles of targets.
const (
	RoleSubject  Role = "subject"
	RoleBaseline Role = "baseline"
)

// Names of the baselines.
const (
	// BaselineCacheNone is qemu-nbd --cache=none (O_DIRECT) with
	// --aio=io_uring, or native or threads where io_uring does not start:
	// the device's limit through NBD, the reference of issue 16's goals.
	BaselineCacheNone    = "qemu-nbd-cache-none"
	BaselineWritethrough = "qemu-nbd-writethrough"
	BaselineWriteback    = "qemu-nbd-writeback"
)

// baselineNames are the baselines in the order they run, which is also
// the order of their columns in the table.
var baselineNames = []string{BaselineCacheNone, BaselineWritethrough, BaselineWriteback}

func isBaselineName(name string) bool { return slices.Contains(baselineNames, name) }

// Target is one system under measurement while it runs.
type Target struct {
	Name string
	Role Role
	// Description says what it is, for the results.
	Description string
	// URI is the NBD URI of the export the workloads use.
	URI string
	// Export is the export's name (for Ballast, the volume's name).
	Export string
	// SizeBytes is the export's size.
	SizeBytes uint64
	// Copies is the number of durable copies a write has when it is
	// acknowledged (0: unknown).
	Copies int
	// HeadNodes are the rack's head nodes, when known: the Go load
	// generator then drives volumes through the attach client and may
	// create volumes.
	HeadNodes [][]string
	// Rack is the rack the harness started, if it did: faults act on its
	// processes.
	Rack *rack
	// PIDs returns the processes whose CPU time is the target's cost, at
	// the moment it is called (a fault may restart one). Nil: unknown.
	PIDs func() []int
	// Owned says the harness started the target's processes, so faults may
	// signal them.
	Owned bool
	// Profilers are the pprof endpoints of the target's processes.
	Profilers []Endpoint
}

// Endpoint is a process's debug HTTP address (pprof).
type Endpoint struct {
	Name string
	Addr string
}

// TargetInfo is what the results record about a target.
type TargetInfo struct {
	Name        string `json:"name"`
	Role        Role   `json:"role"`
	Description string `json:"description"`
	URI         string `json:"uri"`
	SizeBytes   uint64 `json:"size_bytes"`
	Copies      int    `json:"durable_copies,omitempty"`
	Error       string `json:"error,omitempty"`
	// Flush is how the wait for a Ballast rack to flush the fill to its
	// sleds went, before the workloads (nil: not a rack the harness can
	// ask).
	Flush *FlushWait `json:"flush_wait,omitempty"`
}

func (t *Target) info() TargetInfo {
	return TargetInfo{Name: t.Name, Role: t.Role, Description: t.Description, URI: t.URI, SizeBytes: t.SizeBytes, Copies: t.Copies}
}

// provider makes a target available for its turn and takes it away after.
type provider interface {
	name() string
	role() Role
	// startupEstimate is how long start usually takes (for progress).
	startupEstimate() time.Duration
	start(ctx context.Context) (*Target, error)
	stop() error
}

// external is a target that runs without the harness.
type external struct {
	spec TargetSpec
}

func (e *external) name() string                   { return e.spec.Name }
func (e *external) role() Role                     { return RoleSubject }
func (e *external) startupEstimate() time.Duration { return time.Second }
func (e *external) stop() error                    { return nil }

func (e *external) start(ctx context.Context) (*Target, error) {
	addr, export, err := parseNBDURI(e.spec.URI)
	if err != nil {
		return nil, err
	}
	size, err := waitNBD(ctx, addr, export, 10*time.Second, nil)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", e.spec.Name, err)
	}
	t := &Target{
		Name:        e.spec.Name,
		Role:        RoleSubject,
		Description: "running target " + e.spec.URI,
		URI:         e.spec.URI,
		Export:      export,
		SizeBytes:   size,
		HeadNodes:   e.spec.HeadNodes,
	}
	if len(e.spec.PIDs) > 0 {
		pids := e.spec.PIDs
		t.PIDs = func() []int { return pids }
	}
	return t, nil
}
