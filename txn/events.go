package txn

import (
	"errors"
	"fmt"
	"time"
)

// Event is an input of a Coordinator or Recoverer: the driver turns what
// happened (a start, a reply, a failed request, a timer) into one and
// calls Step. Every event carries the driver's clock reading, the state
// machines' only source of time.
type Event interface{ isEvent() }

// Start begins an attempt: the first, or the retry a RetryLater asked
// for. Txn is the attempt's id, new for every attempt.
type Start struct {
	Txn TxnID
	Now Timestamp
}

// Replied delivers a group's Result for a command sent by a Send action.
type Replied struct {
	From   GroupID
	Kind   CommandKind
	Txn    TxnID
	Result Result
	Now    Timestamp
}

// Failed reports a request whose outcome is unknown: raft.Apply returned
// an error (ErrLeadershipLost, a timeout), the leader was unreachable, or
// no answer came in time. The command may or may not have applied; the
// state machine resends it, which is safe because every command is
// idempotent by transaction.
type Failed struct {
	To   GroupID
	Kind CommandKind
	Txn  TxnID
	Now  Timestamp
}

// RecordRead delivers the result of a ReadRecord action.
type RecordRead struct {
	From   GroupID
	Txn    TxnID
	Record RecordInfo
	Now    Timestamp
}

// TimerFired reports that a SetTimer's delay has passed.
type TimerFired struct {
	Timer Timer
	Now   Timestamp
}

// Cancel reports that the client stopped waiting, or that the driver is
// stopping. A Coordinator that has not reported yet reports Unknown and
// stops; a Recoverer stops. What they leave behind is recovered by
// others once its deadline passes.
type Cancel struct {
	Now Timestamp
}

func (Start) isEvent()      {}
func (Replied) isEvent()    {}
func (Failed) isEvent()     {}
func (RecordRead) isEvent() {}
func (TimerFired) isEvent() {}
func (Cancel) isEvent()     {}

// Action is an output of a Coordinator or Recoverer, for the driver to
// carry out.
type Action interface{ isAction() }

// Send asks the driver to propose Command to group To's leader (raft
// Apply) and to answer with a Replied or a Failed event.
type Send struct {
	To      GroupID
	Command Command
}

// ReadRecord asks the driver for a linearizable read of Txn's record at
// group From (the home), answered with a RecordRead or a Failed event of
// kind KindReadRecord.
type ReadRecord struct {
	From GroupID
	Txn  TxnID
}

// Timer names a delay a state machine waits for: the resend of a
// request, by the attempt, kind and group it concerns.
type Timer struct {
	Txn   TxnID
	Kind  CommandKind
	Group GroupID
}

// SetTimer asks the driver for a TimerFired event after After. A timer
// of an attempt that has ended fires harmlessly.
type SetTimer struct {
	Timer Timer
	After time.Duration
}

// ClientStatus is what the client hears.
type ClientStatus uint8

const (
	// StatusCommitted: the transaction committed; its writes are, or
	// will be, visible forever (I4).
	StatusCommitted ClientStatus = iota + 1
	// StatusAborted: the transaction never takes effect.
	StatusAborted
	// StatusUnknown: the coordinator stopped before it knew; the
	// transaction may commit or not (recovery decides).
	StatusUnknown
)

func (s ClientStatus) String() string {
	switch s {
	case StatusCommitted:
		return "committed"
	case StatusAborted:
		return "aborted"
	case StatusUnknown:
		return "unknown"
	}
	return fmt.Sprintf("ClientStatus(%d)", uint8(s))
}

// GroupKeyVersion is a locked key's version as its group reported it.
type GroupKeyVersion struct {
	Group   GroupID
	Key     string
	Version Version
}

// Report tells the client the outcome. A Coordinator reports once.
type Report struct {
	// Txn is the attempt the outcome is about.
	Txn    TxnID
	Status ClientStatus
	// Refusal says why an abort happened, when a group refused.
	Refusal Refusal
	// Versions are, for a commit, the locked keys' versions before the
	// transaction, in group and key order: the condition keys' versions
	// are what the transaction read.
	Versions []GroupKeyVersion
}

// RetryLater asks the driver to call Step(Start{a new TxnID}) after
// After: the attempt aborted on contention and left nothing behind; the
// next attempt keeps the priority.
type RetryLater struct {
	After time.Duration
	Prio  Prio
}

// RecoverHolder asks the driver to run a Recoverer for a lock holder past
// its deadline (one recovery per transaction at a time).
type RecoverHolder struct {
	Target RecoveryTarget
}

// Recovered reports that a Recoverer finished: every participant holds
// Txn's outcome. Outcome Abort also covers a transaction forgotten
// after it finished (nothing of it is left to resolve).
type Recovered struct {
	Txn     TxnID
	Outcome Outcome
}

func (Send) isAction()          {}
func (ReadRecord) isAction()    {}
func (SetTimer) isAction()      {}
func (Report) isAction()        {}
func (RetryLater) isAction()    {}
func (RecoverHolder) isAction() {}
func (Recovered) isAction()     {}

// Errors Step returns.
var (
	// ErrUnexpectedEvent: the driver passed an event the state machine
	// cannot take (a Start while running, an event for a group that is
	// not a participant, a nil event). The state is unchanged.
	ErrUnexpectedEvent = errors.New("txn: unexpected event")
	// ErrInconsistent: a group's answer contradicts what the state
	// machine knows (a refusal after every vote was seen PREPARED, an
	// error in a Result): a protocol bug somewhere. The state machine
	// reports Unknown if it has not reported, and stops.
	ErrInconsistent = errors.New("txn: inconsistent answer")
)

// backoff is lo doubled n times, capped at hi.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for range n {
		if d >= hi/2 {
			return hi
		}
		d *= 2
	}
	return min(d, hi)
}

// backoffSteps is the n from which backoff(lo, hi, n) is hi: counting
// further would only grow the state.
func backoffSteps(lo, hi time.Duration) int {
	n := 0
	for d := lo; d < hi && n < 62; d *= 2 {
		n++
	}
	return n
}
