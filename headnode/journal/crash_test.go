package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
)

// The crash property test: over many seeds, a workload of appends of
// random entries, waits and releases runs on crashfs, the machine crashes
// at a random point (during a batch write, between a write and its sync,
// during a superblock update, during Open...), the journal is reopened,
// and replay is checked against a model of what was appended:
//
//   - the batches replayed are exactly those from the tail to the head,
//     each with exactly the entries appended to it (metadata, data and
//     locations), their blocks readable;
//   - every batch whose Commit succeeded, and which was not released, is
//     among them; nothing after the first batch that does not check out
//     is (a batch past it would have to match the model at its LSN);
//   - nothing panics.
//
// JOURNAL_CRASH_SEEDS=n runs n seeds (default 200, 40 with -short);
// JOURNAL_CRASH_SEED=s runs seed s alone. A seed fixes the workload and the
// crash choices; the goroutines' timing still varies from run to run.

func TestCrashProperty(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 40
	}
	if s := os.Getenv("JOURNAL_CRASH_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		seeds = n
	}
	first := uint64(0)
	if s := os.Getenv("JOURNAL_CRASH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		first, seeds = n, 1
	}
	for seed := first; seed < first+uint64(seeds); seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			runCrashSeed(t, seed)
		})
	}
}

// modelBatch is what the test appended to one batch.
type modelBatch struct {
	entries []Entry
	locs    [][]Location
	durable bool // its Commit succeeded, or a replay returned it
}

type crashRun struct {
	t        *testing.T
	rng      *rand.Rand
	cfs      *crashfs.FS
	opts     Options
	model    map[uint64]*modelBatch
	mu       sync.Mutex // for released: the releaser goroutine sets it too
	released uint64     // the highest LSN passed to Release
	nextID   uint64     // block contents
	// lifeCrashes is the FS's count of crashes when this life began.
	lifeCrashes int
	checked     int // batches replayed and checked
}

func runCrashSeed(t *testing.T, seed uint64) {
	r := &crashRun{
		t:     t,
		rng:   rand.New(rand.NewPCG(seed, 0x5eed)),
		cfs:   crashfs.New(seed),
		model: map[uint64]*modelBatch{},
	}
	r.opts = smallOpts(memFS{r.cfs}, 3+r.rng.IntN(3))
	lives := 4 + r.rng.IntN(5)
	for life := range lives {
		r.armCrash(life == lives-1)
		r.life()
	}
	r.cfs.SetHook(nil)
	j := r.open()
	if j == nil {
		t.Fatal("the final Open crashed with no crash armed")
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lives, %d crashes, %d batches checked in replays, head LSN %d", lives, r.cfs.Crashes(), r.checked, j.Stats().HeadLSN)
}

// armCrash sets the hook that crashes the machine at a random point of
// the next life (none in the last one, which ends with a clean Close or a
// crash the test makes).
func (r *crashRun) armCrash(last bool) {
	if last {
		r.cfs.SetHook(nil)
		return
	}
	switch r.rng.IntN(3) {
	case 0, 1: // at the n-th write, sync or allocate
		n := 1 + r.rng.IntN(600)
		r.cfs.SetHook(func(op crashfs.Op) crashfs.Fault {
			if op.Kind == crashfs.OpRead || op.Kind == crashfs.OpOpen {
				return crashfs.Fault{}
			}
			if n--; n == 0 {
				return crashfs.Fault{Crash: true}
			}
			return crashfs.Fault{}
		})
	case 2: // at the n-th superblock update: during its write or its sync
		n := 1 + r.rng.IntN(4)
		atSync := r.rng.IntN(2) == 0
		armed := false
		r.cfs.SetHook(func(op crashfs.Op) crashfs.Fault {
			if armed && op.Kind == crashfs.OpSync {
				return crashfs.Fault{Crash: true}
			}
			if op.Kind == crashfs.OpWrite && op.Off < superblockArea {
				if n--; n == 0 {
					if !atSync {
						return crashfs.Fault{Crash: true}
					}
					armed = true
				}
			}
			return crashfs.Fault{}
		})
	}
}

// open opens the journal and checks the replay against the model. It
// returns nil if the machine crashed during Open.
func (r *crashRun) open() *Journal {
	t := r.t
	var got []replayed
	j, err := Open(testPath, r.opts, collect(&got))
	if errors.Is(err, crashfs.ErrCrashed) {
		return nil
	}
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	st := j.Stats()
	// The batches replayed are exactly TailLSN..HeadLSN, as appended.
	want := st.TailLSN
	for i := 0; i < len(got); {
		lsn := got[i].lsn
		if lsn != want {
			t.Fatalf("replayed batch %d, expected %d (tail %d, head %d)", lsn, want, st.TailLSN, st.HeadLSN)
		}
		m := r.model[lsn]
		if m == nil {
			t.Fatalf("replayed batch %d, which the model does not have", lsn)
		}
		if i+len(m.entries) > len(got) {
			t.Fatalf("batch %d replayed with %d entries, appended with %d", lsn, len(got)-i, len(m.entries))
		}
		for k, e := range m.entries {
			g := got[i+k]
			if g.lsn != lsn || !bytes.Equal(g.meta, e.Meta) || len(g.data) != len(e.Blocks) {
				t.Fatalf("batch %d entry %d replayed as %v, appended with %d blocks", lsn, k, g, len(e.Blocks))
			}
			for b := range e.Blocks {
				if !bytes.Equal(g.data[b], e.Blocks[b]) || g.locs[b] != m.locs[k][b] {
					t.Fatalf("batch %d entry %d block %d: replayed at %+v, appended at %+v", lsn, k, b, g.locs[b], m.locs[k][b])
				}
				checkRead(t, j, g.locs[b], e.Blocks[b])
			}
		}
		m.durable = true // on disk and replayed: it is the journal now
		r.checked++
		i += len(m.entries)
		want++
	}
	if want != st.HeadLSN+1 {
		t.Fatalf("replay ended at batch %d, the journal's head is %d", want-1, st.HeadLSN)
	}
	for lsn, m := range r.model {
		switch {
		case lsn > st.HeadLSN:
			if m.durable {
				t.Fatalf("batch %d was durable, replay ended at %d (%v)", lsn, st.HeadLSN, j.mu.replayEnd)
			}
			delete(r.model, lsn) // lost, and its LSN will be reused
		case lsn < st.TailLSN:
			if m.durable && lsn >= r.released {
				t.Fatalf("batch %d was durable and not released (release %d), the tail is %d", lsn, r.released, st.TailLSN)
			}
			delete(r.model, lsn)
		}
	}
	return j
}

// life opens the journal, runs the workload until the armed crash (or for
// a while), and closes it.
func (r *crashRun) life() {
	r.lifeCrashes = r.cfs.Crashes()
	j := r.open()
	if j == nil {
		return
	}
	var commits []*Commit
	// In half the lives a goroutine releases what is durable when the
	// ring is half full, and appends wait for it: Release runs
	// while the writer has batches waiting for the zones it frees.
	background := r.rng.IntN(2) == 0
	stop := make(chan struct{})
	var releaser sync.WaitGroup
	if background {
		releaser.Go(func() {
			tick := time.NewTicker(100 * time.Microsecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if st := j.Stats(); st.UsedBytes > st.TotalBytes/2 {
					r.release(j, st.DurableLSN+1)
				}
			}
		})
	}
	// Closing waits for every commit, so their outcome is final after.
	defer func() {
		close(stop)
		releaser.Wait()
		j.Close()
		for _, c := range commits {
			if c.Err() == nil {
				r.model[c.LSN()].durable = true
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	steps := 50 + r.rng.IntN(250)
	for range steps {
		switch p := r.rng.IntN(1000); {
		case p < 700:
			// Keep room: release all that is durable when over half full.
			if st := j.Stats(); !background && st.UsedBytes > st.TotalBytes/2 {
				if !r.releaseDurable(ctx, j, commits) {
					return
				}
			}
			c, ok := r.appendRandom(ctx, j)
			if !ok {
				return
			}
			commits = append(commits, c)
		case p < 800:
			if len(commits) > 0 && commits[len(commits)-1].Wait(ctx) != nil {
				return
			}
		case p < 985:
			if !r.releaseSome(j, commits) {
				return
			}
		default:
			r.cfs.Crash() // at an arbitrary moment of the goroutines
			return
		}
	}
	if r.rng.IntN(2) == 0 {
		r.cfs.Crash()
	}
}

// appendRandom appends 1 to 3 entries of 0 to 4 blocks (now and then
// many more, or long metadata) and reads one block back at once.
func (r *crashRun) appendRandom(ctx context.Context, j *Journal) (*Commit, bool) {
	n := 1 + r.rng.IntN(3)
	entries := make([]Entry, n)
	for i := range entries {
		metaLen := r.rng.IntN(64)
		if r.rng.IntN(20) == 0 {
			metaLen = 1000 + r.rng.IntN(5000) // a header of several sectors or blocks
		}
		meta := make([]byte, metaLen)
		for k := range meta {
			meta[k] = byte(r.rng.Uint32())
		}
		blocks := r.rng.IntN(5)
		if r.rng.IntN(30) == 0 {
			blocks = 5 + r.rng.IntN(8) // a batch larger than MaxBatchBytes
		}
		e := Entry{Meta: meta}
		for range blocks {
			r.nextID++
			e.Blocks = append(e.Blocks, blockData(r.nextID))
		}
		entries[i] = e
	}
	c, locs, err := j.Append(ctx, entries)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			r.t.Fatalf("Append stuck: %+v", j.Stats())
		}
		return nil, false // the journal broke: the machine crashed
	}
	m := r.model[c.LSN()]
	if m == nil {
		m = &modelBatch{}
		r.model[c.LSN()] = m
	}
	m.entries = append(m.entries, entries...)
	m.locs = append(m.locs, locs...)
	for i, e := range entries {
		if len(e.Blocks) > 0 {
			k := r.rng.IntN(len(e.Blocks))
			buf := make([]byte, BlockSize)
			err := j.ReadBlock(locs[i][k], buf)
			if err == nil && !bytes.Equal(buf, e.Blocks[k]) {
				r.t.Fatalf("ReadBlock(%+v) right after Append: other data", locs[i][k])
			}
			// An error is allowed only once the machine crashed (the
			// batch was written, the file is gone).
			if err != nil && r.cfs.Crashes() == r.lifeCrashes {
				r.t.Fatalf("ReadBlock(%+v) right after Append: %v", locs[i][k], err)
			}
			break
		}
	}
	return c, true
}

// releaseSome releases up to a random durable batch.
func (r *crashRun) releaseSome(j *Journal, commits []*Commit) bool {
	var durable []uint64
	for _, c := range commits {
		select {
		case <-c.Done():
			if c.Err() == nil {
				durable = append(durable, c.LSN())
			}
		default:
		}
	}
	if len(durable) == 0 {
		return true
	}
	return r.release(j, durable[r.rng.IntN(len(durable))]+1)
}

// releaseDurable waits for the last commit and releases everything
// durable, replayed batches included.
func (r *crashRun) releaseDurable(ctx context.Context, j *Journal, commits []*Commit) bool {
	if len(commits) > 0 {
		c := commits[len(commits)-1]
		if err := c.Wait(ctx); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				r.t.Fatalf("commit %d stuck: %+v", c.LSN(), j.Stats())
			}
			return false
		}
	}
	return r.release(j, j.Stats().DurableLSN+1)
}

// release calls Release. The model counts the batches as released even if
// it fails: the caller said it no longer needs them, and the superblock
// may have reached the disk before the crash that failed the call.
func (r *crashRun) release(j *Journal, lsn uint64) bool {
	r.mu.Lock()
	r.released = max(r.released, lsn)
	r.mu.Unlock()
	return j.Release(lsn) == nil
}
