package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode/journal/crashfs"
)

// memFS adapts a crashfs.FS to the journal's FS.
type memFS struct{ *crashfs.FS }

func (m memFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := m.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func newMemFS(seed uint64) memFS { return memFS{crashfs.New(seed)} }

const testPath = "/j/journal"

// smallOpts is a journal of zones 64 KiB with batches of at most 16 KiB.
func smallOpts(fs FS, zones int) Options {
	return Options{
		SizeBytes:     superblockArea + int64(zones)*64<<10,
		ZoneBytes:     64 << 10,
		MaxBatchBytes: 16 << 10,
		FS:            fs,
	}
}

// blockData is the content of test block id: its id in every 8 bytes,
// mixed with the position, so that no two blocks and no two positions
// agree.
func blockData(id uint64) []byte {
	b := make([]byte, BlockSize)
	for i := 0; i < BlockSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], id*0x9e3779b97f4a7c15^uint64(i))
	}
	return b
}

// replayed is what a replay callback saw.
type replayed struct {
	lsn  uint64
	meta []byte
	data [][]byte
	locs []Location
}

func (r replayed) String() string {
	return fmt.Sprintf("lsn %d meta %q blocks %d", r.lsn, r.meta, len(r.data))
}

// collect returns a replay callback that records copies of what it sees.
func collect(into *[]replayed) func(uint64, Entry, []Location) error {
	return func(lsn uint64, e Entry, locs []Location) error {
		r := replayed{lsn: lsn, meta: bytes.Clone(e.Meta), locs: append([]Location(nil), locs...)}
		for _, b := range e.Blocks {
			r.data = append(r.data, bytes.Clone(b))
		}
		*into = append(*into, r)
		return nil
	}
}

func mustOpen(t testing.TB, opts Options) (*Journal, []replayed) {
	t.Helper()
	var got []replayed
	j, err := Open(testPath, opts, collect(&got))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return j, got
}

// appendWait appends entries and waits for their commit.
func appendWait(t testing.TB, j *Journal, entries ...Entry) (*Commit, [][]Location) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, locs, err := j.Append(ctx, entries)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatalf("commit %d: %v", c.LSN(), err)
	}
	return c, locs
}

// entryOf is an entry with metadata meta and blocks of the given ids.
func entryOf(meta string, ids ...uint64) Entry {
	e := Entry{Meta: []byte(meta)}
	for _, id := range ids {
		e.Blocks = append(e.Blocks, blockData(id))
	}
	return e
}

func checkRead(t testing.TB, j *Journal, loc Location, want []byte) {
	t.Helper()
	buf := make([]byte, BlockSize)
	if err := j.ReadBlock(loc, buf); err != nil {
		t.Fatalf("ReadBlock(%+v): %v", loc, err)
	}
	if !bytes.Equal(buf, want) {
		t.Fatalf("ReadBlock(%+v) returned other data", loc)
	}
}
