package sled

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// countingFS counts the shard files open for reading.
type countingFS struct {
	osFS
	open atomic.Int64
}

func (c *countingFS) Open(path string) (readFile, error) {
	f, err := c.osFS.Open(path)
	if err != nil {
		return nil, err
	}
	c.open.Add(1)
	return &countedFile{readFile: f, fs: c}, nil
}

type countedFile struct {
	readFile
	fs     *countingFS
	closed bool
}

func (f *countedFile) Close() error {
	if f.closed {
		panic("shard file closed twice")
	}
	f.closed = true
	f.fs.open.Add(-1)
	return f.readFile.Close()
}

func openCacheStore(t *testing.T, dir string, devices, maxOpen int, fs deviceFS) *Store {
	t.Helper()
	var paths []string
	for i := range devices {
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("d%d", i)))
	}
	s, err := openStore(storeOptions{id: "t", dataDir: dir, devicePaths: paths, fs: fs, maxOpenFiles: maxOpen,
		logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustGet(t *testing.T, s *Store, id ShardID, off, n uint64, want []byte) {
	t.Helper()
	got, _, err := s.Get(id, off, n)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("get %s [%d,+%d): %d bytes, %v; want %d bytes", id, off, n, len(got), err, len(want))
	}
}

// TestCachedShardReplacedOrDeletedNeverServesTheOld: a shard whose file is
// open is replaced (on the same device and on another) or deleted; the
// next read gets the new data or not-found, and the old file is closed.
func TestCachedShardReplacedOrDeletedNeverServesTheOld(t *testing.T) {
	fs := &countingFS{}
	s := openCacheStore(t, t.TempDir(), 2, 0, fs)
	id := ShardID{Volume: 1, Segment: 2, Index: 3}
	for v := range 6 {
		// Lengths differ, so an old file read for the new entry would
		// fail its checks, not just return old bytes.
		data := randomData(int64(v), 4096*(1+v%3)+v)
		if _, err := s.Put(id, 1, data); err != nil {
			t.Fatal(err)
		}
		mustGet(t, s, id, 0, 0, data)
		mustGet(t, s, id, 4096, uint64(len(data)-4096), data[4096:])
		if n := s.OpenShardFiles(); n != 1 || fs.open.Load() != 1 {
			t.Fatalf("version %d: %d files cached, %d open, want 1", v, n, fs.open.Load())
		}
		// Another shard on the other device takes the next version of
		// id to the less full device now and then.
		if _, err := s.Put(ShardID{Volume: 9, Segment: uint64(v)}, 1, randomData(99, 3*4096)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(id, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(id, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted shard: %v, want ErrNotFound", err)
	}
	if n := fs.open.Load(); n != 0 {
		t.Fatalf("%d files open after the delete", n)
	}
	if s.Quarantined() != 0 {
		t.Fatalf("%d shards quarantined", s.Quarantined())
	}
}

// TestReaderOnTheOldFileWhileTheShardIsReplaced: a reader that holds the
// file of a shard that is then replaced finishes on it (its read began
// before the put); every read that begins after the put gets the new data,
// and the old file is closed when the reader is done with it.
func TestReaderOnTheOldFileWhileTheShardIsReplaced(t *testing.T) {
	fs := &countingFS{}
	s := openCacheStore(t, t.TempDir(), 1, 0, fs)
	id := ShardID{Volume: 1, Segment: 2}
	old, fresh := randomData(1, 8192), randomData(2, 8192)
	if _, err := s.Put(id, 1, old); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, id, 0, 0, old)
	// A reader in the middle of its read holds the file.
	e, _, o, err := s.lookup(id)
	if err != nil || o == nil {
		t.Fatalf("lookup of a cached shard: %v, open %v", err, o != nil)
	}
	if _, err := s.Put(id, 1, fresh); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, id, 0, 0, fresh)
	if n := fs.open.Load(); n != 2 {
		t.Fatalf("%d files open while a reader holds the old one, want 2", n)
	}
	got, err := o.read(0, e.length)
	if err != nil || !bytes.Equal(got, old) {
		t.Fatalf("the reader's own read of the old file: %v", err)
	}
	s.release(o)
	if n := fs.open.Load(); n != 1 {
		t.Fatalf("%d files open after the reader let go, want 1", n)
	}
	mustGet(t, s, id, 0, 0, fresh)
}

// TestCorruptChunkOfACachedShardIsQuarantined: a chunk that goes bad on
// disk after its shard's file was opened and its table checked is found
// by the read that touches it, which quarantines the shard and returns
// nothing; reads of other chunks before that are served.
func TestCorruptChunkOfACachedShardIsQuarantined(t *testing.T) {
	fs := &countingFS{}
	s := openCacheStore(t, t.TempDir(), 1, 0, fs)
	id := ShardID{Volume: 1, Segment: 1}
	data := randomData(5, 5*4096)
	if _, err := s.Put(id, 1, data); err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, id, 0, 0, data)
	corruptShardFile(t, s, id, headerBytes+2*4096+9) // chunk 2
	mustGet(t, s, id, 4096, 4096, data[4096:8192])
	if got, _, err := s.Get(id, 8000, 200); !errors.Is(err, ErrCorrupt) || got != nil {
		t.Fatalf("read of the corrupt chunk: %d bytes, %v; want ErrCorrupt and nothing", len(got), err)
	}
	if _, _, err := s.Get(id, 0, 4096); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a quarantined shard is still served: %v", err)
	}
	if s.Quarantined() != 1 || fs.open.Load() != 0 {
		t.Fatalf("quarantined %d, %d files open", s.Quarantined(), fs.open.Load())
	}
	q, _ := os.ReadDir(filepath.Join(s.Devices()[0].Path, "quarantine"))
	if len(q) != 1 {
		t.Fatalf("%d files in quarantine", len(q))
	}

	// The table is checked when the file is opened: a table that went bad
	// before is found by the first read, whatever chunk it asks for.
	id2 := ShardID{Volume: 1, Segment: 2}
	if _, err := s.Put(id2, 1, data); err != nil {
		t.Fatal(err)
	}
	corruptShardFile(t, s, id2, int64(headerBytes+len(data)+5))
	if _, _, err := s.Get(id2, 0, 10); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a shard whose table is bad: %v, want ErrCorrupt", err)
	}
}

// TestOpenShardFilesAreBounded: no more files stay open than the bound,
// the least recently read closing first, and Close closes the rest.
func TestOpenShardFilesAreBounded(t *testing.T) {
	fs := &countingFS{}
	s := openCacheStore(t, t.TempDir(), 2, 3, fs)
	var ids []ShardID
	for i := range 8 {
		id := ShardID{Volume: 1, Segment: uint64(i)}
		ids = append(ids, id)
		if _, err := s.Put(id, 1, randomData(int64(i), 4096+i)); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for i, id := range ids {
			mustGet(t, s, id, 0, 0, randomData(int64(i), 4096+i))
			if n := s.OpenShardFiles(); n > 3 || fs.open.Load() != int64(n) {
				t.Fatalf("round %d: %d files cached, %d open, bound 3", round, n, fs.open.Load())
			}
		}
	}
	// The three read last are the ones open: reading them opens nothing.
	before := fs.open.Load()
	for _, id := range ids[5:] {
		e, _, o, err := s.lookup(id)
		if err != nil || o == nil {
			t.Fatalf("%s, read last, is not cached (%v)", id, err)
		}
		_ = e
		s.release(o)
	}
	if fs.open.Load() != before {
		t.Fatal("a cached read opened a file")
	}
	s.Close()
	if n := fs.open.Load(); n != 0 {
		t.Fatalf("%d files open after Close", n)
	}
}

// TestReadsRaceReplacesAndDeletes: readers read a shard while a writer
// replaces it with versions of other lengths and deletes it. Every read
// returns one whole version, never one older than the last version
// acknowledged before the read began; nothing is quarantined; every file
// is closed at the end.
func TestReadsRaceReplacesAndDeletes(t *testing.T) {
	fs := &countingFS{}
	s := openCacheStore(t, t.TempDir(), 2, 2, fs)
	id := ShardID{Volume: 3, Segment: 1}
	version := func(v int) []byte { return bytes.Repeat([]byte{byte(v)}, 4096*(1+v%3)+v%7) }
	var acked atomic.Int64 // the last version acknowledged; -1: deleted
	if _, err := s.Put(id, 1, version(1)); err != nil {
		t.Fatal(err)
	}
	acked.Store(1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				floor := acked.Load()
				// Other shards come and go through the bound of two files.
				s.Get(ShardID{Volume: 3, Segment: uint64(2 + (r+i)%3)}, 0, 0)
				got, _, err := s.Get(id, 0, 0)
				if errors.Is(err, ErrNotFound) {
					continue // deleted; a later put brings it back
				}
				if err != nil {
					errs <- fmt.Errorf("read: %w", err)
					return
				}
				v := int64(got[0])
				if !bytes.Equal(got, version(int(v))) {
					errs <- fmt.Errorf("read %d bytes that are no whole version", len(got))
					return
				}
				if floor > 0 && v < floor {
					errs <- fmt.Errorf("read version %d after version %d was acknowledged", v, floor)
					return
				}
			}
		}()
	}
	for i := range 3 {
		if _, err := s.Put(ShardID{Volume: 3, Segment: uint64(2 + i)}, 1, randomData(int64(i), 4096)); err != nil {
			t.Fatal(err)
		}
	}
	for v := 2; v < 200; v++ {
		if v%17 == 0 {
			if err := s.Delete(id, 1); err != nil {
				t.Fatal(err)
			}
			acked.Store(-1)
			continue
		}
		if _, err := s.Put(id, 1, version(v)); err != nil {
			t.Fatal(err)
		}
		acked.Store(int64(v))
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s.Quarantined() != 0 {
		t.Fatalf("%d shards quarantined by reads racing writes", s.Quarantined())
	}
	s.Close()
	if n := fs.open.Load(); n != 0 {
		t.Fatalf("%d files open after Close", n)
	}
}

// inode is a file's inode number.
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestDeletedShardFilesAreReused: a delete keeps its shard's file, emptied,
// for the next put to write into (no inode to allocate and free), up to a
// bound; a file a reader still holds is deleted instead.
func TestDeletedShardFilesAreReused(t *testing.T) {
	dir := t.TempDir()
	s := openCacheStore(t, dir, 1, 0, nil)
	tmp := filepath.Join(dir, "d0", "tmp")
	a, b := ShardID{Volume: 1, Segment: 1}, ShardID{Volume: 2, Segment: 1}
	if _, err := s.Put(a, 1, randomData(1, 9000)); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, shardFile(t, s, a))
	if err := s.Delete(a, 1); err != nil {
		t.Fatal(err)
	}
	// The file keeps its blocks (written over, not truncated, by the next
	// put: no allocation to commit).
	if l := dirListing(t, tmp); !strings.HasPrefix(l, "free.0 ") || strings.HasPrefix(l, "free.0 0\n") {
		t.Fatalf("tmp after a delete:\n%s", l)
	}
	data := randomData(2, 5000)
	if _, err := s.Put(b, 1, data); err != nil {
		t.Fatal(err)
	}
	if got := inode(t, shardFile(t, s, b)); got != ino {
		t.Fatalf("the put made a new file (inode %d), not the deleted shard's (%d)", got, ino)
	}
	if l := dirListing(t, tmp); l != "" {
		t.Fatalf("tmp after the put:\n%s", l)
	}
	mustGet(t, s, b, 0, 0, data)
	// Cut to its new length: a start checks every shard file's size, and
	// a smaller shard written over a larger one's file must pass.
	s.Close()
	s = openCacheStore(t, dir, 1, 0, nil)
	mustGet(t, s, b, 0, 0, data)
	if n := s.quarantined; n != 0 {
		t.Fatalf("%d shard files quarantined after a start", n)
	}

	// A reader holds b's file when b is deleted: the file goes.
	_, _, o, err := s.lookup(b)
	if err != nil || o == nil {
		t.Fatalf("lookup: %v", err)
	}
	if err := s.Delete(b, 1); err != nil {
		t.Fatal(err)
	}
	if l := dirListing(t, tmp); l != "" {
		t.Fatalf("a file a reader holds was kept for reuse:\n%s", l)
	}
	s.release(o)

	// At most maxFreeFiles are kept.
	for i := range maxFreeFiles + 5 {
		if _, err := s.Put(ShardID{Volume: 3, Segment: uint64(i)}, 1, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range maxFreeFiles + 5 {
		if err := s.Delete(ShardID{Volume: 3, Segment: uint64(i)}, 1); err != nil {
			t.Fatal(err)
		}
	}
	if files, _ := os.ReadDir(tmp); len(files) != maxFreeFiles {
		t.Fatalf("%d files kept in tmp, want %d", len(files), maxFreeFiles)
	}
	if used := s.Devices()[0].UsedBytes; used != 0 {
		t.Fatalf("%d bytes used with no shards", used)
	}
	// A start clears them.
	s.Close()
	s = openCacheStore(t, dir, 1, 0, nil)
	if files, _ := os.ReadDir(tmp); len(files) != 0 {
		t.Fatalf("%d files left in tmp after a start", len(files))
	}
	// And at most maxFreeBytes.
	big := make([]byte, 8<<20)
	n := maxFreeBytes/len(big) + 1
	for i := range n {
		if _, err := s.Put(ShardID{Volume: 4, Segment: uint64(i)}, 1, big); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if err := s.Delete(ShardID{Volume: 4, Segment: uint64(i)}, 1); err != nil {
			t.Fatal(err)
		}
	}
	var kept int64
	files, _ := os.ReadDir(tmp)
	for _, f := range files {
		fi, err := f.Info()
		if err != nil {
			t.Fatal(err)
		}
		kept += fi.Size()
	}
	// As many as fit.
	if len(files) == 0 || kept > maxFreeBytes || kept+kept/int64(len(files)) <= maxFreeBytes {
		t.Fatalf("%d files of %d bytes kept in tmp, want as many as fit in %d", len(files), kept, maxFreeBytes)
	}
}

// TestTooManyOpenFilesFailsNoDevice: a process out of file descriptors
// fails reads and writes, but marks no device failed: it is no fault of
// the disks, and passes.
func TestTooManyOpenFilesFailsNoDevice(t *testing.T) {
	fs := newFaultFS()
	s := openTestStore(t, t.TempDir(), 2, 0, fs)
	id := ShardID{Volume: 1, Segment: 1}
	data := randomData(1, 5000)
	if _, err := s.Put(id, 1, data); err != nil {
		t.Fatal(err)
	}
	fs.set(func(f *faultFS) { f.shortage = true })
	if _, _, err := s.Get(id, 0, 0); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("read without file descriptors: %v", err)
	}
	if _, err := s.Put(ShardID{Volume: 1, Segment: 2}, 1, data); !errors.Is(err, syscall.EMFILE) || errors.Is(err, ErrNoSpace) {
		t.Fatalf("write without file descriptors: %v", err)
	}
	for _, d := range s.Devices() {
		if d.Failed {
			t.Fatalf("device %s marked failed for want of file descriptors", d.ID)
		}
	}
	fs.set(func(f *faultFS) { f.shortage = false })
	mustGet(t, s, id, 0, 0, data)
	if _, err := s.Put(ShardID{Volume: 1, Segment: 2}, 1, data); err != nil {
		t.Fatal(err)
	}
}
