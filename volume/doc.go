// Package volume owns the volume model of the control plane: volume
// records, the rules a volume name and size must follow, where a volume's
// replicas are placed, and the state machine that the directory group
// (sleds, volume placements) and each volume group (volume records and
// leases) replicate.
//
// The state machine is deterministic and does no I/O beyond what raft hands
// it, so it is tested without a cluster. It may import the standard
// library, hashicorp/raft (for the FSM interface) and proto/ballastpb.
package volume
