package headnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// shardRef names one shard of one of the volume's segments.
type shardRef struct {
	segment uint64
	index   int
}

// maintainer keeps one volume's data on the sleds: it flushes the log into
// segments, rebuilds shards off sleds that are down, removed or draining,
// repairs shards that are missing or fail their checksum, rewrites sparse
// segments and frees empty ones. One goroutine per primary volume runs it,
// so its steps never race each other; each step's outcome reaches the
// replicas as a record through the committer (submit), in order with the
// writes, and a step that fails midway leaves only orphan shards, which
// the audit collects.
type maintainer struct {
	p *primaryVolume
	r *remoteIO

	kickc   chan struct{}
	repairc chan shardRef
	done    chan struct{}

	// segMu guards nextSegment: client writes that go straight to a
	// segment (segwrite.go) take ids too.
	segMu       sync.Mutex
	nextSegment uint64

	// Owned by the run goroutine.
	pending map[shardRef]bool
	// sledOut marks pending shards queued only because their sled was
	// down or removed, not because a read or the audit found them bad: if
	// the sled comes back up they are intact and need no rewrite.
	sledOut map[shardRef]bool

	mu     sync.Mutex
	health segmentCounts // as of the last audit
}

type segmentCounts struct {
	full, degraded, lost, pendingShards uint64
}

func newMaintainer(p *primaryVolume, r *remoteIO) *maintainer {
	return &maintainer{
		p:       p,
		r:       r,
		kickc:   make(chan struct{}, 1),
		repairc: make(chan shardRef, 1024),
		done:    make(chan struct{}),
		pending: map[shardRef]bool{},
		sledOut: map[shardRef]bool{},
	}
}

// kick asks for a flush soon.
func (m *maintainer) kick() {
	select {
	case m.kickc <- struct{}{}:
	default:
	}
}

// requestRepair asks for a shard to be rebuilt; it never blocks (a full
// queue drops the request, and the next audit finds the shard again).
func (m *maintainer) requestRepair(ref shardRef) {
	select {
	case m.repairc <- ref:
	default:
	}
}

func (m *maintainer) counts() segmentCounts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

func (m *maintainer) run() {
	defer close(m.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-m.p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	cfg := m.r.cfg
	flushTick := time.NewTicker(cfg.FlushInterval)
	defer flushTick.Stop()
	auditTick := time.NewTicker(cfg.AuditInterval)
	defer auditTick.Stop()
	// Audit once soon after taking the volume over: a primary that
	// restarted may find sleds lost while it was away.
	firstAudit := time.After(min(cfg.AuditInterval, time.Second))
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-m.kickc:
			err = m.flush(ctx)
		case <-flushTick.C:
			err = m.flush(ctx)
		case ref := <-m.repairc:
			m.markBad(ref)
			m.drainRepairRequests()
			err = m.repair(ctx)
		case <-firstAudit:
			err = m.maintain(ctx)
		case <-auditTick.C:
			err = m.maintain(ctx)
		}
		if err != nil && ctx.Err() == nil {
			m.p.log.Warn("volume maintenance", "err", err)
		}
	}
}

func (m *maintainer) drainRepairRequests() {
	for {
		select {
		case ref := <-m.repairc:
			m.markBad(ref)
		default:
			return
		}
	}
}

// markBad queues a shard that a read or the audit found missing or
// corrupt.
func (m *maintainer) markBad(ref shardRef) {
	m.pending[ref] = true
	delete(m.sledOut, ref)
}

// maintain is the periodic pass: audit, rebuild and repair, free empty
// segments, compact sparse ones.
func (m *maintainer) maintain(ctx context.Context) error {
	var errs []error
	if err := m.audit(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.repair(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.compact(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// underLease fails unless this node still holds the volume's lease at its
// epoch. Every step asks before it writes shards and again before it
// records them: a deposed primary must not keep flushing, compacting or
// rebuilding, since a sled fences it only once the new primary's epoch
// has reached that sled, and its record would reach only its own log.
func (m *maintainer) underLease(ctx context.Context, before string) error {
	if err := m.p.leaseHeld(ctx); err != nil {
		return fmt.Errorf("not primary before %s: %w", before, err)
	}
	return nil
}

func (m *maintainer) allocSegment() (uint64, error) {
	m.segMu.Lock()
	defer m.segMu.Unlock()
	recorded, err := m.p.store.NextSegmentID(m.p.vol.Id)
	if err != nil {
		return 0, err
	}
	id, err := ec.NextSegmentID(m.p.vol.Epoch, recorded, m.nextSegment)
	if err != nil {
		return 0, fmt.Errorf("volume %d: %w", m.p.vol.Id, err)
	}
	m.nextSegment = id + 1
	return id, nil
}

// flush moves every block now in the log into segments on the sleds.
func (m *maintainer) flush(ctx context.Context) error {
	m.p.writtenBytes.Store(0)
	vol := m.p.vol
	maxBlocks := m.r.cfg.segmentBlocks()
	for from := uint64(0); ; {
		dirty, err := m.p.store.DirtyBlocks(vol.Id, from, maxBlocks)
		if err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		if len(dirty) == 0 {
			return nil
		}
		if err := m.flushSegment(ctx, dirty); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		from = dirty[len(dirty)-1].Block + 1
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// flushSegment writes one segment of dirty blocks to the sleds, then
// commits the flush record that moves them into it and out of the log.
func (m *maintainer) flushSegment(ctx context.Context, dirty []blockstore.DirtyBlock) error {
	id, err := m.allocSegment()
	if err != nil {
		return err
	}
	blocks := make([][]byte, len(dirty))
	rec := &ballastpb.FlushRecord{
		SlotBlocks: make([]uint64, len(dirty)),
		Versions:   make([]uint64, len(dirty)),
	}
	for i, d := range dirty {
		blocks[i] = d.Data
		rec.SlotBlocks[i], rec.Versions[i] = d.Block, d.Version
	}
	if err := m.underLease(ctx, fmt.Sprintf("writing segment %d", id)); err != nil {
		return err
	}
	seg, _, err := m.writeSegment(ctx, id, blocks)
	if err != nil {
		return err
	}
	rec.Segment = seg
	if err := m.r.step("flush:shards-written"); err != nil {
		return err
	}
	if err := m.underLease(ctx, fmt.Sprintf("recording segment %d", id)); err != nil {
		return err // the shards are orphans; the next primary's audit collects them
	}
	if err := m.p.submit(ctx, &ballastpb.LogRecord{Flush: rec}); err != nil {
		// The shards are orphans now; the audit collects them.
		return fmt.Errorf("commit flush of segment %d: %w", id, err)
	}
	m.r.stats.flushedBytes.Add(uint64(len(dirty)) * blockSize)
	return nil
}

// writeSegment erasure-codes blocks into a new segment and writes its
// shards to distinct sleds. It returns the shards too: the data shards
// hold a copy of the blocks (segmentBlock).
func (m *maintainer) writeSegment(ctx context.Context, id uint64, blocks [][]byte) (*ballastpb.Segment, [][]byte, error) {
	cfg := m.r.cfg
	shards, size, err := ec.Encode(blocks, cfg.DataShards, cfg.ParityShards)
	if err != nil {
		return nil, nil, err
	}
	seg, err := m.storeSegment(ctx, id, shards, size, len(blocks))
	return seg, shards, err
}

// storeSegment writes an encoded segment's shards to distinct sleds.
func (m *maintainer) storeSegment(ctx context.Context, id uint64, shards [][]byte, size uint64, blocks int) (*ballastpb.Segment, error) {
	cfg := m.r.cfg
	sleds, err := ec.PlaceShards(m.r.view.placement(), len(shards), nil, m.p.vol.Id<<32^id)
	if err != nil {
		return nil, fmt.Errorf("place segment %d: %w", id, err)
	}
	if err := m.r.putShards(ctx, m.p.vol, id, shards, sleds); err != nil {
		return nil, fmt.Errorf("write segment %d: %w", id, err)
	}
	return &ballastpb.Segment{
		Id:             id,
		DataShards:     uint32(cfg.DataShards),
		ParityShards:   uint32(cfg.ParityShards),
		ShardSizeBytes: size,
		Blocks:         uint32(blocks),
		ShardSleds:     sleds,
	}, nil
}

// audit checks every segment against the sleds: shards on sleds that are
// down, removed or draining are queued for rebuild; shards a sled no
// longer holds are queued for repair; shards no segment names are deleted
// once they are old enough; empty segments are freed.
func (m *maintainer) audit(ctx context.Context) error {
	vol := m.p.vol
	segs, err := m.p.store.Segments(vol.Id)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	var counts segmentCounts
	expected := map[string]map[shardRef]bool{} // sled -> shards it should hold
	for _, seg := range segs {
		if seg.LiveBlocks == 0 {
			if err := m.free(ctx, seg); err != nil {
				m.p.log.Warn("free segment", "segment", seg.Id, "err", err)
			}
			continue
		}
		health, missing := ec.HealthOf(seg, func(sled string) bool {
			st := m.r.standing(sled)
			return st == ballastpb.SledState_SLED_STATE_UP || st == ballastpb.SledState_SLED_STATE_DRAINING
		})
		switch health {
		case ec.Full:
			counts.full++
		case ec.Degraded:
			counts.degraded++
		case ec.Lost:
			counts.lost++
		}
		for i, sled := range seg.ShardSleds {
			ref := shardRef{segment: seg.Id, index: i}
			st := m.r.standing(sled)
			if slices.Contains(missing, i) || st == ballastpb.SledState_SLED_STATE_DRAINING {
				if !m.pending[ref] && st != ballastpb.SledState_SLED_STATE_DRAINING {
					m.sledOut[ref] = true
				}
				m.pending[ref] = true
				continue
			}
			if expected[sled] == nil {
				expected[sled] = map[shardRef]bool{}
			}
			expected[sled][ref] = true
		}
	}
	// Ask each sled that should hold shards what it holds.
	for _, s := range m.r.view.placement() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !s.Usable && m.r.standing(s.ID) != ballastpb.SledState_SLED_STATE_UP {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, m.r.cfg.ShardTimeout)
		held, err := m.r.shards.List(lctx, s.ID, vol.Id)
		cancel()
		if err != nil {
			continue // unreachable now: its standing decides
		}
		have := map[shardRef]bool{}
		for _, h := range held {
			ref := shardRef{segment: h.id.segment, index: int(h.id.index)}
			have[ref] = true
			if !expected[s.ID][ref] && time.Since(h.modified) > m.r.cfg.ShardGCGrace {
				m.deleteOrphan(ctx, s.ID, h.id)
			}
		}
		for ref := range expected[s.ID] {
			if !have[ref] {
				m.markBad(ref)
			}
		}
	}
	counts.pendingShards = uint64(len(m.pending))
	m.mu.Lock()
	m.health = counts
	m.mu.Unlock()
	return nil
}

// deleteOrphan deletes a shard that no segment names, unless the segment
// names it on this sled after all (it moved here since the audit began).
func (m *maintainer) deleteOrphan(ctx context.Context, sled string, id shardID) {
	if !m.p.inSync.Load() {
		return // the secondary's log may name it: not an orphan yet
	}
	seg, _, err := m.p.store.Segment(m.p.vol.Id, id.segment)
	if err != nil {
		return
	}
	if seg != nil && int(id.index) < len(seg.ShardSleds) && seg.ShardSleds[id.index] == sled {
		return
	}
	// Only under the lease: a deposed primary's audit must not delete what
	// the new primary just wrote (sleds fence it only once they have seen
	// the new epoch).
	if m.p.leaseHeld(ctx) != nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, m.r.cfg.ShardTimeout)
	defer cancel()
	if err := m.r.shards.Delete(dctx, sled, id, m.p.vol.Epoch); err == nil {
		m.p.log.Info("deleted orphan shard", "sled", sled, "shard", id.String())
	}
}

// repair rebuilds every pending shard: from its own sled if that is
// draining and can still serve it, else from the other shards; onto its
// own sled if that is up (a lost or corrupt shard), else onto another.
func (m *maintainer) repair(ctx context.Context) error {
	refs := make([]shardRef, 0, len(m.pending))
	for ref := range m.pending {
		refs = append(refs, ref)
	}
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].segment != refs[j].segment {
			return refs[i].segment < refs[j].segment
		}
		return refs[i].index < refs[j].index
	})
	var errs []error
	for _, ref := range refs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err := m.repairShard(ctx, ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		delete(m.pending, ref)
		delete(m.sledOut, ref)
	}
	m.mu.Lock()
	m.health.pendingShards = uint64(len(m.pending))
	m.mu.Unlock()
	return errors.Join(errs...)
}

func (m *maintainer) repairShard(ctx context.Context, ref shardRef) error {
	vol := m.p.vol
	seg, _, err := m.p.store.Segment(vol.Id, ref.segment)
	if err != nil {
		return err
	}
	if seg == nil || ref.index >= len(seg.ShardSleds) {
		return nil // freed since
	}
	from := seg.ShardSleds[ref.index]
	standing := m.r.standing(from)
	moving := standing != ballastpb.SledState_SLED_STATE_UP
	if !moving && m.sledOut[ref] {
		// Queued only because its sled was out, and the sled is back: the
		// shard is there unless the next audit's listing says otherwise.
		return nil
	}
	var data []byte
	if standing == ballastpb.SledState_SLED_STATE_DRAINING {
		data, err = m.r.readShard(ctx, vol.Id, seg, ref.index)
	} else {
		data, err = m.r.reconstructShard(ctx, vol.Id, seg, ref.index)
	}
	if err != nil {
		return fmt.Errorf("rebuild shard %d of segment %d: %w", ref.index, ref.segment, err)
	}
	to := from
	if moving {
		others := slices.Clone(seg.ShardSleds)
		alt, err := ec.PlaceShards(m.r.view.placement(), 1, others, seg.Id+uint64(ref.index))
		if err != nil {
			return fmt.Errorf("rebuild shard %d of segment %d: %w", ref.index, ref.segment, err)
		}
		to = alt[0]
	}
	id := shardID{volume: vol.Id, segment: seg.Id, index: uint32(ref.index)}
	if err := m.underLease(ctx, "writing "+id.String()); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, m.r.cfg.ShardTimeout)
	err = m.r.shards.Put(pctx, to, id, vol.Epoch, data)
	cancel()
	if err != nil {
		return fmt.Errorf("rebuild %s onto sled %s: %w", id, to, err)
	}
	if err := m.r.step("repair:shard-written"); err != nil {
		return err
	}
	if !moving {
		m.r.stats.repaired.Add(1)
		m.p.log.Info("repaired shard", "shard", id.String(), "sled", to)
		return nil
	}
	if err := m.underLease(ctx, fmt.Sprintf("recording the move of %s", id)); err != nil {
		return err
	}
	if err := m.p.submit(ctx, &ballastpb.LogRecord{ShardMove: &ballastpb.ShardMoveRecord{
		SegmentId: seg.Id, Index: uint32(ref.index), FromSled: from, ToSled: to,
	}}); err != nil {
		return fmt.Errorf("commit move of %s to sled %s: %w", id, to, err)
	}
	m.r.stats.rebuilt.Add(1)
	m.p.log.Info("rebuilt shard", "shard", id.String(), "from", from, "to", to, "from_state", standing)
	if standing == ballastpb.SledState_SLED_STATE_DRAINING {
		dctx, cancel := context.WithTimeout(ctx, m.r.cfg.ShardTimeout)
		m.r.shards.Delete(dctx, from, id, vol.Epoch)
		cancel()
	}
	return nil
}

// free forgets a segment with no live blocks and deletes its shards.
func (m *maintainer) free(ctx context.Context, seg *ballastpb.Segment) error {
	if err := m.underLease(ctx, fmt.Sprintf("freeing segment %d", seg.Id)); err != nil {
		return err
	}
	if err := m.p.submit(ctx, &ballastpb.LogRecord{SegmentFree: &ballastpb.SegmentFreeRecord{SegmentId: seg.Id}}); err != nil {
		return err
	}
	if err := m.r.step("free:committed"); err != nil {
		return err
	}
	if still, _, err := m.p.store.Segment(m.p.vol.Id, seg.Id); err != nil || still != nil {
		return err // blocks moved back in meanwhile: it stays
	}
	m.r.deleteShards(ctx, m.p.vol, seg.Id, seg.ShardSleds)
	return nil
}

// compact rewrites the live blocks of sparse segments into new ones and
// frees the old.
func (m *maintainer) compact(ctx context.Context) error {
	segs, err := m.p.store.Segments(m.p.vol.Id)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	maxBlocks := m.r.cfg.segmentBlocks()
	for _, plan := range ec.PlanCompaction(segs, m.r.cfg.CompactLiveFraction, maxBlocks) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := m.compactOne(ctx, plan); err != nil {
			return fmt.Errorf("compact segments %v: %w", plan.Sources, err)
		}
	}
	return nil
}

// liveSlot is a block compaction copies.
type liveSlot struct {
	block   uint64
	segment uint64
	slot    uint32
	data    []byte
}

func (m *maintainer) compactOne(ctx context.Context, plan ec.CompactionPlan) error {
	vol := m.p.vol
	var live []liveSlot
	var sources []*ballastpb.Segment
	for _, id := range plan.Sources {
		seg, slots, err := m.p.store.Segment(vol.Id, id)
		if err != nil {
			return err
		}
		if seg == nil {
			continue
		}
		sources = append(sources, seg)
		inLog, locs, indexed, err := m.p.store.Locate(vol.Id, slots)
		if err != nil {
			return err
		}
		var want []liveSlot
		for slot, block := range slots {
			// Live: the index still maps the block here, and the log holds
			// no newer data for it.
			if indexed[slot] && !inLog[slot] && locs[slot] == (blockstore.BlockLoc{Segment: id, Slot: uint32(slot)}) {
				want = append(want, liveSlot{block: block, segment: id, slot: uint32(slot)})
			}
		}
		if err := m.readSlots(ctx, seg, want); err != nil {
			return err
		}
		live = append(live, want...)
	}
	if len(live) == 0 {
		for _, seg := range sources {
			if err := m.free(ctx, seg); err != nil {
				return err
			}
		}
		return nil
	}
	sort.Slice(live, func(i, j int) bool { return live[i].block < live[j].block })
	if len(live) > m.r.cfg.segmentBlocks() {
		live = live[:m.r.cfg.segmentBlocks()]
	}
	id, err := m.allocSegment()
	if err != nil {
		return err
	}
	blocks := make([][]byte, len(live))
	rec := &ballastpb.CompactRecord{
		SlotBlocks:     make([]uint64, len(live)),
		SourceSegments: make([]uint64, len(live)),
		SourceSlots:    make([]uint32, len(live)),
	}
	for i, l := range live {
		blocks[i] = l.data
		rec.SlotBlocks[i], rec.SourceSegments[i], rec.SourceSlots[i] = l.block, l.segment, l.slot
	}
	if err := m.underLease(ctx, fmt.Sprintf("writing segment %d", id)); err != nil {
		return err
	}
	seg, _, err := m.writeSegment(ctx, id, blocks)
	if err != nil {
		return err
	}
	rec.Segment = seg
	if err := m.r.step("compact:shards-written"); err != nil {
		return err
	}
	if err := m.underLease(ctx, fmt.Sprintf("recording segment %d", id)); err != nil {
		return err
	}
	if err := m.p.submit(ctx, &ballastpb.LogRecord{Compact: rec}); err != nil {
		return fmt.Errorf("commit compaction into segment %d: %w", id, err)
	}
	if err := m.r.step("compact:committed"); err != nil {
		return err
	}
	for _, src := range sources {
		now, _, err := m.p.store.Segment(vol.Id, src.Id)
		if err != nil {
			return err
		}
		if now != nil && now.LiveBlocks == 0 {
			if err := m.free(ctx, now); err != nil {
				return err
			}
		}
	}
	return nil
}

// readSlots fills the data of the given slots of one segment, one request
// per contiguous run of a shard.
func (m *maintainer) readSlots(ctx context.Context, seg *ballastpb.Segment, slots []liveSlot) error {
	if len(slots) == 0 {
		return nil
	}
	lr := blockstore.LocalRead{Segments: map[uint64]*ballastpb.Segment{seg.Id: seg}}
	for i, l := range slots {
		lr.Remote = append(lr.Remote, blockstore.RemoteBlock{Index: i, Loc: blockstore.BlockLoc{Segment: seg.Id, Slot: l.slot}})
	}
	buf := make([]byte, len(slots)*blockSize)
	if err := m.r.fetch(ctx, m.p.vol, buf, lr, m.requestRepair); err != nil {
		return err
	}
	for i := range slots {
		slots[i].data = buf[i*blockSize : (i+1)*blockSize]
	}
	return nil
}
