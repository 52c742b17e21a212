package headnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/sledpb"
	"github.com/ballast-storage/ballast/sled"
)

// batchShards is the in-memory sleds of memShards, reading batches of
// ranges too (rangeBatcher), and counting the requests it is sent.
type batchShards struct {
	*memShards
	unsupported bool // GetRanges answers as a sled that predates it

	mu      sync.Mutex
	gets    int // single-range requests
	batches int // batched requests
	ranges  int // ranges in them
}

func (b *batchShards) Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error) {
	b.mu.Lock()
	b.gets++
	b.mu.Unlock()
	return b.memShards.Get(ctx, sled, id, off, length)
}

func (b *batchShards) GetRanges(ctx context.Context, sled string, ranges []shardRange) ([]rangeResult, error) {
	b.mu.Lock()
	b.batches++
	b.ranges += len(ranges)
	b.mu.Unlock()
	if b.unsupported {
		return nil, fmt.Errorf("%w: sled %s (test)", errBatchUnsupported, sled)
	}
	b.memShards.mu.Lock()
	down := b.memShards.down[sled]
	b.memShards.mu.Unlock()
	if down {
		return nil, fmt.Errorf("%w: sled %s (test)", errSledDown, sled)
	}
	out := make([]rangeResult, len(ranges))
	for i, r := range ranges {
		out[i].data, out[i].stamp, out[i].err = b.memShards.Get(ctx, sled, r.id, r.off, r.length)
	}
	return out, nil
}

func (b *batchShards) counts() (gets, batches, ranges int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets, b.batches, b.ranges
}

// batchRig is a storage rig of eight sleds whose 2 MiB volume is flushed
// to four segments (16 data shards over the eight sleds, so a read of
// the volume needs several runs of most sleds), read through batchShards.
func batchRig(t *testing.T) (*storageRig, *batchShards) {
	t.Helper()
	r := newStorageRig(t, 2<<20, 8, 512<<10)
	data := make([]byte, 2<<20)
	rand.New(rand.NewSource(21)).Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	b := &batchShards{memShards: r.shards}
	r.remote.shards = b
	r.dropCache()
	return r, b
}

// TestReadsBatchTheRangesOfEachSled: a read that needs several runs of
// one sled asks it once, with every run in one request.
func TestReadsBatchTheRangesOfEachSled(t *testing.T) {
	r, b := batchRig(t)
	got := make([]byte, r.vol.SizeBytes)
	if err := r.primary.read(r.ctx, 0, got); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, r.model); i >= 0 {
		t.Fatalf("read differs from what was written at byte %d", i)
	}
	_, batches, ranges := b.counts()
	if batches == 0 || ranges < 2*batches {
		t.Fatalf("%d batched requests of %d ranges", batches, ranges)
	}
	if batches > 8 {
		t.Fatalf("%d batched requests for a read over 8 sleds", batches)
	}
	r.check(t)
}

// TestBatchedReadsReadAroundWhatFails: a batch whose ranges fail one by one
// (a shard that fails its checksum, one whose header names another
// segment), or whose sled does not answer at all, is read around from the
// other shards and the parity, and the bad shards are queued for repair.
func TestBatchedReadsReadAroundWhatFails(t *testing.T) {
	r, b := batchRig(t)
	segs, err := r.pStore.Segments(r.vol.Id)
	if err != nil || len(segs) < 3 {
		t.Fatalf("%d segments (%v)", len(segs), err)
	}
	r.corruptShard(segs[0], 1)
	r.misplaceShard(segs[1], segs[2], 2)
	// A sled the view still holds up stops answering.
	down := segs[2].ShardSleds[0]
	r.shards.set(func(m *memShards) { m.down[down] = true })
	r.check(t)
	if _, batches, _ := b.counts(); batches == 0 {
		t.Fatal("no batched request")
	}
	if r.remote.stats.degradedReads.Load() == 0 {
		t.Fatal("no degraded read counted")
	}
	r.m().drainRepairRequests()
	for _, ref := range []shardRef{{segment: segs[0].Id, index: 1}, {segment: segs[1].Id, index: 2}} {
		if !r.m().pending[ref] {
			t.Fatalf("shard %d of segment %d was read around but not queued for repair", ref.index, ref.segment)
		}
	}
}

// TestSledsThatCannotBatchAreReadRangeByRange: a sled that predates
// GetShardRanges is asked for each run on its own.
func TestSledsThatCannotBatchAreReadRangeByRange(t *testing.T) {
	r, b := batchRig(t)
	b.unsupported = true
	r.check(t)
	if gets, batches, _ := b.counts(); gets == 0 || batches == 0 {
		t.Fatalf("%d single and %d batched requests", gets, batches)
	}
}

// TestGRPCShardsGetRanges: the shard store against a real sled, over gRPC
// and over the framed protocol: more ranges, and more bytes, than one
// request may carry are split over several; each range's failure is its
// own, in the head node's classes.
func TestGRPCShardsGetRanges(t *testing.T) {
	t.Run("grpc", func(t *testing.T) { testGetRanges(t, false) })
	t.Run("framed", func(t *testing.T) { testGetRanges(t, true) })
}

func testGetRanges(t *testing.T, framed bool) {
	sl, err := sled.Start(sled.Config{ID: "s1", DataDir: t.TempDir(), Devices: 1, ListenAddresses: []string{"127.0.0.1:0"},
		Logger: slog.New(slog.DiscardHandler), ScrubBytesPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	var pool rpc.Pool
	defer pool.Close()
	g := &grpcShards{addresses: func(string) ([]string, bool) { return sl.Addresses(), true }, pool: &pool}
	if framed {
		g.wire = newSledWire()
		defer g.wire.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	small := shardID{volume: 1, segment: 7 << 32, index: 0}
	big := shardID{volume: 1, segment: 7 << 32, index: 1}
	ds, db := make([]byte, 64<<10), make([]byte, 8<<20)
	rand.New(rand.NewSource(1)).Read(ds)
	rand.New(rand.NewSource(2)).Read(db)
	for id, data := range map[shardID][]byte{small: ds, big: db} {
		if err := g.Put(ctx, "s1", id, 7, data); err != nil {
			t.Fatal(err)
		}
	}
	var ranges []shardRange
	for i := range sledpb.MaxRangesPerRequest + 40 {
		ranges = append(ranges, shardRange{id: small, off: uint64(i%16) * 4096, length: 4096})
	}
	for i := range 4 { // 20 MiB: over the bytes of one request
		ranges = append(ranges, shardRange{id: big, off: uint64(i) << 20, length: 5 << 20})
	}
	ranges = append(ranges,
		shardRange{id: shardID{volume: 1, segment: 9, index: 0}, off: 0, length: 4096}, // missing
		shardRange{id: small, off: 60 << 10, length: 8192},                             // past its end
	)
	res, err := g.GetRanges(ctx, "s1", ranges)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(ranges) {
		t.Fatalf("%d results for %d ranges", len(res), len(ranges))
	}
	for i, r := range ranges[:len(ranges)-2] {
		want := ds
		if r.id == big {
			want = db
		}
		if res[i].err != nil || !bytes.Equal(res[i].data, want[r.off:r.off+r.length]) {
			t.Fatalf("range %d: %v", i, res[i].err)
		}
		if err := checkStamp("s1", r.id, res[i].stamp); err != nil || res[i].stamp.epoch != 7 {
			t.Fatalf("range %d: stamp %+v: %v", i, res[i].stamp, err)
		}
	}
	if err := res[len(res)-2].err; !errors.Is(err, errShardMissing) {
		t.Fatalf("missing shard: %v", err)
	}
	if err := res[len(res)-1].err; err == nil || errors.Is(err, errShardMissing) || errors.Is(err, errShardCorrupt) {
		t.Fatalf("range past the end: %v", err)
	}
	if framed {
		g.wire.mu.Lock()
		c := g.wire.conns["s1"]
		g.wire.mu.Unlock()
		// Two puts, and the reads in at least 3 requests (over 256 ranges,
		// over 16 MiB).
		if c == nil || c.sent.Load() < 5 {
			t.Fatal("the reads did not take the framed connection")
		}
	}
}

// TestClassifySledErrors: a sled's answers map onto the head node's
// classes; a call its caller gave up on is not a sled that is down.
func TestClassifySledErrors(t *testing.T) {
	for code, want := range map[codes.Code]error{
		codes.NotFound:           errShardMissing,
		codes.DataLoss:           errShardCorrupt,
		codes.ResourceExhausted:  errSledFull,
		codes.FailedPrecondition: errStaleEpoch,
		codes.Canceled:           errSledCanceled,
		codes.Unavailable:        errSledDown,
		codes.DeadlineExceeded:   errSledDown,
		codes.Internal:           errSledDown,
	} {
		err := classifySledError("s1", "get", status.Error(code, "x"))
		if !errors.Is(err, want) {
			t.Errorf("%v: %v, want %v", code, err, want)
		}
		if code == codes.Canceled && errors.Is(err, errSledDown) {
			t.Errorf("a canceled call is taken for a sled that is down: %v", err)
		}
	}
	if classifySledError("s1", "get", nil) != nil {
		t.Error("no error classified as one")
	}
}
