// Package volume owns the volume model of the control plane: volume
// records, the rules a volume name and size must follow, where a volume's
// replicas are placed, and the state machine that the directory group
// (sleds, volume placements) and each volume group (volume records and
// leases) replicate.
//
// Each group's state is also a participant of transactions across groups
// (package txn): the keys of keys.go hold what transactions read and
// write (names and placements in the directory group, volume records in
// volume groups, the rack's usage and quota), the group's own commands
// write them through the participant, and the writes a committed
// transaction installs update the decoded view.
//
// The state machine is deterministic and does no I/O beyond what raft hands
// it, so it is tested without a cluster. It may import the standard
// library, hashicorp/raft (for the FSM interface), proto/ballastpb, txn,
// migrate (whose Attachment a volume record carries) and internal/clock
// (the instants leases are measured in).
package volume
