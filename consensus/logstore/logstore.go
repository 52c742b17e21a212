package logstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/internal/durable"
)

// ErrCorrupt marks data that fails to decode, or that pebble reports as
// corrupt. The store's copy of the data is bad: do not retry on this
// replica. Test with errors.Is.
var ErrCorrupt = errors.New("logstore: corrupt data")

// ErrClosed is returned by every operation on a closed Store or on a Group
// of one.
var ErrClosed = errors.New("logstore: store closed")

// ErrKeyNotFound is returned, unwrapped, by Group.Get and Group.GetUint64
// for a key that was never set. Its text is exactly "not found" because
// hashicorp/raft recognises a missing stable-store key by comparing
// err.Error() with "not found" (raft v1.8.0, api.go HasExistingState and
// NewRaft, raft.go requestVote); wrapping it would break that.
var ErrKeyNotFound = errors.New("not found")

// Options configures a Store.
type Options struct {
	// FS is the filesystem the database lives on. Nil means the operating
	// system's (vfs.Default). Tests pass vfs.NewMem() or vfs.NewStrictMem().
	FS vfs.FS
	// Logger receives pebble's messages (WAL replay, compactions, and fatal
	// invariant failures, after which it must not return). Nil means
	// pebble.DefaultLogger: the standard library's log package.
	Logger pebble.Logger
}

// Store is one node's raft log store: a pebble database holding the raft
// log and stable store of every consensus group on the node. It is safe for
// concurrent use.
type Store struct {
	dir string
	db  *pebble.DB

	// closeMu is held for reading by every operation that uses db, and for
	// writing by Close, so no operation touches a closed database.
	closeMu sync.RWMutex
	closed  bool

	mu struct {
		sync.Mutex
		// groups holds the Group of every id handed out or found on disk.
		// Entries are never removed, so every Group(id) call returns the
		// same *Group and its cached indexes stay coherent.
		groups map[uint64]*Group
	}
}

// Open opens, creating if needed, the log store in directory dir of the
// operating system's filesystem.
func Open(dir string) (*Store, error) {
	return OpenWithOptions(dir, Options{})
}

// OpenWithOptions opens, creating if needed, the log store in directory dir
// of opts.FS.
func OpenWithOptions(dir string, opts Options) (*Store, error) {
	fs := opts.FS
	if fs == nil {
		fs = vfs.Default
	}
	if err := durable.MkdirAll(fs, dir); err != nil {
		return nil, fmt.Errorf("logstore: create %s: %w", dir, err)
	}
	db, err := pebble.Open(dir, &pebble.Options{
		FS:     fs,
		Logger: opts.Logger,
		// Pinned rather than FormatNewest, so a pebble upgrade does not
		// silently ratchet the on-disk format.
		FormatMajorVersion: pebble.FormatVirtualSSTables,
	})
	if err != nil {
		return nil, fmt.Errorf("logstore: open %s: %w", dir, classify(err))
	}
	s := &Store{dir: dir, db: db}
	s.mu.groups = map[uint64]*Group{}
	if err := s.checkFormat(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.loadGroups(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// checkFormat records the format version in a new store and refuses a store
// written in a format this code does not know.
func (s *Store) checkFormat() error {
	v, closer, err := s.db.Get(metaFormatKey)
	if errors.Is(err, pebble.ErrNotFound) {
		// A new store, unless it has keys: the marker is the first thing
		// ever written, so keys without it mean damage.
		if err := s.checkEmpty(); err != nil {
			return err
		}
		val := binary.AppendUvarint(nil, formatVersion)
		if err := s.db.Set(metaFormatKey, val, pebble.Sync); err != nil {
			return fmt.Errorf("logstore: %s: write format version: %w", s.dir, classify(err))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("logstore: %s: read format version: %w", s.dir, classify(err))
	}
	defer closer.Close()
	ver, n := binary.Uvarint(v)
	if n <= 0 || n != len(v) {
		return fmt.Errorf("logstore: %s: format version %x: %w", s.dir, v, ErrCorrupt)
	}
	if ver != formatVersion {
		return fmt.Errorf("logstore: %s: format version %d, this build reads only %d", s.dir, ver, formatVersion)
	}
	return nil
}

// checkEmpty returns an error wrapping ErrCorrupt if the store has a key.
func (s *Store) checkEmpty() error {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("logstore: %s: %w", s.dir, classify(err))
	}
	var found error
	if it.First() {
		found = fmt.Errorf("logstore: %s: key %x but no format version: %w", s.dir, it.Key(), ErrCorrupt)
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("logstore: %s: %w", s.dir, classify(err))
	}
	return found
}

// loadGroups fills the first/last index cache of every group with log
// entries on disk, so FirstIndex and LastIndex never read the disk.
func (s *Store) loadGroups() error {
	ids, err := s.groupIDs(kindLog)
	if err != nil {
		return err
	}
	for _, id := range ids {
		g := s.Group(id)
		first, last, err := g.scanBounds()
		if err != nil {
			return err
		}
		g.setBounds(first, last)
	}
	return nil
}

// Close closes the store. It waits for operations in flight; later
// operations return ErrClosed. Closing a closed store returns ErrClosed.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("logstore: close %s: %w", s.dir, classify(err))
	}
	return nil
}

// acquire takes the read side of closeMu, failing if the store is closed.
// Call release when done with db.
func (s *Store) acquire() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *Store) release() { s.closeMu.RUnlock() }

// Group returns the raft.LogStore and raft.StableStore of group id. It
// never fails; a group with no state on disk is empty. Every call with the
// same id returns the same *Group.
func (s *Store) Group(id uint64) *Group {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.mu.groups[id]
	if !ok {
		g = &Group{s: s, id: id}
		s.mu.groups[id] = g
	}
	return g
}

// DeleteGroup durably removes every log entry and stable-store key of group
// id, in one atomic write. Use it when the group leaves the node, after
// shutting its raft instance down.
func (s *Store) DeleteGroup(id uint64) error {
	g := s.Group(id)
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	b := s.db.NewBatch()
	defer b.Close()
	for _, kind := range []byte{kindLog, kindStable} {
		start, end := groupSpan(kind, id)
		if err := b.DeleteRange(start, end, nil); err != nil {
			return g.errorf(err, "delete group")
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return g.errorf(err, "delete group")
	}
	g.setBounds(0, 0)
	return nil
}

// Groups returns, in increasing order, the id of every group with a log
// entry or a stable-store key on disk.
func (s *Store) Groups() ([]uint64, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	logs, err := s.groupIDs(kindLog)
	if err != nil {
		return nil, err
	}
	stable, err := s.groupIDs(kindStable)
	if err != nil {
		return nil, err
	}
	ids := append(logs, stable...)
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// groupIDs returns the groups with a key of kind, seeking from one group to
// the next rather than reading every key.
func (s *Store) groupIDs(kind byte) ([]uint64, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{kind},
		UpperBound: []byte{kind + 1},
	})
	if err != nil {
		return nil, fmt.Errorf("logstore: %s: list groups: %w", s.dir, classify(err))
	}
	var ids []uint64
	for ok := it.First(); ok; {
		id, good := parseGroupKey(it.Key())
		if !good {
			err := fmt.Errorf("logstore: %s: malformed key %x: %w", s.dir, it.Key(), ErrCorrupt)
			return nil, errors.Join(err, it.Close())
		}
		ids = append(ids, id)
		if id == ^uint64(0) {
			break
		}
		ok = it.SeekGE(groupPrefix(kind, id+1))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("logstore: %s: list groups: %w", s.dir, classify(err))
	}
	return ids, nil
}

// classify marks pebble's corruption errors with ErrCorrupt. Pebble marks
// them with cockroachdb/errors, which the standard errors.Is does not see
// through, so callers could not otherwise tell them apart.
func classify(err error) error {
	if err != nil && pebble.IsCorruptionError(err) && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}
