package logstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/hashicorp/raft"
)

// Group is one consensus group's raft.LogStore and raft.StableStore within a
// Store. Obtain it with Store.Group. It is safe for concurrent use, as raft
// requires: raft's main loop appends and truncates, its replication and
// snapshot goroutines read and compact, all at once.
//
// Every write (StoreLog, StoreLogs, DeleteRange, Set, SetUint64) is one
// pebble batch committed with pebble.Sync, so it is durable and atomic when
// it returns. Batches of different groups committed at the same time share
// one WAL fsync: pebble's commit pipeline queues every batch that asks for a
// sync (commit.go, commitPipeline: "with commitPipeline mutex locked: ...
// write batch to WAL; (optionally) add batch to WAL sync list; ...
// (optionally) wait for the WAL to sync"), and the WAL's single flusher
// goroutine takes the whole queue at once (record/log_writer.go,
// LogWriter.flushLoop: f.syncQ.load() returns every waiter [tail, head)),
// writes the pending blocks, calls Sync once (flushPending ->
// syncWithLatency) and releases every waiter (f.syncQ.pop(head, tail, ...)).
// BenchmarkStoreLogsManyGroups measures it.
type Group struct {
	s  *Store
	id uint64

	// writeMu serializes this group's log writes (and DeleteGroup) together
	// with the update of the cached indexes that follows each, so the cache
	// always matches the disk once a write returns. Lock order: writeMu,
	// then Store.closeMu, then mu.
	writeMu sync.Mutex
	// scratch is a value-encoding buffer, reused under writeMu.
	scratch []byte

	mu struct {
		sync.Mutex
		// first and last are the lowest and highest log index on disk; both
		// 0 when the group's log is empty.
		first, last uint64
	}
}

var (
	_ raft.LogStore    = (*Group)(nil)
	_ raft.StableStore = (*Group)(nil)
)

// ID returns the group's id.
func (g *Group) ID() uint64 { return g.id }

// FirstIndex returns the lowest index in the group's log, 0 if it is empty.
// It reads the in-memory cache, never the disk.
func (g *Group) FirstIndex() (uint64, error) {
	if err := g.s.acquire(); err != nil {
		return 0, err
	}
	defer g.s.release()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.first, nil
}

// LastIndex returns the highest index in the group's log, 0 if it is empty.
// It reads the in-memory cache, never the disk.
func (g *Group) LastIndex() (uint64, error) {
	if err := g.s.acquire(); err != nil {
		return 0, err
	}
	defer g.s.release()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.last, nil
}

// GetLog reads the entry at index into log. It returns raft.ErrLogNotFound,
// unwrapped as raft compares it with ==, if there is no such entry.
func (g *Group) GetLog(index uint64, log *raft.Log) error {
	if err := g.s.acquire(); err != nil {
		return err
	}
	defer g.s.release()
	v, closer, err := g.s.db.Get(logKey(g.id, index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return g.errorf(err, "get log %d", index)
	}
	defer closer.Close()
	if err := decodeLogValue(index, v, log); err != nil {
		return fmt.Errorf("logstore: group %d: log %d: %w: %v", g.id, index, ErrCorrupt, err)
	}
	return nil
}

// StoreLog durably stores one entry.
func (g *Group) StoreLog(log *raft.Log) error {
	return g.StoreLogs([]*raft.Log{log})
}

// StoreLogs durably and atomically stores entries: after a crash either all
// of them are in the log or none. An entry at an index already present
// replaces it. Index 0 is reserved (raft's first index is 1).
func (g *Group) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	if err := g.s.acquire(); err != nil {
		return err
	}
	defer g.s.release()

	b := g.s.db.NewBatch()
	defer b.Close()
	lo, hi := ^uint64(0), uint64(0)
	for _, l := range logs {
		if l == nil {
			return fmt.Errorf("logstore: group %d: store logs: nil entry", g.id)
		}
		if l.Index == 0 {
			return fmt.Errorf("logstore: group %d: store logs: index 0 is reserved", g.id)
		}
		lo, hi = min(lo, l.Index), max(hi, l.Index)
		g.scratch = appendLogValue(g.scratch[:0], l)
		// Set copies key and value into the batch, so scratch is reusable.
		if err := b.Set(logKey(g.id, l.Index), g.scratch, nil); err != nil {
			return g.errorf(err, "store logs %d-%d", logs[0].Index, logs[len(logs)-1].Index)
		}
	}
	if cap(g.scratch) > 1<<20 {
		g.scratch = nil // do not pin one huge entry's buffer
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return g.errorf(err, "store logs %d-%d", logs[0].Index, logs[len(logs)-1].Index)
	}
	g.mu.Lock()
	if g.mu.last == 0 || lo < g.mu.first {
		g.mu.first = lo
	}
	g.mu.last = max(g.mu.last, hi)
	g.mu.Unlock()
	return nil
}

// DeleteRange durably deletes the entries min through max inclusive, as one
// pebble range deletion. Raft deletes a prefix when it compacts the log
// after a snapshot and a suffix when a follower's log conflicts with its
// leader's.
func (g *Group) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	if err := g.s.acquire(); err != nil {
		return err
	}
	defer g.s.release()

	start, end := logSpan(g.id, min, max)
	if err := g.s.db.DeleteRange(start, end, pebble.Sync); err != nil {
		return g.errorf(err, "delete range %d-%d", min, max)
	}
	g.mu.Lock()
	first, last := g.mu.first, g.mu.last
	g.mu.Unlock()
	if last == 0 || max < first || min > last {
		return nil // nothing of the log was in the range
	}
	// The log may have gaps (raft tolerates them after a snapshot is
	// installed), so the new bounds are read from disk, not computed.
	first, last, err := g.scanBounds()
	if err != nil {
		return err
	}
	g.setBounds(first, last)
	return nil
}

// Set durably stores a stable-store key.
func (g *Group) Set(key, val []byte) error {
	if err := g.s.acquire(); err != nil {
		return err
	}
	defer g.s.release()
	if err := g.s.db.Set(stableKey(g.id, key), val, pebble.Sync); err != nil {
		return g.errorf(err, "set %q", key)
	}
	return nil
}

// Get returns the value of a stable-store key, or ErrKeyNotFound (text
// "not found", unwrapped) if it was never set.
func (g *Group) Get(key []byte) ([]byte, error) {
	if err := g.s.acquire(); err != nil {
		return nil, err
	}
	defer g.s.release()
	v, closer, err := g.s.db.Get(stableKey(g.id, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrKeyNotFound
	}
	if err != nil {
		return nil, g.errorf(err, "get %q", key)
	}
	defer closer.Close()
	return append([]byte{}, v...), nil
}

// SetUint64 durably stores a stable-store key holding a uint64, as 8
// big-endian bytes.
func (g *Group) SetUint64(key []byte, val uint64) error {
	return g.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the value of a stable-store key set by SetUint64, or 0
// and ErrKeyNotFound (text "not found", unwrapped) if it was never set, as
// raft-boltdb does; raft accepts either that or (0, nil).
func (g *Group) GetUint64(key []byte) (uint64, error) {
	v, err := g.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("logstore: group %d: key %q: %w: %d-byte value is not a uint64", g.id, key, ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// scanBounds reads the lowest and highest log index of the group from disk.
// The caller holds closeMu for reading (or owns the unpublished store).
func (g *Group) scanBounds() (first, last uint64, err error) {
	lower, upper := groupSpan(kindLog, g.id)
	it, err := g.s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return 0, 0, g.errorf(err, "scan log bounds")
	}
	if it.First() {
		first, err = g.indexOf(it.Key())
		if err == nil && it.Last() {
			last, err = g.indexOf(it.Key())
		}
	}
	if err := errors.Join(err, it.Error(), it.Close()); err != nil {
		return 0, 0, g.errorf(err, "scan log bounds")
	}
	return first, last, nil
}

// indexOf returns the index of one of the group's log keys.
func (g *Group) indexOf(k []byte) (uint64, error) {
	group, index, ok := parseLogKey(k)
	if !ok || group != g.id || index == 0 {
		return 0, fmt.Errorf("malformed log key %x: %w", k, ErrCorrupt)
	}
	return index, nil
}

func (g *Group) setBounds(first, last uint64) {
	g.mu.Lock()
	g.mu.first, g.mu.last = first, last
	g.mu.Unlock()
}

// errorf wraps err with the group and the operation, marking pebble's
// corruption errors with ErrCorrupt.
func (g *Group) errorf(err error, format string, args ...any) error {
	return fmt.Errorf("logstore: group %d: %s: %w", g.id, fmt.Sprintf(format, args...), classify(err))
}
