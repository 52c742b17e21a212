package blockstore

import (
	"fmt"

	"github.com/cockroachdb/pebble"
)

// AllocRun is a run of a volume's blocks that all hold data or that all
// are holes (never written, or removed: they read as zeroes).
type AllocRun struct {
	Blocks uint64
	Hole   bool
}

// maxAllocationScan bounds the allocated blocks one Allocation call
// visits, and so its time (tens of milliseconds at most), whatever the
// range: a caller asks again from where the answer stops. A variable for
// tests.
var maxAllocationScan = 256 << 10

// Allocation describes blocks [first, first+count) of vol, from first on,
// as runs that alternate between data and holes. A block holds data if
// the journal has data for it ('B' ref) or it is indexed to a segment
// ('I' key); anything else is a hole. Past maxAllocationScan allocated
// blocks it stops, describing less than count blocks (at least one).
func (s *Store) Allocation(vol, first, count uint64) ([]AllocRun, error) {
	if count == 0 {
		return nil, nil
	}
	end := first + count
	if end < first {
		return nil, fmt.Errorf("allocation of volume %d: range [%d, +%d) overflows", vol, first, count)
	}
	// The refs and the snapshot under the index's lock: the same point.
	refs := s.blockRefs.volume(vol)
	refs.mu.RLock()
	var inLog []uint64
	refs.refs.Ascend(first, func(b uint64, _ blockRef) bool {
		if b >= end || len(inLog) == maxAllocationScan {
			return false
		}
		inLog = append(inLog, b)
		return true
	})
	snap := s.db.NewSnapshot()
	refs.mu.RUnlock()
	defer snap.Close()
	if len(inLog) == maxAllocationScan {
		// Past the last of these, the journal may hold more: stop there.
		end = inLog[len(inLog)-1] + 1
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: indexKey(vol, first), UpperBound: indexKey(vol, end)})
	if err != nil {
		return nil, fmt.Errorf("iterate index of volume %d: %w", vol, err)
	}
	defer it.Close()

	var runs []AllocRun
	next := first // the first block not yet described
	allocated := func(b uint64) {
		if b > next {
			runs = append(runs, AllocRun{Blocks: b - next, Hole: true})
		}
		if n := len(runs); n > 0 && !runs[n-1].Hole {
			runs[n-1].Blocks++
		} else {
			runs = append(runs, AllocRun{Blocks: 1})
		}
		next = b + 1
	}
	visited, i := 0, 0
	indexed := it.First()
	for {
		var b uint64
		switch {
		case i < len(inLog) && (!indexed || inLog[i] <= keyNumber(it.Key())):
			b = inLog[i]
			if indexed && keyNumber(it.Key()) == b {
				indexed = it.Next()
			}
			i++
		case indexed:
			b = keyNumber(it.Key())
			indexed = it.Next()
		default:
			if err := it.Error(); err != nil {
				return nil, fmt.Errorf("iterate index of volume %d: %w", vol, err)
			}
			if next < end {
				runs = append(runs, AllocRun{Blocks: end - next, Hole: true})
			}
			return runs, nil
		}
		if visited == maxAllocationScan && b > next {
			// Enough work: describe up to b, whose state is known.
			runs = append(runs, AllocRun{Blocks: b - next, Hole: true})
			return runs, nil
		}
		if visited == maxAllocationScan {
			return runs, nil
		}
		visited++
		allocated(b)
	}
}

// Usage counts the blocks among vol's first blocks that hold data, and
// how many blocks have data in the journal (not yet flushed, or flushed
// and written again).
func (s *Store) Usage(vol, blocks uint64) (used, inJournal uint64, err error) {
	for first := uint64(0); first < blocks; {
		runs, err := s.Allocation(vol, first, blocks-first)
		if err != nil {
			return 0, 0, err
		}
		for _, r := range runs {
			if !r.Hole {
				used += r.Blocks
			}
			first += r.Blocks
		}
	}
	return used, uint64(s.blockRefs.volume(vol).count()), nil
}
