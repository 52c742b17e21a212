package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// netLab is a set of network namespaces made by one test: a "switch"
// namespace holding one bridge per network (A and B), and a namespace per
// host with a veth leg on each bridge. Cutting a host's network takes its
// leg down on the switch side, as pulling a cable would: packets are
// dropped, nothing is reset, and only timeouts tell the two ends.
type netLab struct {
	t      testing.TB
	prefix string
	sw     string
	hosts  map[string]string // host name → namespace
	index  map[string]int    // host name → its address index
}

// Networks of the lab: host i is 10.77.1.i on A and 10.77.2.i on B.
var labNetworks = []string{"a", "b"}

var labSeq atomic.Int64

func labAddr(network string, i int) string {
	n := 1
	if network == "b" {
		n = 2
	}
	return fmt.Sprintf("10.77.%d.%d", n, i)
}

// newNetLab makes the switch namespace, or skips the test (fails in CI)
// where namespaces cannot be made.
func newNetLab(t testing.TB) *netLab {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(t, "ip is not installed (Debian package iproute2; `make test` installs it)")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "network namespaces need root")
	}
	// Labs side by side (the chaos regressions) need names of their own.
	l := &netLab{t: t, prefix: fmt.Sprintf("bl%d-%d", os.Getpid()%100000, labSeq.Add(1)), hosts: map[string]string{}, index: map[string]int{}}
	l.sw = l.prefix + "-sw"
	if out, err := exec.Command("ip", "netns", "add", l.sw).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot make a network namespace: %v: %s", err, out)
	}
	// Deleting a namespace deletes its interfaces; processes in it were
	// ended by their own (later registered, so earlier run) cleanups.
	t.Cleanup(func() {
		for _, ns := range l.hosts {
			exec.Command("ip", "netns", "del", ns).Run()
		}
		exec.Command("ip", "netns", "del", l.sw).Run()
	})
	for _, nw := range labNetworks {
		l.ip(l.sw, "link", "add", "br"+nw, "type", "bridge")
		l.ip(l.sw, "link", "set", "br"+nw, "up")
	}
	l.ip(l.sw, "link", "set", "lo", "up")
	return l
}

// ip runs `ip -n ns args...` and fails the test on error.
func (l *netLab) ip(ns string, args ...string) {
	l.t.Helper()
	full := append([]string{"-n", ns}, args...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(full, " "), err, out)
	}
}

// addHost makes host name's namespace with address index i on both
// networks and loopback up.
func (l *netLab) addHost(name string, i int) {
	l.t.Helper()
	ns := l.prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		l.t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	l.hosts[name], l.index[name] = ns, i
	l.ip(ns, "link", "set", "lo", "up")
	for _, nw := range labNetworks {
		leg := l.leg(name, nw)
		l.ip(l.sw, "link", "add", leg, "type", "veth", "peer", "name", "eth"+nw, "netns", ns)
		l.ip(l.sw, "link", "set", leg, "master", "br"+nw, "up")
		l.ip(ns, "addr", "add", labAddr(nw, i)+"/24", "dev", "eth"+nw)
		l.ip(ns, "link", "set", "eth"+nw, "up")
	}
}

// leg is the switch-side interface of host name on network nw.
func (l *netLab) leg(name, nw string) string { return name + "-" + nw }

// cut takes host name off network nw; heal puts it back.
func (l *netLab) cut(name, nw string) {
	l.t.Helper()
	l.t.Logf("%s: network %s of %s cut", time.Now().Format("15:04:05.000"), strings.ToUpper(nw), name)
	l.ip(l.sw, "link", "set", l.leg(name, nw), "down")
}

func (l *netLab) heal(name, nw string) {
	l.t.Helper()
	l.t.Logf("%s: network %s of %s healed", time.Now().Format("15:04:05.000"), strings.ToUpper(nw), name)
	l.ip(l.sw, "link", "set", l.leg(name, nw), "up")
}

// command returns a command that runs in host name's namespace.
func (l *netLab) command(host, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.hosts[host], name}, args...)...)
}
