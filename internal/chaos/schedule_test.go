package chaos

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var testTopo = Topology{
	HeadNodes:    []string{"hn1", "hn2", "hn3"},
	Sleds:        []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7"},
	Agents:       []string{"ag1", "ag2"},
	Hosts:        []string{"h1", "h2"},
	Volumes:      []string{"v1", "v2", "v3"},
	VolumeGroups: 4,
}

func TestPlanDeterministic(t *testing.T) {
	a := Plan(42, 5*time.Minute, testTopo)
	b := Plan(42, 5*time.Minute, testTopo)
	if len(a) < 10 || !reflect.DeepEqual(a, b) {
		t.Fatalf("seed 42 gave %d and %d steps, equal %v", len(a), len(b), reflect.DeepEqual(a, b))
	}
	if c := Plan(43, 5*time.Minute, testTopo); reflect.DeepEqual(a, c) {
		t.Errorf("seeds 42 and 43 drew the same schedule")
	}
	if s := Plan(42, 15*time.Second, testTopo); len(s) != 0 {
		t.Errorf("a run too short to heal in still got %d steps", len(s))
	}
}

// TestPlanEnvelope checks over many seeds that schedules keep the promise:
// one head node, two sleds, one agent faulty at once; everything healed
// 15 s before the end; targets from the topology.
func TestPlanEnvelope(t *testing.T) {
	const duration = 5 * time.Minute
	seen := map[Action]int{}
	for seed := range int64(300) {
		steps := Plan(seed, duration, testTopo)
		if !slices.IsSortedFunc(steps, func(a, b Step) int { return int(a.At - b.At) }) {
			t.Fatalf("seed %d: steps not sorted", seed)
		}
		for i, s := range steps {
			seen[s.Action]++
			if s.At <= 0 || s.Hold < 0 || s.At+s.Hold > duration-HealedBeforeEnd {
				t.Fatalf("seed %d: %v not healed 15 s before the end of %v", seed, s, duration)
			}
			checkTarget(t, seed, s)
			// Every step that overlaps s, among those that started before.
			var head, sleds, agents int
			sledTargets := map[string]bool{}
			for _, o := range steps[:i+1] {
				if o.At+o.Hold < s.At && o.At != s.At {
					continue
				}
				switch {
				case o.Role == HeadNode && o.Action != RackDrain:
					head++
				case o.Role == Sled:
					sleds++
					if sledTargets[o.Target] {
						t.Fatalf("seed %d: sled %s struck twice at once at %v", seed, o.Target, s.At)
					}
					sledTargets[o.Target] = true
				case o.Role == Agent:
					agents++
				}
			}
			if head > 1 || sleds > 2 || agents > 1 {
				t.Fatalf("seed %d: at %v, %d head nodes, %d sleds, %d agents faulty", seed, s.At, head, sleds, agents)
			}
		}
	}
	for _, a := range actions {
		if seen[a] == 0 {
			t.Errorf("no schedule of 300 drew %s", a)
		}
	}
}

func checkTarget(t *testing.T, seed int64, s Step) {
	t.Helper()
	in := func(list []string, x string) bool { return slices.Contains(list, x) }
	ok := true
	switch s.Action {
	case PartitionPrimaryFromLeader, IsolateLeader:
		ok = s.Target == "" && in(testTopo.Volumes, s.Volume) && in(networks, s.Network)
	case VolumeMove:
		ok = in(testTopo.Volumes, s.Target) && s.Group >= 1 && s.Group <= testTopo.VolumeGroups && s.Hold == 0
	case Handoff:
		ok = in(testTopo.Volumes, s.Target) && in(testTopo.Hosts, s.Host) && s.Hold == 0
	default:
		ok = in(nodes(s.Role, testTopo), s.Target) && slices.Contains(rolesOf(s.Action), s.Role)
	}
	if s.Action == Loss {
		ok = ok && s.Percent > 0 && in(networks, s.Network)
	}
	if s.Action == CutNetwork {
		ok = ok && in(networks, s.Network)
	}
	if !ok {
		t.Fatalf("seed %d: bad step %v", seed, s)
	}
}

func TestPlanTopology(t *testing.T) {
	// Disabled actions and roles the topology lacks are never drawn.
	topo := Topology{
		HeadNodes: []string{"hn1", "hn2", "hn3"},
		Volumes:   []string{"v1"},
		Disabled:  map[Action]bool{Kill: true, WipeRestart: true},
	}
	for seed := range int64(100) {
		for _, s := range Plan(seed, 3*time.Minute, topo) {
			if s.Action == Kill || s.Action == WipeRestart || s.Role == Sled || s.Role == Agent ||
				s.Action == VolumeMove || s.Action == Handoff {
				t.Fatalf("seed %d: %v", seed, s)
			}
		}
	}
	if s := Plan(1, 3*time.Minute, Topology{}); len(s) != 0 {
		t.Errorf("an empty topology got steps: %v", s)
	}
}

func TestStepString(t *testing.T) {
	tests := []struct {
		s    Step
		want string
	}{
		{Step{At: 12500 * time.Millisecond, Action: Kill, Role: HeadNode, Target: "hn2", Hold: 8 * time.Second}, "t+12.5s kill headnode hn2 hold=8s"},
		{Step{At: time.Minute, Action: IsolateLeader, Role: HeadNode, Volume: "v1", Network: "both", Hold: 3 * time.Second}, "t+1m0s isolate-leader headnode volume=v1 net=both hold=3s"},
		{Step{At: time.Second, Action: Loss, Role: Sled, Target: "s3", Network: "a", Percent: 10, Hold: time.Second}, "t+1s loss sled s3 net=a loss=10% hold=1s"},
		{Step{At: time.Second, Action: VolumeMove, Target: "v2", Volume: "v2", Group: 3}, "t+1s volume-move v2 group=3"},
		{Step{At: time.Second, Action: Handoff, Target: "v2", Volume: "v2", Host: "h1"}, "t+1s handoff v2 host=h1"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
		if strings.Contains(tt.s.String(), "\n") {
			t.Errorf("not one line: %q", tt.s.String())
		}
	}
}
