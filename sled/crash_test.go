package sled

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pvfs "github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
)

// crashDevices is a deviceFS over crashfs: what a shard file and a
// directory hold survives a crash only as far as a sync made it durable
// (crashfs's doc says how a crash tears what was not). crashfs has no
// directories, so this keeps every name it ever made to list them.
type crashDevices struct {
	fs *crashfs.FS

	mu    sync.Mutex
	names map[string]bool
	// mtime is a logical clock of each name's last write or rename into
	// it: a start keeps the newer of two copies of a shard by it.
	mtime map[string]int
	clock int
	// reused counts the writes into files a delete kept for reuse.
	reused int
}

func newCrashDevices(seed uint64) *crashDevices {
	return &crashDevices{fs: crashfs.New(seed), names: map[string]bool{}, mtime: map[string]int{}}
}

func (c *crashDevices) touch(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.names[filepath.Clean(path)] = true
	c.mtime[filepath.Clean(path)] = c.clock
}

func (c *crashDevices) WriteFileSync(path string, reuse bool, bufs ...[]byte) error {
	flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if reuse {
		flag = os.O_WRONLY // written over in place, then cut (osFS)
		c.mu.Lock()
		c.reused++
		c.mu.Unlock()
	}
	f, err := c.fs.OpenFile(path, flag, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	c.touch(path)
	var off int64
	for _, b := range bufs {
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	if reuse {
		if err := f.Truncate(off); err != nil {
			return err
		}
	}
	return f.Sync()
}

func (c *crashDevices) Rename(oldPath, newPath string) error {
	if err := c.fs.Rename(oldPath, newPath); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.names[filepath.Clean(newPath)] = true
	c.mtime[filepath.Clean(newPath)] = c.mtime[filepath.Clean(oldPath)]
	return nil
}

func (c *crashDevices) SyncDir(dir string) error { return c.fs.SyncDir(dir) }
func (c *crashDevices) Remove(path string) error { return c.fs.Remove(path) }
func (c *crashDevices) MkdirAll(string) error    { return nil }

func (c *crashDevices) FreeBytes(string) (uint64, error) { return 1 << 40, nil }

func (c *crashDevices) ReadAt(path string, off int64, n int) ([]byte, error) {
	f, err := c.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if err := readFull(f, b, off); err != nil {
		return nil, err
	}
	return b, nil
}

func (c *crashDevices) Open(path string) (readFile, error) {
	f, err := c.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return crashFile{File: f, c: c}, nil
}

func (c *crashDevices) Truncate(path string, size int64) error {
	f, err := c.fs.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

func (c *crashDevices) Stat(path string) (os.FileInfo, error) {
	f, err := c.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// ReadDir lists the files and directories under dir that exist now.
func (c *crashDevices) ReadDir(dir string) ([]os.DirEntry, error) {
	dir = filepath.Clean(dir)
	c.mu.Lock()
	var names []string
	for n := range c.names {
		names = append(names, n)
	}
	c.mu.Unlock()
	seen := map[string]bool{}
	var out []os.DirEntry
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, dir+string(filepath.Separator))
		if !ok {
			continue
		}
		first, _, isDir := strings.Cut(rest, string(filepath.Separator))
		if seen[first] {
			continue
		}
		if !isDir {
			f, err := c.fs.OpenFile(n, os.O_RDONLY, 0)
			if err != nil {
				continue // gone
			}
			f.Close()
		}
		seen[first] = true
		out = append(out, fakeEntry{name: first, dir: isDir})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

type crashFile struct {
	*crashfs.File
	c *crashDevices
}

func (f crashFile) Stat() (os.FileInfo, error) {
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	f.c.mu.Lock()
	mt := f.c.mtime[f.Name()]
	f.c.mu.Unlock()
	return fakeInfo{name: filepath.Base(f.Name()), size: n, mtime: time.Unix(int64(mt), 0)}, nil
}

type fakeEntry struct {
	name string
	dir  bool
}

func (e fakeEntry) Name() string { return e.name }
func (e fakeEntry) IsDir() bool  { return e.dir }
func (e fakeEntry) Type() fs.FileMode {
	if e.dir {
		return fs.ModeDir
	}
	return 0
}
func (e fakeEntry) Info() (fs.FileInfo, error) { return fakeInfo{name: e.name, dir: e.dir}, nil }

type fakeInfo struct {
	name  string
	size  int64
	mtime time.Time
	dir   bool
}

func (i fakeInfo) Name() string       { return i.name }
func (i fakeInfo) Size() int64        { return i.size }
func (i fakeInfo) Mode() fs.FileMode  { return fakeEntry{dir: i.dir}.Type() }
func (i fakeInfo) ModTime() time.Time { return i.mtime }
func (i fakeInfo) IsDir() bool        { return i.dir }
func (i fakeInfo) Sys() any           { return nil }

var _ io.ReaderAt = crashFile{}

// crashOp is one step of the crash test's script.
type crashOp struct {
	id     ShardID
	delete bool
	data   []byte
}

// crashScript puts, replaces (on the same device and on the other) and
// deletes shards, so that puts reuse the files deletes gave up, and puts
// into a volume whose directory is new.
func crashScript() []crashOp {
	a, b, c, d := ShardID{1, 1, 0}, ShardID{1, 2, 0}, ShardID{1, 3, 1}, ShardID{2, 1, 0}
	v := func(seed int64, n int) []byte { return randomData(seed, n) }
	return []crashOp{
		{id: a, data: v(1, 9000)},
		{id: b, data: v(2, 4096)},
		{id: a, data: v(3, 5000)}, // a replace
		{id: b, delete: true},     // its file is kept for reuse
		{id: c, data: v(4, 12000)},
		{id: d, data: v(5, 100)}, // a new volume's directory
		{id: a, delete: true},
		{id: b, data: v(6, 8192)}, // back, in a's old file
		{id: c, data: v(7, 3000)},
		{id: d, data: v(8, 4097)},
	}
}

// TestAcknowledgedPutsSurvivePowerLoss runs the script with a power loss
// at every file operation in turn (and at none), then starts the sled
// again on what the crash left. Every shard whose last acknowledged
// operation was a put reads back exactly that put's data (or the next
// put's, if that one was under way); no shard ever reads back data it was
// not put with: a torn or misplaced file is quarantined, never served.
// The metadata crashes with the shards (pebble's strict memory FS).
func TestAcknowledgedPutsSurvivePowerLoss(t *testing.T) {
	script := crashScript()
	seeds := []uint64{1, 2, 3}
	if testing.Short() {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		for crashAt := 0; ; crashAt++ {
			crashed := runCrashScript(t, script, seed, crashAt)
			if !crashed {
				t.Logf("seed %d: %d crash points", seed, crashAt)
				break // the script ran to its end: every point was tried
			}
		}
	}
}

var errPowerOff = errors.New("the machine is off")

// runCrashScript runs the script with a crash at the crashAt-th file
// operation, checks what a restart finds, and says whether it crashed.
func runCrashScript(t *testing.T, script []crashOp, seed uint64, crashAt int) bool {
	t.Helper()
	dir := "/sled"
	devs := newCrashDevices(seed*1000 + uint64(crashAt))
	meta := pvfs.NewStrictMem()
	open := func() *Store {
		s, err := openStore(storeOptions{id: "t", dataDir: dir, devicePaths: []string{dir + "/d0", dir + "/d1"}, fs: devs, metaFS: meta,
			logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())})
		if err != nil {
			t.Fatalf("crash at %d (seed %d): open: %v", crashAt, seed, err)
		}
		return s
	}
	s := open()
	ops, crashed := 0, false
	var hookMu sync.Mutex
	devs.fs.SetHook(func(op crashfs.Op) crashfs.Fault {
		hookMu.Lock()
		defer hookMu.Unlock()
		if crashed {
			// The sled is dead: nothing it does after the crash happens.
			return crashfs.Fault{Err: errPowerOff}
		}
		if ops == crashAt {
			crashed = true
			meta.SetIgnoreSyncs(true) // nor does its metadata change
			return crashfs.Fault{Crash: true}
		}
		ops++
		return crashfs.Fault{}
	})
	acked := make([]bool, len(script))
	ran := len(script)
	for i, op := range script {
		var err error
		if op.delete {
			err = s.Delete(op.id, 1)
		} else {
			_, err = s.Put(op.id, 1, op.data)
		}
		if err != nil {
			hookMu.Lock()
			c := crashed
			hookMu.Unlock()
			if !c {
				t.Fatalf("crash at %d (seed %d): op %d failed without a crash: %v", crashAt, seed, i, err)
			}
			ran = i + 1
			break
		}
		acked[i] = true
	}
	devs.fs.SetHook(nil)
	hookMu.Lock()
	didCrash := crashed
	hookMu.Unlock()
	if !didCrash {
		s.Close()
		if devs.reused == 0 {
			t.Fatal("no put of the script reused a deleted shard's file")
		}
		return false
	}
	devs.fs.Crash() // the crash the hook began; now the unsynced state goes
	s.Close()
	meta.ResetToSyncedState()
	meta.SetIgnoreSyncs(false)

	s = open()
	defer s.Close()
	for _, id := range []ShardID{script[0].id, script[1].id, script[4].id, script[5].id} {
		checkAfterCrash(t, s, script[:ran], acked, id, fmt.Sprintf("crash at op %d (seed %d), %d ops begun", crashAt, seed, ran))
	}
	// The sled takes writes again.
	if _, err := s.Put(ShardID{9, 9, 9}, 1, []byte("after")); err != nil {
		t.Fatalf("crash at %d: put after the restart: %v", crashAt, err)
	}
	return true
}

// checkAfterCrash checks what a restarted sled reads of one shard against
// the operations begun on it before the crash (only the last may lack its
// acknowledgement).
func checkAfterCrash(t *testing.T, s *Store, ops []crashOp, acked []bool, id ShardID, what string) {
	t.Helper()
	var mine []int
	for i, op := range ops {
		if op.id == id {
			mine = append(mine, i)
		}
	}
	got, _, err := s.Get(id, 0, 0)
	lastAcked := -1
	for _, i := range mine {
		if acked[i] {
			lastAcked = i
		}
	}
	var allowed [][]byte
	mustExist := false
	if lastAcked >= 0 && !ops[lastAcked].delete {
		mustExist = true
		allowed = append(allowed, ops[lastAcked].data)
		if last := mine[len(mine)-1]; last > lastAcked && !ops[last].delete {
			allowed = append(allowed, ops[last].data) // under way
		} else if last > lastAcked {
			mustExist = false // a delete under way
		}
	} else {
		// Deleted or never acknowledged: gone, or any version put of it
		// (a delete is not synced), but nothing else.
		for _, i := range mine {
			if !ops[i].delete {
				allowed = append(allowed, ops[i].data)
			}
		}
	}
	if err != nil {
		if mustExist {
			t.Fatalf("%s: %s, acknowledged, is lost: %v", what, id, err)
		}
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %s: %v", what, id, err)
		}
		return
	}
	for _, a := range allowed {
		if bytes.Equal(got, a) {
			return
		}
	}
	t.Fatalf("%s: %s reads back %d bytes it was never put with (%d versions allowed)", what, id, len(got), len(allowed))
}
