package blockstore

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// TestAllocationMergesJournalAndIndex: blocks with data in the journal,
// in a segment, or in both are data; never written, removed and
// superseded-by-removal blocks are holes.
func TestAllocationMergesJournalAndIndex(t *testing.T) {
	s := openMemStore(t)
	const vol = 3
	seg := &ballastpb.Segment{Id: 1, DataShards: 1, ShardSizeBytes: 2 * blockSize, Blocks: 2, ShardSleds: []string{"s1"}}
	records := []*ballastpb.LogRecord{
		blockRecord(1, 2, 1),
		blockRecord(2, 3, 2),
		blockRecord(3, 10, 3),
		{Seq: 4, Flush: &ballastpb.FlushRecord{Segment: seg, SlotBlocks: []uint64{2, 3}, Versions: []uint64{1, 2}}},
		blockRecord(5, 3, 4), // in the journal and in the segment
		blockRecord(6, 20, 5),
		{Seq: 7, Removed: []*ballastpb.BlockRange{{First: 20, Count: 1}}},
		blockRecord(8, 100, 6),
		blockRecord(9, 101, 7),
		blockRecord(10, 150, 8),
		{Seq: 11, Blocks: []*ballastpb.BlockWrite{{Block: 150}}}, // removed alone
	}
	if err := s.Append(vol, records, 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.Allocation(vol, 0, 200)
	if err != nil {
		t.Fatal(err)
	}
	want := []AllocRun{{2, true}, {2, false}, {6, true}, {1, false}, {89, true}, {2, false}, {98, true}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("allocation of [0, 200):\n got %v\nwant %v", got, want)
	}
	if used, inJournal, err := s.Usage(vol, 1<<20); err != nil || used != 5 || inJournal != 4 {
		t.Fatalf("usage: %d blocks used, %d in the journal (%v); want 5 and 4", used, inJournal, err)
	}
	// A range that starts inside data, and one in another volume.
	if got, _ := s.Allocation(vol, 3, 2); !reflect.DeepEqual(got, []AllocRun{{1, false}, {1, true}}) {
		t.Fatalf("allocation of [3, 5): %v", got)
	}
	if got, _ := s.Allocation(vol+1, 0, 1<<30); !reflect.DeepEqual(got, []AllocRun{{1 << 30, true}}) {
		t.Fatalf("allocation of an empty volume: %v", got)
	}
	if _, err := s.Allocation(vol, 1<<63, 1<<63); err == nil {
		t.Fatal("an overflowing range was described")
	}
}

// TestAllocationStopsAfterItsScanBound: past maxAllocationScan allocated
// blocks the description stops early, ending exactly where it knows.
func TestAllocationStopsAfterItsScanBound(t *testing.T) {
	defer func(n int) { maxAllocationScan = n }(maxAllocationScan)
	maxAllocationScan = 300
	s := openMemStore(t)
	const vol = 1
	data := pattern(blockSize, 1)
	var recs []*ballastpb.LogRecord
	seq := uint64(0)
	// Every other block, so each is a run of its own: maxAllocationScan+2 of them.
	for b := uint64(0); b < 2*uint64(maxAllocationScan+2); b += 2 {
		seq++
		recs = append(recs, &ballastpb.LogRecord{Seq: seq, Blocks: []*ballastpb.BlockWrite{{Block: b, Data: data}}})
		if len(recs) == 100 {
			if err := s.Append(vol, recs, 0); err != nil {
				t.Fatal(err)
			}
			recs = nil
		}
	}
	if err := s.Append(vol, recs, 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.Allocation(vol, 0, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	var total, inData uint64
	for _, r := range got {
		total += r.Blocks
		if !r.Hole {
			inData += r.Blocks
		}
	}
	if inData != uint64(maxAllocationScan) || total != 2*uint64(maxAllocationScan)-1 || got[len(got)-1].Hole {
		t.Fatalf("bounded description: %d runs, %d blocks, %d of data; last %v", len(got), total, inData, got[len(got)-1])
	}
}

// TestBlockHookFollowsCommits: the hook sees each committed write's data,
// removals as ranges, segment writes without data, and a dropped volume
// as all of it.
func TestBlockHookFollowsCommits(t *testing.T) {
	s := openMemStore(t)
	const vol = 2
	var got []string
	s.SetBlockHook(func(v uint64, changes []BlockChange) {
		for _, c := range changes {
			got = append(got, fmt.Sprintf("v%d %d+%d data=%v", v, c.First, c.Count, len(c.Data) == blockSize && c.Data[0] == pattern(blockSize, 9)[0]))
		}
	})
	seg := &ballastpb.Segment{Id: 1, DataShards: 1, ShardSizeBytes: blockSize, Blocks: 1, ShardSleds: []string{"s1"}}
	if err := s.Append(vol, []*ballastpb.LogRecord{
		blockRecord(1, 5, 9),
		{Seq: 2, Removed: []*ballastpb.BlockRange{{First: 7, Count: 3}}},
		{Seq: 3, SegmentWrite: &ballastpb.SegmentWriteRecord{Segment: seg, SlotBlocks: []uint64{8}}},
	}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DropVolume(vol); err != nil {
		t.Fatal(err)
	}
	want := []string{"v2 5+1 data=true", "v2 7+3 data=false", "v2 8+1 data=false", fmt.Sprintf("v2 0+%d data=false", uint64(AllBlocks))}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("hook saw\n%q\nwant\n%q", got, want)
	}
}
