package txn

import (
	"fmt"
	"slices"
	"time"
)

// RecoveryTarget is what a recoverer must know of a transaction: what an
// intent or a record tells.
type RecoveryTarget struct {
	Txn          TxnID
	Home         GroupID
	Participants []GroupID
	Deadline     Timestamp
}

// RecovererConfig tunes a Recoverer. The zero value of a field takes its
// default.
type RecovererConfig struct {
	// Backoff is the delay before resending a failed request. Default
	// 10ms.
	Backoff time.Duration
}

// Recoverer finishes a transaction whose proposer may be gone: design
// §5's Recover(t), as a state machine with the Coordinator's events and
// actions. It is not safe for concurrent use.
//
//  1. Read the home's record (linearizable read).
//  2. Final: RESOLVE it everywhere (step 6).
//  3. Absent: FINALIZE(abort) without a refusal, which writes the ABORTED
//     tombstone only if there still is no record. If the home's PREPARE
//     got in first the answer is STAGING: go on at step 4 (the design's
//     pseudo-code returns here; it must not, or it would abort a
//     transaction that may commit).
//  4. STAGING: PREVENT at every other participant. Each answers its vote,
//     and a group without one refuses, durably.
//  5. Every vote PREPARED (or resolved as committed): FINALIZE(commit).
//     Any vote refused (or resolved as aborted): FINALIZE(abort) naming
//     that group. Then follow the record the home answers, which is the
//     decision.
//  6. RESOLVE(outcome) at every participant; report Recovered.
//
// Every request is idempotent, so a failed one is resent after Backoff,
// and a recoverer may take over from one that stopped midway (the deep
// exhaustive run checks that; two running at once are not modelled).
type Recoverer struct {
	cfg      RecovererConfig
	target   RecoveryTarget
	now      Timestamp
	phase    recPhase
	votes    []VoteState // parallel to target.Participants
	outcome  Outcome
	resolved []bool // parallel to target.Participants
	// timers are the scheduled resends (a few at most).
	timers []Timer
}

type recPhase uint8

const (
	recNew recPhase = iota
	recReading
	recFinalizingAbsent
	recPreventing
	recDeciding
	recResolving
	recDone
)

func (p recPhase) String() string {
	return [...]string{"new", "reading", "finalizing-absent", "preventing", "deciding", "resolving", "done"}[p]
}

// NewRecoverer returns a recoverer of target, waiting for Start.
func NewRecoverer(cfg RecovererConfig, target RecoveryTarget) (*Recoverer, error) {
	if cfg.Backoff == 0 {
		cfg.Backoff = 10 * time.Millisecond
	}
	if cfg.Backoff < 0 {
		return nil, fmt.Errorf("txn: recoverer backoff %v is negative", cfg.Backoff)
	}
	if target.Txn.IsZero() {
		return nil, fmt.Errorf("%w: recovery without a transaction id", ErrMalformed)
	}
	parts, ok := sortedUniqueGroups(target.Participants)
	if !ok || !slices.Contains(parts, target.Home) {
		return nil, fmt.Errorf("%w: recovery of %s: participants %v and home %d", ErrMalformed, target.Txn, target.Participants, target.Home)
	}
	target.Participants = parts
	r := &Recoverer{cfg: cfg, target: target}
	r.reset()
	return r, nil
}

func (r *Recoverer) reset() {
	r.votes = make([]VoteState, len(r.target.Participants))
	r.resolved = make([]bool, len(r.target.Participants))
}

// Done reports whether the recovery finished.
func (r *Recoverer) Done() bool { return r.phase == recDone }

// Target is what the recoverer recovers; its participants and deadline
// come from the record once read.
func (r *Recoverer) Target() RecoveryTarget { return r.target }

func (r *Recoverer) indexOf(g GroupID) int {
	i, found := slices.BinarySearch(r.target.Participants, g)
	if !found {
		return -1
	}
	return i
}

// Step feeds one event to the recoverer and returns what to do. An error
// wrapping ErrUnexpectedEvent leaves the state as it was; one wrapping
// ErrInconsistent means the groups contradict each other (a protocol
// bug): the recoverer still follows the home's record.
func (r *Recoverer) Step(ev Event) ([]Action, error) {
	switch e := ev.(type) {
	case Start:
		if r.phase != recNew || e.Txn != r.target.Txn {
			return nil, fmt.Errorf("%w: Start of %s in phase %s of the recovery of %s", ErrUnexpectedEvent, e.Txn, r.phase, r.target.Txn)
		}
		r.now = max(r.now, e.Now)
		r.phase = recReading
		return []Action{ReadRecord{From: r.target.Home, Txn: r.target.Txn}}, nil
	case RecordRead:
		if e.Txn != r.target.Txn || r.phase != recReading {
			return nil, nil
		}
		if e.From != r.target.Home {
			return nil, fmt.Errorf("%w: record read from group %d, the home is %d", ErrUnexpectedEvent, e.From, r.target.Home)
		}
		r.now = max(r.now, e.Now)
		return r.recordRead(e.Record)
	case Replied:
		if e.Txn != r.target.Txn || r.phase == recDone {
			return nil, nil
		}
		i := r.indexOf(e.From)
		if i < 0 {
			return nil, fmt.Errorf("%w: reply from group %d, not a participant", ErrUnexpectedEvent, e.From)
		}
		r.now = max(r.now, e.Now)
		return r.replied(i, e)
	case Failed:
		if e.Txn != r.target.Txn || r.phase == recDone {
			return nil, nil
		}
		i := r.indexOf(e.To)
		if i < 0 {
			return nil, fmt.Errorf("%w: failure of group %d, not a participant", ErrUnexpectedEvent, e.To)
		}
		r.now = max(r.now, e.Now)
		return r.scheduleResend(i, e.Kind), nil
	case TimerFired:
		if e.Timer.Txn != r.target.Txn || r.phase == recDone {
			return nil, nil
		}
		i := r.indexOf(e.Timer.Group)
		if i < 0 {
			return nil, fmt.Errorf("%w: timer for group %d, not a participant", ErrUnexpectedEvent, e.Timer.Group)
		}
		r.now = max(r.now, e.Now)
		r.timers = slices.DeleteFunc(r.timers, func(t Timer) bool { return t == e.Timer })
		if !r.wanted(i, e.Timer.Kind) {
			return nil, nil
		}
		return []Action{r.request(i, e.Timer.Kind)}, nil
	case Cancel:
		// The driver is stopping: what is left is for another recovery.
		r.now = max(r.now, e.Now)
		r.phase = recDone
		return nil, nil
	}
	return nil, fmt.Errorf("%w: %T", ErrUnexpectedEvent, ev)
}

func (r *Recoverer) recordRead(rec RecordInfo) ([]Action, error) {
	switch rec.State {
	case RecordCommitted:
		return r.resolve(Commit), nil
	case RecordAborted:
		return r.resolve(Abort), nil
	case RecordStaging:
		// The record is authoritative for the participants and deadline;
		// an intent's copy could only be the same.
		if parts, ok := sortedUniqueGroups(rec.Participants); ok && slices.Contains(parts, r.target.Home) {
			r.target.Participants = parts
			r.target.Deadline = rec.Deadline
			r.reset()
		}
		return r.prevent(), nil
	}
	r.phase = recFinalizingAbsent
	return []Action{r.request(r.indexOf(r.target.Home), KindFinalize)}, nil
}

func (r *Recoverer) replied(i int, e Replied) ([]Action, error) {
	res := e.Result
	if res.Err != nil {
		return nil, fmt.Errorf("%w: group %d answered %s of %s with an error: %w", ErrInconsistent, e.From, e.Kind, r.target.Txn, res.Err)
	}
	switch {
	case e.Kind == KindFinalize && (r.phase == recFinalizingAbsent || r.phase == recDeciding):
		switch {
		case res.Record == RecordNone && res.Expired && r.phase == recDeciding:
			// Finalized and forgotten since the votes were read (which
			// requires every vote forgotten first): what is left to
			// resolve is nothing, whichever the outcome was.
			return r.resolve(r.outcome), nil
		case res.Record == RecordCommitted:
			if r.phase == recDeciding && r.outcome == Abort {
				return r.resolve(Commit), fmt.Errorf("%w: %s committed though group %d refused", ErrInconsistent, r.target.Txn, r.refusedBy())
			}
			return r.resolve(Commit), nil
		case res.Record == RecordAborted, res.Record == RecordNone && res.Expired:
			if r.phase == recDeciding && r.outcome == Commit {
				return r.resolve(Abort), fmt.Errorf("%w: %s aborted though every vote is prepared", ErrInconsistent, r.target.Txn)
			}
			return r.resolve(Abort), nil
		case res.Record == RecordStaging && r.phase == recFinalizingAbsent:
			// The home's PREPARE came in between the read and the abort.
			return r.prevent(), nil
		case res.Record == RecordStaging:
			// The decision's FINALIZE cannot leave a STAGING record: this
			// answers a late duplicate of the abort sent when the record
			// seemed absent, before the PREVENTs.
			return nil, nil
		}
		return nil, fmt.Errorf("%w: FINALIZE(%s) of %s found the record %s", ErrInconsistent, r.outcome, r.target.Txn, res.Record)
	case e.Kind == KindPrevent && r.phase == recPreventing:
		if r.votes[i] != VoteNone || res.Vote == VoteNone {
			return nil, nil // a duplicate
		}
		r.votes[i] = res.Vote
		if res.Vote.no() {
			return r.decide(Abort), nil
		}
		for j, v := range r.votes {
			if r.target.Participants[j] != r.target.Home && !v.yes() {
				return nil, nil
			}
		}
		return r.decide(Commit), nil
	case e.Kind == KindResolve && r.phase == recResolving:
		if (r.outcome == Commit && res.Vote != VoteResolvedCommit && res.Vote != VoteNone) ||
			(r.outcome == Abort && (res.Vote == VoteResolvedCommit || res.Vote == VotePrepared)) {
			return nil, fmt.Errorf("%w: RESOLVE(%s) of %s in group %d found the vote %s", ErrInconsistent, r.outcome, r.target.Txn, e.From, res.Vote)
		}
		r.resolved[i] = true
		if slices.Contains(r.resolved, false) {
			return nil, nil
		}
		r.phase = recDone
		return []Action{Recovered{Txn: r.target.Txn, Outcome: r.outcome}}, nil
	}
	return nil, nil
}

func (r *Recoverer) prevent() []Action {
	r.phase = recPreventing
	var acts []Action
	for i, g := range r.target.Participants {
		if g != r.target.Home {
			acts = append(acts, r.request(i, KindPrevent))
		}
	}
	if acts == nil {
		return r.decide(Commit) // no other participant: STAGING is every vote
	}
	return acts
}

func (r *Recoverer) decide(o Outcome) []Action {
	r.phase = recDeciding
	r.outcome = o
	return []Action{r.request(r.indexOf(r.target.Home), KindFinalize)}
}

func (r *Recoverer) resolve(o Outcome) []Action {
	r.phase = recResolving
	r.outcome = o
	acts := make([]Action, len(r.target.Participants))
	for i := range r.target.Participants {
		acts[i] = r.request(i, KindResolve)
	}
	return acts
}

// refusedBy is the first participant whose vote is known to be no.
func (r *Recoverer) refusedBy() GroupID {
	for i, v := range r.votes {
		if v.no() {
			return r.target.Participants[i]
		}
	}
	return 0
}

// wanted reports whether the request of kind to participant i still
// needs an answer.
func (r *Recoverer) wanted(i int, kind CommandKind) bool {
	home := r.target.Participants[i] == r.target.Home
	switch kind {
	case KindReadRecord:
		return r.phase == recReading && home
	case KindFinalize:
		return (r.phase == recFinalizingAbsent || r.phase == recDeciding) && home
	case KindPrevent:
		return r.phase == recPreventing && !home && r.votes[i] == VoteNone
	case KindResolve:
		return r.phase == recResolving && !r.resolved[i]
	}
	return false
}

func (r *Recoverer) scheduleResend(i int, kind CommandKind) []Action {
	t := Timer{Txn: r.target.Txn, Kind: kind, Group: r.target.Participants[i]}
	if slices.Contains(r.timers, t) || !r.wanted(i, kind) {
		return nil
	}
	r.timers = append(r.timers, t)
	return []Action{SetTimer{Timer: t, After: r.cfg.Backoff}}
}

// request is the action of kind for participant i in the current phase.
func (r *Recoverer) request(i int, kind CommandKind) Action {
	t, g := r.target, r.target.Participants[i]
	switch kind {
	case KindReadRecord:
		return ReadRecord{From: g, Txn: t.Txn}
	case KindFinalize:
		f := &Finalize{Txn: t.Txn, Outcome: Abort, Home: t.Home, Participants: slices.Clone(t.Participants), Deadline: t.Deadline, Now: r.now}
		if r.phase == recDeciding {
			f.Outcome = r.outcome
			if r.outcome == Abort {
				f.RefusedBy = r.refusedBy()
			}
		}
		return Send{To: g, Command: f}
	case KindPrevent:
		return Send{To: g, Command: &Prevent{Txn: t.Txn, Deadline: t.Deadline, Now: r.now}}
	default:
		return Send{To: g, Command: &Resolve{Txn: t.Txn, Outcome: r.outcome, Deadline: t.Deadline, Now: r.now}}
	}
}
