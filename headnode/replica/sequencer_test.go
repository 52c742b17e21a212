package replica

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// store is a volume as the store holds it, for the read-modify-writes.
type store map[uint64][]byte

func (s store) read(b uint64) ([]byte, error) {
	out := make([]byte, BlockSize)
	copy(out, s[b])
	return out, nil
}

func fill(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }

// base returns what the next read-modify-write of b starts from.
func base(t *testing.T, s *Sequencer, st store, b uint64) []byte {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out, err := s.baseLocked(b, st.read)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPartialWriteStartsFromTheWriteOrderedBefore(t *testing.T) {
	st := store{1: fill(BlockSize, 's')}
	s := NewSequencer()
	// Two blocks of 'a', not yet durable.
	first, err := s.Sequence(Write{Off: 0, Length: 2 * BlockSize, Data: fill(2*BlockSize, 'a')}, 1, st.read)
	if err != nil {
		t.Fatal(err)
	}
	// 100 bytes of 'b' in the middle of block 1: the rest of the block is
	// the first write's, not the store's.
	second, err := s.Sequence(Write{Off: BlockSize + 10, Length: 100, Data: fill(100, 'b')}, 1, st.read)
	if err != nil {
		t.Fatal(err)
	}
	if second.Ticket != first.Ticket+1 {
		t.Fatalf("tickets %d then %d", first.Ticket, second.Ticket)
	}
	got := second.Record.Blocks
	if len(got) != 1 || got[0].Block != 1 {
		t.Fatalf("second record's blocks: %v", got)
	}
	want := fill(BlockSize, 'a')
	copy(want[10:110], fill(100, 'b'))
	if !bytes.Equal(got[0].Data, want) {
		t.Fatal("the partial write did not start from the write ordered before it")
	}
	// The first batch lands: block 1's entry is the second write's and
	// stays; block 0's goes, and reads start from the store again.
	batch := s.Take(1<<20, 16, true)
	if len(batch) != 2 {
		t.Fatalf("took %d records, want 2", len(batch))
	}
	s.Release(batch[:1])
	if !bytes.Equal(base(t, s, st, 1), want) {
		t.Fatal("releasing the first write dropped the second's overlay entry")
	}
	st[0] = fill(BlockSize, 'a')
	if !bytes.Equal(base(t, s, st, 0), st[0]) {
		t.Fatal("block 0 is not read from the store once its write is released")
	}
	s.Release(batch[1:])
	if len(s.overlay) != 0 {
		t.Fatalf("overlay keeps %d entries after every record was released", len(s.overlay))
	}
}

func TestRemovedBlocksCoalesceAndReadAsZeroes(t *testing.T) {
	st := store{3: fill(BlockSize, 's'), 4: fill(BlockSize, 's')}
	s := NewSequencer()
	trim, err := s.Sequence(Write{Off: 2 * BlockSize, Length: 4 * BlockSize, Zero: true, Removable: true}, 1, st.read)
	if err != nil {
		t.Fatal(err)
	}
	if r := trim.Record.Removed; len(r) != 1 || r[0].First != 2 || r[0].Count != 4 || len(trim.Record.Blocks) != 0 {
		t.Fatalf("trim's record: removed %v, blocks %d", r, len(trim.Record.Blocks))
	}
	if !bytes.Equal(base(t, s, st, 3), make([]byte, BlockSize)) {
		t.Fatal("a trimmed block does not read as zeroes for the next read-modify-write")
	}
	// Write-zeroes that must not become a hole writes zero blocks; a
	// partial one clears only its range.
	wz, err := s.Sequence(Write{Off: 10, Length: BlockSize + 20, Zero: true}, 1, st.read)
	if err != nil {
		t.Fatal(err)
	}
	if len(wz.Record.Blocks) != 2 || len(wz.Record.Removed) != 0 {
		t.Fatalf("write-zeroes record: %d blocks, %d ranges", len(wz.Record.Blocks), len(wz.Record.Removed))
	}
}

func TestFailedBaseReadOrdersNothing(t *testing.T) {
	s := NewSequencer()
	broken := errors.New("sleds unreachable")
	failing := func(uint64) ([]byte, error) { return nil, broken }
	// Block 0 whole, block 1 partial: the base read of block 1 fails.
	_, err := s.Sequence(Write{Off: 0, Length: BlockSize + 1, Data: fill(BlockSize+1, 'x')}, 1, failing)
	if !errors.Is(err, broken) {
		t.Fatalf("err = %v, want the base read's", err)
	}
	if len(s.overlay) != 0 || len(s.queue) != 0 {
		t.Fatalf("a write that was never queued left %d overlay entries, %d queued", len(s.overlay), len(s.queue))
	}
	pw, err := s.Sequence(Write{Off: 0, Length: BlockSize, Data: fill(BlockSize, 'y')}, 1, failing)
	if err != nil || pw.Ticket != 0 {
		t.Fatalf("next write: ticket %v, err %v", pw, err)
	}
}

func TestRefusedRecordLeavesTheOverlayAsItWas(t *testing.T) {
	st := store{}
	s := NewSequencer()
	if _, err := s.Sequence(Write{Off: 0, Length: BlockSize, Data: fill(BlockSize, 'a')}, 1, st.read); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("secondary cannot apply it")
	_, err := s.Queue(&ballastpb.LogRecord{}, 1, func(hold func(uint64, []byte)) error {
		hold(0, fill(BlockSize, 'z'))
		hold(7, fill(BlockSize, 'z'))
		return refused
	})
	if !errors.Is(err, refused) {
		t.Fatalf("err = %v", err)
	}
	if !bytes.Equal(base(t, s, st, 0), fill(BlockSize, 'a')) {
		t.Fatal("a refused record's hold replaced the queued write's overlay entry")
	}
	if _, ok := s.overlay[7]; ok {
		t.Fatal("a refused record's hold stayed in the overlay")
	}
	// Admitted: its holds stand until it is released.
	pw, err := s.Queue(&ballastpb.LogRecord{SegmentWrite: &ballastpb.SegmentWriteRecord{SlotBlocks: []uint64{7}}}, 1,
		func(hold func(uint64, []byte)) error { hold(7, fill(BlockSize, 'z')); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(base(t, s, st, 7), fill(BlockSize, 'z')) {
		t.Fatal("an admitted record's hold is not in the overlay")
	}
	s.Release([]*Pending{pw})
	if _, ok := s.overlay[7]; ok {
		t.Fatal("a released segment write's block stayed in the overlay")
	}
}

func TestTakeBoundsABatch(t *testing.T) {
	s := NewSequencer()
	for _, cost := range []int64{10, 10, 100, 10} {
		if _, err := s.Queue(&ballastpb.LogRecord{}, cost, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Take(25, 16, false); len(got) != 2 {
		t.Fatalf("took %d records within 25 bytes, want 2", len(got))
	}
	if got := s.Take(25, 16, false); len(got) != 0 {
		t.Fatalf("took %d records larger than the limit with others in flight", len(got))
	}
	if got := s.Take(25, 16, true); len(got) != 1 || got[0].Bytes != 100 {
		t.Fatalf("first batch: %d records, want the large one alone", len(got))
	}
	if got := s.Take(1000, 0, true); len(got) != 0 {
		t.Fatalf("took %d records with a bound of none", len(got))
	}
	if got := s.Take(1000, 16, false); len(got) != 1 || got[0].Ticket != 3 {
		t.Fatalf("last batch: %v", got)
	}
}

func TestStopRefusesAndDrains(t *testing.T) {
	s := NewSequencer()
	if _, err := s.Queue(&ballastpb.LogRecord{}, 1, nil); err != nil {
		t.Fatal(err)
	}
	if !s.Stop() || s.Stop() {
		t.Fatal("Stop reports the first call, and only it")
	}
	if _, err := s.Sequence(Write{Off: 0, Length: BlockSize, Data: fill(BlockSize, 'a')}, 1, store{}.read); !errors.Is(err, ErrStopped) {
		t.Fatalf("write after stop: %v", err)
	}
	if _, err := s.Queue(&ballastpb.LogRecord{}, 1, nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("record after stop: %v", err)
	}
	if q := s.Drain(); len(q) != 1 {
		t.Fatalf("drained %d records, want 1", len(q))
	}
}
