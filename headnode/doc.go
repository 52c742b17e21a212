// Package headnode owns the head node: the write log of the volumes it is
// primary or secondary of (kept by the block store, package
// headnode/blockstore: block data in the node's journal, package
// headnode/journal; keys, index and segments in one pebble database per
// node), the ordering,
// group commit and replication of writes, reads, its members of the
// directory group and of every volume group (groups.go), the failover
// decisions' I/O, the attachment gate's I/O at each primary
// (attachment.go), and the admin API that every head node answers.
//
// A write is acknowledged only when it is durable in the primary's log and
// in its secondary's. The primary orders whole-block records in a
// sequencer (package headnode/replica, I/O-free: tickets, the overlay of
// not-yet-durable blocks for read-modify-writes, batches), and one
// committer per volume (primary.go) appends each
// batch locally and sends it to the secondary in parallel; a session
// between them starts with a hello that reconciles their logs, so a crash
// between the two appends never leaves the replicas apart. Sessions run
// over framed connections (replication_wire.go), or gRPC with a node that
// does not speak them. A large aligned
// write goes straight to a new erasure-coded segment on the sleds, and
// only its record through both logs (segwrite.go). A client's write
// carries a name that its records carry too, so that a write sent again
// after its answer was lost is applied once, by whichever head node gets
// it (writeops.go).
//
// A head node never lets its data disk fill under pebble, which ends the
// process when it cannot write (diskspace.go): below a free-space floor
// it refuses client writes with ErrNoSpace, on its own disk or its
// secondary's, and serves reads; an emergency reserve file gives pebble
// room to open on a disk that filled; writes resume by themselves.
//
// It may import consensus, migrate, txn, txn/driver, volume,
// headnode/blockstore, headnode/journal, headnode/ec, headnode/replica,
// internal/... and proto/...; never attach.
package headnode
