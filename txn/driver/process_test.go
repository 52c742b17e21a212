package driver

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/internal/consensustest"
)

// The test binary doubles as a node process: with nodeEnv set, TestMain
// runs runNodeProcess instead of the tests.
const nodeEnv = "TXN_DRIVER_NODE"

// runNodeProcess runs one node of a rack of processes: its members of
// every group, the TxnGroups service, and a keeper whose proposer
// reaches the other nodes over gRPC. It serves until SIGTERM.
func runNodeProcess() int {
	id, dir := os.Getenv(nodeEnv), os.Getenv("TXN_NODE_DIR")
	index, _ := strconv.Atoi(os.Getenv("TXN_NODE_INDEX"))
	var voters []raft.Server
	var addrs []string
	var self raft.ServerAddress
	for _, p := range strings.Split(os.Getenv("TXN_NODE_PEERS"), ",") {
		pid, addr, _ := strings.Cut(p, "=")
		voters = append(voters, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(pid), Address: raft.ServerAddress(addr)})
		addrs = append(addrs, addr)
		if pid == id {
			self = raft.ServerAddress(addr)
		}
	}
	var svc *Service
	node, err := consensustest.StartNode(consensustest.NodeConfig{
		Dir: dir, ID: id, Addr: self, Raft: consensustest.RaftConfig(), Logger: quietLogger(),
		Register: func(s grpc.ServiceRegistrar, n *consensus.Node) { svc = NewService(n); svc.Register(s) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var members []Member
	for _, g := range lzGroups {
		fsm := NewFSM(g)
		if _, err := node.StartGroup(uint64(g), fsm, voters); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		svc.Add(fsm)
		members = append(members, Member{Node: node.Node, Host: fsm})
	}
	pool := consensustest.NewPool(id+"-proposer", nil)
	p, err := NewProposer(ProposerConfig{Node: uint32(10000 + index), Groups: NewRemote(pool.Dial, addrs), Coordinator: testCoordinator, RequestTimeout: time.Second, Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	k := StartKeeper(KeeperConfig{Proposer: p, Members: func() []Member { return members }, Interval: 100 * time.Millisecond, Linger: time.Second})
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	k.Stop()
	p.Close()
	pool.Close()
	if err := node.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// processRack is a rack of node processes on loopback.
type processRack struct {
	t     *testing.T
	dir   string
	peers string
	ids   []string
	addrs []string

	mu    sync.Mutex
	procs []*exec.Cmd
}

func newProcessRack(t *testing.T, size int) *processRack {
	r := &processRack{t: t, dir: t.TempDir(), procs: make([]*exec.Cmd, size)}
	var peers []string
	for i := range size {
		r.ids = append(r.ids, fmt.Sprintf("p%d", i+1))
		r.addrs = append(r.addrs, freeLoopbackAddr(t))
		peers = append(peers, r.ids[i]+"="+r.addrs[i])
	}
	r.peers = strings.Join(peers, ",")
	for i := range size {
		r.start(i)
	}
	t.Cleanup(func() {
		for i := range r.procs {
			r.stop(i, syscall.SIGTERM)
		}
	})
	return r
}

// freeLoopbackAddr returns a loopback address with a port free now.
func freeLoopbackAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs node i and waits until it serves.
func (r *processRack) start(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.procs[i] != nil {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"="+r.ids[i], "TXN_NODE_DIR="+r.dir, "TXN_NODE_INDEX="+strconv.Itoa(i+1), "TXN_NODE_PEERS="+r.peers)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start node %s: %v", r.ids[i], err)
	}
	ready := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(out)
		ok := s.Scan() && s.Text() == "ready"
		ready <- ok
		for s.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			r.t.Fatalf("node %s did not start", r.ids[i])
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		r.t.Fatalf("node %s did not start within 30s", r.ids[i])
	}
	r.procs[i] = cmd
}

// stop ends node i with sig (SIGKILL: a crash) and reaps it.
func (r *processRack) stop(i int, sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := r.procs[i]
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		r.t.Errorf("node %s did not exit within 20s of %v; killing it", r.ids[i], sig)
		_ = cmd.Process.Kill()
		<-done
	}
	r.procs[i] = nil
}

// TestLinearizableAcrossProcesses runs the linearizability workload
// against three node processes, reached over gRPC, while the test kills
// them (SIGKILL) one at a time and restarts them.
func TestLinearizableAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("TXN_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("TXN_SEED=%d reproduces this run", seed)
	rack := newProcessRack(t, 3)
	pool := consensustest.NewPool("client", nil)
	defer pool.Close()
	remote := NewRemote(pool.Dial, rack.addrs)
	newProposer := func(id uint32) *Proposer { return newClientProposer(t, remote, id) }
	hist := &lzHistory{start: time.Now()}
	runWorkload(t, seed, hist, newProposer, func(ctx context.Context, rng *rand.Rand) {
		for sleepCtx(ctx, time.Duration(500+rng.IntN(500))*time.Millisecond) {
			i := rng.IntN(len(rack.ids))
			t.Logf("%s: kill -9 %s", time.Now().Format("15:04:05.000"), rack.ids[i])
			rack.stop(i, syscall.SIGKILL)
			sleepCtx(ctx, time.Duration(300+rng.IntN(700))*time.Millisecond)
			rack.start(i)
		}
	})
	for i := range rack.ids {
		rack.start(i)
	}
	checkHistory(t, hist, newProposer(999))
}

// sleepCtx sleeps d, or less if ctx ends; it reports whether ctx is
// still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
