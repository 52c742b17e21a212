package headnode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/durable"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// Key layout of a head node's block store (one pebble database per node):
//
//	'L' | volume u64 | seq u64      -> LogEntry (protobuf): the keys a record touched
//	'B' | volume u64 | block u64    -> version u64 | 4096 bytes: a block's newest data, in the log
//	'I' | volume u64 | block u64    -> segment u64 | slot u32: where a flushed block lives
//	'G' | volume u64 | segment u64  -> Segment (protobuf): shards, sleds, live blocks
//	'H' | volume u64 | segment u64  -> u64 per slot: the block each slot was written for
//	'S' | volume u64                -> VolumeLogState (protobuf)
//	'C' | volume u64 | 0            -> cut u64: the cut this node's primary holds writes for (cuthold.go)
//	'E' | volume u64 | 0            -> epoch u64: the volume's epoch fence (EpochFence)
//
// All integers are big-endian so keys sort by volume, then seq, block or
// segment. A block reads from its 'B' key if it has one (the log holds the
// newest data), else from the segment its 'I' key names, else as zeroes.
// A 'B' key's version is the seq of the record that wrote it.
//
// One synced batch applies a run of records (apply.go), logs the keys each
// touched, trims what every replica holds and advances the last seq, so a
// crash leaves either all of a batch or none of it.
//
// The log holds keys, not data: a block's data is written once, under its
// 'B' key, and leaves the head node when a flush record moves it into a
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

	versionBytes = 8
	indexBytes   = 12
)

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

// blockLoc is where a flushed block lives.
type blockLoc struct {
	segment uint64
	slot    uint32
}

func encodeLoc(l blockLoc) []byte {
	v := make([]byte, indexBytes)
	binary.BigEndian.PutUint64(v, l.segment)
	binary.BigEndian.PutUint32(v[8:], l.slot)
	return v
}

func decodeLoc(v []byte) (blockLoc, error) {
	if len(v) != indexBytes {
		return blockLoc{}, fmt.Errorf("%w: index value of %d bytes", ErrCorrupt, len(v))
	}
	return blockLoc{segment: binary.BigEndian.Uint64(v), slot: binary.BigEndian.Uint32(v[8:])}, nil
}

func encodeBlock(version uint64, data []byte) []byte {
	v := make([]byte, versionBytes+len(data))
	binary.BigEndian.PutUint64(v, version)
	copy(v[versionBytes:], data)
	return v
}

func decodeBlock(v []byte) (version uint64, data []byte, err error) {
	if len(v) != versionBytes+volume.BlockSizeBytes {
		return 0, nil, fmt.Errorf("%w: block value of %d bytes", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), v[versionBytes:], nil
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

// blockStore is the head node's durable store of volume logs, blocks,
// indexes and segments. Callers serialise appends per volume (the
// primary's committer, or the secondary's one replication stream); reads
// may run at any time.
type blockStore struct {
	db *pebble.DB

	mu     sync.Mutex
	state  map[uint64]*ballastpb.VolumeLogState // loaded lazily; guarded by mu
	fences map[uint64]uint64                    // epoch fences loaded so far; guarded by mu

	// fenceMu serialises the loads and raises of epoch fences, so that a
	// load never caches a value older than a raise it raced with.
	fenceMu sync.Mutex
}

// blockStoreOptions tunes pebble for what a head node stores: 4 KiB values
// under dense keys, read back by point lookups.
type blockStoreOptions struct {
	// FS is the filesystem; nil means the operating system's.
	FS vfs.FS
	// CacheBytes sizes pebble's block cache (0: defaultBlockCacheBytes).
	// Too small, and every read costs a pread of an index block and a data
	// block.
	CacheBytes int64
}

const defaultBlockCacheBytes = 256 << 20

// openBlockStore opens (creating if needed) the store in dir.
func openBlockStore(dir string, o blockStoreOptions) (*blockStore, error) {
	fs := o.FS
	if fs == nil {
		fs = vfs.Default
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = defaultBlockCacheBytes
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref() // the DB holds its own reference
	opts := &pebble.Options{
		FS:    fs,
		Cache: cache,
		// Random 4 KiB writes: a bigger memtable means fewer flushes, and
		// blocks flushed to the sleds before their memtable is written out
		// never reach an sstable at all.
		MemTableSize:       64 << 20,
		FormatMajorVersion: pebble.FormatVirtualSSTables,
	}
	opts.Levels = make([]pebble.LevelOptions, 7)
	for i := range opts.Levels {
		opts.Levels[i] = pebble.LevelOptions{
			// Volume data seldom compresses (guests write compressed and
			// encrypted data): trying costs CPU on every flush and read.
			Compression: pebble.NoCompression,
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
	return &blockStore{db: db, state: map[uint64]*ballastpb.VolumeLogState{}, fences: map[uint64]uint64{}}, nil
}

func (s *blockStore) Close() error {
	return s.db.Close()
}

// volumeState returns the cached log state of a volume; callers copy what
// they need under s.mu.
func (s *blockStore) volumeState(vol uint64) (*ballastpb.VolumeLogState, error) {
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
func (s *blockStore) stateCopy(vol uint64) (*ballastpb.VolumeLogState, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(st).(*ballastpb.VolumeLogState), nil
}

// LastSeq returns the seq of the newest durable record of the volume's log.
func (s *blockStore) LastSeq(vol uint64) (uint64, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return st.LastSeq, nil
}

// NextSegmentID returns the lowest segment id no record has used yet.
func (s *blockStore) NextSegmentID(vol uint64) (uint64, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(st.NextSegmentId, 1), nil
}

// Append makes records durable: it applies them in order (apply.go), logs
// the keys each touched, drops the log entries at or below trimThrough
// (every replica holds them) and advances the volume's last seq, in one
// synced batch. The first record must follow the last seq; records at or
// below it are skipped, since a sender may resend what it could not
// confirm. With no new records and a trim point, it trims alone.
func (s *blockStore) Append(vol uint64, records []*ballastpb.LogRecord, trimThrough uint64) error {
	st, err := s.stateCopy(vol)
	if err != nil {
		return err
	}
	last, trimmed := st.LastSeq, st.TrimmedThrough

	// Indexed: a record reads what earlier records of the same batch wrote.
	b := s.db.NewIndexedBatch()
	defer b.Close()
	a := applier{b: b, vol: vol, st: st}
	next := last + 1
	for _, r := range records {
		if r.Seq < next {
			continue
		}
		if r.Seq != next {
			return fmt.Errorf("%w: volume %d: record %d after %d", ErrSeqGap, vol, r.Seq, next-1)
		}
		if err := a.apply(r); err != nil {
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
	// pebble coalesces the WAL syncs of batches committed concurrently, so
	// the appends of many volumes share one fsync (group commit).
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit log of volume %d: %w", vol, err)
	}
	s.mu.Lock()
	s.state[vol] = st
	s.mu.Unlock()
	return nil
}

// remoteBlock is a block of a read that lives on the sleds.
type remoteBlock struct {
	index int // position in the read, in blocks
	loc   blockLoc
}

// localRead is what the head node itself knows of a range of blocks.
type localRead struct {
	remote   []remoteBlock
	segments map[uint64]*ballastpb.Segment // every segment remote names
}

// ReadLocal fills dst (a whole number of blocks) with the volume's blocks
// from first on, from one consistent snapshot: blocks in the log are
// copied, blocks never written are zeroed, and blocks that live in
// segments are returned, with those segments, for the caller to fetch.
func (s *blockStore) ReadLocal(vol, first uint64, dst []byte) (localRead, error) {
	count := uint64(len(dst) / volume.BlockSizeBytes)
	var out localRead
	snap := s.db.NewSnapshot()
	defer snap.Close()
	have := make([]bool, count)
	if count == 1 {
		// One block: point lookups are cheaper than iterators.
		v, closer, err := snap.Get(blockKey(vol, first))
		if err == nil {
			_, data, derr := decodeBlock(v)
			if derr == nil {
				copy(dst, data)
			}
			closer.Close()
			if derr != nil {
				return out, fmt.Errorf("block %d of volume %d: %w", first, vol, derr)
			}
			return out, nil
		}
		if !errors.Is(err, pebble.ErrNotFound) {
			return out, fmt.Errorf("read block %d of volume %d: %w", first, vol, err)
		}
		v, closer, err = snap.Get(indexKey(vol, first))
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
		seg, _, err := getSegment(snap, vol, loc.segment, false)
		if err != nil {
			return out, err
		}
		if seg == nil {
			return out, fmt.Errorf("%w: volume %d: block %d is indexed to segment %d, which does not exist", ErrCorrupt, vol, first, loc.segment)
		}
		out.remote = []remoteBlock{{index: 0, loc: loc}}
		out.segments = map[uint64]*ballastpb.Segment{loc.segment: seg}
		return out, nil
	} else {
		it, err := snap.NewIter(&pebble.IterOptions{
			LowerBound: blockKey(vol, first),
			UpperBound: blockKey(vol, first+count),
		})
		if err != nil {
			return out, fmt.Errorf("iterate blocks of volume %d: %w", vol, err)
		}
		for ok := it.First(); ok; ok = it.Next() {
			i := keyNumber(it.Key()) - first
			_, data, err := decodeBlock(it.Value())
			if err != nil {
				it.Close()
				return out, fmt.Errorf("block %d of volume %d: %w", first+i, vol, err)
			}
			copy(dst[i*volume.BlockSizeBytes:], data)
			have[i] = true
		}
		if err := it.Close(); err != nil {
			return out, fmt.Errorf("read blocks of volume %d: %w", vol, err)
		}
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
		out.remote = append(out.remote, remoteBlock{index: int(i), loc: loc})
	}
	if err := it.Close(); err != nil {
		return out, fmt.Errorf("read index of volume %d: %w", vol, err)
	}
	for i, h := range have {
		if !h {
			clear(dst[i*volume.BlockSizeBytes : (i+1)*volume.BlockSizeBytes])
		}
	}
	for _, rb := range out.remote {
		if _, ok := out.segments[rb.loc.segment]; ok {
			continue
		}
		seg, _, err := getSegment(snap, vol, rb.loc.segment, false)
		if err != nil {
			return out, err
		}
		if seg == nil {
			return out, fmt.Errorf("%w: volume %d: block %d is indexed to segment %d, which does not exist", ErrCorrupt, vol, first+uint64(rb.index), rb.loc.segment)
		}
		if out.segments == nil {
			out.segments = map[uint64]*ballastpb.Segment{}
		}
		out.segments[rb.loc.segment] = seg
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
func (s *blockStore) Segments(vol uint64) ([]*ballastpb.Segment, error) {
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
func (s *blockStore) Segment(vol, id uint64) (*ballastpb.Segment, []uint64, error) {
	return getSegment(s.db, vol, id, true)
}

// dirtyBlock is a block whose newest data is in the log.
type dirtyBlock struct {
	block   uint64
	version uint64
	data    []byte
}

// DirtyBlocks returns up to max blocks whose newest data is in the log,
// from block `from` on, in block order, with their versions and data.
func (s *blockStore) DirtyBlocks(vol, from uint64, limit int) ([]dirtyBlock, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: blockKey(vol, from),
		UpperBound: volumeUpper(prefixBlock, vol),
	})
	if err != nil {
		return nil, fmt.Errorf("iterate log blocks of volume %d: %w", vol, err)
	}
	defer it.Close()
	var out []dirtyBlock
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		version, data, err := decodeBlock(it.Value())
		if err != nil {
			return nil, fmt.Errorf("block %d of volume %d: %w", keyNumber(it.Key()), vol, err)
		}
		out = append(out, dirtyBlock{block: keyNumber(it.Key()), version: version, data: append([]byte(nil), data...)})
	}
	return out, it.Error()
}

// DirtyCount counts the blocks whose newest data is in the log.
func (s *blockStore) DirtyCount(vol uint64) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: blockKey(vol, 0),
		UpperBound: volumeUpper(prefixBlock, vol),
	})
	if err != nil {
		return 0, fmt.Errorf("iterate log blocks of volume %d: %w", vol, err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n, it.Error()
}

// Locate returns where each of the given blocks lives now: in the log
// (inLog), in a segment (loc, indexed), or nowhere.
func (s *blockStore) Locate(vol uint64, blocks []uint64) (inLog []bool, locs []blockLoc, indexed []bool, err error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	inLog = make([]bool, len(blocks))
	locs = make([]blockLoc, len(blocks))
	indexed = make([]bool, len(blocks))
	for i, b := range blocks {
		if _, closer, err := snap.Get(blockKey(vol, b)); err == nil {
			closer.Close()
			inLog[i] = true
		} else if !errors.Is(err, pebble.ErrNotFound) {
			return nil, nil, nil, fmt.Errorf("read block %d of volume %d: %w", b, vol, err)
		}
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
func (s *blockStore) Volumes() ([]uint64, error) {
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
func (s *blockStore) DropVolume(vol uint64) error {
	s.mu.Lock()
	delete(s.state, vol)
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range []byte{prefixLog, prefixBlock, prefixIndex, prefixSegment, prefixSegmentSlots, prefixCutHold} {
		if err := b.DeleteRange(volKey(p, vol, 0), volumeUpper(p, vol), nil); err != nil {
			return fmt.Errorf("batch drop: %w", err)
		}
	}
	if err := b.Delete(stateKey(vol), nil); err != nil {
		return fmt.Errorf("batch drop state: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("drop volume %d: %w", vol, err)
	}
	return nil
}

// SetCutHold records, durably, that this node's primary holds the
// volume's writes for cut g, an id (0 clears it): a primary
// restarted at the same epoch must not let writes through before it has
// settled that cut (cuthold.go).
func (s *blockStore) SetCutHold(vol, g uint64) error {
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
func (s *blockStore) CutHold(vol uint64) (uint64, error) {
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
func (s *blockStore) EpochFence(vol uint64) (uint64, error) {
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
func (s *blockStore) loadFenceLocked(vol uint64) (uint64, error) {
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
func (s *blockStore) RaiseEpochFence(vol, epoch uint64) error {
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
