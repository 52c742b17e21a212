package txn

// This file is the model of design §9's first test layer: the real
// Participants, Coordinators and a Recoverer, wired by an in-memory
// network that the explorer (exhaustive_test.go) drives one step at a
// time. A world is a value: a step copies what it changes (copy on
// write), so that the explorer can keep any state and go back to it.
//
// What the model abstracts:
//   - Time. Every attempt begun early has its deadline at early+lifetime;
//     one clock step moves every group's log time (and the proposers'
//     clocks) past it to late. An attempt begun late never expires.
//   - Timers. A timer fires at once: the delay a backoff puts before a
//     resend is covered by the resend's own delay in flight.
//   - Crashes. An answer in flight may never be delivered: a coordinator
//     crashes by not hearing any more. Every state where nothing but
//     answers is in flight is checked as if every actor still waiting
//     crashed there (crashPending, then finish).
//   - The recoverer's linearizable read of the record is atomic with the
//     step that asks for it (the recoverer does nothing in between, and
//     its start may come at any time anyway).
//   - Log indexes, in the state hash only (see appendAbstractParticipant).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"time"
)

const (
	modelEarly    Timestamp = 0
	modelLifetime           = 100 * time.Nanosecond
	modelLate     Timestamp = 1000
)

// scenario is what one exhaustive run explores: the transactions and the
// bounds on faults, and the run's caches.
type scenario struct {
	name   string
	groups []GroupID
	specs  []Spec // one coordinator per spec; spec i is proposed by node i+1
	cfg    CoordinatorConfig
	// Budgets for the whole run, each fault taken at any step:
	ambiguous int // a request applied, its answer lost (Failed)
	lost      int // a request lost before it applied (Failed)
	dups      int // a request delivered and kept for a second delivery
	// faults, if not 0, bounds the three kinds together.
	faults int
	// recoveries bounds the recoveries the explorer starts before
	// quiescence (each attempt at most once); at quiescence everything
	// left is recovered regardless.
	recoveries int
	// recoverable, if not 0, is the mask of the attempt slots the explorer
	// may recover before quiescence.
	recoverable uint32
	// recovererWaits puts the recoverer's answers in flight like the
	// coordinators', so that it too may crash midway; without it the
	// recoverer hears in the same step (it is not a proposer: nothing it
	// does depends on when it hears, but for its own next requests, which
	// may wait in flight anyway).
	recovererWaits bool
	clockStep      bool // the clock may pass the early deadlines, once
	gc             bool // tombstones may be forgotten after the clock step
	// plantedBug breaks the protocol on purpose, to check that the
	// explorer notices.
	plantedBug plantedBug

	// others[i] is the mask of coordinator i's participants but its home.
	others []uint32
	// groupStates interns the groups' states by exact encoding, and
	// applies caches what a command does to one: the same group state
	// meets the same command in many worlds.
	groupStates map[string]*groupState
	applies     map[applyKey]*applyOutcome
}

// applyKey names a command applied to a group state: the state, and the
// command's canonical encoding (without its Now, which changes nothing
// in the model: see the encodings below).
type applyKey struct {
	gs  *groupState
	cmd string
}

type plantedBug uint8

const (
	noBug plantedBug = iota
	// preventLies makes PREVENT's refusals answer PREPARED.
	preventLies
	// designRecover is design §5's Recover(t) as written: when the record
	// is absent, it aborts and returns, even when the FINALIZE finds that
	// the home's PREPARE has since written STAGING.
	designRecover
)

// attemptID: coordinator i's n-th attempt (n from 1) is
// TxnID{HLC: i+1, Node: i+1, Counter: n}, in slot i*MaxAttempts + n-1.
// The HLC is the first attempt's, so node 1's attempts are all older than
// node 2's: node 2's die at node 1's locks, node 1's wait at node 2's.
func (sc *scenario) attemptID(i, n int) TxnID {
	return TxnID{HLC: uint64(i + 1), Node: uint32(i + 1), Counter: uint32(n)}
}

func (sc *scenario) slotOf(t TxnID) (int, bool) {
	i, n := int(t.Node)-1, int(t.Counter)
	if i < 0 || i >= len(sc.specs) || n < 1 || n > sc.cfg.MaxAttempts || t.HLC != uint64(i+1) {
		return 0, false
	}
	return i*sc.cfg.MaxAttempts + n - 1, true
}

func (sc *scenario) slots() int { return len(sc.specs) * sc.cfg.MaxAttempts }

func (sc *scenario) slotTxn(slot int) TxnID {
	return sc.attemptID(slot/sc.cfg.MaxAttempts, slot%sc.cfg.MaxAttempts+1)
}

// writeBit is the bit of (g, key) among coordinator i's writes, for the
// installed mask of its attempts.
func (sc *scenario) writeBit(i int, g GroupID, key string) (uint32, bool) {
	for j, w := range sc.specs[i].Writes {
		if w.Group == g && w.Key == key {
			return 1 << j, true
		}
	}
	return 0, false
}

func (sc *scenario) allWrites(i int) uint32 { return 1<<len(sc.specs[i].Writes) - 1 }

// groupState is a group's Participant with what the checks need of it,
// computed once per distinct state. The Participant is never modified.
type groupState struct {
	p     *Participant
	exact string    // AppendState
	hash  [2]uint64 // of appendAbstractParticipant
	// Masks of attempt slots: vote yes (PREPARED or RESOLVED_COMMIT),
	// vote REFUSED, vote RESOLVED_ABORT, record STAGING, COMMITTED,
	// ABORTED; traced: any vote or record; left: a STAGING record or an
	// intent (what recovery must finish).
	yes, refused, resolvedAbort, resolvedCommit uint32
	staging, committed, aborted                 uint32
	traced, left                                uint32
	violation                                   string
}

func (sc *scenario) intern(p *Participant) *groupState {
	exact := string(p.AppendState(nil))
	if gs, ok := sc.groupStates[exact]; ok {
		return gs
	}
	gs := &groupState{p: p, exact: exact, hash: hashBytes(appendAbstractParticipant(nil, p))}
	bad := func(format string, args ...any) {
		if gs.violation == "" {
			gs.violation = fmt.Sprintf(format, args...)
		}
	}
	locks := map[TxnID]int{}
	for _, k := range slices.Sorted(maps.Keys(p.intents)) {
		in := p.intents[k]
		locks[in.txn]++
		if slot, ok := sc.slotOf(in.txn); ok {
			gs.left |= 1 << slot
		}
	}
	for _, t := range sortedTxns(p.votes) {
		v := p.votes[t]
		slot, ok := sc.slotOf(t)
		if !ok {
			bad("group %d has a vote of unknown %s", p.group, t)
			continue
		}
		bit := uint32(1) << slot
		gs.traced |= bit
		switch v.state {
		case VotePrepared:
			gs.yes |= bit
			// A PREPARED vote holds exactly the locks it names.
			for _, k := range v.keys {
				if in, ok := p.intents[k]; !ok || in.txn != t {
					bad("group %d: %s is prepared but does not hold its lock on %q", p.group, t, k)
				}
			}
			if locks[t] != len(v.keys) {
				bad("group %d: %s is prepared with %d keys but holds %d locks", p.group, t, len(v.keys), locks[t])
			}
			delete(locks, t)
		case VoteRefused:
			gs.refused |= bit
		case VoteResolvedCommit:
			gs.yes |= bit
			gs.resolvedCommit |= bit
		case VoteResolvedAbort:
			gs.resolvedAbort |= bit
		}
	}
	for _, t := range sortedTxns(locks) {
		bad("group %d holds locks of %s without a PREPARED vote", p.group, t)
	}
	for _, t := range sortedTxns(p.records) {
		rec := p.records[t]
		slot, ok := sc.slotOf(t)
		if !ok {
			bad("group %d has a record of unknown %s", p.group, t)
			continue
		}
		bit := uint32(1) << slot
		gs.traced |= bit
		switch rec.state {
		case RecordStaging:
			gs.staging |= bit
			gs.left |= bit
		case RecordCommitted:
			gs.committed |= bit
		case RecordAborted:
			gs.aborted |= bit
		}
	}
	sc.groupStates[exact] = gs
	return gs
}

// applyOutcome is what one command did to one group state.
type applyOutcome struct {
	after  *groupState
	result Result
	// installs are the writes it installed, as (slot, bit) pairs.
	installs  [][2]uint32
	violation string
}

// apply runs cmd on gs as the group's next log entry, through the cache,
// and checks the step's own invariants: a lock passes from a
// transaction to another only through no lock (I5), a value changes only
// by the commit of its lock holder or by a one-phase commit of an
// unlocked key, and no command fails but a premature FORGET.
func (sc *scenario) apply(gs *groupState, cmd Command, cmdKey string) *applyOutcome {
	key := applyKey{gs, cmdKey}
	if out, ok := sc.applies[key]; ok {
		return out
	}
	before := gs.p
	after := before.Clone()
	out := &applyOutcome{result: after.Apply(before.Applied()+1, cmd)}
	bad := func(format string, args ...any) {
		if out.violation == "" {
			out.violation = fmt.Sprintf(format, args...)
		}
	}
	g := before.group
	if err := out.result.Err; err != nil && !errors.Is(err, ErrNotForgettable) {
		bad("group %d: %s of %s: %v", g, cmd.Kind(), cmd.TxnID(), err)
	}
	for _, k := range slices.Sorted(maps.Keys(after.intents)) {
		a := after.intents[k]
		if b, ok := before.intents[k]; ok && b.txn != a.txn {
			bad("I5: group %d key %q: the lock of %s became %s's", g, k, b.txn, a.txn)
		}
	}
	keys := slices.Collect(maps.Keys(before.data))
	for k := range after.data {
		if _, ok := before.data[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		b, bok := before.data[k]
		a, aok := after.data[k]
		if bok == aok && b.version == a.version && string(b.value) == string(a.value) {
			continue
		}
		lock, locked := before.intents[k]
		var writer TxnID
		switch c := cmd.(type) {
		case *Resolve:
			if c.Outcome != Commit || !locked || lock.txn != c.Txn || !lock.write {
				bad("I5: group %d key %q changed by %s(%s) of %s without its write lock", g, k, cmd.Kind(), c.Outcome, c.Txn)
				continue
			}
			writer = c.Txn
		case *PrepareCommit:
			if locked {
				bad("I5: group %d key %q written by PREPARE_COMMIT of %s under %s's lock", g, k, c.Txn, lock.txn)
				continue
			}
			writer = c.Txn
		default:
			bad("group %d key %q changed by %s", g, k, cmd.Kind())
			continue
		}
		slot, ok := sc.slotOf(writer)
		bit, bitOK := sc.writeBit(slot/sc.cfg.MaxAttempts, g, k)
		if !ok || !bitOK {
			bad("group %d key %q written by %s, which does not write it", g, k, writer)
			continue
		}
		out.installs = append(out.installs, [2]uint32{uint32(slot), bit})
	}
	out.after = sc.intern(after)
	sc.applies[key] = out
	return out
}

// attemptGhost is what the invariants need to remember of an attempt
// beyond the current state: monotone flags, kept in the world (and so in
// its hash).
type attemptGhost struct {
	// prepared and refused are masks of the groups (bit g) whose vote was
	// ever yes (PREPARED or RESOLVED_COMMIT), and ever REFUSED.
	prepared, refused uint32
	// staged: the home ever held a STAGING record.
	staged bool
	// committed: a proof of commit was seen (the commit condition, a
	// COMMITTED record, RESOLVED_COMMIT, an installed write, a client
	// ack). aborted: a proof of abort (an ABORTED record, RESOLVED_ABORT,
	// a REFUSED vote, a client told aborted).
	committed, aborted bool
	// installed is the mask of the attempt's writes ever installed.
	installed uint32
	acked     bool // client told committed
	toldAbort bool // client told aborted
	// started is set once the attempt began, with its deadline.
	started  bool
	deadline Timestamp
}

// message is a request or an answer in flight. key is its canonical
// encoding: the network is kept sorted by it, so that equal networks are
// equal slices.
type message struct {
	key   string
	hash  [2]uint64 // of key
	actor int       // coordinator index, or the scenario's recoverer index
	epoch uint32    // the recoverer's epoch, for a message of the recoverer
	// A request: a command for group to.
	request bool
	to      GroupID
	cmd     Command
	// An answer: the event to feed the actor.
	event Event
}

type coordSlot struct {
	c       *Coordinator // shared between worlds until stepped
	hash    [2]uint64    // of appendCoordinator(c), kept with it
	crashed bool
	retry   bool // a RetryLater is pending
	report  ClientStatus
}

type recSlot struct {
	r    *Recoverer // nil when idle; shared between worlds until stepped
	hash [2]uint64  // of appendRecoverer(r), kept with it
	// epoch tells this recovery's answers from an earlier one's.
	epoch uint32
	// recovered is the mask of the attempt slots recovered (or being
	// recovered) in this run, each once; left is how many more
	// recoveries the explorer may start.
	recovered uint32
	left      int
}

type world struct {
	sc     *scenario
	groups []*groupState
	coords []coordSlot
	rec    recSlot
	net    []*message // never modified in place: shared between worlds
	now    Timestamp
	late   bool
	// Fault budgets left.
	ambiguous, lost, dups, faults int
	ghosts                        []attemptGhost
	// violation is set by the step that broke an invariant.
	violation string
	// answered is the Result of the last command applied by the step
	// that made this world (not part of the state): for the explorer's
	// coverage counts.
	answered *Result
}

func (w *world) recActor() int { return len(w.coords) }

func newWorld(sc *scenario) (*world, error) {
	sc.groupStates = map[string]*groupState{}
	sc.applies = map[applyKey]*applyOutcome{}
	w := &world{sc: sc, ambiguous: sc.ambiguous, lost: sc.lost, dups: sc.dups, faults: sc.faults, now: modelEarly}
	if w.faults == 0 {
		w.faults = sc.ambiguous + sc.lost + sc.dups
	}
	for _, g := range sc.groups {
		w.groups = append(w.groups, sc.intern(NewParticipant(g)))
	}
	w.ghosts = make([]attemptGhost, sc.slots())
	w.rec.left = sc.recoveries
	sc.others = nil
	for _, spec := range sc.specs {
		for _, c := range spec.Conditions {
			if c.Version != 0 {
				return nil, errors.New("the model abstracts versions: its conditions must expect absent keys")
			}
		}
		c, err := NewCoordinator(sc.cfg, spec)
		if err != nil {
			return nil, err
		}
		var others uint32
		for _, g := range c.Participants() {
			if g != c.home {
				others |= 1 << g
			}
		}
		sc.others = append(sc.others, others)
		w.coords = append(w.coords, coordSlot{c: c, hash: hashBytes(appendCoordinator(nil, c))})
	}
	for i := range w.coords {
		w.stepCoord(i, Start{Txn: sc.attemptID(i, 1), Now: w.now})
	}
	w.checkInvariants()
	return w, nil
}

// clone copies the world shallowly: the group states, coordinators and
// recoverer are shared, and a step replaces (never modifies) the ones it
// changes.
func (w *world) clone() *world {
	n := *w
	n.answered = nil
	n.groups = slices.Clone(w.groups)
	n.coords = slices.Clone(w.coords)
	n.net = slices.Clone(w.net)
	n.ghosts = slices.Clone(w.ghosts)
	return &n
}

func (w *world) fail(format string, args ...any) {
	if w.violation == "" {
		w.violation = fmt.Sprintf(format, args...)
	}
}

func (w *world) groupIndex(g GroupID) int {
	for i, gs := range w.groups {
		if gs.p.group == g {
			return i
		}
	}
	return -1
}

// addMessage inserts m, keeping the network sorted.
func (w *world) addMessage(m message) {
	m.key = string(appendMessage(nil, m))
	m.hash = hashBytes([]byte(m.key))
	i, _ := slices.BinarySearchFunc(w.net, m.key, func(a *message, k string) int { return strings.Compare(a.key, k) })
	w.net = slices.Insert(w.net, i, &m)
}

// apply applies cmd at group gi; cmdKey is its encoding, or "" to
// compute it.
func (w *world) apply(gi int, cmd Command, cmdKey string) Result {
	if cmdKey == "" {
		cmdKey = string(appendCommand(nil, cmd))
	}
	out := w.sc.apply(w.groups[gi], cmd, cmdKey)
	if out.violation != "" {
		w.fail("%s", out.violation)
	}
	for _, in := range out.installs {
		w.ghosts[in[0]].installed |= in[1]
	}
	w.groups[gi] = out.after
	w.answered = &out.result
	return out.result
}

// stepCoord feeds coordinator i an event and carries out its actions.
func (w *world) stepCoord(i int, ev Event) {
	s := &w.coords[i]
	c := cloneCoordinator(s.c)
	acts, err := c.Step(ev)
	if err != nil {
		w.fail("coordinator %d: %v", i, err)
	}
	s.c = c
	s.hash = hashBytes(appendCoordinator(nil, c))
	if start, ok := ev.(Start); ok && err == nil {
		if slot, ok := w.sc.slotOf(start.Txn); ok {
			w.ghosts[slot].started = true
			w.ghosts[slot].deadline = c.deadline
		}
	}
	w.carryOut(i, 0, acts)
	if c.Done() {
		w.dropAnswers(i)
	}
}

// stepRecoverer feeds the recoverer an event and carries out its actions.
func (w *world) stepRecoverer(ev Event) {
	r := cloneRecoverer(w.rec.r)
	acts, err := r.Step(ev)
	if err != nil {
		w.fail("recoverer of %s: %v", r.target.Txn, err)
	}
	w.rec.r = r
	w.rec.hash = hashBytes(appendRecoverer(nil, r))
	w.carryOut(w.recActor(), w.rec.epoch, acts)
}

func (w *world) carryOut(actor int, epoch uint32, acts []Action) {
	for _, a := range acts {
		switch a := a.(type) {
		case Send:
			w.addMessage(message{actor: actor, epoch: epoch, request: true, to: a.To, cmd: a.Command})
		case ReadRecord:
			gi := w.groupIndex(a.From)
			if gi < 0 {
				w.fail("actor %d reads the record of %s at unknown group %d", actor, a.Txn, a.From)
				continue
			}
			w.feed(actor, epoch, RecordRead{From: a.From, Txn: a.Txn, Record: w.groups[gi].p.ReadRecord(a.Txn), Now: w.now})
		case SetTimer:
			w.feed(actor, epoch, TimerFired{Timer: a.Timer, Now: w.now})
		case Report:
			w.reported(actor, a)
		case RetryLater:
			w.coords[actor].retry = true
		case RecoverHolder:
			// The explorer starts the recoverer on any attempt at any time,
			// which covers this request.
		case Recovered:
			w.rec.r, w.rec.hash = nil, [2]uint64{}
			w.dropAnswers(w.recActor())
		default:
			w.fail("actor %d: unknown action %T", actor, a)
		}
	}
}

func (w *world) reported(actor int, r Report) {
	s := &w.coords[actor]
	if s.report != 0 {
		w.fail("coordinator %d reported %s after %s", actor, r.Status, s.report)
	}
	s.report = r.Status
	slot, ok := w.sc.slotOf(r.Txn)
	if !ok {
		w.fail("coordinator %d reported on unknown %s", actor, r.Txn)
		return
	}
	switch r.Status {
	case StatusCommitted:
		w.ghosts[slot].acked = true
	case StatusAborted:
		w.ghosts[slot].toldAbort = true
	}
}

// deliver delivers message i. With applied false a request is lost
// before it applies; with answered false its answer is lost (the sender
// hears Failed); with keep the request stays for a second delivery.
func (w *world) deliver(i int, applied, answered, keep bool) {
	m := w.net[i]
	if !keep {
		w.net = slices.Delete(w.net, i, i+1)
	}
	if !m.request {
		w.feed(m.actor, m.epoch, m.event)
		return
	}
	gi := w.groupIndex(m.to)
	if gi < 0 {
		w.fail("message to unknown group %d", m.to)
		return
	}
	var answer Event = Failed{To: m.to, Kind: m.cmd.Kind(), Txn: m.cmd.TxnID(), Now: w.now}
	if applied {
		res := w.apply(gi, m.cmd, m.key)
		switch c := m.cmd.(type) {
		case *Prevent:
			if w.sc.plantedBug == preventLies && res.Vote == VoteRefused {
				res.Vote = VotePrepared
			}
		case *Finalize:
			if w.sc.plantedBug == designRecover && c.Outcome == Abort && c.RefusedBy == 0 && res.Record == RecordStaging {
				res.Record = RecordAborted
			}
		}
		if answered {
			answer = Replied{From: m.to, Kind: m.cmd.Kind(), Txn: m.cmd.TxnID(), Result: res, Now: w.now}
		}
	}
	switch {
	case !w.listening(m.actor, m.epoch):
	case m.actor == w.recActor() && !w.sc.recovererWaits:
		w.feed(m.actor, m.epoch, answer)
	default:
		w.addMessage(message{actor: m.actor, epoch: m.epoch, event: answer})
	}
}

// listening reports whether the sender of a request is still there to
// hear the answer.
func (w *world) listening(actor int, epoch uint32) bool {
	if actor < len(w.coords) {
		s := w.coords[actor]
		return !s.crashed && !s.c.Done()
	}
	return w.rec.r != nil && w.rec.epoch == epoch
}

func (w *world) feed(actor int, epoch uint32, ev Event) {
	if !w.listening(actor, epoch) {
		return
	}
	if actor < len(w.coords) {
		w.stepCoord(actor, ev)
	} else {
		w.stepRecoverer(ev)
	}
}

func (w *world) dropAnswers(actor int) {
	w.net = slices.DeleteFunc(w.net, func(m *message) bool { return !m.request && m.actor == actor })
}

// recoveryTarget is what a recoverer of attempt slot learns from its
// intents or record: the same as the coordinator put in them.
func (w *world) recoveryTarget(slot int) RecoveryTarget {
	c := w.coords[slot/w.sc.cfg.MaxAttempts].c
	return RecoveryTarget{Txn: w.sc.slotTxn(slot), Home: c.home, Participants: c.Participants(), Deadline: w.ghosts[slot].deadline}
}

func (w *world) startRecovery(slot int) {
	target := w.recoveryTarget(slot)
	r, err := NewRecoverer(RecovererConfig{Backoff: time.Nanosecond}, target)
	if err != nil {
		w.fail("recoverer of %s: %v", target.Txn, err)
		return
	}
	w.rec.epoch++
	w.rec.r = r
	w.rec.recovered |= 1 << slot
	w.rec.left--
	w.stepRecoverer(Start{Txn: target.Txn, Now: w.now})
}

// tick moves the clock past the early deadlines: every group's log time
// jumps (as if each applied a command of a proposer whose clock is
// late), and the commands built from now on carry the late time.
func (w *world) tick() {
	w.late, w.now = true, modelLate
	for gi, gs := range w.groups {
		p := gs.p.Clone()
		p.clock = max(p.clock, modelLate)
		w.groups[gi] = w.sc.intern(p)
	}
}

// forgetting is one pass of the garbage collector over an attempt: it
// forgets the vote tombstones of every group past the deadline, and
// then, if no vote is left, the record. Its FORGET commands are taken in
// one step: the garbage collector checks each one's condition just
// before sending it (design §3), and the conditions, once true, stay
// true; so only the pass's place among the other messages matters.
type forgetting struct {
	txn  TxnID
	home int
}

// forgettable lists the attempts a garbage collector's pass would change
// now: a final record with a vote tombstone past its deadline, or with
// no vote left.
func (w *world) forgettable() []forgetting {
	var out []forgetting
	for hi, home := range w.groups {
		for _, t := range sortedTxns(home.p.records) {
			if w.forgetPass(forgetting{t, hi}, false) {
				out = append(out, forgetting{t, hi})
			}
		}
	}
	return out
}

// forgetPass runs (or, with run false, reports whether it would change
// anything) the garbage collector's pass over f: the record must be
// final before any vote goes, and every vote gone, at groups past the
// deadline, before the record goes.
func (w *world) forgetPass(f forgetting, run bool) bool {
	rec, ok := w.groups[f.home].p.records[f.txn]
	if !ok || !rec.state.final() {
		return false
	}
	changed := false
	for _, g := range rec.participants {
		gi := w.groupIndex(g)
		v, voted := w.groups[gi].p.votes[f.txn]
		if voted && v.state != VotePrepared && w.now >= v.deadline {
			changed = true
			if run {
				w.apply(gi, &ForgetVote{Txn: f.txn, Now: w.now}, "")
			}
		}
	}
	for _, g := range rec.participants {
		p := w.groups[w.groupIndex(g)].p
		if _, voted := p.votes[f.txn]; voted || p.clock < rec.deadline {
			return changed
		}
	}
	if run {
		w.apply(f.home, &ForgetRecord{Txn: f.txn, Now: w.now}, "")
	}
	return true
}

// settled reports whether every request has been delivered: what is
// left are answers, which may be delivered or never be (their actor
// crashed).
func (w *world) settled() bool {
	for _, m := range w.net {
		if m.request {
			return false
		}
	}
	return true
}

// crashPending returns the world in which every actor still waiting for
// an answer, or for its retry, crashed instead. An actor with nothing to
// wait for that is not done is stuck: nothing will ever wake it.
func (w *world) crashPending() *world {
	f := w.clone()
	waiting := map[int]bool{}
	for _, m := range f.net {
		waiting[m.actor] = true
	}
	for i, s := range f.coords {
		switch {
		case s.crashed || s.c.Done() && !s.retry:
		case waiting[i] || s.retry:
			s.crashed, s.retry = true, false
			f.coords[i] = s
		default:
			f.fail("coordinator %d is stuck in phase %s with nothing in flight", i, s.c.phase)
		}
	}
	if f.rec.r != nil {
		if !waiting[f.recActor()] {
			f.fail("recoverer of %s is stuck in phase %s with nothing in flight", f.rec.r.target.Txn, f.rec.r.phase)
		}
		f.rec.r, f.rec.hash = nil, [2]uint64{}
	}
	f.net = nil
	return f
}

// checkInvariants checks the invariants of design §8 that hold in every
// state, after updating the ghosts they rely on.
func (w *world) checkInvariants() {
	sc := w.sc
	for _, gs := range w.groups {
		if gs.violation != "" {
			w.fail("%s", gs.violation)
		}
		gbit := uint32(1) << gs.p.group
		for slot := range w.ghosts {
			bit := uint32(1) << slot
			gh := &w.ghosts[slot]
			if gs.yes&bit != 0 {
				gh.prepared |= gbit
			}
			if gs.refused&bit != 0 {
				gh.refused |= gbit
				gh.aborted = true
			}
			if (gs.resolvedCommit|gs.committed)&bit != 0 {
				gh.committed = true
			}
			if (gs.resolvedAbort|gs.aborted)&bit != 0 {
				gh.aborted = true
			}
			if gs.staging&bit != 0 {
				gh.staged = true
			}
		}
	}
	for slot := range w.ghosts {
		gh := &w.ghosts[slot]
		// The commit condition, STAGING at home and every other vote
		// PREPARED, on the ghosts: each held at some time, not necessarily
		// together. That is the same as long as I3 holds: a vote once yes
		// is never REFUSED, so no abort can be decided in between.
		others := sc.others[slot/sc.cfg.MaxAttempts]
		if gh.staged && gh.prepared&others == others {
			gh.committed = true
		}
		if gh.installed != 0 || gh.acked {
			gh.committed = true
		}
		if gh.toldAbort {
			gh.aborted = true
		}
		switch {
		case gh.prepared&gh.refused != 0:
			w.fail("I3: %s was both PREPARED and REFUSED in groups %b", sc.slotTxn(slot), gh.prepared&gh.refused)
		case gh.committed && gh.aborted:
			w.fail("I2/I4: %s has proofs of commit and of abort (%+v)", sc.slotTxn(slot), *gh)
		}
	}
}

// finish runs, from a quiescent world, what must eventually happen: the
// clock passes every early deadline, and the recoverer recovers every
// attempt that left a STAGING record or an intent, with no fault. Then
// nothing may be left (recovery liveness), each attempt's writes are
// installed everywhere or nowhere (I1), and the clients' reports hold
// (I4).
func (w *world) finish() *world {
	f := w.clone()
	if !f.late {
		f.tick()
	}
	f.checkInvariants()
	for steps := 0; f.violation == ""; steps++ {
		if steps > 10_000 {
			f.fail("final recovery does not end")
			break
		}
		if f.rec.r != nil {
			if len(f.net) == 0 {
				f.fail("recoverer of %s is stuck in phase %s", f.rec.r.target.Txn, f.rec.r.phase)
				break
			}
			f.deliver(0, true, true, false)
			f.checkInvariants()
			continue
		}
		slot := -1
		for s := range f.ghosts {
			if f.left(s) {
				slot = s
				break
			}
		}
		if slot < 0 {
			break
		}
		f.rec.left = 1 // the final recovery is not bounded by the budget
		f.startRecovery(slot)
		f.checkInvariants()
	}
	if f.violation != "" {
		return f
	}
	for _, gs := range f.groups {
		for _, k := range slices.Sorted(maps.Keys(gs.p.intents)) {
			f.fail("liveness: group %d still holds %s's lock on %q after recovery", gs.p.group, gs.p.intents[k].txn, k)
		}
		for _, t := range sortedTxns(gs.p.records) {
			if gs.p.records[t].state == RecordStaging {
				f.fail("liveness: group %d still holds %s's STAGING record after recovery", gs.p.group, t)
			}
		}
	}
	sc := f.sc
	for slot, gh := range f.ghosts {
		all := sc.allWrites(slot / sc.cfg.MaxAttempts)
		switch {
		case gh.installed != 0 && gh.installed != all:
			f.fail("I1: %s installed writes %b of %b", sc.slotTxn(slot), gh.installed, all)
		case gh.acked && gh.installed != all:
			f.fail("I4: %s was acked but installed only writes %b", sc.slotTxn(slot), gh.installed)
		}
	}
	for i, s := range f.coords {
		if !s.crashed && s.report == 0 {
			f.fail("coordinator %d finished without reporting", i)
		}
	}
	return f
}

// left reports whether attempt slot has a STAGING record or an intent in
// some group; traced, whether it left anything at all (a vote, a
// record): a reader or a leader's scan can only find those.
func (w *world) left(slot int) bool {
	for _, gs := range w.groups {
		if gs.left&(1<<slot) != 0 {
			return true
		}
	}
	return false
}

func (w *world) traced(slot int) bool {
	for _, gs := range w.groups {
		if gs.traced&(1<<slot) != 0 {
			return true
		}
	}
	return false
}

// hash returns a 128-bit hash of the world's canonical encoding: of
// its parts' hashes, kept with them, and its own few fields. Two states
// with the same hash are taken as the same; with the few million states
// of a run, a collision is out of reach.
func (w *world) hash(buf []byte) ([2]uint64, []byte) {
	b := buf[:0]
	appendHash := func(h [2]uint64) {
		b = binary.LittleEndian.AppendUint64(b, h[0])
		b = binary.LittleEndian.AppendUint64(b, h[1])
	}
	for _, gs := range w.groups {
		appendHash(gs.hash)
	}
	for _, s := range w.coords {
		appendHash(s.hash)
		b = appendBool(b, s.crashed)
		b = appendBool(b, s.retry)
		b = append(b, byte(s.report))
	}
	b = binary.AppendUvarint(b, uint64(w.rec.epoch))
	b = binary.AppendUvarint(b, uint64(w.rec.recovered))
	b = binary.AppendUvarint(b, uint64(max(w.rec.left, 0)))
	b = appendBool(b, w.rec.r != nil)
	appendHash(w.rec.hash)
	b = binary.AppendUvarint(b, uint64(len(w.net)))
	for _, m := range w.net {
		appendHash(m.hash)
	}
	b = appendBool(b, w.late)
	b = append(b, byte(w.ambiguous), byte(w.lost), byte(w.dups), byte(w.faults))
	for _, gh := range w.ghosts {
		b = binary.AppendUvarint(b, uint64(gh.prepared))
		b = binary.AppendUvarint(b, uint64(gh.refused))
		b = binary.AppendUvarint(b, uint64(gh.installed))
		b = appendBool(b, gh.staged)
		b = appendBool(b, gh.committed)
		b = appendBool(b, gh.aborted)
		b = appendBool(b, gh.acked)
		b = appendBool(b, gh.toldAbort)
		b = appendBool(b, gh.started)
		b = binary.AppendUvarint(b, uint64(gh.deadline))
	}
	return hashBytes(b), b
}

func hashBytes(b []byte) [2]uint64 {
	return [2]uint64{maphash.Bytes(hashSeeds[0], b), maphash.Bytes(hashSeeds[1], b)}
}

var hashSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

// String renders the world for a failure report.
func (w *world) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "now %d late %v budgets ambiguous=%d lost=%d dups=%d recoveries=%d\n", w.now, w.late, w.ambiguous, w.lost, w.dups, w.rec.left)
	for _, gs := range w.groups {
		fmt.Fprintf(&sb, "  %s\n", gs.p)
	}
	for i, s := range w.coords {
		c := s.c
		fmt.Fprintf(&sb, "  coordinator %d: %s attempt %d phase %s crashed=%v retry=%v report=%v\n", i, c.txn, c.attempts, c.phase, s.crashed, s.retry, s.report)
	}
	if r := w.rec.r; r != nil {
		fmt.Fprintf(&sb, "  recoverer: %s phase %s outcome %s votes %v\n", r.target.Txn, r.phase, r.outcome, r.votes)
	}
	for _, m := range w.net {
		fmt.Fprintf(&sb, "  in flight: %s\n", describeMessage(m))
	}
	for slot, gh := range w.ghosts {
		fmt.Fprintf(&sb, "  ghost %s: %+v\n", w.sc.slotTxn(slot), gh)
	}
	return sb.String()
}

func describeMessage(m *message) string {
	if m.request {
		return fmt.Sprintf("actor %d -> group %d: %s %s %+v", m.actor, m.to, m.cmd.Kind(), m.cmd.TxnID(), m.cmd)
	}
	return fmt.Sprintf("-> actor %d: %+v", m.actor, m.event)
}

// cloneCoordinator copies c deeply enough that stepping the copy leaves
// c as it was: the parts and the reported versions are never modified
// in place, so they are shared.
func cloneCoordinator(c *Coordinator) *Coordinator {
	n := *c
	n.groups = slices.Clone(c.groups)
	return &n
}

func cloneRecoverer(r *Recoverer) *Recoverer {
	n := *r
	n.votes = slices.Clone(r.votes)
	n.resolved = slices.Clone(r.resolved)
	n.timers = slices.Clone(r.timers)
	n.target.Participants = slices.Clone(r.target.Participants)
	return &n
}

// The canonical encodings of the model's parts, for hashing. Every field
// that can influence what happens next is encoded, with two
// abstractions:
//   - Log indexes. A Busy PREPARE takes a log entry, so an older attempt
//     waiting on a younger one would make a new state at every resend,
//     and the run would not end. Nothing but a condition depends on a
//     version's value, and the model's conditions all expect 0 (absent);
//     so the encoding keeps only the order of a group's versions, not
//     their values, and leaves out the applied index and the Index of a
//     Result. The versions a PREPARED vote reports are kept as zero or
//     not.
//   - Clock readings outside the groups (the Now of events, commands and
//     state machines). Before the clock step they are all early, after
//     it every group's log time is already late: a command's Now changes
//     nothing either way. The groups' log times are encoded.

// appendAbstractParticipant is Participant.AppendState with the log
// indexes abstracted.
func appendAbstractParticipant(b []byte, p *Participant) []byte {
	versions := make([]Version, 0, len(p.data))
	for _, e := range p.data {
		versions = append(versions, e.version)
	}
	slices.Sort(versions)
	versions = slices.Compact(versions)
	rank := func(v Version) uint64 {
		i, _ := slices.BinarySearch(versions, v)
		return uint64(i) + 1
	}
	nonZero := func(v Version) uint64 {
		if v != 0 {
			return 1
		}
		return 0
	}
	return p.appendState(b, stateEncoding{dataVersion: rank, voteVersion: nonZero})
}

func appendCoordinator(b []byte, c *Coordinator) []byte {
	b = binary.AppendUvarint(b, uint64(c.prio))
	b = binary.AppendUvarint(b, uint64(c.attempts))
	b = appendTxnID(b, c.txn)
	b = binary.AppendUvarint(b, uint64(c.deadline))
	b = append(b, byte(c.phase))
	for _, g := range c.groups {
		b = append(b, byte(g.vote), byte(g.busy), byte(g.resolve))
		b = appendBool(b, g.prepareTimer)
		b = appendBool(b, g.resolveTimer)
		b = binary.AppendUvarint(b, uint64(len(g.versions)))
		for _, kv := range g.versions {
			b = appendString(b, kv.Key)
			b = appendBool(b, kv.Version != 0)
		}
	}
	b = appendBool(b, c.finalizeDone)
	b = appendBool(b, c.finalizeTimer)
	b = appendRefusal(b, c.refusal)
	b = appendBool(b, c.retry)
	return appendBool(b, c.reported)
}

func appendRecoverer(b []byte, r *Recoverer) []byte {
	if r == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	b = appendTxnID(b, r.target.Txn)
	b = binary.AppendUvarint(b, uint64(r.target.Home))
	b = appendGroups(b, r.target.Participants)
	b = binary.AppendUvarint(b, uint64(r.target.Deadline))
	b = append(b, byte(r.phase), byte(r.outcome))
	for i := range r.votes {
		b = append(b, byte(r.votes[i]))
		b = appendBool(b, r.resolved[i])
	}
	timers := slices.SortedFunc(slices.Values(r.timers), compareTimers)
	b = binary.AppendUvarint(b, uint64(len(timers)))
	for _, t := range timers {
		b = appendTxnID(b, t.Txn)
		b = append(b, byte(t.Kind))
		b = binary.AppendUvarint(b, uint64(t.Group))
	}
	return b
}

func compareTimers(a, b Timer) int {
	if c := a.Txn.Compare(b.Txn); c != 0 {
		return c
	}
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	return int(a.Group) - int(b.Group)
}

func appendMessage(b []byte, m message) []byte {
	b = appendBool(b, m.request)
	b = binary.AppendUvarint(b, uint64(m.actor))
	b = binary.AppendUvarint(b, uint64(m.epoch))
	if m.request {
		b = binary.AppendUvarint(b, uint64(m.to))
		return appendCommand(b, m.cmd)
	}
	return appendEvent(b, m.event)
}

func appendCommand(b []byte, cmd Command) []byte {
	b = append(b, byte(cmd.Kind()))
	b = appendTxnID(b, cmd.TxnID())
	switch c := cmd.(type) {
	case *Prepare:
		b = binary.AppendUvarint(b, uint64(c.Prio))
		b = binary.AppendUvarint(b, uint64(c.Home))
		b = appendGroups(b, c.Participants)
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = appendOps(b, c.Conditions, c.Writes)
	case *PrepareCommit:
		b = binary.AppendUvarint(b, uint64(c.Prio))
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = appendOps(b, c.Conditions, c.Writes)
	case *Finalize:
		b = append(b, byte(c.Outcome))
		b = binary.AppendUvarint(b, uint64(c.RefusedBy))
		b = binary.AppendUvarint(b, uint64(c.Home))
		b = appendGroups(b, c.Participants)
		b = binary.AppendUvarint(b, uint64(c.Deadline))
	case *Resolve:
		b = append(b, byte(c.Outcome))
		b = binary.AppendUvarint(b, uint64(c.Deadline))
	case *Prevent:
		b = binary.AppendUvarint(b, uint64(c.Deadline))
	}
	return b
}

func appendOps(b []byte, conds []Condition, writes []Write) []byte {
	b = binary.AppendUvarint(b, uint64(len(conds)))
	for _, c := range conds {
		b = appendString(b, c.Key)
		b = binary.AppendUvarint(b, uint64(c.Version))
	}
	b = binary.AppendUvarint(b, uint64(len(writes)))
	for _, w := range writes {
		b = appendString(b, w.Key)
		b = appendBytes(b, w.Value)
		b = appendBool(b, w.Delete)
	}
	return b
}

func appendEvent(b []byte, ev Event) []byte {
	switch e := ev.(type) {
	case Replied:
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(e.From))
		b = append(b, byte(e.Kind))
		b = appendTxnID(b, e.Txn)
		return appendResult(b, e.Result)
	case Failed:
		b = append(b, 2)
		b = binary.AppendUvarint(b, uint64(e.To))
		b = append(b, byte(e.Kind))
		return appendTxnID(b, e.Txn)
	}
	return append(b, 0xff)
}

func appendResult(b []byte, r Result) []byte {
	b = appendBool(b, r.Err != nil)
	if r.Err != nil {
		b = appendString(b, r.Err.Error())
	}
	b = append(b, byte(r.Vote))
	b = appendRefusal(b, r.Refusal)
	b = appendBool(b, r.Busy)
	b = appendHolder(b, r.Holder)
	b = binary.AppendUvarint(b, uint64(len(r.Versions)))
	for _, kv := range r.Versions {
		b = appendString(b, kv.Key)
		b = appendBool(b, kv.Version != 0)
	}
	b = append(b, byte(r.Record))
	return appendBool(b, r.Expired)
}
