package headnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/ballast-storage/ballast/headnode/ec"
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
//
// Writes that queue while earlier ones are on their way to the sleds
// share a segment (up to the segment size): fewer, larger shards cost the
// sleds fewer files, syncs and requests per byte.

// maxSegmentWritesInFlight bounds the segments of client writes a volume
// has on their way to the sleds at once; the writes that arrive meanwhile
// queue and go together in the next.
const maxSegmentWritesInFlight = 2

// directWrite is one part (at most a segment) of a client write on its way
// to a segment.
type directWrite struct {
	off  uint64
	data []byte
	tag  *ballastpb.WriteTag // nil: the write is not named
	// encoded closes once data is copied into a segment's shards (or
	// will never be): the caller's buffer is free again.
	encoded chan struct{}
	// done receives the outcome once: ordered says the segment's record
	// was queued, so the outcome is the record's; unordered, nothing of
	// the part was ordered and the caller writes it through the journal.
	done chan directOutcome
}

type directOutcome struct {
	ordered bool
	err     error
}

// segmentWriter gathers a volume's large writes into segments.
type segmentWriter struct {
	p      *primaryVolume
	ctx    context.Context // ends when the volume stops
	cancel context.CancelFunc
	slots  chan struct{} // a token per segment in flight
	wake   chan struct{}

	mu    sync.Mutex
	queue []*directWrite

	wg sync.WaitGroup // the run goroutine and the segments in flight
}

func newSegmentWriter(p *primaryVolume) *segmentWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &segmentWriter{p: p, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, maxSegmentWritesInFlight), wake: make(chan struct{}, 1)}
	w.wg.Add(1)
	go w.run()
	return w
}

// close ends the writer once the volume has stopped: queued writes fail
// unordered, and it waits for the segments in flight.
func (w *segmentWriter) close() {
	w.cancel()
	w.wg.Wait()
}

// directWriteFor says whether a write of length bytes of data at off goes
// straight to a segment.
func (p *primaryVolume) directWriteFor(off, length uint64, data []byte) bool {
	if p.segWriter == nil || data == nil || !p.segmentWrites.Load() {
		return false
	}
	least := p.remote.cfg.DirectWriteBytes
	return least > 0 && length >= uint64(least) && off%blockSize == 0 && length%blockSize == 0
}

// writeDirect writes data at off, which directWriteFor admitted, in parts
// of at most a segment, and returns the parts it did not write (the sleds
// could not take them), for the caller to write through the journal. An
// error fails the write.
func (p *primaryVolume) writeDirect(ctx context.Context, off uint64, data []byte, id writeID) (rest []*directWrite, err error) {
	maxBytes := uint64(p.remote.cfg.segmentBlocks()) * blockSize
	var parts []*directWrite
	for at := uint64(0); at < uint64(len(data)); at += maxBytes {
		n := min(uint64(len(data))-at, maxBytes)
		dw := &directWrite{off: off + at, data: data[at : at+n],
			done: make(chan directOutcome, 1), encoded: make(chan struct{})}
		if id.named() {
			dw.tag = id.tag(dw.off, n)
		}
		parts = append(parts, dw)
	}
	p.segWriter.enqueue(parts)
	// A named write waits for every part's outcome (it always comes):
	// none may land after the write returns.
	stop := ctx.Done()
	if id.named() {
		stop = nil
	}
	var firstErr error
	for _, part := range parts {
		select {
		case out := <-part.done:
			switch {
			case out.ordered && out.err != nil:
				if firstErr == nil {
					firstErr = out.err
				}
			case out.ordered:
				p.remote.stats.directBytes.Add(uint64(len(part.data)))
			default:
				p.log.Debug("large write takes the journal path", "offset", part.off, "err", out.err)
				rest = append(rest, part)
			}
		case <-stop:
			// The parts not yet taken are dropped; the others may still
			// land (the outcome is unknown, as for any write cut short),
			// from their shards' copy of the data, which is made before
			// the caller's buffer is let go.
			p.segWriter.abandon(parts)
			return nil, fmt.Errorf("write at %d: %w", off, ctx.Err())
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return rest, nil
}

func (w *segmentWriter) enqueue(parts []*directWrite) {
	w.mu.Lock()
	w.queue = append(w.queue, parts...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// abandon drops the parts still queued and waits until the others no
// longer read their data.
func (w *segmentWriter) abandon(parts []*directWrite) {
	w.mu.Lock()
	w.queue = slices.DeleteFunc(w.queue, func(dw *directWrite) bool {
		if slices.Contains(parts, dw) {
			close(dw.encoded)
			return true
		}
		return false
	})
	w.mu.Unlock()
	for _, dw := range parts {
		<-dw.encoded
	}
}

// take removes from the queue the writes of the next segment: at least
// one, then as many as fit in a segment, in order.
func (w *segmentWriter) take() []*directWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	limit := w.p.remote.cfg.segmentBlocks() * blockSize
	n, size := 0, 0
	for n < len(w.queue) && (n == 0 || size+len(w.queue[n].data) <= limit) {
		size += len(w.queue[n].data)
		n++
	}
	batch := w.queue[:n:n]
	w.queue = w.queue[n:]
	return batch
}

func (w *segmentWriter) run() {
	defer w.wg.Done()
	defer w.failQueued()
	for {
		select {
		case <-w.wake:
		case <-w.ctx.Done():
			return
		}
		for {
			select {
			case w.slots <- struct{}{}:
			case <-w.ctx.Done():
				return
			}
			batch := w.take()
			if len(batch) == 0 {
				<-w.slots
				break
			}
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				w.write(batch)
				<-w.slots
				select {
				case w.wake <- struct{}{}:
				default:
				}
			}()
		}
	}
}

// failQueued answers the writes still queued when the volume stops.
func (w *segmentWriter) failQueued() {
	w.mu.Lock()
	queued := w.queue
	w.queue = nil
	w.mu.Unlock()
	for _, dw := range queued {
		close(dw.encoded)
		dw.done <- directOutcome{err: ErrStopped}
	}
}

// write puts a batch of writes into one new segment: its shards first,
// then its record through the committer, and answers each write.
func (w *segmentWriter) write(batch []*directWrite) {
	answer := func(out directOutcome) {
		for _, dw := range batch {
			dw.done <- out
		}
	}
	p, m, cfg := w.p, w.p.maint, w.p.remote.cfg
	var blocks [][]byte
	var tags []*ballastpb.WriteTag
	rec := &ballastpb.SegmentWriteRecord{}
	for _, dw := range batch {
		for i := 0; i < len(dw.data); i += blockSize {
			blocks = append(blocks, dw.data[i:i+blockSize])
			rec.SlotBlocks = append(rec.SlotBlocks, (dw.off+uint64(i))/blockSize)
		}
		if dw.tag != nil {
			tags = append(tags, dw.tag)
		}
	}
	shards, size, err := ec.Encode(blocks, cfg.DataShards, cfg.ParityShards)
	for _, dw := range batch {
		close(dw.encoded)
	}
	if err != nil {
		answer(directOutcome{err: err})
		return
	}
	id, err := m.allocSegment()
	if err != nil {
		answer(directOutcome{err: err})
		return
	}
	seg, err := m.storeSegment(w.ctx, id, shards, size, len(blocks))
	if err == nil {
		err = p.remote.step("segment-write:shards-written")
	}
	if err != nil {
		answer(directOutcome{err: err})
		return
	}
	rec.Segment = seg
	// The overlay holds the blocks until the record is applied, for
	// read-modify-writes ordered after it; the data shards hold a copy of
	// them that the callers' buffers do not share.
	pw, err := p.orderSegmentWrite(w.ctx, rec, tags, func(slot int) []byte { return segmentBlock(shards, seg.ShardSizeBytes, slot) })
	if err != nil {
		answer(directOutcome{err: err})
		return
	}
	answer(directOutcome{ordered: true, err: <-pw.Done})
}

// orderSegmentWrite queues a segment write's record like any write's,
// with the blocks' data in the overlay (a block in several slots: the
// last).
func (p *primaryVolume) orderSegmentWrite(ctx context.Context, rec *ballastpb.SegmentWriteRecord, tags []*ballastpb.WriteTag, block func(slot int) []byte) (*pendingWrite, error) {
	const cost = blockSize // the record, a block of the journal at most
	pw, err := p.queueRecord(ctx, &ballastpb.LogRecord{SegmentWrite: rec, Writes: tags}, cost, func(hold func(uint64, []byte)) error {
		if !p.segmentWrites.Load() {
			// The session changed to a secondary that cannot apply the
			// record while the shards were written: the writes take the
			// journal.
			return fmt.Errorf("secondary does not apply %s records", featureSegmentWrite)
		}
		for slot, b := range rec.SlotBlocks {
			hold(b, block(slot))
		}
		return nil
	})
	if errors.Is(err, context.Canceled) {
		return nil, ErrStopped // the writer's context: the volume stops
	}
	return pw, err
}

// segmentBlock returns slot i's block in a segment's data shards.
func segmentBlock(shards [][]byte, shardSize uint64, i int) []byte {
	pos := uint64(i) * blockSize
	shard, at := pos/shardSize, pos%shardSize
	return shards[shard][at : at+blockSize]
}
