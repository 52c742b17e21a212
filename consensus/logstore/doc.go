// Package logstore owns a node's raft log store: one pebble database that
// holds the raft log and the stable store (current term, vote) of every
// hashicorp/raft consensus group on the node, its keys prefixed by group id,
// so that one WAL fsync commits the appends of many groups.
//
// It may import the standard library, github.com/cockroachdb/pebble and
// github.com/hashicorp/raft; nothing of this module.
//
// # Use
//
//	logs, err := logstore.Open(dir)       // or OpenWithOptions(dir, Options{FS: vfs.NewMem()})
//	g := logs.Group(groupID)              // a raft.LogStore and a raft.StableStore
//	raft.NewRaft(conf, fsm, g, g, snaps, trans)
//	...
//	logs.DeleteGroup(groupID)             // when the group leaves the node
//	logs.Close()
//
// Errors: GetLog of a missing index returns raft.ErrLogNotFound, and Get or
// GetUint64 of a missing key returns ErrKeyNotFound (text "not found"), both
// unwrapped, because raft tests for them by identity and by text. Every
// other error names the group and the operation and wraps its cause; a
// value that fails to decode, or data pebble finds corrupt, wraps
// ErrCorrupt. Use after Close returns ErrClosed.
//
// # On-disk format
//
// The store is a pebble database (format major version
// FormatVirtualSSTables, bytewise comparer) in the directory given to Open.
// Pebble owns the files: its WAL, MANIFEST and sstables. This package owns
// the keys and values, described here. All integers in keys are big-endian,
// so that bytewise order is numeric order. Varints are encoding/binary's
// (LEB128; signed ones zig-zag encoded).
//
// Keys begin with a kind byte:
//
//	kind  key                                          value
//	0x00  0x00 "format"                                uvarint store format version (1)
//	0x01  0x01 | group u64 | index u64   (17 bytes)    a raft.Log, layout below
//	0x02  0x02 | group u64 | stable key  (≥ 9 bytes)   the stable-store value
//
// So each group's log is one contiguous key range ordered by index, deleted
// by one range tombstone (DeleteRange), and each group's stable keys are
// another (DeleteGroup deletes both ranges in one batch). Index 0 is never
// stored. A stable value is stored as given to Set; SetUint64 stores 8
// big-endian bytes, and GetUint64 of a value of another length is corrupt.
//
// A log value, version 1:
//
//	offset  size     field
//	0       1        value version: 0x01
//	1       1        raft.LogType
//	2       1        flags: 0x01 AppendedAt set, 0x02 Data non-nil,
//	                 0x04 Extensions non-nil; other bits must be 0
//	3       varies   uvarint Term
//	        varies   if 0x01: varint AppendedAt Unix seconds,
//	                 then uvarint nanoseconds (< 1e9)
//	        varies   if 0x02: uvarint length, then the Data bytes
//	        varies   if 0x04: uvarint length, then the Extensions bytes
//
// Nothing may follow. The Index is the key's, not repeated in the value.
// A nil Data or Extensions reads back nil and an empty one reads back empty;
// AppendedAt reads back as the same instant in UTC (its location and
// monotonic clock reading are not kept). A value that does not decode
// exactly so (unknown version or flag, short, truncated, trailing bytes,
// nanoseconds out of range) is corrupt: GetLog returns an error wrapping
// ErrCorrupt and never panics. There is no checksum in the value: pebble
// checksums every WAL chunk and sstable block.
//
// Compatibility: a reader refuses a store whose format version is not 1,
// and a log value whose version byte is not 1. A change to either layout
// that old code cannot read must bump the matching version.
//
// # Crash safety
//
//  1. Every mutation (StoreLog/StoreLogs, DeleteRange, Set/SetUint64,
//     DeleteGroup) is a single pebble batch committed with pebble.Sync: the
//     call returns only after the batch's WAL record is fsynced.
//  2. A batch is one WAL record, written in checksummed chunks. On open
//     pebble replays the WAL and stops at the first torn or invalid chunk
//     of the last WAL file, so a batch is replayed whole or not at all: a
//     crash never leaves part of a StoreLogs, or a DeleteGroup that removed
//     the log but not the term.
//  3. The WAL is one sequential file synced up to a point, so the recovered
//     store is the result of some prefix of the committed batches in commit
//     order, and that prefix includes every batch whose call returned.
//  4. The first/last index cache is not stored: Open rebuilds it from the
//     keys (see Recovery), so it cannot disagree with the recovered log.
//  5. Raft's safety needs no more: an entry or vote is acknowledged only
//     after the call that stored it returned.
//
// Group commit: concurrent synced batches (of any groups) share one WAL
// fsync; see the Group type's comment for where pebble does it.
//
// # Recovery (Open)
//
//  0. The directory is created if missing, and its parent synced: pebble
//     syncs the directory's contents, not its entry in the parent.
//  1. pebble.Open replays the WAL into the memtable, as above.
//  2. The format key is read. Absent in an empty store, it is written
//     (synced) before anything else; absent in a store with keys, Open
//     fails with ErrCorrupt; a version other than 1 fails Open.
//  3. For each group with log keys (found by seeking from one group prefix
//     to the next, not by reading every key), the first and last keys of
//     its range give the cached first and last index.
package logstore
