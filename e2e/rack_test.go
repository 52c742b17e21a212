package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/nbdclient"
)

var ballastBin string

// agentHost is the host name of the agent a rack runs (and of the demo's
// first agent); the tests' volumes are attached to it.
const agentHost = "h1"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ballast-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ballastBin = filepath.Join(dir, "ballast")
	build := exec.Command("go", "build", "-o", ballastBin, "../cmd/ballast")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ballast:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTools skips the test unless every named client is installed.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	pkgs := map[string]string{"qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils",
		"nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "fio": "fio"}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s is not installed (Debian package %s; `make test` installs it)", tool, pkgs[tool])
		}
	}
}

// skipOrFail skips a test whose client is missing, except in CI (CI set),
// where `make test` has installed every client and a skip would hide a
// test that never ran.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// nbdPython returns a Python interpreter that can import libnbd's bindings
// (Debian's python3-libnbd installs them for the system python3, which may
// not be the first python3 on PATH), or skips the test.
func nbdPython(t testing.TB) string {
	t.Helper()
	candidates := []string{"python3"}
	if p, err := exec.LookPath("nbdsh"); err == nil {
		// nbdsh runs "python3 -mnbd"; Debian's lives next to it.
		candidates = append(candidates, filepath.Join(filepath.Dir(p), "python3"))
	}
	for _, py := range candidates {
		if err := exec.Command(py, "-c", "import nbd").Run(); err == nil {
			return py
		}
	}
	skipOrFail(t, "libnbd's Python bindings are not installed (Debian package python3-libnbd; `make test` installs it)")
	return ""
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a ballast process the test started; it is ended on cleanup.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(ballastBin, withLogLevel(args)...))
}

// withLogLevel adds $BALLAST_E2E_LOG_LEVEL, when set, to a ballast
// process's arguments.
func withLogLevel(args []string) []string {
	if level := os.Getenv("BALLAST_E2E_LOG_LEVEL"); level != "" && !slices.Contains(args, "--log-level") {
		return append(slices.Clone(args), "--log-level", level)
	}
	return args
}

// startCmd starts cmd as a proc. `ip netns exec` execs its command, so a
// process started through it is signalled directly by its PID.
func startCmd(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncBuffer{}, exited: make(chan struct{}), cmd: cmd}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, tail(p.out.String(), 4000))
			keepOutput(t, name, p.out.String())
		}
	})
	return p
}

// keepOutput writes a failed test's whole process output to
// $BALLAST_E2E_LOGS/TEST/NAME.log when that is set: the log's tail is
// rarely where a failover went wrong.
func keepOutput(t testing.TB, name, out string) {
	root := os.Getenv("BALLAST_E2E_LOGS")
	if root == "" {
		return
	}
	dir := filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keep output of %s: %v", name, err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name+".log"), []byte(out), 0o644); err != nil {
		t.Logf("keep output of %s: %v", name, err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stop ends the process with SIGTERM and waits for a clean exit.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("%s exited with %v after SIGTERM", p.name, p.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not exit within 30s of SIGTERM", p.name)
		p.kill()
	}
}

// kill ends the process with SIGKILL, as a crash would.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// freeHeadNodePort finds a port free on every demo head-node address.
func freeHeadNodePort(t testing.TB) int {
	t.Helper()
	var ips []string
	for n := 1; n <= 2; n++ {
		for i := 1; i <= 3; i++ {
			ips = append(ips, fmt.Sprintf("127.0.%d.%d", n, i))
		}
	}
	return freePortOnAll(t, ips)
}

// freePortOnAll finds a port free on every one of the loopback addresses.
func freePortOnAll(t testing.TB, ips []string) int {
	t.Helper()
	for attempt := 0; attempt < 50; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := true
		for _, ip := range ips {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// rack is a running rack: a demo process, or head-node and agent processes.
type rack struct {
	t         testing.TB
	dataDir   string
	port      int
	nbdAddr   string
	headNodes []string // "addrA,addrB" per head node
	demo      *proc
	nodes     map[string]*proc
	agent     *proc
	// headNodeFlags are added to every head node's command line.
	headNodeFlags []string
	sledPort      int
	sleds         map[string]*proc
	// lab, if set, holds every process in its own network namespace
	// (newRackInNamespaces); clients run in the agent's.
	lab *netLab
}

func newRack(t testing.TB) *rack {
	r := &rack{t: t, dataDir: t.TempDir(), port: freeHeadNodePort(t), nbdAddr: freeLoopbackAddr(t), nodes: map[string]*proc{}}
	for i := 1; i <= 3; i++ {
		r.headNodes = append(r.headNodes, fmt.Sprintf("127.0.1.%d:%d,127.0.2.%d:%d", i, r.port, i, r.port))
	}
	return r
}

func (r *rack) uri(volume string) string { return fmt.Sprintf("nbd://%s/%s", r.nbdAddr, volume) }

// startDemo runs `ballast demo` and waits until volume demo is served.
func (r *rack) startDemo(size string) {
	r.t.Helper()
	r.demo = startProc(r.t, "demo", "demo", "--data", r.dataDir, "--size", size,
		"--nbd", r.nbdAddr, "--port", fmt.Sprint(r.port))
	r.waitServed("demo", r.demo)
}

// startProcesses runs three head-node processes and an agent.
func (r *rack) startProcesses() {
	r.t.Helper()
	var peers []string
	for i := 1; i <= 3; i++ {
		peers = append(peers, "--peer", fmt.Sprintf("hn%d=%s", i, r.headNodes[i-1]))
	}
	for i := 1; i <= 3; i++ {
		r.startHeadNode(i, peers)
	}
	args := []string{"agent", "--host", agentHost, "--nbd", r.nbdAddr}
	for _, h := range r.headNodes {
		args = append(args, "--headnode", h)
	}
	r.agent = r.startBallast("agent", args...)
}

func (r *rack) startHeadNode(i int, peers []string) {
	id := fmt.Sprintf("hn%d", i)
	a, b := rpcSplit(r.headNodes[i-1])
	args := append([]string{"headnode", "--id", id, "--data", filepath.Join(r.dataDir, id),
		"--listen-a", a, "--listen-b", b}, peers...)
	args = append(args, r.headNodeFlags...)
	r.nodes[id] = r.startBallast(id, args...)
}

// startBallast starts a ballast process as host name (in its namespace
// when the rack has a lab).
func (r *rack) startBallast(name string, args ...string) *proc {
	r.t.Helper()
	args = withLogLevel(args)
	if r.lab != nil {
		return startCmd(r.t, name, r.lab.command(name, ballastBin, args...))
	}
	return startProc(r.t, name, args...)
}

// clientCommand returns a command for a client program (fio, nbdinfo, the
// admin CLI) where the rack's clients run.
func (r *rack) clientCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	if r.lab != nil {
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.lab.hosts["agent"], name}, args...)...)
	}
	return exec.CommandContext(ctx, name, args...)
}

// runClient runs a client program where the rack's clients run, with a
// timeout, and returns its output.
func (r *rack) runClient(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := r.clientCommand(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v", name, timeout)
	}
	return string(out), err
}

// fioLoop runs fio passes, pass i with args(i), one after another (at
// least one) until the returned stop is called; stop waits for the pass
// in progress and returns how many passed and the first failure, which
// ends the loop.
func (r *rack) fioLoop(args func(i int) []string) (stop func() (passes int, err error)) {
	done := make(chan struct{})
	var fioErr error
	var n int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				if i > 0 {
					return
				}
			default:
			}
			out, err := r.runClient(5*time.Minute, "fio", args(i)...)
			if err != nil {
				fioErr = fmt.Errorf("fio pass %d: %v\n%s", i, err, tail(out, 3000))
				return
			}
			n++
		}
	}()
	return func() (int, error) {
		close(done)
		wg.Wait()
		return n, fioErr
	}
}

func rpcSplit(addrs string) (string, string) {
	a, b, _ := strings.Cut(addrs, ",")
	return a, b
}

// sledAddrs returns sled i's addresses: 127.0.1.(20+i) and 127.0.2.(20+i).
func (r *rack) sledAddrs(i int) (string, string) {
	if r.lab != nil {
		return fmt.Sprintf("%s:%d", labAddr("a", 20+i), labPort), fmt.Sprintf("%s:%d", labAddr("b", 20+i), labPort)
	}
	if r.sledPort == 0 {
		var ips []string
		for n := 1; n <= 2; n++ {
			for j := 1; j <= 9; j++ {
				ips = append(ips, fmt.Sprintf("127.0.%d.%d", n, 20+j))
			}
		}
		r.sledPort = freePortOnAll(r.t, ips)
	}
	return fmt.Sprintf("127.0.1.%d:%d", 20+i, r.sledPort), fmt.Sprintf("127.0.2.%d:%d", 20+i, r.sledPort)
}

// startSled runs sled s<i> as a process with two devices; it registers
// with the head nodes itself.
func (r *rack) startSled(i int, extra ...string) *proc {
	r.t.Helper()
	id := fmt.Sprintf("s%d", i)
	a, b := r.sledAddrs(i)
	args := append([]string{"sled", "--id", id, "--data", filepath.Join(r.dataDir, id), "--devices", "2",
		"--listen-a", a, "--listen-b", b}, extra...)
	for _, h := range r.headNodes {
		args = append(args, "--headnode", h)
	}
	if r.sleds == nil {
		r.sleds = map[string]*proc{}
	}
	r.sleds[id] = r.startBallast(id, args...)
	return r.sleds[id]
}

// waitServed waits until export name answers an NBD handshake.
func (r *rack) waitServed(name string, p *proc) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := r.probeExport(name)
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			r.t.Fatalf("%s exited: %v\n%s", p.name, p.err, tail(p.out.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("export %s not served within 60s: %v", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// probeExport does an NBD handshake for export name.
func (r *rack) probeExport(name string) error {
	if r.lab != nil {
		// The agent's port is inside its namespace: ask from there.
		out, err := r.runClient(5*time.Second, "nbdinfo", "--size", r.uri(name))
		if err != nil {
			return fmt.Errorf("nbdinfo: %v: %s", err, strings.TrimSpace(out))
		}
		return nil
	}
	c, err := nbdclient.Dial(r.nbdAddr, name, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

// cli runs a ballast admin command against the rack.
func (r *rack) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := r.clientCommand(ctx, ballastBin, args...)
	cmd.Env = append(os.Environ(), "BALLAST_HEADNODES="+strings.Join(r.headNodes, ";"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

type volumeInfo struct {
	Volume struct {
		Name        string   `json:"name"`
		ID          string   `json:"id"`
		SizeBytes   string   `json:"sizeBytes"`
		Primary     string   `json:"primary"`
		Secondaries []string `json:"secondaries"`
		Epoch       string   `json:"epoch"`
		CatchingUp  []string `json:"catchingUp"`
		Group       string   `json:"group"`
	} `json:"volume"`
	Usage *struct {
		UsedBytes    string `json:"usedBytes"`
		JournalBytes string `json:"journalBytes"`
	} `json:"usage"`
	UsageError string `json:"usageError"`
}

func (r *rack) showVolume(name string) volumeInfo {
	r.t.Helper()
	out, err := r.cli("volume", "show", name, "--json")
	if err != nil {
		r.t.Fatalf("volume show %s: %v\n%s", name, err, out)
	}
	var v volumeInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		r.t.Fatalf("volume show %s: %v\n%s", name, err, out)
	}
	return v
}

// run runs an external client with a timeout and returns its output.
func run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v", name, timeout)
	}
	return string(out), err
}

func mustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}
