package consensus

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The benchmarks run three Nodes in this process on loopback, each with its
// own gRPC server and directory, and G groups with all three as voters.
//
//	go test -run '^$' -bench . -benchtime 2000x ./consensus/
//
// Setting a cluster up takes long at 1000 groups, and the testing package
// calls a benchmark function more than once (first with b.N = 1), so each
// sub-benchmark builds its cluster on its first call and keeps it for the
// later ones; the parent closes it. The cluster's directory is the
// parent's: the testing package removes a sub-benchmark's TempDir after
// each call.

var benchGroupCounts = []int{10, 100, 1000}

const (
	// benchWorkers is the number of goroutines issuing Applies.
	benchWorkers = 64
	// idleWindow is how long BenchmarkIdleGroupsCPU measures, whatever b.N.
	idleWindow = 2 * time.Second
	// electTimeout bounds the wait for every group to have a leader.
	electTimeout = 2 * time.Minute
	// benchStartWorkers is how many groups a node starts at once.
	benchStartWorkers = 8
)

// benchRaftConfig is the raft configuration of every group, whatever their
// number: raft's defaults. With them 1000 groups start and elect on 2 cores
// in 10-25 s, so the timeouts stay as they are, and the numbers show what
// the defaults cost. Most of the idle cost is not heartbeats
// (HeartbeatTimeout/10) but the leader's AppendEntries to each follower
// every CommitTimeout (50 ms): with heartbeat and election timeouts of 5 s
// 1000 idle groups still saturated both cores (~190% CPU); adding
// CommitTimeout = 500 ms brought them down to ~98%.
func benchRaftConfig() *raft.Config {
	return raft.DefaultConfig()
}

// BenchmarkCommitManyGroups applies b.N commands, spread round-robin over
// every group, from benchWorkers goroutines, each to its group's leader, and
// reports the throughput and the latency from Apply to its future's Error.
func BenchmarkCommitManyGroups(b *testing.B) {
	for _, groups := range benchGroupCounts {
		var c *benchCluster
		dir := b.TempDir()
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			if c == nil {
				var err error
				if c, err = startBenchCluster(b, dir, groups); err != nil {
					b.Fatal(err)
				}
			}
			benchCommits(b, c)
		})
		if c != nil {
			if err := c.close(); err != nil {
				b.Error(err)
			}
		}
	}
}

func benchCommits(b *testing.B, c *benchCluster) {
	lat := make([][]time.Duration, benchWorkers)
	var next, retries atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				g := int(i % int64(len(c.groups)))
				// Keys repeat, so a group's map stays small.
				cmd := fmt.Appendf(nil, "key-%d\x00value-%d", i%256, i)
				t0 := time.Now()
				n, err := c.apply(g, cmd)
				retries.Add(int64(n))
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	all := slices.Concat(lat...)
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "commits/s")
	b.ReportMetric(ms(all[len(all)*50/100]), "p50-ms")
	b.ReportMetric(ms(all[min(len(all)-1, len(all)*99/100)]), "p99-ms")
	if n := retries.Load(); n > 0 {
		b.ReportMetric(float64(n), "retries")
	}
}

// BenchmarkIdleGroupsCPU measures the CPU time the process (three nodes)
// spends over idleWindow while every group is idle, with a leader.
func BenchmarkIdleGroupsCPU(b *testing.B) {
	for _, groups := range benchGroupCounts {
		var c *benchCluster
		var cpuPct float64
		dir := b.TempDir()
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			if c == nil {
				var err error
				if c, err = startBenchCluster(b, dir, groups); err != nil {
					b.Fatal(err)
				}
				if cpuPct, err = c.idleCPU(b); err != nil {
					b.Fatal(err)
				}
			}
			// The window ran once; later calls (larger b.N) report it again.
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(cpuPct, "cpu-%")
			b.ReportMetric(cpuPct/float64(len(c.nodes)), "node-cpu-%")
			// CPU ms per second is cpu-% × 10.
			b.ReportMetric(cpuPct*10/float64(groups), "cpu-ms/group/s")
		})
		if c != nil {
			if err := c.close(); err != nil {
				b.Error(err)
			}
		}
	}
}

// idleCPU returns the process's CPU time over idleWindow, as a percentage
// of one core.
func (c *benchCluster) idleCPU(b *testing.B) (float64, error) {
	// Let the new leaders' first entries commit and their pipelines open.
	time.Sleep(time.Second)
	terms := c.terms()
	cpu0, err := cpuTime()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(idleWindow)
	cpu1, err := cpuTime()
	if err != nil {
		return 0, err
	}
	wall := time.Since(t0)
	// Elections during the window would not be idle work: say so.
	changed := 0
	for g, t := range c.terms() {
		if t != terms[g] {
			changed++
		}
	}
	b.Logf("groups=%d: %d groups changed term during the idle window", len(c.groups), changed)
	return (cpu1 - cpu0).Seconds() / wall.Seconds() * 100, nil
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// benchCluster is three nodes and their members of every group.
type benchCluster struct {
	nodes []*testNode
	// groups[g][i] is node i's member of group g+1.
	groups [][]*raft.Raft
	// leader[g] is the index of the node last seen leading group g+1.
	leader []atomic.Int32
}

// startBenchCluster starts three nodes with groups groups and waits until
// every group has a leader. On error it closes what it started.
func startBenchCluster(b *testing.B, dir string, groups int) (_ *benchCluster, err error) {
	c := &benchCluster{groups: make([][]*raft.Raft, groups), leader: make([]atomic.Int32, groups)}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
		}
	}()
	rc := benchRaftConfig()
	for i := range 3 {
		n, err := startTestNode(dir, fmt.Sprintf("n%d", i), rc)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	var voters []raft.Server
	for _, n := range c.nodes {
		voters = append(voters, n.voter())
	}
	for g := range c.groups {
		c.groups[g] = make([]*raft.Raft, len(c.nodes))
	}

	// Every node starts its groups benchStartWorkers at a time: StartGroup
	// builds a group outside the node's lock.
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i, n := range c.nodes {
		next := make(chan int)
		for range benchStartWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for g := range next {
					r, err := n.node.StartGroup(uint64(g+1), newKVFSM(), voters)
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						continue
					}
					c.groups[g][i] = r
				}
			}()
		}
		go func() {
			defer close(next)
			for g := range c.groups {
				next <- g
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	started := time.Since(t0)
	if err := c.waitLeaders(time.Now().Add(electTimeout)); err != nil {
		return nil, err
	}
	led := make([]int, len(c.nodes))
	for g := range c.leader {
		led[c.leader[g].Load()]++
	}
	b.Logf("groups=%d: started in %v, every group had a leader %v later; groups led per node %v",
		groups, started.Round(time.Millisecond), (time.Since(t0) - started).Round(time.Millisecond), led)
	return c, nil
}

// waitLeaders waits until every group has a leader.
func (c *benchCluster) waitLeaders(deadline time.Time) error {
	for g := range c.groups {
		if err := c.findLeader(g, deadline); err != nil {
			return err
		}
	}
	return nil
}

// findLeader records group g's leader, waiting for one until deadline.
func (c *benchCluster) findLeader(g int, deadline time.Time) error {
	for {
		for i, r := range c.groups[g] {
			if r.State() == raft.Leader {
				c.leader[g].Store(int32(i))
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %d: no leader", g+1)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// apply commits cmd in group g through its leader, following the
// leadership when it moves, and returns how many times it retried. A
// command whose leader lost the leadership may be applied twice.
func (c *benchCluster) apply(g int, cmd []byte) (retries int, _ error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.groups[g][c.leader[g].Load()]
		f := r.Apply(cmd, 10*time.Second)
		err := f.Error()
		if err == nil {
			if err, ok := f.Response().(error); ok {
				return retries, fmt.Errorf("group %d apply: %w", g+1, err)
			}
			return retries, nil
		}
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) || time.Now().After(deadline) {
			return retries, fmt.Errorf("group %d apply: %w", g+1, err)
		}
		retries++
		if err := c.findLeader(g, deadline); err != nil {
			return retries, err
		}
	}
}

// terms returns every group's highest current term among its members.
func (c *benchCluster) terms() []uint64 {
	out := make([]uint64, len(c.groups))
	for g, members := range c.groups {
		for _, r := range members {
			out[g] = max(out[g], r.CurrentTerm())
		}
	}
	return out
}

// close shuts every node down (the three in parallel: each shuts its
// groups down one by one), then the servers and the connections.
func (c *benchCluster) close() error {
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.close()
		}()
	}
	wg.Wait()
	c.nodes = nil
	return errors.Join(errs...)
}
