// Package driver runs package txn's state machines over consensus groups:
// it is the I/O edge that txn's core leaves out.
//
// # What it owns
//
//   - Host: what the driver needs of a group's state, wherever its
//     txn.Participant lives: the log entry that carries a txn command,
//     the result in the FSM's answer, a read fence, and the reads.
//   - FSM: the raft.FSM (and Host) of a group whose state is only a
//     txn.Participant. Its log entries are txn commands
//     (txn.MarshalCommand); its snapshots are the participant's state
//     (Participant.MarshalState). Its reads are linearizable through
//     consensus.Node.Linearize.
//   - Groups: how a proposer reaches a group's leader. Local reaches the
//     members that run in this process; Remote, any head node over gRPC
//     (Service serves the other end). An error from Groups means the
//     outcome is unknown: the command may have applied.
//   - Proposer: runs a txn.Coordinator per transaction and a
//     txn.Recoverer per recovery, with timers, a hybrid logical clock
//     (Clock) and transaction ids unique to its node; Commit is the
//     client's call, Read a linearizable read that never returns a value
//     an intent hides.
//   - Keeper: the background work of a node's group leaders: recovering
//     the transactions whose proposer is late or gone (STAGING records
//     and locks past their deadline), and garbage-collecting the votes
//     and records of finished transactions.
//
// It may import txn, consensus, hashicorp/raft, grpc and proto/ballastpb.
package driver
