// Package blockstore owns a head node's block store: the durable state of
// the volumes the node holds a replica of, in one pebble database per
// node (the keys 'L' log entries, 'B' refs to block data, 'I' index, 'G'
// and 'H' segments and their slots, 'S' log state, 'C' cut holds, 'E'
// epoch fences, 'D' drop marks and 'W' clients' tables of applied writes;
// store.go), with the block data itself in the node's journal (package
// headnode/journal), which is the store's write-ahead log: an append goes
// to the journal, and the pebble batch that applies it commits once the
// journal holds it; after a crash the journal's replay applies again what
// pebble lost, and the journal frees what no key points to any more
// (journalstore.go). It keeps the 'B' keys in memory too (refindex.go),
// applies log records deterministically, the same on every replica
// (apply.go, writers.go), and reads and installs the states that
// reconciliation (reconcile.go) and full copies (sync.go) carry between
// replicas.
//
// What to append, when, and to whom is the caller's (package headnode:
// ordering, replication, flushes to the sleds, the policy of disk space
// and cut holds); the store applies what it is given, in seq order, and
// answers reads of what it holds. Its exported API is what headnode
// needs: Open and Options; Append, BeginAppend and PendingAppend.Finish;
// ReadLocal, Segments, Segment, DirtyBlocks, DirtyCount, Locate, Volumes,
// LastSeq and NextSegmentID; LogFrom and BlocksWrittenThrough;
// FullState, BeginSync, ApplySyncState, EndSync and Syncing; DropVolume;
// SetCutHold and CutHold; EpochFence and RaiseEpochFence; WriterState;
// JournalPressure, JournalHigh and NoteJournalFill; the errors ErrSeqGap
// and ErrCorrupt; and hooks (SetJournalPressureFunc, SetReleaseErrorFunc;
// for tests SetCrashHook, CheckInvariants and WriterTable).
//
// It may import headnode/journal, volume, internal/... and proto/...;
// never headnode, consensus, txn or attach.
package blockstore
