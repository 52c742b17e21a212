package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
)

func TestAppendReadReplay(t *testing.T) {
	fs := newMemFS(1)
	j, got := mustOpen(t, smallOpts(fs, 4))
	if len(got) != 0 {
		t.Fatalf("a new journal replayed %v", got)
	}
	entries := []Entry{entryOf("a", 1, 2), entryOf("meta only"), entryOf("", 3)}
	c, locs, err := j.Append(context.Background(), entries)
	if err != nil {
		t.Fatal(err)
	}
	if c.LSN() != 1 || len(locs) != 3 || len(locs[0]) != 2 || len(locs[1]) != 0 || len(locs[2]) != 1 {
		t.Fatalf("commit %d, locations %v", c.LSN(), locs)
	}
	// Readable before the commit is known durable, and after.
	checkRead(t, j, locs[0][1], blockData(2))
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkRead(t, j, locs[0][0], blockData(1))
	checkRead(t, j, locs[2][0], blockData(3))
	c2, locs2 := appendWait(t, j, entryOf("b", 4))
	if c2.LSN() != 2 {
		t.Fatalf("second batch has LSN %d", c2.LSN())
	}
	st := j.Stats()
	if st.HeadLSN != 2 || st.DurableLSN != 2 || st.TailLSN != 1 || st.Batches != 2 || st.Syncs < 1 || st.TotalBytes != 4*64<<10 {
		t.Fatalf("stats %+v", st)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}

	j, got = mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	want := []replayed{
		{lsn: 1, meta: []byte("a"), data: [][]byte{blockData(1), blockData(2)}, locs: locs[0]},
		{lsn: 1, meta: []byte("meta only"), locs: locs[1]},
		{lsn: 1, meta: []byte(""), data: [][]byte{blockData(3)}, locs: locs[2]},
		{lsn: 2, meta: []byte("b"), data: [][]byte{blockData(4)}, locs: locs2[0]},
	}
	checkReplayed(t, got, want)
	checkRead(t, j, locs2[0][0], blockData(4))
	c3, _ := appendWait(t, j, entryOf("c", 5))
	if c3.LSN() != 3 {
		t.Fatalf("after reopen, batch has LSN %d", c3.LSN())
	}
}

func checkReplayed(t *testing.T, got, want []replayed) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("replayed %d entries %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.lsn != w.lsn || !bytes.Equal(g.meta, w.meta) || len(g.data) != len(w.data) || len(g.locs) != len(w.locs) {
			t.Fatalf("entry %d: replayed %v, want %v", i, g, w)
		}
		for k := range w.data {
			if !bytes.Equal(g.data[k], w.data[k]) || g.locs[k] != w.locs[k] {
				t.Fatalf("entry %d block %d: replayed %+v, want %+v", i, k, g.locs[k], w.locs[k])
			}
		}
	}
}

// Appends that arrive while a batch is written share the next batch.
func TestGroupCommit(t *testing.T) {
	fs := newMemFS(1)
	release := make(chan struct{})
	var held bool
	fs.SetHook(func(op crashfs.Op) crashfs.Fault {
		if op.Kind == crashfs.OpWrite && op.Off >= superblockArea && !held {
			held = true
			<-release // hold the first batch's write
		}
		return crashfs.Fault{}
	})
	j, _ := mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	c1, _, err := j.Append(context.Background(), []Entry{entryOf("1", 1)})
	if err != nil {
		t.Fatal(err)
	}
	// The writer takes batch 1 and blocks in its write, holding the
	// FS; wait until it has taken it.
	waitFor(t, func() bool { j.mu.Lock(); defer j.mu.Unlock(); return j.mu.open == nil })
	var commits []*Commit
	for i := range 3 {
		c, _, err := j.Append(context.Background(), []Entry{entryOf("n", uint64(10+i))})
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, c)
	}
	close(release)
	for _, c := range commits {
		if c != commits[0] || c.LSN() != 2 {
			t.Fatalf("appends during a write got commits %d and %d", commits[0].LSN(), c.LSN())
		}
	}
	if err := c1.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := commits[0].Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A batch fills up to MaxBatchBytes; what does not fit goes to the next.
func TestBatchBound(t *testing.T) {
	fs := newMemFS(1)
	hold := make(chan struct{})
	fs.SetHook(func(op crashfs.Op) crashfs.Fault {
		if op.Kind == crashfs.OpWrite && op.Off >= superblockArea {
			<-hold
		}
		return crashfs.Fault{}
	})
	j, _ := mustOpen(t, smallOpts(fs, 4)) // 16 KiB batches: header + 3 blocks
	defer j.Close()
	var lsns []uint64
	var commits []*Commit
	for i := range 6 {
		c, _, err := j.Append(context.Background(), []Entry{entryOf("x", uint64(i))})
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, c.LSN())
		commits = append(commits, c)
	}
	close(hold)
	// Batch 1 is the first append alone (taken by the writer at once) or
	// more; then batches of 3.
	for i := 1; i < len(lsns); i++ {
		if lsns[i] < lsns[i-1] || lsns[i] > lsns[i-1]+1 {
			t.Fatalf("LSNs %v", lsns)
		}
	}
	count := map[uint64]int{}
	for _, l := range lsns {
		count[l]++
	}
	for l, n := range count {
		if n > 3 {
			t.Fatalf("batch %d has %d blocks, more than 16 KiB holds: %v", l, n, lsns)
		}
	}
	for _, c := range commits {
		if err := c.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// A large append gets a batch of its own; one larger than a zone fails.
func TestAppendSizes(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	var ids []uint64
	for i := range 10 { // 44 KiB: more than a batch, less than a zone
		ids = append(ids, uint64(100+i))
	}
	c, locs := appendWait(t, j, entryOf("big", ids...))
	for i, loc := range locs[0] {
		if loc.LSN != c.LSN() {
			t.Fatalf("block %d in batch %d", i, loc.LSN)
		}
		checkRead(t, j, loc, blockData(ids[i]))
	}
	for range 6 {
		ids = append(ids, 7)
	}
	if _, _, err := j.Append(context.Background(), []Entry{entryOf("huge", ids...)}); err == nil {
		t.Fatal("an append larger than a zone succeeded")
	}
	bad := []Entry{{Blocks: [][]byte{make([]byte, 100)}}}
	if _, _, err := j.Append(context.Background(), bad); err == nil {
		t.Fatal("a short block was accepted")
	}
	if _, _, err := j.Append(context.Background(), []Entry{{Meta: make([]byte, MaxMetaBytes+1)}}); err == nil {
		t.Fatal("oversized metadata was accepted")
	}
	if _, _, err := j.Append(context.Background(), nil); err == nil {
		t.Fatal("an empty append was accepted")
	}
	// Metadata at the limit: a header longer than a block, laid out
	// after the data.
	e := entryOf(string(bytes.Repeat([]byte{'m'}, MaxMetaBytes/2)), 1, 2)
	_, locs = appendWait(t, j, e)
	checkRead(t, j, locs[0][1], blockData(2))
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, got := mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	last := got[len(got)-1]
	if !bytes.Equal(last.meta, e.Meta) || !bytes.Equal(last.data[1], blockData(2)) {
		t.Fatalf("long header replayed as %v", last)
	}
}

// The journal on the operating system's filesystem: a temporary
// directory (O_DIRECT where it works) and tmpfs (which may refuse it).
func TestOSFS(t *testing.T) {
	dirs := map[string]string{"tempdir": t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "journal-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, "journal")
			opts := Options{SizeBytes: superblockArea + 3<<20, ZoneBytes: 1 << 20, MaxBatchBytes: 64 << 10}
			j, err := Open(path, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("direct I/O: %v", j.Stats().DirectIO)
			var all [][]Location
			for i := range 300 { // more than a lap of the ring, releasing as it goes
				_, locs := appendWait(t, j, entryOf(fmt.Sprint(i), uint64(i)))
				all = append(all, locs[0])
				// An unaligned buffer takes the copying path.
				buf := make([]byte, BlockSize+1)[1:]
				if err := j.ReadBlock(locs[0][0], buf); err != nil || !bytes.Equal(buf, blockData(uint64(i))) {
					t.Fatalf("block %d: %v", i, err)
				}
				if i%100 == 99 {
					if err := j.Release(locs[0][0].LSN - 50); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil || st.Size() != superblockArea+3<<20 {
				t.Fatalf("file size %v, %v", st.Size(), err)
			}
			var got []replayed
			j, err = Open(path, opts, collect(&got))
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if len(got) == 0 || got[len(got)-1].lsn != 300 {
				t.Fatalf("replayed %d entries, last %v", len(got), got[len(got)-1])
			}
			for _, r := range got {
				i := r.lsn - 1
				if string(r.meta) != fmt.Sprint(i) || !bytes.Equal(r.data[0], blockData(i)) || r.locs[0] != all[i][0] {
					t.Fatalf("replayed %v for append %d", r, i)
				}
			}
		})
	}
}

// A full ring blocks Append until Release frees a zone; ctx cancels it.
func TestBackpressure(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 2))
	defer j.Close()
	// 16 KiB batches, 4 per zone: fill both zones.
	var last *Commit
	for i := range 8 {
		last, _ = appendWait(t, j, entryOf("", uint64(3*i), uint64(3*i+1), uint64(3*i+2)))
	}
	if st := j.Stats(); st.UsedBytes != st.TotalBytes {
		t.Fatalf("ring full, but stats say %+v", st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := j.Append(ctx, []Entry{entryOf("", 99)}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append into a full ring: %v", err)
	}

	done := make(chan error, 1)
	go func() {
		c, _, err := j.Append(context.Background(), []Entry{entryOf("", 100)})
		if err == nil {
			err = c.Wait(context.Background())
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Append into a full ring returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	// Releasing within the first zone frees nothing.
	if err := j.Release(3); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Append returned %v, with no zone freed", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := j.Release(5); err != nil { // batches 1-4: zone 0
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Append after Release: %v", err)
	}
	st := j.Stats()
	if st.TailLSN != 5 || st.HeadLSN != last.LSN()+1 {
		t.Fatalf("stats after release %+v", st)
	}
	if err := j.ReadBlock(Location{LSN: 2, Offset: superblockArea + 5*BlockSize}, make([]byte, BlockSize)); !errors.Is(err, ErrReleased) {
		t.Fatalf("read of a released block: %v", err)
	}

	// Close wakes an Append waiting for space.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, _, err := j.Append(ctx, []Entry{entryOf("", 3, 4, 5)})
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break // full again
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		_, _, err := j.Append(context.Background(), []Entry{entryOf("", 3, 4, 5)})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	j.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting Append at Close: %v", err)
	}
}

func TestRelease(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 3))
	if err := j.Release(5); err == nil {
		t.Fatal("release past the head succeeded")
	}
	var locs [][]Location
	for i := range 20 { // 5 zones' worth in a ring of 3
		_, l := appendWait(t, j, entryOf(fmt.Sprint(i), uint64(i), uint64(i)+100, uint64(i)+200))
		locs = append(locs, l[0])
		if i >= 6 {
			if err := j.Release(uint64(i - 4)); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := j.Stats()
	// Batches 16 to 20 are not released; the tail is the first batch of
	// the zone holding 16: zones hold batches 1-4, 5-8, 9-12, 13-16, 17-20.
	if st.TailLSN != 13 || st.HeadLSN != 20 {
		t.Fatalf("stats %+v", st)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, got := mustOpen(t, smallOpts(fs, 3))
	defer j.Close()
	if len(got) != 8 || got[0].lsn != 13 {
		t.Fatalf("replayed %v", got)
	}
	for _, r := range got {
		for k, loc := range r.locs {
			if loc != locs[r.lsn-1][k] {
				t.Fatalf("batch %d block %d replayed at %+v, appended at %+v", r.lsn, k, loc, locs[r.lsn-1][k])
			}
			checkRead(t, j, loc, blockData(r.lsn-1+100*uint64(k)))
		}
	}
}

// A write or sync error fails that commit and every later one, and the
// journal with them.
func TestIOErrorBreaksJournal(t *testing.T) {
	for _, kind := range []crashfs.OpKind{crashfs.OpWrite, crashfs.OpSync} {
		t.Run(kind.String(), func(t *testing.T) {
			fs := newMemFS(1)
			j, _ := mustOpen(t, smallOpts(fs, 4))
			defer j.Close()
			appendWait(t, j, entryOf("ok", 1))
			fs.SetHook(func(op crashfs.Op) crashfs.Fault {
				if op.Kind == kind {
					return crashfs.Fault{Err: syscall.EIO}
				}
				return crashfs.Fault{}
			})
			c, locs, err := j.Append(context.Background(), []Entry{entryOf("fails", 2)})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Wait(context.Background()); !errors.Is(err, syscall.EIO) || !errors.Is(c.Err(), syscall.EIO) {
				t.Fatalf("commit over a failing %s: %v", kind, err)
			}
			fs.SetHook(nil)
			if _, _, err := j.Append(context.Background(), []Entry{entryOf("later", 3)}); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Append on a broken journal: %v", err)
			}
			if err := j.Release(2); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Release on a broken journal: %v", err)
			}
			if kind == crashfs.OpSync {
				// The block was written: still readable.
				checkRead(t, j, locs[0][0], blockData(2))
			}
			if err := j.Close(); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Close of a broken journal: %v", err)
			}
		})
	}
}

func TestReadCorruptBlock(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	_, locs := appendWait(t, j, entryOf("", 1))
	f, err := fs.OpenFile(testPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xff}, locs[0][0].Offset+100); err != nil {
		t.Fatal(err)
	}
	if err := j.ReadBlock(locs[0][0], make([]byte, BlockSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a corrupt block: %v", err)
	}
	for _, loc := range []Location{{Offset: 0}, {Offset: superblockArea + 1}, {Offset: 1 << 40}} {
		if err := j.ReadBlock(loc, make([]byte, BlockSize)); err == nil {
			t.Fatalf("read of %+v succeeded", loc)
		}
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []Options{
		{},
		{SizeBytes: superblockArea + 64<<20},  // one default zone
		{SizeBytes: 1 << 20, ZoneBytes: 4096}, // zone too small
		{SizeBytes: 1 << 20, ZoneBytes: 64 << 10, MaxBatchBytes: 128 << 10}, // batch larger than a zone
	} {
		if _, _, err := o.resolve(); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	g, mb, err := Options{SizeBytes: superblockArea + 2<<20 + 100, ZoneBytes: 1<<20 - 100}.resolve()
	if err != nil || g.zoneBytes != 1<<20 || g.zones != 2 || mb != 1<<20 {
		t.Fatalf("resolve: %+v %d %v", g, mb, err)
	}

	// A journal opened with another geometry than it was made with keeps
	// its own, and its data.
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	_, locs := appendWait(t, j, entryOf("a", 1))
	j.Close()
	opts := smallOpts(fs, 5)
	opts.ZoneBytes *= 2
	j, got := mustOpen(t, opts)
	defer j.Close()
	if st := j.Stats(); st.TotalBytes != 4*64<<10 || j.ZoneBytes() != 64<<10 {
		t.Fatalf("a journal of 4 zones of 64 KiB reopened with other options: %d bytes, zones of %d", st.TotalBytes, j.ZoneBytes())
	}
	checkReplayed(t, got, []replayed{{lsn: 1, meta: []byte("a"), data: [][]byte{blockData(1)}, locs: locs[0]}})
}

// A file whose superblocks are both damaged is not silently recreated.
func TestNoValidSuperblock(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	appendWait(t, j, entryOf("", 1))
	j.Close()
	f, err := fs.OpenFile(testPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{1}, 20)
	f.WriteAt([]byte{1}, BlockSize+20)
	f.Close()
	if _, err := Open(testPath, smallOpts(fs, 4), nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with both superblocks damaged: %v", err)
	}
}

// An error from the replay callback ends Open with it.
func TestReplayCallbackError(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	appendWait(t, j, entryOf("", 1))
	j.Close()
	boom := errors.New("boom")
	_, err := Open(testPath, smallOpts(fs, 4), func(uint64, Entry, []Location) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Open: %v", err)
	}
}

// opLog wraps an FS to log the start and end of every write and sync of
// the journal file, and to let a test delay some.
type opLog struct {
	FS
	mu    sync.Mutex
	ops   []string // "write <off>", "sync", "synced"
	delay func(off int64) time.Duration
}

func (l *opLog) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := l.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return loggedFile{File: f, log: l}, nil
}

func (l *opLog) add(op string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, op)
}

type loggedFile struct {
	File
	log *opLog
}

func (f loggedFile) WriteAt(p []byte, off int64) (int, error) {
	f.log.add(fmt.Sprint("write ", off))
	if f.log.delay != nil {
		time.Sleep(f.log.delay(off))
	}
	return f.File.WriteAt(p, off)
}

func (f loggedFile) Sync() error {
	f.log.add("sync")
	err := f.File.Sync()
	f.log.add("synced")
	return err
}

// Release lets the writer into a freed zone only after the superblock
// naming the new tail is synced, even with a batch waiting for that zone
// and the superblock write slow.
func TestReleaseSuperblockBeforeReuse(t *testing.T) {
	log := &opLog{FS: newMemFS(1)}
	j, _ := mustOpen(t, smallOpts(log, 2))
	defer j.Close()
	for i := range 8 { // both zones full
		appendWait(t, j, entryOf("", uint64(3*i), uint64(3*i+1), uint64(3*i+2)))
	}
	done := make(chan error, 1)
	go func() {
		c, _, err := j.Append(context.Background(), []Entry{entryOf("", 100)})
		if err == nil {
			err = c.Wait(context.Background())
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // the append waits for zone 0
	log.mu.Lock()
	log.ops = nil
	log.delay = func(off int64) time.Duration {
		if off < superblockArea {
			return 50 * time.Millisecond
		}
		return 0
	}
	log.mu.Unlock()
	if err := j.Release(5); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	synced := -1
	for i, op := range log.ops {
		switch {
		case strings.HasPrefix(op, "write ") && op != "write 0" && op != fmt.Sprint("write ", BlockSize) && synced < 0:
			t.Fatalf("%s before the superblock was synced: %v", op, log.ops)
		case op == "synced" && synced < 0:
			synced = i
		}
	}
	if synced < 0 || !slices.Contains(log.ops[synced:], fmt.Sprint("write ", superblockArea)) {
		t.Fatalf("operations %v", log.ops)
	}
}

// A Release that covers the head zone frees it once the head has moved
// on, without another Release.
func TestReleaseOfHeadZoneTakesEffectLater(t *testing.T) {
	j, _ := mustOpen(t, smallOpts(newMemFS(1), 2))
	defer j.Close()
	for i := range 4 { // zone 0: batches 1-4
		appendWait(t, j, entryOf("", uint64(3*i), uint64(3*i+1), uint64(3*i+2)))
	}
	if err := j.Release(5); err != nil {
		t.Fatal(err)
	}
	if st := j.Stats(); st.TailLSN != 1 {
		t.Fatalf("the head zone was freed: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 5 { // zone 1: batches 5-8; batch 9 needs zone 0
		c, _, err := j.Append(ctx, []Entry{entryOf("", uint64(3*i), uint64(3*i+1), uint64(3*i+2))})
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := j.Stats(); st.TailLSN != 5 || st.HeadLSN != 9 {
		t.Fatalf("stats %+v", st)
	}
}

// Many appends with long metadata never make a header longer than replay
// accepts, even when MaxBatchBytes would allow it.
func TestHeaderBound(t *testing.T) {
	fs := newMemFS(1)
	hold := make(chan struct{})
	fs.SetHook(func(op crashfs.Op) crashfs.Fault {
		if op.Kind == crashfs.OpWrite && op.Off >= superblockArea {
			<-hold
		}
		return crashfs.Fault{}
	})
	opts := Options{SizeBytes: superblockArea + 2*16<<20, ZoneBytes: 16 << 20, MaxBatchBytes: 12 << 20, FS: fs}
	j, _ := mustOpen(t, opts)
	meta := bytes.Repeat([]byte{'m'}, 60<<10)
	var commits []*Commit
	for range 100 { // 6 MB of metadata
		c, _, err := j.Append(context.Background(), []Entry{{Meta: meta}})
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, c)
	}
	close(hold)
	for _, c := range commits {
		if err := c.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	fs.SetHook(nil)
	j, got := mustOpen(t, opts)
	defer j.Close()
	if len(got) != 100 {
		t.Fatalf("replayed %d of 100 entries (%v)", len(got), j.mu.replayEnd)
	}
}

func TestReadBlocks(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	_, l1 := appendWait(t, j, entryOf("", 1, 2, 3), entryOf("", 4))
	_, l2 := appendWait(t, j, entryOf("", 5, 6))
	// Runs within a batch, a jump back, blocks of two batches.
	locs := []Location{l1[0][0], l1[0][1], l1[0][2], l1[1][0], l2[0][1], l1[0][1], l2[0][0], l2[0][1]}
	ids := []uint64{1, 2, 3, 4, 6, 2, 5, 6}
	for name, buf := range map[string][]byte{
		"aligned":   alignedBuf(len(locs) * BlockSize),
		"unaligned": make([]byte, len(locs)*BlockSize+1)[1:],
	} {
		if err := j.ReadBlocks(locs, buf); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, id := range ids {
			if !bytes.Equal(buf[i*BlockSize:(i+1)*BlockSize], blockData(id)) {
				t.Fatalf("%s: block %d of the read is not block %d", name, i, id)
			}
		}
	}
	if err := j.ReadBlocks(locs, make([]byte, BlockSize)); err == nil {
		t.Fatal("a read into too small a buffer succeeded")
	}
	if err := j.ReadBlocks([]Location{l1[0][0], {LSN: l1[0][0].LSN, Offset: 1 << 40}}, alignedBuf(2*BlockSize)); err == nil {
		t.Fatal("a read of a location beyond the journal succeeded")
	}

	f, err := fs.OpenFile(testPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xff}, l1[0][1].Offset+100); err != nil {
		t.Fatal(err)
	}
	if err := j.ReadBlocks(l1[0], alignedBuf(3*BlockSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a run with a corrupt block: %v", err)
	}
	// Fill the first zone, so that a release frees it.
	var next [][]Location
	for {
		_, next = appendWait(t, j, entryOf("", 7, 7, 7, 7))
		if next[0][0].Offset >= superblockArea+64<<10 {
			break
		}
	}
	if err := j.Release(next[0][0].LSN); err != nil {
		t.Fatal(err)
	}
	if st := j.Stats(); st.TailLSN <= l2[0][0].LSN {
		t.Fatalf("the release freed nothing (tail %d)", st.TailLSN)
	}
	if err := j.ReadBlocks([]Location{next[0][0], l1[0][0]}, alignedBuf(2*BlockSize)); !errors.Is(err, ErrReleased) {
		t.Fatalf("read of a released block: %v", err)
	}
}
