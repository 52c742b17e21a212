package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestHeadNodeDiskFull fills the data disks of a rack's head nodes (each
// a small tmpfs) under a volume served over NBD: writes fail with ENOSPC
// as qemu-io sees them while reads go on, rack status says why, a head
// node restarted on a completely full disk starts, and writes resume by
// themselves once space is freed.
func TestHeadNodeDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "mounting a tmpfs needs root")
	}
	needTools(t, "qemu-io")
	const diskBytes = 64 << 20
	r, c := startInProcessRackWith(t, 3, volume.LeaseConfig{}, func(r *inProcessRack) {
		r.disk = headnode.DiskConfig{MinFreeBytes: 8 << 20, ResumeFreeBytes: 12 << 20, ReserveBytes: 4 << 20,
			CheckInterval: 100 * time.Millisecond}
		for _, p := range r.peers {
			mountTmpfs(t, filepath.Join(r.dir, p.ID), diskBytes)
		}
	})
	createVolume(t, c, "v", 16<<20)
	agent, err := attach.StartAgent(attach.AgentConfig{HeadNodes: c.HeadNodes, NBDListen: "127.0.0.1:0", Logger: r.logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	uri := fmt.Sprintf("nbd://%s/v", agent.NBDAddr())
	qemuIO := func(cmds ...string) string {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		// qemu-io exits 1 when a command fails: what failed is in its
		// output, which every caller checks.
		out, _ := run(t, 60*time.Second, "qemu-io", append(args, uri)...)
		return out
	}
	const noSpace = "No space left on device"
	if out := qemuIO("write -P 0xab 0 64k"); strings.Contains(out, "failed") {
		t.Fatalf("write on empty disks: %s", out)
	}

	// Fill every head node's disk to below the minimum (but not to the
	// brim: raft keeps writing its logs in the headroom).
	fillers := map[string]string{}
	for _, p := range r.peers {
		fillers[p.ID] = fillDisk(t, filepath.Join(r.dir, p.ID), 6<<20)
	}
	// A write may still land before the head nodes measure their disks
	// again (every 100 ms): then it is what reads return. A refused one
	// must change nothing.
	want := "0xab"
	waitFor(t, 30*time.Second, "writes refused with ENOSPC", func() bool {
		out := qemuIO("write -P 0xcd 0 64k")
		if strings.Contains(out, "wrote 65536/65536 bytes") {
			want = "0xcd"
		}
		return strings.Contains(out, noSpace)
	})
	if out := qemuIO("read -P " + want + " 0 64k"); strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("read on full disks: %s", out)
	}
	// Every head node says so, each once it measured its disk again (a
	// node that is no replica of the volume may measure later, and its
	// pebble may have freed space since the fill: top it up then).
	waitFor(t, 30*time.Second, "every head node's status to say its writes are refused", func() bool {
		st := rackStatus(t, c)
		if len(st.Disks) != 3 {
			return false
		}
		for _, d := range st.Disks {
			if d.TotalBytes != diskBytes {
				t.Fatalf("rack status of a full head node: %v", d)
			}
			if !d.WritesRefused {
				fillDisk(t, filepath.Join(r.dir, d.HeadNode), 6<<20)
				return false
			}
		}
		return true
	})

	// Restart a head node on a disk full to the last byte: it must start
	// (its reserve gives pebble room to open) and still refuse writes.
	victim := r.peers[0].ID
	r.stop(victim)
	fillDisk(t, filepath.Join(r.dir, victim), 0)
	r.start(victim)
	if out := qemuIO("read -P " + want + " 0 64k"); strings.Contains(out, "failed") {
		t.Fatalf("read after a restart on a full disk: %s", out)
	}
	if out := qemuIO("write -P 0xcd 0 64k"); !strings.Contains(out, noSpace) {
		t.Fatalf("write after a restart on a full disk: %s", out)
	}

	// Space freed: writes resume by themselves.
	for _, p := range r.peers {
		if err := os.RemoveAll(filepath.Join(r.dir, p.ID, "filler")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 60*time.Second, "writes admitted again", func() bool {
		return !strings.Contains(qemuIO("write -P 0xef 0 64k"), "failed")
	})
	if out := qemuIO("read -P 0xef 0 64k"); strings.Contains(out, "failed") {
		t.Fatalf("read back after space was freed: %s", out)
	}
	// Each head node says so once it measured its disk again.
	waitFor(t, 30*time.Second, "every head node's status to say its writes are admitted", func() bool {
		for _, d := range rackStatus(t, c).Disks {
			if d.WritesRefused {
				return false
			}
		}
		return true
	})
}

func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		skipOrFail(t, "mount tmpfs: %v: %s", err, out)
	}
	// Cleanups run last in first out: this one after the rack stopped.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fillDisk writes files under dir/filler until the disk has at most
// leave bytes free (0: until it is full), and returns the directory.
func fillDisk(t *testing.T, dir string, leave uint64) string {
	t.Helper()
	fdir := filepath.Join(dir, "filler")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for i := 0; ; i++ {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		free := st.Bavail * uint64(st.Bsize)
		if leave > 0 && free <= leave {
			return fdir
		}
		n := min(uint64(len(buf)), max(free-leave, 4096))
		f, err := os.OpenFile(filepath.Join(fdir, fmt.Sprint(i)), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return fdir
			}
			t.Fatal(err)
		}
		_, err = f.Write(buf[:n])
		f.Close()
		if errors.Is(err, syscall.ENOSPC) {
			return fdir
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func rackStatus(t *testing.T, c *attach.Client) *ballastpb.RackStatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var resp *ballastpb.RackStatusResponse
	if err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		var err error
		resp, err = a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return resp
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
