package journal

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// openZeroed opens a new journal in a directory on the test machine's
// disk and skips the test where the filesystem keeps no extent map.
func openZeroed(t *testing.T, path string, opts Options) *Journal {
	t.Helper()
	j, err := Open(path, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.f.(*osFile).Unwritten(0, j.g.fileBytes()); err != nil {
		j.Close()
		t.Skipf("no extent map here: %v", err)
	}
	return j
}

// firstUnwritten returns where the first unwritten range after the
// superblocks begins, or the file's end.
func firstUnwritten(t *testing.T, j *Journal) int64 {
	t.Helper()
	r, err := j.f.(*osFile).Unwritten(superblockArea, j.g.fileBytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(r) == 0 {
		return j.g.fileBytes()
	}
	return r[0][0]
}

// A new journal's blocks are fallocated, unwritten: the zeroer writes
// them ahead of the batches, a window's worth, and follows the batches
// as they move on, across a restart too.
func TestZeroerWritesAheadOfTheBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	opts := Options{SizeBytes: superblockArea + 8<<20, ZoneBytes: 1 << 20, MaxBatchBytes: 64 << 10, ZeroAheadBytes: 2 << 20}
	j := openZeroed(t, path, opts)
	waitFor(t, func() bool { return j.Stats().ZeroedBytes >= 2<<20 })
	time.Sleep(50 * time.Millisecond)
	if z := j.Stats().ZeroedBytes; z > 3<<20 {
		t.Fatalf("zeroed %d bytes with nothing appended, window 2 MiB", z)
	}
	if got := firstUnwritten(t, j); got < superblockArea+2<<20 {
		t.Fatalf("first unwritten block at %d after zeroing 2 MiB", got)
	}
	for i := range 48 { // 48 batches of 16 blocks: 3 MiB and more
		ids := make([]uint64, 16)
		for k := range ids {
			ids[k] = uint64(i*16 + k)
		}
		appendWait(t, j, entryOf(fmt.Sprint(i), ids...))
	}
	waitFor(t, func() bool { return firstUnwritten(t, j) >= superblockArea+5<<20 })
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// After a restart it carries on from the first unwritten block once
	// the batches come within the window of it.
	before := firstUnwritten(t, &Journal{f: mustOS(t, path), g: j.g})
	var got []replayed
	j, err := Open(path, opts, collect(&got))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(got) != 48 {
		t.Fatalf("replayed %d entries, want 48", len(got))
	}
	for i := range 32 { // 2 MiB more: the window moves past what was zeroed
		appendWait(t, j, entryOf(fmt.Sprint(i), make([]uint64, 16)...))
	}
	waitFor(t, func() bool { return j.Stats().ZeroedBytes > 0 })
	if after := firstUnwritten(t, j); after <= before {
		t.Fatalf("first unwritten block at %d after a restart, %d before", after, before)
	}
}

func mustOS(t *testing.T, path string) *osFile {
	t.Helper()
	f, err := openOS(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.(*osFile)
}

// Zeros never land on a batch: with a window so small that the zeroer's
// chunk nearly always covers the next batches, and a pause between a
// chunk's reservation and its write, concurrent appenders round
// the ring (and the zeroer's stop when the head wraps) leave every
// committed entry intact for replay.
func TestZeroerNeverLandsOnBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	// Batches of one block fill their room: the next one begins where the
	// zeroer's chunk does.
	opts := Options{SizeBytes: superblockArea + 4<<20, ZoneBytes: 1 << 20, MaxBatchBytes: 8 << 10, ZeroAheadBytes: 4 << 10}
	zeroerPause = 2 * time.Millisecond
	defer func() { zeroerPause = 0 }()
	j := openZeroed(t, path, opts)
	const writers, perWriter = 4, 150
	var mu sync.Mutex
	committed := map[string][]uint64{}
	var lastLSN uint64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for i := range perWriter {
				ids := []uint64{uint64(w*100000 + i)}
				meta := fmt.Sprintf("w%d-%d", w, i)
				c, _, err := j.Append(ctx, []Entry{entryOf(meta, ids...)})
				if err == nil {
					err = c.Wait(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				committed[meta] = ids
				lastLSN = max(lastLSN, c.LSN())
				// Free all but the last zone's worth, so the head laps the ring.
				if i%40 == 39 && lastLSN > 60 {
					if err := j.Release(lastLSN - 60); err != nil {
						mu.Unlock()
						errs <- err
						return
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := j.Stats()
	if st.ZeroedBytes == 0 {
		t.Fatal("the zeroer wrote nothing")
	}
	j.mu.Lock()
	wraps := j.mu.wraps
	j.mu.Unlock()
	t.Logf("zeroed %d bytes, %d batches, head wrapped %d times", st.ZeroedBytes, st.Batches, wraps)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var got []replayed
	j, err := Open(path, opts, collect(&got))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(got) == 0 {
		t.Fatal("nothing replayed")
	}
	for _, r := range got {
		ids, ok := committed[string(r.meta)]
		if !ok {
			t.Fatalf("replayed %v, never committed", r)
		}
		for k, id := range ids {
			if !bytes.Equal(r.data[k], blockData(id)) {
				t.Fatalf("entry %s block %d replayed with other data", r.meta, k)
			}
		}
	}
	if got[len(got)-1].lsn != st.HeadLSN {
		t.Fatalf("replay ended at batch %d, the head was %d", got[len(got)-1].lsn, st.HeadLSN)
	}
}
