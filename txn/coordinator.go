package txn

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// CoordinatorConfig tunes a Coordinator. The zero value of a field takes
// its default.
type CoordinatorConfig struct {
	// Lifetime is how long an attempt may take to prepare: its deadline
	// is its start plus Lifetime. Past it, groups refuse its PREPAREs and
	// recoverers may finish it. Default 2s.
	Lifetime time.Duration
	// BackoffMin and BackoffMax bound the delays before resending a
	// request that was Busy or failed, and before a new attempt. Default
	// 5ms and 500ms.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// MaxAttempts bounds the attempts of a transaction that keeps losing
	// on contention. Default 8.
	MaxAttempts int
}

func (c CoordinatorConfig) withDefaults() CoordinatorConfig {
	if c.Lifetime == 0 {
		c.Lifetime = 2 * time.Second
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 5 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 500 * time.Millisecond
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 8
	}
	return c
}

// Backoff is the delay before the nth resend (from 0): BackoffMin doubled
// n times, capped at BackoffMax, with the defaults for fields left zero.
// A driver waiting on a lock outside the state machines paces itself the
// same way.
func (c CoordinatorConfig) Backoff(n int) time.Duration {
	c = c.withDefaults()
	return backoff(c.BackoffMin, c.BackoffMax, n)
}

func (c CoordinatorConfig) validate() error {
	switch {
	case c.Lifetime < 0, c.BackoffMin < 0, c.BackoffMax < 0, c.MaxAttempts < 0:
		return fmt.Errorf("txn: coordinator config has a negative field: %+v", c)
	case c.BackoffMin > c.BackoffMax:
		return fmt.Errorf("txn: coordinator BackoffMin %v above BackoffMax %v", c.BackoffMin, c.BackoffMax)
	}
	return nil
}

// GroupCondition is a Condition on a key of Group.
type GroupCondition struct {
	Group GroupID
	Condition
}

// GroupWrite is a Write to a key of Group.
type GroupWrite struct {
	Group GroupID
	Write
}

// Spec is a one-shot transaction: every condition and write, and so every
// participant, is known up front.
type Spec struct {
	Conditions []GroupCondition
	Writes     []GroupWrite
	// Home is the participant that keeps the record: ideally one whose
	// leader is local. 0 picks the lowest participant.
	Home GroupID
}

// groupPart is one participant's share of a Spec.
type groupPart struct {
	group      GroupID
	conditions []Condition
	writes     []Write
}

// Coordinator is the proposer of one transaction, as a state machine: it
// takes Events and returns the Actions a driver carries out. It reads no
// clock and does no I/O. It is not safe for concurrent use.
//
// A transaction with one participant commits in one PREPARE_COMMIT.
// Otherwise an attempt sends PREPARE to every participant in parallel
// and:
//   - once every group answered PREPARED, reports StatusCommitted (the
//     commit point has passed: STAGING plus every vote), then sends
//     FINALIZE(commit) to the home and RESOLVE(commit) everywhere;
//   - once a group refused, sends FINALIZE(abort) naming the refusal,
//     and once the home confirms ABORTED, RESOLVE(abort) to every group
//     that may hold intents; then it reports StatusAborted, or, if the
//     refusal came from contention, asks for a new attempt (RetryLater)
//     once the old one's intents are gone, so that the new attempt does
//     not meet them;
//   - a Busy answer (an older attempt waiting on a younger's lock) or a
//     Failed request is resent after a backoff; a Busy naming a holder
//     past its deadline also asks for its recovery (RecoverHolder).
//
// Past the attempt's deadline every group answers a PREPARE with its
// vote or an expiry refusal, so the resends settle the outcome without
// any timeout of the coordinator's own.
type Coordinator struct {
	cfg   CoordinatorConfig
	parts []groupPart // sorted by group
	home  GroupID

	prio     Prio
	attempts int
	txn      TxnID
	deadline Timestamp
	now      Timestamp
	phase    coordPhase

	groups []groupProgress // parallel to parts
	// finalizeDone: the home answered the FINALIZE with the expected
	// record; finalizeTimer: a resend of it is scheduled.
	finalizeDone  bool
	finalizeTimer bool
	// refusal and retry are the abort's reason and whether a new attempt
	// follows it.
	refusal  Refusal
	retry    bool
	reported bool
	// settled: done with the outcome installed at every participant (not
	// stopped by a Cancel or an inconsistency).
	settled bool
}

type coordPhase uint8

const (
	coordNew coordPhase = iota
	coordOnePhase
	coordPreparing
	coordCommitting
	coordFinalizingAbort
	coordResolvingAbort
	coordWaitingRetry
	coordDone
)

func (p coordPhase) String() string {
	return [...]string{"new", "one-phase", "preparing", "committing", "finalizing-abort", "resolving-abort", "waiting-retry", "done"}[p]
}

// groupProgress is what an attempt knows of one participant.
type groupProgress struct {
	// vote is the group's vote as answered, VoteNone until known.
	vote     VoteState
	versions []KeyVersion
	// busy counts the Busy answers, up to the count where the backoff
	// reaches its maximum.
	busy int
	// resolve is whether a RESOLVE is wanted, pending or acknowledged.
	resolve resolveState
	// prepareTimer and resolveTimer: a resend is scheduled.
	prepareTimer bool
	resolveTimer bool
}

type resolveState uint8

const (
	resolveNotNeeded resolveState = iota
	resolvePending
	resolveDone
)

// NewCoordinator returns the coordinator of spec, waiting for its first
// Start.
func NewCoordinator(cfg CoordinatorConfig, spec Spec) (*Coordinator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	byGroup := map[GroupID]*groupPart{}
	part := func(g GroupID) (*groupPart, error) {
		if g == 0 {
			return nil, fmt.Errorf("%w: a key of group 0", ErrMalformed)
		}
		if p, ok := byGroup[g]; ok {
			return p, nil
		}
		p := &groupPart{group: g}
		byGroup[g] = p
		return p, nil
	}
	for _, c := range spec.Conditions {
		p, err := part(c.Group)
		if err != nil {
			return nil, err
		}
		p.conditions = append(p.conditions, c.Condition)
	}
	for _, w := range spec.Writes {
		p, err := part(w.Group)
		if err != nil {
			return nil, err
		}
		w.Value = clone(w.Value)
		p.writes = append(p.writes, w.Write)
	}
	if len(byGroup) == 0 {
		return nil, fmt.Errorf("%w: a transaction without conditions or writes", ErrMalformed)
	}
	c := &Coordinator{cfg: cfg}
	for _, g := range slices.Sorted(maps.Keys(byGroup)) {
		p := byGroup[g]
		if err := validateOps(TxnID{}, p.conditions, p.writes); err != nil {
			return nil, fmt.Errorf("group %d: %w", g, err)
		}
		c.parts = append(c.parts, *p)
	}
	c.home = spec.Home
	if c.home == 0 {
		c.home = c.parts[0].group
	}
	if c.indexOf(c.home) < 0 {
		return nil, fmt.Errorf("%w: home %d is not a participant", ErrMalformed, c.home)
	}
	return c, nil
}

// Done reports whether the coordinator has nothing left to do.
func (c *Coordinator) Done() bool { return c.phase == coordDone }

// Resolved reports whether the coordinator is done with the outcome
// installed everywhere: every participant applied its RESOLVE (or the
// one group its PREPARE_COMMIT), and the home its FINALIZE. A
// coordinator stopped by Cancel is done but not resolved.
func (c *Coordinator) Resolved() bool { return c.settled }

// Txn is the current attempt's id (zero before the first Start).
func (c *Coordinator) Txn() TxnID { return c.txn }

// Participants lists the transaction's groups in order.
func (c *Coordinator) Participants() []GroupID {
	gs := make([]GroupID, len(c.parts))
	for i, p := range c.parts {
		gs[i] = p.group
	}
	return gs
}

// Home is the transaction's home group.
func (c *Coordinator) Home() GroupID { return c.home }

func (c *Coordinator) indexOf(g GroupID) int {
	for i, p := range c.parts {
		if p.group == g {
			return i
		}
	}
	return -1
}

// Step feeds one event to the coordinator and returns what to do. An
// error leaves the state as it was, except ErrInconsistent, after which
// the coordinator is done (and has reported Unknown, if it had not
// reported).
func (c *Coordinator) Step(ev Event) ([]Action, error) {
	switch e := ev.(type) {
	case Start:
		return c.start(e)
	case Replied:
		if c.stale(e.Txn) {
			return nil, nil
		}
		i := c.indexOf(e.From)
		if i < 0 {
			return nil, fmt.Errorf("%w: reply from group %d, not a participant", ErrUnexpectedEvent, e.From)
		}
		c.now = max(c.now, e.Now)
		return c.replied(i, e)
	case Failed:
		if c.stale(e.Txn) {
			return nil, nil
		}
		i := c.indexOf(e.To)
		if i < 0 {
			return nil, fmt.Errorf("%w: failure of group %d, not a participant", ErrUnexpectedEvent, e.To)
		}
		c.now = max(c.now, e.Now)
		return c.scheduleResend(i, e.Kind, c.cfg.BackoffMin), nil
	case TimerFired:
		if c.stale(e.Timer.Txn) {
			return nil, nil
		}
		i := c.indexOf(e.Timer.Group)
		if i < 0 {
			return nil, fmt.Errorf("%w: timer for group %d, not a participant", ErrUnexpectedEvent, e.Timer.Group)
		}
		c.now = max(c.now, e.Now)
		return c.timerFired(i, e.Timer.Kind), nil
	case Cancel:
		c.now = max(c.now, e.Now)
		var acts []Action
		if !c.reported {
			acts = append(acts, c.report(StatusUnknown))
		}
		c.phase = coordDone
		return acts, nil
	}
	return nil, fmt.Errorf("%w: %T", ErrUnexpectedEvent, ev)
}

// stale reports whether an event is about another attempt than the
// current one (an earlier attempt's late reply or timer), or comes
// after the end.
func (c *Coordinator) stale(t TxnID) bool {
	return t != c.txn || c.phase == coordDone || c.phase == coordNew
}

func (c *Coordinator) start(e Start) ([]Action, error) {
	if c.phase != coordNew && c.phase != coordWaitingRetry {
		return nil, fmt.Errorf("%w: Start in phase %s", ErrUnexpectedEvent, c.phase)
	}
	if e.Txn.IsZero() || e.Txn == c.txn {
		return nil, fmt.Errorf("%w: Start with id %s: every attempt needs a new nonzero id", ErrUnexpectedEvent, e.Txn)
	}
	if c.attempts == 0 {
		c.prio = PrioOf(e.Txn)
	}
	c.attempts++
	c.txn = e.Txn
	c.now = max(c.now, e.Now)
	c.deadline = e.Now.Add(c.cfg.Lifetime)
	c.groups = make([]groupProgress, len(c.parts))
	c.finalizeDone, c.finalizeTimer = false, false
	c.refusal, c.retry = Refusal{}, false
	if len(c.parts) == 1 {
		c.phase = coordOnePhase
		return []Action{c.prepareCommitCmd()}, nil
	}
	c.phase = coordPreparing
	acts := make([]Action, 0, len(c.parts))
	for i := range c.parts {
		acts = append(acts, c.prepareCmd(i))
	}
	return acts, nil
}

func (c *Coordinator) prepareCmd(i int) Send {
	p := c.parts[i]
	return Send{To: p.group, Command: &Prepare{
		Txn:          c.txn,
		Prio:         c.prio,
		Home:         c.home,
		Participants: c.Participants(),
		Deadline:     c.deadline,
		Now:          c.now,
		Conditions:   slices.Clone(p.conditions),
		Writes:       slices.Clone(p.writes),
	}}
}

func (c *Coordinator) prepareCommitCmd() Send {
	p := c.parts[0]
	return Send{To: p.group, Command: &PrepareCommit{
		Txn:        c.txn,
		Prio:       c.prio,
		Deadline:   c.deadline,
		Now:        c.now,
		Conditions: slices.Clone(p.conditions),
		Writes:     slices.Clone(p.writes),
	}}
}

func (c *Coordinator) finalizeCmd(o Outcome, refusedBy GroupID) Send {
	return Send{To: c.home, Command: &Finalize{
		Txn:          c.txn,
		Outcome:      o,
		RefusedBy:    refusedBy,
		Home:         c.home,
		Participants: c.Participants(),
		Deadline:     c.deadline,
		Now:          c.now,
	}}
}

func (c *Coordinator) resolveCmd(i int, o Outcome) Send {
	return Send{To: c.parts[i].group, Command: &Resolve{Txn: c.txn, Outcome: o, Deadline: c.deadline, Now: c.now}}
}

func (c *Coordinator) replied(i int, e Replied) ([]Action, error) {
	r := e.Result
	if r.Err != nil {
		return c.inconsistent(fmt.Errorf("group %d answered %s of %s with an error: %w", e.From, e.Kind, c.txn, r.Err))
	}
	switch {
	case e.Kind == KindPrepareCommit && c.phase == coordOnePhase:
		return c.preparedOnePhase(r)
	case e.Kind == KindPrepare && c.phase == coordPreparing:
		return c.prepared(i, r)
	case e.Kind == KindFinalize && c.phase == coordCommitting:
		// No record past the deadline: it was finalized and then forgotten
		// before this answer (a duplicate's, or a resend's) came back. It
		// cannot be a record never staged: the home's vote was PREPARED.
		if r.Record != RecordCommitted && (r.Record != RecordNone || !r.Expired) {
			return c.inconsistent(fmt.Errorf("FINALIZE(commit) of %s found the record %s", c.txn, r.Record))
		}
		c.finalizeDone = true
		return c.maybeDone(), nil
	case e.Kind == KindFinalize && c.phase == coordFinalizingAbort:
		if r.Record != RecordAborted && (r.Record != RecordNone || !r.Expired) {
			return c.inconsistent(fmt.Errorf("FINALIZE(abort) of %s found the record %s", c.txn, r.Record))
		}
		c.finalizeDone = true
		return c.resolveAbort(), nil
	case e.Kind == KindResolve && c.phase == coordCommitting:
		// No vote past the deadline: the group resolved the intents and
		// the garbage collector forgot the tombstone before this answer
		// (a duplicate's, or a resend's) came back.
		if r.Vote != VoteResolvedCommit && (r.Vote != VoteNone || !r.Expired) {
			return c.inconsistent(fmt.Errorf("RESOLVE(commit) of %s in group %d found the vote %s", c.txn, e.From, r.Vote))
		}
		c.groups[i].resolve = resolveDone
		return c.maybeDone(), nil
	case e.Kind == KindResolve && c.phase == coordResolvingAbort:
		if r.Vote == VoteResolvedCommit || r.Vote == VotePrepared {
			return c.inconsistent(fmt.Errorf("RESOLVE(abort) of %s in group %d found the vote %s", c.txn, e.From, r.Vote))
		}
		c.groups[i].resolve = resolveDone
		return c.maybeDone(), nil
	}
	// A duplicate, or an answer overtaken by the phase (a PREPARE's
	// after the abort began): what it says is already known.
	return nil, nil
}

func (c *Coordinator) preparedOnePhase(r Result) ([]Action, error) {
	switch {
	case r.Busy:
		return c.busy(0, r.Holder), nil
	case r.Vote == VoteResolvedCommit:
		c.groups[0].vote = r.Vote
		c.groups[0].versions = r.Versions
		c.phase, c.settled = coordDone, true
		return []Action{c.report(StatusCommitted)}, nil
	case r.Vote.no():
		c.groups[0].vote = r.Vote
		c.refusal = refusalOf(r)
		// Nothing was locked: the next attempt needs no cleanup first.
		if c.refusal.retryable() && c.attempts < c.cfg.MaxAttempts {
			c.phase = coordWaitingRetry
			return append(c.recoverConflictHolder(r), c.retryLater()), nil
		}
		c.phase, c.settled = coordDone, true
		return append(c.recoverConflictHolder(r), c.report(StatusAborted)), nil
	}
	return c.inconsistent(fmt.Errorf("PREPARE_COMMIT of %s answered %s", c.txn, r.Vote))
}

func (c *Coordinator) prepared(i int, r Result) ([]Action, error) {
	g := &c.groups[i]
	if g.vote != VoteNone {
		return nil, nil // a duplicate answer
	}
	switch {
	case r.Busy:
		return c.busy(i, r.Holder), nil
	case r.Vote.yes():
		g.vote = r.Vote
		g.versions = r.Versions
		for _, o := range c.groups {
			if !o.vote.yes() {
				return nil, nil
			}
		}
		return c.commit(), nil
	case r.Vote.no():
		g.vote = r.Vote
		c.refusal = refusalOf(r)
		c.phase = coordFinalizingAbort
		return append(c.recoverConflictHolder(r), c.finalizeCmd(Abort, c.parts[i].group)), nil
	}
	return c.inconsistent(fmt.Errorf("PREPARE of %s in group %d answered %s", c.txn, c.parts[i].group, r.Vote))
}

// refusalOf is why r refused; a vote resolved as aborted means someone
// (a recoverer) aborted the attempt.
func refusalOf(r Result) Refusal {
	if r.Vote == VoteRefused {
		return r.Refusal
	}
	return Refusal{Reason: RefusedAborted}
}

// busy schedules the resend of a PREPARE that met a younger holder, and
// asks for the holder's recovery if it is past its deadline.
func (c *Coordinator) busy(i int, h Holder) []Action {
	g := &c.groups[i]
	acts := c.scheduleResend(i, c.prepareKind(), backoff(c.cfg.BackoffMin, c.cfg.BackoffMax, g.busy))
	// A Busy while a resend is already due (a duplicate's) does not count.
	if acts != nil && g.busy < backoffSteps(c.cfg.BackoffMin, c.cfg.BackoffMax) {
		g.busy++
	}
	if h.Expired {
		acts = append(acts, RecoverHolder{Target: targetOf(h)})
	}
	return acts
}

func (c *Coordinator) recoverConflictHolder(r Result) []Action {
	if r.Vote == VoteRefused && r.Refusal.Reason == RefusedConflict && r.Refusal.Holder.Expired {
		return []Action{RecoverHolder{Target: targetOf(r.Refusal.Holder)}}
	}
	return nil
}

func targetOf(h Holder) RecoveryTarget {
	return RecoveryTarget{Txn: h.Txn, Home: h.Home, Participants: slices.Clone(h.Participants), Deadline: h.Deadline}
}

func (c *Coordinator) prepareKind() CommandKind {
	if len(c.parts) == 1 {
		return KindPrepareCommit
	}
	return KindPrepare
}

// commit runs once every vote is PREPARED: the commit point has passed.
func (c *Coordinator) commit() []Action {
	c.phase = coordCommitting
	acts := []Action{c.report(StatusCommitted), c.finalizeCmd(Commit, 0)}
	for i := range c.groups {
		c.groups[i].resolve = resolvePending
		acts = append(acts, c.resolveCmd(i, Commit))
	}
	return acts
}

// resolveAbort runs once the home confirmed the abort: every group that
// may hold intents, or may get them from a late PREPARE, gets a RESOLVE.
func (c *Coordinator) resolveAbort() []Action {
	c.phase = coordResolvingAbort
	c.retry = c.refusal.retryable() && c.attempts < c.cfg.MaxAttempts
	var acts []Action
	if !c.retry {
		acts = append(acts, c.report(StatusAborted))
	}
	for i := range c.groups {
		if c.groups[i].vote.no() {
			continue // refused or aborted already: nothing to drop
		}
		c.groups[i].resolve = resolvePending
		acts = append(acts, c.resolveCmd(i, Abort))
	}
	return append(acts, c.maybeDone()...)
}

// maybeDone ends the attempt once every request is acknowledged.
func (c *Coordinator) maybeDone() []Action {
	if !c.finalizeDone {
		return nil
	}
	for _, g := range c.groups {
		if g.resolve == resolvePending {
			return nil
		}
	}
	if c.phase == coordResolvingAbort && c.retry {
		c.phase = coordWaitingRetry
		return []Action{c.retryLater()}
	}
	c.phase, c.settled = coordDone, true
	return nil
}

func (c *Coordinator) retryLater() RetryLater {
	return RetryLater{After: backoff(c.cfg.BackoffMin, c.cfg.BackoffMax, c.attempts-1), Prio: c.prio}
}

// wanted reports whether the request of kind to participant i still
// needs an answer in the current phase.
func (c *Coordinator) wanted(i int, kind CommandKind) bool {
	switch kind {
	case KindPrepareCommit:
		return c.phase == coordOnePhase
	case KindPrepare:
		return c.phase == coordPreparing && c.groups[i].vote == VoteNone
	case KindFinalize:
		return c.parts[i].group == c.home && !c.finalizeDone &&
			(c.phase == coordCommitting || c.phase == coordFinalizingAbort)
	case KindResolve:
		return (c.phase == coordCommitting || c.phase == coordResolvingAbort) && c.groups[i].resolve == resolvePending
	}
	return false
}

// timerFlag is where the pending resend of kind to participant i is
// noted.
func (c *Coordinator) timerFlag(i int, kind CommandKind) *bool {
	switch kind {
	case KindPrepare, KindPrepareCommit:
		return &c.groups[i].prepareTimer
	case KindFinalize:
		return &c.finalizeTimer
	case KindResolve:
		return &c.groups[i].resolveTimer
	}
	return nil
}

// scheduleResend sets a timer to resend the request of kind to
// participant i, unless it is no longer wanted or a resend is already
// scheduled.
func (c *Coordinator) scheduleResend(i int, kind CommandKind, after time.Duration) []Action {
	flag := c.timerFlag(i, kind)
	if flag == nil || *flag || !c.wanted(i, kind) {
		return nil
	}
	*flag = true
	return []Action{SetTimer{Timer: Timer{Txn: c.txn, Kind: kind, Group: c.parts[i].group}, After: after}}
}

func (c *Coordinator) timerFired(i int, kind CommandKind) []Action {
	flag := c.timerFlag(i, kind)
	if flag == nil {
		return nil
	}
	*flag = false
	if !c.wanted(i, kind) {
		return nil
	}
	switch kind {
	case KindPrepareCommit:
		return []Action{c.prepareCommitCmd()}
	case KindPrepare:
		return []Action{c.prepareCmd(i)}
	case KindFinalize:
		if c.phase == coordCommitting {
			return []Action{c.finalizeCmd(Commit, 0)}
		}
		return []Action{c.finalizeCmd(Abort, c.refusedBy())}
	case KindResolve:
		o := Abort
		if c.phase == coordCommitting {
			o = Commit
		}
		return []Action{c.resolveCmd(i, o)}
	}
	return nil
}

// refusedBy is the first group whose vote is known to be no.
func (c *Coordinator) refusedBy() GroupID {
	for i, g := range c.groups {
		if g.vote.no() {
			return c.parts[i].group
		}
	}
	return 0
}

func (c *Coordinator) report(s ClientStatus) Report {
	c.reported = true
	r := Report{Txn: c.txn, Status: s}
	switch s {
	case StatusAborted:
		r.Refusal = c.refusal
	case StatusCommitted:
		for i, g := range c.groups {
			for _, kv := range g.versions {
				r.Versions = append(r.Versions, GroupKeyVersion{Group: c.parts[i].group, Key: kv.Key, Version: kv.Version})
			}
		}
	}
	return r
}

// inconsistent stops the coordinator on a contradiction.
func (c *Coordinator) inconsistent(err error) ([]Action, error) {
	var acts []Action
	if !c.reported {
		acts = append(acts, c.report(StatusUnknown))
	}
	c.phase = coordDone
	return acts, fmt.Errorf("%w: %w", ErrInconsistent, err)
}
