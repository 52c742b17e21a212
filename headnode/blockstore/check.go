package blockstore

import (
	"errors"
	"fmt"
	"maps"

	"github.com/cockroachdb/pebble"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// CheckInvariants is for tests: it recomputes what the store keeps
// incrementally and returns what disagrees. The in-memory index of
// journal refs must match the 'B' keys, and the counts of refs per
// journal batch, which the release trusts, a count from the index; every
// index entry of the volume must name an existing segment slot written
// for that block, and every segment's live count must be the number of
// index entries naming it. Run it while the store is idle.
func (s *Store) CheckInvariants(vol uint64) error {
	if err := s.checkRefCounts(); err != nil {
		return err
	}
	segs, err := s.Segments(vol)
	if err != nil {
		return err
	}
	byID := map[uint64]*ballastpb.Segment{}
	slotsOf := map[uint64][]uint64{}
	for _, seg := range segs {
		byID[seg.Id] = seg
		_, slots, err := s.Segment(vol, seg.Id)
		if err != nil {
			return err
		}
		if len(slots) != int(seg.Blocks) {
			return fmt.Errorf("segment %d: %d slots recorded for %d blocks", seg.Id, len(slots), seg.Blocks)
		}
		slotsOf[seg.Id] = slots
		seen := map[string]bool{}
		for _, sled := range seg.ShardSleds {
			if seen[sled] {
				return fmt.Errorf("segment %d has two shards on sled %s: %v", seg.Id, sled, seg.ShardSleds)
			}
			seen[sled] = true
		}
	}
	live := map[uint64]uint32{}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: indexKey(vol, 0), UpperBound: volumeUpper(prefixIndex, vol)})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		block := keyNumber(it.Key())
		loc, err := decodeLoc(it.Value())
		if err != nil {
			return err
		}
		seg := byID[loc.Segment]
		if seg == nil {
			return fmt.Errorf("block %d is indexed to missing segment %d", block, loc.Segment)
		}
		if loc.Slot >= seg.Blocks || slotsOf[loc.Segment][loc.Slot] != block {
			return fmt.Errorf("block %d is indexed to slot %d of segment %d, written for another block", block, loc.Slot, loc.Segment)
		}
		live[loc.Segment]++
	}
	for _, seg := range segs {
		if seg.LiveBlocks != live[seg.Id] {
			return fmt.Errorf("segment %d counts %d live blocks; the index names it %d times", seg.Id, seg.LiveBlocks, live[seg.Id])
		}
	}
	return nil
}

// checkRefCounts compares the store's in-memory index of journal refs
// with the 'B' keys, and its counts of refs per batch, which the release
// trusts, with a count from the index.
func (s *Store) checkRefCounts() error {
	fromKeys, err := loadRefIndex(s.db)
	if err != nil {
		return err
	}
	var errs []error
	seen := map[uint64]bool{}
	s.blockRefs.each(func(vol uint64, v *volumeRefs) {
		seen[vol] = true
		want := fromKeys.volume(vol)
		if v.count() != want.count() {
			errs = append(errs, fmt.Errorf("volume %d: %d refs in memory, %d keys", vol, v.count(), want.count()))
		}
		v.mu.RLock()
		v.refs.Scan(func(b uint64, r blockRef) bool {
			if k, ok := want.get(b); !ok || k != r {
				errs = append(errs, fmt.Errorf("volume %d block %d: ref %+v in memory, key %+v (%v)", vol, b, r, k, ok))
			}
			return true
		})
		v.mu.RUnlock()
	})
	fromKeys.each(func(vol uint64, v *volumeRefs) {
		if !seen[vol] && v.count() > 0 {
			errs = append(errs, fmt.Errorf("volume %d: %d keys, no refs in memory", vol, v.count()))
		}
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	counted, _ := s.refsFromIndex()
	s.refMu.Lock()
	kept := maps.Clone(s.refs)
	s.refMu.Unlock()
	if len(kept) != len(counted) {
		return fmt.Errorf("journal refs: %d batches counted, %d hold refs", len(kept), len(counted))
	}
	for lsn, n := range counted {
		if kept[lsn] != n {
			return fmt.Errorf("journal batch %d: %d refs counted, %d refs point to it", lsn, kept[lsn], n)
		}
	}
	return nil
}

// WriterTable is for tests: the volume's tables of named writes
// (writers.go) as stored, encoded, by client, to compare replicas' byte
// for byte.
func (s *Store) WriterTable(vol uint64) (map[uint64]string, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: writerKey(vol, 0), UpperBound: volumeUpper(prefixWriter, vol)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[uint64]string{}
	for ok := it.First(); ok; ok = it.Next() {
		out[keyNumber(it.Key())] = string(it.Value())
	}
	return out, it.Error()
}
