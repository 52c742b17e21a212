package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the harness started. It is ended by its PID only,
// with SIGTERM and then, if it does not exit, SIGKILL. Its output goes to
// a log file in the work directory.
type child struct {
	name    string
	bin     string
	args    []string
	logPath string

	// mu guards the running process, which restart replaces while
	// other goroutines read its PID.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // how the last process ended, once exited is closed
}

// startChild starts bin with args, its output appended to logPath. The
// child runs in its own process group, so a Ctrl-C at the terminal reaches
// only the harness, which then ends its children itself; and it is killed
// if the harness dies.
func startChild(name, logPath, bin string, args ...string) (*child, error) {
	c := &child{name: name, bin: bin, args: args, logPath: logPath}
	return c, c.start()
}

func (c *child) start() error {
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	cmd := exec.Command(c.bin, c.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s (%s): %w", c.name, c.bin, err)
	}
	exited := make(chan struct{})
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(exited)
	}()
	return nil
}

// running returns the current process and its exit channel, or nil when
// it has exited.
func (c *child) running() (*os.Process, chan struct{}) {
	if c == nil {
		return nil, nil
	}
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return nil, nil
	}
	select {
	case <-exited:
		return nil, nil
	default:
		return cmd.Process, exited
	}
}

// pid is the process's id, or 0 once it has exited.
func (c *child) pid() int {
	if p, _ := c.running(); p != nil {
		return p.Pid
	}
	return 0
}

func (c *child) alive() bool {
	p, _ := c.running()
	return p != nil
}

// stop ends the process: SIGTERM, then SIGKILL after grace.
func (c *child) stop(grace time.Duration) error {
	p, exited := c.running()
	if p == nil {
		return nil
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(grace):
	}
	c.kill()
	return fmt.Errorf("%s did not exit within %v of SIGTERM; killed", c.name, grace)
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (c *child) kill() {
	p, exited := c.running()
	if p == nil {
		return
	}
	_ = p.Kill()
	<-exited
}

// signal sends sig to the process if it is running.
func (c *child) signal(sig syscall.Signal) error {
	if p, _ := c.running(); p != nil {
		return p.Signal(sig)
	}
	return nil
}

// restart starts the process again with the same arguments after it has
// exited.
func (c *child) restart() error {
	if c.alive() {
		return fmt.Errorf("restart %s: still running", c.name)
	}
	return c.start()
}

// waitExit returns a channel closed when the current process exits.
func (c *child) waitExit() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exited
}

// logTail returns the last n bytes of the process's output.
func (c *child) logTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// exitError describes how a process that should be running ended.
func (c *child) exitError() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	return fmt.Errorf("%s exited (%v); its output ends:\n%s", c.name, err, c.logTail(2000))
}

// freeLoopbackPort returns a TCP port that was free on 127.0.0.1.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePortOnAll finds a port p such that every host in hosts has p free
// and every host in plus100 has p+100 free: the demo rack's head nodes
// listen on one port on 127.0.{1,2}.{1,2,3} and its sleds on port+100.
func freePortOnAll(hosts, plus100 []string) (int, error) {
	for range 50 {
		p, err := freeLoopbackPort()
		if err != nil {
			return 0, err
		}
		if p+100 > 65535 {
			continue
		}
		ok := true
		for i, group := range [][]string{hosts, plus100} {
			for _, h := range group {
				if !portFree(h, p+100*i) {
					ok = false
					break
				}
			}
			if !ok {
				break
			}
		}
		if ok {
			return p, nil
		}
	}
	return 0, errors.New("no port free on every loopback address the rack needs")
}

func portFree(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// isAddrInUse says whether a process's output shows it lost a race for a
// port.
func isAddrInUse(out string) bool {
	return strings.Contains(out, "address already in use")
}
