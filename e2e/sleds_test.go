package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/nbdclient"
)

// rackStatusJSON is `ballast rack status --json` (protojson: uint64 as
// strings, fields in camelCase, zero values present).
type rackStatusJSON struct {
	Groups []struct {
		Group        string `json:"group"`
		HeadNode     string `json:"headNode"`
		State        string `json:"state"`
		Leader       string `json:"leader"`
		Term         string `json:"term"`
		AppliedIndex string `json:"appliedIndex"`
	} `json:"groups"`
	Paths []struct {
		From    string `json:"from"`
		To      string `json:"to"`
		Address string `json:"address"`
		Up      bool   `json:"up"`
	} `json:"paths"`
	Sleds []struct {
		Sled struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"sled"`
		Reachable    bool   `json:"reachable"`
		Shards       string `json:"shards"`
		UsedBytes    string `json:"usedBytes"`
		CorruptFound string `json:"corruptFound"`
	} `json:"sleds"`
	Redundancy struct {
		SegmentsFull     string `json:"segmentsFull"`
		SegmentsDegraded string `json:"segmentsDegraded"`
		SegmentsLost     string `json:"segmentsLost"`
		ShardsPending    string `json:"shardsPending"`
		ShardsRebuilt    string `json:"shardsRebuilt"`
		ShardsRepaired   string `json:"shardsRepaired"`
		DirtyBytes       string `json:"dirtyBytes"`
		FlushedBytes     string `json:"flushedBytes"`
		DirectBytes      string `json:"directWrittenBytes"`
	} `json:"redundancy"`
}

func n(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

func (r *rack) status(t testing.TB) rackStatusJSON {
	t.Helper()
	out, err := r.cli("rack", "status", "--json")
	if err != nil {
		t.Fatalf("rack status: %v\n%s", err, out)
	}
	var st rackStatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("rack status: %v\n%s", err, out)
	}
	return st
}

// waitStatus polls rack status until cond holds.
func (r *rack) waitStatus(t testing.TB, timeout time.Duration, what string, cond func(rackStatusJSON) bool) rackStatusJSON {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := r.status(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("waited %v for %s; rack status:\n%s", timeout, what, b)
		}
		time.Sleep(time.Second)
	}
}

// fioJob runs fio's nbd engine over the first size bytes of a volume with
// a crc32c verify pattern: write lays it down, verify reads and checks it.
func fioJob(t *testing.T, uri, size string, verifyOnly bool) {
	t.Helper()
	args := []string{"--name=vol", "--ioengine=nbd", "--uri=" + uri, "--rw=write", "--bs=1M", "--iodepth=8",
		"--size=" + size, "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"}
	if verifyOnly {
		args = append(args, "--verify_only")
	} else {
		args = append(args, "--do_verify=0")
	}
	out := mustRun(t, 10*time.Minute, "fio", args...)
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
		} `json:"jobs"`
	}
	start := strings.Index(out, "{")
	if start < 0 || json.Unmarshal([]byte(out[start:]), &res) != nil || len(res.Jobs) == 0 || res.Jobs[0].Error != 0 {
		t.Fatalf("fio (verify only: %v) failed:\n%s", verifyOnly, out)
	}
}

// corruptShardFiles flips one data byte in up to count data-shard files
// (index < 4) of the sled in dir, and returns their paths.
func corruptShardFiles(t *testing.T, dir string, count int) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "d*", "shards", "*", "*"))
	sort.Strings(files)
	var done []string
	for _, f := range files {
		if len(done) == count {
			break
		}
		idx := f[strings.LastIndex(f, ".")+1:]
		if i, err := strconv.Atoi(idx); err != nil || i >= 4 {
			continue
		}
		fh, err := os.OpenFile(f, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		const at = 56 + 5000 // inside the data, past the header
		if _, err := fh.ReadAt(b, at); err != nil {
			fh.Close()
			continue
		}
		b[0] ^= 0x80
		if _, err := fh.WriteAt(b, at); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		done = append(done, f)
	}
	if len(done) == 0 {
		t.Fatalf("no data shard files under %s", dir)
	}
	return done
}

// TestSledsThroughFailures writes 256 MiB through NBD to a rack of
// processes (three head nodes, seven sleds, an agent), waits until the
// head nodes flushed it to the sleds, and reads it all back with fio
// verify after each blow: one sled killed, a second killed, bytes flipped
// in shard files on disk, and, once a removed sled's shards are rebuilt
// on the others, two more sleds killed.
func TestSledsThroughFailures(t *testing.T) {
	needTools(t, "fio")
	r := newRack(t)
	r.headNodeFlags = []string{"--flush-threshold", "32MiB", "--flush-interval", "2s", "--audit-interval", "2s",
		"--sled-down-timeout", "4s", "--shard-gc-grace", "10s"}
	r.startProcesses()
	for i := 1; i <= 7; i++ {
		r.startSled(i, "--scrub-rate", "0")
	}
	if out, err := r.cli("volume", "create", "big", "--size", "1GiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("big", r.agent)
	r.waitStatus(t, time.Minute, "seven sleds up", sledsUp(7))
	uri := r.uri("big")
	const size = "256m"
	fioJob(t, uri, size, false)
	// fio's 1 MiB writes go straight to segments; the rest is flushed.
	st := r.waitStatus(t, 3*time.Minute, "the data on the sleds", func(st rackStatusJSON) bool {
		return n(st.Redundancy.FlushedBytes)+n(st.Redundancy.DirectBytes) >= 224<<20 && n(st.Redundancy.DirtyBytes) <= 32<<20
	})
	t.Logf("flushed %d MiB and wrote %d MiB straight into %s segments; %d MiB left in the log", n(st.Redundancy.FlushedBytes)>>20,
		n(st.Redundancy.DirectBytes)>>20, st.Redundancy.SegmentsFull, n(st.Redundancy.DirtyBytes)>>20)

	t.Run("one sled killed", func(t *testing.T) {
		r.sleds["s1"].kill()
		fioJob(t, uri, size, true)
	})
	t.Run("a second sled killed", func(t *testing.T) {
		r.sleds["s2"].kill()
		fioJob(t, uri, size, true)
	})
	t.Run("bytes flipped in shard files", func(t *testing.T) {
		// The killed sleds come back first: with two sleds gone, a flipped
		// byte in a third shard of the same segment would be a real loss.
		r.startSled(1, "--scrub-rate", "0")
		r.startSled(2, "--scrub-rate", "0")
		r.waitStatus(t, time.Minute, "seven sleds up again", sledsUp(7))
		var flipped []string
		for _, s := range []string{"s3", "s4", "s5"} {
			flipped = append(flipped, corruptShardFiles(t, filepath.Join(r.dataDir, s), 2)...)
		}
		fioJob(t, uri, size, true)
		st := r.waitStatus(t, 2*time.Minute, "the corrupt shards repaired", func(st rackStatusJSON) bool {
			var found uint64
			for _, s := range st.Sleds {
				found += n(s.CorruptFound)
			}
			return found >= uint64(len(flipped)) && n(st.Redundancy.ShardsRepaired) >= uint64(len(flipped))
		})
		t.Logf("%d shard files corrupted; %s repaired", len(flipped), st.Redundancy.ShardsRepaired)
		fioJob(t, uri, size, true)
	})
	t.Run("a removed sled rebuilt elsewhere, then two more killed", func(t *testing.T) {
		before := r.status(t)
		var onS3 uint64
		for _, s := range before.Sleds {
			if s.Sled.ID == "s3" {
				onS3 = n(s.Shards)
			}
		}
		rebuilt0 := n(before.Redundancy.ShardsRebuilt) + n(before.Redundancy.ShardsRepaired)
		if out, err := r.cli("sled", "remove", "s3"); err != nil {
			t.Fatalf("sled remove: %v\n%s", err, out)
		}
		// Status right after the removal may predate it: wait for every
		// shard s3 held to be rebuilt, then for nothing to be degraded.
		st := r.waitStatus(t, 3*time.Minute, "full redundancy without s3", func(st rackStatusJSON) bool {
			red := st.Redundancy
			rebuilt := n(red.ShardsRebuilt) + n(red.ShardsRepaired) - rebuilt0
			return rebuilt >= onS3 && n(red.SegmentsDegraded) == 0 && n(red.SegmentsLost) == 0 && n(red.ShardsPending) == 0 && n(red.SegmentsFull) > 0
		})
		t.Logf("s3 held %d shards; %d rebuilt or repaired since its removal", onS3, n(st.Redundancy.ShardsRebuilt)+n(st.Redundancy.ShardsRepaired)-rebuilt0)
		r.sleds["s4"].kill()
		r.sleds["s6"].kill()
		fioJob(t, uri, size, true)
	})
}

// sledsUp is a rack-status condition: want sleds up and reachable.
func sledsUp(want int) func(rackStatusJSON) bool {
	return func(st rackStatusJSON) bool {
		up := 0
		for _, s := range st.Sleds {
			if s.Sled.State == "SLED_STATE_UP" && s.Reachable {
				up++
			}
		}
		return up == want
	}
}

// TestSledSpaceAfterRewrites rewrites the same 32 MiB twelve times, lets
// flush and compaction run, and checks the sleds hold less than three
// copies of it at 4+2 (3 × 32 MiB × 6/4); without reclaiming they would
// hold twelve.
func TestSledSpaceAfterRewrites(t *testing.T) {
	needTools(t, "fio")
	r := newRack(t)
	r.headNodeFlags = []string{"--flush-threshold", "16MiB", "--flush-interval", "2s", "--audit-interval", "2s", "--shard-gc-grace", "5s"}
	r.startProcesses()
	for i := 1; i <= 7; i++ {
		r.startSled(i, "--scrub-rate", "0")
	}
	if out, err := r.cli("volume", "create", "rw", "--size", "256MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("rw", r.agent)
	// 128 MiB of rewrites of 16 MiB: without reclaiming, the sleds would
	// end up holding the flushed garbage, far above the limit.
	mustRun(t, 10*time.Minute, "fio", "--name=rw", "--ioengine=nbd", "--uri="+r.uri("rw"), "--rw=randwrite", "--bs=4k",
		"--iodepth=32", "--size=16m", "--loops=8", "--output-format=terse")
	const limit = 3 * 16 << 20 * 6 / 4
	var used uint64
	r.waitStatus(t, 5*time.Minute, fmt.Sprintf("sleds under %d MiB", limit>>20), func(st rackStatusJSON) bool {
		used = 0
		for _, s := range st.Sleds {
			used += n(s.UsedBytes)
		}
		return n(st.Redundancy.DirtyBytes) == 0 && used < limit
	})
	t.Logf("sleds hold %d MiB for 16 MiB rewritten 8 times", used>>20)
}

// TestExportReplicaFromStoppedSleds writes a volume until most of it is
// flushed to the sleds (and some of it written straight to segments by
// large writes), stops the rack, and exports both replicas offline
// from the head nodes' logs and the sleds' data directories, with one
// shard file corrupt and one sled's directory not given: each export must
// equal what the volume read before the stop.
func TestExportReplicaFromStoppedSleds(t *testing.T) {
	r := newRack(t)
	r.headNodeFlags = []string{"--flush-threshold", "4MiB", "--flush-interval", "1h", "--segment-size", "1MiB"}
	r.startProcesses()
	for i := 1; i <= 7; i++ {
		r.startSled(i, "--scrub-rate", "0")
	}
	const size = 16 << 20
	if out, err := r.cli("volume", "create", "ex", "--size", "16MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("ex", r.agent)
	r.waitStatus(t, time.Minute, "seven sleds up", sledsUp(7))
	conn, err := nbdclient.Dial(r.nbdAddr, "ex", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data := make([]byte, 8<<20)
	rand.New(rand.NewSource(15)).Read(data)
	const chunk = 128 << 10
	for off := 0; off < len(data); off += chunk {
		if err := conn.WriteAt(data[off:off+chunk], uint64(off), false); err != nil {
			t.Fatal(err)
		}
	}
	r.waitStatus(t, 2*time.Minute, "the log flushed to the sleds", func(st rackStatusJSON) bool {
		return n(st.Redundancy.FlushedBytes) >= 4<<20
	})
	// Blocks written after the flush stay in the logs, over flushed ones.
	if err := conn.WriteAt(bytes.Repeat([]byte{0xab}, 64<<10), 1<<20+512, false); err != nil {
		t.Fatal(err)
	}
	// Writes of 512 KiB go straight to segments of their own, the first
	// over flushed blocks; a small write lands in the logs over them.
	large := make([]byte, 2<<20)
	rand.New(rand.NewSource(16)).Read(large)
	for off := 0; off < len(large); off += 512 << 10 {
		if err := conn.WriteAt(large[off:off+512<<10], uint64(7<<20+off), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.WriteAt(bytes.Repeat([]byte{0xcd}, 8<<10), 8<<20+4<<10, false); err != nil {
		t.Fatal(err)
	}
	if st := r.status(t); n(st.Redundancy.DirectBytes) < 2<<20 {
		t.Fatalf("%s bytes written straight to segments, want the 2 MiB of 512 KiB writes", st.Redundancy.DirectBytes)
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	for off := 0; off < size; off += chunk {
		if err := conn.ReadAt(want[off:off+chunk], uint64(off)); err != nil {
			t.Fatal(err)
		}
	}
	v := r.showVolume("ex")
	conn.Close()
	for _, p := range r.nodes {
		p.stop(t)
	}
	for _, p := range r.sleds {
		p.stop(t)
	}
	flipped := corruptShardFiles(t, filepath.Join(r.dataDir, "s1"), 1)
	var sledData []string
	for i := 1; i <= 7; i++ {
		if i != 2 { // s2's shards are read around
			sledData = append(sledData, "--sled-data", filepath.Join(r.dataDir, fmt.Sprintf("s%d", i)))
		}
	}
	for _, hn := range append([]string{v.Volume.Primary}, v.Volume.Secondaries...) {
		out := filepath.Join(t.TempDir(), hn+".img")
		args := append([]string{"headnode", "export-replica", "--data", filepath.Join(r.dataDir, hn),
			"--volume-id", v.Volume.ID, "--size", fmt.Sprint(size), "--out", out}, sledData...)
		if o, err := r.cli(args...); err != nil {
			t.Fatalf("export replica of %s: %v\n%s", hn, err, o)
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(img, want) {
			t.Fatalf("the replica on %s differs from what the volume read", hn)
		}
	}
	if o, err := r.cli("headnode", "export-replica", "--data", filepath.Join(r.dataDir, v.Volume.Primary),
		"--volume-id", v.Volume.ID, "--size", fmt.Sprint(size), "--out", filepath.Join(t.TempDir(), "x.img")); err == nil || !strings.Contains(o, "live on the sleds") {
		t.Fatalf("export without --sled-data: %v\n%s", err, o)
	}
	t.Logf("both replicas exported equal to the volume, with %s corrupt and s2 not given", flipped[0])
}
