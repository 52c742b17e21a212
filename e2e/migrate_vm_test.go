package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/internal/nbdclient"
)

// bootNVMeGuest boots the VM harness's guest (guest-lib.sh builds it) with
// its "nvme" program: the guest kernel's NVMe/TCP initiator connects to
// port on the host's loopback, writes a random MiB at 1 MiB, reads it
// back, and disconnects. It returns the guest's console lines.
func bootNVMeGuest(t *testing.T, port, nqn string) string {
	t.Helper()
	lib := filepath.Join(vmDir(t), "guest-lib.sh")
	const boot = `set -uo pipefail
source "$LIB"
install_host_packages
build_guest
ACC=$(pick_accel); CPU=$(cpu_for_accel "$ACC")
timeout 300 qemu-system-x86_64 -accel "$ACC" -M q35 -cpu "$CPU" -m 256 -nodefaults -no-user-config \
  -display none -serial stdio -no-reboot -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.cpio.gz" \
  -append "console=ttyS0 panic=-1 quiet demo=nvme nvmeport=$PORT nvmenqn=$NQN" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 </dev/null | grep -a '^GUEST'
`
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", boot)
	cmd.Env = append(os.Environ(), "LIB="+lib, "PORT="+port, "NQN="+nqn)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("boot the NVMe/TCP guest: %v\n%s", err, tail(string(out), 6000))
	}
	return string(out)
}

var guestPattern = regexp.MustCompile(`GUEST: PATTERN dev=/dev/nvme\S+ size=\d+sectors written_md5=([0-9a-f]{32}) readback_md5=([0-9a-f]{32})`)

// TestNVMeHandoffLinuxInitiator hands a volume from host h1 to host h2
// with the Linux kernel's NVMe/TCP initiator on both sides, each in a
// guest of the VM harness: h1's guest writes through h1's agent; once h2
// is prepared, h2's guest connects (a prepared destination may), and its
// first write switches the volume over; then h1's agent no longer offers
// the volume to a guest kernel.
func TestNVMeHandoffLinuxInitiator(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs; skipped in -short mode")
	}
	vmScript(t, "guest-lib.sh")
	r := newRack(t)
	r.startProcesses()
	const vol = "nvmemig"
	if out, err := r.cli("volume", "create", vol, "--size", "64MiB", "--attach", "h1"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	nqn := attach.VolumeNQN(vol)
	nvmeOf, nbdOf := map[string]string{}, map[string]string{}
	for _, host := range []string{"h1", "h2"} {
		nvmeOf[host], nbdOf[host] = freeLoopbackAddr(t), freeLoopbackAddr(t)
		args := []string{"agent", "--host", host, "--nbd", nbdOf[host], "--nvme", nvmeOf[host], "--nvme-discovery", freeLoopbackAddr(t)}
		for _, h := range r.headNodes {
			args = append(args, "--headnode", h)
		}
		startProc(t, "agent-"+host, args...)
	}
	waitNVMe(t, nvmeOf["h1"], nqn)
	waitListening(t, nvmeOf["h2"])
	port := func(host string) string {
		_, p, _ := net.SplitHostPort(nvmeOf[host])
		return p
	}
	c := r.rackClient()

	// h1's kernel writes through h1's agent.
	out := bootNVMeGuest(t, port("h1"), nqn)
	if !strings.Contains(out, "pattern OK") {
		t.Fatalf("h1's guest over NVMe/TCP:\n%s", out)
	}
	before := waitAttached(t, c, vol, "h1")

	// h2 prepared: its kernel connects, reads, and its first write
	// switches the volume over.
	if out, err := r.cli("migrate", vol, "--to", "h2"); err != nil {
		t.Fatalf("migrate --to h2: %v\n%s", err, out)
	}
	waitNVMe(t, nvmeOf["h2"], nqn)
	start := time.Now()
	out = bootNVMeGuest(t, port("h2"), nqn)
	t.Logf("h2's guest ran in %v", time.Since(start).Round(time.Millisecond))
	m := guestPattern.FindStringSubmatch(out)
	if m == nil || m[1] != m[2] || !strings.Contains(out, "pattern OK") {
		t.Fatalf("h2's guest over NVMe/TCP across the switchover:\n%s", out)
	}
	after := waitAttached(t, c, vol, "h2")
	if after.AttachGeneration <= before.AttachGeneration {
		t.Fatalf("attached to h2 at generation %d, h1 had %d", after.AttachGeneration, before.AttachGeneration)
	}
	// What h2's kernel wrote is the volume's, read over h2's NBD.
	nb, err := nbdclient.Dial(nbdOf["h2"], vol, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	buf := make([]byte, 1<<20)
	if err := nb.ReadAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if got := md5hex(buf); got != m[1] {
		t.Fatalf("the volume holds md5 %s at [1MiB,2MiB), h2's guest wrote %s", got, m[1])
	}

	// h1 handed the volume over: its agent no longer connects a kernel
	// to it.
	out = bootNVMeGuest(t, port("h1"), nqn)
	if strings.Contains(out, "pattern OK") || !strings.Contains(out, "no namespace device appeared") {
		t.Fatalf("h1's guest after the handoff:\n%s", out)
	}
	t.Logf("h1 generation %d -> h2 generation %d", before.AttachGeneration, after.AttachGeneration)
}
