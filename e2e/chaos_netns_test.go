package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// dialInNetns dials addr from inside the network namespace ns (a name
// under /var/run/netns, as `ip netns add` makes). A socket belongs to the
// namespace of the thread that created it and stays there, so the dial
// runs on a thread of its own that enters ns, makes the socket and goes
// back; the returned connection is used from any goroutine.
func dialInNetns(ctx context.Context, ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := dialOnNetnsThread(ctx, ns, addr)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

func dialOnNetnsThread(ctx context.Context, ns, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer home.Close()
	target, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	// The socket is made by this call, on this thread; connect's wait may
	// go through the poller, which is fine: the socket is already ns's.
	var d net.Dialer
	c, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime ends it with this goroutine
		// rather than hand a thread in the wrong namespace to others.
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("leave namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return c, dialErr
}

// nft runs an nft script inside host's namespace.
func (l *netLab) nft(host, script string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.hosts[host], "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s\n%s", host, err, strings.TrimSpace(string(out)), script)
	}
	return nil
}

// nftDrop installs table name in host's namespace, dropping the packets
// that match (an nft expression, e.g. `ip daddr { 10.77.1.2 }`, or "" for
// every packet not on loopback) in both directions; for the incoming
// direction, daddr/saddr in match are swapped. percent < 100 drops that
// share of them at random.
func (l *netLab) nftDrop(host, name, outMatch, inMatch string, percent int) error {
	random := ""
	if percent > 0 && percent < 100 {
		random = fmt.Sprintf("numgen random mod 100 < %d ", percent)
	}
	script := fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority -10; policy accept;
		iifname != "lo" %[2]s %[4]sdrop
	}
	chain out {
		type filter hook output priority -10; policy accept;
		oifname != "lo" %[3]s %[4]sdrop
	}
}
`, name, inMatch, outMatch, random)
	return l.nft(host, script)
}

// nftDelete removes table name from host's namespace, if it is there.
func (l *netLab) nftDelete(host, name string) error {
	err := l.nft(host, fmt.Sprintf("delete table inet %s\n", name))
	if err != nil && strings.Contains(err.Error(), "No such file") {
		return nil
	}
	return err
}

// nftTables lists the tables in host's namespace.
func (l *netLab) nftTables(host string) []string {
	out, err := exec.Command("ip", "netns", "exec", l.hosts[host], "nft", "list", "tables").CombinedOutput()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" {
			names = append(names, f[1]+" "+f[2])
		}
	}
	return names
}
