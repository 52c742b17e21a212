package headnode

import (
	"context"
	"fmt"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// A large aligned client write goes straight to a new erasure-coded
// segment: the primary writes and syncs the segment's shards on the sleds,
// then orders a SegmentWriteRecord (the segment and its blocks, no data)
// through the committer like any write. The data crosses the network and
// the disks once (plus parity) instead of through both head nodes'
// journals and again through the flush.
//
// It is as durable as the journal path when acknowledged: the shards are
// synced on k+m distinct sleds (any m may be lost) before the record is
// ordered, and the record is durable on both head nodes (either may be
// lost) before the write is acknowledged. A write whose record fails
// leaves orphan shards, which the audit collects as it does a failed
// flush's. A write that cannot reach enough sleds takes the journal path.

// directWriteFor says whether a write of length bytes of data at off goes
// straight to a segment.
func (p *primaryVolume) directWriteFor(off, length uint64, data []byte) bool {
	if p.maint == nil || data == nil {
		return false
	}
	least := p.remote.cfg.DirectWriteBytes
	return least > 0 && length >= uint64(least) && off%blockSize == 0 && length%blockSize == 0
}

// writeDirect writes data at off, which directWriteFor admitted, as
// segments of at most the configured segment size, and returns how many
// bytes it wrote. An error fails the write; without one, the caller writes
// what is left (the sleds could not take it) through the journal.
func (p *primaryVolume) writeDirect(ctx context.Context, off uint64, data []byte) (written uint64, err error) {
	maxBytes := uint64(p.remote.cfg.segmentBlocks()) * blockSize
	for written < uint64(len(data)) {
		n := min(uint64(len(data))-written, maxBytes)
		ordered, err := p.writeSegmentOf(ctx, off+written, data[written:written+n])
		if err != nil {
			if ordered {
				return written, err
			}
			p.log.Debug("large write takes the journal path", "volume", p.vol.Name, "offset", off+written, "err", err)
			return written, nil
		}
		written += n
	}
	return written, nil
}

// writeSegmentOf writes one segment's worth of a client write: the shards
// first, then the record through the committer. ordered says the record
// was queued, so the write's outcome is the record's.
func (p *primaryVolume) writeSegmentOf(ctx context.Context, off uint64, data []byte) (ordered bool, err error) {
	m := p.maint
	id, err := m.allocSegment()
	if err != nil {
		return false, err
	}
	blocks := make([][]byte, len(data)/blockSize)
	rec := &ballastpb.SegmentWriteRecord{SlotBlocks: make([]uint64, len(blocks))}
	for i := range blocks {
		blocks[i] = data[i*blockSize : (i+1)*blockSize]
		rec.SlotBlocks[i] = off/blockSize + uint64(i)
	}
	seg, shards, err := m.writeSegment(ctx, id, blocks)
	if err != nil {
		return false, err
	}
	rec.Segment = seg
	if err := p.remote.step("segment-write:shards-written"); err != nil {
		return false, err
	}
	// The overlay holds the blocks until the record is applied, for
	// read-modify-writes ordered after it; the data shards hold a copy of
	// them that the caller's buffer does not share.
	pw, err := p.orderSegmentWrite(ctx, rec, func(i int) []byte { return segmentBlock(shards, seg.ShardSizeBytes, i) })
	if err != nil {
		return false, err
	}
	select {
	case err := <-pw.done:
		if err == nil {
			p.remote.stats.directBytes.Add(uint64(len(data)))
		}
		return true, err
	case <-ctx.Done():
		return true, fmt.Errorf("write of segment %d at %d: %w", id, off, ctx.Err())
	}
}

// orderSegmentWrite queues a segment write's record like sequence queues
// a write's, with the blocks' data in the overlay.
func (p *primaryVolume) orderSegmentWrite(ctx context.Context, rec *ballastpb.SegmentWriteRecord, block func(i int) []byte) (*pendingWrite, error) {
	const cost = blockSize // the record, a block of the journal at most
	if err := p.queueBytes.Acquire(ctx, cost); err != nil {
		return nil, fmt.Errorf("waiting for write queue: %w", err)
	}
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		p.queueBytes.Release(cost)
		return nil, ErrStopped
	}
	ticket := p.nextTicket
	p.nextTicket++
	for i, b := range rec.SlotBlocks {
		p.overlay[b] = overlayBlock{ticket: ticket, data: block(i)}
	}
	pw := &pendingWrite{ticket: ticket, record: &ballastpb.LogRecord{SegmentWrite: rec}, bytes: cost, done: make(chan error, 1)}
	p.queue = append(p.queue, pw)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return pw, nil
}

// segmentBlock returns slot i's block in a segment's data shards.
func segmentBlock(shards [][]byte, shardSize uint64, i int) []byte {
	pos := uint64(i) * blockSize
	shard, at := pos/shardSize, pos%shardSize
	return shards[shard][at : at+blockSize]
}
