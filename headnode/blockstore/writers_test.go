package blockstore

import (
	"maps"
	"slices"
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestWriterStateForgetsWhatTheClientWillNotResend(t *testing.T) {
	ws := &ballastpb.WriterState{Client: 9}
	for op := uint64(1); op <= 5; op++ {
		noteApplied(ws, &ballastpb.WriteTag{Client: 9, Op: op, Oldest: 1, FirstBlock: op, Blocks: 1}, 10+op)
	}
	// Op 3 answered late: the client's oldest without an answer is 3.
	noteApplied(ws, &ballastpb.WriteTag{Client: 9, Op: 6, Oldest: 3, FirstBlock: 6, Blocks: 1}, 20)
	var ops []uint64
	for _, a := range ws.Ops {
		ops = append(ops, a.Op)
	}
	if !slices.Equal(ops, []uint64{3, 4, 5, 6}) || ws.LastSeq != 20 {
		t.Fatalf("ops %v, last seq %d", ops, ws.LastSeq)
	}
	// A request that reached the primary late, with an older oldest,
	// brings nothing back.
	noteApplied(ws, &ballastpb.WriteTag{Client: 9, Op: 7, Oldest: 2, FirstBlock: 7, Blocks: 1}, 21)
	if ws.Oldest != 3 || ws.Ops[0].Op != 3 {
		t.Fatalf("oldest %d, first op %d", ws.Oldest, ws.Ops[0].Op)
	}
	// What the table holds of op 4 (headnode's appliedSpans reads it so:
	// block 4, at seq 14).
	var op4 []*ballastpb.AppliedWrite
	for _, a := range ws.Ops {
		if a.Op == 4 {
			op4 = append(op4, a)
		}
	}
	if len(op4) != 1 || op4[0].FirstBlock != 4 || op4[0].Blocks != 1 || op4[0].Seq != 14 {
		t.Fatalf("op 4: %v", op4)
	}
	// A client that never lets go of an old op is bounded all the same.
	for op := uint64(8); op < 8+2*maxOpsPerWriter; op++ {
		noteApplied(ws, &ballastpb.WriteTag{Client: 9, Op: op, Oldest: 3, FirstBlock: 0, Blocks: 1}, 100+op)
	}
	if len(ws.Ops) != maxOpsPerWriter {
		t.Fatalf("%d ops kept", len(ws.Ops))
	}
}

// TestJournalKeepsWriteTags: the journal's copy of a record, which the
// replay applies after a crash, carries its tags.
func TestJournalKeepsWriteTags(t *testing.T) {
	rec := &ballastpb.LogRecord{Seq: 3, Blocks: []*ballastpb.BlockWrite{{Block: 1, Data: pattern(blockSize, 1)}},
		Writes: []*ballastpb.WriteTag{{Client: 4, Op: 2, Oldest: 1, FirstBlock: 1, Blocks: 1}}}
	e, err := journalEntry(7, rec)
	if err != nil {
		t.Fatal(err)
	}
	_, _, body, err := decodeMeta(e.Meta)
	if err != nil {
		t.Fatal(err)
	}
	back, err := journaledRecord(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Writes) != 1 || back.Writes[0].Client != 4 || back.Writes[0].Op != 2 {
		t.Fatalf("journaled record's tags: %v", back.Writes)
	}
}

// TestWriterStatesDoNotDependOnBatching: every replica must hold the same
// clients' states after the same records, however they were grouped into
// batches (the primary's batches, a secondary's catch-up, a replay), also
// when the volume has more clients than it keeps and forgets some.
func TestWriterStatesDoNotDependOnBatching(t *testing.T) {
	const vol = 7
	defer func(n int) { maxWritersPerVolume = n }(maxWritersPerVolume)
	maxWritersPerVolume = 64
	var records []*ballastpb.LogRecord
	newest := uint64(3)
	for i := uint64(0); newest < uint64(maxWritersPerVolume)+100; i++ {
		// Clients come back (the same one several times in a batch) and
		// new ones arrive while the volume is full.
		client := 1 + i%3
		if i%5 != 0 {
			newest++
			client = newest
		}
		op := 1 + i
		records = append(records, &ballastpb.LogRecord{Seq: i + 1,
			Blocks: []*ballastpb.BlockWrite{{Block: i % 64, Data: pattern(blockSize, byte(i))}},
			Writes: []*ballastpb.WriteTag{{Client: client, Op: op, Oldest: op - min(op-1, 3), FirstBlock: i % 64, Blocks: 1}}})
	}
	states := func(batch int) map[uint64]string {
		s := openMemStore(t)
		for i := 0; i < len(records); i += batch {
			if err := s.Append(vol, records[i:min(i+batch, len(records))], 0); err != nil {
				t.Fatal(err)
			}
		}
		return writerTables(t, s, vol)
	}
	one, many := states(1), states(29)
	if len(one) != maxWritersPerVolume {
		t.Fatalf("%d clients kept, want %d", len(one), maxWritersPerVolume)
	}
	if !maps.Equal(one, many) {
		diff := 0
		for c, v := range one {
			if many[c] != v {
				diff++
			}
		}
		t.Fatalf("clients' states differ between batches of 1 and of 29 records: %d of %d (and %d kept against %d)", diff, len(one), len(many), len(one))
	}
}
