package headnode

import (
	"context"
	"math/rand"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The storage benchmarks measure the head node's side of the sleds: the
// erasure code, and flush, degraded reads and rebuild over in-memory sleds
// (so they time the head node's work, not a disk). Per core, with a
// fixed count because Flush and Rebuild set up a fresh rig, untimed, for
// every iteration (a time-based -benchtime would run thousands of them):
//
//	go test -run '^$' -bench 'Erasure|Flush|DegradedRead|Rebuild' -benchtime 10x -cpu 1 ./headnode/

const benchSegmentBytes = 4 << 20

func benchBlocks(n int) [][]byte {
	rng := rand.New(rand.NewSource(1))
	blocks := make([][]byte, n)
	for i := range blocks {
		blocks[i] = make([]byte, blockSize)
		rng.Read(blocks[i])
	}
	return blocks
}

// BenchmarkErasureEncode: bytes of volume data coded into 4+2 per second.
func BenchmarkErasureEncode(b *testing.B) {
	blocks := benchBlocks(benchSegmentBytes / blockSize)
	b.SetBytes(benchSegmentBytes)
	for b.Loop() {
		if _, _, err := ec.Encode(blocks, 4, 2); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkErasureReconstruct: bytes of one lost data shard rebuilt per
// second, with another data shard lost too (the worst case of 4+2).
func BenchmarkErasureReconstruct(b *testing.B) {
	blocks := benchBlocks(benchSegmentBytes / blockSize)
	shards, size, err := ec.Encode(blocks, 4, 2)
	if err != nil {
		b.Fatal(err)
	}
	seg := &ballastpb.Segment{Id: 1, DataShards: 4, ParityShards: 2, ShardSizeBytes: size, Blocks: uint32(len(blocks)), ShardSleds: make([]string, 6)}
	pieces := make([][]byte, 6)
	copy(pieces, shards)
	pieces[0], pieces[2] = nil, nil
	b.SetBytes(int64(size))
	for b.Loop() {
		if _, err := ec.ReconstructRange(seg, pieces, 0); err != nil {
			b.Fatal(err)
		}
	}
}

const benchVolumeBytes = 32 << 20

// benchJournalBytes holds the whole volume unflushed, with room to spare:
// the rigs' maintainers run only when a benchmark calls them, so a write
// that fills the journal would wait for ever.
const benchJournalBytes = 128 << 20

// flushedRig is a rig whose volume is written whole and flushed to seven
// in-memory sleds.
func flushedRig(b *testing.B) *storageRig {
	r := newStorageRigJournal(b, benchVolumeBytes, 7, benchSegmentBytes, benchJournalBytes)
	data := make([]byte, benchVolumeBytes)
	rand.New(rand.NewSource(2)).Read(data)
	r.write(b, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkFlush: bytes of volume data moved from the log into
// erasure-coded segments per second (encode, put six shards, index,
// replicate the record, trim the log).
func BenchmarkFlush(b *testing.B) {
	b.SetBytes(benchVolumeBytes)
	for b.Loop() {
		b.StopTimer()
		r := newStorageRigJournal(b, benchVolumeBytes, 7, benchSegmentBytes, benchJournalBytes)
		data := make([]byte, benchVolumeBytes)
		rand.New(rand.NewSource(2)).Read(data)
		r.write(b, 0, data)
		b.StartTimer()
		if err := r.m().flush(r.ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if r.dirty(b) != 0 {
			b.Fatal("flush left dirty blocks")
		}
		r.primary.Close()
		b.StartTimer()
	}
}

// BenchmarkFlushSparse: the flush of a few blocks written at random over
// a volume already in segments, as after small random writes: each moved
// block's older index entry is read and dropped (ns/op per flush of 160
// blocks, 2% of the volume).
func BenchmarkFlushSparse(b *testing.B) {
	r := flushedRig(b)
	rng := rand.New(rand.NewSource(3))
	block := make([]byte, blockSize)
	const blocks = benchVolumeBytes / blockSize
	for b.Loop() {
		b.StopTimer()
		for range blocks / 50 {
			rng.Read(block)
			r.write(b, uint64(rng.Intn(blocks))*blockSize, block)
		}
		b.StartTimer()
		if err := r.m().flush(r.ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if r.dirty(b) != 0 {
		b.Fatal("flush left dirty blocks")
	}
}

// BenchmarkDegradedRead: bytes of volume read per second with two sleds
// of every segment unreachable, so that half the data is reconstructed.
func BenchmarkDegradedRead(b *testing.B) {
	r := flushedRig(b)
	r.shards.set(func(m *memShards) { m.down[sledName(0)], m.down[sledName(1)] = true, true })
	buf := make([]byte, benchVolumeBytes)
	b.SetBytes(benchVolumeBytes)
	for b.Loop() {
		if err := r.primary.read(context.Background(), 0, buf); err != nil {
			b.Fatal(err)
		}
	}
	if r.remote.stats.degradedReads.Load() == 0 {
		b.Fatal("no read was degraded")
	}
}

// BenchmarkRebuild: bytes of shards rebuilt per second after a sled is
// declared down (read the survivors, reconstruct, put elsewhere, record).
func BenchmarkRebuild(b *testing.B) {
	var rebuiltBytes int64
	for b.Loop() {
		b.StopTimer()
		r := flushedRig(b)
		lost := sledName(0)
		r.shards.mu.Lock()
		for _, s := range r.shards.sleds[lost] {
			rebuiltBytes += int64(len(s.data))
		}
		r.shards.down[lost] = true
		r.shards.mu.Unlock()
		r.dir.setState(lost, ballastpb.SledState_SLED_STATE_DOWN)
		r.remote.view.pollOnce(r.ctx, time.Second)
		b.StartTimer()
		if err := r.m().maintain(r.ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.shards.mu.Lock()
		left := len(r.shards.sleds[lost])
		r.shards.mu.Unlock()
		segs, _ := r.pStore.Segments(r.vol.Id)
		for _, s := range segs {
			for _, sl := range s.ShardSleds {
				if sl == lost {
					b.Fatalf("segment %d still on the lost sled (%d shards there)", s.Id, left)
				}
			}
		}
		r.primary.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(rebuiltBytes)/1e6/b.Elapsed().Seconds(), "MB/s")
}
