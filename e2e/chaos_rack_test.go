package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-storage/ballast/internal/nbdclient"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The chaos rack: three head nodes, seven sleds and the agents of hosts
// h1 and h2, each process in a network namespace of its own on both lab
// networks, every head node's and sled's data directory on a tmpfs of its
// own (so a disk can fill), and the admin CLI in a namespace of its own
// ("agent", as newRackInNamespaces names the clients' namespace) that no
// fault touches.
const (
	chaosHeadNodes   = 3
	chaosSleds       = 7
	chaosVolumes     = 4
	chaosVolumeBytes = 64 << 20
	// chaosBlocks is the range of blocks the workload uses in every
	// volume: small, so that clients contend for blocks and the read-back
	// is quick.
	chaosBlocks    = 256
	chaosNBDAddr   = "127.0.0.1:10809"
	chaosHeadTmpfs = "3g"
	chaosSledTmpfs = "512m"
)

var chaosHosts = []string{"h1", "h2"}

// chaosNode is one process of the rack, restartable with the same
// arguments.
type chaosNode struct {
	name, role string
	args       []string
	dataDir    string // what the process is given: a tmpfs, or an eioFS over one; "" for agents
	disk       string // the tmpfs itself
	eio        *eioFS // nil unless the schedule fails this node's disk

	mu struct {
		sync.Mutex
		p      *proc
		starts int
		paused bool
	}
}

// chaosVolume is one volume of the workload and the host it is attached
// to, as the rack last told (the handoff updates it).
type chaosVolume struct {
	name  string
	index int
	id    uint64
	mu    sync.Mutex
	host  string
}

func (v *chaosVolume) attachedHost() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.host
}

func (v *chaosVolume) setHost(h string) {
	v.mu.Lock()
	v.host = h
	v.mu.Unlock()
}

type chaosRack struct {
	t       testing.TB
	r       *rack
	lab     *netLab
	nodes   map[string]*chaosNode
	heads   []string
	sleds   []string
	volumes []*chaosVolume
}

// newChaosRack lays the rack out in a new netLab and starts it: head nodes
// at 10.77.{1,2}.1-3, sleds at .21-.27, agents h1 and h2 at .101-.102 (NBD
// on each one's loopback), the CLI at .100; then creates the volumes,
// attached to h1 and h2 in turn, and waits until each is served.
func newChaosRack(t testing.TB, headNodeFlags []string, eioNodes map[string]bool) *chaosRack {
	lab := newNetLab(t)
	base := t.TempDir()
	r := &rack{t: t, dataDir: base, port: labPort, nbdAddr: chaosNBDAddr, nodes: map[string]*proc{}, lab: lab}
	cr := &chaosRack{t: t, r: r, lab: lab, nodes: map[string]*chaosNode{}}
	for i := 1; i <= chaosHeadNodes; i++ {
		lab.addHost(fmt.Sprintf("hn%d", i), i)
		r.headNodes = append(r.headNodes, fmt.Sprintf("%s:%d,%s:%d", labAddr("a", i), labPort, labAddr("b", i), labPort))
	}
	for i := 1; i <= chaosSleds; i++ {
		lab.addHost(fmt.Sprintf("s%d", i), 20+i)
	}
	for i, h := range chaosHosts {
		lab.addHost(h, 101+i)
	}
	lab.addHost("agent", 100)

	var peers []string
	for i := 1; i <= chaosHeadNodes; i++ {
		peers = append(peers, "--peer", fmt.Sprintf("hn%d=%s", i, r.headNodes[i-1]))
	}
	for i := 1; i <= chaosHeadNodes; i++ {
		id := fmt.Sprintf("hn%d", i)
		nd := &chaosNode{name: id, role: "headnode"}
		cr.mountData(nd, base, chaosHeadTmpfs, eioNodes[id])
		a, b := rpcSplit(r.headNodes[i-1])
		args := append([]string{"headnode", "--id", id, "--data", nd.dataDir, "--listen-a", a, "--listen-b", b}, peers...)
		nd.args = append(args, headNodeFlags...)
		cr.add(nd)
		cr.heads = append(cr.heads, id)
	}
	for i := 1; i <= chaosSleds; i++ {
		id := fmt.Sprintf("s%d", i)
		nd := &chaosNode{name: id, role: "sled"}
		cr.mountData(nd, base, chaosSledTmpfs, eioNodes[id])
		a, b := r.sledAddrs(i)
		args := []string{"sled", "--id", id, "--data", nd.dataDir, "--devices", "2", "--listen-a", a, "--listen-b", b, "--scrub-rate", "4MiB"}
		for _, h := range r.headNodes {
			args = append(args, "--headnode", h)
		}
		nd.args = args
		cr.add(nd)
		cr.sleds = append(cr.sleds, id)
	}
	for _, h := range chaosHosts {
		args := []string{"agent", "--host", h, "--nbd", chaosNBDAddr}
		for _, hn := range r.headNodes {
			args = append(args, "--headnode", hn)
		}
		cr.add(&chaosNode{name: h, role: "agent", args: args})
	}
	for _, name := range cr.names() {
		cr.start(name)
	}
	cr.waitStatus(90*time.Second, "every group led and every sled up", func(st rackStatusJSON) bool {
		return allGroupsLed(st) && sledsUp(chaosSleds)(st)
	})
	for i := 0; i < chaosVolumes; i++ {
		v := &chaosVolume{name: fmt.Sprintf("v%d", i+1), index: i, host: chaosHosts[i%len(chaosHosts)]}
		if out, err := cr.cli(time.Minute, "volume", "create", v.name, "--size", fmt.Sprint(chaosVolumeBytes), "--attach", v.host); err != nil {
			t.Fatalf("create %s: %v\n%s", v.name, err, out)
		}
		cr.volumes = append(cr.volumes, v)
	}
	for _, v := range cr.volumes {
		info, err := cr.showVolume(v.name)
		if err != nil {
			t.Fatalf("show %s: %v", v.name, err)
		}
		v.id = n(info.ID)
		deadline := time.Now().Add(time.Minute)
		for {
			c, err := cr.dialVolume(v.host, v.name, 5*time.Second)
			if err == nil {
				closeChaosConn(c)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("volume %s not served by %s within a minute: %v", v.name, v.host, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return cr
}

func (cr *chaosRack) add(nd *chaosNode) { cr.nodes[nd.name] = nd }

// names lists the rack's processes: head nodes, sleds, agents.
func (cr *chaosRack) names() []string {
	names := append(append([]string(nil), cr.heads...), cr.sleds...)
	return append(names, chaosHosts...)
}

// mountData gives node nd its data directory: a tmpfs of the given size,
// seen through an eioFS when the schedule fails its disk.
func (cr *chaosRack) mountData(nd *chaosNode, base, size string, eio bool) {
	cr.t.Helper()
	if !eio {
		nd.dataDir = cr.mountTmpfs(base, nd.name, size)
		nd.disk = nd.dataDir
		return
	}
	nd.disk = cr.mountTmpfs(base, nd.name+"-disk", size)
	nd.dataDir = filepath.Join(base, nd.name)
	if err := os.MkdirAll(nd.dataDir, 0o755); err != nil {
		cr.t.Fatal(err)
	}
	e, err := mountEIOFS(nd.disk, nd.dataDir)
	if err != nil {
		cr.t.Fatalf("mount a failing filesystem for %s: %v", nd.name, err)
	}
	nd.eio = e
	// Registered after the tmpfs's unmount, so run before it; after the
	// processes are ended (they are started later).
	cr.t.Cleanup(func() {
		if err := e.unmount(); err != nil {
			exec.Command("umount", "-l", nd.dataDir).Run()
		}
	})
}

// mountTmpfs mounts a tmpfs of the given size at base/name and unmounts
// it when the test ends (after its processes are ended: cleanups run last
// registered first, and the processes are started later).
func (cr *chaosRack) mountTmpfs(base, name, size string) string {
	cr.t.Helper()
	dir := filepath.Join(base, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		cr.t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		skipOrFail(cr.t, "cannot mount a tmpfs: %v: %s", err, out)
	}
	cr.t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			// A process of ours may still hold it: lazily.
			exec.Command("umount", "-l", dir).Run()
			cr.t.Logf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// start starts (or restarts) node name in its namespace.
func (cr *chaosRack) start(name string) {
	nd := cr.nodes[name]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.mu.starts++
	procName := name
	if nd.mu.starts > 1 {
		procName = fmt.Sprintf("%s.%d", name, nd.mu.starts)
	}
	nd.mu.p = startCmd(cr.t, procName, cr.lab.command(name, ballastBin, withLogLevel(nd.args)...))
	nd.mu.paused = false
}

// proc returns node name's current process.
func (cr *chaosRack) proc(name string) *proc {
	nd := cr.nodes[name]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.mu.p
}

func (cr *chaosRack) running(name string) bool {
	p := cr.proc(name)
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill ends node name with SIGKILL (resuming it first if paused does not
// matter: SIGKILL ends a stopped process).
func (cr *chaosRack) kill(name string) {
	cr.proc(name).kill()
	nd := cr.nodes[name]
	nd.mu.Lock()
	nd.mu.paused = false
	nd.mu.Unlock()
}

// signal sends SIGSTOP or SIGCONT to node name.
func (cr *chaosRack) signal(name string, sig syscall.Signal) error {
	nd := cr.nodes[name]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if err := nd.mu.p.cmd.Process.Signal(sig); err != nil {
		return err
	}
	nd.mu.paused = sig == syscall.SIGSTOP
	return nil
}

// stopAll ends every process of the rack with SIGTERM (SIGQUIT after
// 20 s, SIGKILL 5 s later): the offline exports need the head nodes'
// stores closed.
func (cr *chaosRack) stopAll() {
	var wg sync.WaitGroup
	for _, name := range cr.names() {
		cr.signal(name, syscall.SIGCONT)
		p := cr.proc(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(20 * time.Second):
				// A process that ignores SIGTERM is most likely stuck: SIGQUIT
				// has the Go runtime print every goroutine's stack to its log
				// before it exits, which is what finding the hang needs.
				p.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case <-p.exited:
					cr.t.Logf("%s did not exit within 20s of SIGTERM; sent SIGQUIT (its goroutines are in its log)", p.name)
				case <-time.After(5 * time.Second):
					cr.t.Logf("%s did not exit within 20s of SIGTERM nor 5s of SIGQUIT; killed", p.name)
					p.kill()
				}
			}
		}()
	}
	wg.Wait()
}

// fillPath is the file a disk-full fault fills node name's tmpfs with.
func (cr *chaosRack) fillPath(name string) string {
	return filepath.Join(cr.nodes[name].disk, "chaos-fill")
}

// fill fills node name's tmpfs to the last byte.
func (cr *chaosRack) fill(name string) error {
	path := cr.fillPath(name)
	var st unix.Statfs_t
	if err := unix.Statfs(cr.nodes[name].disk, &st); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	free := int64(st.Bavail) * st.Bsize
	if err := unix.Fallocate(int(f.Fd()), 0, 0, free); err != nil && !errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("fallocate %d bytes: %w", free, err)
	}
	// Whatever the allocation left (blocks freed meanwhile): written out.
	buf := make([]byte, 1<<20)
	f.Seek(0, 2)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	return nil
}

func (cr *chaosRack) unfill(name string) error {
	err := os.Remove(cr.fillPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// usage reports how full each data directory's tmpfs is.
func (cr *chaosRack) usage() string {
	var parts []string
	for _, name := range append(append([]string(nil), cr.heads...), cr.sleds...) {
		var st unix.Statfs_t
		if err := unix.Statfs(cr.nodes[name].disk, &st); err == nil {
			used := (st.Blocks - st.Bfree) * uint64(st.Bsize)
			parts = append(parts, fmt.Sprintf("%s %dMiB", name, used>>20))
		}
	}
	return strings.Join(parts, ", ")
}

// wipe empties node name's data directory (the process is not running).
func (cr *chaosRack) wipe(name string) error {
	dir := cr.nodes[name].disk
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// cli runs a ballast admin command from the CLI's namespace.
func (cr *chaosRack) cli(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := cr.r.clientCommand(ctx, ballastBin, args...)
	cmd.Env = append(os.Environ(), "BALLAST_HEADNODES="+strings.Join(cr.r.headNodes, ";"))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("ballast %s: timed out after %v", strings.Join(args, " "), timeout)
	}
	if err != nil {
		return string(out), fmt.Errorf("ballast %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(tail(string(out), 500)))
	}
	return string(out), nil
}

// chaosVolumeJSON is the part of `ballast volume show --json` the harness
// reads.
type chaosVolumeJSON struct {
	Name         string   `json:"name"`
	ID           string   `json:"id"`
	Primary      string   `json:"primary"`
	Secondaries  []string `json:"secondaries"`
	Epoch        string   `json:"epoch"`
	CatchingUp   []string `json:"catchingUp"`
	Group        string   `json:"group"`
	AttachedHost string   `json:"attachedHost"`
	MigratingTo  string   `json:"migratingTo"`
}

func (cr *chaosRack) showVolume(name string) (chaosVolumeJSON, error) {
	out, err := cr.cli(20*time.Second, "volume", "show", name, "--json")
	if err != nil {
		return chaosVolumeJSON{}, err
	}
	var v struct {
		Volume chaosVolumeJSON `json:"volume"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return chaosVolumeJSON{}, fmt.Errorf("volume show %s: %v: %s", name, err, tail(out, 300))
	}
	return v.Volume, nil
}

func (cr *chaosRack) status() (rackStatusJSON, error) {
	var st rackStatusJSON
	out, err := cr.cli(20*time.Second, "rack", "status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("rack status: %v: %s", err, tail(out, 300))
	}
	return st, nil
}

// waitStatus polls rack status until cond holds, failing the test after
// timeout (for the rack's start only: during a run, settle is bounded and
// never fails).
func (cr *chaosRack) waitStatus(timeout time.Duration, what string, cond func(rackStatusJSON) bool) {
	cr.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := cr.status()
		if err == nil && cond(st) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			cr.t.Fatalf("waited %v for %s: %v; rack status:\n%s", timeout, what, err, tail(string(b), 4000))
		}
		time.Sleep(time.Second)
	}
}

// allGroupsLed: every group some head node reports has one leader that
// every reporting member agrees on.
func allGroupsLed(st rackStatusJSON) bool {
	leaders := map[string]map[string]bool{}
	for _, g := range st.Groups {
		if leaders[g.Group] == nil {
			leaders[g.Group] = map[string]bool{}
		}
		leaders[g.Group][g.Leader] = true
	}
	for _, l := range leaders {
		if len(l) != 1 || l[""] {
			return false
		}
	}
	return len(leaders) > 0
}

// leaderOf returns the leader of group g ("0": the directory group).
func leaderOf(st rackStatusJSON, g string) string {
	if g == "" {
		g = "0"
	}
	for _, gs := range st.Groups {
		if gs.Group == g && gs.State == "Leader" {
			return gs.HeadNode
		}
	}
	for _, gs := range st.Groups {
		if gs.Group == g && gs.Leader != "" {
			return gs.Leader
		}
	}
	return ""
}

// settled says whether the rack keeps its promise again: every group led
// and every volume served by a primary with a mirrored secondary.
func (cr *chaosRack) settled() (bool, string) {
	st, err := cr.status()
	if err != nil {
		return false, err.Error()
	}
	if !allGroupsLed(st) {
		return false, "a group without a leader"
	}
	for _, v := range cr.volumes {
		info, err := cr.showVolume(v.name)
		if err != nil {
			return false, err.Error()
		}
		if info.Primary == "" || len(info.Secondaries) == 0 || len(info.CatchingUp) > 0 {
			return false, fmt.Sprintf("volume %s: primary %q, secondaries %v, catching up %v", v.name, info.Primary, info.Secondaries, info.CatchingUp)
		}
		if !cr.running(info.Primary) {
			return false, fmt.Sprintf("volume %s: primary %s not running", v.name, info.Primary)
		}
	}
	return true, ""
}

// waitSettled waits up to timeout for settled and says whether it came.
func (cr *chaosRack) waitSettled(timeout time.Duration) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cr.settled()
		if ok || time.Now().After(deadline) {
			return ok, why
		}
		time.Sleep(time.Second)
	}
}

// dialVolume opens an NBD connection to volume on host's agent, from
// inside host's namespace (the agent listens on that namespace's
// loopback).
func (cr *chaosRack) dialVolume(host, volume string, timeout time.Duration) (*nbdclient.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialInNetns(ctx, cr.lab.hosts[host], chaosNBDAddr)
	if err != nil {
		return nil, err
	}
	return nbdclient.Open(c, volume, timeout)
}

// setSledUp ends a sled's drain: the CLI has `sled drain` but no undo, so
// this asks a head node's admin service directly, over a connection made
// in the CLI's namespace.
func (cr *chaosRack) setSledUp(id string) error {
	var last error
	for _, hn := range cr.r.headNodes {
		for _, addr := range strings.Split(hn, ",") {
			ns := cr.lab.hosts["agent"]
			conn, err := grpc.NewClient("passthrough:///"+addr,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dialInNetns(ctx, ns, a) }))
			if err != nil {
				last = err
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err = ballastpb.NewAdminClient(conn).SetSledState(ctx, &ballastpb.SetSledStateRequest{Id: id, State: ballastpb.SledState_SLED_STATE_UP})
			cancel()
			conn.Close()
			if err == nil {
				return nil
			}
			last = err
		}
	}
	return last
}
