package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// StorageConfig configures how a head node keeps volume data on sleds.
type StorageConfig struct {
	// DataShards and ParityShards shape every new segment (k + m); a
	// segment survives the loss of any ParityShards of its shards.
	DataShards, ParityShards int
	// SegmentBytes bounds the volume data in one segment.
	SegmentBytes int64
	// FlushThresholdBytes of writes since the last flush start a flush;
	// FlushInterval starts one anyway, so the log never holds data long.
	FlushThresholdBytes int64
	FlushInterval       time.Duration
	// JournalBytes sizes a new journal of volume data (0: 1 GiB); an
	// existing journal keeps its size. Flushes start early when it is
	// half full, and writes wait when it is nearly full.
	JournalBytes int64
	// CompactLiveFraction: segments with fewer live blocks than this
	// fraction are rewritten, so overwrites do not leak space.
	CompactLiveFraction float64
	// AuditInterval: how often a primary checks every segment's shards
	// against the sleds (rebuild, repair, orphans, compaction).
	AuditInterval time.Duration
	// ShardGCGrace: a shard no segment names is deleted only once it is
	// this old (a flush in progress writes shards before its record).
	ShardGCGrace time.Duration
	// SledPollInterval: how often each head node asks every sled how it
	// is; SledDownTimeout: how long a sled may stay unreachable before the
	// directory leader declares it down and its shards are rebuilt.
	SledPollInterval time.Duration
	SledDownTimeout  time.Duration
	// DirectWriteBytes: aligned client writes at least this long go
	// straight to a new segment on the sleds, not through the journals
	// (segwrite.go); 0 means 256 KiB, a negative value never.
	DirectWriteBytes int64
	// ReadCacheBytes sizes the read cache of the volumes this node is
	// primary of (readcache.go): 0 means 1/32 of the machine's memory
	// (64 MiB to 4 GiB), a negative value none.
	ReadCacheBytes int64
	// ShardTimeout bounds one shard request, so a hung sled costs a read
	// no more than this before it is served from parity.
	ShardTimeout time.Duration
}

// EnsureDefaults fills zero fields with their defaults.
func (c *StorageConfig) EnsureDefaults() {
	if c.DataShards == 0 {
		c.DataShards = 4
	}
	if c.ParityShards == 0 {
		c.ParityShards = 2
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = 4 << 20
	}
	if c.FlushThresholdBytes == 0 {
		c.FlushThresholdBytes = 64 << 20
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 30 * time.Second
	}
	if c.CompactLiveFraction == 0 {
		c.CompactLiveFraction = 0.5
	}
	if c.AuditInterval == 0 {
		c.AuditInterval = 30 * time.Second
	}
	if c.ShardGCGrace == 0 {
		c.ShardGCGrace = 10 * time.Minute
	}
	if c.SledPollInterval == 0 {
		c.SledPollInterval = 2 * time.Second
	}
	if c.SledDownTimeout == 0 {
		c.SledDownTimeout = 60 * time.Second
	}
	if c.ShardTimeout == 0 {
		c.ShardTimeout = 5 * time.Second
	}
	if c.DirectWriteBytes == 0 {
		c.DirectWriteBytes = 256 << 10
	}
}

// Validate reports the first problem with the configuration.
func (c *StorageConfig) Validate() error {
	switch {
	case c.DataShards < 1 || c.ParityShards < 0 || c.DataShards+c.ParityShards > 64:
		return fmt.Errorf("storage config: %d data + %d parity shards: want at least 1 data shard and at most 64 in all", c.DataShards, c.ParityShards)
	case c.SegmentBytes < blockSize || c.SegmentBytes > 64<<20:
		return fmt.Errorf("storage config: segment size %d: want 4 KiB to 64 MiB", c.SegmentBytes)
	case c.SegmentBytes/int64(c.DataShards) > 16<<20:
		return fmt.Errorf("storage config: shards of %d bytes are over the 16 MiB a request may carry", c.SegmentBytes/int64(c.DataShards))
	case c.CompactLiveFraction < 0 || c.CompactLiveFraction > 1:
		return fmt.Errorf("storage config: compaction live fraction %v is not in [0, 1]", c.CompactLiveFraction)
	}
	return nil
}

func (c *StorageConfig) segmentBlocks() int { return int(c.SegmentBytes / blockSize) }

// storageStats counts what a head node's maintainers did since it started.
type storageStats struct {
	flushedBytes  atomic.Uint64
	directBytes   atomic.Uint64 // client data written straight to segments
	rebuilt       atomic.Uint64 // shards moved off a down, removed or draining sled
	repaired      atomic.Uint64 // shards rewritten after a checksum failure or loss
	degradedReads atomic.Uint64
}

// remoteIO is what a primary needs to keep data on the sleds: the shard
// store, the sleds' standing in the directory, the node's view of them.
type remoteIO struct {
	cfg    StorageConfig
	shards shardStore
	view   *sledView
	sled   func(id string) (*ballastpb.Sled, bool)
	stats  *storageStats
	log    *slog.Logger
	// manual (a test knob) starts no maintenance goroutine: tests call
	// the maintainer's steps themselves, in the order they choose.
	manual bool
	// crashAt (a test knob) is asked at each step boundary of flush,
	// compaction, repair and free; an error stops the step there, leaving
	// its work half done exactly as a crash of the head node would.
	crashAt func(step string) error
}

// step reports reaching a step boundary to the crashAt knob.
func (r *remoteIO) step(name string) error {
	if r.crashAt == nil {
		return nil
	}
	if err := r.crashAt(name); err != nil {
		return fmt.Errorf("crash at %s: %w", name, err)
	}
	return nil
}

// standing returns a sled's state in the directory (unspecified if it is
// not registered).
func (r *remoteIO) standing(id string) ballastpb.SledState {
	if s, ok := r.sled(id); ok {
		return s.State
	}
	return ballastpb.SledState_SLED_STATE_UNSPECIFIED
}

// getRange reads bytes [off, off+length) of one shard, unless the sled is
// known not to answer.
func (r *remoteIO) getRange(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int, off, length uint64) ([]byte, error) {
	sled := seg.ShardSleds[shard]
	if !r.view.readable(sled, r.standing(sled)) {
		return nil, fmt.Errorf("%w: sled %s is %v or unreachable", errSledSkipped, sled, r.standing(sled))
	}
	return r.askRange(ctx, vol, seg, shard, off, length)
}

// errSledSkipped: a read did not ask a sled that its view holds down or
// unreachable. The view lags a sled that has just come back, so a read
// short of shards asks such sleds after all (gatherPieces).
var errSledSkipped = fmt.Errorf("%w (not asked)", errSledDown)

// askRange asks a shard's sled for a range, whatever the view says.
func (r *remoteIO) askRange(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int, off, length uint64) ([]byte, error) {
	sled := seg.ShardSleds[shard]
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ShardTimeout)
	defer cancel()
	id := shardID{volume: vol, segment: seg.Id, index: uint32(shard)}
	data, stamp, err := r.shards.Get(ctx, sled, id, off, length)
	if errors.Is(err, errSledDown) {
		r.view.reportFailure(sled, err)
	}
	if err != nil {
		return nil, err
	}
	if err := checkStamp(sled, id, stamp); err != nil {
		return nil, err
	}
	return data, nil
}

// checkStamp checks that the shard a sled read is the one asked for: the
// same volume, segment and index, written no earlier than the epoch that
// made the segment. One that is not (a misplaced file, a shard an older
// primary wrote under the same name) is corrupt: never returned as data,
// read around and repaired like a checksum failure.
func checkStamp(sled string, want shardID, got shardStamp) error {
	if got.unknown {
		return nil
	}
	if got.id != want {
		return fmt.Errorf("%w: sled %s: asked for %s, read %s", errShardCorrupt, sled, want, got.id)
	}
	if made := ec.SegmentEpoch(want.segment); got.epoch < made {
		return fmt.Errorf("%w: sled %s: %s was written at epoch %d, before epoch %d made its segment", errShardCorrupt, sled, want, got.epoch, made)
	}
	return nil
}

// readRange reads bytes [off, off+length) of shard `shard`, from its sled
// or, when that fails, from the same range of the others and the parity.
// A failure of the shard itself (not of the whole segment) is reported to
// repair.
func (r *remoteIO) readRange(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int, off, length uint64, repair func(shardRef)) ([]byte, error) {
	data, err := r.getRange(ctx, vol, seg, shard, off, length)
	if err == nil {
		return data, nil
	}
	return r.readAround(ctx, vol, seg, shard, off, length, err, repair)
}

// readAround reads bytes [off, off+length) of shard `shard` from the same
// range of the others and the parity, after its own sled failed to serve
// it with firstErr; a failure of the shard itself is reported to repair.
func (r *remoteIO) readAround(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int, off, length uint64, firstErr error, repair func(shardRef)) ([]byte, error) {
	pieces, errs := r.gatherPieces(ctx, vol, seg, shard, off, length, repair)
	data, err := ec.ReconstructRange(seg, pieces, shard)
	if err != nil && errors.Is(firstErr, errSledSkipped) {
		// The view kept the read from the shard's own sled, and the others
		// cannot rebuild it: ask that sled after all, as gatherPieces does
		// the others (a lagging view must not lose a readable range).
		own, aerr := r.askRange(ctx, vol, seg, shard, off, length)
		if aerr == nil {
			return own, nil
		}
		firstErr = fmt.Errorf("%w; asked after all: %w", firstErr, aerr)
	}
	if err != nil {
		return nil, fmt.Errorf("read %d bytes of shard %d of segment %d (%v): %w (the others: %w)", length, shard, seg.Id, firstErr, err, errors.Join(errs...))
	}
	r.stats.degradedReads.Add(1)
	if errors.Is(firstErr, errShardMissing) || errors.Is(firstErr, errShardCorrupt) {
		repair(shardRef{segment: seg.Id, index: shard})
	}
	return data, nil
}

// run is a contiguous piece of a read that one shard holds.
type run struct {
	seg    *ballastpb.Segment
	shard  int
	off    uint64 // in the shard
	index  int    // first block of the read it fills
	blocks int
}

// fetch fills the blocks of buf that a local read found on the sleds. Each
// contiguous run of a shard is one range; a sled asked for several (runs
// of one shard, or of several shards it holds) gets them in one batched
// request if the shard store batches (fetchBatched), and sleds are asked
// in parallel.
func (r *remoteIO) fetch(ctx context.Context, vol *ballastpb.Volume, buf []byte, lr blockstore.LocalRead, repair func(shardRef)) error {
	var runs []run
	for _, rb := range lr.Remote {
		seg := lr.Segments[rb.Loc.Segment]
		shard, off := ec.SlotLocation(seg, rb.Loc.Slot)
		if n := len(runs); n > 0 {
			last := &runs[n-1]
			if last.seg == seg && last.shard == shard && last.off+uint64(last.blocks)*blockSize == off && last.index+last.blocks == rb.Index {
				last.blocks++
				continue
			}
		}
		runs = append(runs, run{seg: seg, shard: shard, off: off, index: rb.Index, blocks: 1})
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	single := runs
	if batcher, ok := r.shards.(rangeBatcher); ok && len(runs) > 1 {
		var batches map[string][]run
		batches, single = r.batchRuns(runs)
		for sled, rs := range batches {
			g.Go(func() error { return r.fetchBatched(ctx, batcher, vol.Id, sled, rs, buf, repair) })
		}
	}
	for _, rn := range single {
		g.Go(func() error {
			data, err := r.readRange(ctx, vol.Id, rn.seg, rn.shard, rn.off, uint64(rn.blocks)*blockSize, repair)
			if err != nil {
				return err
			}
			copy(buf[rn.index*blockSize:], data)
			return nil
		})
	}
	return g.Wait()
}

// batchRuns groups the runs of a read by the sled that holds their shard,
// for the sleds asked for more than one that the view holds readable; the
// other runs are read one by one (a sled held down is read around).
func (r *remoteIO) batchRuns(runs []run) (batches map[string][]run, single []run) {
	bySled := map[string][]run{}
	for _, rn := range runs {
		sled := rn.seg.ShardSleds[rn.shard]
		bySled[sled] = append(bySled[sled], rn)
	}
	batches = map[string][]run{}
	for sled, rs := range bySled {
		if len(rs) > 1 && r.view.readable(sled, r.standing(sled)) {
			batches[sled] = rs
		} else {
			single = append(single, rs...)
		}
	}
	return batches, single
}

// fetchBatched reads runs that one sled holds with one batched request
// (or as few as the batch bounds allow), checks each range's stamp, and
// reads each run the sled did not serve around its shard, as readRange
// does after its one request fails. A sled that does not batch gets a
// request per run.
func (r *remoteIO) fetchBatched(ctx context.Context, batcher rangeBatcher, vol uint64, sled string, runs []run, buf []byte, repair func(shardRef)) error {
	ranges := make([]shardRange, len(runs))
	for i, rn := range runs {
		ranges[i] = shardRange{id: shardID{volume: vol, segment: rn.seg.Id, index: uint32(rn.shard)}, off: rn.off, length: uint64(rn.blocks) * blockSize}
	}
	bctx, cancel := context.WithTimeout(ctx, r.cfg.ShardTimeout)
	results, err := batcher.GetRanges(bctx, sled, ranges)
	cancel()
	if errors.Is(err, errSledDown) {
		r.view.reportFailure(sled, err)
	}
	// The runs the sled did not serve are read on their own, in parallel.
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, rn := range runs {
		length := ranges[i].length
		if errors.Is(err, errBatchUnsupported) {
			g.Go(func() error {
				data, err := r.readRange(ctx, vol, rn.seg, rn.shard, rn.off, length, repair)
				if err == nil {
					copy(buf[rn.index*blockSize:], data)
				}
				return err
			})
			continue
		}
		failed := err
		if failed == nil {
			if failed = results[i].err; failed == nil {
				failed = checkStamp(sled, ranges[i].id, results[i].stamp)
			}
			if failed == nil {
				copy(buf[rn.index*blockSize:], results[i].data)
				continue
			}
		}
		g.Go(func() error {
			data, err := r.readAround(ctx, vol, rn.seg, rn.shard, rn.off, length, failed, repair)
			if err == nil {
				copy(buf[rn.index*blockSize:], data)
			}
			return err
		})
	}
	return g.Wait()
}

// readShard reads a whole shard, reconstructing it if its sled cannot
// serve it.
func (r *remoteIO) readShard(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int) ([]byte, error) {
	return r.readRange(ctx, vol, seg, shard, 0, seg.ShardSizeBytes, func(shardRef) {})
}

// reconstructShard rebuilds a whole shard from the others, without asking
// its own sled.
func (r *remoteIO) reconstructShard(ctx context.Context, vol uint64, seg *ballastpb.Segment, shard int) ([]byte, error) {
	pieces, errs := r.gatherPieces(ctx, vol, seg, shard, 0, seg.ShardSizeBytes, func(shardRef) {})
	data, err := ec.ReconstructRange(seg, pieces, shard)
	if err != nil {
		return nil, fmt.Errorf("%w (the others: %w)", err, errors.Join(errs...))
	}
	return data, nil
}

// gatherPieces reads the same range of every shard of seg but skip, in
// parallel, reporting missing and corrupt ones to repair. If that leaves
// fewer than the data shards, the sleds the view kept it from asking are
// asked after all: a lagging view must not turn a readable segment into a
// lost one. errs holds one error per shard that did not come.
func (r *remoteIO) gatherPieces(ctx context.Context, vol uint64, seg *ballastpb.Segment, skip int, off, length uint64, repair func(shardRef)) (pieces [][]byte, errs []error) {
	pieces = make([][]byte, len(seg.ShardSleds))
	failed := make([]error, len(seg.ShardSleds))
	read := func(ask func(context.Context, uint64, *ballastpb.Segment, int, uint64, uint64) ([]byte, error), which func(i int) bool) {
		var g errgroup.Group
		for i := range seg.ShardSleds {
			if i == skip || !which(i) {
				continue
			}
			g.Go(func() error {
				d, err := ask(ctx, vol, seg, i, off, length)
				if err == nil {
					pieces[i], failed[i] = d, nil
				} else {
					failed[i] = fmt.Errorf("shard %d on sled %s: %w", i, seg.ShardSleds[i], err)
					if errors.Is(err, errShardMissing) || errors.Is(err, errShardCorrupt) {
						repair(shardRef{segment: seg.Id, index: i})
					}
				}
				return nil
			})
		}
		g.Wait()
	}
	read(r.getRange, func(int) bool { return true })
	have := 0
	for _, p := range pieces {
		if p != nil {
			have++
		}
	}
	if have < int(seg.DataShards) {
		read(r.askRange, func(i int) bool { return errors.Is(failed[i], errSledSkipped) })
	}
	for _, err := range failed {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return pieces, errs
}

// putShards writes the shards of a new segment, one per sled of `sleds`,
// in parallel. A shard a sled refuses (full, unreachable) goes to another
// usable sled that holds no shard of the segment; sleds is updated in
// place. On failure the shards already written are deleted (best effort).
func (r *remoteIO) putShards(ctx context.Context, vol *ballastpb.Volume, segID uint64, shards [][]byte, sleds []string) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for i := range shards {
		g.Go(func() error {
			id := shardID{volume: vol.Id, segment: segID, index: uint32(i)}
			tried := []string{}
			for attempt := 0; ; attempt++ {
				mu.Lock()
				sled := sleds[i]
				mu.Unlock()
				pctx, cancel := context.WithTimeout(gctx, r.cfg.ShardTimeout)
				err := r.shards.Put(pctx, sled, id, vol.Epoch, shards[i])
				cancel()
				if err == nil {
					return nil
				}
				if errors.Is(err, errSledDown) {
					r.view.reportFailure(sled, err)
				}
				if errors.Is(err, errStaleEpoch) || gctx.Err() != nil || attempt >= 3 {
					return fmt.Errorf("put %s: %w", id, err)
				}
				r.log.Warn("shard refused; placing it elsewhere", "shard", id.String(), "sled", sled, "err", err)
				tried = append(tried, sled)
				mu.Lock()
				exclude := append(append([]string{}, sleds...), tried...)
				alt, perr := ec.PlaceShards(r.view.placement(), 1, exclude, segID+uint64(attempt))
				if perr == nil {
					sleds[i] = alt[0]
				}
				mu.Unlock()
				if perr != nil {
					return fmt.Errorf("put %s: %w (and no other sled: %v)", id, err, perr)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		r.deleteShards(context.WithoutCancel(ctx), vol, segID, sleds)
		return err
	}
	return nil
}

// deleteShards deletes a segment's shards, best effort: what is left
// behind is an orphan the audit collects.
func (r *remoteIO) deleteShards(ctx context.Context, vol *ballastpb.Volume, segID uint64, sleds []string) {
	var wg sync.WaitGroup
	for i, sled := range sleds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, r.cfg.ShardTimeout)
			defer cancel()
			err := r.shards.Delete(dctx, sled, shardID{volume: vol.Id, segment: segID, index: uint32(i)}, vol.Epoch)
			if err != nil && !errors.Is(err, errShardMissing) {
				r.log.Debug("delete shard", "sled", sled, "segment", segID, "index", i, "err", err)
			}
		}()
	}
	wg.Wait()
}
