package headnode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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
//	'L' | volume id u64 | seq u64    -> LogEntry (protobuf): which blocks a record touched
//	'B' | volume id u64 | block u64  -> 4096 bytes: the newest data of a block
//	'S' | volume id u64              -> last seq u64 | trimmed-through seq u64
//
// All integers are big-endian so keys sort by volume, then seq or block.
// One synced batch logs records, applies their blocks, trims what every
// replica holds and advances the last seq, so a crash leaves either all of
// a batch or none of it. A block that has no 'B' key reads as zeroes.
//
// The log holds block numbers, not data: a block's data is written once,
// under its 'B' key. When one replica must hand another the records it
// lacks (LogFrom), it rebuilds them from the current data of the blocks
// they touched. Applying those in order brings the other replica to
// exactly this one's state at its last seq, which is the only point
// reconciliation ever aims for.
const (
	prefixLog   = 'L'
	prefixBlock = 'B'
	prefixState = 'S'
)

// ErrSeqGap is returned when records do not follow the store's last seq:
// the sender and the store disagree on the log and must reconcile first.
var ErrSeqGap = errors.New("headnode: log sequence gap")

func logKey(vol, seq uint64) []byte {
	k := make([]byte, 17)
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], vol)
	binary.BigEndian.PutUint64(k[9:], seq)
	return k
}

func blockKey(vol, block uint64) []byte {
	k := make([]byte, 17)
	k[0] = prefixBlock
	binary.BigEndian.PutUint64(k[1:], vol)
	binary.BigEndian.PutUint64(k[9:], block)
	return k
}

func stateKey(vol uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixState
	binary.BigEndian.PutUint64(k[1:], vol)
	return k
}

type volumeLogState struct {
	lastSeq        uint64
	trimmedThrough uint64
}

// blockStore is the head node's durable store of volume logs and blocks.
// Callers serialise appends per volume (the primary's committer, or the
// secondary's one replication stream); reads may run at any time.
type blockStore struct {
	db *pebble.DB

	mu    sync.Mutex
	state map[uint64]*volumeLogState // loaded lazily
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
		// Random 4 KiB writes: a bigger memtable means fewer flushes.
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
	return &blockStore{db: db, state: map[uint64]*volumeLogState{}}, nil
}

func (s *blockStore) Close() error {
	return s.db.Close()
}

func (s *blockStore) volumeState(vol uint64) (*volumeLogState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.state[vol]; ok {
		return st, nil
	}
	st := &volumeLogState{}
	v, closer, err := s.db.Get(stateKey(vol))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("read log state of volume %d: %w", vol, err)
	default:
		if len(v) != 16 {
			closer.Close()
			return nil, fmt.Errorf("log state of volume %d: %d bytes, want 16", vol, len(v))
		}
		st.lastSeq = binary.BigEndian.Uint64(v)
		st.trimmedThrough = binary.BigEndian.Uint64(v[8:])
		closer.Close()
	}
	s.state[vol] = st
	return st, nil
}

// LastSeq returns the seq of the newest durable record of the volume's log.
func (s *blockStore) LastSeq(vol uint64) (uint64, error) {
	st, err := s.volumeState(vol)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return st.lastSeq, nil
}

// Append makes records durable: it logs them, applies their blocks, drops
// the log entries at or below trimThrough (every replica holds them) and
// advances the volume's last seq, in one synced batch. The first record must
// follow the last seq; records at or below it are skipped, since a sender
// may resend what it could not confirm. With no new records and a trim
// point, it trims alone.
func (s *blockStore) Append(vol uint64, records []*ballastpb.LogRecord, trimThrough uint64) error {
	st, err := s.volumeState(vol)
	if err != nil {
		return err
	}
	s.mu.Lock()
	last, trimmed := st.lastSeq, st.trimmedThrough
	s.mu.Unlock()

	b := s.db.NewBatch()
	defer b.Close()
	next := last + 1
	for _, r := range records {
		if r.Seq < next {
			continue
		}
		if r.Seq != next {
			return fmt.Errorf("%w: volume %d: record %d after %d", ErrSeqGap, vol, r.Seq, next-1)
		}
		entry := &ballastpb.LogEntry{Seq: r.Seq, Removed: r.Removed, Blocks: make([]uint64, 0, len(r.Blocks))}
		for _, rg := range r.Removed {
			if err := b.DeleteRange(blockKey(vol, rg.First), blockKey(vol, rg.First+rg.Count), nil); err != nil {
				return fmt.Errorf("batch remove blocks: %w", err)
			}
		}
		for _, bw := range r.Blocks {
			if len(bw.Data) == 0 {
				err = b.Delete(blockKey(vol, bw.Block), nil)
			} else if len(bw.Data) != volume.BlockSizeBytes {
				return fmt.Errorf("record %d: block %d has %d bytes, want %d", r.Seq, bw.Block, len(bw.Data), volume.BlockSizeBytes)
			} else {
				err = b.Set(blockKey(vol, bw.Block), bw.Data, nil)
			}
			if err != nil {
				return fmt.Errorf("batch block: %w", err)
			}
			entry.Blocks = append(entry.Blocks, bw.Block)
		}
		data, err := proto.Marshal(entry)
		if err != nil {
			return fmt.Errorf("encode log entry %d: %w", r.Seq, err)
		}
		if err := b.Set(logKey(vol, r.Seq), data, nil); err != nil {
			return fmt.Errorf("batch log entry: %w", err)
		}
		next++
	}
	newLast := next - 1
	// Point deletions rather than a range: a range tombstone per batch
	// would pile up in the memtable and slow every read that meets it.
	trimTo := max(trimmed, min(trimThrough, newLast))
	for seq := trimmed + 1; seq <= trimTo; seq++ {
		if err := b.Delete(logKey(vol, seq), nil); err != nil {
			return fmt.Errorf("batch trim: %w", err)
		}
	}
	if newLast == last && trimTo == trimmed {
		return nil
	}
	var sv [16]byte
	binary.BigEndian.PutUint64(sv[:], newLast)
	binary.BigEndian.PutUint64(sv[8:], trimTo)
	if err := b.Set(stateKey(vol), sv[:], nil); err != nil {
		return fmt.Errorf("batch log state: %w", err)
	}
	// pebble coalesces the WAL syncs of batches committed concurrently, so
	// the appends of many volumes share one fsync (group commit).
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit log of volume %d: %w", vol, err)
	}
	s.mu.Lock()
	st.lastSeq, st.trimmedThrough = newLast, trimTo
	s.mu.Unlock()
	return nil
}

// LogFrom rebuilds up to maxRecords records of the volume's log from seq
// on, with the current data of the blocks they touched, and stops after
// the record that reaches maxBytes of block data (0: no byte limit). The
// records are exact only as a whole run to the last seq (see the key layout
// comment); callers apply every record through the end.
func (s *blockStore) LogFrom(vol, from uint64, maxRecords, maxBytes int) ([]*ballastpb.LogRecord, error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: logKey(vol, from),
		UpperBound: logKey(vol+1, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("iterate log of volume %d: %w", vol, err)
	}
	defer it.Close()
	var out []*ballastpb.LogRecord
	want := from
	total := 0
	for ok := it.First(); ok && len(out) < maxRecords && (maxBytes == 0 || total < maxBytes); ok = it.Next() {
		var entry ballastpb.LogEntry
		if err := proto.Unmarshal(it.Value(), &entry); err != nil {
			return nil, fmt.Errorf("decode log entry of volume %d: %w", vol, err)
		}
		if entry.Seq != want {
			return nil, fmt.Errorf("%w: volume %d: log holds %d where %d was expected (trimmed?)", ErrSeqGap, vol, entry.Seq, want)
		}
		r, n, err := rebuildRecord(snap, vol, &entry)
		if err != nil {
			return nil, err
		}
		total += n
		out = append(out, r)
		want++
	}
	return out, it.Error()
}

// rebuildRecord turns a log entry back into a record carrying the current
// data of its blocks (a block with no data now becomes a removal). Blocks
// inside the entry's removed ranges need nothing: any that hold data now
// were written by a later record of the run, which carries them.
func rebuildRecord(snap *pebble.Snapshot, vol uint64, e *ballastpb.LogEntry) (*ballastpb.LogRecord, int, error) {
	r := &ballastpb.LogRecord{Seq: e.Seq, Removed: e.Removed}
	n := 0
	for _, blk := range e.Blocks {
		v, closer, err := snap.Get(blockKey(vol, blk))
		switch {
		case errors.Is(err, pebble.ErrNotFound):
			r.Blocks = append(r.Blocks, &ballastpb.BlockWrite{Block: blk})
		case err != nil:
			return nil, 0, fmt.Errorf("read block %d of volume %d: %w", blk, vol, err)
		default:
			r.Blocks = append(r.Blocks, &ballastpb.BlockWrite{Block: blk, Data: bytes.Clone(v)})
			n += len(v)
			closer.Close()
		}
	}
	return r, n, nil
}

// ReadBlocks fills dst (a whole number of blocks) with the volume's blocks
// from first on; absent blocks read as zeroes.
func (s *blockStore) ReadBlocks(vol, first uint64, dst []byte) error {
	count := uint64(len(dst) / volume.BlockSizeBytes)
	if count == 1 {
		// One block: a point lookup is cheaper than an iterator.
		v, closer, err := s.db.Get(blockKey(vol, first))
		if errors.Is(err, pebble.ErrNotFound) {
			clear(dst)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read block %d of volume %d: %w", first, vol, err)
		}
		copy(dst, v)
		closer.Close()
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: blockKey(vol, first),
		UpperBound: blockKey(vol, first+count),
	})
	if err != nil {
		return fmt.Errorf("iterate blocks of volume %d: %w", vol, err)
	}
	defer it.Close()
	next := first
	for ok := it.First(); ok; ok = it.Next() {
		b := binary.BigEndian.Uint64(it.Key()[9:])
		clear(dst[(next-first)*volume.BlockSizeBytes : (b-first)*volume.BlockSizeBytes])
		copy(dst[(b-first)*volume.BlockSizeBytes:(b-first+1)*volume.BlockSizeBytes], it.Value())
		next = b + 1
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("read blocks of volume %d: %w", vol, err)
	}
	clear(dst[(next-first)*volume.BlockSizeBytes:])
	return nil
}

// DropVolume removes every key of the volume: its log, blocks and state.
func (s *blockStore) DropVolume(vol uint64) error {
	s.mu.Lock()
	delete(s.state, vol)
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range []byte{prefixLog, prefixBlock} {
		lo := []byte{p}
		lo = binary.BigEndian.AppendUint64(lo, vol)
		hi := []byte{p}
		hi = binary.BigEndian.AppendUint64(hi, vol+1)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
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
