package ec

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestSegmentEncodeAndReconstruct(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{1, 3, 4, 5, 64, 1023} {
		blocks := make([][]byte, n)
		for i := range blocks {
			blocks[i] = make([]byte, BlockSize)
			rng.Read(blocks[i])
		}
		shards, size, err := Encode(blocks, 4, 2)
		if err != nil {
			t.Fatal(err)
		}
		seg := &ballastpb.Segment{Id: 1, DataShards: 4, ParityShards: 2, ShardSizeBytes: size, Blocks: uint32(n), ShardSleds: make([]string, 6)}
		if size%BlockSize != 0 || size*4 < uint64(n)*BlockSize || size*4 >= uint64(n)*BlockSize+4*BlockSize {
			t.Fatalf("%d blocks: shard size %d", n, size)
		}
		for slot := range n {
			shard, off := SlotLocation(seg, uint32(slot))
			if !bytes.Equal(shards[shard][off:off+BlockSize], blocks[slot]) {
				t.Fatalf("%d blocks: slot %d is not at shard %d offset %d", n, slot, shard, off)
			}
		}
		// Lose any two shards: every shard comes back, over any range.
		for a := range 6 {
			for b := a + 1; b < 6; b++ {
				off := uint64(rng.Intn(int(size/BlockSize))) * BlockSize
				length := size - off
				pieces := make([][]byte, 6)
				for i := range pieces {
					if i != a && i != b {
						pieces[i] = shards[i][off : off+length]
					}
				}
				for _, want := range []int{a, b} {
					got, err := ReconstructRange(seg, pieces, want)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, shards[want][off:off+length]) {
						t.Fatalf("shard %d rebuilt wrong without %d and %d", want, a, b)
					}
				}
			}
		}
		// Three lost is too many.
		pieces := slices.Clone(shards)
		pieces[0], pieces[1], pieces[5] = nil, nil, nil
		if _, err := ReconstructRange(seg, pieces, 0); !errors.Is(err, ErrSegmentLost) {
			t.Fatalf("three shards lost: %v, want ErrSegmentLost", err)
		}
	}
}

func TestPlaceShards(t *testing.T) {
	var sleds []Sled
	for i := range 7 {
		sleds = append(sleds, Sled{ID: fmt.Sprintf("s%d", i), Usable: true, UsedBytes: uint64(i) * 10, CapBytes: 1000})
	}
	sleds[3].Usable = false
	got, err := PlaceShards(sleds, 6, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(got, "s3") {
		t.Fatalf("placed on an unusable sled: %v", got)
	}
	if _, err := PlaceShards(sleds, 6, []string{"s0"}, 1); !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("5 usable sleds for 6 shards: %v, want ErrNoPlacement", err)
	}
	// The least full come first; equally full ones are spread by segment.
	sleds[6].UsedBytes = 900
	got, _ = PlaceShards(sleds, 5, nil, 1)
	if slices.Contains(got, "s6") {
		t.Fatalf("the fullest sled was chosen over emptier ones: %v", got)
	}
	first := map[string]int{}
	for i := range sleds {
		sleds[i].UsedBytes = 0
	}
	for seg := range uint64(60) {
		got, _ := PlaceShards(sleds, 3, nil, seg)
		first[got[0]]++
		seen := map[string]bool{}
		for _, s := range got {
			if seen[s] {
				t.Fatalf("two shards on sled %s: %v", s, got)
			}
			seen[s] = true
		}
	}
	if len(first) < 4 {
		t.Fatalf("segments all start on few sleds: %v", first)
	}
}

func TestPlanCompaction(t *testing.T) {
	seg := func(id uint64, live, blocks uint32) *ballastpb.Segment {
		return &ballastpb.Segment{Id: id, LiveBlocks: live, Blocks: blocks}
	}
	plans := PlanCompaction([]*ballastpb.Segment{
		seg(1, 100, 100), // full
		seg(2, 10, 100),  // sparse
		seg(3, 0, 100),   // empty: freed, not compacted
		seg(4, 40, 100),  // sparse
		seg(5, 60, 100),  // over the threshold
		seg(6, 30, 100),  // sparse
	}, 0.5, 64)
	// Emptiest first: 2 (10), 6 (30) fill 40; 4 (40) would overflow 64.
	if len(plans) != 2 || !slices.Equal(plans[0].Sources, []uint64{2, 6}) || !slices.Equal(plans[1].Sources, []uint64{4}) {
		t.Fatalf("plans: %+v", plans)
	}
	// A lone sparse segment is rewritten: that frees its dead slots. A
	// lone small full one is not; two small ones are merged.
	if plans := PlanCompaction([]*ballastpb.Segment{seg(1, 40, 100)}, 0.5, 64); len(plans) != 1 {
		t.Fatalf("lone sparse segment: %+v", plans)
	}
	if plans := PlanCompaction([]*ballastpb.Segment{seg(1, 10, 10)}, 0.5, 64); len(plans) != 0 {
		t.Fatalf("lone small full segment compacted: %+v", plans)
	}
	if plans := PlanCompaction([]*ballastpb.Segment{seg(1, 10, 10), seg(2, 5, 5), seg(3, 64, 64)}, 0.5, 64); len(plans) != 1 || !slices.Equal(plans[0].Sources, []uint64{1, 2}) {
		t.Fatalf("small segments not merged: %+v", plans)
	}
}

func TestNextSegmentID(t *testing.T) {
	for _, c := range []struct {
		epoch, recorded, handedOut, want uint64
		fails                            bool
	}{
		{epoch: 1, want: 1 << EpochShift},
		{epoch: 1, recorded: 1<<EpochShift + 5, want: 1<<EpochShift + 5},
		{epoch: 1, recorded: 1<<EpochShift + 5, handedOut: 1<<EpochShift + 9, want: 1<<EpochShift + 9},
		{epoch: 3, recorded: 1<<EpochShift + 5, want: 3 << EpochShift}, // a newer epoch starts afresh
		{epoch: 1, recorded: 2 << EpochShift, fails: true},             // a newer primary recorded segments
		{epoch: 1, handedOut: 2 << EpochShift, fails: true},            // this primary used up the ids of epoch 1
		{epoch: 1 << (64 - EpochShift), fails: true},                   // epoch too large
		{epoch: 0, recorded: 7, want: 7},                               // ids before the scheme
	} {
		got, err := NextSegmentID(c.epoch, c.recorded, c.handedOut)
		if c.fails {
			if err == nil {
				t.Errorf("NextSegmentID(%d, %d, %d) = %d, want an error", c.epoch, c.recorded, c.handedOut, got)
			}
			continue
		}
		if err != nil || got != c.want || SegmentEpoch(got) != c.epoch {
			t.Errorf("NextSegmentID(%d, %d, %d) = %d, %v; want %d", c.epoch, c.recorded, c.handedOut, got, err, c.want)
		}
	}
}

func TestHealthOf(t *testing.T) {
	seg := &ballastpb.Segment{DataShards: 4, ParityShards: 2, ShardSleds: []string{"a", "b", "c", "d", "e", "f"}}
	down := map[string]bool{}
	up := func(s string) bool { return !down[s] }
	if h, missing := HealthOf(seg, up); h != Full || missing != nil {
		t.Fatalf("all up: %v %v", h, missing)
	}
	down["b"], down["f"] = true, true
	if h, missing := HealthOf(seg, up); h != Degraded || !slices.Equal(missing, []int{1, 5}) {
		t.Fatalf("two down: %v %v", h, missing)
	}
	down["a"] = true
	if h, missing := HealthOf(seg, up); h != Lost || !slices.Equal(missing, []int{0, 1, 5}) {
		t.Fatalf("three down: %v %v", h, missing)
	}
}
