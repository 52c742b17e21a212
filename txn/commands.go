package txn

import (
	"fmt"
	"slices"
)

// CommandKind tells the commands apart in events and timers.
type CommandKind uint8

const (
	KindPrepare CommandKind = iota + 1
	KindPrepareCommit
	KindFinalize
	KindResolve
	KindPrevent
	KindForgetVote
	KindForgetRecord
	// KindReadRecord is not a command but the recoverer's linearizable
	// read of the record; it shares the kinds so that a failed read and
	// its retry timer are named like the commands'.
	KindReadRecord
)

func (k CommandKind) String() string {
	switch k {
	case KindPrepare:
		return "PREPARE"
	case KindPrepareCommit:
		return "PREPARE_COMMIT"
	case KindFinalize:
		return "FINALIZE"
	case KindResolve:
		return "RESOLVE"
	case KindPrevent:
		return "PREVENT"
	case KindForgetVote:
		return "FORGET_VOTE"
	case KindForgetRecord:
		return "FORGET_RECORD"
	case KindReadRecord:
		return "READ_RECORD"
	}
	return fmt.Sprintf("CommandKind(%d)", uint8(k))
}

// Command is what a Participant applies: one raft log entry of a group.
// The implementations are the types below; every one names a
// transaction and carries the proposer's clock reading (Now), the only
// source of time for the participant.
type Command interface {
	Kind() CommandKind
	// TxnID is the transaction attempt the command is about.
	TxnID() TxnID
	// now is the sender's clock when it built the command.
	now() Timestamp
	// validate checks the command as applied by group g.
	validate(g GroupID) error
}

// Prepare is PREPARE(t): lock the keys, check the conditions, and vote.
// At the home group it also writes the STAGING record.
type Prepare struct {
	Txn  TxnID
	Prio Prio
	Home GroupID
	// Participants lists every group of the transaction, the home
	// included, each once.
	Participants []GroupID
	// Deadline bounds the prepare phase: a group whose log time has
	// reached it refuses (RefusedExpired), and a recoverer may start.
	Deadline Timestamp
	Now      Timestamp
	// Conditions and Writes are this group's part of the transaction.
	// Every key of both is locked: a condition's key too, or a concurrent
	// transaction could write it between the check and the commit.
	Conditions []Condition
	Writes     []Write
}

// PrepareCommit is PREPARE_COMMIT(t), the one-phase fast path of a
// transaction whose keys are all in one group: check, lock and write in
// one entry, with no record.
type PrepareCommit struct {
	Txn        TxnID
	Prio       Prio
	Deadline   Timestamp
	Now        Timestamp
	Conditions []Condition
	Writes     []Write
}

// Finalize is FINALIZE(t, outcome), applied at the home group. A final
// record is never overwritten.
type Finalize struct {
	Txn     TxnID
	Outcome Outcome
	// RefusedBy is, for an abort, the group whose refusal the caller
	// holds: with it, a STAGING record may become ABORTED. 0 means the
	// caller holds no refusal (a recoverer that found no record): the
	// abort then applies only if there is no record, and leaves a
	// STAGING one as it is.
	RefusedBy GroupID
	// Home, Participants and Deadline describe the transaction, for the
	// tombstone an abort writes when there is no record.
	Home         GroupID
	Participants []GroupID
	Deadline     Timestamp
	Now          Timestamp
}

// Resolve is RESOLVE(t, outcome), applied at each participant: install
// or drop the intents, and keep a tombstone.
type Resolve struct {
	Txn     TxnID
	Outcome Outcome
	// Deadline is the transaction's, kept with the tombstone to tell
	// when it may be forgotten.
	Deadline Timestamp
	Now      Timestamp
}

// Prevent is PREVENT(t), a recoverer's query of a participant's vote
// that also fixes it: a PREPARED vote stays, no vote becomes REFUSED.
type Prevent struct {
	Txn      TxnID
	Deadline Timestamp
	Now      Timestamp
}

// ForgetVote garbage-collects the group's vote tombstone for t. The
// group checks what it can see (the vote is a tombstone, the deadline
// has passed in its log); the caller must have checked first that the
// home's record is final, since a recoverer of a STAGING record reads a
// forgotten vote as a refusal.
type ForgetVote struct {
	Txn TxnID
	Now Timestamp
}

// ForgetRecord garbage-collects the home's final record for t. The home
// checks that the record is final, the deadline passed and its own vote
// forgotten; the caller must have checked first that every other
// participant forgot its vote and has reached the deadline in its log,
// so that the transaction leaves no trace anywhere a late recoverer
// could misread.
type ForgetRecord struct {
	Txn TxnID
	Now Timestamp
}

func (c *Prepare) Kind() CommandKind       { return KindPrepare }
func (c *PrepareCommit) Kind() CommandKind { return KindPrepareCommit }
func (c *Finalize) Kind() CommandKind      { return KindFinalize }
func (c *Resolve) Kind() CommandKind       { return KindResolve }
func (c *Prevent) Kind() CommandKind       { return KindPrevent }
func (c *ForgetVote) Kind() CommandKind    { return KindForgetVote }
func (c *ForgetRecord) Kind() CommandKind  { return KindForgetRecord }

func (c *Prepare) TxnID() TxnID       { return c.Txn }
func (c *PrepareCommit) TxnID() TxnID { return c.Txn }
func (c *Finalize) TxnID() TxnID      { return c.Txn }
func (c *Resolve) TxnID() TxnID       { return c.Txn }
func (c *Prevent) TxnID() TxnID       { return c.Txn }
func (c *ForgetVote) TxnID() TxnID    { return c.Txn }
func (c *ForgetRecord) TxnID() TxnID  { return c.Txn }

func (c *Prepare) now() Timestamp       { return c.Now }
func (c *PrepareCommit) now() Timestamp { return c.Now }
func (c *Finalize) now() Timestamp      { return c.Now }
func (c *Resolve) now() Timestamp       { return c.Now }
func (c *Prevent) now() Timestamp       { return c.Now }
func (c *ForgetVote) now() Timestamp    { return c.Now }
func (c *ForgetRecord) now() Timestamp  { return c.Now }

func (c *Prepare) validate(g GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: PREPARE without a transaction id", ErrMalformed)
	}
	parts, ok := sortedUniqueGroups(c.Participants)
	if !ok || len(parts) < 2 {
		return fmt.Errorf("%w: PREPARE of %s: participants %v are not two or more distinct nonzero groups", ErrMalformed, c.Txn, c.Participants)
	}
	if _, found := slices.BinarySearch(parts, c.Home); !found {
		return fmt.Errorf("%w: PREPARE of %s: home %d is not a participant", ErrMalformed, c.Txn, c.Home)
	}
	if _, found := slices.BinarySearch(parts, g); !found {
		return fmt.Errorf("%w: PREPARE of %s: group %d is not a participant", ErrMalformed, c.Txn, g)
	}
	return validateOps(c.Txn, c.Conditions, c.Writes)
}

func (c *PrepareCommit) validate(GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: PREPARE_COMMIT without a transaction id", ErrMalformed)
	}
	return validateOps(c.Txn, c.Conditions, c.Writes)
}

// validateOps checks a group's part of a transaction: something to do,
// no empty key, no key twice among the conditions or among the writes,
// no value on a delete.
func validateOps(t TxnID, conds []Condition, writes []Write) error {
	if len(conds)+len(writes) == 0 {
		return fmt.Errorf("%w: %s has no condition or write here", ErrMalformed, t)
	}
	seen := make(map[string]bool, len(conds))
	for _, c := range conds {
		if c.Key == "" || seen[c.Key] {
			return fmt.Errorf("%w: %s: condition key %q is empty or repeated", ErrMalformed, t, c.Key)
		}
		seen[c.Key] = true
	}
	clear(seen)
	for _, w := range writes {
		if w.Key == "" || seen[w.Key] {
			return fmt.Errorf("%w: %s: write key %q is empty or repeated", ErrMalformed, t, w.Key)
		}
		if w.Delete && len(w.Value) != 0 {
			return fmt.Errorf("%w: %s: delete of %q has a value", ErrMalformed, t, w.Key)
		}
		seen[w.Key] = true
	}
	return nil
}

func (c *Finalize) validate(g GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: FINALIZE without a transaction id", ErrMalformed)
	}
	if c.Outcome != Commit && c.Outcome != Abort {
		return fmt.Errorf("%w: FINALIZE of %s with outcome %d", ErrMalformed, c.Txn, c.Outcome)
	}
	if c.Home != g {
		return fmt.Errorf("%w: FINALIZE of %s sent to group %d, its home is %d", ErrMalformed, c.Txn, g, c.Home)
	}
	if _, ok := sortedUniqueGroups(c.Participants); !ok || !slices.Contains(c.Participants, c.Home) {
		return fmt.Errorf("%w: FINALIZE of %s: participants %v are not distinct nonzero groups with the home", ErrMalformed, c.Txn, c.Participants)
	}
	if c.Outcome == Commit && c.RefusedBy != 0 {
		return fmt.Errorf("%w: FINALIZE(commit) of %s names a refusal", ErrMalformed, c.Txn)
	}
	return nil
}

func (c *Resolve) validate(GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: RESOLVE without a transaction id", ErrMalformed)
	}
	if c.Outcome != Commit && c.Outcome != Abort {
		return fmt.Errorf("%w: RESOLVE of %s with outcome %d", ErrMalformed, c.Txn, c.Outcome)
	}
	return nil
}

func (c *Prevent) validate(GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: PREVENT without a transaction id", ErrMalformed)
	}
	return nil
}

func (c *ForgetVote) validate(GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: FORGET_VOTE without a transaction id", ErrMalformed)
	}
	return nil
}

func (c *ForgetRecord) validate(GroupID) error {
	if c.Txn.IsZero() {
		return fmt.Errorf("%w: FORGET_RECORD without a transaction id", ErrMalformed)
	}
	return nil
}
