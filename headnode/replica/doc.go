// Package replica owns the I/O-free core of a volume's write path at its
// primary head node: the Sequencer, which gives each write its place in
// the volume's order (a ticket), turns it into whole-block records, keeps
// the newest not-yet-durable content of each block (the overlay) for the
// read-modify-writes ordered after it, and hands the committer its
// batches. Seqs, the journal, the replication stream and the lease stay
// with the committer in package headnode, which drives this one; nothing
// here blocks on I/O, so the ordering rules are tested without a disk, a
// network or a clock.
//
// It may import the standard library and proto/ballastpb.
package replica
