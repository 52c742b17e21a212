package ec

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"sync"

	"github.com/klauspost/reedsolomon"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BlockSize is the size of a volume block and of a segment slot.
const BlockSize = 4096

// Layout of a segment: the data of slot i is bytes [i*BlockSize,
// (i+1)*BlockSize) of the segment's data, which is padded to k*shardSize
// and cut into k data shards; the m parity shards follow. shardSize is a
// multiple of the block size, so a block never straddles two shards.

// Segment ids: the high 32 bits are the epoch of the primary that made
// the segment, the low 32 bits count the segments it made. A primary at a
// newer epoch therefore never names a segment as one of an older primary
// did, even one whose shards were written but never recorded, so a
// deposed primary's late or orphaned shards can neither collide with nor
// pass for the new primary's. Ids made before this scheme are below
// 1<<32 and read as epoch 0.
const EpochShift = 32

// segmentEpoch returns the epoch that made a segment.
func SegmentEpoch(id uint64) uint64 { return id >> EpochShift }

// NextSegmentID returns the id to give the next segment made at epoch,
// given the lowest id no record has used yet and the lowest this primary
// has not handed out.
func NextSegmentID(epoch, recorded, handedOut uint64) (uint64, error) {
	if epoch >= 1<<(64-EpochShift) {
		return 0, fmt.Errorf("epoch %d is too large for a segment id", epoch)
	}
	id := max(recorded, handedOut, epoch<<EpochShift)
	if made := SegmentEpoch(id); made != epoch {
		// A record names a segment of a newer epoch (this primary is
		// deposed), or this epoch used up its ids.
		return 0, fmt.Errorf("no segment id left at epoch %d: the next is %d, of epoch %d", epoch, id, made)
	}
	return id, nil
}

// shardSizeFor returns the shard size of a segment of n blocks over k data
// shards: the smallest multiple of the block size that holds them.
func shardSizeFor(n, k int) uint64 {
	perShard := (n + k - 1) / k
	return uint64(perShard) * BlockSize
}

// SlotLocation returns the data shard that holds a slot and the offset of
// the slot in it.
func SlotLocation(seg *ballastpb.Segment, slot uint32) (shard int, off uint64) {
	pos := uint64(slot) * BlockSize
	return int(pos / seg.ShardSizeBytes), pos % seg.ShardSizeBytes
}

// coders caches Reed-Solomon encoders by shape; they are safe for
// concurrent use.
var coders sync.Map // [2]int{k, m} -> reedsolomon.Encoder

func coderFor(k, m int) (reedsolomon.Encoder, error) {
	key := [2]int{k, m}
	if c, ok := coders.Load(key); ok {
		return c.(reedsolomon.Encoder), nil
	}
	c, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("erasure coder %d+%d: %w", k, m, err)
	}
	coders.Store(key, c)
	return c, nil
}

// Encode lays blocks out as a segment of k data and m parity
// shards and returns the shards and their size.
func Encode(blocks [][]byte, k, m int) ([][]byte, uint64, error) {
	if len(blocks) == 0 {
		return nil, 0, errors.New("encode segment: no blocks")
	}
	size := shardSizeFor(len(blocks), k)
	buf := make([]byte, size*uint64(k+m))
	for i, b := range blocks {
		if len(b) != BlockSize {
			return nil, 0, fmt.Errorf("encode segment: block %d has %d bytes", i, len(b))
		}
		copy(buf[i*BlockSize:], b)
	}
	shards := make([][]byte, k+m)
	for i := range shards {
		shards[i] = buf[uint64(i)*size : uint64(i+1)*size : uint64(i+1)*size]
	}
	c, err := coderFor(k, m)
	if err != nil {
		return nil, 0, err
	}
	if err := c.Encode(shards); err != nil {
		return nil, 0, fmt.Errorf("encode segment: %w", err)
	}
	return shards, size, nil
}

// ReconstructRange rebuilds bytes [off, off+length) of shard `want` from
// the same range of other shards. pieces[i] is that range of shard i, or
// nil where it could not be read; at least k must be present.
func ReconstructRange(seg *ballastpb.Segment, pieces [][]byte, want int) ([]byte, error) {
	k, m := int(seg.DataShards), int(seg.ParityShards)
	if len(pieces) != k+m {
		return nil, fmt.Errorf("reconstruct: %d pieces for %d+%d shards", len(pieces), k, m)
	}
	have := 0
	for _, p := range pieces {
		if p != nil {
			have++
		}
	}
	if have < k {
		return nil, fmt.Errorf("%w: segment %d has %d of the %d shards it needs", ErrSegmentLost, seg.Id, have, k)
	}
	c, err := coderFor(k, m)
	if err != nil {
		return nil, err
	}
	work := slices.Clone(pieces)
	if want < k {
		err = c.ReconstructData(work)
	} else {
		err = c.Reconstruct(work)
	}
	if err != nil {
		return nil, fmt.Errorf("reconstruct shard %d of segment %d: %w", want, seg.Id, err)
	}
	return work[want], nil
}

// ErrSegmentLost: more shards of a segment are unreadable than its parity
// can make up for.
var ErrSegmentLost = errors.New("segment lost")

// Sled is what placement knows of one sled.
type Sled struct {
	ID        string
	Usable    bool // up, reachable, not draining or removed
	UsedBytes uint64
	CapBytes  uint64
}

func (s Sled) fullness() float64 {
	if s.CapBytes == 0 {
		return 1
	}
	return float64(s.UsedBytes) / float64(s.CapBytes)
}

// ErrNoPlacement: too few usable sleds for a segment's shards.
var ErrNoPlacement = errors.New("not enough usable sleds")

// PlaceShards chooses n distinct usable sleds, none in exclude, least full
// first. Among equally full sleds the order depends on spread (e.g. the
// volume and segment), so different partitions start on different sleds.
func PlaceShards(sleds []Sled, n int, exclude []string, spread uint64) ([]string, error) {
	type cand struct {
		id   string
		full float64
		tie  uint64
	}
	var cands []cand
	for _, s := range sleds {
		if !s.Usable || slices.Contains(exclude, s.ID) {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(s.ID))
		cands = append(cands, cand{s.ID, s.fullness(), mix64(h.Sum64() ^ mix64(spread))})
	}
	if len(cands) < n {
		return nil, fmt.Errorf("%w: need %d, have %d", ErrNoPlacement, n, len(cands))
	}
	sort.Slice(cands, func(i, j int) bool {
		// Fullness in whole percent, so that tiny differences do not pin
		// every segment to the same sleds.
		fi, fj := int(cands[i].full*100), int(cands[j].full*100)
		if fi != fj {
			return fi < fj
		}
		return cands[i].tie < cands[j].tie
	})
	out := make([]string, n)
	for i := range out {
		out[i] = cands[i].id
	}
	return out, nil
}

// mix64 is splitmix64's finalizer: nearby inputs give unrelated outputs.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// CompactionPlan is one new segment's worth of live blocks copied out of
// sparse segments.
type CompactionPlan struct {
	Sources []uint64 // the segments that empty out once it lands
}

// PlanCompaction picks the segments worth rewriting, emptiest first, and
// groups them so that each group's live blocks fill at most maxBlocks
// slots: sparse segments (a live fraction below maxLiveFraction), whose
// rewrite frees their dead slots, and small ones (under a quarter of
// maxBlocks, as timer flushes of a quiet volume make), which are merged so
// that parity does not cost more per byte on them. Segments with no live
// blocks are freed directly, not compacted. A group of one small segment
// that is not sparse would gain nothing and is dropped.
func PlanCompaction(segs []*ballastpb.Segment, maxLiveFraction float64, maxBlocks int) []CompactionPlan {
	type cand struct {
		seg    *ballastpb.Segment
		sparse bool
	}
	var cands []cand
	for _, s := range segs {
		if s.LiveBlocks == 0 || s.Blocks == 0 {
			continue
		}
		sparse := float64(s.LiveBlocks)/float64(s.Blocks) < maxLiveFraction
		small := int(s.Blocks)*4 < maxBlocks
		if sparse || small {
			cands = append(cands, cand{s, sparse})
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i].seg, cands[j].seg
		fa, fb := float64(a.LiveBlocks)/float64(a.Blocks), float64(b.LiveBlocks)/float64(b.Blocks)
		if fa != fb {
			return fa < fb
		}
		return a.Id < b.Id
	})
	var out []CompactionPlan
	var cur CompactionPlan
	live, anySparse := 0, false
	emit := func() {
		if len(cur.Sources) > 1 || anySparse {
			out = append(out, cur)
		}
		cur, live, anySparse = CompactionPlan{}, 0, false
	}
	for _, c := range cands {
		if live > 0 && live+int(c.seg.LiveBlocks) > maxBlocks {
			emit()
		}
		cur.Sources = append(cur.Sources, c.seg.Id)
		live += int(c.seg.LiveBlocks)
		anySparse = anySparse || c.sparse
	}
	if len(cur.Sources) > 0 {
		emit()
	}
	return out
}

// Health classifies a segment by how many of its shards live on
// sleds that can serve them.
type Health int

const (
	Full     Health = iota // every shard on a usable sled
	Degraded               // some missing, but at least k left
	Lost                   // fewer than k left
)

// HealthOf returns a segment's health and the shards whose sleds cannot
// serve them.
func HealthOf(seg *ballastpb.Segment, available func(sled string) bool) (Health, []int) {
	var missing []int
	for i, s := range seg.ShardSleds {
		if !available(s) {
			missing = append(missing, i)
		}
	}
	switch {
	case len(missing) == 0:
		return Full, nil
	case len(seg.ShardSleds)-len(missing) >= int(seg.DataShards):
		return Degraded, missing
	default:
		return Lost, missing
	}
}
