package blockstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// crashableStore opens a store on a filesystem that forgets what was not
// synced when crash is called, as a power loss would.
type crashableStore struct {
	fs  *vfs.MemFS
	jfs *crashfs.FS
	s   *Store
	o   Options
}

// crashJournalFS puts the journal on a crashfs, which also tears the last
// write a power loss interrupts.
type crashJournalFS struct{ *crashfs.FS }

func (c crashJournalFS) OpenFile(name string, flag int, perm os.FileMode) (journal.File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

var crashSeed atomic.Uint64

func openCrashable(t *testing.T, o Options) *crashableStore {
	t.Helper()
	c := &crashableStore{fs: vfs.NewStrictMem(), jfs: crashfs.New(crashSeed.Add(1)), o: o}
	c.o.FS = c.fs
	c.o.JournalFS = crashJournalFS{c.jfs}
	c.o.JournalPath = "/journal"
	c.reopen(t)
	t.Cleanup(func() {
		if c.s != nil {
			c.s.Close()
		}
	})
	return c
}

func (c *crashableStore) reopen(t *testing.T) {
	t.Helper()
	s, err := Open("db", c.o)
	if err != nil {
		t.Fatal(err)
	}
	c.s = s
}

// crash loses everything not synced, then opens the store again. The
// journal goes first: pebble may sync after it (a release does), never
// the journal after pebble, which a real power loss, cutting both at
// once, cannot do either.
func (c *crashableStore) crash(t *testing.T) {
	t.Helper()
	c.jfs.Crash()
	c.fs.SetIgnoreSyncs(true)
	c.s.Close()
	c.fs.ResetToSyncedState()
	c.fs.SetIgnoreSyncs(false)
	c.reopen(t)
}

func writeRecord(seq uint64, blocks map[uint64][]byte) *ballastpb.LogRecord {
	r := &ballastpb.LogRecord{Seq: seq}
	for b, d := range blocks {
		r.Blocks = append(r.Blocks, &ballastpb.BlockWrite{Block: b, Data: d})
	}
	return r
}

func readBlocks(t *testing.T, s *Store, vol, first uint64, n int) []byte {
	t.Helper()
	buf := make([]byte, n*4096)
	lr, err := s.ReadLocal(vol, first, buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.Remote) != 0 {
		t.Fatalf("%d blocks on the sleds, none expected", len(lr.Remote))
	}
	return buf
}

// Appends commit pebble without a sync: after a crash, the journal's
// replay must give back every record Append returned for.
func TestJournalReplayRestoresWhatPebbleLost(t *testing.T) {
	c := openCrashable(t, Options{})
	const vol, blocks = 5, 64
	model := make([]byte, blocks*4096)
	rng := rand.New(rand.NewSource(1))
	for seq := uint64(1); seq <= 200; seq++ {
		var r *ballastpb.LogRecord
		if seq%17 == 0 {
			first := uint64(rng.Intn(blocks - 4))
			r = &ballastpb.LogRecord{Seq: seq, Removed: []*ballastpb.BlockRange{{First: first, Count: 4}}}
			clear(model[first*4096 : (first+4)*4096])
		} else {
			b := uint64(rng.Intn(blocks))
			d := pattern(4096, byte(seq))
			r = writeRecord(seq, map[uint64][]byte{b: d})
			copy(model[b*4096:], d)
		}
		if err := c.s.Append(vol, []*ballastpb.LogRecord{r}, seq-1); err != nil {
			t.Fatal(err)
		}
	}
	c.crash(t)
	if last, err := c.s.LastSeq(vol); err != nil || last != 200 {
		t.Fatalf("last seq after the crash: %d, %v; want 200", last, err)
	}
	if got := readBlocks(t, c.s, vol, 0, blocks); !bytes.Equal(got, model) {
		t.Fatal("the volume read after the crash differs from what was acknowledged")
	}
	// And the store goes on from there.
	if err := c.s.Append(vol, []*ballastpb.LogRecord{writeRecord(201, map[uint64][]byte{0: pattern(4096, 9)})}, 0); err != nil {
		t.Fatal(err)
	}
}

// A dropped volume's records stay in the journal until it wraps; a replay
// must not bring them back, not even when the volume was made again.
func TestJournalReplaySkipsADroppedVolumesPast(t *testing.T) {
	c := openCrashable(t, Options{})
	const vol = 3
	for seq := uint64(1); seq <= 10; seq++ {
		if err := c.s.Append(vol, []*ballastpb.LogRecord{writeRecord(seq, map[uint64][]byte{seq: pattern(4096, 1)})}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.s.DropVolume(vol); err != nil {
		t.Fatal(err)
	}
	// The volume again, from seq 1: a full sync makes a copy this way.
	if err := c.s.Append(vol, []*ballastpb.LogRecord{writeRecord(1, map[uint64][]byte{0: pattern(4096, 2)})}, 0); err != nil {
		t.Fatal(err)
	}
	c.crash(t)
	if last, _ := c.s.LastSeq(vol); last != 1 {
		t.Fatalf("last seq after the crash: %d, want 1", last)
	}
	want := make([]byte, 12*4096)
	copy(want, pattern(4096, 2))
	if got := readBlocks(t, c.s, vol, 0, 12); !bytes.Equal(got, want) {
		t.Fatal("blocks of the dropped volume's past came back")
	}
	// Dropped and crashed with nothing after: nothing at all.
	if err := c.s.DropVolume(vol); err != nil {
		t.Fatal(err)
	}
	c.crash(t)
	vols, err := c.s.Volumes()
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 0 {
		t.Fatalf("volumes after the drop and a crash: %v", vols)
	}
}

// Writes many times the journal's size, with what they wrote removed as
// they go: the release must free the journal behind them (and writers wait
// for it rather than fail), and a crash at the end still replays right.
func TestJournalWrapsAsTheLogEmpties(t *testing.T) {
	c := openCrashable(t, Options{JournalBytes: MinJournalBytes, ReleaseInterval: 10 * time.Millisecond})
	const vol = 9
	total := 4 * MinJournalBytes / 4096
	var seq uint64
	for i := 0; i < total; i += 16 {
		blocks := map[uint64][]byte{}
		for b := 0; b < 16; b++ {
			blocks[uint64(b)] = pattern(4096, byte(i+b))
		}
		seq++
		if err := c.s.Append(vol, []*ballastpb.LogRecord{writeRecord(seq, blocks)}, seq-1); err != nil {
			t.Fatal(err)
		}
		seq++
		rm := &ballastpb.LogRecord{Seq: seq, Removed: []*ballastpb.BlockRange{{First: 0, Count: 8}}}
		if err := c.s.Append(vol, []*ballastpb.LogRecord{rm}, seq-1); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.s.jr.Stats(); st.TailLSN <= 1 {
		t.Fatalf("journal never released: %+v", st)
	}
	last := total - 16
	want := make([]byte, 16*4096)
	for b := 8; b < 16; b++ {
		copy(want[b*4096:], pattern(4096, byte(last+b)))
	}
	c.crash(t)
	if got := readBlocks(t, c.s, vol, 0, 16); !bytes.Equal(got, want) {
		t.Fatal("blocks differ after the journal wrapped and the node crashed")
	}
}

func TestJournalEntryRoundTrip(t *testing.T) {
	rec := &ballastpb.LogRecord{Seq: 4, Blocks: []*ballastpb.BlockWrite{
		{Block: 1, Data: pattern(4096, 1)}, {Block: 2}, {Block: 3, Data: pattern(4096, 3)},
	}, State: &ballastpb.StateRecord{Blocks: []*ballastpb.BlockState{{Block: 9, Version: 2, Data: pattern(4096, 9)}, {Block: 10, Indexed: true, SegmentId: 4}}}}
	e, err := journalEntry(11, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Blocks) != 3 || !bytes.Equal(e.Blocks[2], pattern(4096, 9)) {
		t.Fatalf("entry carries %d blocks", len(e.Blocks))
	}
	if len(rec.Blocks[0].Data) != 4096 {
		t.Fatal("journalEntry changed the record")
	}
	kind, vol, body, err := decodeMeta(e.Meta)
	if err != nil || kind != metaRecord || vol != 11 {
		t.Fatalf("meta: %d %d %v", kind, vol, err)
	}
	if _, err := journaledRecord(body, make([]journal.Location, 2)); err == nil {
		t.Fatal("a record naming 3 blocks decoded with 2 locations")
	}
	got, err := journaledRecord(body, make([]journal.Location, 3))
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 4 || len(got.Blocks) != 3 || len(got.Blocks[1].Data) != 0 || !isPlaceholder(got.Blocks[2].Data) {
		t.Fatalf("decoded %v", got)
	}
	for _, bad := range [][]byte{nil, {2, 1}, {metaVersion}, []byte(fmt.Sprint("x"))} {
		if _, _, _, err := decodeMeta(bad); err == nil {
			t.Errorf("decodeMeta(%x) took it", bad)
		}
	}
}

// FuzzJournaledEntry feeds the decoders of a journal entry's metadata
// (what replay reads from disk) arbitrary bytes: an error, never a panic,
// and a record that decodes names exactly the data its locations cover.
func FuzzJournaledEntry(f *testing.F) {
	rec := &ballastpb.LogRecord{Seq: 3, Blocks: []*ballastpb.BlockWrite{{Block: 1, Data: pattern(4096, 1)}, {Block: 2}},
		Removed: []*ballastpb.BlockRange{{First: 5, Count: 2}}}
	e, err := journalEntry(4, rec)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(e.Meta, 1)
	f.Add(encodeMeta(metaDrop, 9, nil), 0)
	f.Add(encodeMeta(metaRecordPart, 9, []byte{0, 0, 0, 0, 0, 0, 0, 7}), 2)
	f.Add([]byte{metaVersion, metaRecord}, 0)
	f.Fuzz(func(t *testing.T, meta []byte, blocks int) {
		kind, _, body, err := decodeMeta(meta)
		if err != nil || kind != metaRecord {
			return
		}
		if blocks < 0 || blocks > 64 {
			return
		}
		r, err := journaledRecord(body, make([]journal.Location, blocks))
		if err != nil {
			return
		}
		if n := dataCount(r); n != blocks {
			t.Fatalf("record names %d blocks of data, took %d locations", n, blocks)
		}
	})
}

// A store written before the journal keeps block data in its 'B' values:
// it is refused at open, with a message that says so.
func TestStoreOfThePreviousFormatIsRefused(t *testing.T) {
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	old := append(make([]byte, versionBytes), pattern(4096, 1)...)
	if err := s.db.Set(blockKey(1, 0), old, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open("db", Options{FS: fs}); err == nil || !strings.Contains(err.Error(), "before the journal") {
		t.Fatalf("opening a store of the previous format: %v", err)
	}
}

// TestAppendsInFlight: a replica streams batches: the next begins (goes
// to the journal) before the last one finished; they finish in order.
// Once one fails, the appends begun after it fail and apply nothing.
func TestAppendsInFlight(t *testing.T) {
	s := openMemStore(t)
	const vol = 3
	begin := func(recs ...*ballastpb.LogRecord) *PendingAppend {
		t.Helper()
		pa, err := s.BeginAppend(vol, recs, 0)
		if err != nil {
			t.Fatal(err)
		}
		return pa
	}
	a := begin(blockRecord(1, 10, 1), blockRecord(2, 11, 2))
	b := begin(blockRecord(3, 10, 3))
	if _, err := s.BeginAppend(vol, []*ballastpb.LogRecord{blockRecord(5, 12, 5)}, 0); !errors.Is(err, ErrSeqGap) {
		t.Fatalf("a batch that skips a seq begun: %v", err)
	}
	c := begin(blockRecord(4, 12, 4))
	for _, pa := range []*PendingAppend{a, b, c} {
		if err := pa.Finish(); err != nil {
			t.Fatal(err)
		}
	}
	if last, _ := s.LastSeq(vol); last != 4 {
		t.Fatalf("last seq %d after three batches through 4", last)
	}
	if got := readBlocks(t, s, vol, 10, 3); !bytes.Equal(got, slices.Concat(pattern(blockSize, 3), pattern(blockSize, 2), pattern(blockSize, 4))) {
		t.Fatal("blocks 10-12 are not the last data written")
	}

	// A failure (as a Finish that fails) drops what was begun after it.
	d := begin(blockRecord(5, 10, 5))
	e := begin(blockRecord(6, 11, 6))
	if err := s.voidAppends(vol); err != nil {
		t.Fatal(err)
	}
	if err := d.Finish(); !errors.Is(err, ErrSeqGap) {
		t.Fatalf("finish of an append begun before a failure: %v", err)
	}
	if err := e.Finish(); !errors.Is(err, ErrSeqGap) {
		t.Fatalf("finish of the append after it: %v", err)
	}
	if last, _ := s.LastSeq(vol); last != 4 {
		t.Fatalf("last seq %d after failed appends", last)
	}
	// The next begins after the last seq applied.
	if err := s.Append(vol, []*ballastpb.LogRecord{blockRecord(5, 10, 7)}, 0); err != nil {
		t.Fatal(err)
	}
	if got := readBlocks(t, s, vol, 10, 2); !bytes.Equal(got, slices.Concat(pattern(blockSize, 7), pattern(blockSize, 2))) {
		t.Fatal("blocks 10-11 after the failed appends")
	}
	checkStoreInvariants(t, s, vol)
}

// TestVoidedAppendsStayVoidAfterACrash: records that reached the journal
// in appends that failed must not come back at the replay in place of the
// records a later append wrote at the same seqs (another primary's, say).
func TestVoidedAppendsStayVoidAfterACrash(t *testing.T) {
	c := openCrashable(t, Options{})
	const vol = 3
	for seq := uint64(1); seq <= 4; seq++ {
		if err := c.s.Append(vol, []*ballastpb.LogRecord{blockRecord(seq, seq, 1)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	var failed []*PendingAppend
	for seq := uint64(5); seq <= 6; seq++ {
		pa, err := c.s.BeginAppend(vol, []*ballastpb.LogRecord{blockRecord(seq, 10, byte(seq))}, 0)
		if err != nil {
			t.Fatal(err)
		}
		failed = append(failed, pa)
	}
	// As when the first of them fails to apply.
	if err := c.s.voidAppends(vol); err != nil {
		t.Fatal(err)
	}
	for _, pa := range failed {
		if err := pa.Finish(); !errors.Is(err, ErrSeqGap) {
			t.Fatalf("finish of a voided append: %v", err)
		}
	}
	if err := c.s.Append(vol, []*ballastpb.LogRecord{blockRecord(5, 10, 7)}, 0); err != nil {
		t.Fatal(err)
	}
	c.crash(t)
	if last, _ := c.s.LastSeq(vol); last != 5 {
		t.Fatalf("last seq after the crash: %d, want 5", last)
	}
	if got := readBlocks(t, c.s, vol, 10, 1); !bytes.Equal(got, pattern(blockSize, 7)) {
		t.Fatal("block 10 after the crash is not what the acknowledged append wrote")
	}
	checkStoreInvariants(t, c.s, vol)
}

// A head node's journal size defaults to a share of the free space, which
// moves between starts: an existing journal keeps its own size.
func TestJournalKeepsItsSizeAcrossOptions(t *testing.T) {
	c := openCrashable(t, Options{JournalBytes: 2 << 20})
	const vol = 3
	if err := c.s.Append(vol, []*ballastpb.LogRecord{blockRecord(1, 5, 1)}, 0); err != nil {
		t.Fatal(err)
	}
	c.s.Close()
	c.o.JournalBytes = 8 << 20
	c.reopen(t)
	if st := c.s.jr.Stats(); st.TotalBytes > 2<<20 {
		t.Fatalf("the journal grew to %d bytes", st.TotalBytes)
	}
	if err := c.s.Append(vol, []*ballastpb.LogRecord{blockRecord(2, 6, 2)}, 0); err != nil {
		t.Fatal(err)
	}
	if got := readBlocks(t, c.s, vol, 5, 2); !bytes.Equal(got, slices.Concat(pattern(blockSize, 1), pattern(blockSize, 2))) {
		t.Fatal("blocks after the reopen")
	}
}
