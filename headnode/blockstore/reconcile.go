package blockstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// LogFrom returns, for up to maxRecords records of the volume's log from
// seq `from` on, state records: the current state of every key each record
// touched. It stops after the record that reaches maxBytes of block data
// (0: no limit).
//
// Why state and not the records themselves: the log keeps no data, and a
// state record is exact where a replayed record might not be (a flush
// record replayed on a replica whose log data differs would index other
// blocks). Applying the state records of the run from `from` to the last
// seq, in order, gives the receiver exactly this store's state for every
// key the run touched; every other key was equal already, since both
// replicas applied the same records before `from`. A key inside a removed
// range that holds something now was set by a later record of the run,
// which carries it. Reconciliation always runs to the last seq, so a
// prefix of the run is never left applied alone for good.
func (s *Store) LogFrom(vol, from uint64, maxRecords, maxBytes int) ([]*ballastpb.LogRecord, error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	st, err := s.volumeState(vol)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	nextSeg := st.NextSegmentId
	s.mu.Unlock()
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: logKey(vol, from),
		UpperBound: volumeUpper(prefixLog, vol),
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
			return nil, fmt.Errorf("%w: log entry of volume %d: %v", ErrCorrupt, vol, err)
		}
		if entry.Seq != want {
			return nil, fmt.Errorf("%w: volume %d: log holds %d where %d was expected (trimmed?)", ErrSeqGap, vol, entry.Seq, want)
		}
		state, n, err := s.stateOf(snap, vol, &entry)
		if err != nil {
			return nil, err
		}
		state.NextSegmentId = nextSeg
		total += n
		out = append(out, &ballastpb.LogRecord{Seq: entry.Seq, State: state})
		want++
	}
	return out, it.Error()
}

// stateOf reads the current state of the keys a log entry names.
func (s *Store) stateOf(snap *pebble.Snapshot, vol uint64, e *ballastpb.LogEntry) (*ballastpb.StateRecord, int, error) {
	st := &ballastpb.StateRecord{Cleared: e.Removed}
	n := 0
	for _, blk := range e.Blocks {
		bs := &ballastpb.BlockState{Block: blk}
		v, closer, err := snap.Get(blockKey(vol, blk))
		switch {
		case errors.Is(err, pebble.ErrNotFound):
		case err != nil:
			return nil, 0, fmt.Errorf("read block %d of volume %d: %w", blk, vol, err)
		default:
			ref, derr := decodeBlockRef(v)
			closer.Close()
			if derr != nil {
				return nil, 0, derr
			}
			bs.Version, bs.Data = ref.version, make([]byte, blockSize)
			if err := s.readRef(vol, blk, ref, bs.Data); err != nil {
				return nil, 0, err
			}
			n += len(bs.Data)
		}
		v, closer, err = snap.Get(indexKey(vol, blk))
		switch {
		case errors.Is(err, pebble.ErrNotFound):
		case err != nil:
			return nil, 0, fmt.Errorf("read index of block %d of volume %d: %w", blk, vol, err)
		default:
			loc, derr := decodeLoc(v)
			closer.Close()
			if derr != nil {
				return nil, 0, derr
			}
			bs.Indexed, bs.SegmentId, bs.Slot = true, loc.Segment, loc.Slot
		}
		st.Blocks = append(st.Blocks, bs)
	}
	for _, id := range e.Segments {
		seg, slots, err := getSegment(snap, vol, id, true)
		if err != nil {
			return nil, 0, err
		}
		st.Segments = append(st.Segments, &ballastpb.SegmentState{Id: id, Segment: seg, SlotBlocks: slots})
	}
	ws, err := writerStates(snap, vol, e.Writers)
	if err != nil {
		return nil, 0, err
	}
	st.Writers = ws
	return st, n, nil
}

// BlocksWrittenThrough returns the blocks whose newest data, still in
// the log's keys (not yet flushed to the sleds), was written by a record
// at or below seq.
func (s *Store) BlocksWrittenThrough(vol, seq uint64) ([]uint64, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: blockKey(vol, 0),
		UpperBound: volumeUpper(prefixBlock, vol),
	})
	if err != nil {
		return nil, fmt.Errorf("iterate blocks of volume %d: %w", vol, err)
	}
	defer it.Close()
	var blocks []uint64
	for ok := it.First(); ok; ok = it.Next() {
		v := it.Value()
		if len(v) < versionBytes {
			return nil, fmt.Errorf("%w: block %d of volume %d is %d bytes", ErrCorrupt, keyNumber(it.Key()), vol, len(v))
		}
		if binary.BigEndian.Uint64(v) <= seq {
			blocks = append(blocks, keyNumber(it.Key()))
		}
	}
	return blocks, it.Error()
}
