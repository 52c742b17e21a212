package blockstore

import "math"

// BlockChange is a change of a volume's blocks that a commit made: blocks
// [First, First+Count) hold other data now. Data, when set, is the new
// data of a single block (Count 1), valid only during the hook's call;
// otherwise the new data is not at hand (removed, written straight to a
// segment, replayed from the journal, installed by a sync).
type BlockChange struct {
	First, Count uint64
	Data         []byte
}

// AllBlocks is the Count of a change of the whole volume.
const AllBlocks = math.MaxUint64

// BlockHook learns of every commit's changes of block data, in commit
// order, under the volume's index lock: a reader that looked a block up
// before the change is ordered before the hook's call, one after it sees
// the new data in the store. It must be quick and must not call the store.
// Flushes and compactions move data without changing it and are not
// reported.
type BlockHook func(vol uint64, changes []BlockChange)

// SetBlockHook installs the hook (nil removes it). A head node's read
// cache follows the store through it.
func (s *Store) SetBlockHook(h BlockHook) {
	if h == nil {
		s.blockHook.Store(nil)
		return
	}
	s.blockHook.Store(&h)
}

func (s *Store) hook() BlockHook {
	if h := s.blockHook.Load(); h != nil {
		return *h
	}
	return nil
}

// changed records a change for the hook, if there is one.
func (a *applier) changed(first, count uint64, data []byte) {
	if a.hook == nil {
		return
	}
	a.changes = append(a.changes, BlockChange{First: first, Count: count, Data: data})
}
