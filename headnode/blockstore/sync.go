package blockstore

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/journal"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// Full sync
//
// A secondary that is new to a volume, or whose log ends before what the
// primary still holds, cannot be reconciled record by record. The primary
// then sends it a full copy: every block still in the log (with its data),
// every index entry and every segment, read from one snapshot of the
// store, as StateRecords in chunks. The secondary drops what it held of
// the volume when the copy begins and records that it is syncing, so that
// a copy cut short (either side crashing) is never mistaken for a copy:
// its next hello says it needs a full sync. Data already on the sleds is
// not copied; the index entries name it.

// FullState reads the volume's whole state from one snapshot and hands it
// to emit in chunks of about chunkBytes of block data. It returns the
// volume's last seq and next segment id at the snapshot.
func (s *Store) FullState(vol uint64, chunkBytes int, emit func(*ballastpb.StateRecord) error) (lastSeq, nextSeg uint64, err error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	// The cached state may be newer than the snapshot; read the stored one.
	st := &ballastpb.VolumeLogState{}
	if v, closer, err := snap.Get(stateKey(vol)); err == nil {
		err = proto.Unmarshal(v, st)
		closer.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("%w: log state of volume %d: %v", ErrCorrupt, vol, err)
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return 0, 0, fmt.Errorf("read log state of volume %d: %w", vol, err)
	}

	rec := &ballastpb.StateRecord{}
	size := 0
	flush := func(force bool) error {
		if !force && size < chunkBytes && len(rec.Blocks) < 64<<10 {
			return nil
		}
		if len(rec.Blocks) == 0 && len(rec.Segments) == 0 && len(rec.Writers) == 0 {
			return nil
		}
		if err := emit(rec); err != nil {
			return err
		}
		rec, size = &ballastpb.StateRecord{}, 0
		return nil
	}

	// Segments first: the index entries that follow name them.
	segs, err := snap.NewIter(&pebble.IterOptions{LowerBound: volKey(prefixSegment, vol, 0), UpperBound: volumeUpper(prefixSegment, vol)})
	if err != nil {
		return 0, 0, fmt.Errorf("iterate segments of volume %d: %w", vol, err)
	}
	for ok := segs.First(); ok; ok = segs.Next() {
		id := keyNumber(segs.Key())
		seg, slots, err := getSegment(snap, vol, id, true)
		if err != nil {
			segs.Close()
			return 0, 0, err
		}
		rec.Segments = append(rec.Segments, &ballastpb.SegmentState{Id: id, Segment: seg, SlotBlocks: slots})
		size += 8 * len(slots)
		if err := flush(false); err != nil {
			segs.Close()
			return 0, 0, err
		}
	}
	if err := segs.Close(); err != nil {
		return 0, 0, fmt.Errorf("iterate segments of volume %d: %w", vol, err)
	}

	// What the clients had applied (writers.go).
	writers, err := snap.NewIter(&pebble.IterOptions{LowerBound: writerKey(vol, 0), UpperBound: volumeUpper(prefixWriter, vol)})
	if err != nil {
		return 0, 0, fmt.Errorf("iterate writers of volume %d: %w", vol, err)
	}
	for ok := writers.First(); ok; ok = writers.Next() {
		ws := &ballastpb.WriterState{}
		if err := proto.Unmarshal(writers.Value(), ws); err != nil {
			writers.Close()
			return 0, 0, fmt.Errorf("%w: writes of client %x of volume %d: %v", ErrCorrupt, keyNumber(writers.Key()), vol, err)
		}
		rec.Writers = append(rec.Writers, ws)
		size += 64 + 32*len(ws.Ops)
		if err := flush(false); err != nil {
			writers.Close()
			return 0, 0, err
		}
	}
	if err := writers.Close(); err != nil {
		return 0, 0, fmt.Errorf("iterate writers of volume %d: %w", vol, err)
	}

	// Blocks: the data and index keys of a block travel together, since a
	// BlockState sets both (applyState).
	data, err := snap.NewIter(&pebble.IterOptions{LowerBound: volKey(prefixBlock, vol, 0), UpperBound: volumeUpper(prefixBlock, vol)})
	if err != nil {
		return 0, 0, fmt.Errorf("iterate blocks of volume %d: %w", vol, err)
	}
	defer data.Close()
	index, err := snap.NewIter(&pebble.IterOptions{LowerBound: volKey(prefixIndex, vol, 0), UpperBound: volumeUpper(prefixIndex, vol)})
	if err != nil {
		return 0, 0, fmt.Errorf("iterate index of volume %d: %w", vol, err)
	}
	defer index.Close()
	okD, okI := data.First(), index.First()
	for okD || okI {
		var bs ballastpb.BlockState
		switch {
		case okD && (!okI || keyNumber(data.Key()) <= keyNumber(index.Key())):
			bs.Block = keyNumber(data.Key())
		default:
			bs.Block = keyNumber(index.Key())
		}
		if okD && keyNumber(data.Key()) == bs.Block {
			ref, err := decodeBlockRef(data.Value())
			if err != nil {
				return 0, 0, err
			}
			bs.Version, bs.Data = ref.version, make([]byte, blockSize)
			if err := s.readRef(vol, bs.Block, ref, bs.Data); err != nil {
				return 0, 0, err
			}
			size += len(bs.Data)
			okD = data.Next()
		}
		if okI && keyNumber(index.Key()) == bs.Block {
			loc, err := decodeLoc(index.Value())
			if err != nil {
				return 0, 0, err
			}
			bs.Indexed, bs.SegmentId, bs.Slot = true, loc.Segment, loc.Slot
			size += indexBytes
			okI = index.Next()
		}
		rec.Blocks = append(rec.Blocks, &bs)
		if err := flush(false); err != nil {
			return 0, 0, err
		}
	}
	if err := data.Error(); err != nil {
		return 0, 0, fmt.Errorf("iterate blocks of volume %d: %w", vol, err)
	}
	if err := index.Error(); err != nil {
		return 0, 0, fmt.Errorf("iterate index of volume %d: %w", vol, err)
	}
	if err := flush(true); err != nil {
		return 0, 0, err
	}
	return st.LastSeq, max(st.NextSegmentId, 1), nil
}

// BeginSync drops what the store holds of the volume and marks it syncing.
func (s *Store) BeginSync(vol uint64) error {
	if err := s.DropVolume(vol); err != nil {
		return err
	}
	return s.putState(vol, &ballastpb.VolumeLogState{Syncing: true}, pebble.Sync)
}

// ApplySyncState installs one chunk of a full copy. It is not synced:
// EndSync's synced commit makes every chunk before it durable too.
func (s *Store) ApplySyncState(vol uint64, rec *ballastpb.StateRecord) error {
	st, err := s.stateCopy(vol)
	if err != nil {
		return err
	}
	if !st.Syncing {
		return fmt.Errorf("volume %d: sync state without a sync begun", vol)
	}
	// The chunk's data goes to the journal; the entry is never replayed (a
	// sync cut short starts over), but the refs to it must not reach
	// pebble before it is durable.
	e, err := journalEntry(vol, &ballastpb.LogRecord{State: rec})
	if err != nil {
		return err
	}
	e.Meta = encodeMeta(metaSyncData, vol, nil)
	s.NoteJournalFill()
	defer s.beginJournalAppend()()
	entryLocs, commits, err := s.appendEntries(splitEntry(e, s.maxEntryBlocks, e.Meta))
	if err == nil {
		err = waitCommits(s.ctx, commits)
	}
	if err != nil {
		return fmt.Errorf("journal sync state of volume %d: %w", vol, err)
	}
	var locs []journal.Location
	for _, l := range entryLocs {
		locs = append(locs, l...)
	}
	b := s.db.NewIndexedBatch()
	defer b.Close()
	a := applier{b: b, vol: vol, st: st, liveDelta: map[uint64]int64{}, entry: &ballastpb.LogEntry{}, locs: locs, refs: s.blockRefs.volume(vol), hook: s.hook()}
	if err := a.applyState(rec); err != nil {
		return fmt.Errorf("apply sync state of volume %d: %w", vol, err)
	}
	if a.next != len(a.locs) {
		return fmt.Errorf("%w: sync state of volume %d used %d of %d journaled blocks", ErrCorrupt, vol, a.next, len(a.locs))
	}
	if err := a.commit(pebble.NoSync); err != nil {
		return fmt.Errorf("commit sync state of volume %d: %w", vol, err)
	}
	s.countRefs(a.refDelta)
	return nil
}

// EndSync makes the copy the volume's state at seq.
func (s *Store) EndSync(vol, seq, nextSeg uint64) error {
	st, err := s.stateCopy(vol)
	if err != nil {
		return err
	}
	if !st.Syncing {
		return fmt.Errorf("volume %d: sync end without a sync begun", vol)
	}
	return s.putState(vol, &ballastpb.VolumeLogState{LastSeq: seq, TrimmedThrough: seq, NextSegmentId: nextSeg}, pebble.Sync)
}

// Syncing says whether a full sync of the volume began and did not end.
func (s *Store) Syncing(vol uint64) (bool, error) {
	st, err := s.stateCopy(vol)
	if err != nil {
		return false, err
	}
	return st.Syncing, nil
}

func (s *Store) putState(vol uint64, st *ballastpb.VolumeLogState, opts *pebble.WriteOptions) error {
	v, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode log state: %w", err)
	}
	if err := s.db.Set(stateKey(vol), v, opts); err != nil {
		return fmt.Errorf("write log state of volume %d: %w", vol, err)
	}
	s.mu.Lock()
	s.state[vol] = st
	s.mu.Unlock()
	return nil
}
