// Package consensus runs many hashicorp/raft groups in one process. One
// pebble database per node (package consensus/logstore) holds the raft log
// and stable store of every group, so one fsync commits many groups; one
// gRPC stream per pair of nodes (package consensus/transport) carries every
// group's raft traffic. Snapshots are files under the node's directory.
//
// Group 0 is the directory group; the head node runs its volume groups as
// groups 1..N.
//
// # What a Node owns
//
// A Node owns its members of groups, from start to shutdown, and the
// operations on them that need raft's leader:
//
//   - Starting. StartGroup bootstraps a new group with its initial voters
//     (every initial voter bootstraps with the same configuration).
//     JoinGroup starts a member that must not bootstrap: one about to be
//     added to a running group. It has no configuration, so it never
//     campaigns; it waits for the leader to add it and then catches up
//     from the leader's log or snapshot. RejoinGroup starts a member that
//     lost its state (rejoin.go): it abstains from elections until the
//     leader readmits it (Readmit, Readmitted). Each restarts a member
//     from its state on disk. Groups start in parallel: the node's lock only
//     reserves the group id. StopGroup shuts one member down (after its
//     server was removed) and keeps its state.
//   - Membership, run on the group's leader: AddVoter, RemoveServer, and
//     MoveVoter, which adds the new voter, waits until it reports a log
//     that reaches the configuration entry adding it, and only then
//     removes the old one. Elsewhere they fail with a *NotLeaderError,
//     which wraps raft.ErrNotLeader and names the leader if known.
//   - Leadership: TransferLeadership hands one group to a named voter or
//     to any other; Drain moves away every group the node leads (before a
//     restart or a decommission) and reports in a *DrainError the groups
//     it could not move. Nothing stops the drained node from being
//     elected again later.
//   - Status: per group, this member's raft state, the leader, term, log,
//     commit and applied indexes, the configuration and the last contact
//     with the leader, read from raft's public API.
//
// raft cannot cancel a request, so a membership change or transfer whose
// context ends may still happen; the calls are written to be retried.
//
// A follower's progress is not visible through raft's API, so each
// group's transport is wrapped (trackingTransport) to remember the last
// log index every peer reports in its AppendEntries responses, heartbeats
// included; MoveVoter waits on it. The pipeline, which carries most
// entries, is not wrapped.
//
// KV (kv.go) is a ready-made FSM for groups that hold a replicated
// key-value map, the groundwork for transactions across groups: every key
// carries the log index of its last write as its version, and a command
// is a batch of puts, deletes and compare-and-swaps that applies all or
// nothing. Node.ApplyKV proposes a command on the leader; Node.ReadKV
// reads linearizably there (a Barrier once per term, then VerifyLeader on
// every read).
//
// Deciding which server should hold which group (placement, spreading
// the leaderships) is the caller's: this package only carries it out.
//
// It may import consensus/logstore, consensus/transport, hashicorp/raft and
// grpc; never headnode, attach or volume (a group's FSM is handed in).
package consensus
