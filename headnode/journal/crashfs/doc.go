// Package crashfs is an in-memory filesystem for crash tests: it keeps,
// beside what each file holds now, what a sync made durable, and Crash
// turns it into a state a power loss could leave behind.
//
// The model, per file: WriteAt, Allocate and Truncate change the file at
// once (reads see them) and are also queued as not durable. Sync makes
// every queued change of the file durable. On Crash, each file goes back
// to its durable content and then, chosen with the FS's seeded random
// source, either none of its unsynced changes, or a prefix of them in
// order with the last one kept torn, or an arbitrary subset of them with
// any kept write possibly torn (a disk's volatile cache may persist writes
// out of order). A torn write keeps its bytes up to a 512-byte boundary of
// the file (a sector), none after. The namespace has the same rule: a file
// created, renamed or removed survives a crash as such only once SyncDir
// of its directory was called; otherwise the crash puts the directory back
// as it was at its last SyncDir.
//
// A crash kills every handle opened before it: their calls return
// ErrCrashed (Close returns nil), as the calls of a process on a machine
// that lost power never return at all. Files opened after the crash see
// the post-crash state. A Hook sees every operation before it happens and
// may fail it or crash the machine during it, so a test can crash at an
// exact point: in the middle of a write, between a write and its sync,
// during a sync.
//
// Other packages use it through a small adapter to their own filesystem
// interface (their OpenFile returns their File type; *File has the usual
// methods: ReadAt, WriteAt, Sync, Allocate, Truncate, Size, Close).
//
// It imports only the standard library.
package crashfs
