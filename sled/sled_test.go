package sled

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

func randomData(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func TestShardFormatRoundTripAndGoldenLayout(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 5, 1 << 20} {
		id := ShardID{Volume: 7, Segment: uint64(n), Index: 3}
		data := randomData(int64(n), n)
		file := encodeShard(id, uint64(n)+1, data)
		if uint64(len(file)) != fileSize(uint64(n)) {
			t.Fatalf("%d bytes: file of %d, want %d", n, len(file), fileSize(uint64(n)))
		}
		h, got, err := decodeShard(file)
		if err != nil || h.id != id || h.epoch != uint64(n)+1 || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: round trip: %v epoch %d: %v", n, h.id, h.epoch, err)
		}
	}
	file := encodeShard(ShardID{Volume: 1, Segment: 2, Index: 3}, 4, []byte("hello"))
	want := "42414c534841524402000000001000000100000000000000020000000000000003000000050000000000000004000000000000004c67ecb168656c6c6f" // header + data
	if got := fmt.Sprintf("%x", file[:headerBytes+5]); got != want {
		t.Fatalf("layout changed:\n got %s\nwant %s", got, want)
	}
	if crc := binary.LittleEndian.Uint32(file[headerBytes+5:]); crc != crc32.Checksum([]byte("hello"), castagnoli) {
		t.Fatalf("chunk crc %08x", crc)
	}
}

func TestShardFormatDetectsEveryCorruption(t *testing.T) {
	id := ShardID{Volume: 1, Segment: 2, Index: 0}
	file := encodeShard(id, 3, randomData(1, 3*4096+100))
	// Flip each byte once: header, data, chunk table and table crc alike.
	for i := range file {
		bad := bytes.Clone(file)
		bad[i] ^= 0x40
		if _, _, err := decodeShard(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped byte %d: %v, want ErrCorrupt", i, err)
		}
	}
	for _, n := range []int{0, 10, headerBytes, len(file) - 1} {
		if _, _, err := decodeShard(file[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: %v, want ErrCorrupt", n, err)
		}
	}
	if _, _, err := decodeShard(append(bytes.Clone(file), 0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("extended: %v, want ErrCorrupt", err)
	}
}

func FuzzDecodeShard(f *testing.F) {
	// More seeds, among them version 1 files, are in testdata/fuzz.
	f.Add(encodeShardVersion(formatVersionV1, ShardID{1, 2, 3}, 0, randomData(4, 5000)))
	f.Add(encodeShard(ShardID{1, 2, 3}, 1, []byte("hello")))
	f.Add(encodeShard(ShardID{1, 2, 3}, 0, nil))
	f.Add(encodeShard(ShardID{9, 9, 9}, 1<<40, randomData(2, 9000)))
	f.Add([]byte(shardMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, data, err := decodeShard(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error of another class: %v", err)
			}
			return
		}
		// Whatever decodes must encode back to the same file.
		if again := encodeShardVersion(h.version, h.id, h.epoch, data); !bytes.Equal(again, b) {
			t.Fatalf("decoded %s at epoch %d of %d bytes re-encodes differently", h.id, h.epoch, len(data))
		}
	})
}

// faultFS wraps the real filesystem with injected faults by device path.
type faultFS struct {
	osFS
	mu        sync.Mutex
	ioErrors  map[string]bool // device path -> every write and read fails with EIO
	noSpace   map[string]bool // device path -> writes fail with ENOSPC
	readFault map[string]bool // device path -> reads fail with EIO
	shortage  bool            // every open fails with EMFILE
	// beforeWrite, if set, is called before every file write (outside mu)
	// with the file's content, so a test can hold a write at that point.
	beforeWrite func(path string, data []byte)
}

func newFaultFS() *faultFS {
	return &faultFS{ioErrors: map[string]bool{}, noSpace: map[string]bool{}, readFault: map[string]bool{}}
}

func (f *faultFS) check(path string, write bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shortage {
		return &os.PathError{Op: "open", Path: path, Err: syscall.EMFILE}
	}
	for dev := range f.ioErrors {
		if strings.HasPrefix(path, dev+string(filepath.Separator)) {
			return &os.PathError{Op: "io", Path: path, Err: syscall.EIO}
		}
	}
	for dev := range f.noSpace {
		if write && strings.HasPrefix(path, dev+string(filepath.Separator)) {
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
	}
	for dev := range f.readFault {
		if !write && strings.HasPrefix(path, dev+string(filepath.Separator)) {
			return &os.PathError{Op: "read", Path: path, Err: syscall.EIO}
		}
	}
	return nil
}

func (f *faultFS) WriteFileSync(path string, reuse bool, bufs ...[]byte) error {
	if err := f.check(path, true); err != nil {
		return err
	}
	f.mu.Lock()
	hook := f.beforeWrite
	f.mu.Unlock()
	if hook != nil {
		hook(path, bytes.Join(bufs, nil))
	}
	return f.osFS.WriteFileSync(path, reuse, bufs...)
}

func (f *faultFS) Truncate(path string, size int64) error {
	if err := f.check(path, true); err != nil {
		return err
	}
	return f.osFS.Truncate(path, size)
}

func (f *faultFS) ReadAt(path string, off int64, n int) ([]byte, error) {
	if err := f.check(path, false); err != nil {
		return nil, err
	}
	return f.osFS.ReadAt(path, off, n)
}

// Open opens a file whose reads see the faults injected on its device
// from then on, as an open file on a failing disk does.
func (f *faultFS) Open(path string) (readFile, error) {
	if err := f.check(path, false); err != nil {
		return nil, err
	}
	file, err := f.osFS.Open(path)
	if err != nil {
		return nil, err
	}
	return faultFile{readFile: file, fs: f, path: path}, nil
}

type faultFile struct {
	readFile
	fs   *faultFS
	path string
}

func (f faultFile) ReadAt(b []byte, off int64) (int, error) {
	if err := f.fs.check(f.path, false); err != nil {
		return 0, err
	}
	return f.readFile.ReadAt(b, off)
}

// FreeBytes says a device whose writes fail with ENOSPC has no room.
func (f *faultFS) FreeBytes(path string) (uint64, error) {
	f.mu.Lock()
	full := f.noSpace[path]
	f.mu.Unlock()
	if full {
		return 0, nil
	}
	return f.osFS.FreeBytes(path)
}

func (f *faultFS) set(fn func(*faultFS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func openTestStore(t *testing.T, dir string, devices int, capacity uint64, fs deviceFS) *Store {
	t.Helper()
	var paths []string
	for i := range devices {
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("d%d", i)))
	}
	s, err := openStore(storeOptions{id: "t", dataDir: dir, devicePaths: paths, capacityBytes: capacity, fs: fs,
		logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStorePutGetDeleteListAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 2, 0, nil)
	a := ShardID{Volume: 1, Segment: 10, Index: 0}
	b := ShardID{Volume: 2, Segment: 11, Index: 5}
	da, db := randomData(1, 100_000), randomData(2, 4096)
	if _, err := s.Put(a, 1, da); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(b, 3, db); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n uint64 }{{0, 0}, {0, 1}, {4095, 2}, {50_000, 30_000}, {99_999, 1}, {100_000, 0}} {
		got, size, err := s.Get(a, c.off, c.n)
		want := da[c.off:]
		if c.n != 0 {
			want = da[c.off : c.off+c.n]
		}
		if err != nil || size != 100_000 || !bytes.Equal(got, want) {
			t.Fatalf("get [%d,+%d): %v (size %d)", c.off, c.n, err, size)
		}
	}
	if _, _, err := s.Get(a, 99_000, 2000); !errors.Is(err, ErrInvalid) {
		t.Fatalf("range past the end: %v", err)
	}
	if _, _, err := s.Get(ShardID{Volume: 9}, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing shard: %v", err)
	}
	if l := s.List(1, false); len(l) != 1 || l[0].ID != a || l[0].Length != 100_000 {
		t.Fatalf("list volume 1: %+v", l)
	}
	if l := s.List(0, true); len(l) != 2 {
		t.Fatalf("list all: %+v", l)
	}
	// Replace atomically.
	da2 := randomData(3, 5000)
	if _, err := s.Put(a, 1, da2); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Get(a, 0, 0); !bytes.Equal(got, da2) {
		t.Fatal("replaced shard reads old data")
	}
	var used uint64
	for _, d := range s.Devices() {
		used += d.UsedBytes
	}
	if used != fileSize(5000)+fileSize(4096) {
		t.Fatalf("used %d bytes after a replace, want %d", used, fileSize(5000)+fileSize(4096))
	}
	// A crash leaves a temp file: the next start removes it.
	tmp := filepath.Join(dir, "d0", "tmp", "leftover")
	if err := os.WriteFile(tmp, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTestStore(t, dir, 2, 0, nil)
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temp file survived a restart: %v", err)
	}
	if got, _, err := s.Get(a, 0, 0); err != nil || !bytes.Equal(got, da2) {
		t.Fatalf("after restart: %v", err)
	}
	if got, _, err := s.Get(b, 0, 0); err != nil || !bytes.Equal(got, db) {
		t.Fatalf("after restart: %v", err)
	}
	// Fencing survives the restart too.
	if _, err := s.Put(b, 2, db); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("put with an older epoch after restart: %v", err)
	}
	if err := s.Delete(b, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("delete with an older epoch: %v", err)
	}
	if err := s.Delete(b, 3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(b, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted shard: %v", err)
	}
	if err := s.Delete(b, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestStoreFencesOlderEpochs(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 1, 0, nil)
	id := ShardID{Volume: 4, Segment: 1}
	if _, err := s.Put(id, 5, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(id, 4, []byte("b")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older epoch: %v", err)
	}
	if got, _, _ := s.Get(id, 0, 0); string(got) != "a" {
		t.Fatalf("a fenced write changed the shard: %q", got)
	}
	// Other volumes have their own epochs.
	if _, err := s.Put(ShardID{Volume: 5}, 1, []byte("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(id, 6, []byte("d")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(id, 5, []byte("e")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("epoch 5 after 6: %v", err)
	}
}

func TestStoreFullDevices(t *testing.T) {
	dir := t.TempDir()
	fs := newFaultFS()
	s := openTestStore(t, dir, 2, 3*fileSize(4096), fs)
	for i := range 6 {
		if _, err := s.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, randomData(int64(i), 4096)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	devs := s.Devices()
	if devs[0].Shards != 3 || devs[1].Shards != 3 {
		t.Fatalf("shards not spread to the least full device: %+v", devs)
	}
	_, err := s.Put(ShardID{Volume: 1, Segment: 99}, 1, randomData(9, 4096))
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "d0 full") || !strings.Contains(err.Error(), "d1 full") {
		t.Fatalf("all devices full: %v", err)
	}
	// ENOSPC from the filesystem before the configured capacity: the next
	// device takes the shard, and the full one is not marked failed.
	s2 := openTestStore(t, t.TempDir(), 2, 0, fs)
	fs.set(func(f *faultFS) { f.noSpace[s2.Devices()[0].Path] = true })
	for i := range 3 {
		dev, err := s2.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, []byte("x"))
		if err != nil || dev != "d1" {
			t.Fatalf("put onto a device whose disk is full: %q %v", dev, err)
		}
	}
	if s2.Devices()[0].Failed {
		t.Fatal("a full device was marked failed")
	}
}

// TestFullSledReportsItselfFull: a sled whose every disk fills (with
// anything, not only shards) refuses shards with ErrNoSpace, says it is
// full in Stat, serves what it holds, and takes shards again, by itself,
// once space is freed.
func TestFullSledReportsItselfFull(t *testing.T) {
	fs := newFaultFS()
	s := openTestStore(t, t.TempDir(), 2, 0, fs)
	id := ShardID{Volume: 1, Segment: 1}
	data := randomData(1, 4096)
	if _, err := s.Put(id, 1, data); err != nil {
		t.Fatal(err)
	}
	if s.Full() {
		t.Fatal("an empty sled says it is full")
	}
	fs.set(func(f *faultFS) {
		for _, d := range s.Devices() {
			f.noSpace[d.Path] = true
		}
	})
	if _, err := s.Put(ShardID{Volume: 1, Segment: 2}, 1, data); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("put on a full sled: %v, want ErrNoSpace", err)
	}
	s.RefreshSpace()
	if !s.Full() {
		t.Fatalf("a sled whose disks are full does not say so: %+v", s.Devices())
	}
	for _, d := range s.Devices() {
		if d.Failed {
			t.Fatalf("full device %s marked failed", d.ID)
		}
	}
	if got, _, err := s.Get(id, 0, uint64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read from a full sled: %v", err)
	}

	fs.set(func(f *faultFS) { clear(f.noSpace) })
	s.RefreshSpace()
	if s.Full() {
		t.Fatal("still full after space was freed")
	}
	if _, err := s.Put(ShardID{Volume: 1, Segment: 2}, 1, data); err != nil {
		t.Fatalf("put after space was freed: %v", err)
	}
}

func TestStoreFailedDeviceIsReportedAndAvoided(t *testing.T) {
	dir := t.TempDir()
	fs := newFaultFS()
	s := openTestStore(t, dir, 2, 0, fs)
	var onD0 []ShardID
	for i := range 10 {
		id := ShardID{Volume: 1, Segment: uint64(i)}
		dev, err := s.Put(id, 1, randomData(int64(i), 9000))
		if err != nil {
			t.Fatal(err)
		}
		if dev == "d0" {
			onD0 = append(onD0, id)
		}
	}
	if len(onD0) == 0 {
		t.Fatal("nothing on d0")
	}
	d0 := s.Devices()[0].Path
	fs.set(func(f *faultFS) { f.ioErrors[d0] = true })
	// A read hits the failing device: the shard is gone from this sled
	// (the head node rebuilds it), and the device is marked failed.
	if _, _, err := s.Get(onD0[0], 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read from a failing device: %v", err)
	}
	devs := s.Devices()
	if !devs[0].Failed || !strings.Contains(devs[0].Failure, "input/output error") || devs[1].Failed {
		t.Fatalf("devices after an I/O error: %+v", devs)
	}
	for _, id := range onD0 {
		if _, _, err := s.Get(id, 0, 0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("shard of a failed device: %v", err)
		}
	}
	// New shards go to the other device; the failure survives a restart.
	for i := range 5 {
		if dev, err := s.Put(ShardID{Volume: 2, Segment: uint64(i)}, 1, []byte("y")); err != nil || dev != "d1" {
			t.Fatalf("put with a failed device: %q %v", dev, err)
		}
	}
	s.Close()
	fs.set(func(f *faultFS) { delete(f.ioErrors, d0) })
	s = openTestStore(t, dir, 2, 0, fs)
	if !s.Devices()[0].Failed {
		t.Fatal("device failure forgotten across a restart")
	}
	// A write that fails on a device fails the device and lands elsewhere.
	s3 := openTestStore(t, t.TempDir(), 2, 0, fs)
	fs.set(func(f *faultFS) { f.ioErrors[s3.Devices()[0].Path] = true })
	if dev, err := s3.Put(ShardID{Volume: 3}, 1, []byte("z")); err != nil || dev != "d1" {
		t.Fatalf("put onto a failing device: %q %v", dev, err)
	}
	if !s3.Devices()[0].Failed {
		t.Fatal("a device that failed a write is not marked failed")
	}
}

// corruptShardFile flips one byte of a shard's file on disk.
func corruptShardFile(t *testing.T, s *Store, id ShardID, at int64) {
	t.Helper()
	var path string
	for _, d := range s.Devices() {
		p := filepath.Join(d.Path, "shards", fmt.Sprintf("%016x", id.Volume), fmt.Sprintf("%016x.%d", id.Segment, id.Index))
		if _, err := os.Stat(p); err == nil {
			path = p
		}
	}
	if path == "" {
		t.Fatalf("no file for %s", id)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptShardIsQuarantinedNeverReturned(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 2, 0, nil)
	id := ShardID{Volume: 1, Segment: 1}
	data := randomData(5, 5*4096)
	if _, err := s.Put(id, 1, data); err != nil {
		t.Fatal(err)
	}
	corruptShardFile(t, s, id, headerBytes+3*4096+17) // in chunk 3
	// A read of other chunks still passes: checks are per chunk.
	if got, _, err := s.Get(id, 0, 4096); err != nil || !bytes.Equal(got, data[:4096]) {
		t.Fatalf("read of an intact chunk: %v", err)
	}
	if _, _, err := s.Get(id, 3*4096, 100); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of the corrupt chunk: %v, want ErrCorrupt", err)
	}
	if _, _, err := s.Get(id, 0, 4096); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a quarantined shard is still served: %v", err)
	}
	if s.Quarantined() != 1 || len(s.List(0, true)) != 0 {
		t.Fatalf("quarantined %d, listed %d", s.Quarantined(), len(s.List(0, true)))
	}
	q, _ := os.ReadDir(filepath.Join(s.Devices()[0].Path, "quarantine"))
	q2, _ := os.ReadDir(filepath.Join(s.Devices()[1].Path, "quarantine"))
	if len(q)+len(q2) != 1 {
		t.Fatalf("%d files in quarantine", len(q)+len(q2))
	}
}

func TestScrubFindsCorruption(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 1, 0, nil)
	for i := range 4 {
		if _, err := s.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, randomData(int64(i), 8192)); err != nil {
			t.Fatal(err)
		}
	}
	corruptShardFile(t, s, ShardID{Volume: 1, Segment: 2}, headerBytes+100)
	sc := newScrubber(s, 64<<20, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sc.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for sc.snapshot().Passes == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	st := sc.snapshot()
	if st.Passes == 0 || st.CorruptFound != 1 || st.ShardsVerified < 4 {
		t.Fatalf("scrub: %+v", st)
	}
	if len(s.List(1, false)) != 3 {
		t.Fatalf("corrupt shard still listed: %+v", s.List(1, false))
	}
}

func TestSledServesOverGRPCOnBothNetworks(t *testing.T) {
	dir := t.TempDir()
	var addrs []string
	for _, ip := range []string{"127.0.1.77", "127.0.2.77"} {
		addrs = append(addrs, ip+":0")
	}
	sl, err := Start(Config{ID: "s1", DataDir: dir, Devices: 2, ListenAddresses: addrs, Logger: slog.New(slog.DiscardHandler), ScrubBytesPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	for _, addr := range sl.Addresses() {
		conn, err := rpc.Dial([]string{addr})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := sledpb.NewSledClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		data := randomData(1, 10_000)
		id := &sledpb.ShardID{VolumeId: 3, SegmentId: 4, Index: 1}
		if _, err := c.PutShard(ctx, &sledpb.PutShardRequest{Id: id, Epoch: 2, Data: data, Crc32C: crc32.Checksum(data, castagnoli)}); err != nil {
			t.Fatal(err)
		}
		code := func(err error) codes.Code { return status.Code(err) }
		if _, err := c.PutShard(ctx, &sledpb.PutShardRequest{Id: id, Epoch: 2, Data: data, Crc32C: 1}); code(err) != codes.InvalidArgument {
			t.Fatalf("bad crc: %v", err)
		}
		if _, err := c.PutShard(ctx, &sledpb.PutShardRequest{Id: id, Epoch: 1, Data: data, Crc32C: crc32.Checksum(data, castagnoli)}); code(err) != codes.FailedPrecondition {
			t.Fatalf("stale epoch: %v", err)
		}
		got, err := c.GetShard(ctx, &sledpb.GetShardRequest{Id: id, Offset: 100, Length: 5000})
		if err != nil || !bytes.Equal(got.Data, data[100:5100]) || got.ShardSizeBytes != 10_000 {
			t.Fatalf("get: %v", err)
		}
		if !proto.Equal(got.Id, id) || got.Epoch != 2 {
			t.Fatalf("get reports the shard as %v at epoch %d, want %v at 2", got.Id, got.Epoch, id)
		}
		if _, err := c.GetShard(ctx, &sledpb.GetShardRequest{Id: &sledpb.ShardID{VolumeId: 99}}); code(err) != codes.NotFound {
			t.Fatalf("missing: %v", err)
		}
		if _, err := c.GetShard(ctx, &sledpb.GetShardRequest{}); code(err) != codes.InvalidArgument {
			t.Fatalf("no id: %v", err)
		}
		stream, err := c.ListShards(ctx, &sledpb.ListShardsRequest{AllVolumes: true})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != 1 {
			t.Fatalf("listed %d shards", n)
		}
		st, err := c.Stat(ctx, &sledpb.StatRequest{})
		if err != nil || st.SledId != "s1" || len(st.Devices) != 2 || st.Shards != 1 || st.CapacityBytes == 0 {
			t.Fatalf("stat: %v %v", st, err)
		}
		// Corrupt it on disk: DataLoss, then NotFound.
		corruptShardFile(t, sl.Store(), ShardID{Volume: 3, Segment: 4, Index: 1}, headerBytes+1)
		if _, err := c.GetShard(ctx, &sledpb.GetShardRequest{Id: id}); code(err) != codes.DataLoss {
			t.Fatalf("corrupt: %v", err)
		}
		if _, err := c.GetShard(ctx, &sledpb.GetShardRequest{Id: id}); code(err) != codes.NotFound {
			t.Fatalf("after quarantine: %v", err)
		}
		if _, err := c.DeleteShard(ctx, &sledpb.DeleteShardRequest{Id: id, Epoch: 2}); code(err) != codes.NotFound {
			t.Fatalf("delete quarantined: %v", err)
		}
	}
}

// TestStaleWriteCannotLandAfterANewerFence holds a write at an older epoch
// after it passed the epoch check, just before its file is written, while
// a write at a newer epoch arrives: the older one must not replace the
// newer shard (the check and the write are one step per volume).
func TestStaleWriteCannotLandAfterANewerFence(t *testing.T) {
	fs := newFaultFS()
	s := openTestStore(t, t.TempDir(), 2, 0, fs)
	id := ShardID{Volume: 4, Segment: 9, Index: 2}
	old, fresh := []byte("written by the deposed primary"), []byte("written by the new primary")
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fs.set(func(f *faultFS) {
		f.beforeWrite = func(path string, data []byte) {
			if bytes.Contains(data, old) {
				once.Do(func() { close(held) })
				<-release
			}
		}
	})
	oldErr := make(chan error, 1)
	go func() {
		_, err := s.Put(id, 1, old)
		oldErr <- err
	}()
	<-held
	freshErr := make(chan error, 1)
	go func() {
		_, err := s.Put(id, 2, fresh)
		freshErr <- err
	}()
	// The newer write either completes (the bug) or waits for the older
	// one to finish; let the older one go in either case.
	select {
	case err := <-freshErr:
		freshErr <- err
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-oldErr; err != nil && !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older write: %v", err)
	}
	if err := <-freshErr; err != nil {
		t.Fatalf("newer write: %v", err)
	}
	if got, _, err := s.Get(id, 0, 0); err != nil || !bytes.Equal(got, fresh) {
		t.Fatalf("after the race the shard holds %q (%v), want the newer epoch's", got, err)
	}
}

// TestStaleWritesAndDeletesRaceFences runs writes and deletes at one epoch
// against writes at the next, many times: whenever the newer write is
// acknowledged, the shard holds its data.
func TestStaleWritesAndDeletesRaceFences(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 2, 0, nil)
	rng := rand.New(rand.NewSource(7))
	for i := range 150 {
		epoch := uint64(i + 1)
		id := ShardID{Volume: 5, Segment: uint64(rng.Intn(3)), Index: 1}
		fresh := []byte(fmt.Sprintf("epoch %d", epoch+1))
		deleting := rng.Intn(2) == 0
		if deleting {
			if _, err := s.Put(id, epoch, []byte("before")); err != nil {
				t.Fatal(err)
			}
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		var freshErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			if deleting {
				s.Delete(id, epoch)
			} else {
				s.Put(id, epoch, []byte(fmt.Sprintf("epoch %d", epoch)))
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			_, freshErr = s.Put(id, epoch+1, fresh)
		}()
		close(start)
		wg.Wait()
		if freshErr != nil {
			t.Fatalf("round %d: newer write: %v", i, freshErr)
		}
		if got, _, err := s.Get(id, 0, 0); err != nil || !bytes.Equal(got, fresh) {
			t.Fatalf("round %d (delete %v): shard holds %q (%v), want %q", i, deleting, got, err, fresh)
		}
	}
}

// TestOlderShardNeverReplacesANewerOne: a shard keeps the epoch it was
// written at, so even a sled that lost its record of the volume's epoch
// (its metadata wiped, its devices kept) refuses to let an older writer
// replace or delete it.
func TestOlderShardNeverReplacesANewerOne(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 2, 0, nil)
	id := ShardID{Volume: 6, Segment: 3, Index: 0}
	if _, err := s.Put(id, 2, []byte("new primary")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.RemoveAll(filepath.Join(dir, "meta")); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, dir, 2, 0, nil)
	if _, err := s.Put(id, 1, []byte("old primary")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older write over a newer shard: %v, want ErrStaleEpoch", err)
	}
	if err := s.Delete(id, 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older delete of a newer shard: %v, want ErrStaleEpoch", err)
	}
	if got, _, err := s.Get(id, 0, 0); err != nil || string(got) != "new primary" {
		t.Fatalf("shard holds %q (%v)", got, err)
	}
	if _, h, err := s.get(id, 0, 0); err != nil || h.epoch != 2 || h.id != id {
		t.Fatalf("header %+v (%v), want %s at epoch 2", h, err, id)
	}
	if _, err := s.Put(id, 2, []byte("new primary again")); err != nil {
		t.Fatalf("same epoch: %v", err)
	}
}

// TestVersion1ShardsAreReadAtEpochZero: shards a sled wrote before shards
// carried their epoch are indexed and read as written at epoch 0, and the
// next write replaces them in the current format.
func TestVersion1ShardsAreReadAtEpochZero(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 1, 0, nil)
	id := ShardID{Volume: 2, Segment: 8, Index: 5}
	data := randomData(6, 3*4096+7)
	path := filepath.Join(s.Devices()[0].Path, "shards", fmt.Sprintf("%016x", id.Volume), fmt.Sprintf("%016x.%d", id.Segment, id.Index))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	v1 := encodeShardVersion(formatVersionV1, id, 0, data)
	if err := os.WriteFile(path, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTestStore(t, dir, 1, 0, nil)
	if d := s.Devices()[0]; d.UsedBytes != uint64(len(v1)) || d.Shards != 1 {
		t.Fatalf("device after indexing a version 1 shard: %+v", d)
	}
	got, h, err := s.get(id, 4000, 5000)
	if err != nil || !bytes.Equal(got, data[4000:9000]) || h.epoch != 0 || h.id != id {
		t.Fatalf("read of a version 1 shard: %v (header %+v)", err, h)
	}
	if _, err := s.Put(id, 1, data); err != nil {
		t.Fatal(err)
	}
	if _, h, err := s.get(id, 0, 0); err != nil || h.version != formatVersion || h.epoch != 1 {
		t.Fatalf("after a rewrite: header %+v, %v", h, err)
	}
	if d := s.Devices()[0]; d.UsedBytes != fileSize(uint64(len(data))) {
		t.Fatalf("used %d bytes after the rewrite, want %d", d.UsedBytes, fileSize(uint64(len(data))))
	}
}

// TestCRCCombine: the CRC32C of a whole shard derived from its chunks'
// (what a put checks the request's CRC against) is the CRC32C of the
// data, for every length around the chunk size and any split.
func TestCRCCombine(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	for _, n := range []int{0, 1, 100, 4095, 4096, 4097, 8191, 8192, 3*4096 + 1, 256 << 10, 1<<20 + 17} {
		data := randomData(int64(n), n)
		if _, sum := encodeTrailer(data); sum != crc32.Checksum(data, castagnoli) {
			t.Fatalf("%d bytes: combined %08x, want %08x", n, sum, crc32.Checksum(data, castagnoli))
		}
		cut := 0
		if n > 0 {
			cut = rng.Intn(n + 1)
		}
		a, b := data[:cut], data[cut:]
		if got := crc32Combine(crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli), uint64(len(b))); got != crc32.Checksum(data, castagnoli) {
			t.Fatalf("%d bytes cut at %d: combined %08x", n, cut, got)
		}
	}
}

// TestWritesOfOneEpochRunAtOnce: shards of one volume at its current
// epoch are written concurrently (a sled serves several head-node flushes
// and large writes of a volume at once); only a newer epoch waits.
func TestWritesOfOneEpochRunAtOnce(t *testing.T) {
	fs := newFaultFS()
	s := openTestStore(t, t.TempDir(), 2, 0, fs)
	slow := []byte("a shard whose write is held")
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fs.set(func(f *faultFS) {
		f.beforeWrite = func(path string, data []byte) {
			if bytes.Contains(data, slow) {
				once.Do(func() { close(held) })
				<-release
			}
		}
	})
	if _, err := s.Put(ShardID{Volume: 3, Segment: 1}, 5, []byte("fences epoch 5")); err != nil {
		t.Fatal(err)
	}
	slowErr := make(chan error, 1)
	go func() {
		_, err := s.Put(ShardID{Volume: 3, Segment: 2}, 5, slow)
		slowErr <- err
	}()
	<-held
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(ShardID{Volume: 3, Segment: 3}, 5, []byte("another shard"))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("a write of another shard of the volume waited for the held one")
	}
	close(release)
	if err := <-slowErr; err != nil {
		t.Fatal(err)
	}
}
