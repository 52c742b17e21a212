package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoWithRealClients runs `ballast demo` and drives it with qemu-io,
// nbdinfo, nbdcopy and fio, then restarts the rack between a write and its
// read-back.
func TestDemoWithRealClients(t *testing.T) {
	needTools(t, "qemu-io", "nbdinfo", "nbdcopy", "fio")
	r := newRack(t)
	r.startDemo("512MiB")
	uri := r.uri("demo")

	t.Run("nbdinfo", func(t *testing.T) {
		out := mustRun(t, 30*time.Second, "nbdinfo", "--json", uri)
		var info struct {
			Exports []struct {
				Size          uint64 `json:"export-size"`
				BlockMin      uint64 `json:"block_size_minimum"`
				BlockPref     uint64 `json:"block_size_preferred"`
				BlockMax      uint64 `json:"block_size_maximum"`
				CanMultiConn  bool   `json:"can_multi_conn"`
				CanFlush      bool   `json:"can_flush"`
				CanFUA        bool   `json:"can_fua"`
				CanTrim       bool   `json:"can_trim"`
				CanZero       bool   `json:"can_zero"`
				IsReadOnly    bool   `json:"is_read_only"`
				ExportName    string `json:"export-name"`
				ContentsDescr string `json:"description"`
			} `json:"exports"`
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		e := info.Exports[0]
		if e.Size != 512<<20 {
			t.Errorf("export size %d, want %d", e.Size, 512<<20)
		}
		if e.BlockMin != 512 || e.BlockPref != 4096 || e.BlockMax < 1<<20 {
			t.Errorf("block sizes min %d preferred %d max %d, want 512, 4096, >= 1 MiB", e.BlockMin, e.BlockPref, e.BlockMax)
		}
		if !e.CanMultiConn || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || e.IsReadOnly {
			t.Errorf("flags do not tell the truth: %+v\n%s", e, out)
		}
	})

	t.Run("qemu-io patterns straddling blocks", func(t *testing.T) {
		out := mustRun(t, 60*time.Second, "qemu-io", "-f", "raw",
			"-c", "write -P 0xab 1000 5000",
			"-c", "write -P 0xcd 8191 2",
			"-c", "write -P 0x5a 1M 3M",
			"-c", "write -z 2M 64k",
			"-c", "flush",
			"-c", "read -P 0xab 1000 5000",
			"-c", "read -P 0xcd 8191 2",
			"-c", "read -P 0 0 1000",
			"-c", "read -P 0 6000 2191",
			"-c", "read -P 0x5a 1M 1M",
			"-c", "read -P 0 2M 64k",
			"-c", "read -P 0x5a 0x210000 0x1f0000",
			"-c", "discard 3M 1M",
			"-c", "read -P 0 3M 1M",
			uri)
		if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		if n := strings.Count(out, "read "); n != 8 {
			t.Fatalf("qemu-io ran %d reads, want 8:\n%s", n, out)
		}
	})

	t.Run("base:allocation tells holes from data", func(t *testing.T) {
		// A region nothing else here writes: data, a block zeroed with
		// unmap (a hole), zeroes without (data), a trimmed range (a hole).
		const M = 1 << 20
		mustRun(t, 60*time.Second, "qemu-io", "-f", "raw",
			"-c", "write -P 0x21 400M 64k",
			"-c", "write -P 0x22 401M 8k",
			"-c", "write -z -u 401M 4k",
			"-c", fmt.Sprintf("write -z %d 4k", 401*M+64<<10),
			"-c", "write -P 0x23 402M 1M",
			"-c", fmt.Sprintf("discard %d 256k", 402*M+256<<10),
			uri)
		type extent struct {
			Offset, Length uint64
			Hole           bool
		}
		want := []extent{
			{400 * M, 64 << 10, false},
			{400*M + 64<<10, M - 64<<10 + 4<<10, true}, // to 401M+4k: zeroed with unmap
			{401*M + 4<<10, 4 << 10, false},
			{401*M + 8<<10, 56 << 10, true},
			{401*M + 64<<10, 4 << 10, false},
			{401*M + 68<<10, M - 68<<10, true},
			{402 * M, 256 << 10, false},
			{402*M + 256<<10, 256 << 10, true},
			{402*M + 512<<10, 512 << 10, false},
			{403 * M, 109 * M, true},
		}
		// Both clients' maps of the region, merged and cut to it.
		clip := func(in []extent) []extent {
			var out []extent
			for _, e := range in {
				lo, hi := max(e.Offset, 400*M), min(e.Offset+e.Length, 512*M)
				if lo >= hi {
					continue
				}
				if n := len(out); n > 0 && out[n-1].Hole == e.Hole && out[n-1].Offset+out[n-1].Length == lo {
					out[n-1].Length += hi - lo
					continue
				}
				out = append(out, extent{lo, hi - lo, e.Hole})
			}
			return out
		}
		var nbdMap []struct {
			Offset uint64 `json:"offset"`
			Length uint64 `json:"length"`
			Type   uint32 `json:"type"`
		}
		out := mustRun(t, 60*time.Second, "nbdinfo", "--map", "--json", uri)
		if err := json.Unmarshal([]byte(out), &nbdMap); err != nil {
			t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
		}
		var got []extent
		var dataBytes uint64
		for _, e := range nbdMap {
			got = append(got, extent{e.Offset, e.Length, e.Type&1 != 0})
			if e.Type&1 == 0 {
				dataBytes += e.Length
			}
		}
		// The volume's usage counts the same blocks the map shows as
		// data (all this test's writes are 4 KiB-aligned but qemu-io's
		// straddling ones, which the map rounds to whole 512-byte
		// sectors and the usage to whole blocks).
		v := r.showVolume("demo")
		if v.Usage == nil {
			t.Fatalf("volume show has no usage: %s", v.UsageError)
		}
		if used, _ := strconv.ParseUint(v.Usage.UsedBytes, 10, 64); used != dataBytes || used == 0 {
			t.Fatalf("volume show: %s bytes used; the map shows %d bytes of data", v.Usage.UsedBytes, dataBytes)
		}
		if got := clip(got); !reflect.DeepEqual(got, want) {
			t.Fatalf("nbdinfo --map of [400M, 512M):\n got %v\nwant %v", got, want)
		}
		var qemuMap []struct {
			Start  uint64 `json:"start"`
			Length uint64 `json:"length"`
			Data   bool   `json:"data"`
			Zero   bool   `json:"zero"`
		}
		out = mustRun(t, 60*time.Second, "qemu-img", "map", "--output=json", "-f", "raw", uri)
		if err := json.Unmarshal([]byte(out), &qemuMap); err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, out)
		}
		got = nil
		for _, e := range qemuMap {
			got = append(got, extent{e.Start, e.Length, !e.Data})
			if !e.Data && !e.Zero {
				t.Fatalf("qemu-img map: a hole that does not read as zeroes: %+v", e)
			}
		}
		if got := clip(got); !reflect.DeepEqual(got, want) {
			t.Fatalf("qemu-img map of [400M, 512M):\n got %v\nwant %v", got, want)
		}
	})

	t.Run("reads are served from the primary's read cache", func(t *testing.T) {
		type caches struct {
			ReadCaches []struct {
				HeadNode string `json:"headNode"`
				Hits     string `json:"hits"`
			} `json:"readCaches"`
		}
		hits := func() uint64 {
			out, err := r.cli("rack", "status", "--json")
			if err != nil {
				t.Fatalf("rack status: %v\n%s", err, out)
			}
			var c caches
			if err := json.Unmarshal([]byte(out), &c); err != nil || len(c.ReadCaches) != 3 {
				t.Fatalf("rack status --json: %v, %d read caches\n%s", err, len(c.ReadCaches), out)
			}
			var sum uint64
			for _, rc := range c.ReadCaches {
				n, _ := strconv.ParseUint(rc.Hits, 10, 64)
				sum += n
			}
			return sum
		}
		before := hits()
		// A small write goes through the journals and into the cache as it
		// commits; a large one goes straight to a segment, so its first
		// read misses and fills the cache, and the second hits.
		out := mustRun(t, 60*time.Second, "qemu-io", "-f", "raw",
			"-c", "write -P 0x31 300M 64k", "-c", "read -P 0x31 300M 64k",
			"-c", "write -P 0x32 301M 1M", "-c", "read -P 0x32 301M 128k", "-c", "read -P 0x32 301M 128k", uri)
		if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		if got := hits() - before; got < 16+32 {
			t.Fatalf("a read of 16 blocks just written and a second read of 32: %d cache hits, want 48 or more", got)
		}
	})

	t.Run("out-of-range requests fail and the connection stays usable", func(t *testing.T) {
		// qemu-io checks bounds itself and never sends such a request, so
		// this uses libnbd with its client-side checks off: the request
		// reaches the server, which must refuse it with the spec's errno
		// and keep serving the connection.
		mustRun(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", uri)
		py := nbdPython(t)
		out := mustRun(t, 60*time.Second, py, "-c", `
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
def expect(errno_want, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != errno_want:
            sys.exit("got errno %s (%s), want %d" % (e.errnum, e, errno_want))
        return
    sys.exit("request past the end succeeded")
expect(errno.EINVAL, lambda: h.pread(8192, size - 4096))
expect(errno.ENOSPC, lambda: h.pwrite(b"x" * 8192, size - 4096))
expect(errno.EINVAL, lambda: h.trim(8192, size - 4096))
expect(errno.EINVAL, lambda: h.pread(4096, 2**63))
if h.pread(4096, 0) != b"\x11" * 4096:
    sys.exit("the read after the refused ones returned the wrong data")
h.shutdown()
print("ok")
`, uri)
		if !strings.Contains(out, "ok") {
			t.Fatalf("libnbd:\n%s", out)
		}
	})

	t.Run("nbdcopy 256 MiB in and out", func(t *testing.T) {
		dir := t.TempDir()
		in := filepath.Join(dir, "in.img")
		outFile := filepath.Join(dir, "out.img")
		f, err := os.Create(in)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, 256<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		want := h.Sum(nil)
		mustRun(t, 5*time.Minute, "nbdcopy", in, uri)
		mustRun(t, 5*time.Minute, "nbdcopy", uri, outFile)
		got, err := fileSHA256(outFile, 256<<20)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("nbdcopy round trip changed the data: sha256 %x, want %x", got, want)
		}
	})

	t.Run("qemu-img convert in and out, then compare", func(t *testing.T) {
		dir := t.TempDir()
		in := filepath.Join(dir, "in.raw")
		data := make([]byte, 16<<20)
		if _, err := rand.Read(data[:8<<20]); err != nil { // second half stays zero
			t.Fatal(err)
		}
		if err := os.WriteFile(in, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// Into the volume at an offset, as the quick start does, then out
		// to a qcow2 image, which qemu-img compare checks against the file.
		target := fmt.Sprintf(`json:{"file.driver":"nbd","file.server.type":"inet","file.server.host":%q,"file.server.port":%q,"file.export":"demo","driver":"raw","offset":%d,"size":%d}`,
			strings.Split(r.nbdAddr, ":")[0], strings.Split(r.nbdAddr, ":")[1], 100<<20, len(data))
		mustRun(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, target)
		out := filepath.Join(dir, "out.qcow2")
		mustRun(t, 2*time.Minute, "qemu-img", "convert", "-O", "qcow2", target, out)
		if o := mustRun(t, time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", in, out); !strings.Contains(o, "Images are identical") {
			t.Fatalf("qemu-img compare:\n%s", o)
		}
	})

	t.Run("fio verify over two connections", func(t *testing.T) {
		out := mustRun(t, 5*time.Minute, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2", "--size=32m",
			"--offset_increment=64m", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1",
			"--verify_state_save=0", // no state files left in the package directory
			"--group_reporting", "--output-format=json")
		var res struct {
			Jobs []struct {
				Error int `json:"error"`
				Write struct {
					IOBytes uint64 `json:"io_bytes"`
				} `json:"write"`
			} `json:"jobs"`
		}
		start := strings.Index(out, "{")
		if start < 0 || json.Unmarshal([]byte(out[start:]), &res) != nil || len(res.Jobs) == 0 {
			t.Fatalf("fio output:\n%s", out)
		}
		if res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOBytes != 64<<20 {
			t.Fatalf("fio: error %d, wrote %d bytes, want 0 and %d:\n%s", res.Jobs[0].Error, res.Jobs[0].Write.IOBytes, 64<<20, out)
		}
	})

	t.Run("restart between write and read-back", func(t *testing.T) {
		mustRun(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x77 300M 1M", "-c", "write -P 0x78 400000 12345", uri)
		r.demo.stop(t)
		r.startDemo("512MiB")
		out := mustRun(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x77 300M 1M", "-c", "read -P 0x78 400000 12345", uri)
		if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
			t.Fatalf("data lost across restart:\n%s", out)
		}
	})
}

func fileSHA256(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
