package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
)

var (
	// ErrCorrupt marks data that fails its checksum or does not decode:
	// a block read back with the wrong CRC, an unreadable superblock.
	// (A batch that does not check out during replay is not an error: it
	// is where the journal ends.)
	ErrCorrupt = errors.New("journal: corrupt")
	// ErrClosed is returned by calls on a closed Journal.
	ErrClosed = errors.New("journal: closed")
	// ErrReleased is returned by ReadBlock for a location in a batch that
	// Release freed: its zone may already hold other data.
	ErrReleased = errors.New("journal: location released")
)

// Options configure a journal. Zero fields take their defaults.
type Options struct {
	// SizeBytes is the file's size: 8 KiB of superblocks and as many
	// whole zones as fit in the rest, at least 2.
	SizeBytes int64
	// ZoneBytes is the unit of reuse (default 64 MiB; rounded up to a
	// multiple of 4 KiB; at least 16 KiB).
	ZoneBytes int64
	// MaxBatchBytes bounds a batch, header included (default 1 MiB or
	// the zone size if smaller; rounded up to a multiple of 4 KiB; at
	// least 8 KiB). A single Append larger than this gets a batch of its
	// own, as long as it fits in a zone.
	MaxBatchBytes int
	// FS is the filesystem (default OSFS).
	FS FS
	// ZeroAheadBytes is how far ahead of the batches the zeroer writes
	// zeros into blocks the file holds unwritten (zeroer.go; default
	// 8 MiB, negative: never).
	ZeroAheadBytes int64
}

const (
	defaultZoneBytes  = 64 << 20
	defaultBatchBytes = 1 << 20
	// maxSealed bounds the batches sealed and waiting for the writer,
	// besides the open one and the one being written: appenders wait
	// (and so memory stays bounded) when the disk falls behind.
	maxSealed = 2
)

// resolve applies the defaults and checks the options.
func (o Options) resolve() (geometry, int64, error) {
	zb := o.ZoneBytes
	if zb == 0 {
		zb = defaultZoneBytes
	}
	zb = roundUp(zb)
	if zb < minZoneBytes || zb > maxZoneBytes {
		return geometry{}, 0, fmt.Errorf("journal: ZoneBytes %d out of range [%d, %d]", o.ZoneBytes, minZoneBytes, maxZoneBytes)
	}
	size := o.SizeBytes / BlockSize * BlockSize
	zones := (size - superblockArea) / zb
	if size < superblockArea || zones < 2 || zones > maxZones {
		return geometry{}, 0, fmt.Errorf("journal: SizeBytes %d holds %d zones of %d bytes; need 2 to %d",
			o.SizeBytes, max(zones, 0), zb, maxZones)
	}
	mb := int64(o.MaxBatchBytes)
	if mb == 0 {
		mb = min(defaultBatchBytes, zb)
	}
	mb = roundUp(mb)
	if mb < 2*BlockSize || mb > zb {
		return geometry{}, 0, fmt.Errorf("journal: MaxBatchBytes %d out of range [%d, ZoneBytes %d]", o.MaxBatchBytes, 2*BlockSize, zb)
	}
	return geometry{zoneBytes: zb, zones: int(zones)}, mb, nil
}

// Entry is one record of a batch: the caller's metadata and its blocks.
type Entry struct {
	Meta   []byte   // opaque to the journal (at most MaxMetaBytes)
	Blocks [][]byte // each exactly BlockSize bytes; may be empty
}

// Location is where a block lives in the journal.
type Location struct {
	LSN    uint64 // the batch
	Offset int64  // file offset of the 4 KiB block
	CRC    uint32 // CRC32C of the block
}

// Stats is a snapshot of the journal's state.
type Stats struct {
	// UsedBytes counts the zones not yet freed by Release (the current
	// zone up to its end of data); TotalBytes all zones. Appends wait when
	// a batch does not fit in what is free.
	UsedBytes, TotalBytes int64
	HeadLSN               uint64 // the last batch appended (0: none)
	DurableLSN            uint64 // the last batch known durable
	TailLSN               uint64 // the first batch replay would read
	Batches               uint64 // batches written since Open
	Syncs                 uint64 // fdatasyncs that completed batches since Open
	DirectIO              bool   // the file bypasses the page cache
	// ZeroedBytes counts the zeros written ahead of the batches since
	// Open, into blocks the file held unwritten.
	ZeroedBytes int64
}

// Commit is the durability of one batch, shared by every Append that
// joined it.
type Commit struct {
	lsn      uint64
	done     chan struct{}
	err      error
	finished bool // under Journal.mu
}

// LSN is the batch's number.
func (c *Commit) LSN() uint64 { return c.lsn }

// Done is closed once the batch is durable or failed.
func (c *Commit) Done() <-chan struct{} { return c.done }

// Err is nil while the batch is pending and once it is durable; the
// write or sync error that failed it otherwise. Call it after Done.
func (c *Commit) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Wait returns when the batch is durable (nil), failed (its error), or
// ctx ends (ctx.Err(); the batch may still become durable).
func (c *Commit) Wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finishLocked completes c; the first call wins. The caller holds
// Journal.mu.
func (c *Commit) finishLocked(err error) {
	if c.finished {
		return
	}
	c.finished, c.err = true, err
	close(c.done)
}

// batch is a batch not yet written: the open one, a sealed one waiting
// for the writer, or the one being written.
type batch struct {
	lsn       uint64
	off       int64  // file offset of its first block
	markerOff int64  // where to write a zone-end marker first, or -1
	buf       []byte // aligned: header block, data blocks, then the rest of the header once sealed
	table     []byte // the header: fixed part (filled when sealed), then the entry table
	entries   int
	blocks    int
	size      int64  // bytes on disk, once sealed
	prevCRC   uint32 // once sealed
	gen       uint64 // once sealed
	commit    *Commit
	pooled    bool // buf is of maxBatch bytes and goes back to the free list
}

func (b *batch) bytesWith(blocks, tableBytes int) int64 {
	return BlockSize + int64(b.blocks+blocks)*BlockSize + trailerBytes(int64(len(b.table)+tableBytes))
}

// zoneInfo is what the journal knows of a zone in use.
type zoneInfo struct {
	firstLSN     uint64 // its first batch
	firstPrevCRC uint32 // the header CRC of the batch before that
	lastLSN      uint64 // its last batch so far
}

// Journal is an open journal file. Its methods are safe for concurrent
// use.
type Journal struct {
	path     string
	f        File
	g        geometry
	maxBatch int64
	direct   bool

	// sbMu serializes superblock writes (Release) with each other and
	// with Close.
	sbMu  sync.Mutex
	sbBuf []byte

	// syncMu serializes fdatasyncs. Linux reports a writeback error to
	// one sync of the file only; with syncs in turn, a failed one is
	// recorded in syncErr before the next begins, and every later sync
	// fails too, so a sync never succeeds over data another lost.
	syncMu  sync.Mutex
	syncErr error

	writeKick  chan struct{} // cap 1: the writer has work
	syncKick   chan struct{} // cap 1: the syncer has work
	writerDone chan struct{}
	syncerDone chan struct{}
	zeroerDone chan struct{}
	zeroKick   chan struct{} // cap 1: the zeroer may go on
	zeroAhead  int64

	scratch sync.Pool // aligned 4 KiB buffers for ReadBlock into unaligned buffers
	aio     *aioPool  // scattered reads submitted together (aio_linux.go); nil: none

	mu struct {
		sync.Mutex
		// changed is closed and replaced when an appender waiting for
		// space or for the writer should look again.
		changed chan struct{}
		closed  bool
		broken  error // the first write or sync error; fatal
		gen     uint64
		sbSeq   uint64

		nextLSN uint64 // the next batch's LSN
		lastCRC uint32 // the header CRC of the last sealed batch
		nextPos int64  // where the batch after the last sealed one starts
		open    *batch
		sealed  []*batch
		mem     []*batch  // every batch not yet written, in LSN order
		synced  []*Commit // written, waiting for a sync
		syncing bool      // a sync of batches runs (writer.go)
		durable uint64

		zones    []zoneInfo
		tailZone int
		headZone int
		tailLSN  uint64
		released uint64

		batches, syncs uint64
		freeBufs       [][]byte

		// wraps counts the times the head went from the last zone to
		// the first since Open; zeroing is the range the zeroer is
		// writing, if its end is not 0; zeroed counts its bytes.
		wraps   uint64
		zeroing [2]int64
		zeroed  int64
		// zeroWaitFrom, if not 0, is the frontier from which the waiting
		// zeroer has work again (kickZeroerLocked).
		zeroWaitFrom int64
		replayEnd    error // why replay stopped (tests and debugging)
	}
}

// Open opens or creates the journal file at path and replays it: fn (if
// not nil) is called for every entry of every valid batch from the tail,
// in order, with the locations of its blocks. Appends begin after the last
// valid batch.
//
// The tail moves a zone at a time, so replay may return batches below the
// last Release; fn sees their LSN. e.Meta and e.Blocks alias buffers that
// are reused after fn returns: copy what is kept. An error from fn ends
// Open with that error.
func Open(path string, opts Options, fn func(lsn uint64, e Entry, locs []Location) error) (*Journal, error) {
	g, maxBatch, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	fsys := opts.FS
	if fsys == nil {
		fsys = OSFS{}
	}
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|DirectFlag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal %s: open: %w", path, err)
	}
	j := &Journal{
		path:       path,
		f:          f,
		g:          g,
		maxBatch:   maxBatch,
		sbBuf:      alignedBuf(BlockSize),
		aio:        newAIOPool(),
		writeKick:  make(chan struct{}, 1),
		syncKick:   make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		syncerDone: make(chan struct{}),
		zeroerDone: make(chan struct{}),
		zeroKick:   make(chan struct{}, 1),
		zeroAhead:  opts.ZeroAheadBytes,
	}
	if j.zeroAhead == 0 {
		j.zeroAhead = defaultZeroAhead
	}
	j.scratch.New = func() any { b := alignedBuf(BlockSize); return &b }
	if d, ok := f.(directReporter); ok {
		j.direct = d.Direct()
	}
	if err := j.open(fsys, fn); err != nil {
		f.Close()
		return nil, err
	}
	go j.runWriter()
	go j.runSyncer()
	j.startZeroer()
	return j, nil
}

func (j *Journal) open(fsys FS, fn func(uint64, Entry, []Location) error) error {
	sb, fresh, err := j.loadSuperblock()
	if err != nil {
		return err
	}
	if fresh {
		if err := j.f.Allocate(j.g.fileBytes()); err != nil {
			return fmt.Errorf("journal %s: allocate %d bytes: %w", j.path, j.g.fileBytes(), err)
		}
	}
	st, err := j.replay(sb, fn)
	if err != nil {
		return err
	}
	// A new generation, durable before any append: batches this Open
	// writes carry it, so that replay can never take a batch left over
	// from before a crash as the successor of one written after it.
	sb.seq++
	sb.gen++
	if err := j.writeSuperblock(sb); err != nil {
		return err
	}
	if fresh {
		// The file's entry in its directory, before any commit is
		// reported durable.
		if err := fsys.SyncDir(dirOf(j.path)); err != nil {
			return fmt.Errorf("journal %s: sync directory: %w", j.path, err)
		}
	}
	m := &j.mu
	m.changed = make(chan struct{})
	m.gen, m.sbSeq = sb.gen, sb.seq
	m.nextLSN, m.lastCRC, m.nextPos = st.nextLSN, st.lastCRC, st.nextPos
	m.durable = st.nextLSN - 1
	m.zones = st.zones
	m.tailZone, m.headZone = j.g.zoneOf(sb.tailOffset), st.headZone
	m.tailLSN = sb.tailLSN
	m.released = sb.tailLSN
	m.replayEnd = st.end
	return nil
}

// loadSuperblock reads both copies and returns the newer valid one. A
// file whose superblock area is all zeros (new, or created by an Open
// that crashed before its first superblock was written) is fresh: it gets
// a first superblock in memory, written by the caller.
func (j *Journal) loadSuperblock() (superblock, bool, error) {
	size, err := j.f.Size()
	if err != nil {
		return superblock{}, false, fmt.Errorf("journal %s: size: %w", j.path, err)
	}
	buf := alignedBuf(superblockArea)
	if size >= superblockArea {
		if err := readFull(j.f, buf, 0); err != nil {
			return superblock{}, false, fmt.Errorf("journal %s: superblocks: %w", j.path, err)
		}
	}
	a, errA := decodeSuperblock(buf[0:], 0)
	b, errB := decodeSuperblock(buf[BlockSize:], 1)
	var sb superblock
	switch {
	case errA == nil && errB == nil:
		sb = a
		if b.seq > a.seq {
			sb = b
		}
	case errA == nil:
		sb = a
	case errB == nil:
		sb = b
	default:
		for _, c := range buf {
			if c != 0 {
				return superblock{}, false, fmt.Errorf("journal %s: no valid superblock (%v; %v): %w", j.path, errA, errB, ErrCorrupt)
			}
		}
		return superblock{
			zoneBytes:  j.g.zoneBytes,
			zones:      uint32(j.g.zones),
			tailLSN:    1,
			tailOffset: j.g.zoneStart(0),
		}, true, nil
	}
	// An existing journal keeps the geometry it was made with: a size
	// derived from the free space (the head node's default) differs from
	// one start to the next.
	j.g = geometry{zoneBytes: sb.zoneBytes, zones: int(sb.zones)}
	j.maxBatch = min(j.maxBatch, sb.zoneBytes)
	if size < j.g.fileBytes() {
		return superblock{}, false, fmt.Errorf("journal %s: %d bytes, its superblock says %d: %w", j.path, size, j.g.fileBytes(), ErrCorrupt)
	}
	return sb, false, nil
}

// writeSuperblock writes sb to copy seq%2 and syncs. The other copy, the
// previous superblock, stays valid throughout, so a crash here leaves one
// of the two. The caller holds sbMu, or is Open.
func (j *Journal) writeSuperblock(sb superblock) error {
	sb.copy = int(sb.seq % 2)
	clear(j.sbBuf)
	encodeSuperblock(j.sbBuf, &sb)
	if err := writeFull(j.f, j.sbBuf, int64(sb.copy)*BlockSize); err != nil {
		return fmt.Errorf("journal %s: superblock %d: %w", j.path, sb.seq, err)
	}
	if err := j.sync(); err != nil {
		return fmt.Errorf("journal %s: superblock %d: sync: %w", j.path, sb.seq, err)
	}
	return nil
}

// sync is the journal's only call of File.Sync; see syncMu.
func (j *Journal) sync() error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	if j.syncErr != nil {
		return fmt.Errorf("an earlier sync failed: %w", j.syncErr)
	}
	if err := j.f.Sync(); err != nil {
		j.syncErr = err
		return err
	}
	return nil
}

// Append queues entries in the next batch; locs[i][j] is where
// entries[i].Blocks[j] will live. The data is copied; the caller may reuse
// its buffers when Append returns. The entries of one Append are in one
// batch, so replay returns all of them or none.
//
// Append waits (until ctx ends) while the ring has no free zone for the
// batch, or while the writer is behind by more than a few batches; it
// never fails for lack of space. It fails if the journal is closed or
// broken (a write or sync failed: every later Append fails too), or if the
// entries are malformed or together larger than a zone.
//
// The locations may be read with ReadBlock at once: until the batch is
// written, ReadBlock copies from memory.
func (j *Journal) Append(ctx context.Context, entries []Entry) (*Commit, [][]Location, error) {
	if len(entries) == 0 {
		return nil, nil, errors.New("journal: append of no entries")
	}
	blocks, tableBytes := 0, 0
	for i, e := range entries {
		if len(e.Meta) > MaxMetaBytes {
			return nil, nil, fmt.Errorf("journal: entry %d: %d bytes of metadata, more than %d", i, len(e.Meta), MaxMetaBytes)
		}
		for k, b := range e.Blocks {
			if len(b) != BlockSize {
				return nil, nil, fmt.Errorf("journal: entry %d: block %d has %d bytes, not %d", i, k, len(b), BlockSize)
			}
		}
		blocks += len(e.Blocks)
		tableBytes += entryRecordLen(len(e.Meta), len(e.Blocks))
	}
	alone := BlockSize + int64(blocks)*BlockSize + trailerBytes(int64(fixedHeaderLen+tableBytes))
	if fixedHeaderLen+tableBytes > maxHeaderBytes || alone > j.g.zoneBytes {
		return nil, nil, fmt.Errorf("journal: append of %d entries (%d blocks, %d header bytes) does not fit in a zone of %d bytes",
			len(entries), blocks, fixedHeaderLen+tableBytes, j.g.zoneBytes)
	}
	// Checksums and the header's table outside the lock, so that
	// concurrent appenders compute them in parallel.
	crcs := make([]uint32, 0, blocks)
	table := make([]byte, 0, tableBytes)
	for _, e := range entries {
		first := len(crcs)
		for _, b := range e.Blocks {
			crcs = append(crcs, crc32c(b))
		}
		table = appendEntry(table, e.Meta, crcs[first:])
	}

	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if err := j.usableLocked(); err != nil {
			return nil, nil, err
		}
		if b := j.mu.open; b != nil {
			if b.bytesWith(blocks, len(table)) <= j.roomLocked(b) && len(b.table)+len(table) <= maxHeaderBytes {
				return b.commit, j.addLocked(b, entries, crcs, table), nil
			}
			if len(j.mu.sealed) >= maxSealed {
				if err := j.waitLocked(ctx); err != nil {
					return nil, nil, err
				}
				continue
			}
			j.sealLocked(b)
			j.mu.sealed = append(j.mu.sealed, b)
			j.mu.open = nil
			kick(j.writeKick)
		}
		b, err := j.openBatchLocked(ctx, alone)
		if err != nil {
			return nil, nil, err
		}
		if b == nil {
			continue // waited for space; look again
		}
		kick(j.writeKick)
		return b.commit, j.addLocked(b, entries, crcs, table), nil
	}
}

func (j *Journal) usableLocked() error {
	if j.mu.broken != nil {
		return j.mu.broken
	}
	if j.mu.closed {
		return ErrClosed
	}
	return nil
}

// roomLocked is how large the open batch b may grow: to MaxBatchBytes,
// its buffer and the end of its zone.
func (j *Journal) roomLocked(b *batch) int64 {
	return min(j.maxBatch, int64(len(b.buf)), j.g.zoneEnd(j.g.zoneOf(b.off))-b.off)
}

// openBatchLocked opens a batch for an append of size bytes (alone) at
// the next position, or at the start of the next zone if it does not fit
// in the current one. If that zone is not free it frees it (if an earlier
// Release covered it) or waits for a Release, and returns nil for the
// caller to look again.
func (j *Journal) openBatchLocked(ctx context.Context, size int64) (*batch, error) {
	m := &j.mu
	pos, marker := m.nextPos, int64(-1)
	if pos+size > j.g.zoneEnd(m.headZone) {
		nz := j.g.next(m.headZone)
		if nz == m.tailZone {
			// A zone that was still the head when its batches were
			// released can be freed now that the head has moved on.
			if m.tailZone != m.headZone && m.zones[m.tailZone].lastLSN < m.released {
				lsn := m.released
				j.mu.Unlock()
				err := j.Release(lsn)
				j.mu.Lock()
				return nil, err
			}
			return nil, j.waitLocked(ctx)
		}
		if j.g.zoneEnd(m.headZone)-pos >= BlockSize {
			marker = pos
		}
		if nz < m.headZone {
			m.wraps++
			kick(j.zeroKick) // to stop
		}
		m.headZone = nz
		m.zones[nz] = zoneInfo{firstLSN: m.nextLSN, firstPrevCRC: m.lastCRC}
		pos = j.g.zoneStart(nz)
		m.nextPos = pos
	}
	b := &batch{
		lsn:       m.nextLSN,
		off:       pos,
		markerOff: marker,
		table:     make([]byte, fixedHeaderLen, 1024),
		commit:    &Commit{lsn: m.nextLSN, done: make(chan struct{})},
	}
	if size <= j.maxBatch {
		b.pooled = true
		if n := len(m.freeBufs); n > 0 {
			b.buf, m.freeBufs = m.freeBufs[n-1], m.freeBufs[:n-1]
		} else {
			b.buf = alignedBuf(int(j.maxBatch))
		}
	} else {
		b.buf = alignedBuf(int(roundUp(size)))
	}
	m.nextLSN++
	m.zones[m.headZone].lastLSN = b.lsn
	m.open = b
	m.mem = append(m.mem, b)
	j.kickZeroerLocked()
	return b, nil
}

// addLocked copies entries into the open batch b and returns their
// locations.
func (j *Journal) addLocked(b *batch, entries []Entry, crcs []uint32, table []byte) [][]Location {
	locs := make([][]Location, len(entries))
	flat := make([]Location, len(crcs))
	k := 0
	for i, e := range entries {
		locs[i] = flat[k : k+len(e.Blocks) : k+len(e.Blocks)]
		for _, data := range e.Blocks {
			at := BlockSize + int64(b.blocks)*BlockSize
			copy(b.buf[at:at+BlockSize], data)
			flat[k] = Location{LSN: b.lsn, Offset: b.off + at, CRC: crcs[k]}
			b.blocks++
			k++
		}
	}
	b.table = append(b.table, table...)
	b.entries += len(entries)
	return locs
}

// sealLocked closes batch b to appends and lays its header out in its
// buffer: the first block before the data, the rest after it.
func (j *Journal) sealLocked(b *batch) {
	h := header{
		kind:    kindBatch,
		lsn:     b.lsn,
		gen:     j.mu.gen,
		offset:  b.off,
		prevCRC: j.mu.lastCRC,
		hdrLen:  uint32(len(b.table)),
		entries: uint32(b.entries),
		blocks:  uint32(b.blocks),
	}
	putFixedHeader(b.table, &h)
	crc := headerCRC(b.table)
	putUint32(b.table[12:], crc)
	lead := b.buf[:BlockSize]
	n := copy(lead, b.table)
	clear(lead[n:])
	dataEnd := BlockSize + int64(b.blocks)*BlockSize
	trailer := b.buf[dataEnd : dataEnd+trailerBytes(int64(len(b.table)))]
	n = copy(trailer, b.table[n:])
	clear(trailer[n:])
	b.size = h.batchBytes()
	b.prevCRC = h.prevCRC
	b.gen = h.gen
	j.mu.lastCRC = crc
	j.mu.nextPos = b.off + b.size
}

// waitLocked waits, without the lock, until the journal's state changes
// or ctx ends.
func (j *Journal) waitLocked(ctx context.Context) error {
	ch := j.mu.changed
	j.mu.Unlock()
	defer j.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (j *Journal) notifyLocked() {
	close(j.mu.changed)
	j.mu.changed = make(chan struct{})
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// failLocked breaks the journal: the first error is kept, every batch not
// yet durable fails with it, and so does every later call but ReadBlock
// and Stats. There is no retry: after a failed fdatasync the kernel may
// have dropped the dirty pages, so nothing written since the last good
// sync can be trusted.
func (j *Journal) failLocked(err error) {
	m := &j.mu
	if m.broken == nil {
		m.broken = err
	}
	for _, b := range m.mem {
		b.commit.finishLocked(m.broken)
	}
	for _, c := range m.synced {
		c.finishLocked(m.broken)
	}
	m.synced = nil
	m.open, m.sealed = nil, nil
	j.notifyLocked()
	j.kickZeroerLocked()
}

// ReadBlock reads the 4 KiB block at loc into buf[:4096] and checks its
// CRC: an error wrapping ErrCorrupt if it does not match. A block of a
// batch not yet written is copied from memory. A location in a released
// zone returns ErrReleased.
func (j *Journal) ReadBlock(loc Location, buf []byte) error {
	if len(buf) < BlockSize {
		return fmt.Errorf("journal: read into %d bytes", len(buf))
	}
	if isAligned(buf) {
		return j.ReadBlocks([]Location{loc}, buf[:BlockSize])
	}
	// O_DIRECT reads need an aligned buffer.
	s := j.scratch.Get().(*[]byte)
	defer j.scratch.Put(s)
	if err := j.ReadBlocks([]Location{loc}, *s); err != nil {
		return err
	}
	copy(buf, *s)
	return nil
}

// ZoneBytes is the size of a zone; an existing journal keeps the one it
// was made with, whatever the options asked.
func (j *Journal) ZoneBytes() int64 { return j.g.zoneBytes }

// ReadBlocks reads the blocks at locs into buf, one 4 KiB block after
// the other, and checks each one's CRC, as ReadBlock does; blocks that
// follow each other in the file are read with one call. A flush reads the
// blocks of a sequential write this way: a few calls instead of one per
// block.
func (j *Journal) ReadBlocks(locs []Location, buf []byte) error {
	if len(buf) < len(locs)*BlockSize {
		return fmt.Errorf("journal: read of %d blocks into %d bytes", len(locs), len(buf))
	}
	if !isAligned(buf) {
		for i, loc := range locs {
			if err := j.ReadBlock(loc, buf[i*BlockSize:]); err != nil {
				return err
			}
		}
		return nil
	}
	buf = buf[:len(locs)*BlockSize]
	inMem := make([]bool, len(locs))
	j.mu.Lock()
	if j.mu.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	for i, loc := range locs {
		if loc.Offset < j.g.zoneStart(0) || loc.Offset%BlockSize != 0 || loc.Offset+BlockSize > j.g.fileBytes() {
			j.mu.Unlock()
			return fmt.Errorf("journal: location %d of batch %d is not a block of the journal", loc.Offset, loc.LSN)
		}
		if loc.LSN < j.mu.tailLSN {
			j.mu.Unlock()
			return fmt.Errorf("journal: block at %d of batch %d (tail %d): %w", loc.Offset, loc.LSN, j.mu.tailLSN, ErrReleased)
		}
		b := j.memLocked(loc.LSN)
		if b == nil {
			continue
		}
		at := loc.Offset - b.off
		if at < BlockSize || at >= BlockSize+int64(b.blocks)*BlockSize {
			j.mu.Unlock()
			return fmt.Errorf("journal: location %d is not a block of batch %d", loc.Offset, loc.LSN)
		}
		copy(buf[i*BlockSize:(i+1)*BlockSize], b.buf[at:at+BlockSize])
		inMem[i] = true
	}
	j.mu.Unlock()
	var bufs [][]byte
	var offs []int64
	var first []int // the index in locs of each run's first block
	for i := 0; i < len(locs); {
		if inMem[i] {
			i++
			continue
		}
		n := 1
		for i+n < len(locs) && !inMem[i+n] && locs[i+n].Offset == locs[i].Offset+int64(n)*BlockSize {
			n++
		}
		bufs, offs, first = append(bufs, buf[i*BlockSize:(i+n)*BlockSize]), append(offs, locs[i].Offset), append(first, i)
		i += n
	}
	if err := j.readRuns(bufs, offs); err != nil {
		// Which run failed is not known when they went together: name
		// the batches of the first.
		return fmt.Errorf("journal: blocks of batch %d and %d more runs: %w", locs[first[0]].LSN, len(first)-1, err)
	}
	for i, loc := range locs {
		if err := checkBlock(loc, buf[i*BlockSize:(i+1)*BlockSize]); err != nil {
			return err
		}
	}
	return nil
}

// readRuns reads bufs[i] at offs[i]: submitted together where the file
// can (aio_linux.go), else one after the other.
func (j *Journal) readRuns(bufs [][]byte, offs []int64) error {
	if len(bufs) > 1 && j.aio != nil {
		if o, ok := j.f.(*osFile); ok {
			err := o.readBatch(j.aio, bufs, offs)
			if !errors.Is(err, errNoAIO) {
				return err
			}
		}
	}
	for i := range bufs {
		if err := readFull(j.f, bufs[i], offs[i]); err != nil {
			return err
		}
	}
	return nil
}

func checkBlock(loc Location, buf []byte) error {
	if got := crc32c(buf); got != loc.CRC {
		return fmt.Errorf("journal: block at %d of batch %d: CRC %08x, expected %08x: %w", loc.Offset, loc.LSN, got, loc.CRC, ErrCorrupt)
	}
	return nil
}

// memLocked returns batch lsn if it is not yet written.
func (j *Journal) memLocked(lsn uint64) *batch {
	mem := j.mu.mem
	if len(mem) == 0 || lsn < mem[0].lsn || lsn-mem[0].lsn >= uint64(len(mem)) {
		return nil
	}
	return mem[lsn-mem[0].lsn]
}

// Release tells the journal that every batch with an LSN below lsn is
// persisted elsewhere. Zones whose batches all are become free, once a
// superblock naming the new tail is durable (Release waits for that
// write and sync). The zone still receiving batches is not freed; it is
// once the head has moved on, at the next Release or when an Append
// needs it. lsn may be at most one past the last appended batch.
func (j *Journal) Release(lsn uint64) error {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	j.mu.Lock()
	if err := j.usableLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	m := &j.mu
	if lsn > m.nextLSN {
		j.mu.Unlock()
		return fmt.Errorf("journal: release of LSN %d, past the next batch %d", lsn, m.nextLSN)
	}
	// Zones the head was still in at an earlier Release may be free by
	// now: always look from the highest LSN released so far.
	lsn = max(lsn, m.released)
	m.released = lsn
	z := m.tailZone
	for z != m.headZone && m.zones[z].lastLSN < lsn {
		z = j.g.next(z)
	}
	if z == m.tailZone {
		j.mu.Unlock()
		return nil
	}
	sb := superblock{
		seq:         m.sbSeq + 1,
		gen:         m.gen,
		zoneBytes:   j.g.zoneBytes,
		zones:       uint32(j.g.zones),
		tailLSN:     m.zones[z].firstLSN,
		tailOffset:  j.g.zoneStart(z),
		tailPrevCRC: m.zones[z].firstPrevCRC,
	}
	j.mu.Unlock()
	// Only once the new tail is durable may the writer overwrite the
	// zones before it: until then a crash replays from the old tail.
	err := j.writeSuperblock(sb)
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		j.failLocked(err)
		return err
	}
	m.sbSeq = sb.seq
	m.tailZone = z
	m.tailLSN = sb.tailLSN
	j.notifyLocked()
	return nil
}

// Stats returns a snapshot of the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	m := &j.mu
	end := m.nextPos
	if b := m.open; b != nil {
		end = b.off + b.bytesWith(0, 0)
	}
	inUse := (m.headZone - m.tailZone + j.g.zones) % j.g.zones
	return Stats{
		UsedBytes:   int64(inUse)*j.g.zoneBytes + end - j.g.zoneStart(m.headZone),
		TotalBytes:  j.g.totalBytes(),
		HeadLSN:     m.nextLSN - 1,
		DurableLSN:  m.durable,
		TailLSN:     m.tailLSN,
		Batches:     m.batches,
		Syncs:       m.syncs,
		DirectIO:    j.direct,
		ZeroedBytes: m.zeroed,
	}
}

// Close writes and syncs every batch appended, stops the journal's
// goroutines and closes the file. Appends waiting for space return
// ErrClosed. It returns the error that broke the journal, if one did.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.mu.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	j.mu.closed = true
	j.notifyLocked()
	j.kickZeroerLocked()
	j.mu.Unlock()
	kick(j.writeKick)
	<-j.writerDone
	<-j.syncerDone
	<-j.zeroerDone
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	err := j.f.Close()
	j.aio.close()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.mu.broken != nil {
		return j.mu.broken
	}
	if err != nil {
		return fmt.Errorf("journal %s: close: %w", j.path, err)
	}
	return nil
}
