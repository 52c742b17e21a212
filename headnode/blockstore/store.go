package blockstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/internal/durable"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// Key layout of a head node's block store (one pebble database per node):
//
//	'L' | volume u64 | seq u64      -> LogEntry (protobuf): the keys a record touched
//	'B' | volume u64 | block u64    -> blockRef: a block's newest data, in the journal (journalstore.go)
//	'I' | volume u64 | block u64    -> segment u64 | slot u32: where a flushed block lives
//	'G' | volume u64 | segment u64  -> Segment (protobuf): shards, sleds, live blocks
//	'H' | volume u64 | segment u64  -> u64 per slot: the block each slot was written for
//	'S' | volume u64                -> VolumeLogState (protobuf)
//	'C' | volume u64 | 0            -> cut u64: the cut this node's primary holds writes for (SetCutHold)
//	'E' | volume u64 | 0            -> epoch u64: the volume's epoch fence (EpochFence)
//	'D' | volume u64 | 0            -> lsn u64: the journal entry of the volume's last drop
//
// All integers are big-endian so keys sort by volume, then seq, block or
// segment. A block reads from its 'B' key if it has one (the log holds the
// newest data), else from the segment its 'I' key names, else as zeroes.
// A 'B' key's version is the seq of the record that wrote it.
//
// One batch applies a run of records (apply.go), logs the keys each
// touched, trims what every replica holds and advances the last seq, so a
// crash leaves either all of a batch or none of it. The records are in the
// journal, synced, before the batch commits; the batch is not synced, and
// the journal's replay applies again what a crash took from pebble.
//
// The log holds keys, not data: a block's data is written once, to the
// journal, and leaves the head node when a flush record moves it into a
// segment. When one replica must hand another the records it lacks
// (LogFrom, reconcile.go), it sends the current state of every key those
// records touched; applying that brings the other replica to exactly this
// one's state at its last seq, which is the only point reconciliation ever
// aims for.
const (
	prefixLog          = 'L'
	prefixBlock        = 'B'
	prefixIndex        = 'I'
	prefixSegment      = 'G'
	prefixSegmentSlots = 'H'
	prefixState        = 'S'
	prefixCutHold      = 'C'
	prefixEpochFence   = 'E'
	prefixDropMark     = 'D'
	// prefixWriter ('W') keys hold the writes each client had applied
	// (writers.go).

	versionBytes = 8
	indexBytes   = 12

	blockSize = volume.BlockSizeBytes
)

// The errors' texts keep the prefix they had when the store was part of
// package headnode: what logs, peers and clients see of them is unchanged.

// ErrSeqGap is returned when records do not follow the store's last seq:
// the sender and the store disagree on the log and must reconcile first.
var ErrSeqGap = errors.New("headnode: log sequence gap")

// ErrCorrupt marks a stored value that does not decode: this replica's
// copy is bad.
var ErrCorrupt = errors.New("headnode: corrupt block store value")

func volKey(prefix byte, vol, n uint64) []byte {
	k := make([]byte, 17)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], vol)
	binary.BigEndian.PutUint64(k[9:], n)
	return k
}

func logKey(vol, seq uint64) []byte              { return volKey(prefixLog, vol, seq) }
func blockKey(vol, block uint64) []byte          { return volKey(prefixBlock, vol, block) }
func indexKey(vol, block uint64) []byte          { return volKey(prefixIndex, vol, block) }
func segmentKey(vol, seg uint64) []byte          { return volKey(prefixSegment, vol, seg) }
func segSlotsKey(vol, seg uint64) []byte         { return volKey(prefixSegmentSlots, vol, seg) }
func keyNumber(k []byte) uint64                  { return binary.BigEndian.Uint64(k[9:]) }
func volumeUpper(prefix byte, vol uint64) []byte { return volKey(prefix, vol+1, 0)[:9] }

func stateKey(vol uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixState
	binary.BigEndian.PutUint64(k[1:], vol)
	return k
}

// BlockLoc is where a flushed block lives: a slot of a segment.
type BlockLoc struct {
	Segment uint64
	Slot    uint32
}

func encodeLoc(l BlockLoc) []byte {
	v := make([]byte, indexBytes)
	binary.BigEndian.PutUint64(v, l.Segment)
	binary.BigEndian.PutUint32(v[8:], l.Slot)
	return v
}

func decodeLoc(v []byte) (BlockLoc, error) {
	if len(v) != indexBytes {
		return BlockLoc{}, fmt.Errorf("%w: index value of %d bytes", ErrCorrupt, len(v))
	}
	return BlockLoc{Segment: binary.BigEndian.Uint64(v), Slot: binary.BigEndian.Uint32(v[8:])}, nil
}

func encodeSlots(blocks []uint64) []byte {
	v := make([]byte, 8*len(blocks))
	for i, b := range blocks {
		binary.BigEndian.PutUint64(v[8*i:], b)
	}
	return v
}

func decodeSlots(v []byte) ([]uint64, error) {
	if len(v)%8 != 0 {
		return nil, fmt.Errorf("%w: slot list of %d bytes", ErrCorrupt, len(v))
	}
	out := make([]uint64, len(v)/8)
	for i := range out {
		out[i] = binary.BigEndian.Uint64(v[8*i:])
	}
	return out, nil
}

// Store is the head node's durable store of volume logs, blocks,
// indexes and segments. Callers serialise appends per volume (the
// primary's committer, or the secondary's one replication stream); reads
// may run at any time.
type Store struct {
	db *pebble.DB
	jr *journal.Journal

	mu     sync.Mutex
	state  map[uint64]*ballastpb.VolumeLogState // loaded lazily; guarded by mu
	fences map[uint64]uint64                    // epoch fences loaded so far; guarded by mu
	// begun is, per volume, the last seq of the appends begun and not
	// yet finished; appendGen counts the volume's failed appends and
	// drops, so an append begun before one fails too. Guarded by mu.
	begun, appendGen map[uint64]uint64

	// fenceMu serialises the loads and raises of epoch fences, so that a
	// load never caches a value older than a raise it raced with.
	fenceMu sync.Mutex

	// inflight holds, for each append between the journal and its pebble
	// commit, a journal LSN at or below its entries': the release keeps
	// them (journalRelease).
	inflightMu   sync.Mutex
	inflight     map[uint64]uint64
	inflightNext uint64
	// releasedThrough is the journal's tail as last released (the release
	// loop's alone).
	releasedThrough uint64
	// refs counts the 'B' keys that point into each journal batch, as
	// committed; refMin is at or below the oldest batch any points to.
	// Counted from the keys once at open (after the replay), then kept by
	// each commit's deltas, so the release reads no keys.
	refMu  sync.Mutex
	refs   map[uint64]int
	refMin uint64
	// blockRefs is the in-memory copy of the 'B' keys (refindex.go).
	blockRefs *refIndex
	// journalReserve is the free journal space that data appends leave
	// for the records that free it.
	journalReserve int64
	// maxEntryBlocks bounds the blocks of one journal entry, and
	// maxAppendBlocks those of one append, well within a zone.
	maxEntryBlocks, maxAppendBlocks int

	// crashAt (a test knob: SetCrashHook) is called at each step of an
	// append, a release, a drop and a void: a test loses power there.
	crashAt atomic.Pointer[func(point string)]
	// blockHook (SetBlockHook) learns of commits' block changes.
	blockHook atomic.Pointer[BlockHook]

	onJournalPressure func() // asks the node to flush sooner; may be nil
	onReleaseError    func(error)
	releaseKick       chan struct{}
	releaseStop       chan struct{}
	releaseDone       chan struct{}
	ctx               context.Context // ends at Close
	cancel            context.CancelFunc
}

// Options tunes pebble for what a head node stores (small
// values under dense keys, read back by point lookups) and sizes the
// journal.
type Options struct {
	// FS is the filesystem of pebble and the journal; nil means the
	// operating system's (and the journal then uses O_DIRECT where it can).
	FS vfs.FS
	// CacheBytes sizes pebble's block cache (0: defaultBlockCacheBytes).
	// Too small, and every read costs a pread of an index block and a data
	// block.
	CacheBytes int64
	// JournalPath is the journal's file (default: dir + ".journal").
	JournalPath string
	// JournalFS, if set, holds the journal instead of FS: crash tests
	// tear the journal's writes (crashfs) while pebble's filesystem only
	// loses what was not synced.
	JournalFS journal.FS
	// JournalBytes sizes a new journal (0: defaultJournalBytes); an
	// existing one keeps its size.
	JournalBytes int64
	// ReleaseInterval is how often the journal frees what was flushed
	// (0: a second).
	ReleaseInterval time.Duration
}

const (
	defaultBlockCacheBytes = 256 << 20
	defaultJournalBytes    = 1 << 30
	// MinJournalBytes is the smallest journal Open accepts.
	MinJournalBytes = 1 << 20
)

// defaultJournalSize sizes a journal that has no size set: an eighth of
// the free space of its filesystem, between MinJournalBytes and
// defaultJournalBytes, so that a small data disk (a test's tmpfs) is not
// filled by it. An existing journal keeps its size anyway.
func defaultJournalSize(fs vfs.FS, path string) int64 {
	if fs != nil {
		return 8 * MinJournalBytes // in memory: tests, which flush seldom if ever
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
		return defaultJournalBytes
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	return max(16<<20, min(defaultJournalBytes, free/8)) &^ (1<<20 - 1)
}

// journalZoneBytes divides a journal into about 16 zones of 64 KiB to 64
// MiB: the unit the release frees.
func journalZoneBytes(size int64) int64 {
	z := size / 16
	z = max(64<<10, min(64<<20, z))
	return z &^ (4096 - 1)
}

// Open opens (creating if needed) the store in dir and its
// journal, and replays the journal into pebble.
func Open(dir string, o Options) (*Store, error) {
	fs := o.FS
	if fs == nil {
		fs = vfs.Default
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = defaultBlockCacheBytes
	}
	if o.JournalPath == "" {
		o.JournalPath = dir + ".journal"
	}
	if o.JournalBytes == 0 {
		o.JournalBytes = defaultJournalSize(o.FS, o.JournalPath)
	}
	if o.JournalBytes < MinJournalBytes {
		return nil, fmt.Errorf("journal of %d bytes: at least %d needed", o.JournalBytes, MinJournalBytes)
	}
	if o.ReleaseInterval == 0 {
		o.ReleaseInterval = time.Second
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref() // the DB holds its own reference
	opts := &pebble.Options{
		FS:                 fs,
		Cache:              cache,
		MemTableSize:       64 << 20,
		FormatMajorVersion: pebble.FormatVirtualSSTables,
	}
	opts.Levels = make([]pebble.LevelOptions, 7)
	for i := range opts.Levels {
		opts.Levels[i] = pebble.LevelOptions{
			// Reads of blocks never written (holes) and point lookups that
			// would probe every level stop at the filter.
			FilterPolicy: bloom.FilterPolicy(10),
		}
	}
	opts.EnsureDefaults()
	if err := durable.MkdirAll(fs, dir); err != nil {
		return nil, fmt.Errorf("create block store %s: %w", dir, err)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open block store %s: %w", dir, err)
	}
	s := &Store{
		db: db, state: map[uint64]*ballastpb.VolumeLogState{}, fences: map[uint64]uint64{},
		inflight: map[uint64]uint64{}, blockRefs: newRefIndex(),
		begun: map[uint64]uint64{}, appendGen: map[uint64]uint64{},
		releaseKick: make(chan struct{}, 1), releaseStop: make(chan struct{}), releaseDone: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.openJournal(fs, o); err != nil {
		s.cancel()
		db.Close()
		return nil, err
	}
	go s.releaseLoop(o.ReleaseInterval)
	return s, nil
}

// openJournal opens the journal and applies again what pebble lost of it.
func (s *Store) openJournal(fs vfs.FS, o Options) error {
	if err := s.checkFormat(); err != nil {
		return err
	}
	if err := s.loadBlockRefs(); err != nil {
		return err
	}
	rp := &journalReplay{s: s, dropAt: map[uint64]uint64{}, dropSeen: map[uint64]bool{},
		parts: map[uint64][]journal.Location{}, partSeq: map[uint64]uint64{}}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixDropMark}, UpperBound: []byte{prefixDropMark + 1}})
	if err != nil {
		return fmt.Errorf("read drop marks: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) != 17 || len(it.Value()) != 8 {
			it.Close()
			return fmt.Errorf("%w: drop mark %x", ErrCorrupt, it.Key())
		}
		rp.dropAt[binary.BigEndian.Uint64(it.Key()[1:9])] = binary.BigEndian.Uint64(it.Value())
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("read drop marks: %w", err)
	}
	jo := journal.Options{SizeBytes: o.JournalBytes, ZoneBytes: journalZoneBytes(o.JournalBytes)}
	switch {
	case o.JournalFS != nil:
		jo.FS = o.JournalFS
	case o.FS != nil:
		jo.FS = journalFS{fs}
	}
	s.jr, err = journal.Open(o.JournalPath, jo, rp.entry)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", o.JournalPath, err)
	}
	// What the replay applied must not depend on the journal's tail, which
	// the first release may move past it.
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		s.jr.Close()
		return fmt.Errorf("sync the block store after the journal's replay: %w", err)
	}
	st := s.jr.Stats()
	s.releasedThrough = st.TailLSN
	s.countAllRefs()
	// Two zones, or an eighth of the journal, stay for records without data.
	zone := s.jr.ZoneBytes()
	s.journalReserve = max(2*zone, st.TotalBytes/8)
	s.maxAppendBlocks = int(zone / 4 / volume.BlockSizeBytes)
	s.maxEntryBlocks = max(1, min(256, s.maxAppendBlocks/2))
	return nil
}

// checkFormat refuses a store written before block data moved to the
// journal, whose 'B' values hold the data itself: read as refs, they
// would only fail one by one.
func (s *Store) checkFormat() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		return fmt.Errorf("check the block store's format: %w", err)
	}
	defer it.Close()
	if it.First() && len(it.Value()) == versionBytes+volume.BlockSizeBytes {
		return fmt.Errorf("%w: the block store holds block data itself (a data directory from before the journal); "+
			"move its volumes to an upgraded head node, or empty the data directory", ErrCorrupt)
	}
	return it.Error()
}

func (s *Store) Close() error {
	s.cancel()
	close(s.releaseStop)
	<-s.releaseDone
	return errors.Join(s.jr.Close(), s.db.Close())
}

// SetJournalPressureFunc sets what the store calls when the journal
// reaches its high-water mark (NoteJournalFill): the node flushes sooner.
// nil calls nothing. It is not synchronised with the store's use: set it
// right after Open, or while the store is idle.
func (s *Store) SetJournalPressureFunc(f func()) { s.onJournalPressure = f }

// SetReleaseErrorFunc sets what the store calls with an error of the
// journal's release (the release goes on trying), or with counts of refs
// found wrong. nil calls nothing. Set it right after Open.
func (s *Store) SetReleaseErrorFunc(f func(error)) { s.onReleaseError = f }

// SetCrashHook is for crash tests: f is called at each step of an append,
// a release, a drop and a void ("append:journaled", "append:durable",
// "append:applied", "release:synced", "release:done", "drop:journaled",
// "void:journaled"), and the test loses power there. nil removes it.
func (s *Store) SetCrashHook(f func(point string)) {
	if f == nil {
		s.crashAt.Store(nil)
		return
	}
	s.crashAt.Store(&f)
}

// volumeState returns the cached log state of a volume; callers copy what
// they need under s.mu.
func (s *Store) volumeState(vol uint64) (*ballastpb.VolumeLogState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.state[vol]; ok {
		return st, nil
	}
	st := &ballastpb.VolumeLogState{}
	v, closer, err := s.db.Get(stateKey(vol))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("read log state of volume %d: %w", vol, err)
	default:
		err := proto.Unmarshal(v, st)
		closer.Close()
		if err != nil {
			return nil, fmt.Errorf("%w: log state of volume %d: %v", ErrCorrupt, vol, err)
		}
	}
	s.state[vol] = st
	return st, nil
}

// stateCopy returns a copy of the volume's log state, for a caller that
// builds the next one.
func (s *Store) stateCopy(vol uint64) (*ballastpb.VolumeLogState, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(st).(*ballastpb.VolumeLogState), nil
}

// LastSeq returns the seq of the newest durable record of the volume's log.
func (s *Store) LastSeq(vol uint64) (uint64, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return st.LastSeq, nil
}

// NextSegmentID returns the lowest segment id no record has used yet.
func (s *Store) NextSegmentID(vol uint64) (uint64, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(st.NextSegmentId, 1), nil
}

// Append makes records durable: it appends them to the journal and,
// while the journal syncs, applies them in order (apply.go), logs the keys
// each touched, drops the log entries at or below trimThrough (every
// replica holds them) and advances the volume's last seq, in one batch
// that commits once the journal holds the records. The first record must
// follow the last seq; records at or below it are skipped, since a sender
// may resend what it could not confirm. With no new records and a trim
// point, it trims alone.
func (s *Store) Append(vol uint64, records []*ballastpb.LogRecord, trimThrough uint64) error {
	pa, err := s.BeginAppend(vol, records, trimThrough)
	if err != nil {
		return err
	}
	return pa.Finish()
}

// PendingAppend is an append whose records are in the journal (perhaps
// not yet durable there) and not yet applied: Finish waits for the
// journal and applies them. A replica streams batches this way: the next
// batch goes to the journal, and may share its sync, while this one
// syncs and applies.
type PendingAppend struct {
	s       *Store
	vol     uint64
	gen     uint64
	fresh   []*ballastpb.LogRecord
	locs    [][]journal.Location
	commits []*journal.Commit
	trim    uint64
	end     func()
}

// knownRecord refuses a record with fields this build does not know: a
// newer head node's kind of record, which applied as what this build
// sees in it (perhaps an empty write) would silently differ from the
// sender's state. The journal would drop the fields, too.
func knownRecord(r *ballastpb.LogRecord) error {
	unknown := len(r.ProtoReflect().GetUnknown()) > 0
	for _, bw := range r.Blocks {
		unknown = unknown || len(bw.ProtoReflect().GetUnknown()) > 0
	}
	if unknown {
		return fmt.Errorf("record %d carries fields this head node does not know (from a newer build): refusing it", r.Seq)
	}
	return nil
}

// BeginAppend puts records in the journal; the append is made durable and
// applied by Finish. A volume's appends begin in seq order and must be
// finished in the order they began, by one caller at a time; the first
// record must follow the last one begun (or, if none is pending, the last
// seq). Once a Finish fails, the appends begun after it fail too.
func (s *Store) BeginAppend(vol uint64, records []*ballastpb.LogRecord, trimThrough uint64) (*PendingAppend, error) {
	last, err := s.LastSeq(vol)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	gen := s.appendGen[vol]
	last = max(last, s.begun[vol])
	s.mu.Unlock()
	pa := &PendingAppend{s: s, vol: vol, gen: gen, trim: trimThrough, end: func() {}}
	next := last + 1
	for _, r := range records {
		if r.Seq < next {
			continue
		}
		if r.Seq != next {
			return nil, fmt.Errorf("%w: volume %d: record %d after %d", ErrSeqGap, vol, r.Seq, next-1)
		}
		if err := knownRecord(r); err != nil {
			return nil, fmt.Errorf("volume %d: %w", vol, err)
		}
		pa.fresh = append(pa.fresh, r)
		next++
	}
	if len(pa.fresh) == 0 {
		return pa, nil
	}
	var entries []journal.Entry
	perRecord := make([]int, len(pa.fresh)) // entries of each record
	withData := false
	for i, r := range pa.fresh {
		e, err := journalEntry(vol, r)
		if err != nil {
			return nil, err
		}
		parts := splitEntry(e, s.maxEntryBlocks, encodeMeta(metaRecordPart, vol, binary.BigEndian.AppendUint64(nil, r.Seq)))
		entries, perRecord[i] = append(entries, parts...), len(parts)
		withData = withData || len(e.Blocks) > 0
	}
	if withData {
		s.NoteJournalFill()
	}
	pa.end = s.beginJournalAppend()
	entryLocs, commits, err := s.appendEntries(entries)
	if err != nil {
		pa.end()
		return nil, fmt.Errorf("journal records of volume %d: %w", vol, err)
	}
	s.crashPoint("append:journaled")
	pa.commits = commits
	pa.locs = make([][]journal.Location, len(pa.fresh))
	for i, n := range perRecord {
		for _, l := range entryLocs[:n] {
			pa.locs[i] = append(pa.locs[i], l...)
		}
		entryLocs = entryLocs[n:]
	}
	s.mu.Lock()
	if s.appendGen[vol] == gen {
		s.begun[vol] = next - 1
	}
	s.mu.Unlock()
	return pa, nil
}

// Finish waits until the journal holds the append's records and applies
// them (see Append).
func (pa *PendingAppend) Finish() error {
	s, vol := pa.s, pa.vol
	defer pa.end()
	s.mu.Lock()
	stale := s.appendGen[vol] != pa.gen
	s.mu.Unlock()
	if stale {
		return fmt.Errorf("%w: volume %d: an append begun before it failed, or the volume was dropped", ErrSeqGap, vol)
	}
	var wait func() error
	if len(pa.commits) > 0 {
		wait = func() error {
			if err := waitCommits(s.ctx, pa.commits); err != nil {
				return fmt.Errorf("journal records of volume %d: %w", vol, err)
			}
			return nil
		}
	}
	err := s.applyJournaled(vol, pa.fresh, pa.locs, pa.trim, wait, pebble.NoSync)
	if err != nil {
		if verr := s.voidAppends(vol); verr != nil {
			err = errors.Join(err, verr)
		}
	}
	return err
}

// voidAppends fails the volume's pending appends, whose records are in
// the journal but will never be applied, and keeps the replay from
// applying them after a crash: a record of this history at a seq that a
// later append (perhaps of another primary's history) fills again would
// otherwise come back in place of the one acknowledged. Like a drop, a
// void entry in the journal and a mark in pebble, synced with everything
// pebble applied before, say that the volume's entries before it are
// done with. The next append begins after the last seq applied.
func (s *Store) voidAppends(vol uint64) error {
	s.resetAppends(vol)
	c, _, err := s.jr.Append(s.ctx, []journal.Entry{{Meta: encodeMeta(metaVoid, vol, nil)}})
	if err == nil {
		err = c.Wait(s.ctx)
	}
	if err == nil {
		s.crashPoint("void:journaled")
		err = s.db.Set(dropMarkKey(vol), binary.BigEndian.AppendUint64(nil, c.LSN()), pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("void the failed appends of volume %d: %w", vol, err)
	}
	return nil
}

// crashPoint reports reaching a step to the crashAt knob.
func (s *Store) crashPoint(point string) {
	if f := s.crashAt.Load(); f != nil {
		(*f)(point)
	}
}

// resetAppends fails the volume's pending appends: the next one begins
// after the last seq applied.
func (s *Store) resetAppends(vol uint64) {
	s.mu.Lock()
	s.appendGen[vol]++
	delete(s.begun, vol)
	s.mu.Unlock()
}

// applyJournaled applies records whose data is in the journal at locs (one
// list per record) in one batch, trims, and commits once wait (if any)
// says the journal holds them.
func (s *Store) applyJournaled(vol uint64, records []*ballastpb.LogRecord, locs [][]journal.Location,
	trimThrough uint64, wait func() error, opts *pebble.WriteOptions) error {
	st, err := s.stateCopy(vol)
	if err != nil {
		return err
	}
	last, trimmed := st.LastSeq, st.TrimmedThrough

	// Indexed: a record reads what earlier records of the same batch wrote.
	b := s.db.NewIndexedBatch()
	defer b.Close()
	a := applier{b: b, vol: vol, st: st, refs: s.blockRefs.volume(vol), hook: s.hook()}
	next := last + 1
	for i, r := range records {
		if r.Seq != next {
			return fmt.Errorf("%w: volume %d: record %d after %d", ErrSeqGap, vol, r.Seq, next-1)
		}
		if err := a.apply(r, locs[i]); err != nil {
			return fmt.Errorf("apply record %d of volume %d: %w", r.Seq, vol, err)
		}
		next++
	}
	st.LastSeq = next - 1
	// Point deletions rather than a range: a range tombstone per batch
	// would pile up in the memtable and slow every read that meets it.
	trimTo := max(trimmed, min(trimThrough, st.LastSeq))
	for seq := trimmed + 1; seq <= trimTo; seq++ {
		if err := b.Delete(logKey(vol, seq), nil); err != nil {
			return fmt.Errorf("batch trim: %w", err)
		}
	}
	st.TrimmedThrough = trimTo
	if st.LastSeq == last && trimTo == trimmed {
		return nil
	}
	sv, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode log state: %w", err)
	}
	if err := b.Set(stateKey(vol), sv, nil); err != nil {
		return fmt.Errorf("batch log state: %w", err)
	}
	if wait != nil {
		if err := wait(); err != nil {
			return err
		}
		s.crashPoint("append:durable")
	}
	if err := a.commit(opts); err != nil {
		return fmt.Errorf("commit log of volume %d: %w", vol, err)
	}
	s.crashPoint("append:applied")
	s.countRefs(a.refDelta)
	s.mu.Lock()
	s.state[vol] = st
	s.mu.Unlock()
	return nil
}

// RemoteBlock is a block of a read that lives on the sleds.
type RemoteBlock struct {
	Index int // position in the read, in blocks
	Loc   BlockLoc
}

// LocalRead is what the head node itself knows of a range of blocks.
type LocalRead struct {
	Remote   []RemoteBlock
	Segments map[uint64]*ballastpb.Segment // every segment Remote names
}

// ReadLocal fills dst (a whole number of blocks) with the volume's blocks
// from first on, from one consistent snapshot: blocks in the log are
// copied, blocks never written are zeroed, and blocks that live in
// segments are returned, with those segments, for the caller to fetch.
//
// A block's data is read from the journal after its ref is read from the
// snapshot; should the release free and reuse that zone in between, the
// journal's checksum says so and the read starts over from a new snapshot.
func (s *Store) ReadLocal(vol, first uint64, dst []byte) (LocalRead, error) {
	for attempt := 0; ; attempt++ {
		lr, err := s.readLocal(vol, first, dst)
		if err != nil && (errors.Is(err, journal.ErrCorrupt) || errors.Is(err, journal.ErrReleased)) && attempt < 3 {
			continue
		}
		return lr, err
	}
}

func (s *Store) readLocal(vol, first uint64, dst []byte) (LocalRead, error) {
	count := uint64(len(dst) / volume.BlockSizeBytes)
	var out LocalRead
	// The refs and the snapshot under the index's lock: the same point.
	refs := s.blockRefs.volume(vol)
	refs.mu.RLock()
	var inLog []uint64 // offsets in the read
	var logRefs []blockRef
	refs.refs.Ascend(first, func(b uint64, r blockRef) bool {
		if b >= first+count {
			return false
		}
		inLog, logRefs = append(inLog, b-first), append(logRefs, r)
		return true
	})
	if uint64(len(inLog)) == count {
		// All in the journal: no index to read.
		refs.mu.RUnlock()
		return out, s.readRefs(vol, first, inLog, logRefs, dst)
	}
	snap := s.db.NewSnapshot()
	refs.mu.RUnlock()
	defer snap.Close()
	if count == 1 {
		// One block: point lookups are cheaper than iterators.
		v, closer, err := snap.Get(indexKey(vol, first))
		if errors.Is(err, pebble.ErrNotFound) {
			clear(dst)
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read index of block %d of volume %d: %w", first, vol, err)
		}
		loc, err := decodeLoc(v)
		closer.Close()
		if err != nil {
			return out, err
		}
		seg, _, err := getSegment(snap, vol, loc.Segment, false)
		if err != nil {
			return out, err
		}
		if seg == nil {
			return out, fmt.Errorf("%w: volume %d: block %d is indexed to segment %d, which does not exist", ErrCorrupt, vol, first, loc.Segment)
		}
		out.Remote = []RemoteBlock{{Index: 0, Loc: loc}}
		out.Segments = map[uint64]*ballastpb.Segment{loc.Segment: seg}
		return out, nil
	}
	have := make([]bool, count)
	if err := s.readRefs(vol, first, inLog, logRefs, dst); err != nil {
		return out, err
	}
	for _, i := range inLog {
		have[i] = true
	}
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: indexKey(vol, first),
		UpperBound: indexKey(vol, first+count),
	})
	if err != nil {
		return out, fmt.Errorf("iterate index of volume %d: %w", vol, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		i := keyNumber(it.Key()) - first
		if have[i] {
			continue // the log's copy is newer
		}
		loc, err := decodeLoc(it.Value())
		if err != nil {
			it.Close()
			return out, err
		}
		have[i] = true
		out.Remote = append(out.Remote, RemoteBlock{Index: int(i), Loc: loc})
	}
	if err := it.Close(); err != nil {
		return out, fmt.Errorf("read index of volume %d: %w", vol, err)
	}
	for i, h := range have {
		if !h {
			clear(dst[i*volume.BlockSizeBytes : (i+1)*volume.BlockSizeBytes])
		}
	}
	for _, rb := range out.Remote {
		if _, ok := out.Segments[rb.Loc.Segment]; ok {
			continue
		}
		seg, _, err := getSegment(snap, vol, rb.Loc.Segment, false)
		if err != nil {
			return out, err
		}
		if seg == nil {
			return out, fmt.Errorf("%w: volume %d: block %d is indexed to segment %d, which does not exist", ErrCorrupt, vol, first+uint64(rb.Index), rb.Loc.Segment)
		}
		if out.Segments == nil {
			out.Segments = map[uint64]*ballastpb.Segment{}
		}
		out.Segments[rb.Loc.Segment] = seg
	}
	return out, nil
}

// reader is what pebble's DB, snapshots and indexed batches share.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// getSegment reads a segment and, with slots, the block of each slot. A
// missing segment is (nil, nil, nil).
func getSegment(r reader, vol, id uint64, slots bool) (*ballastpb.Segment, []uint64, error) {
	v, closer, err := r.Get(segmentKey(vol, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read segment %d of volume %d: %w", id, vol, err)
	}
	seg := &ballastpb.Segment{}
	err = proto.Unmarshal(v, seg)
	closer.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: segment %d of volume %d: %v", ErrCorrupt, id, vol, err)
	}
	if !slots {
		return seg, nil, nil
	}
	v, closer, err = r.Get(segSlotsKey(vol, id))
	if err != nil {
		return nil, nil, fmt.Errorf("read slots of segment %d of volume %d: %w", id, vol, err)
	}
	blocks, err := decodeSlots(v)
	closer.Close()
	if err != nil {
		return nil, nil, err
	}
	return seg, blocks, nil
}

// Segments returns every segment of the volume, from one snapshot.
func (s *Store) Segments(vol uint64) ([]*ballastpb.Segment, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: segmentKey(vol, 0),
		UpperBound: volumeUpper(prefixSegment, vol),
	})
	if err != nil {
		return nil, fmt.Errorf("iterate segments of volume %d: %w", vol, err)
	}
	defer it.Close()
	var out []*ballastpb.Segment
	for ok := it.First(); ok; ok = it.Next() {
		seg := &ballastpb.Segment{}
		if err := proto.Unmarshal(it.Value(), seg); err != nil {
			return nil, fmt.Errorf("%w: segment %d of volume %d: %v", ErrCorrupt, keyNumber(it.Key()), vol, err)
		}
		out = append(out, seg)
	}
	return out, it.Error()
}

// Segment returns one segment and its slots, or nil if it does not exist.
func (s *Store) Segment(vol, id uint64) (*ballastpb.Segment, []uint64, error) {
	return getSegment(s.db, vol, id, true)
}

// DirtyBlock is a block whose newest data is in the log.
type DirtyBlock struct {
	Block   uint64
	Version uint64
	Data    []byte
}

// DirtyBlocks returns up to max blocks whose newest data is in the log,
// from block `from` on, in block order, with their versions and data.
func (s *Store) DirtyBlocks(vol, from uint64, limit int) ([]DirtyBlock, error) {
	blocks, refs := s.blockRefs.volume(vol).from(from, limit)
	out := make([]DirtyBlock, len(blocks))
	buf := make([]byte, len(blocks)*volume.BlockSizeBytes)
	locs := make([]journal.Location, len(blocks))
	for i, b := range blocks {
		out[i] = DirtyBlock{Block: b, Version: refs[i].version,
			Data: buf[i*volume.BlockSizeBytes : (i+1)*volume.BlockSizeBytes : (i+1)*volume.BlockSizeBytes]}
		locs[i] = refs[i].loc
	}
	if err := s.jr.ReadBlocks(locs, buf); err != nil {
		return nil, fmt.Errorf("blocks of volume %d from the journal: %w", vol, err)
	}
	return out, nil
}

// DirtyCount counts the blocks whose newest data is in the log.
func (s *Store) DirtyCount(vol uint64) (int, error) {
	return s.blockRefs.volume(vol).count(), nil
}

// Locate returns where each of the given blocks lives now: in the log
// (inLog), in a segment (loc, indexed), or nowhere.
func (s *Store) Locate(vol uint64, blocks []uint64) (inLog []bool, locs []BlockLoc, indexed []bool, err error) {
	refs := s.blockRefs.volume(vol)
	refs.mu.RLock()
	snap := s.db.NewSnapshot()
	inLog = make([]bool, len(blocks))
	for i, b := range blocks {
		_, inLog[i] = refs.refs.Get(b)
	}
	refs.mu.RUnlock()
	defer snap.Close()
	locs = make([]BlockLoc, len(blocks))
	indexed = make([]bool, len(blocks))
	for i, b := range blocks {
		v, closer, err := snap.Get(indexKey(vol, b))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read index of block %d of volume %d: %w", b, vol, err)
		}
		locs[i], err = decodeLoc(v)
		closer.Close()
		if err != nil {
			return nil, nil, nil, err
		}
		indexed[i] = true
	}
	return inLog, locs, indexed, nil
}

// Volumes lists every volume the store holds any key of.
func (s *Store) Volumes() ([]uint64, error) {
	seen := map[uint64]bool{}
	for _, p := range []byte{prefixLog, prefixBlock, prefixIndex, prefixSegment, prefixSegmentSlots, prefixState} {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{p}, UpperBound: []byte{p + 1}})
		if err != nil {
			return nil, fmt.Errorf("list volumes: %w", err)
		}
		// One seek per volume, past all of its keys.
		for valid := it.First(); valid; {
			k := it.Key()
			if len(k) < 9 {
				valid = it.Next()
				continue
			}
			vol := binary.BigEndian.Uint64(k[1:9])
			seen[vol] = true
			if vol == math.MaxUint64 {
				break
			}
			valid = it.SeekGE(volKey(p, vol+1, 0)[:9])
		}
		if err := it.Close(); err != nil {
			return nil, fmt.Errorf("list volumes: %w", err)
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// DropVolume removes every key of the volume: its log, blocks, index,
// segments and state. The segments' shards on the sleds are the caller's.
//
// A drop entry in the journal and a drop mark in pebble keep the journal's
// replay from applying the volume's records of before the drop again.
func (s *Store) DropVolume(vol uint64) error {
	c, _, err := s.jr.Append(s.ctx, []journal.Entry{{Meta: encodeMeta(metaDrop, vol, nil)}})
	if err == nil {
		err = c.Wait(s.ctx)
	}
	if err != nil {
		return fmt.Errorf("journal the drop of volume %d: %w", vol, err)
	}
	s.crashPoint("drop:journaled")
	s.resetAppends(vol)
	s.mu.Lock()
	delete(s.state, vol)
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range []byte{prefixLog, prefixBlock, prefixIndex, prefixSegment, prefixSegmentSlots, prefixCutHold, prefixWriter} {
		if err := b.DeleteRange(volKey(p, vol, 0), volumeUpper(p, vol), nil); err != nil {
			return fmt.Errorf("batch drop: %w", err)
		}
	}
	if err := b.Delete(stateKey(vol), nil); err != nil {
		return fmt.Errorf("batch drop state: %w", err)
	}
	if err := b.Set(dropMarkKey(vol), binary.BigEndian.AppendUint64(nil, c.LSN()), nil); err != nil {
		return fmt.Errorf("batch drop mark: %w", err)
	}
	refs := s.blockRefs.volume(vol)
	refs.mu.Lock()
	if err := b.Commit(pebble.Sync); err != nil {
		refs.mu.Unlock()
		return fmt.Errorf("drop volume %d: %w", vol, err)
	}
	ended := refsOf(refs)
	refs.refs.Clear()
	if h := s.hook(); h != nil {
		h(vol, []BlockChange{{First: 0, Count: AllBlocks}})
	}
	refs.mu.Unlock()
	// Again: a read of the state between the first delete and the commit
	// cached what the commit removed.
	s.mu.Lock()
	delete(s.state, vol)
	s.mu.Unlock()
	s.countRefs(ended)
	return nil
}

// SetCutHold records, durably, that this node's primary holds the
// volume's writes for cut g, an id (0 clears it): a primary
// restarted at the same epoch must not let writes through before it has
// settled that cut (headnode's cuthold.go).
func (s *Store) SetCutHold(vol, g uint64) error {
	k := volKey(prefixCutHold, vol, 0)
	if g == 0 {
		if err := s.db.Delete(k, pebble.Sync); err != nil {
			return fmt.Errorf("clear cut hold of volume %d: %w", vol, err)
		}
		return nil
	}
	v := binary.BigEndian.AppendUint64(nil, g)
	if err := s.db.Set(k, v, pebble.Sync); err != nil {
		return fmt.Errorf("record cut hold of volume %d: %w", vol, err)
	}
	return nil
}

// CutHold returns the cut SetCutHold left for the volume (0: none).
func (s *Store) CutHold(vol uint64) (uint64, error) {
	v, closer, err := s.db.Get(volKey(prefixCutHold, vol, 0))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read cut hold of volume %d: %w", vol, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: cut hold of volume %d is %d bytes", ErrCorrupt, vol, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// EpochFence returns the newest epoch at which this node has served the
// volume as primary or accepted a replication session for it (0: none).
// Writes of an older epoch come from a deposed primary and must be
// refused. The fence is durable, so a node restarted with a directory
// that has not yet replayed a promotion still refuses the old primary,
// and it outlives DropVolume (a full sync begins with one), so a copy
// dropped and made again never takes an older epoch's writes either.
func (s *Store) EpochFence(vol uint64) (uint64, error) {
	s.mu.Lock()
	e, ok := s.fences[vol]
	s.mu.Unlock()
	if ok {
		return e, nil
	}
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	return s.loadFenceLocked(vol)
}

// loadFenceLocked returns the volume's fence, reading it from the store
// on first use; the caller holds fenceMu.
func (s *Store) loadFenceLocked(vol uint64) (uint64, error) {
	s.mu.Lock()
	e, ok := s.fences[vol]
	s.mu.Unlock()
	if ok {
		return e, nil
	}
	v, closer, err := s.db.Get(volKey(prefixEpochFence, vol, 0))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return 0, fmt.Errorf("read epoch fence of volume %d: %w", vol, err)
	default:
		n := len(v)
		if n == 8 {
			e = binary.BigEndian.Uint64(v)
		}
		closer.Close()
		if n != 8 {
			return 0, fmt.Errorf("%w: epoch fence of volume %d is %d bytes", ErrCorrupt, vol, n)
		}
	}
	s.mu.Lock()
	s.fences[vol] = e
	s.mu.Unlock()
	return e, nil
}

// RaiseEpochFence durably raises the volume's fence to epoch, if it is
// lower. Once it returns, EpochFence reports at least epoch.
func (s *Store) RaiseEpochFence(vol, epoch uint64) error {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	cur, err := s.loadFenceLocked(vol)
	if err != nil || epoch <= cur {
		return err
	}
	v := binary.BigEndian.AppendUint64(nil, epoch)
	if err := s.db.Set(volKey(prefixEpochFence, vol, 0), v, pebble.Sync); err != nil {
		return fmt.Errorf("raise epoch fence of volume %d to %d: %w", vol, epoch, err)
	}
	s.mu.Lock()
	s.fences[vol] = epoch
	s.mu.Unlock()
	return nil
}
