package txn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// More transactions for the codec tests, named for what codecSequence
// does with them: younger than the participant tests' (tOld, tYoung,
// tThird), but tWaiting, the oldest of all.
var (
	tWaiting     = TxnID{HLC: 5, Node: 9, Counter: 1}
	tPrevented   = TxnID{HLC: 40, Node: 4, Counter: 1}
	tConflicted  = TxnID{HLC: 50, Node: 5, Counter: 1}
	tConditioned = TxnID{HLC: 60, Node: 6, Counter: 1}
	tTombstoned  = TxnID{HLC: 70, Node: 7, Counter: 1}
	tCommitted   = TxnID{HLC: 80, Node: 8, Counter: 1}
	tAbortedLone = TxnID{HLC: 90, Node: 9, Counter: 1}
	tDeleting    = TxnID{HLC: 100, Node: 1, Counter: 2}
)

// tMax has every field of a TxnID at its largest.
var tMax = TxnID{HLC: math.MaxUint64, Node: math.MaxUint32, Counter: math.MaxUint32}

type namedCommand struct {
	name string
	cmd  Command
}

// codecCommands are hand-built commands of every kind, with nil and
// empty slices and values, the largest numbers, and what Apply would
// refuse (the codec does not judge).
func codecCommands() []namedCommand {
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000) // a length of three varint bytes
	return []namedCommand{
		{"prepare", &Prepare{Txn: tOld, Prio: 10, Home: 2, Participants: []GroupID{1, 2, 3}, Deadline: 1000, Now: 7,
			Conditions: []Condition{{Key: "a", Version: 0}, {Key: "b", Version: 17}},
			Writes:     []Write{{Key: "x", Value: []byte("v")}, {Key: "y", Value: []byte{}}, {Key: "z"}, {Key: "d", Delete: true}}}},
		{"prepare_zero", &Prepare{}},
		{"prepare_empty_lists", &Prepare{Txn: tYoung, Participants: []GroupID{}, Conditions: []Condition{}, Writes: []Write{}}},
		{"prepare_max", &Prepare{Txn: tMax, Prio: math.MaxUint64, Home: math.MaxUint64, Participants: []GroupID{math.MaxUint64},
			Deadline: math.MaxUint64, Now: math.MaxUint64, Conditions: []Condition{{Key: "k\x00\xff", Version: math.MaxUint64}},
			Writes: []Write{{Key: "big", Value: big}}}},
		{"prepare_malformed", &Prepare{Txn: tOld, Participants: []GroupID{0, 2, 2}, Writes: []Write{{Key: "", Value: []byte("x"), Delete: true}, {Key: ""}}}},
		{"prepare_commit", &PrepareCommit{Txn: tThird, Prio: 5, Deadline: 1000, Now: 3,
			Conditions: []Condition{{Key: "a", Version: 3}}, Writes: []Write{{Key: "a", Value: []byte("new")}, {Key: "b", Delete: true, Value: []byte{}}}}},
		{"prepare_commit_zero", &PrepareCommit{}},
		{"finalize_commit", &Finalize{Txn: tOld, Outcome: Commit, Home: 1, Participants: []GroupID{1, 2}, Deadline: 1000, Now: 9}},
		{"finalize_abort", &Finalize{Txn: tOld, Outcome: Abort, RefusedBy: 2, Home: 1, Participants: []GroupID{1, 2}, Deadline: 1000, Now: 9}},
		{"finalize_bad_outcome", &Finalize{Txn: tOld, Outcome: 200, Participants: []GroupID{}}},
		{"finalize_zero", &Finalize{}},
		{"resolve_commit", &Resolve{Txn: tOld, Outcome: Commit, Deadline: 1000, Now: 11}},
		{"resolve_abort", &Resolve{Txn: tMax, Outcome: Abort, Deadline: math.MaxUint64, Now: math.MaxUint64}},
		{"prevent", &Prevent{Txn: tYoung, Deadline: 1000, Now: 12}},
		{"forget_vote", &ForgetVote{Txn: tOld, Now: 2000}},
		{"forget_record", &ForgetRecord{Txn: tOld, Now: 2000}},
		{"forget_record_zero", &ForgetRecord{}},
	}
}

func TestCodecCommandRoundTrip(t *testing.T) {
	for _, tc := range codecCommands() {
		t.Run(tc.name, func(t *testing.T) {
			b, err := MarshalCommand(tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			work := bytes.Clone(b)
			got, err := UnmarshalCommand(work)
			if err != nil {
				t.Fatalf("UnmarshalCommand: %v", err)
			}
			// The command owns its memory.
			for i := range work {
				work[i] ^= 0x5a
			}
			if !reflect.DeepEqual(got, tc.cmd) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, tc.cmd)
			}
			again, err := MarshalCommand(got)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("encoding the decoded command: %x, %v; want %x", again, err, b)
			}
		})
	}
}

// embeddingCommand is a Command of a type MarshalCommand does not know.
type embeddingCommand struct{ *Prepare }

func TestCodecMarshalCommandRefuses(t *testing.T) {
	for _, cmd := range []Command{nil, (*Prepare)(nil), (*ForgetRecord)(nil), embeddingCommand{}, embeddingCommand{&Prepare{Txn: tOld}}} {
		if b, err := MarshalCommand(cmd); !errors.Is(err, ErrMalformed) {
			t.Errorf("MarshalCommand(%#v) = %x, %v; want ErrMalformed", cmd, b, err)
		}
	}
}

type namedResult struct {
	name string
	r    Result
}

func codecHolder() Holder {
	return Holder{Txn: tOld, Prio: 10, Home: 2, Participants: []GroupID{1, 2}, Deadline: 1000, Expired: true}
}

// codecResults are hand-built Results: every field, every kind of error.
func codecResults() []namedResult {
	return []namedResult{
		{"zero", Result{}},
		{"prepared", Result{Index: 300, Vote: VotePrepared, Versions: []KeyVersion{{"a", 0}, {"b", 299}}, Record: RecordStaging}},
		{"refused_condition", Result{Index: 4, Vote: VoteRefused, Refusal: Refusal{Reason: RefusedCondition, Condition: Condition{Key: "a", Version: 0}, Actual: 1}}},
		{"refused_conflict", Result{Index: 5, Vote: VoteRefused, Refusal: Refusal{Reason: RefusedConflict, Holder: codecHolder()}}},
		{"refused_expired", Result{Index: 6, Vote: VoteRefused, Refusal: Refusal{Reason: RefusedExpired}, Expired: true}},
		{"busy", Result{Index: 7, Busy: true, Holder: codecHolder()}},
		{"empty_lists", Result{Versions: []KeyVersion{}, Holder: Holder{Participants: []GroupID{}}, Refusal: Refusal{Holder: Holder{Participants: []GroupID{}}}}},
		{"undefined_enums", Result{Vote: 250, Record: 251, Refusal: Refusal{Reason: 252}}},
		{"max", Result{Index: math.MaxUint64, Vote: VoteResolvedCommit, Versions: []KeyVersion{{"k", math.MaxUint64}}, Record: RecordCommitted,
			Holder: Holder{Txn: tMax, Prio: math.MaxUint64, Home: math.MaxUint64, Participants: []GroupID{math.MaxUint64}, Deadline: math.MaxUint64}}},
		{"err_malformed", Result{Index: 8, Err: fmt.Errorf("%w: PREPARE without a transaction id", ErrMalformed)}},
		{"err_stale", Result{Index: 3, Err: fmt.Errorf("%w: index 3, applied 5", ErrStaleIndex)}},
		{"err_conflict", Result{Index: 9, Vote: VoteRefused, Refusal: Refusal{Reason: RefusedPrevented}, Err: fmt.Errorf("%w: commit of t1.1.1", ErrOutcomeConflict)}},
		{"err_not_forgettable", Result{Index: 10, Vote: VotePrepared, Err: fmt.Errorf("%w: still locked", ErrNotForgettable)}},
		{"err_sentinel", Result{Index: 11, Err: ErrNotForgettable}},
		{"err_other", Result{Index: 12, Err: errors.New("txn: something else")}},
		{"err_empty_message", Result{Index: 13, Err: errors.New("")}},
		{"err_sentinel_text_only", Result{Index: 14, Err: errors.New(ErrMalformed.Error())}},
		{"err_two_sentinels", Result{Index: 15, Err: errors.Join(ErrNotForgettable, ErrMalformed)}},
	}
}

// checkResultRoundTrip checks that r survives MarshalResult and
// UnmarshalResult: the same fields, an error with the same message that
// wraps the first package error r's wraps (and no other), and the same
// bytes again.
func checkResultRoundTrip(t *testing.T, r Result) {
	t.Helper()
	b := MarshalResult(r)
	got, err := UnmarshalResult(bytes.Clone(b))
	if err != nil {
		t.Fatalf("UnmarshalResult of %+v: %v", r, err)
	}
	if again := MarshalResult(got); !bytes.Equal(again, b) {
		t.Fatalf("result %+v encodes as %x after a round trip, %x before", r, again, b)
	}
	switch {
	case (got.Err == nil) != (r.Err == nil):
		t.Fatalf("error %v after a round trip, %v before", got.Err, r.Err)
	case r.Err != nil:
		if got.Err.Error() != r.Err.Error() {
			t.Fatalf("error %q after a round trip, %q before", got.Err, r.Err)
		}
		first := true
		for _, sentinel := range resultErrors[1:] {
			want := first && errors.Is(r.Err, sentinel)
			if want {
				first = false
			}
			if errors.Is(got.Err, sentinel) != want {
				t.Fatalf("error %q: errors.Is(%v) = %v after a round trip, want %v", got.Err, sentinel, !want, want)
			}
		}
		if slices.Contains(resultErrors, r.Err) && got.Err != r.Err {
			t.Fatalf("error %v is not the package's own after a round trip", got.Err)
		}
	}
	got.Err, r.Err = nil, nil
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip:\n got %#v\nwant %#v", got, r)
	}
}

func TestCodecResultRoundTrip(t *testing.T) {
	for _, tc := range codecResults() {
		t.Run(tc.name, func(t *testing.T) { checkResultRoundTrip(t, tc.r) })
	}
	// And what Apply answers: every step of the codec sequence.
	_, results := codecSequenceStates(t)
	for _, r := range results {
		checkResultRoundTrip(t, r)
	}
	p := codecParticipant(t)
	checkResultRoundTrip(t, p.Apply(1, prevent(tOld)))
}

func codecRecordInfos() map[string]RecordInfo {
	return map[string]RecordInfo{
		"zero":       {},
		"staging":    {State: RecordStaging, Participants: []GroupID{1, 2, 3}, Prio: 10, Deadline: 1000},
		"empty_list": {State: RecordAborted, Participants: []GroupID{}},
		"max":        {State: 255, Participants: []GroupID{math.MaxUint64}, Prio: math.MaxUint64, Deadline: math.MaxUint64},
	}
}

func codecReadResults() map[string]ReadResult {
	h := codecHolder()
	return map[string]ReadResult{
		"absent":        {},
		"found":         {Value: []byte("value"), Version: 12, Found: true},
		"found_nil":     {Version: 3, Found: true},
		"found_empty":   {Value: []byte{}, Version: math.MaxUint64, Found: true},
		"intent":        {Intent: &h},
		"intent_zero":   {Intent: &Holder{}},
		"all_the_above": {Value: []byte{0}, Version: 1, Found: true, Intent: &Holder{Participants: []GroupID{}}},
	}
}

func TestCodecRecordInfoRoundTrip(t *testing.T) {
	p := codecParticipant(t)
	infos := codecRecordInfos()
	infos["read"] = p.ReadRecord(tOld)
	for name, ri := range infos {
		b := MarshalRecordInfo(ri)
		got, err := UnmarshalRecordInfo(bytes.Clone(b))
		if err != nil || !reflect.DeepEqual(got, ri) {
			t.Errorf("%s: round trip of %+v: %+v, %v", name, ri, got, err)
		}
	}
}

func TestCodecReadResultRoundTrip(t *testing.T) {
	p := codecParticipant(t)
	reads := codecReadResults()
	for _, k := range []string{"a", "b", "e", "n", "zz"} {
		reads["read_"+k] = p.Read(k)
	}
	for name, rr := range reads {
		b := MarshalReadResult(rr)
		got, err := UnmarshalReadResult(bytes.Clone(b))
		if err != nil || !reflect.DeepEqual(got, rr) {
			t.Errorf("%s: round trip of %+v: %+v, %v", name, rr, got, err)
		}
	}
}

func TestCodecTxnID(t *testing.T) {
	ids := []TxnID{{}, tWaiting, tOld, tYoung, tThird, tMax, {HLC: 1}, {Node: 1}, {Counter: 1}, {HLC: 1 << 32, Node: 1 << 31, Counter: 255}}
	for _, a := range ids {
		b := MarshalTxnID(a)
		if got, err := UnmarshalTxnID(b); err != nil || got != a || len(b) != 16 {
			t.Errorf("round trip of %s: %s, %v (%d bytes)", a, got, err, len(b))
		}
		for _, c := range ids {
			if got, want := bytes.Compare(b, MarshalTxnID(c)), a.Compare(c); got != want {
				t.Errorf("encodings of %s and %s compare %d, the ids %d", a, c, got, want)
			}
		}
	}
	for _, n := range []int{0, 15, 17} {
		if _, err := UnmarshalTxnID(make([]byte, n)); err == nil {
			t.Errorf("UnmarshalTxnID of %d bytes did not fail", n)
		}
	}
}

// codecSequence is a group-1 log that leaves a bit of everything in the
// state: data with a value, an empty one and a nil one; write, delete and
// condition intents; votes in every state, with refusals of each reason
// a vote records; records in every state; a log time; and answers with
// each error.
func codecSequence() []Command {
	return []Command{
		&PrepareCommit{Txn: tThird, Prio: prio(tThird), Deadline: deadline,
			Writes: []Write{{Key: "a", Value: []byte("v")}, {Key: "e", Value: []byte{}}, {Key: "n"}}},
		prepare(tOld, 1, "a=1", "b=x c="),                                            // prepared, staging record
		prepare(tYoung, 2, "", "d=y"),                                                // prepared elsewhere
		prepare(tWaiting, 2, "", "d=w"),                                              // busy
		prevent(tPrevented),                                                          // refused (prevented)
		prepare(tConflicted, 2, "", "b=z"),                                           // refused (conflict)
		prepareCommit(tConditioned, "a=0", "f=1"),                                    // refused (condition)
		finalize(tTombstoned, Abort, 0),                                              // aborted tombstone
		at(20, prepare(tCommitted, 1, "", "g=1")),                                    // prepared, staging record
		finalize(tCommitted, Commit, 0),                                              // committed record
		resolve(tCommitted, Commit),                                                  // resolved-commit vote, g written
		resolve(tAbortedLone, Abort),                                                 // resolved-abort tombstone
		&Prepare{Txn: tConditioned, Prio: 1, Home: 2, Participants: []GroupID{2, 3}}, // malformed
		resolve(tPrevented, Commit),                                                  // outcome conflict
		&ForgetVote{Txn: tOld},                                                       // not forgettable
		at(500, &Prepare{Txn: tDeleting, Prio: 3, Home: 2, Participants: []GroupID{1, 2, 3},
			Deadline: 1500, Writes: []Write{{Key: "h", Delete: true, Value: []byte{}}, {Key: "i", Delete: true}}}), // delete intents
		resolve(tYoung, Abort),                        // intents dropped
		at(1200, &ForgetVote{Txn: tAbortedLone}),      // forgotten
		&ForgetRecord{Txn: tTombstoned},               // forgotten
		prevent(TxnID{HLC: 200, Node: 2, Counter: 1}), // refused (expired)
	}
}

// codecSequenceStates applies codecSequence to a new group 1 and returns
// the participant after each step (the first is the empty one) and the
// results.
func codecSequenceStates(t testing.TB) ([]*Participant, []Result) {
	t.Helper()
	p := NewParticipant(1)
	states := []*Participant{p.Clone()}
	var results []Result
	for i, cmd := range codecSequence() {
		results = append(results, p.Apply(uint64(i+1), cmd))
		states = append(states, p.Clone())
	}
	return states, results
}

// codecParticipant is a group 1 that holds a bit of everything: the
// state of codecSequence before the log time passes the deadlines.
func codecParticipant(t testing.TB) *Participant {
	t.Helper()
	states, _ := codecSequenceStates(t)
	return states[16]
}

func TestCodecSequenceCoversTheState(t *testing.T) {
	states, results := codecSequenceStates(t)
	p := codecParticipant(t)
	want := `group 1 applied 16 clock 500: a="v"@1 e=""@1 g="1"@11 n=""@1 ` +
		`intent(a:t10.1.1) intent(b:t10.1.1="x") intent(c:t10.1.1="") intent(d:t20.2.1="y") intent(h:t100.1.2="") intent(i:t100.1.2="") ` +
		`vote(t10.1.1:prepared) vote(t20.2.1:prepared) vote(t30.3.1:resolved-commit) vote(t40.4.1:refused) vote(t50.5.1:refused) vote(t60.6.1:refused) vote(t80.8.1:resolved-commit) vote(t90.9.1:resolved-abort) vote(t100.1.2:prepared) ` +
		`record(t10.1.1:staging) record(t70.7.1:aborted) record(t80.8.1:committed)`
	if got := p.String(); got != want {
		t.Errorf("codecParticipant:\n got %s\nwant %s", got, want)
	}
	if v := p.data["n"].value; v != nil {
		t.Errorf("n has value %q, want nil", v)
	}
	if v := p.intents["h"].value; v == nil {
		t.Error("h's intent has a nil value, want an empty one")
	}
	var got []string
	for _, r := range results {
		got = append(got, describe(r))
	}
	wantResults := []string{
		"resolved-commit a@0,e@0,n@0", "prepared a@1,b@0,c@0 record staging", "prepared d@0", "busy t20.2.1",
		"refused (prevented by recovery)", "refused (conflict with t10.1.1)", "refused (condition a=0, is 1)", "record aborted",
		"prepared g@0 record staging", "record committed", "resolved-commit record committed", "resolved-abort",
		"malformed", "conflict refused (prevented by recovery)", "not-forgettable prepared", "prepared h@0,i@0",
		"resolved-abort", "expired", "expired", "refused (past deadline) expired",
	}
	if !slices.Equal(got, wantResults) {
		t.Errorf("results:\n got %q\nwant %q", got, wantResults)
	}
	if last := states[len(states)-1]; len(last.records) != 2 || last.Vote(tAbortedLone) != VoteNone {
		t.Errorf("final state %s: want tTombstoned's record and tAbortedLone's vote forgotten", last)
	}
}

// checkRestore checks that p survives MarshalState and RestoreParticipant
// exactly, and returns the restored participant.
func checkRestore(t testing.TB, p *Participant) *Participant {
	t.Helper()
	b := p.MarshalState()
	q, err := RestoreParticipant(bytes.Clone(b))
	if err != nil {
		t.Fatalf("RestoreParticipant of %s: %v", p, err)
	}
	if got := q.MarshalState(); !bytes.Equal(got, b) {
		t.Fatalf("restored state encodes as\n%x, not\n%x", got, b)
	}
	if !bytes.Equal(q.AppendState(nil), p.AppendState(nil)) {
		t.Fatalf("restored state %s, want %s", q, p)
	}
	if !reflect.DeepEqual(q, p) {
		t.Fatalf("restored participant differs from the original:\n got %#v\nwant %#v", q, p)
	}
	return q
}

// TestRestoreParticipantSequence restores the state after each step of
// codecSequence, and applies the rest of the log to both the restored
// and the original: equal results, equal states.
func TestRestoreParticipantSequence(t *testing.T) {
	states, _ := codecSequenceStates(t)
	cmds := codecSequence()
	for i, s := range states {
		q := checkRestore(t, s)
		p := s.Clone()
		for j := i; j < len(cmds); j++ {
			rp, rq := p.Apply(uint64(j+1), cmds[j]), q.Apply(uint64(j+1), cmds[j])
			if !bytes.Equal(MarshalResult(rp), MarshalResult(rq)) {
				t.Fatalf("restored after step %d, step %d answers %q, the original %q", i, j+1, describe(rq), describe(rp))
			}
		}
		if !bytes.Equal(p.MarshalState(), q.MarshalState()) {
			t.Fatalf("restored after step %d, the log leaves %s, the original %s", i, q, p)
		}
	}
	// A restored participant refuses the indexes it applied.
	q := checkRestore(t, states[5])
	if r := q.Apply(5, resolve(tOld, Commit)); !errors.Is(r.Err, ErrStaleIndex) {
		t.Errorf("restored at 5, Apply(5): %v, want ErrStaleIndex", r.Err)
	}
}

// randomCommand returns a command over a few keys, transactions and
// groups, valid or not, that often meets what p holds.
func randomCommand(rng *rand.Rand, p *Participant) Command {
	txns := []TxnID{tWaiting, tOld, tYoung, tThird, tPrevented, tConflicted}
	tx := txns[rng.IntN(len(txns))]
	keys := []string{"a", "b", "c", "d"}
	groupSets := [][]GroupID{{1, 2}, {1, 2, 3}, {1, 3}, {3, 1}}
	if rng.IntN(10) == 0 {
		groupSets = [][]GroupID{{2, 3}, {1}, {1, 1, 2}, nil} // malformed here
	}
	parts := groupSets[rng.IntN(len(groupSets))]
	home := GroupID(1 + rng.IntN(3))
	if len(parts) > 0 && rng.IntN(10) != 0 {
		home = parts[rng.IntN(len(parts))]
	}
	deadlines := []Timestamp{100, 300, deadline}
	dl := deadlines[rng.IntN(len(deadlines))]
	now := Timestamp(rng.IntN(int(p.clock) + 60))
	pr := Prio(tx.HLC)
	if rng.IntN(8) == 0 {
		pr = Prio(rng.IntN(100))
	}
	conds := func() []Condition {
		var cs []Condition
		for _, k := range keys {
			if rng.IntN(5) == 0 {
				v := p.data[k].version
				if rng.IntN(4) == 0 {
					v = Version(rng.IntN(3))
				}
				cs = append(cs, Condition{Key: k, Version: v})
			}
		}
		return cs
	}
	writes := func() []Write {
		var ws []Write
		for _, k := range keys {
			if rng.IntN(3) == 0 {
				switch rng.IntN(4) {
				case 0:
					ws = append(ws, Write{Key: k, Delete: true})
				case 1:
					ws = append(ws, Write{Key: k})
				case 2:
					ws = append(ws, Write{Key: k, Value: []byte{}})
				default:
					ws = append(ws, Write{Key: k, Value: []byte(fmt.Sprint(rng.IntN(100)))})
				}
			}
		}
		if rng.IntN(20) == 0 {
			ws = append(ws, Write{Key: "a", Value: []byte("again")}) // a key twice: malformed
		}
		return ws
	}
	outcome := Outcome(1 + rng.IntN(2))
	switch rng.IntN(16) {
	case 0, 1, 2, 3, 4:
		return &Prepare{Txn: tx, Prio: pr, Home: home, Participants: parts, Deadline: dl, Now: now, Conditions: conds(), Writes: writes()}
	case 5, 6:
		return &PrepareCommit{Txn: tx, Prio: pr, Deadline: dl, Now: now, Conditions: conds(), Writes: writes()}
	case 7, 8:
		var by GroupID
		if outcome == Abort && rng.IntN(2) == 0 {
			by = 2
		}
		return &Finalize{Txn: tx, Outcome: outcome, RefusedBy: by, Home: home, Participants: parts, Deadline: dl, Now: now}
	case 9, 10, 11:
		return &Resolve{Txn: tx, Outcome: outcome, Deadline: dl, Now: now}
	case 12:
		return &Prevent{Txn: tx, Deadline: dl, Now: now}
	case 13:
		return &ForgetVote{Txn: tx, Now: now + Timestamp(rng.IntN(400))}
	case 14:
		return &ForgetRecord{Txn: tx, Now: now + Timestamp(rng.IntN(400))}
	default:
		return &Resolve{Txn: TxnID{}, Outcome: outcome} // malformed
	}
}

// TestRestoreParticipantRandomLogs applies random logs, and before each
// command restores the state and applies the command to the restored
// participant too: every state Apply reaches restores, exactly, and
// behaves as the original.
func TestRestoreParticipantRandomLogs(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		p := NewParticipant(1)
		for i := range 60 {
			cmd := randomCommand(rng, p)
			q := checkRestore(t, p)
			rp, rq := p.Apply(uint64(i+1), cmd), q.Apply(uint64(i+1), cmd)
			if !bytes.Equal(MarshalResult(rp), MarshalResult(rq)) {
				t.Fatalf("seed %d step %d: the restored answers %q, the original %q", seed, i+1, describe(rq), describe(rp))
			}
			checkResultRoundTrip(t, rp)
			b, err := MarshalCommand(cmd)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := UnmarshalCommand(b); err != nil || !reflect.DeepEqual(got, cmd) {
				t.Fatalf("seed %d step %d: round trip of %#v: %#v, %v", seed, i+1, cmd, got, err)
			}
		}
		checkRestore(t, p)
	}
}

// TestRestoreReachableStates restores every group state the exhaustive
// test's model reaches in two of its scenarios (the ones with recovery,
// and with the clock and garbage collection), and round-trips every
// result the groups answered there.
func TestRestoreReachableStates(t *testing.T) {
	if testing.Short() || deepRun() {
		t.Skip("explores the model's states (the small bounds only)")
	}
	for _, sc := range scenarios() {
		if sc.name != "2x2/recovery" && sc.name != "2x2/clock+gc" {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			if err := newExplorer(sc).run(); err != nil {
				t.Fatal(err)
			}
			for _, gs := range sc.groupStates {
				checkRestore(t, gs.p)
			}
			for _, out := range sc.applies {
				checkResultRoundTrip(t, out.result)
			}
			t.Logf("%d group states, %d applies", len(sc.groupStates), len(sc.applies))
		})
	}
}

// codecEncodings are valid encodings of every decoder's input, by
// decoder name.
func codecEncodings(t testing.TB) map[string][][]byte {
	out := map[string][][]byte{}
	for _, c := range codecCommands() {
		b, err := MarshalCommand(c.cmd)
		if err != nil {
			t.Fatal(err)
		}
		out["command"] = append(out["command"], b)
	}
	for _, r := range codecResults() {
		out["result"] = append(out["result"], MarshalResult(r.r))
	}
	for _, ri := range codecRecordInfos() {
		out["record"] = append(out["record"], MarshalRecordInfo(ri))
	}
	for _, rr := range codecReadResults() {
		out["read"] = append(out["read"], MarshalReadResult(rr))
	}
	states, _ := codecSequenceStates(t)
	for _, p := range states {
		out["state"] = append(out["state"], p.MarshalState())
	}
	return out
}

// codecDecoders decode with each decoder, by name.
var codecDecoders = map[string]func([]byte) error{
	"command": func(b []byte) error { _, err := UnmarshalCommand(b); return err },
	"result":  func(b []byte) error { _, err := UnmarshalResult(b); return err },
	"record":  func(b []byte) error { _, err := UnmarshalRecordInfo(b); return err },
	"read":    func(b []byte) error { _, err := UnmarshalReadResult(b); return err },
	"state":   func(b []byte) error { _, err := RestoreParticipant(b); return err },
}

// TestCodecRejectsDamage cuts every encoding at every byte (the big
// value's at a sample of them), adds a byte at its end and changes its
// format version: every decoder refuses all of it with an error (and the
// command decoder with ErrMalformed).
func TestCodecRejectsDamage(t *testing.T) {
	for name, encs := range codecEncodings(t) {
		decode := codecDecoders[name]
		check := func(what string, b []byte) {
			t.Helper()
			err := decode(b)
			if err == nil {
				t.Fatalf("%s: %s %x decoded", name, what, b)
			}
			if name == "command" && !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: %s: %v does not wrap ErrMalformed", name, what, err)
			}
		}
		for _, b := range encs {
			if err := decode(b); err != nil {
				t.Fatalf("%s: %x: %v", name, b, err)
			}
			for i := range b {
				// Every cut of the small encodings; of the big value's, the
				// ones near its ends and a sample between.
				if len(b) < 4096 || i < 512 || i > len(b)-512 || i%509 == 0 {
					check(fmt.Sprintf("cut to %d bytes of %d:", i, len(b)), b[:i:i])
				}
			}
			check("with a trailing byte:", append(bytes.Clone(b), 0))
			for _, v := range []byte{0, 2, 255} {
				c := bytes.Clone(b)
				c[0] = v
				check(fmt.Sprintf("format version %d:", v), c)
			}
		}
	}
}

// varints appends varints.
func varints(b []byte, vs ...uint64) []byte {
	for _, v := range vs {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

// resultUpToBusy and resultUpToVersions are the start of an encoded
// Result: index 1, no error, a zero vote and refusal; then busy false
// and a zero holder.
func resultUpToBusy() []byte {
	b := varints([]byte{resultFormat}, 1, 0, 0)
	return append(b, make([]byte, 4+8)...)
}

func resultUpToVersions() []byte {
	return append(resultUpToBusy(), make([]byte, 1+8)...)
}

// TestCodecRejectsMalformed decodes hand-made encodings that are wrong
// in one field each: each decoder refuses them, for that field.
func TestCodecRejectsMalformed(t *testing.T) {
	const huge = math.MaxUint64
	cmd := func(kind CommandKind) []byte { return varints([]byte{commandFormat, byte(kind)}, 1, 1, 1) }
	write := func(keyLen uint64) []byte { return varints(cmd(KindPrepareCommit), 1, 1, 1, 0, 2, keyLen) } // prio, deadline, now, nil conditions, a write
	state := func(vs ...uint64) []byte { return varints(varints([]byte{stateFormat}, 1, 5, 0), vs...) }   // group 1, applied 5, clock 0
	for _, tc := range []struct {
		name, decoder string
		b             []byte
		want          string
	}{
		{"empty", "command", nil, "format version needs 1 bytes"},
		{"no kind", "command", []byte{commandFormat}, "command kind needs 1 bytes"},
		{"kind 0", "command", cmd(0), "unknown command kind 0"},
		{"kind READ_RECORD", "command", varints(cmd(KindReadRecord), 0), "unknown command kind 8"},
		{"kind 255", "command", varints(cmd(255), 0), "unknown command kind 255"},
		{"varint longer than needed", "command", append(cmd(KindForgetVote), 0x80, 0x00), "now: varint longer than needed"},
		{"varint over 64 bits", "command", append(cmd(KindForgetVote), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02), "now: varint overflows"},
		{"varint cut short", "command", append(cmd(KindForgetVote), 0xff), "now: varint cut short"},
		{"node over 32 bits", "command", varints([]byte{commandFormat, byte(KindForgetVote)}, 1, 1<<32, 1, 0), "node: 4294967296 overflows 32 bits"},
		{"counter over 32 bits", "command", varints([]byte{commandFormat, byte(KindForgetVote)}, 1, 1, math.MaxUint32+1, 0), "counter: 4294967296 overflows"},
		{"huge participant count", "command", varints(cmd(KindPrepare), 1, 1, huge), "participants count 18446744073709551614: cannot fit"},
		{"participant count one past the bytes", "command", varints(cmd(KindPrepare), 1, 1, 4, 1, 2), "participants count 3: cannot fit in 2 bytes"},
		{"huge condition count", "command", varints(cmd(KindPrepareCommit), 1, 1, 1, huge), "condition count"},
		{"huge write count", "command", varints(cmd(KindPrepareCommit), 1, 1, 1, 0, huge), "write count"},
		{"huge key length", "command", write(huge), "write 0: write key needs 18446744073709551615 bytes"},
		{"huge value length", "command", varints(append(write(1), 'k'), huge), "write 0: write value needs"},
		{"value one past the bytes", "command", append(varints(append(write(1), 'k'), 4), 'v', 0), "write value needs 3 bytes, 2 left"},
		{"delete bool 2", "command", append(varints(append(write(1), 'k'), 0), 2), "write delete: bool byte 2"},
		{"trailing byte", "command", varints(cmd(KindForgetVote), 0, 0), "1 trailing bytes"},
		{"unknown error code", "result", varints([]byte{resultFormat}, 1, 6, 0), "unknown error code 6"},
		{"huge error message", "result", varints([]byte{resultFormat}, 1, 1, huge), "error message needs"},
		{"busy bool 2", "result", append(resultUpToBusy(), 2), "busy: bool byte 2"},
		{"huge version count", "result", varints(resultUpToVersions(), huge), "version count"},
		{"holder participants past the bytes", "result", append(resultUpToBusy(), 0, 1, 1, 1, 1, 1, 9), "holder participants count 8: cannot fit"},
		{"huge participant count", "record", varints([]byte{recordInfoFormat}, 1, huge), "participants count"},
		{"intent bool 2", "read", varints([]byte{readResultFormat}, 0, 0, 0, 2), "intent: bool byte 2"},
		{"huge value length", "read", varints([]byte{readResultFormat}, huge), "value needs"},
		{"no group", "state", []byte{stateFormat}, "group: varint cut short"},
		{"huge data count", "state", state(huge), "data count"},
		{"huge data key length", "state", state(1, huge), "data entry 0: data key needs"},
		{"huge intent count", "state", state(0, huge), "intent count"},
		{"huge vote count", "state", state(0, 0, huge), "vote count"},
		{"huge vote key count", "state", append(state(0, 0, 1, 1, 1, 1, uint64(VotePrepared), huge), make([]byte, 20)...), "vote key count"},
		{"huge record count", "state", state(0, 0, 0, huge), "record count"},
		{"huge record participant count", "state", state(0, 0, 0, 1, 1, 1, 1, uint64(RecordAborted), huge), "record participants count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := codecDecoders[tc.decoder](tc.b)
			switch {
			case err == nil:
				t.Errorf("%s %x decoded", tc.decoder, tc.b)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("%s %x: %v, want an error about %q", tc.decoder, tc.b, err, tc.want)
			case tc.decoder == "command" && !errors.Is(err, ErrMalformed):
				t.Errorf("%v does not wrap ErrMalformed", err)
			}
		})
	}
}

// TestCodecBoundedAllocation decodes counts that fit in the bytes left
// but are followed by garbage: the decoders fail without allocating
// much more than their input.
func TestCodecBoundedAllocation(t *testing.T) {
	garbage := bytes.Repeat([]byte{0xff}, 1<<20)
	n := uint64(len(garbage) / minWriteSize)
	for name, b := range map[string][]byte{
		"writes":  append(varints([]byte{commandFormat, byte(KindPrepareCommit)}, 1, 1, 1, 1, 1, 1, 0, n+1), garbage...),
		"data":    append(varints([]byte{stateFormat}, 1, 5, 0, uint64(len(garbage)/minDataEntrySize)), garbage...),
		"groups":  append(varints([]byte{recordInfoFormat}, 1, uint64(len(garbage))+1), garbage...),
		"version": append(varints(resultUpToVersions(), uint64(len(garbage)/minKeyVersionSize)+1), garbage...),
	} {
		decoder := map[string]string{"writes": "command", "data": "state", "groups": "record", "version": "result"}[name]
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		err := codecDecoders[decoder](b)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("%s: garbage decoded", name)
		}
		if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 1<<20 {
			t.Errorf("%s: decoding %d bytes allocated %d: %v", name, len(b), allocated, err)
		}
	}
}

// rawState is a Participant's state as lists in encoding order, for the
// tests to break in ways a Participant's maps cannot hold.
type rawState struct {
	group   GroupID
	applied uint64
	clock   Timestamp
	data    []rawData
	intents []rawIntent
	votes   []rawVote
	records []rawRecord
}

type rawData struct {
	key string
	e   dataEntry
}

type rawIntent struct {
	key string
	in  intent
}

type rawVote struct {
	txn TxnID
	v   vote
}

type rawRecord struct {
	txn TxnID
	rec record
}

func rawOf(p *Participant) *rawState {
	s := &rawState{group: p.group, applied: p.applied, clock: p.clock}
	for _, k := range slices.Sorted(maps.Keys(p.data)) {
		s.data = append(s.data, rawData{k, p.data[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(p.intents)) {
		s.intents = append(s.intents, rawIntent{k, p.intents[k]})
	}
	for _, t := range sortedTxns(p.votes) {
		s.votes = append(s.votes, rawVote{t, p.votes[t]})
	}
	for _, t := range sortedTxns(p.records) {
		s.records = append(s.records, rawRecord{t, p.records[t]})
	}
	return s
}

// encode is MarshalState of the lists as they are.
func (s *rawState) encode() []byte {
	b := varints([]byte{stateFormat}, uint64(s.group), s.applied, uint64(s.clock), uint64(len(s.data)))
	for _, d := range s.data {
		b = appendString(b, d.key)
		b = appendBytes(b, d.e.value)
		b = varints(b, uint64(d.e.version))
	}
	b = varints(b, uint64(len(s.intents)))
	for _, i := range s.intents {
		b = appendString(b, i.key)
		b = appendTxnID(b, i.in.txn)
		b = varints(b, uint64(i.in.prio))
		b = appendBool(b, i.in.write)
		b = appendBool(b, i.in.delete)
		b = appendBytes(b, i.in.value)
		b = varints(b, uint64(i.in.home))
		b = appendGroups(b, i.in.participants)
		b = varints(b, uint64(i.in.deadline))
	}
	b = varints(b, uint64(len(s.votes)))
	for _, v := range s.votes {
		b = appendTxnID(b, v.txn)
		b = append(b, byte(v.v.state))
		b = varints(b, uint64(len(v.v.keys)))
		for j, k := range v.v.keys {
			b = appendString(b, k)
			b = varints(b, uint64(v.v.versions[j]))
		}
		b = appendRefusal(b, v.v.refusal)
		b = varints(b, uint64(v.v.deadline))
	}
	b = varints(b, uint64(len(s.records)))
	for _, r := range s.records {
		b = appendTxnID(b, r.txn)
		b = append(b, byte(r.rec.state))
		b = appendGroups(b, r.rec.participants)
		b = varints(b, uint64(r.rec.prio))
		b = varints(b, uint64(r.rec.deadline))
	}
	return b
}

func (s *rawState) dataOf(k string) *dataEntry {
	for i := range s.data {
		if s.data[i].key == k {
			return &s.data[i].e
		}
	}
	panic("no data entry " + k)
}

func (s *rawState) intentOn(k string) *intent {
	for i := range s.intents {
		if s.intents[i].key == k {
			return &s.intents[i].in
		}
	}
	panic("no intent on " + k)
}

func (s *rawState) voteOf(t TxnID) *vote {
	for i := range s.votes {
		if s.votes[i].txn == t {
			return &s.votes[i].v
		}
	}
	panic("no vote of " + t.String())
}

func (s *rawState) recordOf(t TxnID) *record {
	for i := range s.records {
		if s.records[i].txn == t {
			return &s.records[i].rec
		}
	}
	panic("no record of " + t.String())
}

// codecBrokenStates are codecParticipant's state broken in one way
// each, by name, with what RestoreParticipant must say about it.
func codecBrokenStates() []struct {
	name  string
	brk   func(s *rawState)
	error string
} {
	return []struct {
		name  string
		brk   func(s *rawState)
		error string
	}{
		{"data out of order", func(s *rawState) { s.data[0], s.data[1] = s.data[1], s.data[0] }, `data entry 1: key "a" not after "e"`},
		{"data key twice", func(s *rawState) { s.data[1] = s.data[0] }, `data entry 1: key "a" not after "a"`},
		{"data key empty", func(s *rawState) { s.data[0].key = "" }, "data entry 0: empty key"},
		{"data version 0", func(s *rawState) { s.dataOf("g").version = 0 }, `key "g" has version 0`},
		{"data version past the applied index", func(s *rawState) { s.dataOf("g").version = 17 }, `key "g" has version 17, applied 16`},
		{"intents out of order", func(s *rawState) { s.intents[0], s.intents[1] = s.intents[1], s.intents[0] }, `intent 1: key "a" not after "b"`},
		{"intent key twice", func(s *rawState) { s.intents[1].key = "a" }, `intent 1: key "a" not after "a"`},
		{"intent key empty", func(s *rawState) { s.intents[0].key = "" }, "intent 0: empty key"},
		{"intent of no transaction", func(s *rawState) { s.intentOn("d").txn = TxnID{} }, `intent on "d": zero transaction id`},
		{"condition lock with a value", func(s *rawState) { s.intentOn("a").value = []byte{} }, `intent on "a": a condition lock with a delete or a value`},
		{"condition lock deleting", func(s *rawState) { s.intentOn("a").delete = true }, `intent on "a": a condition lock`},
		{"delete intent with a value", func(s *rawState) { s.intentOn("c").value = []byte("x") }, `intent on "c": a delete with a value`},
		{"intent participants unsorted", func(s *rawState) { s.intentOn("b").participants = []GroupID{2, 1} }, "not sorted, distinct and nonzero"},
		{"intent participants repeated", func(s *rawState) { s.intentOn("b").participants = []GroupID{1, 1, 2} }, "not sorted, distinct and nonzero"},
		{"intent participants with 0", func(s *rawState) { s.intentOn("b").participants = []GroupID{0, 1, 2} }, "not sorted, distinct and nonzero"},
		{"intent participants without the group", func(s *rawState) { s.intentOn("d").participants = []GroupID{2, 3} }, "without group 1"},
		{"intent of one group", func(s *rawState) { s.intentOn("b").participants = []GroupID{1} }, "fewer than 2"},
		{"intent home not a participant", func(s *rawState) { s.intentOn("d").home = 3 }, "home 3 is not among the participants"},
		{"intent without a vote", func(s *rawState) { s.votes = slices.Delete(s.votes, 1, 2) }, `intent on "d": t20.2.1's vote is none, not prepared`},
		{"intent of a resolved vote", func(s *rawState) {
			*s.voteOf(tYoung) = vote{state: VoteResolvedAbort, deadline: deadline}
		}, `intent on "d": t20.2.1's vote is resolved-abort, not prepared`},
		{"intent on a key its vote does not list", func(s *rawState) {
			in := *s.intentOn("d")
			s.intents = slices.Insert(s.intents, 4, rawIntent{"dd", in})
		}, `intent on "dd": t20.2.1's vote does not list the key`},
		{"intent of another deadline than its vote", func(s *rawState) { s.voteOf(tYoung).deadline = 999 }, `intent on "d": deadline 1000, t20.2.1's vote has 999`},
		{"intents of a transaction disagree", func(s *rawState) { s.intentOn("c").prio = 11 }, `intent on "c": t10.1.1's intents disagree`},
		{"home intent without its record", func(s *rawState) { s.records = s.records[1:] }, `intent on "a": t10.1.1's home is this group, which has no record`},
		{"home intent with another record", func(s *rawState) { s.recordOf(tOld).deadline = 999 }, `t10.1.1's home is this group, which has no record of it as it prepared`},
		{"prepared key without its intent", func(s *rawState) { s.intents = s.intents[:len(s.intents)-1] }, `vote of t100.1.2: no intent of it on "i"`},
		{"prepared key with a stale version", func(s *rawState) { s.voteOf(tOld).versions[0] = 0 }, `vote of t10.1.1: "a" at version 0, the data has 1`},
		{"votes out of order", func(s *rawState) { s.votes[0], s.votes[1] = s.votes[1], s.votes[0] }, "vote 1: t10.1.1 not after t20.2.1"},
		{"vote twice", func(s *rawState) { s.votes[2] = s.votes[1] }, "vote 2: t20.2.1 not after t20.2.1"},
		{"vote of no transaction", func(s *rawState) { s.votes[0].txn = TxnID{} }, "vote 0: zero transaction id"},
		{"vote state none", func(s *rawState) { s.voteOf(tAbortedLone).state = VoteNone }, "vote of t90.9.1: state 0"},
		{"vote state undefined", func(s *rawState) { s.voteOf(tAbortedLone).state = 5 }, "vote of t90.9.1: state 5"},
		{"prepared vote without keys", func(s *rawState) { *s.voteOf(tAbortedLone) = vote{state: VotePrepared} }, "vote of t90.9.1: prepared with 0 keys"},
		{"resolved vote with keys", func(s *rawState) {
			v := s.voteOf(tThird)
			v.keys, v.versions = []string{"z"}, []Version{0}
		}, "vote of t30.3.1: resolved-commit with 1 keys"},
		{"vote keys unsorted", func(s *rawState) { v := s.voteOf(tOld); v.keys[0], v.keys[1] = v.keys[1], v.keys[0] }, `vote 0: key "a" not after "b"`},
		{"vote key empty", func(s *rawState) { s.voteOf(tOld).keys[0] = "" }, "vote 0: key 0 is empty"},
		{"refused vote without a reason", func(s *rawState) { s.voteOf(tPrevented).refusal = Refusal{} }, "vote of t40.4.1: refused with refusal reason 0"},
		{"resolved vote with a refusal", func(s *rawState) { s.voteOf(tAbortedLone).refusal = Refusal{Reason: RefusedPrevented} }, "vote of t90.9.1: resolved-abort with refusal reason 3"},
		{"recorded expiry refusal", func(s *rawState) { s.voteOf(tPrevented).refusal.Reason = RefusedExpired }, "vote of t40.4.1: recorded refusal reason 5"},
		{"undefined refusal reason", func(s *rawState) { s.voteOf(tPrevented).refusal.Reason = 9 }, "vote of t40.4.1: recorded refusal reason 9"},
		{"prevention with a condition", func(s *rawState) { s.voteOf(tPrevented).refusal.Actual = 1 }, "carries a condition"},
		{"failed condition with a holder", func(s *rawState) { s.voteOf(tConditioned).refusal.Holder = codecHolder() }, "carries a holder"},
		{"record state none", func(s *rawState) { s.recordOf(tTombstoned).state = RecordNone }, "record of t70.7.1: state 0"},
		{"record state undefined", func(s *rawState) { s.recordOf(tTombstoned).state = 4 }, "record of t70.7.1: state 4"},
		{"records out of order", func(s *rawState) { s.records[1], s.records[2] = s.records[2], s.records[1] }, "record 2: t70.7.1 not after t80.8.1"},
		{"record of no transaction", func(s *rawState) { s.records[0].txn = TxnID{} }, "record 0: zero transaction id"},
		{"record without the group", func(s *rawState) { s.recordOf(tTombstoned).participants = []GroupID{2} }, "record of t70.7.1: participants [2]: without group 1"},
		{"record without participants", func(s *rawState) { s.recordOf(tTombstoned).participants = nil }, "fewer than 1"},
		{"staging record without a vote", func(s *rawState) { s.recordOf(tTombstoned).state = RecordStaging }, "record of t70.7.1: staging, and the vote here is none"},
		{"staging record of a refusal", func(s *rawState) {
			s.records = slices.Insert(s.records, 1, rawRecord{tPrevented, record{state: RecordStaging, participants: []GroupID{1, 2}, deadline: deadline}})
		}, "record of t40.4.1: staging, and the vote here is refused"},
	}
}

// TestRestoreRejects breaks codecParticipant's state in each way a
// Participant cannot reach, and checks that RestoreParticipant refuses
// it, saying why.
func TestRestoreRejects(t *testing.T) {
	p := codecParticipant(t)
	if got, want := rawOf(p).encode(), p.MarshalState(); !bytes.Equal(got, want) {
		t.Fatalf("rawState encodes\n%x, MarshalState\n%x", got, want)
	}
	for _, tc := range codecBrokenStates() {
		t.Run(tc.name, func(t *testing.T) {
			s := rawOf(codecParticipant(t))
			tc.brk(s)
			_, err := RestoreParticipant(s.encode())
			switch {
			case err == nil:
				t.Errorf("restored")
			case !strings.Contains(err.Error(), tc.error):
				t.Errorf("%v, want an error about %q", err, tc.error)
			}
		})
	}
}

// FuzzUnmarshalCommand checks that UnmarshalCommand refuses what it does
// not accept with ErrMalformed and without panicking, that what it
// accepts is the one encoding of its command, and that applying the
// command to a participant answers a Result that round-trips and leaves
// a state that restores.
func FuzzUnmarshalCommand(f *testing.F) {
	for _, c := range codecCommands() {
		b, err := MarshalCommand(c.cmd)
		if err != nil {
			f.Fatal(err)
		}
		if len(b) < 1<<10 { // the big value would slow the fuzzer down
			f.Add(b)
		}
	}
	states, _ := codecSequenceStates(f)
	bases := []*Participant{states[16], states[len(states)-1]}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fuzzer's input must not change: decode a copy.
		work := bytes.Clone(data)
		cmd, err := UnmarshalCommand(work)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("decode error %v does not wrap ErrMalformed", err)
			}
			return
		}
		for i := range work {
			work[i] ^= 0x5a // the command owns its memory
		}
		enc, err := MarshalCommand(cmd)
		if err != nil {
			t.Fatalf("decoded command does not encode: %v", err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("decoded command encodes as %x, not as its input %x", enc, data)
		}
		for _, base := range bases {
			p := base.Clone()
			checkResultRoundTrip(t, p.Apply(p.Applied()+1, cmd))
			checkRestore(t, p)
		}
	})
}

// FuzzUnmarshalResult checks that UnmarshalResult never panics and that
// what it accepts is the one encoding of its Result.
func FuzzUnmarshalResult(f *testing.F) {
	for _, r := range codecResults() {
		f.Add(MarshalResult(r.r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		work := bytes.Clone(data)
		r, err := UnmarshalResult(work)
		if err != nil {
			return
		}
		for i := range work {
			work[i] ^= 0x5a
		}
		if enc := MarshalResult(r); !bytes.Equal(enc, data) {
			t.Fatalf("decoded result encodes as %x, not as its input %x", enc, data)
		}
	})
}

// FuzzUnmarshalReads checks the same of the answers of Read and
// ReadRecord, and of TxnIDs.
func FuzzUnmarshalReads(f *testing.F) {
	for _, ri := range codecRecordInfos() {
		f.Add(MarshalRecordInfo(ri))
	}
	for _, rr := range codecReadResults() {
		f.Add(MarshalReadResult(rr))
	}
	f.Add(MarshalTxnID(tOld))
	f.Fuzz(func(t *testing.T, data []byte) {
		work := bytes.Clone(data)
		ri, riErr := UnmarshalRecordInfo(work)
		rr, rrErr := UnmarshalReadResult(work)
		id, idErr := UnmarshalTxnID(work)
		for i := range work {
			work[i] ^= 0x5a
		}
		if enc := MarshalRecordInfo(ri); riErr == nil && !bytes.Equal(enc, data) {
			t.Fatalf("decoded record encodes as %x, not as its input %x", enc, data)
		}
		if enc := MarshalReadResult(rr); rrErr == nil && !bytes.Equal(enc, data) {
			t.Fatalf("decoded read result encodes as %x, not as its input %x", enc, data)
		}
		if enc := MarshalTxnID(id); idErr == nil && !bytes.Equal(enc, data) {
			t.Fatalf("decoded id encodes as %x, not as its input %x", enc, data)
		}
	})
}

// FuzzRestoreParticipant checks that RestoreParticipant never panics,
// that what it accepts is the one encoding of its state, and that the
// states it accepts are closed under Apply: commands about what the
// state holds leave states that restore too. (A state it accepts that
// Apply takes to one it refuses would be one it should have refused, or
// a check too many.)
func FuzzRestoreParticipant(f *testing.F) {
	states, _ := codecSequenceStates(f)
	for _, p := range states {
		f.Add(p.MarshalState())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		work := bytes.Clone(data)
		p, err := RestoreParticipant(work)
		if err != nil {
			return
		}
		for i := range work {
			work[i] ^= 0x5a
		}
		if enc := p.MarshalState(); !bytes.Equal(enc, data) {
			t.Fatalf("restored state encodes as %x, not as its input %x", enc, data)
		}
		for _, cmd := range commandsAbout(p) {
			q := p.Clone()
			checkResultRoundTrip(t, q.Apply(q.Applied()+1, cmd))
			checkRestore(t, q)
		}
	})
}

// commandsAbout returns commands of every kind about a few of the
// transactions and keys p holds.
func commandsAbout(p *Participant) []Command {
	txns := slices.Concat(sortedTxns(p.votes), sortedTxns(p.records), []TxnID{{HLC: 1, Node: 1, Counter: 1}, tMax})
	keys := slices.Concat(slices.Sorted(maps.Keys(p.intents)), slices.Sorted(maps.Keys(p.data)))
	keys = keys[:min(len(keys), 3)]
	var ws []Write
	var cs []Condition
	for i, k := range keys {
		if i%2 == 0 {
			ws = append(ws, Write{Key: k, Value: []byte("w")})
		} else {
			cs = append(cs, Condition{Key: k, Version: p.data[k].version})
		}
	}
	if len(ws)+len(cs) == 0 {
		ws = []Write{{Key: "k", Delete: true}}
	}
	home := p.group
	parts, _ := sortedUniqueGroups([]GroupID{p.group, p.group + 1})
	var cmds []Command
	for _, t := range txns[:min(len(txns), 6)] {
		soon, later := p.clock+1, p.clock+1<<20
		cmds = append(cmds,
			&Prepare{Txn: t, Prio: Prio(t.HLC), Home: home, Participants: parts, Deadline: soon, Now: p.clock, Conditions: cs, Writes: ws},
			&PrepareCommit{Txn: t, Prio: Prio(t.HLC), Deadline: soon, Now: p.clock, Conditions: cs, Writes: ws},
			&Finalize{Txn: t, Outcome: Commit, Home: home, Participants: parts, Deadline: soon, Now: p.clock},
			&Finalize{Txn: t, Outcome: Abort, Home: home, Participants: []GroupID{home}, Deadline: soon, Now: p.clock},
			&Finalize{Txn: t, Outcome: Abort, RefusedBy: home + 1, Home: home, Participants: parts, Deadline: soon, Now: p.clock},
			&Resolve{Txn: t, Outcome: Commit, Deadline: soon, Now: p.clock},
			&Resolve{Txn: t, Outcome: Abort, Deadline: soon, Now: p.clock},
			&Prevent{Txn: t, Deadline: soon, Now: p.clock},
			&ForgetVote{Txn: t, Now: later},
			&ForgetRecord{Txn: t, Now: later},
		)
	}
	return cmds
}
