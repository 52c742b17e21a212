package blockstore

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// applier applies log records to one volume's keys in an indexed batch.
// Every replica runs the same records through it, so it must be
// deterministic: it reads only the batch (which sees the store plus what
// earlier records of the batch wrote) and the record.
type applier struct {
	b   *pebble.Batch
	vol uint64
	st  *ballastpb.VolumeLogState

	// Per record: the live-block changes of segments, and the keys touched.
	liveDelta map[uint64]int64
	entry     *ballastpb.LogEntry
	// locs are where the record's blocks of data are in the journal, in
	// the order they appear in it; next is the first not yet used.
	locs []journal.Location
	next int
	// refDelta counts, per journal batch, the 'B' refs the batch made
	// (positive) and ended (negative); applied to the store's counts once
	// the batch commits (journalstore.go).
	refDelta map[uint64]int
	// refs is the volume's in-memory 'B' index, which the batch reads
	// through refChanges, its own changes (applied when it commits).
	refs       *volumeRefs
	refChanges refChanges
	// hook (the store's BlockHook, if any) gets changes when the batch
	// commits.
	hook    BlockHook
	changes []BlockChange
	// writers are the clients' states the batch changed, decoded, not
	// yet written to it (writers.go); commit writes them.
	writers map[uint64]*ballastpb.WriterState
}

// setRef points a block's 'B' key at journal location loc, ending the ref
// it held.
func (a *applier) setRef(block, version uint64, loc journal.Location) error {
	if err := a.endRef(block); err != nil {
		return err
	}
	a.countRef(loc.LSN, 1)
	ref := blockRef{version: version, loc: loc}
	a.changeRef(block, &ref)
	return a.b.Set(blockKey(a.vol, block), encodeBlockRef(version, loc), nil)
}

// getRef returns a block's 'B' ref as the batch sees it (from the
// in-memory index, refindex.go); ok is false if it has none.
func (a *applier) getRef(block uint64) (ref blockRef, ok bool, err error) {
	ref, ok = a.refs.lookup(a.refChanges, block)
	return ref, ok, nil
}

// endRef deletes a block's 'B' key, if any.
func (a *applier) endRef(block uint64) error {
	ref, ok, err := a.getRef(block)
	if !ok {
		return err
	}
	return a.dropRef(block, ref)
}

// dropRef deletes a block's 'B' key, which holds ref.
func (a *applier) dropRef(block uint64, ref blockRef) error {
	a.countRef(ref.loc.LSN, -1)
	a.changeRef(block, nil)
	return a.b.Delete(blockKey(a.vol, block), nil)
}

// endRefRange deletes the 'B' keys of a range of blocks.
func (a *applier) endRefRange(first, count uint64) error {
	for block, ref := range a.refs.inRange(a.refChanges, first, count) {
		a.countRef(ref.loc.LSN, -1)
		a.changeRef(block, nil)
	}
	return a.b.DeleteRange(blockKey(a.vol, first), blockKey(a.vol, first+count), nil)
}

// commit commits the batch and applies its ref changes to the index
// together, so a reader holding the volume's index lock sees both or
// neither.
func (a *applier) commit(opts *pebble.WriteOptions) error {
	if err := a.flushWriters(); err != nil {
		return err
	}
	a.refs.mu.Lock()
	defer a.refs.mu.Unlock()
	if err := a.b.Commit(opts); err != nil {
		return err
	}
	a.refs.applyLocked(a.refChanges)
	if a.hook != nil && len(a.changes) > 0 {
		a.hook(a.vol, a.changes)
	}
	return nil
}

// changeRef records a change of a block's ref for the index, applied
// when the batch commits.
func (a *applier) changeRef(block uint64, ref *blockRef) {
	if a.refChanges == nil {
		a.refChanges = refChanges{}
	}
	a.refChanges[block] = ref
}

func (a *applier) countRef(lsn uint64, d int) {
	if a.refDelta == nil {
		a.refDelta = map[uint64]int{}
	}
	a.refDelta[lsn] += d
}

// nextLoc returns the journal location of the record's next block of data.
func (a *applier) nextLoc() (journal.Location, error) {
	if a.next >= len(a.locs) {
		return journal.Location{}, fmt.Errorf("%w: record has more blocks of data than its journal entry", ErrCorrupt)
	}
	a.next++
	return a.locs[a.next-1], nil
}

// hasData says whether a datum stands for a block of data: 4 KiB, or the
// journal's placeholder for one.
func hasData(d []byte) bool { return len(d) == volume.BlockSizeBytes || isPlaceholder(d) }

func (a *applier) apply(r *ballastpb.LogRecord, locs []journal.Location) error {
	a.liveDelta = map[uint64]int64{}
	a.entry = &ballastpb.LogEntry{Seq: r.Seq}
	a.locs, a.next = locs, 0
	var err error
	switch kinds := recordKinds(r); {
	case kinds > 1:
		return fmt.Errorf("record %d has %d kinds of body", r.Seq, kinds)
	case r.Flush != nil:
		err = a.applyFlush(r.Flush)
	case r.Compact != nil:
		err = a.applyCompact(r.Compact)
	case r.ShardMove != nil:
		err = a.applyShardMove(r.ShardMove)
	case r.SegmentFree != nil:
		err = a.applySegmentFree(r.SegmentFree)
	case r.State != nil:
		err = a.applyState(r.State)
	case r.SegmentWrite != nil:
		err = a.applySegmentWrite(r.SegmentWrite)
	default:
		err = a.applyWrite(r)
	}
	if err != nil {
		return err
	}
	if err := a.noteWrites(r); err != nil {
		return err
	}
	if a.next != len(a.locs) {
		return fmt.Errorf("%w: record %d used %d of the %d blocks of its journal entry", ErrCorrupt, r.Seq, a.next, len(a.locs))
	}
	if err := a.commitLiveDeltas(); err != nil {
		return err
	}
	data, err := proto.Marshal(a.entry)
	if err != nil {
		return fmt.Errorf("encode log entry: %w", err)
	}
	return a.b.Set(logKey(a.vol, r.Seq), data, nil)
}

// recordKinds counts the bodies a record carries; a write (blocks or
// removed ranges, or nothing) counts as one.
func recordKinds(r *ballastpb.LogRecord) int {
	n := 0
	if len(r.Blocks) > 0 || len(r.Removed) > 0 {
		n++
	}
	for _, set := range []bool{r.Flush != nil, r.Compact != nil, r.ShardMove != nil, r.SegmentFree != nil, r.State != nil, r.SegmentWrite != nil} {
		if set {
			n++
		}
	}
	return n
}

func (a *applier) touchSegment(id uint64) {
	if !slices.Contains(a.entry.Segments, id) {
		a.entry.Segments = append(a.entry.Segments, id)
	}
}

// unindex drops a block's index entry, if any, and counts its segment one
// live block down.
func (a *applier) unindex(block uint64) error {
	v, closer, err := a.b.Get(indexKey(a.vol, block))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read index of block %d: %w", block, err)
	}
	loc, err := decodeLoc(v)
	closer.Close()
	if err != nil {
		return err
	}
	a.liveDelta[loc.Segment]--
	a.touchSegment(loc.Segment)
	return a.b.Delete(indexKey(a.vol, block), nil)
}

// index maps a block to a segment slot (unindexing it from where it was).
func (a *applier) index(block uint64, loc BlockLoc) error {
	if err := a.unindex(block); err != nil {
		return err
	}
	a.liveDelta[loc.Segment]++
	a.touchSegment(loc.Segment)
	return a.b.Set(indexKey(a.vol, block), encodeLoc(loc), nil)
}

// commitLiveDeltas writes the live-block counts of every segment a record
// changed. A segment that the record itself created is in the batch by now.
func (a *applier) commitLiveDeltas() error {
	for id, d := range a.liveDelta {
		if d == 0 {
			continue
		}
		seg, _, err := getSegment(a.b, a.vol, id, false)
		if err != nil {
			return err
		}
		if seg == nil {
			// An index entry named a segment that is gone: the store is
			// inconsistent. Refuse rather than guess.
			return fmt.Errorf("%w: segment %d of volume %d is indexed but missing", ErrCorrupt, id, a.vol)
		}
		live := int64(seg.LiveBlocks) + d
		if live < 0 || live > int64(seg.Blocks) {
			return fmt.Errorf("%w: segment %d of volume %d would have %d live blocks of %d", ErrCorrupt, id, a.vol, live, seg.Blocks)
		}
		seg.LiveBlocks = uint32(live)
		if err := a.putSegment(seg, nil); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) putSegment(seg *ballastpb.Segment, slots []uint64) error {
	data, err := proto.Marshal(seg)
	if err != nil {
		return fmt.Errorf("encode segment %d: %w", seg.Id, err)
	}
	if err := a.b.Set(segmentKey(a.vol, seg.Id), data, nil); err != nil {
		return err
	}
	if slots != nil {
		if err := a.b.Set(segSlotsKey(a.vol, seg.Id), encodeSlots(slots), nil); err != nil {
			return err
		}
	}
	a.st.NextSegmentId = max(a.st.NextSegmentId, seg.Id+1)
	return nil
}

// applyWrite stores a client write: removed ranges lose their log data and
// index entries; written blocks get new log data, versioned by the seq. A
// written block keeps its index entry until it is flushed again (reads
// prefer the log), so writes cost no index lookups.
func (a *applier) applyWrite(r *ballastpb.LogRecord) error {
	for _, rg := range r.Removed {
		if err := a.removeRange(rg.First, rg.Count); err != nil {
			return err
		}
		a.entry.Removed = append(a.entry.Removed, rg)
		a.changed(rg.First, rg.Count, nil)
	}
	for _, bw := range r.Blocks {
		switch {
		case len(bw.Data) == 0:
			// A block removed alone: like a range of one.
			if err := a.removeRange(bw.Block, 1); err != nil {
				return err
			}
			a.changed(bw.Block, 1, nil)
		case hasData(bw.Data):
			loc, err := a.nextLoc()
			if err != nil {
				return err
			}
			if err := a.setRef(bw.Block, r.Seq, loc); err != nil {
				return err
			}
			if len(bw.Data) == volume.BlockSizeBytes {
				a.changed(bw.Block, 1, bw.Data)
			} else {
				a.changed(bw.Block, 1, nil) // a replay's placeholder
			}
		default:
			return fmt.Errorf("block %d has %d bytes, want %d", bw.Block, len(bw.Data), volume.BlockSizeBytes)
		}
		a.entry.Blocks = append(a.entry.Blocks, bw.Block)
	}
	return nil
}

// removeRange drops the log data and index entries of a range of blocks,
// counting their segments' live blocks down.
func (a *applier) removeRange(first, count uint64) error {
	if err := a.countOut(first, first+count, func(uint64) bool { return true }); err != nil {
		return err
	}
	if err := a.b.DeleteRange(indexKey(a.vol, first), indexKey(a.vol, first+count), nil); err != nil {
		return err
	}
	return a.endRefRange(first, count)
}

// applyFlush moves into a new segment the blocks whose log data is still
// the version the flusher wrote there. The others were written again since;
// their slots are dead from the start.
func (a *applier) applyFlush(f *ballastpb.FlushRecord) error {
	seg := proto.Clone(f.Segment).(*ballastpb.Segment)
	if err := validateSegment(seg, len(f.SlotBlocks)); err != nil {
		return err
	}
	if len(f.Versions) != len(f.SlotBlocks) {
		return fmt.Errorf("flush of segment %d: %d versions for %d slots", seg.Id, len(f.Versions), len(f.SlotBlocks))
	}
	if old, _, err := getSegment(a.b, a.vol, seg.Id, false); err != nil {
		return err
	} else if old != nil {
		return fmt.Errorf("flush of segment %d: the segment exists already", seg.Id)
	}
	seg.LiveBlocks = 0
	if err := a.putSegment(seg, f.SlotBlocks); err != nil {
		return err
	}
	a.touchSegment(seg.Id)
	var moved []uint64
	var slots []uint32
	for slot, block := range f.SlotBlocks {
		a.entry.Blocks = append(a.entry.Blocks, block)
		ref, ok, err := a.getRef(block)
		if err != nil {
			return err
		}
		if !ok {
			continue // removed since
		}
		if ref.version != f.Versions[slot] {
			continue // written again since
		}
		// The ref just read: a second read would cost a lookup per
		// flushed block.
		if err := a.dropRef(block, ref); err != nil {
			return err
		}
		moved = append(moved, block)
		slots = append(slots, uint32(slot))
	}
	return a.indexBlocks(seg.Id, moved, slots)
}

// applySegmentWrite maps every block of a client write that went straight
// to a new segment there: the blocks' log data and older index entries
// are superseded, whatever the records before wrote.
func (a *applier) applySegmentWrite(w *ballastpb.SegmentWriteRecord) error {
	seg := proto.Clone(w.Segment).(*ballastpb.Segment)
	if err := validateSegment(seg, len(w.SlotBlocks)); err != nil {
		return err
	}
	if old, _, err := getSegment(a.b, a.vol, seg.Id, false); err != nil {
		return err
	} else if old != nil {
		return fmt.Errorf("write to segment %d: the segment exists already", seg.Id)
	}
	if len(w.SlotBlocks) == 0 {
		return fmt.Errorf("write to segment %d: no blocks", seg.Id)
	}
	seg.LiveBlocks = 0
	if err := a.putSegment(seg, w.SlotBlocks); err != nil {
		return err
	}
	a.touchSegment(seg.Id)
	// Writes that shared the segment may overlap: a block's last slot
	// holds it, its earlier ones are dead from the start.
	last := make(map[uint64]uint32, len(w.SlotBlocks))
	for slot, block := range w.SlotBlocks {
		last[block] = uint32(slot)
	}
	blocks := make([]uint64, 0, len(last))
	for block := range last {
		blocks = append(blocks, block)
	}
	slices.Sort(blocks)
	slots := make([]uint32, len(blocks))
	for i, block := range blocks {
		a.entry.Blocks = append(a.entry.Blocks, block)
		if err := a.endRef(block); err != nil {
			return err
		}
		slots[i] = last[block]
		a.changed(block, 1, nil)
	}
	return a.indexBlocks(seg.Id, blocks, slots)
}

// countOut counts the segments of the index entries of blocks [first,
// end) that want picks (called in increasing block order) one live block
// down, in one pass over the span.
func (a *applier) countOut(first, end uint64, want func(block uint64) bool) error {
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: indexKey(a.vol, first), UpperBound: indexKey(a.vol, end)})
	if err != nil {
		return fmt.Errorf("iterate index: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		if !want(keyNumber(it.Key())) {
			continue
		}
		loc, err := decodeLoc(it.Value())
		if err != nil {
			it.Close()
			return err
		}
		a.liveDelta[loc.Segment]--
		a.touchSegment(loc.Segment)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	return nil
}

// indexBlocks maps blocks[i] to slot slots[i] of segment seg, unindexing
// each from where it was. Blocks in increasing order over a dense span
// cost one pass over the span's index entries rather than a point lookup
// each.
func (a *applier) indexBlocks(seg uint64, blocks []uint64, slots []uint32) error {
	if len(blocks) == 0 {
		return nil
	}
	first, last := blocks[0], blocks[len(blocks)-1]
	dense := last >= first && last-first < 4*uint64(len(blocks))
	for i := 1; dense && i < len(blocks); i++ {
		dense = blocks[i] > blocks[i-1]
	}
	if !dense {
		for i, block := range blocks {
			if err := a.index(block, BlockLoc{Segment: seg, Slot: slots[i]}); err != nil {
				return err
			}
		}
		return nil
	}
	i := 0
	among := func(block uint64) bool {
		for i < len(blocks) && blocks[i] < block {
			i++
		}
		return i < len(blocks) && blocks[i] == block
	}
	if err := a.countOut(first, last+1, among); err != nil {
		return err
	}
	for i, block := range blocks {
		a.liveDelta[seg]++
		if err := a.b.Set(indexKey(a.vol, block), encodeLoc(BlockLoc{Segment: seg, Slot: slots[i]}), nil); err != nil {
			return err
		}
	}
	a.touchSegment(seg)
	return nil
}

// applyCompact moves live blocks of old segments into a new one, each only
// if the index still maps it to the slot it was copied from.
func (a *applier) applyCompact(c *ballastpb.CompactRecord) error {
	seg := proto.Clone(c.Segment).(*ballastpb.Segment)
	if err := validateSegment(seg, len(c.SlotBlocks)); err != nil {
		return err
	}
	if len(c.SourceSegments) != len(c.SlotBlocks) || len(c.SourceSlots) != len(c.SlotBlocks) {
		return fmt.Errorf("compaction into segment %d: sources do not match %d slots", seg.Id, len(c.SlotBlocks))
	}
	if old, _, err := getSegment(a.b, a.vol, seg.Id, false); err != nil {
		return err
	} else if old != nil {
		return fmt.Errorf("compaction into segment %d: the segment exists already", seg.Id)
	}
	seg.LiveBlocks = 0
	if err := a.putSegment(seg, c.SlotBlocks); err != nil {
		return err
	}
	a.touchSegment(seg.Id)
	for slot, block := range c.SlotBlocks {
		a.entry.Blocks = append(a.entry.Blocks, block)
		v, closer, err := a.b.Get(indexKey(a.vol, block))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read index of block %d: %w", block, err)
		}
		loc, err := decodeLoc(v)
		closer.Close()
		if err != nil {
			return err
		}
		if loc != (BlockLoc{Segment: c.SourceSegments[slot], Slot: c.SourceSlots[slot]}) {
			continue // moved on since it was copied
		}
		if err := a.index(block, BlockLoc{Segment: seg.Id, Slot: uint32(slot)}); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) applyShardMove(m *ballastpb.ShardMoveRecord) error {
	a.touchSegment(m.SegmentId)
	seg, _, err := getSegment(a.b, a.vol, m.SegmentId, false)
	if err != nil || seg == nil {
		return err // gone: nothing to move
	}
	if int(m.Index) >= len(seg.ShardSleds) || seg.ShardSleds[m.Index] != m.FromSled {
		return nil // moved by someone else since
	}
	seg.ShardSleds[m.Index] = m.ToSled
	return a.putSegment(seg, nil)
}

func (a *applier) applySegmentFree(f *ballastpb.SegmentFreeRecord) error {
	a.touchSegment(f.SegmentId)
	seg, _, err := getSegment(a.b, a.vol, f.SegmentId, false)
	if err != nil || seg == nil {
		return err
	}
	if seg.LiveBlocks != 0 {
		return nil // blocks moved back in meanwhile: keep it
	}
	if err := a.b.Delete(segmentKey(a.vol, f.SegmentId), nil); err != nil {
		return err
	}
	return a.b.Delete(segSlotsKey(a.vol, f.SegmentId), nil)
}

// applyState installs the state a replica that is ahead sent for every key
// one of its records touched (see reconcile.go). Live counts come with the
// segments, so nothing is counted here.
func (a *applier) applyState(s *ballastpb.StateRecord) error {
	// Reconciliation replaces what it names; simpler to say all changed.
	a.changed(0, AllBlocks, nil)
	for _, rg := range s.Cleared {
		if err := a.b.DeleteRange(indexKey(a.vol, rg.First), indexKey(a.vol, rg.First+rg.Count), nil); err != nil {
			return err
		}
		if err := a.endRefRange(rg.First, rg.Count); err != nil {
			return err
		}
		a.entry.Removed = append(a.entry.Removed, rg)
	}
	for _, bs := range s.Blocks {
		a.entry.Blocks = append(a.entry.Blocks, bs.Block)
		var err error
		switch {
		case len(bs.Data) == 0:
			err = a.endRef(bs.Block)
		case hasData(bs.Data):
			var loc journal.Location
			if loc, err = a.nextLoc(); err == nil {
				err = a.setRef(bs.Block, bs.Version, loc)
			}
		default:
			err = fmt.Errorf("state of block %d has %d bytes", bs.Block, len(bs.Data))
		}
		if err != nil {
			return err
		}
		if bs.Indexed {
			err = a.b.Set(indexKey(a.vol, bs.Block), encodeLoc(BlockLoc{Segment: bs.SegmentId, Slot: bs.Slot}), nil)
		} else {
			err = a.b.Delete(indexKey(a.vol, bs.Block), nil)
		}
		if err != nil {
			return err
		}
	}
	for _, ss := range s.Segments {
		a.touchSegment(ss.Id)
		if ss.Segment == nil {
			if err := a.b.Delete(segmentKey(a.vol, ss.Id), nil); err != nil {
				return err
			}
			if err := a.b.Delete(segSlotsKey(a.vol, ss.Id), nil); err != nil {
				return err
			}
			continue
		}
		if ss.Segment.Id != ss.Id {
			return fmt.Errorf("state of segment %d carries segment %d", ss.Id, ss.Segment.Id)
		}
		if err := a.putSegment(ss.Segment, ss.SlotBlocks); err != nil {
			return err
		}
	}
	a.st.NextSegmentId = max(a.st.NextSegmentId, s.NextSegmentId)
	return a.applyWriterStates(s.Writers)
}

// validateSegment checks a new segment's shape against its slots.
func validateSegment(seg *ballastpb.Segment, slots int) error {
	switch {
	case seg == nil:
		return errors.New("record has no segment")
	case seg.Id == 0:
		return errors.New("segment id 0 is reserved")
	case seg.DataShards == 0 || int(seg.DataShards+seg.ParityShards) != len(seg.ShardSleds):
		return fmt.Errorf("segment %d: %d+%d shards on %d sleds", seg.Id, seg.DataShards, seg.ParityShards, len(seg.ShardSleds))
	case int(seg.Blocks) != slots:
		return fmt.Errorf("segment %d: %d blocks but %d slots", seg.Id, seg.Blocks, slots)
	case seg.ShardSizeBytes%volume.BlockSizeBytes != 0 || seg.ShardSizeBytes*uint64(seg.DataShards) < uint64(slots)*volume.BlockSizeBytes:
		return fmt.Errorf("segment %d: shards of %d bytes cannot hold %d blocks", seg.Id, seg.ShardSizeBytes, slots)
	}
	return nil
}
