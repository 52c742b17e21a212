package txn

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Participant is one group's transactional state, the deterministic core
// of its raft FSM: the data, the intents (write locks), the votes and, at
// a transaction's home, the transaction records. Commands are applied in
// log order with their log index; Apply reads no clock, does no I/O and
// gives equal results and equal states on every replica.
//
// A Participant is not safe for concurrent use: the FSM that wraps it
// serializes Apply, and reads, as raft's FSM does.
type Participant struct {
	group GroupID
	// applied is the index of the last applied command.
	applied uint64
	// clock is the group's log time: the largest Now of the commands
	// applied so far. It only grows, whatever the proposers' clocks do,
	// so a deadline it has reached stays reached; that makes the
	// deadline refusals durable without recording them.
	clock   Timestamp
	data    map[string]dataEntry
	intents map[string]intent
	votes   map[TxnID]vote
	records map[TxnID]record

	// installed, during ApplyObserved only, sees every write installed.
	installed func(Write)
}

// dataEntry is a committed value. value is never modified once stored,
// so clones and reads may share it.
type dataEntry struct {
	value   []byte
	version Version
}

// intent is a transaction's lock on a key, with the key's new value if
// the transaction writes it (a condition-only key is locked without
// one, and its value stays readable).
type intent struct {
	txn          TxnID
	prio         Prio
	write        bool
	delete       bool
	value        []byte
	home         GroupID
	participants []GroupID
	deadline     Timestamp
}

// vote is txnp[t].
type vote struct {
	state VoteState
	// keys are the locked keys of a PREPARED vote, sorted, and versions
	// their versions when locked.
	keys     []string
	versions []Version
	// refusal is why a REFUSED vote refused.
	refusal  Refusal
	deadline Timestamp
}

// record is txnrec[t], at the home only.
type record struct {
	state        RecordState
	participants []GroupID
	prio         Prio
	deadline     Timestamp
}

// NewParticipant returns the empty state of group g.
func NewParticipant(g GroupID) *Participant {
	return &Participant{
		group:   g,
		data:    map[string]dataEntry{},
		intents: map[string]intent{},
		votes:   map[TxnID]vote{},
		records: map[TxnID]record{},
	}
}

// Group is the group whose state p holds.
func (p *Participant) Group() GroupID { return p.group }

// Applied is the index of the last applied command.
func (p *Participant) Applied() uint64 { return p.applied }

// Clock is the group's log time: the largest Now among the applied
// commands.
func (p *Participant) Clock() Timestamp { return p.clock }

// Result is what Apply returns. Which fields are set depends on the
// command; see each.
type Result struct {
	// Index is the command's log index.
	Index uint64
	// Err, if not nil, wraps ErrMalformed, ErrStaleIndex,
	// ErrOutcomeConflict or ErrNotForgettable, and the command changed
	// nothing but the applied index (not even that for ErrStaleIndex) and,
	// for the last two, the log time.
	Err error
	// Vote is the transaction's vote in this group after a PREPARE,
	// PREPARE_COMMIT, PREVENT, RESOLVE or FORGET_VOTE. A refusal for an
	// expired deadline reports VoteRefused with nothing recorded (see
	// RefusedExpired). PREPARE_COMMIT's success is VoteResolvedCommit.
	Vote VoteState
	// Refusal says why, when Vote is VoteRefused.
	Refusal Refusal
	// Busy reports that a PREPARE or PREPARE_COMMIT met the lock of a
	// younger transaction, Holder: the older one waits, and nothing was
	// recorded, so the proposer retries the same command later.
	Busy   bool
	Holder Holder
	// Versions are, for a PREPARED vote (and a PREPARE_COMMIT that
	// committed), the locked keys with the versions they had when
	// locked, in key order.
	Versions []KeyVersion
	// Record is the home's record after a FINALIZE or FORGET_RECORD, and
	// after a PREPARE (or any command answered with a vote) at the home.
	Record RecordState
	// Expired reports that the group's log time has reached the
	// transaction's deadline: where the group holds nothing for the
	// transaction, it never will (a late PREPARE is refused).
	Expired bool
}

// Apply applies cmd, the command at log index index, and returns its
// result. It never panics on its input: an invalid command is refused
// with an error in the Result, since one bad entry would otherwise stop
// every replica of the group at the same place.
//
// Every command is idempotent by transaction: a command applied again
// (a proposer retrying after raft.ErrLeadershipLost, a duplicated
// message) finds what the first one decided and answers the same,
// except that a PREPARE that was Busy may prepare the second time.
func (p *Participant) Apply(index uint64, cmd Command) Result {
	return p.ApplyObserved(index, cmd, nil)
}

// ApplyObserved is Apply, calling installed (if not nil) with each write
// the command installs, in order: a host that keeps a typed view of its
// keys (a volume record decoded) follows the committed writes this way.
func (p *Participant) ApplyObserved(index uint64, cmd Command, installed func(Write)) Result {
	p.installed = installed
	defer func() { p.installed = nil }()
	if index <= p.applied {
		return Result{Index: index, Err: fmt.Errorf("%w: index %d, applied %d", ErrStaleIndex, index, p.applied)}
	}
	p.applied = index
	if isNil(cmd) {
		return Result{Index: index, Err: fmt.Errorf("%w: no command", ErrMalformed)}
	}
	if err := cmd.validate(p.group); err != nil {
		return Result{Index: index, Err: err}
	}
	p.clock = max(p.clock, cmd.now())
	var r Result
	switch c := cmd.(type) {
	case *Prepare:
		r = p.prepare(c)
	case *PrepareCommit:
		r = p.prepareCommit(index, c)
	case *Finalize:
		r = p.finalize(c)
	case *Resolve:
		r = p.resolve(index, c)
	case *Prevent:
		r = p.prevent(c)
	case *ForgetVote:
		r = p.forgetVote(c)
	case *ForgetRecord:
		r = p.forgetRecord(c)
	default:
		r = Result{Err: fmt.Errorf("%w: unknown command %T", ErrMalformed, cmd)}
	}
	r.Index = index
	return r
}

// isNil reports whether cmd is nil or a nil pointer of one of the
// command types.
func isNil(cmd Command) bool {
	switch c := cmd.(type) {
	case nil:
		return true
	case *Prepare:
		return c == nil
	case *PrepareCommit:
		return c == nil
	case *Finalize:
		return c == nil
	case *Resolve:
		return c == nil
	case *Prevent:
		return c == nil
	case *ForgetVote:
		return c == nil
	case *ForgetRecord:
		return c == nil
	}
	return false
}

func (p *Participant) expired(deadline Timestamp) bool { return p.clock >= deadline }

// expiredRefusal answers a PREPARE or PREVENT that finds no vote past the
// deadline. Nothing is recorded: the log time only grows, so the same
// command answers the same forever.
func expiredRefusal() Result {
	return Result{Vote: VoteRefused, Refusal: Refusal{Reason: RefusedExpired}, Expired: true}
}

// voteResult answers a command that finds a vote already recorded.
func (p *Participant) voteResult(t TxnID, v vote) Result {
	r := Result{Vote: v.state, Refusal: v.refusal, Expired: p.expired(v.deadline)}
	if v.state == VotePrepared {
		r.Versions = keyVersions(v.keys, v.versions)
	}
	if rec, ok := p.records[t]; ok {
		r.Record = rec.state
	}
	return r
}

func keyVersions(keys []string, versions []Version) []KeyVersion {
	out := make([]KeyVersion, len(keys))
	for i, k := range keys {
		out[i] = KeyVersion{Key: k, Version: versions[i]}
	}
	return out
}

// lockKeys returns the sorted keys a transaction locks here: its
// conditions' and its writes'.
func lockKeys(conds []Condition, writes []Write) []string {
	keys := make([]string, 0, len(conds)+len(writes))
	for _, c := range conds {
		keys = append(keys, c.Key)
	}
	for _, w := range writes {
		keys = append(keys, w.Key)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// check runs the steps a PREPARE and a PREPARE_COMMIT share once no vote
// is recorded: the deadline, the conditions (a failure is recorded), and
// wait-die on the locks. It returns done=true with the answer if the
// transaction may not lock now.
func (p *Participant) check(t TxnID, prio Prio, deadline Timestamp, conds []Condition, keys []string) (Result, bool) {
	if p.expired(deadline) {
		return expiredRefusal(), true
	}
	// A failed condition is decided on committed versions alone: an
	// intent on the key cannot make it pass later, since a commit gives
	// the key a new, larger version (or, for a delete, version 0, which
	// a condition expecting "absent" would have to wait for: we refuse
	// rather than wait, and the client retries with what it reads).
	for _, c := range conds {
		if actual := p.data[c.Key].version; actual != c.Version {
			ref := Refusal{Reason: RefusedCondition, Condition: c, Actual: actual}
			p.votes[t] = vote{state: VoteRefused, refusal: ref, deadline: deadline}
			return Result{Vote: VoteRefused, Refusal: ref}, true
		}
	}
	// Wait-die: an older transaction waits for younger holders; a
	// younger one meeting any older holder dies, durably, so that the
	// holder's proposer and any recoverer agree it never prepared here.
	var wait *intent
	for _, k := range keys {
		in, ok := p.intents[k]
		if !ok {
			continue
		}
		if olderThan(in.prio, in.txn, prio, t) {
			ref := Refusal{Reason: RefusedConflict, Holder: p.holder(in)}
			p.votes[t] = vote{state: VoteRefused, refusal: ref, deadline: deadline}
			return Result{Vote: VoteRefused, Refusal: ref}, true
		}
		if wait == nil {
			wait = &in
		}
	}
	if wait != nil {
		return Result{Busy: true, Holder: p.holder(*wait)}, true
	}
	return Result{}, false
}

func (p *Participant) holder(in intent) Holder {
	return Holder{
		Txn:          in.txn,
		Prio:         in.prio,
		Home:         in.home,
		Participants: slices.Clone(in.participants),
		Deadline:     in.deadline,
		Expired:      p.expired(in.deadline),
	}
}

func (p *Participant) versionsOf(keys []string) []Version {
	vs := make([]Version, len(keys))
	for i, k := range keys {
		vs[i] = p.data[k].version
	}
	return vs
}

// prepare applies PREPARE.
func (p *Participant) prepare(c *Prepare) Result {
	if v, ok := p.votes[c.Txn]; ok {
		return p.voteResult(c.Txn, v)
	}
	if p.expired(c.Deadline) {
		return expiredRefusal()
	}
	home := c.Home == p.group
	if home {
		// Before the deadline, a record without a vote here can only be
		// an ABORTED tombstone (a vote is forgotten only past the
		// deadline): the transaction was finalized before its PREPARE
		// reached the home. Nothing needs recording: the tombstone stays
		// until the deadline, and past it the deadline refuses.
		if rec, ok := p.records[c.Txn]; ok {
			return Result{Vote: VoteRefused, Refusal: Refusal{Reason: RefusedAborted}, Record: rec.state}
		}
	}
	keys := lockKeys(c.Conditions, c.Writes)
	if r, done := p.check(c.Txn, c.Prio, c.Deadline, c.Conditions, keys); done {
		return r
	}
	participants, _ := sortedUniqueGroups(c.Participants)
	writes := writesByKey(c.Writes)
	for _, k := range keys {
		in := intent{txn: c.Txn, prio: c.Prio, home: c.Home, participants: participants, deadline: c.Deadline}
		if w, ok := writes[k]; ok {
			in.write, in.delete, in.value = true, w.Delete, clone(w.Value)
		}
		p.intents[k] = in
	}
	v := vote{state: VotePrepared, keys: keys, versions: p.versionsOf(keys), deadline: c.Deadline}
	p.votes[c.Txn] = v
	r := Result{Vote: VotePrepared, Versions: keyVersions(v.keys, v.versions)}
	if home {
		p.records[c.Txn] = record{state: RecordStaging, participants: participants, prio: c.Prio, deadline: c.Deadline}
		r.Record = RecordStaging
	}
	return r
}

func writesByKey(ws []Write) map[string]Write {
	m := make(map[string]Write, len(ws))
	for _, w := range ws {
		m[w.Key] = w
	}
	return m
}

// clone copies b, keeping nil nil: a stored value never aliases the
// caller's.
func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// prepareCommit applies PREPARE_COMMIT: the checks of PREPARE, then the
// writes at once, at version index, and a RESOLVED_COMMIT tombstone so
// that a retried PREPARE_COMMIT does not write twice.
func (p *Participant) prepareCommit(index uint64, c *PrepareCommit) Result {
	if v, ok := p.votes[c.Txn]; ok {
		return p.voteResult(c.Txn, v)
	}
	keys := lockKeys(c.Conditions, c.Writes)
	if r, done := p.check(c.Txn, c.Prio, c.Deadline, c.Conditions, keys); done {
		return r
	}
	versions := p.versionsOf(keys)
	for _, w := range c.Writes {
		p.put(w, index)
	}
	p.votes[c.Txn] = vote{state: VoteResolvedCommit, deadline: c.Deadline}
	return Result{Vote: VoteResolvedCommit, Versions: keyVersions(keys, versions)}
}

func (p *Participant) put(w Write, index uint64) {
	if w.Delete {
		delete(p.data, w.Key)
	} else {
		p.data[w.Key] = dataEntry{value: clone(w.Value), version: Version(index)}
	}
	if p.installed != nil {
		p.installed(Write{Key: w.Key, Value: clone(w.Value), Delete: w.Delete})
	}
}

// Write is the host's own write of a key outside any transaction, as the
// command at log index index of the group's log (which carries the
// host's commands beside the txn commands): the key's version becomes
// index. A key under any transaction's lock is refused with ErrLocked
// and nothing changes, since the transaction checked or will install
// the key's version. An index at or below Applied is refused with
// ErrStaleIndex.
func (p *Participant) Write(index uint64, w Write) error {
	if index <= p.applied {
		return fmt.Errorf("%w: index %d, applied %d", ErrStaleIndex, index, p.applied)
	}
	switch {
	case w.Key == "":
		return fmt.Errorf("%w: host write without a key", ErrMalformed)
	case w.Delete && len(w.Value) != 0:
		return fmt.Errorf("%w: host delete of %q with a value", ErrMalformed, w.Key)
	}
	if in, ok := p.intents[w.Key]; ok {
		return fmt.Errorf("%w: %q by %s", ErrLocked, w.Key, in.txn)
	}
	p.applied = index
	p.put(w, index)
	return nil
}

// finalize applies FINALIZE at the home.
func (p *Participant) finalize(c *Finalize) Result {
	rec, ok := p.records[c.Txn]
	r := Result{Expired: p.expired(c.Deadline)}
	switch {
	case ok && rec.state.final():
		// Never overwritten: a late or duplicated FINALIZE learns the
		// decision.
	case ok && c.Outcome == Commit:
		rec.state = RecordCommitted
	case ok && c.RefusedBy != 0:
		rec.state = RecordAborted
	case ok:
		// STAGING, and the caller holds no refusal: whether the
		// transaction committed depends on the other votes, which the
		// caller must PREVENT first.
	case c.Outcome == Commit:
		// No STAGING record: the home never prepared, so the transaction
		// cannot have committed; or it was forgotten after it finished.
		// Either way there is nothing to commit.
	case r.Expired:
		// No record, and none can be created any more (a late home
		// PREPARE is refused for its deadline): nothing to record.
	default:
		// No record yet: the ABORTED tombstone makes a late home PREPARE
		// refuse.
		participants, _ := sortedUniqueGroups(c.Participants)
		rec = record{state: RecordAborted, participants: participants, deadline: c.Deadline}
		ok = true
	}
	if ok {
		p.records[c.Txn] = rec
		r.Record = rec.state
	}
	return r
}

// resolve applies RESOLVE.
func (p *Participant) resolve(index uint64, c *Resolve) Result {
	v, ok := p.votes[c.Txn]
	if !ok {
		switch {
		case p.expired(c.Deadline):
			// Never prepared here and never will be, or forgotten after it
			// was resolved: nothing to do and nothing to keep.
			return Result{Vote: VoteNone, Expired: true}
		case c.Outcome == Commit:
			return Result{Err: fmt.Errorf("%w: commit of %s, which never prepared in group %d", ErrOutcomeConflict, c.Txn, p.group)}
		default:
			// The abort overtook the PREPARE: the tombstone makes the late
			// PREPARE find the transaction aborted.
			p.votes[c.Txn] = vote{state: VoteResolvedAbort, deadline: c.Deadline}
			return Result{Vote: VoteResolvedAbort}
		}
	}
	switch {
	case v.state == VotePrepared && c.Outcome == Commit:
		for _, k := range v.keys {
			in, ok := p.intents[k]
			if !ok || in.txn != c.Txn {
				continue // cannot happen: a PREPARED vote holds its locks
			}
			if in.write {
				p.put(Write{Key: k, Value: in.value, Delete: in.delete}, index)
			}
			delete(p.intents, k)
		}
		p.votes[c.Txn] = vote{state: VoteResolvedCommit, deadline: v.deadline}
	case v.state == VotePrepared:
		p.dropIntents(c.Txn, v.keys)
		p.votes[c.Txn] = vote{state: VoteResolvedAbort, deadline: v.deadline}
	case c.Outcome == Commit && v.state != VoteResolvedCommit,
		c.Outcome == Abort && v.state == VoteResolvedCommit:
		return Result{Vote: v.state, Refusal: v.refusal, Err: fmt.Errorf("%w: %s of %s in group %d, whose vote is %s", ErrOutcomeConflict, c.Outcome, c.Txn, p.group, v.state)}
	}
	// Resolved now, or already (a duplicate), or an abort of a REFUSED
	// vote, which keeps the refusal as its tombstone.
	return p.voteResult(c.Txn, p.votes[c.Txn])
}

func (p *Participant) dropIntents(t TxnID, keys []string) {
	for _, k := range keys {
		if in, ok := p.intents[k]; ok && in.txn == t {
			delete(p.intents, k)
		}
	}
}

// prevent applies PREVENT.
func (p *Participant) prevent(c *Prevent) Result {
	if v, ok := p.votes[c.Txn]; ok {
		return p.voteResult(c.Txn, v)
	}
	if p.expired(c.Deadline) {
		// As for a PREPARE: refused for good without a record.
		return expiredRefusal()
	}
	ref := Refusal{Reason: RefusedPrevented}
	p.votes[c.Txn] = vote{state: VoteRefused, refusal: ref, deadline: c.Deadline}
	return Result{Vote: VoteRefused, Refusal: ref}
}

// forgetVote applies FORGET_VOTE.
func (p *Participant) forgetVote(c *ForgetVote) Result {
	v, ok := p.votes[c.Txn]
	switch {
	case !ok:
		return Result{Vote: VoteNone} // nothing to forget
	case v.state == VotePrepared:
		return Result{Vote: v.state, Err: fmt.Errorf("%w: %s still holds its locks in group %d", ErrNotForgettable, c.Txn, p.group)}
	case p.records[c.Txn].state == RecordStaging:
		// The caller should have seen the record final first; at the home
		// it can be checked here.
		return Result{Vote: v.state, Err: fmt.Errorf("%w: %s's record is still staging in group %d", ErrNotForgettable, c.Txn, p.group)}
	case !p.expired(v.deadline):
		return Result{Vote: v.state, Err: fmt.Errorf("%w: %s's deadline not reached in group %d", ErrNotForgettable, c.Txn, p.group)}
	}
	delete(p.votes, c.Txn)
	return Result{Vote: VoteNone, Expired: true}
}

// forgetRecord applies FORGET_RECORD.
func (p *Participant) forgetRecord(c *ForgetRecord) Result {
	rec, ok := p.records[c.Txn]
	switch {
	case !ok:
		return Result{Record: RecordNone} // nothing to forget
	case !rec.state.final():
		return Result{Record: rec.state, Err: fmt.Errorf("%w: %s's record is %s", ErrNotForgettable, c.Txn, rec.state)}
	case !p.expired(rec.deadline):
		return Result{Record: rec.state, Err: fmt.Errorf("%w: %s's deadline not reached at its home", ErrNotForgettable, c.Txn)}
	}
	if _, voted := p.votes[c.Txn]; voted {
		return Result{Record: rec.state, Err: fmt.Errorf("%w: the home still holds %s's vote", ErrNotForgettable, c.Txn)}
	}
	delete(p.records, c.Txn)
	return Result{Record: RecordNone, Expired: true}
}

// ReadResult is what a read of a key finds.
type ReadResult struct {
	// Value and Version are the committed value; Found is false if the
	// key is absent. They are empty when Intent is set.
	Value   []byte
	Version Version
	Found   bool
	// Intent, if set, is the transaction whose write intent is on the
	// key. The committed value is not reported: the transaction may have
	// committed already (implicitly, in the other groups), and returning
	// the old value would break linearizability. The reader waits a
	// little (intents live about one round after the commit) and then
	// runs Recover on it.
	Intent *Holder
}

// Read is a linearizable read of key, once the caller made sure it runs
// on the leader with every committed entry applied (Barrier once per
// term, then VerifyLeader after the read). A condition-only lock does
// not hide the value: its holder does not write the key.
func (p *Participant) Read(key string) ReadResult {
	if in, ok := p.intents[key]; ok && in.write {
		h := p.holder(in)
		return ReadResult{Intent: &h}
	}
	e, ok := p.data[key]
	if !ok {
		return ReadResult{}
	}
	return ReadResult{Value: clone(e.value), Version: e.version, Found: true}
}

// RecordInfo is the home's record of a transaction, as ReadRecord reads
// it.
type RecordInfo struct {
	State        RecordState
	Participants []GroupID
	Prio         Prio
	Deadline     Timestamp
}

// ReadRecord reads t's record at this group (the recoverer's
// linearizable read at the home; the caller linearizes as for Read).
func (p *Participant) ReadRecord(t TxnID) RecordInfo {
	rec, ok := p.records[t]
	if !ok {
		return RecordInfo{}
	}
	return RecordInfo{State: rec.state, Participants: slices.Clone(rec.participants), Prio: rec.prio, Deadline: rec.deadline}
}

// RecordEntry is one of the home's records.
type RecordEntry struct {
	Txn TxnID
	RecordInfo
}

// Records lists the records this group keeps as a home, in TxnID order:
// the home's leader recovers the STAGING ones on taking office, and the
// garbage collector forgets the final ones.
func (p *Participant) Records() []RecordEntry {
	out := make([]RecordEntry, 0, len(p.records))
	for _, t := range sortedTxns(p.records) {
		out = append(out, RecordEntry{Txn: t, RecordInfo: p.ReadRecord(t)})
	}
	return out
}

// Holders lists, in TxnID order, the transactions holding locks here.
// One whose deadline has passed has a proposer late or gone: a recovery
// finishes it even if no reader or writer ever meets its locks. (Its
// Expired field tells the group's log time, which stands still while
// the group is idle; a node's clock tells it sooner.)
func (p *Participant) Holders() []Holder {
	seen := map[TxnID]Holder{}
	for _, in := range p.intents {
		if _, ok := seen[in.txn]; !ok {
			seen[in.txn] = p.holder(in)
		}
	}
	out := make([]Holder, 0, len(seen))
	for _, t := range sortedTxns(seen) {
		out = append(out, seen[t])
	}
	return out
}

// Vote reads t's vote in this group.
func (p *Participant) Vote(t TxnID) VoteState { return p.votes[t].state }

// Clone returns a deep copy of p, sharing only the immutable values.
func (p *Participant) Clone() *Participant {
	q := *p
	q.data = maps.Clone(p.data)
	q.intents = maps.Clone(p.intents)
	q.votes = maps.Clone(p.votes)
	q.records = maps.Clone(p.records)
	return &q
}

// AppendState appends a canonical encoding of p's state to b: equal
// states encode equally, whatever the order of the maps. Replicas at the
// same applied index must produce the same bytes (I7); the tests also
// hash it to tell states apart.
func (p *Participant) AppendState(b []byte) []byte {
	identity := func(v Version) uint64 { return uint64(v) }
	return p.appendState(b, stateEncoding{applied: true, dataVersion: identity, voteVersion: identity})
}

// stateEncoding says how appendState writes the log indexes in a state:
// AppendState keeps them, the exhaustive test's state hash abstracts them.
type stateEncoding struct {
	applied     bool                 // write the applied index
	dataVersion func(Version) uint64 // a key's version
	voteVersion func(Version) uint64 // a version a PREPARED vote reports
}

func (p *Participant) appendState(b []byte, enc stateEncoding) []byte {
	b = binary.AppendUvarint(b, uint64(p.group))
	if enc.applied {
		b = binary.AppendUvarint(b, p.applied)
	}
	b = binary.AppendUvarint(b, uint64(p.clock))
	b = binary.AppendUvarint(b, uint64(len(p.data)))
	for _, k := range slices.Sorted(maps.Keys(p.data)) {
		e := p.data[k]
		b = appendString(b, k)
		b = appendBytes(b, e.value)
		b = binary.AppendUvarint(b, enc.dataVersion(e.version))
	}
	b = binary.AppendUvarint(b, uint64(len(p.intents)))
	for _, k := range slices.Sorted(maps.Keys(p.intents)) {
		in := p.intents[k]
		b = appendString(b, k)
		b = appendTxnID(b, in.txn)
		b = binary.AppendUvarint(b, uint64(in.prio))
		b = appendBool(b, in.write)
		b = appendBool(b, in.delete)
		b = appendBytes(b, in.value)
		b = binary.AppendUvarint(b, uint64(in.home))
		b = appendGroups(b, in.participants)
		b = binary.AppendUvarint(b, uint64(in.deadline))
	}
	b = binary.AppendUvarint(b, uint64(len(p.votes)))
	for _, t := range sortedTxns(p.votes) {
		v := p.votes[t]
		b = appendTxnID(b, t)
		b = append(b, byte(v.state))
		b = binary.AppendUvarint(b, uint64(len(v.keys)))
		for i, k := range v.keys {
			b = appendString(b, k)
			b = binary.AppendUvarint(b, enc.voteVersion(v.versions[i]))
		}
		b = appendRefusal(b, v.refusal)
		b = binary.AppendUvarint(b, uint64(v.deadline))
	}
	b = binary.AppendUvarint(b, uint64(len(p.records)))
	for _, t := range sortedTxns(p.records) {
		rec := p.records[t]
		b = appendTxnID(b, t)
		b = append(b, byte(rec.state))
		b = appendGroups(b, rec.participants)
		b = binary.AppendUvarint(b, uint64(rec.prio))
		b = binary.AppendUvarint(b, uint64(rec.deadline))
	}
	return b
}

func sortedTxns[V any](m map[TxnID]V) []TxnID {
	return slices.SortedFunc(maps.Keys(m), TxnID.Compare)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendBytes tells nil from empty, as the state does.
func appendBytes(b, p []byte) []byte {
	if p == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(p))+1)
	return append(b, p...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendTxnID(b []byte, t TxnID) []byte {
	b = binary.AppendUvarint(b, t.HLC)
	b = binary.AppendUvarint(b, uint64(t.Node))
	return binary.AppendUvarint(b, uint64(t.Counter))
}

func appendGroups(b []byte, gs []GroupID) []byte {
	b = binary.AppendUvarint(b, uint64(len(gs)))
	for _, g := range gs {
		b = binary.AppendUvarint(b, uint64(g))
	}
	return b
}

func appendHolder(b []byte, h Holder) []byte {
	b = appendTxnID(b, h.Txn)
	b = binary.AppendUvarint(b, uint64(h.Prio))
	b = binary.AppendUvarint(b, uint64(h.Home))
	b = appendGroups(b, h.Participants)
	b = binary.AppendUvarint(b, uint64(h.Deadline))
	return appendBool(b, h.Expired)
}

func appendRefusal(b []byte, r Refusal) []byte {
	b = append(b, byte(r.Reason))
	b = appendString(b, r.Condition.Key)
	b = binary.AppendUvarint(b, uint64(r.Condition.Version))
	b = binary.AppendUvarint(b, uint64(r.Actual))
	return appendHolder(b, r.Holder)
}

// String renders p's state for test failures, in key and id order.
func (p *Participant) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "group %d applied %d clock %d:", p.group, p.applied, p.clock)
	for _, k := range slices.Sorted(maps.Keys(p.data)) {
		fmt.Fprintf(&sb, " %s=%q@%d", k, p.data[k].value, p.data[k].version)
	}
	for _, k := range slices.Sorted(maps.Keys(p.intents)) {
		in := p.intents[k]
		fmt.Fprintf(&sb, " intent(%s:%s", k, in.txn)
		if in.write {
			fmt.Fprintf(&sb, "=%q", in.value)
		}
		sb.WriteString(")")
	}
	for _, t := range sortedTxns(p.votes) {
		fmt.Fprintf(&sb, " vote(%s:%s)", t, p.votes[t].state)
	}
	for _, t := range sortedTxns(p.records) {
		fmt.Fprintf(&sb, " record(%s:%s)", t, p.records[t].state)
	}
	return sb.String()
}
