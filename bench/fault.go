package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"
)

// Fault is something done to a target while a LoadWorkload drives it;
// what it does is marked as events on the IOPS-over-time plot. Later
// issues add faults here (kill a volume's primary head node for failover,
// kill a sled for rebuild) and name them in a workload's Faults.
type Fault interface {
	// Name identifies the fault in the results.
	Name() string
	// Supports returns nil when the fault can be done to t, else an error
	// wrapping ErrNotSupported that says why.
	Supports(t *Target) error
	// Inject does the fault now, calling mark for each step (the moment a
	// process is killed, the moment it is back), and returns when the
	// fault is over.
	Inject(ctx context.Context, t *Target, mark func(label string)) error
}

// faults lists every kind of fault by name, for `ballast bench --list`.
var faults = map[string]string{
	"pause":            "SIGSTOP every process of the target, SIGCONT after a while: a stall (any target the harness started)",
	"restart-headnode": "kill -9 a head node that holds no replica of the volume and start it again (a rack of processes)",
	"kill-sled":        "kill -9 a sled, so reads go degraded and the head nodes rebuild its shards, and start it again (a rack of processes with sleds)",
}

// PauseFault stops every process of the target (SIGSTOP) for Duration and
// lets them go on (SIGCONT): a stall of the whole target, as a frozen VM
// or a long GC pause would be. It needs a target the harness started.
type PauseFault struct {
	Duration time.Duration
}

func (f PauseFault) Name() string { return "pause" }

func (f PauseFault) Supports(t *Target) error {
	if !t.Owned || t.PIDs == nil {
		return fmt.Errorf("%w: the harness did not start %s's processes", ErrNotSupported, t.Name)
	}
	return nil
}

func (f PauseFault) Inject(ctx context.Context, t *Target, mark func(string)) error {
	pids := t.PIDs()
	var stopped []int
	defer func() {
		// Always let them go on, even when the run is cancelled.
		for _, pid := range stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		if len(stopped) > 0 {
			mark("resume")
		}
	}()
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return fmt.Errorf("SIGSTOP %d: %w", pid, err)
		}
		stopped = append(stopped, pid)
	}
	mark(fmt.Sprintf("pause %v", f.Duration))
	select {
	case <-time.After(f.Duration):
	case <-ctx.Done():
	}
	return nil
}

// RestartHeadNodeFault kills a head node with SIGKILL and starts it again
// after Down. It picks a head node that holds no replica of the target's
// volume, so I/O should go on untouched (until failover exists, killing a
// replica stops the volume's writes); the directory group loses a voter
// and may elect a new leader. It needs a rack of processes.
type RestartHeadNodeFault struct {
	Down time.Duration
}

func (f RestartHeadNodeFault) Name() string { return "restart-headnode" }

func (f RestartHeadNodeFault) Supports(t *Target) error {
	if t.Rack == nil || t.Rack.kind != RackProcesses {
		return fmt.Errorf("%w: %s is not a rack of processes (use --rack processes)", ErrNotSupported, t.Name)
	}
	return nil
}

func (f RestartHeadNodeFault) Inject(ctx context.Context, t *Target, mark func(string)) error {
	vol, err := t.Rack.lookup(ctx, t.Export)
	if err != nil {
		return err
	}
	replicas := append([]string{vol.Primary}, vol.Secondaries...)
	for i := range t.Rack.headNodes {
		id := fmt.Sprintf("hn%d", i+1)
		if !slices.Contains(replicas, id) {
			return t.Rack.restartHeadNode(ctx, id, f.Down, mark)
		}
	}
	return errors.New("every head node holds a replica of the volume")
}

// KillSledFault kills sled s1 with SIGKILL and starts it again after Down.
// While it is gone, reads of its shards are reconstructed from the others;
// once it has been unreachable for the head nodes' sled-down timeout (set
// short in a rack the harness starts), they rebuild its shards on the
// other sleds. It needs a rack of processes with sleds.
type KillSledFault struct {
	Down time.Duration
}

func (f KillSledFault) Name() string { return "kill-sled" }

func (f KillSledFault) Supports(t *Target) error {
	if t.Rack == nil || t.Rack.kind != RackProcesses || t.Rack.sleds == 0 {
		return fmt.Errorf("%w: %s is not a rack of processes with sleds (use --rack processes)", ErrNotSupported, t.Name)
	}
	return nil
}

func (f KillSledFault) Inject(ctx context.Context, t *Target, mark func(string)) error {
	return t.Rack.restartSled(ctx, 1, f.Down, mark)
}
