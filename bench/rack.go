package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/internal/nbdclient"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// SubjectName is the name of the Ballast rack the harness starts.
const SubjectName = "ballast"

// benchHost is the host name of the agent a benchmark rack runs; its
// volume is attached to it.
const benchHost = "bench"

// rack is a Ballast rack the harness runs as child processes of the
// ballast binary: one `ballast demo` process, or three head nodes, the
// sleds and an agent as processes of their own.
type rack struct {
	kind      string
	bin       string
	dir       string
	sleds     int // processes rack only
	volume    string
	sizeBytes uint64
	// journalBytes, when set, is passed as --journal-size to the head
	// nodes if the binary has that flag; journal says what became of it.
	journalBytes uint64
	journal      string
	// readCache, when set, is passed as --read-cache (the same way);
	// cache says what became of it.
	readCache string
	cache     string
	log       *slog.Logger

	nbdAddr   string
	port      int
	headNodes [][]string
	// procs are the rack's processes by role name: "demo", or "hn1".."hn3",
	// "s1".."sN" and "agent".
	procs map[string]*child
	order []string
	debug []Endpoint
}

func (r *rack) name() string                   { return SubjectName }
func (r *rack) role() Role                     { return RoleSubject }
func (r *rack) startupEstimate() time.Duration { return 5 * time.Second }

var demoHeadNodeHosts = []string{"127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.2.1", "127.0.2.2", "127.0.2.3"}

func sledHosts(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("127.0.1.%d", 10+i), fmt.Sprintf("127.0.2.%d", 10+i))
	}
	return out
}

// start runs the rack on free ports and waits until its volume is served
// over NBD. A port taken by someone else between the check and the bind
// is tried again with new ports.
func (r *rack) start(ctx context.Context) (*Target, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = r.startOnce(ctx)
		if err == nil {
			break
		}
		r.stop()
		if !isAddrInUse(err.Error()) || ctx.Err() != nil {
			return nil, err
		}
		r.log.Info("a port was taken; starting the rack again on other ports", "err", err)
	}
	if err != nil {
		return nil, err
	}
	t := &Target{
		Name:        SubjectName,
		Role:        RoleSubject,
		URI:         fmt.Sprintf("nbd://%s/%s", r.nbdAddr, r.volume),
		Export:      r.volume,
		SizeBytes:   r.sizeBytes,
		HeadNodes:   r.headNodes,
		Rack:        r,
		PIDs:        r.pids,
		Owned:       true,
		Profilers:   r.debug,
		Description: r.describe(),
	}
	if copies, err := r.copies(ctx); err == nil {
		t.Copies = copies
		t.Description += fmt.Sprintf("; volume %q has %d durable copies", r.volume, copies)
	} else {
		r.log.Warn("could not look up the volume's replicas", "err", err)
	}
	return t, nil
}

func (r *rack) describe() string {
	d := fmt.Sprintf("ballast rack as processes (three head nodes, %d sleds, an agent)", r.sleds)
	if r.kind == RackDemo {
		d = "ballast demo (three head nodes, sleds and an agent in one process)"
	}
	if r.journal != "" {
		d += "; " + r.journal
	}
	if r.cache != "" {
		d += "; " + r.cache
	}
	return d
}

// cacheArgs returns the flag that sizes the primaries' read cache for
// subcommand, if its help lists it, and says in r.cache what became of
// it.
func (r *rack) cacheArgs(subcommand string) []string {
	if r.readCache == "" {
		r.cache = ""
		return nil
	}
	help, _ := exec.Command(r.bin, subcommand, "--help").CombinedOutput()
	if !strings.Contains(string(help), "--read-cache") {
		r.cache = fmt.Sprintf("read cache %s not set: `ballast %s` has no --read-cache flag", r.readCache, subcommand)
		return nil
	}
	r.cache = fmt.Sprintf("head-node read caches of %s (--read-cache)", r.readCache)
	return []string{"--read-cache", r.readCache}
}

// journalArgs returns the flag that sets the head nodes' journal size
// for subcommand (demo or headnode), and says in r.journal what became
// of it: the journal and its --journal-size flag are not in every
// ballast binary yet, so the flag is passed only where the subcommand's
// help lists it.
func (r *rack) journalArgs(subcommand string) []string {
	if r.journalBytes == 0 {
		r.journal = ""
		return nil
	}
	help, _ := exec.Command(r.bin, subcommand, "--help").CombinedOutput()
	if !strings.Contains(string(help), "--journal-size") {
		r.journal = fmt.Sprintf("journal size %s not set: `ballast %s` has no --journal-size flag", humanBytes(r.journalBytes), subcommand)
		return nil
	}
	r.journal = fmt.Sprintf("head-node journals of %s (--journal-size)", humanBytes(r.journalBytes))
	return []string{"--journal-size", fmt.Sprint(r.journalBytes)}
}

func (r *rack) startOnce(ctx context.Context) error {
	r.procs, r.order, r.debug = map[string]*child{}, nil, nil
	r.headNodes = nil
	nbdPort, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	r.nbdAddr = fmt.Sprintf("127.0.0.1:%d", nbdPort)
	r.port, err = freePortOnAll(demoHeadNodeHosts, sledHosts(max(r.sleds, 7)))
	if err != nil {
		return err
	}
	for i := 1; i <= 3; i++ {
		r.headNodes = append(r.headNodes, []string{
			fmt.Sprintf("127.0.1.%d:%d", i, r.port), fmt.Sprintf("127.0.2.%d:%d", i, r.port),
		})
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return fmt.Errorf("rack data: %w", err)
	}
	if r.kind == RackDemo {
		return r.startDemo(ctx)
	}
	return r.startProcesses(ctx)
}

// common are the flags every process of the rack gets: quiet logs (the
// harness keeps them in the work directory) and a pprof endpoint.
func (r *rack) common(name string) ([]string, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	r.debug = append(r.debug, Endpoint{Name: name, Addr: addr})
	return []string{"--log-level", "warn", "--debug-addr", addr}, nil
}

func (r *rack) spawn(name string, args ...string) (*child, error) {
	c, err := startChild(name, filepath.Join(r.dir, name+".log"), r.bin, args...)
	if err != nil {
		return nil, err
	}
	r.procs[name] = c
	r.order = append(r.order, name)
	return c, nil
}

func (r *rack) startDemo(ctx context.Context) error {
	common, err := r.common("demo")
	if err != nil {
		return err
	}
	args := append([]string{"demo", "--data", filepath.Join(r.dir, "data"),
		"--size", fmt.Sprint(r.sizeBytes), "--nbd", r.nbdAddr, "--port", fmt.Sprint(r.port)}, common...)
	args = append(args, r.journalArgs("demo")...)
	args = append(args, r.cacheArgs("demo")...)
	demo, err := r.spawn("demo", args...)
	if err != nil {
		return err
	}
	r.volume = "demo"
	_, err = waitNBD(ctx, r.nbdAddr, r.volume, 90*time.Second, demo)
	return err
}

func (r *rack) headNodeArg(i int) string { return strings.Join(r.headNodes[i], ",") }

func (r *rack) startProcesses(ctx context.Context) error {
	var peers []string
	for i := range r.headNodes {
		peers = append(peers, "--peer", fmt.Sprintf("hn%d=%s", i+1, r.headNodeArg(i)))
	}
	journal := append(r.journalArgs("headnode"), r.cacheArgs("headnode")...)
	for i := range r.headNodes {
		id := fmt.Sprintf("hn%d", i+1)
		common, err := r.common(id)
		if err != nil {
			return err
		}
		args := append([]string{"headnode", "--id", id, "--data", filepath.Join(r.dir, id),
			"--listen-a", r.headNodes[i][0], "--listen-b", r.headNodes[i][1],
			// A sled killed by the kill-sled fault is rebuilt within the
			// workload, not a minute later.
			"--sled-down-timeout", "3s"}, peers...)
		args = append(args, journal...)
		if _, err := r.spawn(id, append(args, common...)...); err != nil {
			return err
		}
	}
	var hnFlags []string
	for i := range r.headNodes {
		hnFlags = append(hnFlags, "--headnode", r.headNodeArg(i))
	}
	for i := 1; i <= r.sleds; i++ {
		id := fmt.Sprintf("s%d", i)
		args := append([]string{"sled", "--id", id, "--data", filepath.Join(r.dir, id), "--devices", "2",
			"--listen-a", r.sledAddr(i),
			"--listen-b", fmt.Sprintf("127.0.2.%d:%d", 10+i, r.port+100),
			"--log-level", "warn"}, hnFlags...)
		if _, err := r.spawn(id, args...); err != nil {
			return err
		}
	}
	common, err := r.common("agent")
	if err != nil {
		return err
	}
	agent, err := r.spawn("agent", append(append([]string{"agent", "--host", benchHost, "--nbd", r.nbdAddr}, hnFlags...), common...)...)
	if err != nil {
		return err
	}
	r.volume = "bench"
	if err := r.ensureVolume(ctx); err != nil {
		return err
	}
	_, err = waitNBD(ctx, r.nbdAddr, r.volume, 60*time.Second, agent)
	return err
}

// ensureVolume creates the rack's volume once the head nodes answer.
func (r *rack) ensureVolume(ctx context.Context) error {
	c := &attach.Client{HeadNodes: r.headNodes, Logger: r.log}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		for _, name := range r.order {
			if p := r.procs[name]; !p.alive() {
				return p.exitError()
			}
		}
		err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			_, err := a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: r.volume, SizeBytes: r.sizeBytes, AttachHost: benchHost})
			return err
		})
		if err == nil || status.Code(err) == codes.AlreadyExists {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("create volume %s: %w", r.volume, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// copies returns how many durable copies the rack's volume keeps.
func (r *rack) copies(ctx context.Context) (int, error) {
	vol, err := r.lookup(ctx, r.volume)
	if err != nil {
		return 0, err
	}
	return 1 + len(vol.Secondaries), nil
}

func (r *rack) lookup(ctx context.Context, name string) (*ballastpb.Volume, error) {
	c := &attach.Client{HeadNodes: r.headNodes, Logger: r.log}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.Lookup(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("look up volume %s: %w", name, err)
	}
	return resp.Volume, nil
}

// pids are the rack's running processes.
func (r *rack) pids() []int {
	var out []int
	for _, name := range r.order {
		if pid := r.procs[name].pid(); pid != 0 {
			out = append(out, pid)
		}
	}
	return out
}

// stop ends every process of the rack: the agent, then the head nodes
// (which write to the sleds), then the sleds.
func (r *rack) stop() error {
	rank := func(name string) int {
		switch {
		case name == "agent" || name == "demo":
			return 0
		case strings.HasPrefix(name, "hn"):
			return 1
		default:
			return 2
		}
	}
	var errs []error
	for pass := 0; pass <= 2; pass++ {
		for i := len(r.order) - 1; i >= 0; i-- {
			if name := r.order[i]; rank(name) == pass {
				if err := r.procs[name].stop(20 * time.Second); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// restartHeadNode kills a head node with SIGKILL, as a crash would, and
// starts it again after down; it returns once the node accepts
// connections. Only a rack of processes has head nodes to restart.
func (r *rack) restartHeadNode(ctx context.Context, id string, down time.Duration, mark func(string)) error {
	i := int(id[len(id)-1] - '1')
	if i < 0 || i >= len(r.headNodes) {
		return fmt.Errorf("rack has no head node %s", id)
	}
	return r.restart(ctx, id, r.headNodes[i][0], down, mark)
}

// restartSled kills sled s<i> with SIGKILL and starts it again after
// down; it returns once the sled accepts connections.
func (r *rack) restartSled(ctx context.Context, i int, down time.Duration, mark func(string)) error {
	return r.restart(ctx, fmt.Sprintf("s%d", i), r.sledAddr(i), down, mark)
}

// restart kills process name, starts it again after down and waits until
// it listens on addr again, marking each step.
func (r *rack) restart(ctx context.Context, name, addr string, down time.Duration, mark func(string)) error {
	p := r.procs[name]
	if p == nil || r.kind != RackProcesses {
		return fmt.Errorf("rack has no process %s", name)
	}
	p.kill()
	mark("kill -9 " + name)
	select {
	case <-time.After(down):
	case <-ctx.Done():
	}
	if err := p.restart(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			mark(name + " restarted")
			return nil
		}
		if !p.alive() {
			return p.exitError()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not listen again on %s within 30s", name, addr)
}

// sledAddr is sled s<i>'s address on network A.
func (r *rack) sledAddr(i int) string { return fmt.Sprintf("127.0.1.%d:%d", 10+i, r.port+100) }

// waitNBD waits until export answers an NBD handshake at addr and returns
// its size. When proc is set and exits first, its output is the error.
func waitNBD(ctx context.Context, addr, export string, timeout time.Duration, proc *child) (uint64, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := nbdclient.Dial(addr, export, time.Second)
		if err == nil {
			size := c.Size
			c.Close()
			return size, nil
		}
		if proc != nil && !proc.alive() {
			return 0, proc.exitError()
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("export %s at %s not served within %v: %w", export, addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
