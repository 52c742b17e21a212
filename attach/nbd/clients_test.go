package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The real clients against the server, with the in-memory backend, on
// 127.0.0.1. Each subtest skips if its tool is not installed.

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed, and in CI every client must be (make test installs them)", name)
		}
		t.Skipf("%s not installed", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRealClients(t *testing.T) {
	ts := startServer(t, nil)
	uri := "nbd://" + ts.addr + "/disk"

	t.Run("nbdinfo", func(t *testing.T) {
		out := runTool(t, "nbdinfo", "--json", uri)
		var info struct {
			Protocol string `json:"protocol"`
			TLS      bool   `json:"TLS"`
			Exports  []struct {
				Name         string   `json:"export-name"`
				Description  string   `json:"description"`
				Size         uint64   `json:"export-size"`
				BlockMin     uint64   `json:"block_size_minimum"`
				BlockPref    uint64   `json:"block_size_preferred"`
				BlockMax     uint64   `json:"block_size_maximum"`
				CanMultiConn bool     `json:"can_multi_conn"`
				CanFlush     bool     `json:"can_flush"`
				CanFUA       bool     `json:"can_fua"`
				CanTrim      bool     `json:"can_trim"`
				CanZero      bool     `json:"can_zero"`
				CanFastZero  bool     `json:"can_fast_zero"`
				CanCache     bool     `json:"can_cache"`
				CanDF        bool     `json:"can_df"`
				IsReadOnly   bool     `json:"is_read_only"`
				IsRotational bool     `json:"is_rotational"`
				Contexts     []string `json:"contexts"`
			} `json:"exports"`
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		e := info.Exports[0]
		if e.Size != 64<<20 || e.Name != "disk" {
			t.Errorf("export %q of %d bytes", e.Name, e.Size)
		}
		if e.BlockMin != 512 || e.BlockPref != 4096 || e.BlockMax != 32<<20 {
			t.Errorf("block sizes %d/%d/%d, want 512/4096/32MiB", e.BlockMin, e.BlockPref, e.BlockMax)
		}
		if !e.CanMultiConn || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanDF {
			t.Errorf("missing capability: %+v", e)
		}
		if e.IsReadOnly || e.IsRotational || e.CanFastZero || e.CanCache {
			t.Errorf("capability claimed that is not there: %+v", e)
		}
		if !strings.Contains(info.Protocol, "newstyle-fixed") || info.TLS {
			t.Errorf("protocol %q TLS %v", info.Protocol, info.TLS)
		}
		if strings.Join(e.Contexts, ",") != "base:allocation" {
			t.Errorf("contexts %q", e.Contexts)
		}
	})

	t.Run("nbdinfo-list", func(t *testing.T) {
		out := runTool(t, "nbdinfo", "--list", "--json", "nbd://"+ts.addr)
		var list struct {
			Exports []struct {
				Name string `json:"export-name"`
				Size uint64 `json:"export-size"`
			} `json:"exports"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
		}
		got := map[string]uint64{}
		for _, e := range list.Exports {
			got[e.Name] = e.Size
		}
		if len(got) != 2 || got["disk"] != 64<<20 || got["small"] != 1<<20 {
			t.Errorf("listed %v\n%s", got, out)
		}
	})

	t.Run("qemu-io", func(t *testing.T) {
		out := runTool(t, "qemu-io", "-f", "raw",
			"-c", "write -P 0xab 1000 5000", // unaligned: qemu read-modify-writes
			"-c", "write -P 0xcd 8191 2",
			"-c", "write -P 0x5a 1M 3M",
			"-c", "write -z 2M 64k", // WRITE_ZEROES
			"-c", "flush",
			"-c", "read -P 0xab 1000 5000",
			"-c", "read -P 0xcd 8191 2",
			"-c", "read -P 0 0 1000",
			"-c", "read -P 0 6000 2191",
			"-c", "read -P 0x5a 1M 1M",
			"-c", "read -P 0 2M 64k",
			"-c", "read -P 0x5a 0x210000 0x1f0000",
			"-c", "discard 3M 1M", // TRIM
			"-c", "read -P 0 3M 1M",
			"-c", "aio_write -P 0x11 8M 64k",
			"-c", "aio_write -P 0x22 9M 64k",
			"-c", "aio_flush",
			"-c", "read -P 0x11 8M 64k",
			"-c", "read -P 0x22 9M 64k",
			uri)
		if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		if n := strings.Count(out, "read "); n != 10 {
			t.Fatalf("qemu-io ran %d reads, want 10:\n%s", n, out)
		}
		if !bytes.Equal(ts.disk.snapshot(1000, 5000), bytes.Repeat([]byte{0xab}, 5000)) {
			t.Error("the backend does not hold what qemu-io wrote")
		}
		if ts.disk.zeroes.Load() == 0 || ts.disk.trims.Load() == 0 || ts.disk.flushes.Load() == 0 || ts.disk.fuaW.Load() == 0 {
			t.Errorf("commands reaching the backend: zeroes %d trims %d flushes %d fua writes %d; want all > 0",
				ts.disk.zeroes.Load(), ts.disk.trims.Load(), ts.disk.flushes.Load(), ts.disk.fuaW.Load())
		}
	})

	t.Run("nbdinfo-map", func(t *testing.T) {
		out := runTool(t, "nbdinfo", "--map", "--json", uri)
		var extents []struct {
			Offset uint64 `json:"offset"`
			Length uint64 `json:"length"`
			Type   uint32 `json:"type"`
		}
		if err := json.Unmarshal([]byte(out), &extents); err != nil || len(extents) == 0 {
			t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
		}
		var next uint64
		for _, e := range extents {
			if e.Offset != next || e.Type != 0 {
				t.Fatalf("extent %+v, want contiguous allocated data:\n%s", e, out)
			}
			next += e.Length
		}
		if next != 64<<20 {
			t.Fatalf("map covers %d bytes, want %d:\n%s", next, 64<<20, out)
		}
	})

	t.Run("qemu-img-map", func(t *testing.T) {
		out := runTool(t, "qemu-img", "map", "-f", "raw", "--output=json", uri)
		if !strings.Contains(out, `"data": true`) || strings.Contains(out, `"data": false`) {
			t.Errorf("qemu-img map:\n%s", out)
		}
	})

	t.Run("nbdcopy", func(t *testing.T) {
		dir := t.TempDir()
		in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
		data := make([]byte, 8<<20)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(in, data, 0o600); err != nil {
			t.Fatal(err)
		}
		runTool(t, "nbdcopy", "--flush", in, uri) // several connections: CAN_MULTI_CONN
		if ts.disk.opens.Load() < 2 {
			t.Logf("nbdcopy opened %d connections", ts.disk.opens.Load())
		}
		runTool(t, "nbdcopy", uri, out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(data)], data) {
			t.Fatal("nbdcopy round trip changed the data")
		}
	})
}
