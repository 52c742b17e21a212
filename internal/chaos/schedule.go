package chaos

import (
	"fmt"
	"time"
)

// Action is a fault or an operation of the rack that a Step performs.
type Action string

const (
	Kill                       Action = "kill"
	Pause                      Action = "pause"
	PartitionPrimaryFromLeader Action = "partition-primary-from-leader"
	IsolateLeader              Action = "isolate-leader"
	CutNetwork                 Action = "cut-network"
	Loss                       Action = "loss"
	DiskFull                   Action = "disk-full"
	DiskEIO                    Action = "disk-eio"
	WipeRestart                Action = "wipe-restart"
	VolumeMove                 Action = "volume-move"
	Handoff                    Action = "handoff"
	RackDrain                  Action = "rack-drain"
	SledDrain                  Action = "sled-drain"
)

// Role is the kind of process a Step acts on.
type Role string

const (
	HeadNode Role = "headnode"
	Sled     Role = "sled"
	Agent    Role = "agent"
)

// Step is one action of a schedule.
type Step struct {
	At      time.Duration
	Action  Action
	Role    Role
	Target  string
	Volume  string
	Network string
	Hold    time.Duration
	Percent int
	Group   int
}

// Topology is what a schedule may act on.
type Topology struct {
	HeadNodes, Sleds, Agents, Hosts, Volumes []string
	VolumeGroups                             int
	Disabled                                 map[Action]bool
}

// Plan draws the schedule of one run from seed.
func Plan(seed int64, duration time.Duration, topo Topology) []Step {
	return nil
}

// String is one line, for logs and the JSON summary.
func (s Step) String() string {
	return fmt.Sprintf("%v %s %s %s", s.At, s.Action, s.Role, s.Target)
}
