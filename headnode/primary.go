package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/ballast-storage/ballast/headnode/blockcache"
	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/headnode/replica"
	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// A segment's slots are volume blocks: this fails to compile if they differ.
var _ = [1]struct{}{}[ec.BlockSize-volume.BlockSizeBytes]

const (
	blockSize = volume.BlockSizeBytes
	// maxBatchRecords and maxBatchBytes bound one group commit.
	maxBatchRecords = 512
	maxBatchBytes   = 16 << 20
	// maxQueuedBytes bounds the writes waiting for the committer; writers
	// beyond it wait before they are sequenced (back-pressure).
	maxQueuedBytes = 64 << 20
	// catchUpChunk bounds one catch-up message to a secondary.
	catchUpChunk = 256
)

// pendingWrite is one record on its way through the committer.
type pendingWrite = replica.Pending

// primaryVolume orders and commits the writes of one volume at its
// primary. Writers build whole-block records in the sequencer, in ticket
// order; one committer goroutine turns the queue into batches, appends
// each to the local log and sends it to the secondary at the same time,
// and completes the batch's writes only when both copies are durable.
type primaryVolume struct {
	vol         *ballastpb.Volume // id, epoch and placement at activation
	store       *blockstore.Store
	cache       *readCache // nil: none (tests)
	ahead       readAhead  // sequential reads, with the cache
	dial        linkDialer
	log         *slog.Logger
	replTimeout time.Duration

	queueBytes *semaphore.Weighted // bytes of queued writes, at most maxQueuedBytes

	// seq orders the records and holds the overlay (headnode/replica).
	seq *replica.Sequencer

	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	// Owned by the committer goroutine.
	link              replicaLink
	replicatedThrough uint64
	// secondaryFull is set by the committer from the secondary's replies:
	// client writes are refused while its disk is nearly full, and the
	// committer asks it again every secondaryProbeInterval meanwhile.
	secondaryFull atomic.Bool
	// secondaryJournalFull is set likewise: the secondary's journal is at
	// its high-water mark, and client writes wait (waitForJournalRoom).
	secondaryJournalFull atomic.Bool
	// segmentWrites says the session's secondary applies segment-write
	// records (a secondary of an older build would take one for an empty
	// write): large writes go straight to segments only while it does.
	segmentWrites atomic.Bool
	// inSync says a session is open and reconciled: the secondary holds
	// no record this node lacks. It does not after a start, or after a
	// batch failed (locally, perhaps after the secondary applied it),
	// until the next session adopts what the secondary holds beyond: the
	// audit deletes no shard as an orphan meanwhile (a segment only the
	// secondary's log names yet would lose its data).
	inSync atomic.Bool
	// The open session's secondary, the incarnation its hello reported,
	// whether the session began with a full copy, and whether it reported
	// the secondary in sync.
	linkSecondary   string
	linkIncarnation string
	linkFull        bool
	linkReported    bool

	// remote reaches the sleds; nil when the rack has none configured for
	// this node (then nothing is ever flushed and every block is local).
	remote *remoteIO
	// maint flushes, compacts and repairs the volume's segments;
	// segWriter puts large client writes straight into segments. Both
	// nil without remote.
	maint     *maintainer
	segWriter *segmentWriter
	// writtenBytes counts bytes committed since the flusher last looked,
	// so a burst of writes triggers a flush before the timer does.
	writtenBytes atomic.Int64

	// gate admits requests by the volume's attachment; nil in tests of
	// the write path alone (every request admitted).
	gate *attachGate
	// cut holds the writes while a consistency group's cut is taken.
	cut *cutHold
	// disk refuses client writes while the data disk is nearly full;
	// maintenance records (submit) go on, since flushing frees space.
	// nil in tests of the write path alone (every write admitted).
	disk *diskGuard

	// auth says whether this node may still act as the volume's primary
	// and where its secondaries are now; nil in tests of the write path
	// alone (always allowed, placement fixed at activation).
	auth authority
}

// authority is what the rest of the head node tells a primary.
type authority interface {
	// current returns the volume as this node's directory holds it now.
	current(id uint64) (*ballastpb.Volume, bool)
	// awaitLease waits, up to wait, until this node holds the volume's
	// lease at epoch. It fails with ErrStopped when the node was deposed,
	// or when the wait or ctx ends first.
	awaitLease(ctx context.Context, vol, epoch uint64, wait time.Duration) error
	// reportInSync tells the group, in the background and retrying, that
	// node, as incarnation, holds a full copy of the volume at epoch.
	reportInSync(vol *ballastpb.Volume, node, incarnation string)
	// holdsCopy says whether node's current incarnation holds the copy
	// vol's record credits it with (volume.Directory.HoldsCopy).
	holdsCopy(vol *ballastpb.Volume, node string) bool
	// incarnation returns the incarnation node registered in vol's group.
	incarnation(vol *ballastpb.Volume, node string) (string, bool)
}

// syncTimeout bounds one full sync of a volume to a new secondary.
const syncTimeout = 10 * time.Minute

// syncChunkBytes bounds the block data of one full-sync message.
const syncChunkBytes = 4 << 20

func newPrimaryVolume(vol *ballastpb.Volume, store *blockstore.Store, dial linkDialer, replTimeout time.Duration, log *slog.Logger, remote *remoteIO, auth authority) *primaryVolume {
	p := &primaryVolume{
		auth:        auth,
		vol:         vol,
		store:       store,
		dial:        dial,
		log:         log.With("volume", vol.Name, "volume_id", vol.Id),
		replTimeout: replTimeout,
		queueBytes:  semaphore.NewWeighted(maxQueuedBytes),
		seq:         replica.NewSequencer(),
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		cut:         newCutHold(),
	}
	go p.commitLoop()
	if remote != nil {
		p.remote = remote
		p.maint = newMaintainer(p, remote)
		p.segWriter = newSegmentWriter(p)
		if remote.manual {
			close(p.maint.done) // tests drive the steps themselves
		} else {
			go p.maint.run()
		}
	}
	return p
}

// ErrStopped is returned for requests to a volume that is shutting down or
// no longer served by this head node.
var ErrStopped = errors.New("headnode: volume stopped")

// Close stops the committer; queued writes fail with ErrStopped.
func (p *primaryVolume) Close() {
	p.ahead.close()
	if p.gate != nil {
		p.gate.close()
	}
	p.cut.close()
	if !p.seq.Stop() {
		<-p.done
		return
	}
	close(p.stop)
	<-p.done
	if p.segWriter != nil {
		p.segWriter.close()
	}
	if p.maint != nil {
		<-p.maint.done
	}
	if p.cache != nil {
		p.cache.stop(p.vol.Id)
	}
}

// read fills dst from the volume at byte offset off. Bounds are checked by
// the caller. Reads see only what the store holds: every acknowledged write
// is there (the local append precedes the acknowledgement), and a write still
// in flight, which may yet fail, is never shown and then taken back. Blocks
// flushed to the sleds are fetched from them, reconstructed from parity
// when a shard cannot be read.
func (p *primaryVolume) read(ctx context.Context, off uint64, dst []byte) error {
	// A read is served only under the lease, checked before and again
	// after: then no other primary can have acknowledged a write since
	// the store was read (one is promoted only after this lease ends).
	if err := p.leaseHeld(ctx); err != nil {
		return err
	}
	if err := p.readUnderLease(ctx, off, dst); err != nil {
		return err
	}
	return p.leaseHeld(ctx)
}

// allocation describes [off, off+length) as extents of data and holes
// (blockstore.Allocation), under the lease like a read. It may describe
// less than length, never more; a block partly in the range counts whole.
func (p *primaryVolume) allocation(ctx context.Context, off, length uint64) ([]blockwire.Extent, error) {
	if length == 0 {
		return nil, fmt.Errorf("block status of an empty range at %d", off)
	}
	if err := p.leaseHeld(ctx); err != nil {
		return nil, err
	}
	first := off / blockSize
	runs, err := p.store.Allocation(p.vol.Id, first, (off+length-1)/blockSize-first+1)
	if err != nil {
		return nil, err
	}
	if err := p.leaseHeld(ctx); err != nil {
		return nil, err
	}
	ext := make([]blockwire.Extent, 0, len(runs))
	skip := off - first*blockSize // the part of the first block before off
	left := length
	for _, r := range runs {
		n := min(r.Blocks*blockSize-skip, left)
		skip = 0
		ext = append(ext, blockwire.Extent{Length: n, Hole: r.Hole})
		if left -= n; left == 0 {
			break
		}
	}
	return ext, nil
}

// leaseHeld waits until the node holds the volume's lease.
func (p *primaryVolume) leaseHeld(ctx context.Context) error {
	if p.auth == nil {
		return nil
	}
	return p.auth.awaitLease(ctx, p.vol.Id, p.vol.Epoch, p.replTimeout)
}

func (p *primaryVolume) readUnderLease(ctx context.Context, off uint64, dst []byte) error {
	first := off / blockSize
	last := (off + uint64(len(dst)) - 1) / blockSize
	buf := dst
	aligned := off%blockSize == 0 && len(dst)%blockSize == 0
	if !aligned {
		buf = make([]byte, (last-first+1)*blockSize)
	}
	count := last - first + 1
	var fill *blockcache.Fill
	if p.cache != nil {
		// Large reads neither fill the cache nor read ahead.
		goAhead := p.ahead.note(first, count) && count < maxFillReadBlocks
		// A read the readahead is fetching waits for it rather than
		// fetching the same blocks again.
		if err := p.ahead.await(ctx, first, count); err != nil {
			return err
		}
		if p.cache.readCached(p.vol.Id, first, buf) {
			if !aligned {
				copy(dst, buf[off-first*blockSize:])
			}
			if goAhead {
				p.readAhead(first + count)
			}
			return nil
		}
		// Begun before the lookup: a commit after it makes the fill stale.
		// A large read is a scan (a copy, a backup) more often than not:
		// it is not worth the cache's bookkeeping, block by block.
		if count <= maxFillReadBlocks {
			fill = p.cache.c.StartFill(p.vol.Id, first, count)
			defer fill.Done()
		}
		if goAhead {
			p.readAhead(first + count)
		}
	}
	if err := p.readStore(ctx, first, buf); err != nil {
		return err
	}
	if fill != nil {
		for i := uint64(0); i < count; i++ {
			fill.Put(first+i, buf[i*blockSize:(i+1)*blockSize])
		}
	}
	if !aligned {
		copy(dst, buf[off-first*blockSize:])
	}
	return nil
}

// readStore fills buf with the blocks from first, from the store and the
// sleds.
func (p *primaryVolume) readStore(ctx context.Context, first uint64, buf []byte) error {
	for attempt := 0; ; attempt++ {
		lr, err := p.store.ReadLocal(p.vol.Id, first, buf)
		if err != nil {
			return err
		}
		if len(lr.Remote) == 0 {
			return nil
		}
		if p.remote == nil {
			return fmt.Errorf("volume %s: blocks live on sleds this head node cannot reach", p.vol.Name)
		}
		err = p.remote.fetch(ctx, p.vol, buf, lr, p.maint.requestRepair)
		if err == nil {
			return nil
		}
		// A segment freed by compaction between the lookup and the fetch:
		// look the blocks up again.
		if attempt < 3 && p.segmentsGone(lr) {
			continue
		}
		return err
	}
}

// segmentsGone says whether any segment a read named no longer exists.
func (p *primaryVolume) segmentsGone(lr blockstore.LocalRead) bool {
	for id := range lr.Segments {
		if seg, _, err := p.store.Segment(p.vol.Id, id); err == nil && seg == nil {
			return true
		}
	}
	return false
}

// storedBlock returns a block as the store (or the sleds) hold it, for a
// read-modify-write the sequencer orders (under its lock).
func (p *primaryVolume) storedBlock(b uint64) ([]byte, error) {
	out := make([]byte, blockSize)
	// A flushed block comes from the sleds, under the sequencer's lock;
	// such partial writes are rare (clients write whole 4 KiB blocks).
	ctx, cancel := context.WithTimeout(context.Background(), p.replTimeout)
	defer cancel()
	if err := p.read(ctx, b*blockSize, out); err != nil {
		return nil, err
	}
	return out, nil
}

// submit commits a maintenance record (flush, compaction, shard move,
// segment free) through the committer, in order with the writes, and
// waits until every replica holds it. An empty record is a barrier: once
// it is durable on both replicas under the lease, so is every record
// before it.
func (p *primaryVolume) submit(ctx context.Context, rec *ballastpb.LogRecord) error {
	pw, err := p.queueRecord(ctx, rec, 1, nil)
	if err != nil {
		return err
	}
	select {
	case err := <-pw.Done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("record of the committer's own: %w", ctx.Err())
	}
}

// queueRecord queues a record of its own for the committer, once cost
// bytes of the write queue are free. admit, if set, runs under the
// sequencer's lock just before the record is queued (and may hold blocks
// in the overlay for it); its error keeps it out.
func (p *primaryVolume) queueRecord(ctx context.Context, rec *ballastpb.LogRecord, cost int64, admit func(hold func(block uint64, data []byte)) error) (*pendingWrite, error) {
	if err := p.queueBytes.Acquire(ctx, cost); err != nil {
		return nil, fmt.Errorf("waiting for write queue: %w", err)
	}
	pw, err := p.seq.Queue(rec, cost, admit)
	if err != nil {
		p.queueBytes.Release(cost)
		return nil, stoppedAs(err)
	}
	p.wakeCommitter()
	return pw, nil
}

// wakeCommitter tells the committer that records are queued.
func (p *primaryVolume) wakeCommitter() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// stoppedAs turns the sequencer's stop into this package's.
func stoppedAs(err error) error {
	if errors.Is(err, replica.ErrStopped) {
		return ErrStopped
	}
	return err
}

// waitForJournalRoom holds a client write back, before it is ordered,
// while this node's journal or the secondary's is at its high-water mark,
// and asks for a flush: writes slow down while the flush frees the
// journals, they do not fail. The flush's own records, ordered among the
// writes, never wait here.
func (p *primaryVolume) waitForJournalRoom(ctx context.Context) error {
	for i := 0; ; i++ {
		if !p.store.JournalHigh() && !p.secondaryJournalFull.Load() {
			return nil
		}
		if i%20 == 0 {
			// Now and then: a release reads every 'B' key.
			p.store.NoteJournalFill()
			if p.maint != nil {
				p.maint.kick()
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for room in the journals of volume %s: %w", p.vol.Name, ctx.Err())
		case <-p.stop:
			return ErrStopped
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// write stores data at byte offset off. With zero=true data is nil and
// length bytes of zeroes are written; removable says whole zero blocks may
// become holes (trim, or write-zeroes without NO_HOLE). A named write
// (id) tags its records, and once a record is queued it waits for the
// record's outcome whatever ctx says: its resend must not run while a
// record of it may still land (writeops.go).
func (p *primaryVolume) write(ctx context.Context, off, length uint64, data []byte, zero, removable bool, id writeID) error {
	if length == 0 {
		return nil
	}
	if p.secondaryFull.Load() {
		return fmt.Errorf("%w: the data disk of volume %s's secondary is nearly full", ErrNoSpace, p.vol.Name)
	}
	if p.disk != nil {
		// A write costs its blocks' data; trims and zeroes cost their
		// records, little, but are refused alike: a full disk takes no
		// new writes of any kind until space is back.
		n := int64(len(data))
		if data == nil {
			n = blockSize
		}
		if err := p.disk.admit(n); err != nil {
			return err
		}
	}
	if !(zero && removable) {
		if err := p.waitForJournalRoom(ctx); err != nil {
			return err
		}
	}
	if p.directWriteFor(off, length, data) {
		rest, err := p.writeDirect(ctx, off, data, id)
		if err != nil {
			return err
		}
		for _, part := range rest {
			if err := p.writeThroughJournal(ctx, part.off, uint64(len(part.data)), part.data, false, false, id); err != nil {
				return err
			}
		}
		return nil
	}
	return p.writeThroughJournal(ctx, off, length, data, zero, removable, id)
}

// writeThroughJournal orders a write's blocks as a record of their own
// and waits until it is durable on both replicas.
func (p *primaryVolume) writeThroughJournal(ctx context.Context, off, length uint64, data []byte, zero, removable bool, id writeID) error {
	cost := int64(min(length, maxBatchBytes))
	if err := p.queueBytes.Acquire(ctx, cost); err != nil {
		return fmt.Errorf("waiting for write queue: %w", err)
	}
	w := replica.Write{Off: off, Length: length, Data: data, Zero: zero, Removable: removable}
	if id.named() {
		w.Tag = id.tag(off, length)
	}
	pw, err := p.seq.Sequence(w, cost, p.storedBlock)
	if err != nil {
		p.queueBytes.Release(cost)
		return stoppedAs(err)
	}
	p.wakeCommitter()
	if id.named() {
		return <-pw.Done
	}
	select {
	case err := <-pw.Done:
		return err
	case <-ctx.Done():
		// The write stays queued and may still land; its outcome is unknown.
		return fmt.Errorf("write at %d: %w", off, ctx.Err())
	}
}

// The committer streams batches: up to maxWindowBatches (and
// maxWindowBytes of writes) are in flight at once, each in the local
// journal and on its way to the secondary while the ones before it sync.
// They complete in order; a write is acknowledged only when its batch is
// durable on both and the lease is held.
const (
	maxWindowBatches = 4
	// maxWindowBytes keeps what a secondary may hold beyond the primary
	// (after the primary failed its own appends) within one hello reply.
	maxWindowBytes = maxBatchBytes
)

// inflightBatch is a batch the committer has begun.
type inflightBatch struct {
	batch   []*pendingWrite
	records []*ballastpb.LogRecord
	bytes   int64
	cancel  context.CancelFunc
	// beginFailed says begin failed before the batch had seqs (no
	// session, or the store's last seq unreadable): nothing of it is
	// anywhere. Set before begin returns.
	beginFailed bool
	// Set by the batch's goroutine before done closes.
	localErr, replErr error
	secondaryLast     uint64
	// finished closes once the local append is finished, waited once the
	// secondary's reply is read: the next batch's goroutine does each in
	// turn after this one.
	finished, waited, done chan struct{}
}

func (b *inflightBatch) lastSeq() uint64 { return b.records[len(b.records)-1].Seq }

func (p *primaryVolume) commitLoop() {
	defer close(p.done)
	var window []*inflightBatch
	defer func() {
		for _, b := range window {
			<-b.done
			b.cancel()
			p.finish(b.batch, ErrStopped)
		}
		if p.link != nil {
			p.link.Close()
		}
		for _, pw := range p.seq.Drain() {
			pw.Done <- ErrStopped
			p.queueBytes.Release(pw.Bytes)
		}
	}()
	stopping := false
	for {
		// Begin batches while the window has room, the link is up and
		// nothing failed.
		for !stopping && len(window) < maxWindowBatches {
			var used int64
			for _, b := range window {
				used += b.bytes
			}
			if len(window) > 0 && (p.link == nil || window[len(window)-1].beginFailed) {
				break
			}
			batch := p.takeBatch(maxWindowBytes-used, len(window) == 0)
			if len(batch) == 0 {
				break
			}
			window = append(window, p.begin(batch, window))
		}
		if len(window) == 0 {
			if stopping {
				return
			}
			// While the secondary's disk is full no batch may come to
			// tell when it has room again: ask it.
			var probe <-chan time.Time
			if p.secondaryFull.Load() || p.secondaryJournalFull.Load() {
				probe = time.After(secondaryProbeInterval)
			}
			select {
			case <-p.stop:
				return
			case <-p.wake:
			case <-probe:
				p.probeSecondary()
			}
			continue
		}
		head := window[0]
		select {
		case <-head.done:
		case <-p.wake:
			continue
		case <-p.stop:
			// The batches in flight complete; nothing new begins.
			stopping = true
			<-head.done
		}
		if head.localErr == nil && head.replErr == nil {
			window = window[1:]
			p.complete(head)
			continue
		}
		// A failure: wait for every batch in flight, then settle them in
		// order on a new session.
		for _, b := range window {
			<-b.done
		}
		p.recover(window)
		window = nil
	}
}

// begin starts one batch: seqs after the last one begun, into the local
// journal and onto the link, and a goroutine that finishes the local
// append and reads the secondary's reply in turn after the batches before.
func (p *primaryVolume) begin(batch []*pendingWrite, window []*inflightBatch) *inflightBatch {
	ctx, cancel := context.WithTimeout(context.Background(), p.replTimeout)
	b := &inflightBatch{batch: batch, cancel: cancel,
		finished: make(chan struct{}), waited: make(chan struct{}), done: make(chan struct{})}
	for _, pw := range batch {
		b.bytes += pw.Bytes
	}
	var prev *inflightBatch
	if len(window) > 0 {
		prev = window[len(window)-1]
	}
	fail := func(local, repl error) *inflightBatch {
		b.beginFailed, b.localErr, b.replErr = true, local, repl
		close(b.finished)
		close(b.waited)
		close(b.done)
		return b
	}
	var next uint64
	if prev == nil {
		// Nothing in flight: a new session if needed, and the seqs follow
		// the store's.
		p.checkLinkCopy()
		if err := p.connect(ctx); err != nil {
			return fail(nil, fmt.Errorf("%w: volume %s: %w", ErrReplication, p.vol.Name, err))
		}
		last, err := p.store.LastSeq(p.vol.Id)
		if err != nil {
			return fail(err, nil)
		}
		next = last + 1
	} else {
		next = prev.lastSeq() + 1
	}
	b.records = make([]*ballastpb.LogRecord, len(batch))
	for i, pw := range batch {
		pw.Record.Seq = next + uint64(i)
		b.records[i] = pw.Record
	}
	link := p.link
	// Sent first: the secondary's journal write overlaps the local one.
	// The local append also trims the log entries both replicas hold.
	req := &ballastpb.ReplicateRequest{Records: b.records, ReplicatedThrough: p.replicatedThrough}
	sendErr := link.Start(ctx, req)
	local, localErr := p.store.BeginAppend(p.vol.Id, b.records, p.replicatedThrough)
	go func() {
		defer close(b.done)
		if prev != nil {
			<-prev.finished
		}
		switch {
		case localErr != nil:
			b.localErr = fmt.Errorf("append to local log: %w", localErr)
		case prev != nil && prev.localErr != nil:
			// Begun after a local failure: never applied (Finish fails).
			b.localErr = fmt.Errorf("append to local log: %w", local.Finish())
		default:
			if err := local.Finish(); err != nil {
				b.localErr = fmt.Errorf("append to local log: %w", err)
			}
		}
		close(b.finished)
		if prev != nil {
			<-prev.waited
		}
		if sendErr == nil {
			b.secondaryLast, b.replErr = link.Wait(ctx)
		} else {
			b.replErr = sendErr
		}
		if b.replErr == nil && b.secondaryLast < b.lastSeq() {
			b.replErr = fmt.Errorf("secondary is at seq %d after a batch through %d", b.secondaryLast, b.lastSeq())
		}
		close(b.waited)
	}()
	return b
}

// complete acknowledges a batch durable on both replicas, under the
// lease: a deposed primary acknowledges nothing.
func (p *primaryVolume) complete(b *inflightBatch) {
	b.cancel()
	p.replicatedThrough = max(p.replicatedThrough, b.lastSeq())
	if p.link != nil {
		p.noteSecondaryDisk()
	}
	err := p.leaseHeld(context.Background())
	p.finish(b.batch, err)
	if err != nil {
		return
	}
	var written int64
	for _, r := range b.records {
		written += int64(len(r.Blocks)) * blockSize
	}
	if p.maint != nil && (p.writtenBytes.Add(written) >= p.remote.cfg.FlushThresholdBytes ||
		p.store.JournalPressure() || (p.link != nil && p.link.JournalPressure())) {
		p.maint.kick()
	}
}

// recover settles a window in which a batch failed, once every batch in it
// is done. A batch whose local append failed fails, and so does every
// batch after it (the secondary may hold them: the next session's hello
// gives them back, so their outcome is unknown, as for any failed write).
// The batches before it are in the local log: if the secondary did not
// confirm them, a new session (perhaps with a secondary that replaced a
// lost one) brings it through the log, so the writes wait rather than
// fail.
func (p *primaryVolume) recover(window []*inflightBatch) {
	if b := window[0]; b.beginFailed {
		// Alone in the window (nothing begins after it): it failed whole.
		b.cancel()
		p.finish(b.batch, errors.Join(b.localErr, b.replErr))
		return
	}
	good := len(window)
	var localErr error
	for i, b := range window {
		if b.localErr != nil {
			good, localErr = i, b.localErr
			break
		}
	}
	replFailed := false
	for _, b := range window[:good] {
		replFailed = replFailed || b.replErr != nil
	}
	p.dropLink()
	var err error
	if replFailed {
		p.log.Info("replication failed; reconnecting", "err", firstReplErr(window[:good]))
		ctx, cancel := context.WithTimeout(context.Background(), p.replTimeout)
		if cerr := p.connect(ctx); cerr != nil {
			err = fmt.Errorf("%w: volume %s: %w (after %w)", ErrReplication, p.vol.Name, cerr, firstReplErr(window[:good]))
		}
		cancel()
	}
	for _, b := range window[:good] {
		if err != nil {
			b.cancel()
			p.finish(b.batch, err)
			continue
		}
		p.complete(b)
	}
	for _, b := range window[good:] {
		b.cancel()
		if b.localErr == nil {
			b.localErr = localErr
		}
		p.finish(b.batch, b.localErr)
	}
}

func firstReplErr(window []*inflightBatch) error {
	for _, b := range window {
		if b.replErr != nil {
			return b.replErr
		}
	}
	return nil
}

// secondaryProbeInterval is how often a primary asks a secondary whose
// disk was full whether it has room again.
const secondaryProbeInterval = time.Second

// probeSecondary sends the secondary a batch of no records, whose reply
// says whether its disk still is nearly full.
func (p *primaryVolume) probeSecondary() {
	ctx, cancel := context.WithTimeout(context.Background(), p.replTimeout)
	defer cancel()
	if err := p.connect(ctx); err != nil {
		p.log.Debug("probe secondary", "err", err)
		return
	}
	if _, err := p.link.Send(ctx, &ballastpb.ReplicateRequest{ReplicatedThrough: p.replicatedThrough}); err != nil {
		p.dropLink()
		p.log.Debug("probe secondary", "err", err)
		return
	}
	p.noteSecondaryDisk()
}

// noteSecondaryDisk records what the secondary's last reply said of its
// disk, logging a change.
func (p *primaryVolume) noteSecondaryDisk() {
	p.secondaryJournalFull.Store(p.link.JournalFull())
	full := p.link.DiskFull()
	if p.secondaryFull.Swap(full) != full {
		if full {
			p.log.Warn("the secondary's data disk is nearly full: client writes are refused")
		} else {
			p.log.Info("the secondary's data disk has room again: client writes resume")
		}
	}
}

// takeBatch takes the queued writes of the next batch, of at most limit
// bytes (at least one write if first: nothing else is in flight).
func (p *primaryVolume) takeBatch(limit int64, first bool) []*pendingWrite {
	return p.seq.Take(min(limit, maxBatchBytes), maxBatchRecords, first)
}

// finish completes a batch and drops its overlay entries, which the store
// now holds (or which failed, and so read as what the store holds).
func (p *primaryVolume) finish(batch []*pendingWrite, err error) {
	p.seq.Release(batch)
	for _, pw := range batch {
		pw.Done <- err
		p.queueBytes.Release(pw.Bytes)
	}
}

// connect makes sure a reconciled session with the secondary is open,
// retrying until ctx ends: a secondary that is restarting, or whose copy of
// the directory has not yet applied the volume's creation, answers soon,
// and a write should see latency rather than an error for that.
func (p *primaryVolume) connect(ctx context.Context) error {
	backoff := 10 * time.Millisecond
	for {
		err := p.ensureLink(ctx)
		if err == nil {
			p.inSync.Store(true)
			p.noteSecondaryDisk()
			return nil
		}
		p.dropLink()
		if errors.Is(err, ErrStopped) || errors.Is(err, errVolumeGone) {
			return err
		}
		p.log.Debug("replication session failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-p.stop:
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (p *primaryVolume) dropLink() {
	p.inSync.Store(false)
	if p.link != nil {
		p.link.Close()
		p.link = nil
	}
}

// ensureLink opens a session with the secondary if there is none and
// brings both logs to the same seq: it adopts what the secondary holds
// beyond ours, and sends what we hold beyond the secondary's.
func (p *primaryVolume) ensureLink(ctx context.Context) error {
	if p.link != nil {
		return nil
	}
	vol := p.vol
	if p.auth != nil {
		cur, ok := p.auth.current(p.vol.Id)
		switch {
		case !ok:
			return fmt.Errorf("%w: %s", errVolumeGone, p.vol.Name)
		case cur.Epoch != p.vol.Epoch || cur.Primary != p.vol.Primary:
			return fmt.Errorf("%w: volume %s is at epoch %d with primary %s", ErrStopped, cur.Name, cur.Epoch, cur.Primary)
		}
		vol = cur
	}
	if len(vol.Secondaries) == 0 {
		return fmt.Errorf("volume has no secondary")
	}
	secondary := vol.Secondaries[0]
	// A secondary that is catching up, or whose node lost the copy it was
	// credited with, may hold another history of the volume: it gets a
	// full copy, never a reconciliation.
	full := slices.Contains(vol.CatchingUp, secondary) || (p.auth != nil && !p.auth.holdsCopy(vol, secondary))
	link, err := p.dial(ctx, vol, secondary)
	if err != nil {
		return fmt.Errorf("connect to secondary %s: %w", secondary, err)
	}
	p.link = link
	last, err := p.store.LastSeq(p.vol.Id)
	if err != nil {
		return err
	}
	reply, err := link.Hello(ctx, &ballastpb.ReplicateRequest{
		VolumeId:       p.vol.Id,
		Epoch:          p.vol.Epoch,
		PrimaryLastSeq: last,
		SyncBegin:      full,
	})
	if err != nil {
		return fmt.Errorf("hello to secondary %s: %w", secondary, err)
	}
	p.linkSecondary, p.linkIncarnation, p.linkFull, p.linkReported = secondary, reply.Incarnation, false, false
	p.segmentWrites.Store(slices.Contains(reply.Features, featureSegmentWrite))
	if !full && reply.NeedsSync {
		if _, err := link.Send(ctx, &ballastpb.ReplicateRequest{SyncBegin: true}); err != nil {
			return fmt.Errorf("begin full sync of secondary %s: %w", secondary, err)
		}
		full = true
	}
	if !full {
		err = p.reconcile(ctx, link, reply, last)
		if !errors.Is(err, ErrSeqGap) {
			return err
		}
		// Our log no longer holds what the secondary lacks.
		p.log.Info("secondary is behind the log; sending a full copy", "secondary", secondary)
		if _, err := link.Send(ctx, &ballastpb.ReplicateRequest{SyncBegin: true}); err != nil {
			return fmt.Errorf("begin full sync of secondary %s: %w", secondary, err)
		}
	}
	if err := p.fullSync(link, secondary); err != nil {
		return err
	}
	p.linkFull = true
	if p.auth != nil && needsCopy(p.auth, vol, secondary) {
		p.auth.reportInSync(vol, secondary, reply.Incarnation)
		p.linkReported = true
	}
	return nil
}

// checkLinkCopy deals with an open session whose secondary the group has
// stopped crediting with a copy (its node registered a new incarnation
// after the session began): a session that began with a full copy to
// that incarnation reports it in sync; any other is dropped, so that the
// next one sends a full copy.
func (p *primaryVolume) checkLinkCopy() {
	if p.link == nil || p.auth == nil || p.linkReported {
		return
	}
	cur, ok := p.auth.current(p.vol.Id)
	if !ok || !slices.Contains(cur.Secondaries, p.linkSecondary) || !needsCopy(p.auth, cur, p.linkSecondary) {
		return
	}
	inc, registered := p.auth.incarnation(cur, p.linkSecondary)
	if p.linkFull && p.linkIncarnation != "" && registered && inc == p.linkIncarnation {
		p.auth.reportInSync(cur, p.linkSecondary, p.linkIncarnation)
		p.linkReported = true
		return
	}
	p.log.Info("secondary's copy is void; sending it a full copy", "secondary", p.linkSecondary)
	p.dropLink()
}

// reconcile brings a session's two logs to the same seq: it adopts what the
// secondary holds beyond ours, and sends what we hold beyond the
// secondary's.
func (p *primaryVolume) reconcile(ctx context.Context, link replicaLink, reply *ballastpb.ReplicateReply, last uint64) error {
	if len(reply.RecordsAhead) > 0 {
		if err := p.store.Append(p.vol.Id, reply.RecordsAhead, 0); err != nil {
			return fmt.Errorf("adopt %d records from secondary: %w", len(reply.RecordsAhead), err)
		}
		p.log.Info("adopted records from secondary", "count", len(reply.RecordsAhead))
		var err error
		if last, err = p.store.LastSeq(p.vol.Id); err != nil {
			return err
		}
	}
	for from := reply.LastSeq + 1; from <= last; {
		recs, err := p.store.LogFrom(p.vol.Id, from, catchUpChunk, maxBatchBytes)
		if err != nil {
			return fmt.Errorf("catch up secondary from %d: %w", from, err)
		}
		if len(recs) == 0 {
			return fmt.Errorf("catch up secondary: log ends before %d", from)
		}
		got, err := link.Send(ctx, &ballastpb.ReplicateRequest{Records: recs})
		if err != nil {
			return fmt.Errorf("catch up secondary: %w", err)
		}
		from = got + 1
	}
	p.replicatedThrough = last
	return nil
}

// fullSync sends the secondary a full copy of the volume (Store.FullState,
// headnode/blockstore's sync.go), after a sync_begin it has acknowledged.
// The committer is blocked meanwhile, so nothing changes under the copy.
func (p *primaryVolume) fullSync(link replicaLink, secondary string) error {
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	chunks := 0
	last, nextSeg, err := p.store.FullState(p.vol.Id, syncChunkBytes, func(rec *ballastpb.StateRecord) error {
		chunks++
		_, err := link.Send(ctx, &ballastpb.ReplicateRequest{SyncState: rec})
		return err
	})
	if err != nil {
		return fmt.Errorf("full sync of secondary %s: %w", secondary, err)
	}
	got, err := link.Send(ctx, &ballastpb.ReplicateRequest{SyncEnd: true, SyncEndSeq: last, SyncNextSegmentId: nextSeg})
	if err != nil {
		return fmt.Errorf("end full sync of secondary %s: %w", secondary, err)
	}
	if got != last {
		return fmt.Errorf("full sync of secondary %s ended at seq %d, want %d", secondary, got, last)
	}
	p.replicatedThrough = last
	p.log.Info("secondary mirrored", "secondary", secondary, "seq", last, "chunks", chunks, "took", time.Since(start))
	return nil
}
