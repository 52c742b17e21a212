package txn

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// GroupID names a raft group. 0 is never a participant: the zero value
// means "none" in the fields that may name a group.
type GroupID uint64

// TxnID names one attempt of a transaction: 128 bits, unique per
// proposer node. A retry is a new attempt with a new TxnID and the same
// Prio.
type TxnID struct {
	// HLC is the proposer's hybrid logical clock when the attempt began.
	HLC uint64
	// Node is the proposer's node.
	Node uint32
	// Counter tells apart the attempts a node begins at one HLC reading.
	Counter uint32
}

// IsZero reports whether t is the zero TxnID, which names no attempt.
func (t TxnID) IsZero() bool { return t == TxnID{} }

// Compare orders TxnIDs by HLC, then node, then counter.
func (t TxnID) Compare(u TxnID) int {
	if c := cmp.Compare(t.HLC, u.HLC); c != 0 {
		return c
	}
	if c := cmp.Compare(t.Node, u.Node); c != 0 {
		return c
	}
	return cmp.Compare(t.Counter, u.Counter)
}

func (t TxnID) String() string { return fmt.Sprintf("t%d.%d.%d", t.HLC, t.Node, t.Counter) }

// Prio is a transaction's age for wait-die: the HLC of its first attempt,
// kept across retries so that a transaction that keeps losing becomes
// the oldest eventually and stops losing.
type Prio uint64

// PrioOf is the priority of a transaction whose first attempt is first.
func PrioOf(first TxnID) Prio { return Prio(first.HLC) }

// olderThan reports whether the attempt (ap, a) is older than (bp, b):
// the lower priority, and between equal priorities the lower TxnID, so
// that any two distinct attempts are ordered.
func olderThan(ap Prio, a TxnID, bp Prio, b TxnID) bool {
	if ap != bp {
		return ap < bp
	}
	return a.Compare(b) < 0
}

// Timestamp is a hybrid-logical-clock reading in nanoseconds. This
// package never reads a clock: every time arrives in a command or event.
type Timestamp uint64

// Add returns ts moved d later, saturating at the largest Timestamp; a
// negative d leaves ts as it is.
func (ts Timestamp) Add(d time.Duration) Timestamp {
	if d <= 0 {
		return ts
	}
	if uint64(d) > math.MaxUint64-uint64(ts) {
		return Timestamp(math.MaxUint64)
	}
	return ts + Timestamp(d)
}

// Version is the raft log index of the command that last wrote a key; 0
// means the key is absent.
type Version uint64

// Condition is a version a key must have for a transaction to prepare:
// the version the client read, or 0 for "absent".
type Condition struct {
	Key     string
	Version Version
}

// Write is a key's new value, or its removal.
type Write struct {
	Key string
	// Value is the new value; it must be empty for a delete.
	Value  []byte
	Delete bool
}

// KeyVersion is a key and its version.
type KeyVersion struct {
	Key     string
	Version Version
}

// Outcome is what FINALIZE and RESOLVE carry: the transaction's decision.
type Outcome uint8

const (
	// Commit is the decision to apply the writes.
	Commit Outcome = 1
	// Abort is the decision to drop them.
	Abort Outcome = 2
)

func (o Outcome) String() string {
	switch o {
	case Commit:
		return "commit"
	case Abort:
		return "abort"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// VoteState is a group's vote on a transaction: txnp[t] of the design.
// Each group's log decides at most one of Prepared and Refused for a
// transaction, and a vote once recorded only moves from Prepared to one
// of the resolved states.
type VoteState uint8

const (
	// VoteNone: the group has no vote for the transaction (it never saw
	// it, or its Busy answer recorded nothing, or the vote was forgotten).
	VoteNone VoteState = iota
	// VotePrepared: the group holds the transaction's intents.
	VotePrepared
	// VoteRefused: the group refused the transaction, durably.
	VoteRefused
	// VoteResolvedCommit: the intents were installed (a tombstone).
	VoteResolvedCommit
	// VoteResolvedAbort: the intents were dropped, or a RESOLVE(ABORT)
	// came first and stands in the way of a late PREPARE (a tombstone).
	VoteResolvedAbort
)

func (v VoteState) String() string {
	switch v {
	case VoteNone:
		return "none"
	case VotePrepared:
		return "prepared"
	case VoteRefused:
		return "refused"
	case VoteResolvedCommit:
		return "resolved-commit"
	case VoteResolvedAbort:
		return "resolved-abort"
	}
	return fmt.Sprintf("VoteState(%d)", uint8(v))
}

// yes reports whether the vote counts as PREPARED for the commit
// condition: it was prepared, and if it was resolved, then by a commit.
func (v VoteState) yes() bool { return v == VotePrepared || v == VoteResolvedCommit }

// no reports whether the vote rules the commit out for good.
func (v VoteState) no() bool { return v == VoteRefused || v == VoteResolvedAbort }

// RecordState is the transaction record at the home group: txnrec[t].
type RecordState uint8

const (
	// RecordNone: no record (never staged, or forgotten).
	RecordNone RecordState = iota
	// RecordStaging: the home prepared; the transaction is committed
	// once every other participant holds PREPARED.
	RecordStaging
	// RecordCommitted is final.
	RecordCommitted
	// RecordAborted is final. Without a staging record before it, it is
	// a tombstone that makes the home refuse a late PREPARE.
	RecordAborted
)

func (r RecordState) String() string {
	switch r {
	case RecordNone:
		return "none"
	case RecordStaging:
		return "staging"
	case RecordCommitted:
		return "committed"
	case RecordAborted:
		return "aborted"
	}
	return fmt.Sprintf("RecordState(%d)", uint8(r))
}

// final reports whether the record is decided.
func (r RecordState) final() bool { return r == RecordCommitted || r == RecordAborted }

// Holder describes the transaction holding a lock, as a Busy or a
// conflict refusal names it, so that the caller can run Recover on it
// once it is past its deadline (the patent's "additional transaction").
type Holder struct {
	Txn          TxnID
	Prio         Prio
	Home         GroupID
	Participants []GroupID
	Deadline     Timestamp
	// Expired reports whether the group's log time had reached the
	// holder's deadline when it answered.
	Expired bool
}

// RefusalReason says why a group refused a transaction.
type RefusalReason uint8

const (
	// RefusedCondition: a condition's key had another version.
	RefusedCondition RefusalReason = iota + 1
	// RefusedConflict: a lock was held by an older transaction (wait-die:
	// the younger dies).
	RefusedConflict
	// RefusedPrevented: a recoverer's PREVENT came before the PREPARE.
	RefusedPrevented
	// RefusedAborted: the home holds an ABORTED record for the
	// transaction (a recoverer or the proposer finalized it first).
	RefusedAborted
	// RefusedExpired: the group's log time had reached the
	// transaction's deadline. Nothing is recorded: the log time only
	// grows, so every later PREPARE of the transaction is refused too.
	RefusedExpired
)

func (r RefusalReason) String() string {
	switch r {
	case RefusedCondition:
		return "condition failed"
	case RefusedConflict:
		return "lock held by an older transaction"
	case RefusedPrevented:
		return "prevented by recovery"
	case RefusedAborted:
		return "aborted at home"
	case RefusedExpired:
		return "past deadline"
	}
	return fmt.Sprintf("RefusalReason(%d)", uint8(r))
}

// Refusal is why a group refused: the reason and, depending on it, the
// failed condition or the lock holder.
type Refusal struct {
	Reason RefusalReason
	// Condition and Actual are set for RefusedCondition: the condition
	// that failed and the version the key had.
	Condition Condition
	Actual    Version
	// Holder is set for RefusedConflict.
	Holder Holder
}

// retryable reports whether a new attempt of the transaction may
// succeed: every refusal but a failed condition comes from timing.
func (r Refusal) retryable() bool { return r.Reason != RefusedCondition }

// Errors a Participant's Result may carry. Callers test them with
// errors.Is. A command that fails with one of them changed nothing but
// the group's applied index.
var (
	// ErrMalformed: the command is invalid (no transaction id, a key
	// twice, this group not among the participants, ...). Retrying it
	// will not help; the proposer has a bug.
	ErrMalformed = errors.New("txn: malformed command")
	// ErrStaleIndex: Apply was called with a log index at or below the
	// last applied one. Nothing changed, not even the applied index.
	ErrStaleIndex = errors.New("txn: log index already applied")
	// ErrOutcomeConflict: a RESOLVE contradicts what the group already
	// decided (a COMMIT where the vote is refused or was never
	// prepared, an ABORT after the intents were installed). It means a
	// bug in a proposer or recoverer; the group keeps its decision.
	ErrOutcomeConflict = errors.New("txn: resolution contradicts the group's vote")
	// ErrNotForgettable: a FORGET came too early (the vote is still
	// prepared, the record still staging, the deadline not yet reached in
	// this group's log, the home's own vote not yet forgotten).
	ErrNotForgettable = errors.New("txn: state may not be forgotten yet")
	// ErrLocked: a host's own write (Participant.Write) met a
	// transaction's lock on the key; it changed nothing, and may be
	// retried once the transaction is resolved.
	ErrLocked = errors.New("txn: key locked by a transaction")
)

// sortedUniqueGroups returns the groups sorted, and false if one is 0 or
// repeated.
func sortedUniqueGroups(gs []GroupID) ([]GroupID, bool) {
	out := slices.Clone(gs)
	slices.Sort(out)
	for i, g := range out {
		if g == 0 || (i > 0 && out[i-1] == g) {
			return nil, false
		}
	}
	return out, true
}
