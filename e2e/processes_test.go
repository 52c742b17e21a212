package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/nbdclient"
)

// TestRackOfProcesses runs three head-node processes and an agent, drives
// the admin CLI through every volume operation and its errors, serves a
// volume to qemu-io, and kills the secondary during writes.
func TestRackOfProcesses(t *testing.T) {
	needTools(t, "qemu-io")
	r := newRack(t)
	r.startProcesses()

	cli := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := r.cli(args...)
		if err != nil {
			t.Fatalf("ballast %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	cliFails := func(t *testing.T, want string, args ...string) {
		t.Helper()
		out, err := r.cli(args...)
		if err == nil {
			t.Fatalf("ballast %s succeeded, want an error containing %q:\n%s", strings.Join(args, " "), want, out)
		}
		if !strings.Contains(out, want) {
			t.Fatalf("ballast %s: error does not say %q:\n%s", strings.Join(args, " "), want, out)
		}
	}

	t.Run("volume admin", func(t *testing.T) {
		cli(t, "volume", "create", "vol1", "--size", "64MiB", "--attach", agentHost)
		cli(t, "volume", "create", "vol2", "--size", "1GiB", "--attach", agentHost)
		cliFails(t, "already exists", "volume", "create", "vol1", "--size", "64MiB")
		cliFails(t, "not a multiple of 4096", "volume", "create", "odd", "--size", "1000")
		cliFails(t, "greater than zero", "volume", "create", "zero", "--size", "0")
		cliFails(t, "not found", "volume", "show", "nosuch")
		cliFails(t, "not found", "volume", "delete", "nosuch")
		cliFails(t, "shrinking", "volume", "resize", "vol2", "--size", "512MiB")
		out := cli(t, "volume", "list")
		if !strings.Contains(out, "vol1") || !strings.Contains(out, "vol2") {
			t.Fatalf("volume list:\n%s", out)
		}
		cli(t, "volume", "resize", "vol2", "--size", "2GiB")
		if v := r.showVolume("vol2"); v.Volume.SizeBytes != fmt.Sprint(2<<30) {
			t.Fatalf("after resize, size is %s", v.Volume.SizeBytes)
		}
		cli(t, "volume", "delete", "vol2")
		cliFails(t, "not found", "volume", "show", "vol2")
		// Every head node answers admin calls (followers forward).
		for _, h := range r.headNodes {
			out, err := r.cli("volume", "show", "vol1", "--headnode", h)
			if err != nil || !strings.Contains(out, "vol1") {
				t.Fatalf("head node %s: volume show: %v\n%s", h, err, out)
			}
		}
		r.waitServed("vol1", r.agent)
	})

	t.Run("qemu-io through separate processes", func(t *testing.T) {
		out := mustRun(t, 60*time.Second, "qemu-io", "-f", "raw",
			"-c", "write -P 0x42 4000 10000", "-c", "read -P 0x42 4000 10000", r.uri("vol1"))
		if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
			t.Fatalf("qemu-io:\n%s", out)
		}
	})

	t.Run("consistency group snapshots under fio", func(t *testing.T) {
		needTools(t, "fio")
		members := []string{"cgdata", "cgwal"}
		for _, m := range members {
			cli(t, "volume", "create", m, "--size", "64MiB", "--attach", agentHost)
		}
		cli(t, "cg", "create", "db", members[0], members[1])
		cliFails(t, "is in consistency group", "cg", "create", "other", members[0])
		cliFails(t, "delete the group first", "volume", "delete", members[0])
		cliFails(t, "does not exist", "cg", "snapshot", "nosuch")
		for _, m := range members {
			r.waitServed(m, r.agent)
		}
		// fio writes both members with checksums while cuts are taken;
		// the cuts pause writes for a moment and must cost fio nothing.
		fioDone := make(chan error, len(members))
		fioOut := make([]string, len(members))
		for i, m := range members {
			go func() {
				out, err := run(t, 5*time.Minute, "fio", "--name="+m, "--ioengine=nbd", "--uri="+r.uri(m), "--rw=randwrite",
					"--bs=4k", "--iodepth=8", "--size=24M", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
					"--do_verify=1", fmt.Sprintf("--randseed=%d", i+1), "--output-format=terse")
				fioOut[i] = out
				fioDone <- err
			}()
		}
		cuts, during := 0, 0
		finished := 0
		var fioErr error
		for finished < len(members) || cuts < 3 {
			select {
			case err := <-fioDone:
				finished++
				fioErr = errors.Join(fioErr, err)
				continue
			default:
			}
			out := cli(t, "cg", "snapshot", "db")
			if !strings.Contains(out, fmt.Sprintf("cut %d", cuts+1)) {
				t.Fatalf("cg snapshot printed:\n%s", out)
			}
			cuts++
			if finished < len(members) {
				during++
			}
			time.Sleep(100 * time.Millisecond)
		}
		if fioErr != nil {
			t.Fatalf("fio beside the cuts: %v\n%s\n%s", fioErr, tail(fioOut[0], 2000), tail(fioOut[1], 2000))
		}
		t.Logf("%d cuts, %d of them while fio wrote", cuts, during)
		var cg struct {
			Generation string `json:"generation"`
			Cuts       []struct {
				Members []struct {
					Volume string `json:"volume"`
					Seq    string `json:"seq"`
				} `json:"members"`
			} `json:"cuts"`
		}
		if err := json.Unmarshal([]byte(cli(t, "cg", "show", "db", "--json")), &cg); err != nil {
			t.Fatal(err)
		}
		if n(cg.Generation) != uint64(cuts) || len(cg.Cuts) != min(cuts, 64) {
			t.Fatalf("cg show: generation %s with %d cuts listed, want %d (the last 64 at most)", cg.Generation, len(cg.Cuts), cuts)
		}
		last := map[string]uint64{}
		for i, c := range cg.Cuts {
			if len(c.Members) != len(members) {
				t.Fatalf("cut %d has %d members", i+1, len(c.Members))
			}
			for _, m := range c.Members {
				if n(m.Seq) < last[m.Volume] {
					t.Fatalf("cut %d of %s at seq %s, before the last cut's %d", i+1, m.Volume, m.Seq, last[m.Volume])
				}
				last[m.Volume] = n(m.Seq)
			}
		}
		if out := cli(t, "volume", "show", members[1]); !strings.Contains(out, "db (last cut "+fmt.Sprint(cuts)) {
			t.Fatalf("volume show does not name the group and its last cut:\n%s", out)
		}
		if out := cli(t, "cg", "list"); !strings.Contains(out, "db") {
			t.Fatalf("cg list:\n%s", out)
		}
		cli(t, "cg", "delete", "db")
		cli(t, "volume", "delete", members[0])
	})

	t.Run("kill the secondary during writes", func(t *testing.T) {
		v := r.showVolume("vol1")
		secondary := v.Volume.Secondaries[0]
		primary := v.Volume.Primary
		conn, err := nbdclient.Dial(r.nbdAddr, "vol1", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()

		// Write block i with a header naming i, record every acknowledged
		// write, and kill -9 the secondary after the 200th. Writes pause
		// until the directory replaces the secondary and the primary has
		// mirrored the volume to the new one, then go on.
		var acked []uint64
		var pause time.Duration
		block := make([]byte, 4096)
		for i := uint64(0); i < 2000; i++ {
			binary.BigEndian.PutUint64(block, i+1)
			copy(block[8:], bytes.Repeat([]byte{byte(i)}, 64))
			start := time.Now()
			conn.SetDeadline(time.Now().Add(90 * time.Second))
			if err := conn.WriteAt(block, i*4096, false); err != nil {
				t.Fatalf("write %d failed after %v: %v", i, time.Since(start), err)
			}
			pause = max(pause, time.Since(start))
			acked = append(acked, i)
			if len(acked) == 200 {
				r.nodes[secondary].kill()
			}
		}
		v2 := r.showVolume("vol1")
		replacement := v2.Volume.Secondaries[0]
		if v2.Volume.Primary != primary || replacement == secondary || replacement == primary {
			t.Fatalf("after the secondary's death: %+v, want primary %s with a new secondary", v2.Volume, primary)
		}

		// Stop the primary and the replacement, then read the replacement's
		// copy offline: every acknowledged write must be in it, those from
		// before it joined (its full copy) and those after.
		r.nodes[primary].kill()
		r.nodes[replacement].kill()
		out := filepath.Join(t.TempDir(), "secondary.img")
		if o, err := r.cli("headnode", "export-replica", "--data", filepath.Join(r.dataDir, replacement),
			"--volume-id", v.Volume.ID, "--size", fmt.Sprint(len(acked)*4096+4096), "--out", out); err != nil {
			t.Fatalf("export replica: %v\n%s", err, o)
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range acked {
			if got := binary.BigEndian.Uint64(img[i*4096:]); got != i+1 {
				t.Fatalf("acknowledged write %d is not on the new secondary (block holds %d)", i, got)
			}
		}
		t.Logf("%d acknowledged writes, all on %s, which replaced %s; the longest write took %v", len(acked), replacement, secondary, pause)
	})
}
