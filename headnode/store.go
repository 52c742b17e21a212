package headnode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/durable"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// Key layout of a head node's block store (one pebble database per node):
//
//	'L' | volume id u64 | seq u64    -> LogRecord (protobuf): the write log
//	'B' | volume id u64 | block u64  -> 4096 bytes: the newest data of a block
//	'S' | volume id u64              -> last seq u64 | trimmed-through seq u64
//
// All integers are big-endian so keys sort by volume, then seq or block.
// One synced batch appends log records, applies their blocks and advances
// the last seq, so a crash leaves either all of a batch or none of it.
// A block that has no 'B' key reads as zeroes.
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

// openBlockStore opens (creating if needed) the store in dir. fs may be nil
// for the real filesystem.
func openBlockStore(dir string, fs vfs.FS) (*blockStore, error) {
	opts := &pebble.Options{
		// Data blocks are written once and read rarely: a bigger memtable
		// means fewer flushes under random 4 KiB writes.
		MemTableSize: 64 << 20,
	}
	if fs == nil {
		fs = vfs.Default
	}
	opts.FS = fs
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

// Append makes records durable: it logs them, applies their blocks and
// advances the volume's last seq, in one synced batch. The first record
// must follow the last seq; records at or below it are skipped, since a
// sender may resend what it could not confirm.
func (s *blockStore) Append(vol uint64, records []*ballastpb.LogRecord) error {
	st, err := s.volumeState(vol)
	if err != nil {
		return err
	}
	s.mu.Lock()
	last := st.lastSeq
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
		data, err := proto.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode log record %d: %w", r.Seq, err)
		}
		if err := b.Set(logKey(vol, r.Seq), data, nil); err != nil {
			return fmt.Errorf("batch log record: %w", err)
		}
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
		}
		next++
	}
	if next == last+1 {
		return nil
	}
	var sv [16]byte
	binary.BigEndian.PutUint64(sv[:], next-1)
	s.mu.Lock()
	binary.BigEndian.PutUint64(sv[8:], st.trimmedThrough)
	s.mu.Unlock()
	if err := b.Set(stateKey(vol), sv[:], nil); err != nil {
		return fmt.Errorf("batch log state: %w", err)
	}
	// pebble coalesces the WAL syncs of batches committed concurrently, so
	// the appends of many volumes share one fsync (group commit).
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit log of volume %d: %w", vol, err)
	}
	s.mu.Lock()
	st.lastSeq = next - 1
	s.mu.Unlock()
	return nil
}

// LogFrom returns up to maxRecords records of the volume's log from seq on,
// and stops after the record that reaches maxBytes of block data (0: no
// byte limit).
func (s *blockStore) LogFrom(vol, from uint64, maxRecords, maxBytes int) ([]*ballastpb.LogRecord, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: logKey(vol, from),
		UpperBound: logKey(vol+1, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("iterate log of volume %d: %w", vol, err)
	}
	defer it.Close()
	var out []*ballastpb.LogRecord
	want := from
	bytes := 0
	for ok := it.First(); ok && len(out) < maxRecords && (maxBytes == 0 || bytes < maxBytes); ok = it.Next() {
		bytes += len(it.Value())
		r := &ballastpb.LogRecord{}
		if err := proto.Unmarshal(it.Value(), r); err != nil {
			return nil, fmt.Errorf("decode log record of volume %d: %w", vol, err)
		}
		if r.Seq != want {
			return nil, fmt.Errorf("%w: volume %d: log holds %d where %d was expected (trimmed?)", ErrSeqGap, vol, r.Seq, want)
		}
		out = append(out, r)
		want++
	}
	return out, it.Error()
}

// TrimLog drops log records at or below through: every replica has them
// durably, and their blocks are applied. It need not be synced; a crash
// only leaves records to trim again.
func (s *blockStore) TrimLog(vol, through uint64) error {
	st, err := s.volumeState(vol)
	if err != nil {
		return err
	}
	s.mu.Lock()
	through = min(through, st.lastSeq)
	if through <= st.trimmedThrough {
		s.mu.Unlock()
		return nil
	}
	from := st.trimmedThrough + 1
	st.trimmedThrough = through
	var sv [16]byte
	binary.BigEndian.PutUint64(sv[:], st.lastSeq)
	binary.BigEndian.PutUint64(sv[8:], through)
	s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(logKey(vol, from), logKey(vol, through+1), nil); err != nil {
		return fmt.Errorf("batch trim: %w", err)
	}
	if err := b.Set(stateKey(vol), sv[:], nil); err != nil {
		return fmt.Errorf("batch log state: %w", err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("trim log of volume %d: %w", vol, err)
	}
	return nil
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
