package blockstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// The journal and the block store
//
// Block data lives in the node's journal (headnode/journal), not in
// pebble: a record's 4 KiB blocks are appended there, and its 'B' keys
// hold only where each block's newest data is (blockRef). The journal is
// the write-ahead log of the whole store: Append waits for the journal's
// group commit, then commits the pebble batch without a sync of its own.
// After a crash, Open replays the journal from its tail and applies again
// every record that pebble lost (its seq is above the volume's last seq).
//
// The journal frees its zones from the tail once no 'B' key points below
// it and pebble has synced every record applied from there (release).
//
// An entry's metadata is one of:
//
//	metaRecord   vol | LogRecord: a record of the volume's log; every block
//	             datum in it is the placeholder dataInJournal, standing for
//	             the entry's next journal block, in order
//	metaDrop     vol: the volume was dropped; its entries before this one
//	             are void
//	metaSyncData vol: the data of a full-sync chunk; never replayed, since
//	             a sync cut short starts over
//	metaRecordPart vol | seq u64: the first blocks of data of record seq,
//	             whose metaRecord entry follows with the rest; a record
//	             with more data than fits one entry is split so (zones may
//	             be smaller than a client's largest write)
//	metaVoid     vol: appends of the volume failed after their records
//	             reached the journal; its entries before this one are
//	             void (pebble holds, synced, all it applied of them)
const (
	metaVersion    = 1
	metaRecord     = 1
	metaDrop       = 2
	metaSyncData   = 3
	metaRecordPart = 4
	metaVoid       = 5

	metaHeaderBytes = 10 // version u8 | kind u8 | vol u64
)

// dataInJournal stands for a block's data in a journaled record: a
// length no real datum has (0 or 4096 bytes).
var dataInJournal = []byte{1}

func encodeMeta(kind byte, vol uint64, body []byte) []byte {
	m := make([]byte, metaHeaderBytes, metaHeaderBytes+len(body))
	m[0], m[1] = metaVersion, kind
	binary.BigEndian.PutUint64(m[2:], vol)
	return append(m, body...)
}

func decodeMeta(m []byte) (kind byte, vol uint64, body []byte, err error) {
	if len(m) < metaHeaderBytes || m[0] != metaVersion {
		return 0, 0, nil, fmt.Errorf("%w: journal entry metadata of %d bytes, version %v", ErrCorrupt, len(m), m[:min(len(m), 1)])
	}
	return m[1], binary.BigEndian.Uint64(m[2:]), m[metaHeaderBytes:], nil
}

// journalEntry turns a record into a journal entry: its block data go in
// the entry's blocks, and a copy of the record, with each datum replaced by
// dataInJournal, in its metadata. The record itself is not changed (a
// replication session may be encoding it at the same time).
func journalEntry(vol uint64, r *ballastpb.LogRecord) (journal.Entry, error) {
	var blocks [][]byte
	strip := func(d []byte) []byte {
		if len(d) == volume.BlockSizeBytes {
			blocks = append(blocks, d)
			return dataInJournal
		}
		return d
	}
	cp := &ballastpb.LogRecord{
		Seq: r.Seq, Removed: r.Removed, Flush: r.Flush, Compact: r.Compact,
		ShardMove: r.ShardMove, SegmentFree: r.SegmentFree, SegmentWrite: r.SegmentWrite,
		Writes: r.Writes,
	}
	if len(r.Blocks) > 0 {
		cp.Blocks = make([]*ballastpb.BlockWrite, len(r.Blocks))
		for i, bw := range r.Blocks {
			cp.Blocks[i] = &ballastpb.BlockWrite{Block: bw.Block, Data: strip(bw.Data)}
		}
	}
	if s := r.State; s != nil {
		cs := &ballastpb.StateRecord{Cleared: s.Cleared, Segments: s.Segments, NextSegmentId: s.NextSegmentId, Writers: s.Writers}
		cs.Blocks = make([]*ballastpb.BlockState, len(s.Blocks))
		for i, bs := range s.Blocks {
			cs.Blocks[i] = &ballastpb.BlockState{Block: bs.Block, Version: bs.Version, Data: strip(bs.Data),
				Indexed: bs.Indexed, SegmentId: bs.SegmentId, Slot: bs.Slot}
		}
		cp.State = cs
	}
	body, err := proto.Marshal(cp)
	if err != nil {
		return journal.Entry{}, fmt.Errorf("encode record %d of volume %d for the journal: %w", r.Seq, vol, err)
	}
	return journal.Entry{Meta: encodeMeta(metaRecord, vol, body), Blocks: blocks}, nil
}

// splitEntry splits an entry with more than maxBlocks blocks into parts
// of maxBlocks, each with partMeta, followed by the entry with the rest.
func splitEntry(e journal.Entry, maxBlocks int, partMeta []byte) []journal.Entry {
	var out []journal.Entry
	for len(e.Blocks) > maxBlocks {
		out = append(out, journal.Entry{Meta: partMeta, Blocks: e.Blocks[:maxBlocks:maxBlocks]})
		e.Blocks = e.Blocks[maxBlocks:]
	}
	return append(out, e)
}

// appendEntries appends a record's (or a sync chunk's) entries to the
// journal, as many calls as it takes to keep each within a fraction of a
// zone, and waits until all are durable. It returns each entry's
// locations.
func (s *Store) appendEntries(entries []journal.Entry) ([][]journal.Location, []*journal.Commit, error) {
	var locs [][]journal.Location
	var commits []*journal.Commit
	for len(entries) > 0 {
		n, blocks := 0, 0
		for n < len(entries) && (n == 0 || blocks+len(entries[n].Blocks) <= s.maxAppendBlocks) {
			blocks += len(entries[n].Blocks)
			n++
		}
		c, l, err := s.jr.Append(s.ctx, entries[:n])
		if err != nil {
			return nil, nil, err
		}
		locs, commits = append(locs, l...), append(commits, c)
		entries = entries[n:]
	}
	return locs, commits, nil
}

func waitCommits(ctx context.Context, commits []*journal.Commit) error {
	for _, c := range commits {
		if err := c.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// journaledRecord decodes a record's metadata; its data stays in the
// journal, named by locs in the order the placeholders appear.
// With locs nil, the count is not checked (the caller gathers parts).
func journaledRecord(body []byte, locs []journal.Location) (*ballastpb.LogRecord, error) {
	r := &ballastpb.LogRecord{}
	if err := proto.Unmarshal(body, r); err != nil {
		return nil, fmt.Errorf("%w: journaled record: %v", ErrCorrupt, err)
	}
	if locs == nil {
		return r, nil
	}
	if n := dataCount(r); n != len(locs) {
		return nil, fmt.Errorf("%w: journaled record %d names %d blocks of data, its entry holds %d", ErrCorrupt, r.Seq, n, len(locs))
	}
	return r, nil
}

// dataCount counts the blocks of data a record carries (or, journaled,
// names).
func dataCount(r *ballastpb.LogRecord) int {
	n := 0
	for _, bw := range r.Blocks {
		if len(bw.Data) == volume.BlockSizeBytes || isPlaceholder(bw.Data) {
			n++
		}
	}
	if r.State != nil {
		for _, bs := range r.State.Blocks {
			if len(bs.Data) == volume.BlockSizeBytes || isPlaceholder(bs.Data) {
				n++
			}
		}
	}
	return n
}

func isPlaceholder(d []byte) bool { return len(d) == 1 && d[0] == dataInJournal[0] }

// blockRef is a 'B' value: the version (seq of the record that wrote the
// block) and where its data is in the journal.
type blockRef struct {
	version uint64
	loc     journal.Location
}

const blockRefBytes = 8 + 8 + 8 + 4

func encodeBlockRef(version uint64, loc journal.Location) []byte {
	v := make([]byte, blockRefBytes)
	binary.BigEndian.PutUint64(v, version)
	binary.BigEndian.PutUint64(v[8:], loc.LSN)
	binary.BigEndian.PutUint64(v[16:], uint64(loc.Offset))
	binary.BigEndian.PutUint32(v[24:], loc.CRC)
	return v
}

func decodeBlockRef(v []byte) (blockRef, error) {
	if len(v) != blockRefBytes {
		return blockRef{}, fmt.Errorf("%w: block value of %d bytes", ErrCorrupt, len(v))
	}
	return blockRef{
		version: binary.BigEndian.Uint64(v),
		loc: journal.Location{
			LSN:    binary.BigEndian.Uint64(v[8:]),
			Offset: int64(binary.BigEndian.Uint64(v[16:])),
			CRC:    binary.BigEndian.Uint32(v[24:]),
		},
	}, nil
}

// readRef reads a block's data from the journal into dst (4 KiB).
func (s *Store) readRef(vol, block uint64, ref blockRef, dst []byte) error {
	if err := s.jr.ReadBlock(ref.loc, dst); err != nil {
		return fmt.Errorf("block %d of volume %d from the journal (batch %d): %w", block, vol, ref.loc.LSN, err)
	}
	return nil
}

// readRefs reads the blocks at offsets at (in blocks, from block first)
// of dst from the journal, where refs say; a run of blocks that follow
// each other in the journal and in dst is read with one call.
func (s *Store) readRefs(vol, first uint64, at []uint64, refs []blockRef, dst []byte) error {
	for k := 0; k < len(at); {
		n := 1
		for k+n < len(at) && at[k+n] == at[k]+uint64(n) {
			n++
		}
		locs := make([]journal.Location, n)
		for i := range locs {
			locs[i] = refs[k+i].loc
		}
		start := at[k] * volume.BlockSizeBytes
		if err := s.jr.ReadBlocks(locs, dst[start:start+uint64(n)*volume.BlockSizeBytes]); err != nil {
			return fmt.Errorf("blocks %d-%d of volume %d from the journal: %w", first+at[k], first+at[k]+uint64(n)-1, vol, err)
		}
		k += n
	}
	return nil
}

// dropMarkKey holds, per volume, the LSN of the journal entry that
// recorded its last drop: replay ignores the volume's entries before it.
func dropMarkKey(vol uint64) []byte { return volKey(prefixDropMark, vol, 0) }

// replayJournal is Open's callback: it applies again what pebble lost.
type journalReplay struct {
	s *Store
	// parts holds, per volume, the locations of the parts of record
	// partSeq seen so far.
	parts   map[uint64][]journal.Location
	partSeq map[uint64]uint64
	// dropAt is each dropped volume's drop mark; dropSeen says the replay
	// has passed it.
	dropAt   map[uint64]uint64
	dropSeen map[uint64]bool
	applied  int
}

func (rp *journalReplay) entry(lsn uint64, e journal.Entry, locs []journal.Location) error {
	kind, vol, body, err := decodeMeta(e.Meta)
	if err != nil {
		return err
	}
	// The volume's life before its drop: every earlier batch, and its
	// drop's own batch up to the drop entry. (Once the journal released
	// the drop's batch, every entry replayed comes after it.)
	if at, ok := rp.dropAt[vol]; ok && (lsn < at || lsn == at && !rp.dropSeen[vol]) {
		if (kind == metaDrop || kind == metaVoid) && lsn == at {
			rp.dropSeen[vol] = true
		}
		return nil
	}
	switch kind {
	case metaDrop, metaSyncData, metaVoid:
		return nil
	case metaRecordPart:
		if len(body) != 8 {
			return fmt.Errorf("%w: record part of %d bytes", ErrCorrupt, len(body))
		}
		if seq := binary.BigEndian.Uint64(body); rp.partSeq[vol] != seq {
			rp.partSeq[vol], rp.parts[vol] = seq, nil
		}
		rp.parts[vol] = append(rp.parts[vol], locs...)
		return nil
	case metaRecord:
	default:
		return fmt.Errorf("%w: journal entry of kind %d", ErrCorrupt, kind)
	}
	r, err := journaledRecord(body, nil)
	if err != nil {
		return err
	}
	if prior := rp.parts[vol]; len(prior) > 0 && rp.partSeq[vol] == r.Seq {
		locs = append(append([]journal.Location(nil), prior...), locs...)
	}
	delete(rp.parts, vol)
	delete(rp.partSeq, vol)
	last, err := rp.s.LastSeq(vol)
	if err != nil {
		return err
	}
	switch {
	case r.Seq <= last:
		return nil // pebble has it
	case r.Seq != last+1:
		st, _ := rp.s.stateCopy(vol)
		if st != nil && st.Syncing {
			return nil // a full sync cut short: it starts over
		}
		return fmt.Errorf("%w: volume %d: the journal holds record %d after %d (batch %d)", ErrSeqGap, vol, r.Seq, last, lsn)
	}
	// Only now: the first parts of a record pebble holds may be released.
	if n := dataCount(r); n != len(locs) {
		return fmt.Errorf("%w: journaled record %d of volume %d names %d blocks of data, its entries hold %d", ErrCorrupt, r.Seq, vol, n, len(locs))
	}
	rp.applied++
	return rp.s.applyJournaled(vol, []*ballastpb.LogRecord{r}, [][]journal.Location{locs}, 0, nil, pebble.NoSync)
}

// beginJournalAppend registers an append about to go to the journal; the
// function it returns ends it, once its pebble batch committed (or it
// failed). An append's entries land at or after the journal's head LSN
// as read here.
func (s *Store) beginJournalAppend() (end func()) {
	s.inflightMu.Lock()
	id := s.inflightNext
	s.inflightNext++
	s.inflight[id] = s.jr.Stats().HeadLSN
	s.inflightMu.Unlock()
	return func() {
		s.inflightMu.Lock()
		delete(s.inflight, id)
		s.inflightMu.Unlock()
	}
}

// journalRelease frees the journal up to the oldest entry still needed:
// the oldest a 'B' key points to, or an append in flight may have written.
func (s *Store) journalRelease() error {
	// Appends that ended (and counted their refs) came before; those in
	// flight are in inflight; those that begin after land at or after
	// head.
	s.inflightMu.Lock()
	oldest := s.jr.Stats().HeadLSN
	for _, lsn := range s.inflight {
		oldest = min(oldest, lsn)
	}
	s.inflightMu.Unlock()

	oldest = min(oldest, s.oldestRef(oldest))
	if oldest <= s.releasedThrough {
		return nil
	}
	// Replay starts at the new tail: every record before it must be
	// durable in pebble first.
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("journal release: sync the block store: %w", err)
	}
	s.crashPoint("release:synced")
	if err := s.jr.Release(oldest); err != nil {
		return fmt.Errorf("journal release: %w", err)
	}
	s.crashPoint("release:done")
	s.releasedThrough = oldest
	return nil
}

// countRefs applies a commit's ref deltas.
func (s *Store) countRefs(delta map[uint64]int) {
	if len(delta) == 0 {
		return
	}
	s.refMu.Lock()
	defer s.refMu.Unlock()
	if s.refs == nil {
		return // the replay at open: counted from the keys after it
	}
	for lsn, d := range delta {
		if d == 0 {
			continue
		}
		n := s.refs[lsn] + d
		switch {
		case n > 0:
			s.refs[lsn] = n
			s.refMin = min(s.refMin, lsn)
		case n == 0:
			delete(s.refs, lsn)
		default:
			// More refs ended than were counted: the counts are wrong, and
			// a release could free live data. Keep the batch for good and
			// say so; a restart counts again from the keys.
			s.refs[lsn] = 1 << 30
			s.refMin = min(s.refMin, lsn)
			if s.onReleaseError != nil {
				s.onReleaseError(fmt.Errorf("journal batch %d: %d refs counted below zero; it is kept until a restart", lsn, -n))
			}
		}
	}
}

// oldestRef returns the oldest batch a 'B' key points to, or limit if
// none below it does.
func (s *Store) oldestRef(limit uint64) uint64 {
	s.refMu.Lock()
	defer s.refMu.Unlock()
	for s.refMin < limit && s.refs[s.refMin] == 0 {
		s.refMin++
	}
	return min(s.refMin, limit)
}

// loadBlockRefs fills the in-memory index from the 'B' keys (at open,
// before the replay, which applies what pebble lost on top of it).
func (s *Store) loadBlockRefs() error {
	x, err := loadRefIndex(s.db)
	if err != nil {
		return err
	}
	s.blockRefs = x
	return nil
}

// loadRefIndex reads the 'B' keys into a new index.
func loadRefIndex(db reader) (*refIndex, error) {
	x := newRefIndex()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		return nil, fmt.Errorf("load journal refs: %w", err)
	}
	var vol uint64
	var refs *volumeRefs
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != 17 {
			it.Close()
			return nil, fmt.Errorf("%w: block key %x", ErrCorrupt, k)
		}
		ref, err := decodeBlockRef(it.Value())
		if err != nil {
			it.Close()
			return nil, fmt.Errorf("load journal refs: block %d of volume %d: %w", keyNumber(k), binary.BigEndian.Uint64(k[1:9]), err)
		}
		if v := binary.BigEndian.Uint64(k[1:9]); refs == nil || v != vol {
			vol, refs = v, x.volume(v)
		}
		refs.refs.Set(keyNumber(k), ref)
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("load journal refs: %w", err)
	}
	return x, nil
}

// countAllRefs counts the refs from the index (at open, after the replay).
func (s *Store) countAllRefs() {
	refs, low := s.refsFromIndex()
	s.refMu.Lock()
	s.refs, s.refMin = refs, low
	s.refMu.Unlock()
}

// refsFromIndex counts the index's refs per journal batch, and returns
// the oldest batch any points to (the journal's head if none does).
func (s *Store) refsFromIndex() (refs map[uint64]int, low uint64) {
	refs = map[uint64]int{}
	low = uint64(math.MaxUint64)
	s.blockRefs.each(func(_ uint64, v *volumeRefs) {
		v.mu.RLock()
		v.refs.Scan(func(_ uint64, ref blockRef) bool {
			refs[ref.loc.LSN]++
			low = min(low, ref.loc.LSN)
			return true
		})
		v.mu.RUnlock()
	})
	if len(refs) == 0 {
		low = s.jr.Stats().HeadLSN
	}
	return refs, low
}

// refsOf returns the negative counts of a volume's refs: what dropping
// it ends. The caller holds the volume's index lock.
func refsOf(v *volumeRefs) map[uint64]int {
	ended := map[uint64]int{}
	v.refs.Scan(func(_ uint64, ref blockRef) bool {
		ended[ref.loc.LSN]--
		return true
	})
	return ended
}

func (s *Store) releaseLoop(interval time.Duration) {
	defer close(s.releaseDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	// The release reads every 'B' key: on a tick, only when the journal
	// is a quarter full or a while has passed.
	var last time.Time
	for {
		select {
		case <-s.releaseStop:
			return
		case <-t.C:
			if s.journalFill() < 0.25 && time.Since(last) < 30*interval {
				continue
			}
		case <-s.releaseKick:
		}
		last = time.Now()
		if err := s.journalRelease(); err != nil && s.onReleaseError != nil {
			s.onReleaseError(err)
		}
	}
}

// journalFill is the fraction of the journal in use: a caller flushes
// sooner as it grows.
func (s *Store) journalFill() float64 {
	st := s.jr.Stats()
	if st.TotalBytes == 0 {
		return 0
	}
	return float64(st.UsedBytes) / float64(st.TotalBytes)
}

// JournalPressure says the journal is half full: flush sooner.
func (s *Store) JournalPressure() bool { return s.journalFill() >= 0.5 }

// JournalHigh says the journal is at its high-water mark: a primary
// holds client writes back before it orders them (headnode's
// primaryVolume.write), so that the records that free the journal, which
// carry no data and are ordered among the writes, always find room. A store never waits
// itself: it applies in order what was ordered, and a wait there would
// hold those very records back.
func (s *Store) JournalHigh() bool {
	st := s.jr.Stats()
	return st.TotalBytes-st.UsedBytes < s.journalReserve
}

// NoteJournalFill asks for a release, and for flushes, when the journal
// is at its high-water mark.
func (s *Store) NoteJournalFill() {
	if !s.JournalHigh() {
		return
	}
	s.kickRelease()
	if s.onJournalPressure != nil {
		s.onJournalPressure()
	}
}

func (s *Store) kickRelease() {
	select {
	case s.releaseKick <- struct{}{}:
	default:
	}
}
