// Package txn commits one-shot transactions atomically across raft
// groups, with PCR (parallel commit over raft, design/txn.md). This is
// its deterministic core: the protocol's three parties as state machines
// without I/O, which read no clock and start no goroutine (STYLE.md §1).
// A driver that owns the raft groups, the network and the clock feeds
// them inputs and carries out what they return.
//
// # What the package owns
//
//   - Participant (participant.go): one group's transactional state and
//     the commands its raft log applies, in log order with their index:
//     PREPARE, PREPARE_COMMIT (the one-group fast path), FINALIZE,
//     RESOLVE, PREVENT, FORGET_VOTE and FORGET_RECORD (tombstone
//     garbage collection). The state is design §2's keyspace: data
//     (value, version = the log index of the last write), intents (the
//     locks), votes (txnp) and, at a transaction's home, records
//     (txnrec). Read is the linearizable read of a key, which reports an
//     intent instead of the value under it; ReadRecord the recoverer's
//     read of a record. AppendState is a canonical encoding: replicas at
//     the same index encode equal bytes (I7).
//   - Coordinator (coordinator.go): the proposer of a transaction across
//     its attempts. Events in (Start, Replied, Failed, TimerFired,
//     Cancel), actions out (Send, SetTimer, Report, RetryLater,
//     RecoverHolder).
//   - Recoverer (recoverer.go): design §5's Recover(t), with the same
//     events and actions plus ReadRecord and Recovered.
//
// It imports only the standard library, and nothing of the module:
// consensus, the raft FSM adapter and the driver import txn, not the
// other way round.
//
// # The driver's contract
//
//  1. Each group's FSM applies every committed command to its
//     Participant with the entry's index, one at a time, and hands the
//     Result back to the proposer of the entry. After a restart it skips
//     the entries at or below Applied() (Apply refuses them with
//     ErrStaleIndex and changes nothing). Apply never panics on its
//     input: a bad entry gets an error in its Result.
//  2. Every Send is proposed on the group's leader and answered by
//     exactly one event: Replied with the Result, or Failed when the
//     outcome is unknown (raft.ErrLeadershipLost, a timeout, an
//     unreachable leader). A Failed command may have applied: every
//     command is idempotent by transaction id, and the state machines
//     resend. Extra, late or duplicated answers are harmless.
//  3. SetTimer is answered by TimerFired after the delay; RetryLater by
//     a Start with a new, unique TxnID after its delay; RecoverHolder by
//     a Recoverer for that transaction unless one already runs.
//  4. Every Now is a reading of the node's hybrid logical clock. Clocks
//     only decide when things happen (deadlines, backoff), never what is
//     decided: see "Deadlines in log time" below.
//  5. Read and ReadRecord run on the leader after a Barrier in the
//     current term, and are followed by VerifyLeader, as
//     consensus.Node.ReadKV does (design §6).
//  6. The garbage collector sends FORGET_VOTE for a transaction only once
//     its home's record is final, and FORGET_RECORD only once every
//     participant has forgotten its vote and reached the deadline in its
//     log (it may send FORGET_VOTE to carry a group's log time there).
//     The groups check the rest themselves.
//  7. Recoveries start from a reader or writer meeting an intent past
//     its deadline, from the home leader's scan of STAGING records after
//     its first Barrier, and from RecoverHolder.
//
// # Map of design/txn.md
//
//   - §2 state: Participant's data, intents, votes, records. TxnID is
//     (HLC, node, counter); Prio is the HLC of the first attempt
//     (PrioOf), kept across retries; ties between equal priorities go to
//     the lower TxnID.
//   - §3 PREPARE steps 1-4: Participant.prepare and check; FINALIZE,
//     RESOLVE, the abort path, the 1PC fast path: finalize, resolve,
//     prepareCommit, and Coordinator.
//   - §4 commit condition (STAGING and every other vote PREPARED): the
//     Coordinator reports StatusCommitted only once every vote is seen
//     PREPARED, a Recoverer commits only then, and aborts only on a
//     refusal it created or saw.
//   - §5 Recover(t): Recoverer, steps 1-6 in its doc.
//   - §6 reads: Participant.Read (linearizing is the driver's, item 5).
//   - §8 invariants I1-I5 and recovery liveness (I6 without the clock),
//     I7: checked by the exhaustive test (exhaustive_test.go,
//     model_test.go), §9's first test layer: every interleaving of two
//     transactions over three groups, with crashes, ambiguous and lost
//     applies, duplicated messages, a racing recoverer, the clock and
//     garbage collection, within bounds that fit in seconds; the
//     -txn.exhaustive.deep flag (or TXN_EXHAUSTIVE_DEEP=1) runs bigger
//     bounds, and TXN_STATE_LIMIT with TXN_EXHAUSTIVE_SEED samples them.
//
// # Where this departs from the proposal, and why
//
//   - Recover(t) with no record (§5). The proposal aborts and returns.
//     But between its read and its FINALIZE the home's PREPARE may write
//     STAGING, and the transaction may then commit (the proposer may
//     already have acked). So FINALIZE answers the record as it stands,
//     an abort without a refusal applies only if there still is no
//     record, and a STAGING answer sends the recoverer on to PREVENT.
//     The exhaustive test finds the proposal's version breaking I2 (the
//     design-recover planted bug).
//   - Deadlines in log time. A group refuses a PREPARE (and PREVENT
//     records nothing) once its log time, the largest Now among the
//     commands it applied, has reached the transaction's deadline.
//     Log time only grows and is the same on every replica, so the
//     refusal holds forever without a record, whatever the clocks do.
//     This makes tombstone garbage collection safe without trusting
//     clocks (a late PREPARE after its tombstone is forgotten is refused
//     for its deadline), and bounds the prepare phase: past the
//     deadline, a proposer's resends get each group's vote or a refusal,
//     so it learns the outcome without a recovery of its own.
//   - Garbage collection (§3). The proposal's rule (final record, every
//     participant resolved, old enough) is kept for the votes; the record
//     goes last, once every vote is gone and every participant is past
//     the deadline, so that a late recoverer finds either a final record
//     or nothing at all to misread. The coordinator and recoverer take
//     "nothing, past the deadline" as "resolved and forgotten": the
//     exhaustive test found duplicated FINALIZE and RESOLVE answers
//     arriving after the garbage collector.
//   - Conditions lock their keys. The proposal locks the written keys
//     only and calls the result strict two-phase locking; but a
//     condition on a key that is not written is then checked without a
//     lock held to the commit, and two transactions that each read what
//     the other writes both commit (write skew). Here every key of a
//     condition is locked too (exclusively, for now), and a read under
//     such a lock still returns the value, since its holder does not
//     write it.
//   - Wait-die with several holders: a transaction waits (Busy) only if
//     it is older than every holder it meets; if any holder is older, it
//     dies (REFUSED), durably.
//   - FINALIZE(ABORTED) "for a caller holding a REFUSED vote": the
//     command names the refusing group (RefusedBy). The home cannot
//     check another group's log, but an abort without one applies only
//     where there is no record, so a bug elsewhere cannot abort a STAGING
//     record blindly.
//   - The abort path. The coordinator reports aborted only once the home
//     answers ABORTED, then resolves the groups that may hold intents,
//     and asks for a retry only once they answered: the retry has the
//     same priority and a higher TxnID, so it is younger than its own
//     previous attempt and would die at that attempt's locks.
//   - A PREPARE names two participants or more; a one-group transaction
//     is one PREPARE_COMMIT, which keeps a RESOLVED_COMMIT tombstone so
//     that a retried command does not write twice.
//
// # Encodings (codec.go)
//
// Commands for the raft log, results and reads for the answers that
// cross the network, and a Participant's state for snapshots
// (MarshalState, RestoreParticipant), each with a format version byte
// and exactly one accepted encoding; RestoreParticipant refuses a state
// that applying commands cannot produce. Every decoder is fuzzed.
//
// # Hosts
//
// A group's state machine may keep more than a Participant: a head
// node's directory keeps decoded volume records beside the keys that
// hold them. ApplyObserved tells such a host every write a command
// installs, and Write is the host's own write of a key outside any
// transaction (refused with ErrLocked while a transaction holds it), so
// that a transaction's condition sees every change of a key.
//
// # Resends keep their fields
//
// Every resend of a command carries the fields of the first send, the
// deadline above all: once a transaction's vote and record are
// forgotten, a group tells a late duplicate from a new attempt only by
// its deadline (refused, being past it). The Coordinator and Recoverer
// never change a command when they resend it; a driver must not either.
//
// The driver over hashicorp/raft is package txn/driver.
package txn
