package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Action is a fault or an operation of the rack that a Step performs.
type Action string

const (
	// Kill sends SIGKILL to Target and restarts it after Hold.
	Kill Action = "kill"
	// Pause sends SIGSTOP to Target and SIGCONT after Hold.
	Pause Action = "pause"
	// PartitionPrimaryFromLeader cuts the primary of Volume off from its
	// group's leader (not from its secondary) on Network, for Hold.
	PartitionPrimaryFromLeader Action = "partition-primary-from-leader"
	// IsolateLeader cuts the leader of Volume's group off from every
	// other node on Network, for Hold.
	IsolateLeader Action = "isolate-leader"
	// CutNetwork cuts Target off Network, for Hold.
	CutNetwork Action = "cut-network"
	// Loss drops Percent of Target's packets on Network, for Hold.
	Loss Action = "loss"
	// DiskFull makes Target's data directory return ENOSPC, for Hold.
	DiskFull Action = "disk-full"
	// DiskEIO makes Target's data directory return EIO, for Hold.
	DiskEIO Action = "disk-eio"
	// WipeRestart kills Target, empties its data directory, and restarts
	// it after Hold.
	WipeRestart Action = "wipe-restart"
	// VolumeMove moves Volume's record to volume group Group (1-based);
	// instantaneous (Hold 0).
	VolumeMove Action = "volume-move"
	// Handoff hands the attachment of Volume to host Host, as a live
	// migration does; instantaneous (Hold 0).
	Handoff Action = "handoff"
	// RackDrain drains head node Target (`ballast rack drain`) and undoes
	// the drain after Hold.
	RackDrain Action = "rack-drain"
	// SledDrain drains sled Target (`ballast sled drain`); after Hold the
	// sled may be returned to service. It counts against the sleds that
	// may be out at once.
	SledDrain Action = "sled-drain"
)

// actions is every Action, in the order Plan draws their weights: do not
// reorder, or every seed's schedule changes.
var actions = []Action{
	Kill, Pause, PartitionPrimaryFromLeader, IsolateLeader, CutNetwork, Loss,
	DiskFull, DiskEIO, WipeRestart, VolumeMove, Handoff, RackDrain, SledDrain,
}

// Role is the kind of process a Step acts on.
type Role string

const (
	HeadNode Role = "headnode"
	Sled     Role = "sled"
	Agent    Role = "agent"
)

// Step is one action of a schedule.
type Step struct {
	At     time.Duration // since the run's start
	Action Action
	Role   Role // "" for volume-move and handoff
	// Target is a node name from the Topology, or the volume's name for
	// volume-move and handoff, or "" for an action resolved at run time
	// (the leader, the primary of Volume).
	Target  string
	Volume  string
	Network string        // "a", "b" or "both", for network faults
	Hold    time.Duration // how long the fault lasts before it is healed
	Percent int           // packets dropped, for loss
	Group   int           // the target volume group, for volume-move
	// Host is the host a handoff gives the volume to. (Not in the first
	// draft of the API: added so that a replay picks the same hosts.)
	Host string
}

// Topology is what a schedule may act on.
type Topology struct {
	HeadNodes, Sleds, Agents, Hosts, Volumes []string
	VolumeGroups                             int
	Disabled                                 map[Action]bool
}

// The safety envelope Plan keeps to, and its timing.
const (
	// HealedBeforeEnd is how long before the end of a run every fault is
	// healed, so the rack can recover before the final read-back.
	HealedBeforeEnd   = 15 * time.Second
	maxHeadNodeFaults = 1
	maxSledFaults     = 2
	maxAgentFaults    = 1
	warmup            = 3 * time.Second
	minGap            = 500 * time.Millisecond
	maxGap            = 4 * time.Second
)

// holds says how long each action lasts (drawn uniformly in [min, max]),
// and how long its lane stays reserved after the heal, so that the next
// fault of the same kind of node does not strike a node still catching up.
var holds = map[Action]struct{ min, max, recover time.Duration }{
	Kill:                       {2 * time.Second, 15 * time.Second, 5 * time.Second},
	Pause:                      {1 * time.Second, 10 * time.Second, 3 * time.Second},
	PartitionPrimaryFromLeader: {3 * time.Second, 20 * time.Second, 5 * time.Second},
	IsolateLeader:              {3 * time.Second, 20 * time.Second, 5 * time.Second},
	CutNetwork:                 {3 * time.Second, 20 * time.Second, 5 * time.Second},
	Loss:                       {5 * time.Second, 20 * time.Second, 3 * time.Second},
	DiskFull:                   {5 * time.Second, 20 * time.Second, 5 * time.Second},
	DiskEIO:                    {5 * time.Second, 20 * time.Second, 5 * time.Second},
	WipeRestart:                {2 * time.Second, 10 * time.Second, 20 * time.Second},
	VolumeMove:                 {0, 0, 5 * time.Second},
	Handoff:                    {0, 0, 5 * time.Second},
	RackDrain:                  {10 * time.Second, 30 * time.Second, 5 * time.Second},
	SledDrain:                  {10 * time.Second, 30 * time.Second, 10 * time.Second},
}

// lane is a set of faults that may not exceed a number at once: the head
// nodes, the sleds, the agents, volume operations, rack drains.
type lane struct {
	max  int
	busy []reservation
}

type reservation struct {
	target string
	until  time.Duration
}

// free drops the reservations over by t and says whether the lane can take
// one more fault at t.
func (l *lane) free(t time.Duration) bool {
	l.busy = slices.DeleteFunc(l.busy, func(r reservation) bool { return r.until <= t })
	return len(l.busy) < l.max
}

func (l *lane) reserved(target string) bool {
	return slices.ContainsFunc(l.busy, func(r reservation) bool { return r.target == target })
}

// Plan draws the schedule of one run from seed. It is deterministic for
// (seed, duration, topo) and returns the steps sorted by At. It keeps to
// the envelope the rack promises to survive: at most one head node faulty
// (killed, paused, partitioned, cut off, disk-faulted, wiped) at any
// moment, at most two sleds faulty or draining (with distinct targets), at
// most one agent; one volume operation and one rack drain at a time; every
// fault healed HealedBeforeEnd before the end. Each action's weight in the
// mix is itself drawn from the seed, so seeds differ in emphasis as well
// as in timing; actions that are disabled or have nothing to act on are
// never drawn.
func Plan(seed int64, duration time.Duration, topo Topology) []Step {
	rng := rand.New(rand.NewPCG(uint64(seed), 0xba11a57))
	weights := make([]int, len(actions))
	total := 0
	for i, a := range actions {
		w := rng.IntN(4) // 0: absent from this schedule
		if topo.Disabled[a] || !possible(a, topo) {
			w = 0
		}
		weights[i] = w
		total += w
	}
	if total == 0 {
		for i, a := range actions {
			if !topo.Disabled[a] && possible(a, topo) {
				weights[i] = 1
			}
		}
	}

	lanes := map[string]*lane{
		"headnode": {max: maxHeadNodeFaults},
		"sled":     {max: maxSledFaults},
		"agent":    {max: maxAgentFaults},
		"volume":   {max: 1},
		"drain":    {max: 1},
	}
	limit := duration - HealedBeforeEnd
	var steps []Step
	for t := warmup; ; {
		t += minGap + time.Duration(rng.Int64N(int64(maxGap-minGap)))
		if t >= limit {
			break
		}
		a, ok := pick(rng, weights)
		if !ok {
			break
		}
		role := roleFor(rng, a, topo)
		laneName := string(role)
		switch a {
		case VolumeMove, Handoff:
			laneName = "volume"
		case RackDrain:
			laneName = "drain"
		}
		l := lanes[laneName]
		if !l.free(t) {
			continue
		}
		h := holds[a]
		hold := h.min
		if h.max > h.min {
			hold += time.Duration(rng.Int64N(int64(h.max - h.min)))
		}
		hold = hold.Round(100 * time.Millisecond)
		if t+hold > limit {
			continue
		}
		s := Step{At: t, Action: a, Role: role, Hold: hold}
		switch a {
		case PartitionPrimaryFromLeader, IsolateLeader:
			s.Volume = topo.Volumes[rng.IntN(len(topo.Volumes))]
			s.Network = networks[rng.IntN(len(networks))]
		case VolumeMove:
			s.Target = topo.Volumes[rng.IntN(len(topo.Volumes))]
			s.Volume = s.Target
			s.Group = 1 + rng.IntN(topo.VolumeGroups)
		case Handoff:
			s.Target = topo.Volumes[rng.IntN(len(topo.Volumes))]
			s.Volume = s.Target
			s.Host = topo.Hosts[rng.IntN(len(topo.Hosts))]
		default:
			var free []string
			for _, n := range nodes(role, topo) {
				if !l.reserved(n) {
					free = append(free, n)
				}
			}
			if len(free) == 0 {
				continue
			}
			s.Target = free[rng.IntN(len(free))]
		}
		switch a {
		case CutNetwork:
			s.Network = networks[rng.IntN(len(networks))]
		case Loss:
			s.Network = networks[rng.IntN(len(networks))]
			s.Percent = lossPercents[rng.IntN(len(lossPercents))]
		}
		l.busy = append(l.busy, reservation{target: s.Target, until: t + hold + h.recover})
		steps = append(steps, s)
	}
	return steps
}

var (
	networks     = []string{"a", "b", "both"}
	lossPercents = []int{2, 5, 10, 20, 40}
)

// pick draws an action by weight.
func pick(rng *rand.Rand, weights []int) (Action, bool) {
	total := 0
	for _, w := range weights {
		total += w
	}
	if total == 0 {
		return "", false
	}
	n := rng.IntN(total)
	for i, w := range weights {
		if n < w {
			return actions[i], true
		}
		n -= w
	}
	panic("unreachable")
}

// roleFor draws which kind of node an action strikes, among those the
// topology has.
func roleFor(rng *rand.Rand, a Action, topo Topology) Role {
	switch a {
	case PartitionPrimaryFromLeader, IsolateLeader, RackDrain:
		return HeadNode
	case SledDrain:
		return Sled
	case VolumeMove, Handoff:
		return ""
	}
	var roles []Role
	for _, r := range rolesOf(a) {
		if len(nodes(r, topo)) > 0 {
			roles = append(roles, r)
		}
	}
	return roles[rng.IntN(len(roles))]
}

// rolesOf lists the kinds of node a fault may strike. Agents keep no data,
// so they get no disk faults.
func rolesOf(a Action) []Role {
	switch a {
	case Kill, Pause, CutNetwork, Loss:
		return []Role{HeadNode, Sled, Agent}
	case DiskFull, DiskEIO, WipeRestart:
		return []Role{HeadNode, Sled}
	case PartitionPrimaryFromLeader, IsolateLeader, RackDrain:
		return []Role{HeadNode}
	case SledDrain:
		return []Role{Sled}
	}
	return nil
}

func nodes(r Role, topo Topology) []string {
	switch r {
	case HeadNode:
		return topo.HeadNodes
	case Sled:
		return topo.Sleds
	case Agent:
		return topo.Agents
	}
	return nil
}

// possible says whether the topology has what action a needs.
func possible(a Action, topo Topology) bool {
	switch a {
	case PartitionPrimaryFromLeader, IsolateLeader:
		// Two head nodes at least, or there is no one to be cut off from.
		return len(topo.HeadNodes) >= 2 && len(topo.Volumes) > 0
	case VolumeMove:
		return topo.VolumeGroups >= 2 && len(topo.Volumes) > 0
	case Handoff:
		return len(topo.Hosts) >= 2 && len(topo.Volumes) > 0
	case RackDrain:
		return len(topo.HeadNodes) >= 2
	}
	for _, r := range rolesOf(a) {
		if len(nodes(r, topo)) > 0 {
			return true
		}
	}
	return false
}

// String is one line, for logs and the JSON summary.
func (s Step) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "t+%v %s", s.At.Round(time.Millisecond), s.Action)
	if s.Role != "" {
		fmt.Fprintf(&b, " %s", s.Role)
	}
	if s.Target != "" {
		fmt.Fprintf(&b, " %s", s.Target)
	}
	if s.Volume != "" && s.Volume != s.Target {
		fmt.Fprintf(&b, " volume=%s", s.Volume)
	}
	if s.Network != "" {
		fmt.Fprintf(&b, " net=%s", s.Network)
	}
	if s.Percent != 0 {
		fmt.Fprintf(&b, " loss=%d%%", s.Percent)
	}
	if s.Group != 0 {
		fmt.Fprintf(&b, " group=%d", s.Group)
	}
	if s.Host != "" {
		fmt.Fprintf(&b, " host=%s", s.Host)
	}
	if s.Hold != 0 {
		fmt.Fprintf(&b, " hold=%v", s.Hold)
	}
	return b.String()
}
