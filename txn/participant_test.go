package txn

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Transactions of the participant tests: tOld is older than tYoung
// (lower priority). Group 1 is the participant under test; the
// transactions span groups 1 and 2, with home 1 unless a test says.
var (
	tOld   = TxnID{HLC: 10, Node: 1, Counter: 1}
	tYoung = TxnID{HLC: 20, Node: 2, Counter: 1}
	tThird = TxnID{HLC: 30, Node: 3, Counter: 1}
)

const deadline Timestamp = 1000

func prio(t TxnID) Prio { return PrioOf(t) }

// prepare builds a PREPARE of t at time 0, home home, over groups 1 and
// 2, with conditions "key=version" and writes "key=value" ("key=" is a
// delete).
func prepare(t TxnID, home GroupID, conds string, writes string) *Prepare {
	return &Prepare{Txn: t, Prio: prio(t), Home: home, Participants: []GroupID{1, 2}, Deadline: deadline,
		Conditions: parseConditions(conds), Writes: parseWrites(writes)}
}

func prepareCommit(t TxnID, conds string, writes string) *PrepareCommit {
	return &PrepareCommit{Txn: t, Prio: prio(t), Deadline: deadline, Conditions: parseConditions(conds), Writes: parseWrites(writes)}
}

func resolve(t TxnID, o Outcome) *Resolve { return &Resolve{Txn: t, Outcome: o, Deadline: deadline} }

func finalize(t TxnID, o Outcome, refusedBy GroupID) *Finalize {
	return &Finalize{Txn: t, Outcome: o, RefusedBy: refusedBy, Home: 1, Participants: []GroupID{1, 2}, Deadline: deadline}
}

// late gives a PREPARE a deadline far past the others'.
func late(p *Prepare) *Prepare {
	p.Deadline = 2 * deadline
	return p
}

func prevent(t TxnID) *Prevent { return &Prevent{Txn: t, Deadline: deadline} }

// at returns cmd with its Now set to now.
func at[C Command](now Timestamp, cmd C) C {
	switch c := any(cmd).(type) {
	case *Prepare:
		c.Now = now
	case *PrepareCommit:
		c.Now = now
	case *Finalize:
		c.Now = now
	case *Resolve:
		c.Now = now
	case *Prevent:
		c.Now = now
	case *ForgetVote:
		c.Now = now
	case *ForgetRecord:
		c.Now = now
	}
	return cmd
}

func parseConditions(s string) []Condition {
	var out []Condition
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		var version Version
		fmt.Sscan(v, &version)
		out = append(out, Condition{Key: k, Version: version})
	}
	return out
}

func parseWrites(s string) []Write {
	var out []Write
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		if v == "" {
			out = append(out, Write{Key: k, Delete: true})
		} else {
			out = append(out, Write{Key: k, Value: []byte(v)})
		}
	}
	return out
}

// describe renders a Result in the tests' short form.
func describe(r Result) string {
	var parts []string
	switch {
	case r.Err == nil:
	case errors.Is(r.Err, ErrMalformed):
		parts = append(parts, "malformed")
	case errors.Is(r.Err, ErrStaleIndex):
		parts = append(parts, "stale")
	case errors.Is(r.Err, ErrOutcomeConflict):
		parts = append(parts, "conflict")
	case errors.Is(r.Err, ErrNotForgettable):
		parts = append(parts, "not-forgettable")
	default:
		parts = append(parts, "error "+r.Err.Error())
	}
	if r.Busy {
		h := "busy " + r.Holder.Txn.String()
		if r.Holder.Expired {
			h += " expired"
		}
		parts = append(parts, h)
	}
	if r.Vote != VoteNone {
		parts = append(parts, r.Vote.String())
	}
	if r.Vote == VoteRefused {
		switch r.Refusal.Reason {
		case RefusedCondition:
			parts = append(parts, fmt.Sprintf("(condition %s=%d, is %d)", r.Refusal.Condition.Key, r.Refusal.Condition.Version, r.Refusal.Actual))
		case RefusedConflict:
			parts = append(parts, fmt.Sprintf("(conflict with %s)", r.Refusal.Holder.Txn))
		default:
			parts = append(parts, "("+r.Refusal.Reason.String()+")")
		}
	}
	if len(r.Versions) > 0 {
		var vs []string
		for _, kv := range r.Versions {
			vs = append(vs, fmt.Sprintf("%s@%d", kv.Key, kv.Version))
		}
		parts = append(parts, strings.Join(vs, ","))
	}
	if r.Record != RecordNone {
		parts = append(parts, "record "+r.Record.String())
	}
	if r.Expired {
		parts = append(parts, "expired")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// pstep is one command of a participant test and the Result it must get,
// in describe's form.
type pstep struct {
	cmd  Command
	want string
}

// TestParticipant applies each case's commands to a new group 1, as log
// entries 1, 2, ..., checking every result, then the state (in
// Participant.String's form).
func TestParticipant(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []pstep
		state string
	}{
		{
			name: "prepare locks and votes; at home it stages",
			steps: []pstep{
				{prepare(tOld, 2, "", "a=x"), "prepared a@0"},
				{prepare(tYoung, 1, "", "b=y"), "prepared b@0 record staging"},
			},
			state: `group 1 applied 2 clock 0: intent(a:t10.1.1="x") intent(b:t20.2.1="y") vote(t10.1.1:prepared) vote(t20.2.1:prepared) record(t20.2.1:staging)`,
		},
		{
			name: "prepare is idempotent",
			steps: []pstep{
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
			},
			state: `group 1 applied 2 clock 0: intent(a:t10.1.1="x") vote(t10.1.1:prepared) record(t10.1.1:staging)`,
		},
		{
			name: "a failed condition is refused durably, with nothing locked",
			steps: []pstep{
				{prepareCommit(tThird, "", "a=v"), "resolved-commit a@0"},
				{prepare(tOld, 1, "a=0", "b=x"), "refused (condition a=0, is 1)"},
				{prepare(tOld, 1, "a=0", "b=x"), "refused (condition a=0, is 1)"},
				{prevent(tOld), "refused (condition a=0, is 1)"},
			},
			state: `group 1 applied 4 clock 0: a="v"@1 vote(t10.1.1:refused) vote(t30.3.1:resolved-commit)`,
		},
		{
			name: "conditions that hold lock their keys",
			steps: []pstep{
				{prepareCommit(tThird, "", "a=v"), "resolved-commit a@0"},
				{prepare(tOld, 2, "a=1 n=0", "b=x"), "prepared a@1,b@0,n@0"},
			},
			state: `group 1 applied 2 clock 0: a="v"@1 intent(a:t10.1.1) intent(b:t10.1.1="x") intent(n:t10.1.1) vote(t10.1.1:prepared) vote(t30.3.1:resolved-commit)`,
		},
		{
			// Write skew: each transaction reads (conditions) what the other
			// writes. With condition keys unlocked both would commit; locked,
			// the younger dies.
			name: "a condition lock stops a concurrent write: no write skew",
			steps: []pstep{
				{prepare(tOld, 2, "k=0", "m=x"), "prepared k@0,m@0"},
				{prepare(tYoung, 2, "m=0", "k=y"), "refused (conflict with t10.1.1)"},
			},
			state: `group 1 applied 2 clock 0: intent(k:t10.1.1) intent(m:t10.1.1="x") vote(t10.1.1:prepared) vote(t20.2.1:refused)`,
		},
		{
			name: "wait-die: the older waits and records nothing, then prepares",
			steps: []pstep{
				{prepare(tYoung, 2, "", "a=y"), "prepared a@0"},
				{prepare(tOld, 1, "", "a=x b=x"), "busy t20.2.1"},
				{prevent(tOld), "refused (prevented by recovery)"},
				{prepare(tThird, 2, "", "c=z"), "prepared c@0"},
			},
			state: `group 1 applied 4 clock 0: intent(a:t20.2.1="y") intent(c:t30.3.1="z") vote(t10.1.1:refused) vote(t20.2.1:prepared) vote(t30.3.1:prepared)`,
		},
		{
			name: "wait-die: busy until the holder resolves",
			steps: []pstep{
				{prepare(tYoung, 2, "", "a=y"), "prepared a@0"},
				{prepare(tOld, 1, "", "a=x"), "busy t20.2.1"},
				{prepare(tOld, 1, "", "a=x"), "busy t20.2.1"},
				{resolve(tYoung, Abort), "resolved-abort"},
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
			},
			state: `group 1 applied 5 clock 0: intent(a:t10.1.1="x") vote(t10.1.1:prepared) vote(t20.2.1:resolved-abort) record(t10.1.1:staging)`,
		},
		{
			name: "wait-die: the younger dies, durably, even after the holder is gone",
			steps: []pstep{
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
				{prepare(tYoung, 2, "", "a=y"), "refused (conflict with t10.1.1)"},
				{resolve(tOld, Abort), "resolved-abort record staging"},
				{prepare(tYoung, 2, "", "a=y"), "refused (conflict with t10.1.1)"},
			},
			state: `group 1 applied 4 clock 0: vote(t10.1.1:resolved-abort) vote(t20.2.1:refused) record(t10.1.1:staging)`,
		},
		{
			name: "wait-die: the younger dies if any holder is older, though another is younger",
			steps: []pstep{
				{prepare(tOld, 2, "", "b=x"), "prepared b@0"},
				{prepare(tThird, 2, "", "a=z"), "prepared a@0"},
				{prepare(tYoung, 2, "", "a=y b=y"), "refused (conflict with t10.1.1)"},
			},
			state: `group 1 applied 3 clock 0: intent(a:t30.3.1="z") intent(b:t10.1.1="x") vote(t10.1.1:prepared) vote(t20.2.1:refused) vote(t30.3.1:prepared)`,
		},
		{
			name: "resolve commit installs at its own index, once",
			steps: []pstep{
				{prepare(tOld, 2, "", "a=x b="), "prepared a@0,b@0"},
				{resolve(tOld, Commit), "resolved-commit"},
				{resolve(tOld, Commit), "resolved-commit"},
				{prepare(tOld, 2, "", "a=x b="), "resolved-commit"},
			},
			state: `group 1 applied 4 clock 0: a="x"@2 vote(t10.1.1:resolved-commit)`,
		},
		{
			name: "resolve abort drops the intents and keeps a tombstone",
			steps: []pstep{
				{prepare(tOld, 2, "", "a=x"), "prepared a@0"},
				{resolve(tOld, Abort), "resolved-abort"},
				{prepare(tOld, 2, "", "a=x"), "resolved-abort"},
			},
			state: `group 1 applied 3 clock 0: vote(t10.1.1:resolved-abort)`,
		},
		{
			name: "an abort that overtakes the prepare stops it",
			steps: []pstep{
				{resolve(tOld, Abort), "resolved-abort"},
				{prepare(tOld, 2, "", "a=x"), "resolved-abort"},
			},
			state: `group 1 applied 2 clock 0: vote(t10.1.1:resolved-abort)`,
		},
		{
			name: "resolutions that contradict the vote change nothing",
			steps: []pstep{
				{resolve(tOld, Commit), "conflict"},
				{prevent(tYoung), "refused (prevented by recovery)"},
				{resolve(tYoung, Commit), "conflict refused (prevented by recovery)"},
				{resolve(tYoung, Abort), "refused (prevented by recovery)"},
				{prepare(tThird, 2, "", "a=z"), "prepared a@0"},
				{resolve(tThird, Commit), "resolved-commit"},
				{resolve(tThird, Abort), "conflict resolved-commit"},
			},
			state: `group 1 applied 7 clock 0: a="z"@6 vote(t20.2.1:refused) vote(t30.3.1:resolved-commit)`,
		},
		{
			name: "finalize: commit from staging, and a final record never changes",
			steps: []pstep{
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
				{finalize(tOld, Abort, 0), "record staging"},
				{finalize(tOld, Commit, 0), "record committed"},
				{finalize(tOld, Abort, 2), "record committed"},
				{finalize(tOld, Commit, 0), "record committed"},
			},
			state: `group 1 applied 5 clock 0: intent(a:t10.1.1="x") vote(t10.1.1:prepared) record(t10.1.1:committed)`,
		},
		{
			name: "finalize: abort from staging needs a refusal",
			steps: []pstep{
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
				{finalize(tOld, Abort, 2), "record aborted"},
				{finalize(tOld, Commit, 0), "record aborted"},
			},
			state: `group 1 applied 3 clock 0: intent(a:t10.1.1="x") vote(t10.1.1:prepared) record(t10.1.1:aborted)`,
		},
		{
			name: "finalize: an abort before the home's prepare leaves a tombstone that refuses it",
			steps: []pstep{
				{finalize(tOld, Commit, 0), "-"},
				{finalize(tOld, Abort, 0), "record aborted"},
				{prepare(tOld, 1, "", "a=x"), "refused (aborted at home) record aborted"},
			},
			state: `group 1 applied 3 clock 0: record(t10.1.1:aborted)`,
		},
		{
			name: "prevent: a prepared vote stays, no vote becomes refused",
			steps: []pstep{
				{prepare(tOld, 2, "", "a=x"), "prepared a@0"},
				{prevent(tOld), "prepared a@0"},
				{prevent(tYoung), "refused (prevented by recovery)"},
				{prepare(tYoung, 2, "", "b=y"), "refused (prevented by recovery)"},
			},
			state: `group 1 applied 4 clock 0: intent(a:t10.1.1="x") vote(t10.1.1:prepared) vote(t20.2.1:refused)`,
		},
		{
			name: "past the deadline in the log's time, nothing new is recorded, for good",
			steps: []pstep{
				{at(deadline, late(prepare(tThird, 2, "", "z=z"))), "prepared z@0"},
				{prepare(tOld, 1, "", "a=x"), "refused (past deadline) expired"},
				{prevent(tYoung), "refused (past deadline) expired"},
				{resolve(tYoung, Abort), "expired"},
				{resolve(tYoung, Commit), "expired"},
				{finalize(tYoung, Abort, 0), "expired"},
				// An earlier clock reading does not move the log's time back.
				{at(5, prepare(tOld, 1, "", "a=x")), "refused (past deadline) expired"},
			},
			state: `group 1 applied 7 clock 1000: intent(z:t30.3.1="z") vote(t30.3.1:prepared)`,
		},
		{
			name: "a holder past its deadline is named as expired",
			steps: []pstep{
				{prepare(tYoung, 2, "", "a=y"), "prepared a@0"},
				{at(deadline, prepare(tOld, 1, "", "q=x")), "refused (past deadline) expired"},
				{late(&Prepare{Txn: tThird, Prio: 5, Home: 1, Participants: []GroupID{1, 2}, Writes: parseWrites("a=z")}), "busy t20.2.1 expired"},
			},
			state: `group 1 applied 3 clock 1000: intent(a:t20.2.1="y") vote(t20.2.1:prepared)`,
		},
		{
			name: "prepare-commit writes at once, once",
			steps: []pstep{
				{prepareCommit(tOld, "a=0", "a=x b=x"), "resolved-commit a@0,b@0"},
				{prepareCommit(tOld, "a=0", "a=x b=x"), "resolved-commit"},
				{prepareCommit(tYoung, "a=1", "a="), "resolved-commit a@1"},
				{prepareCommit(tThird, "a=1", "c=z"), "refused (condition a=1, is 0)"},
			},
			state: `group 1 applied 4 clock 0: b="x"@1 vote(t10.1.1:resolved-commit) vote(t20.2.1:resolved-commit) vote(t30.3.1:refused)`,
		},
		{
			name: "prepare-commit waits and dies like prepare",
			steps: []pstep{
				{prepare(tYoung, 2, "", "a=y"), "prepared a@0"},
				{prepareCommit(tOld, "", "a=x"), "busy t20.2.1"},
				{prepareCommit(tThird, "", "a=z"), "refused (conflict with t20.2.1)"},
			},
			state: `group 1 applied 3 clock 0: intent(a:t20.2.1="y") vote(t20.2.1:prepared) vote(t30.3.1:refused)`,
		},
		{
			name: "forget: only tombstones, only past the deadline, the record last",
			steps: []pstep{
				{prepare(tOld, 1, "", "a=x"), "prepared a@0 record staging"},
				{&ForgetVote{Txn: tOld}, "not-forgettable prepared"},
				{resolve(tOld, Commit), "resolved-commit record staging"},
				{&ForgetVote{Txn: tOld, Now: deadline}, "not-forgettable resolved-commit"},
				{&ForgetRecord{Txn: tOld}, "not-forgettable record staging"},
				{finalize(tOld, Commit, 0), "record committed expired"},
				{&ForgetRecord{Txn: tOld}, "not-forgettable record committed"},
				{&ForgetVote{Txn: tOld}, "expired"},
				{&ForgetRecord{Txn: tOld}, "expired"},
				{prepare(tOld, 1, "", "a=x"), "refused (past deadline) expired"},
			},
			state: `group 1 applied 10 clock 1000: a="x"@3`,
		},
		{
			name: "forget: a vote before the deadline stays",
			steps: []pstep{
				{resolve(tOld, Abort), "resolved-abort"},
				{&ForgetVote{Txn: tOld, Now: deadline - 1}, "not-forgettable resolved-abort"},
			},
			state: `group 1 applied 2 clock 999: vote(t10.1.1:resolved-abort)`,
		},
		{
			name: "malformed commands change nothing",
			steps: []pstep{
				{nil, "malformed"},
				{(*Prepare)(nil), "malformed"},
				{(*Resolve)(nil), "malformed"},
				{&Prepare{Prio: 1, Home: 1, Participants: []GroupID{1, 2}, Writes: parseWrites("a=x")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 3, Participants: []GroupID{1, 2}, Writes: parseWrites("a=x")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 2, Participants: []GroupID{2, 3}, Writes: parseWrites("a=x")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1}, Writes: parseWrites("a=x")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1, 1, 2}, Writes: parseWrites("a=x")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1, 2}}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1, 2}, Writes: parseWrites("a=x a=y")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1, 2}, Conditions: parseConditions("=1")}, "malformed"},
				{&Prepare{Txn: tOld, Home: 1, Participants: []GroupID{1, 2}, Writes: []Write{{Key: "a", Delete: true, Value: []byte("v")}}}, "malformed"},
				{&Finalize{Txn: tOld, Outcome: 3, Home: 1, Participants: []GroupID{1, 2}}, "malformed"},
				{&Finalize{Txn: tOld, Outcome: Commit, Home: 2, Participants: []GroupID{1, 2}}, "malformed"},
				{&Finalize{Txn: tOld, Outcome: Commit, RefusedBy: 2, Home: 1, Participants: []GroupID{1, 2}}, "malformed"},
				{&Resolve{Txn: tOld}, "malformed"},
				{&Prevent{}, "malformed"},
				{&ForgetVote{}, "malformed"},
				{&ForgetRecord{}, "malformed"},
				{&PrepareCommit{Txn: tOld}, "malformed"},
			},
			state: `group 1 applied 20 clock 0:`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewParticipant(1)
			for i, s := range tc.steps {
				r := p.Apply(uint64(i+1), s.cmd)
				if got := describe(r); got != s.want {
					t.Errorf("step %d: got %q, want %q", i+1, got, s.want)
				}
				if r.Index != uint64(i+1) {
					t.Errorf("step %d: result index %d", i+1, r.Index)
				}
			}
			if got := p.String(); got != tc.state {
				t.Errorf("state:\n got %s\nwant %s", got, tc.state)
			}
		})
	}
}

func TestParticipantStaleIndex(t *testing.T) {
	p := NewParticipant(1)
	p.Apply(5, prepare(tOld, 2, "", "a=x"))
	before := p.AppendState(nil)
	for _, index := range []uint64{0, 4, 5} {
		r := p.Apply(index, resolve(tOld, Commit))
		if !errors.Is(r.Err, ErrStaleIndex) {
			t.Errorf("Apply at %d after 5: %v, want ErrStaleIndex", index, r.Err)
		}
	}
	if !bytes.Equal(before, p.AppendState(nil)) || p.Applied() != 5 {
		t.Errorf("stale applies changed the state: %s", p)
	}
}

// TestParticipantReadsIntents checks the linearizable read: a write
// intent hides the committed value (the transaction may have committed
// in the other groups already), a condition lock does not.
func TestParticipantReadsIntents(t *testing.T) {
	p := NewParticipant(1)
	p.Apply(1, prepareCommit(tThird, "", "a=old k=kv"))
	p.Apply(2, prepare(tOld, 2, "k=1", "a=new"))
	r := p.Read("a")
	if r.Intent == nil || r.Intent.Txn != tOld || r.Found || r.Value != nil {
		t.Errorf("read of a key under a write intent: %+v, want the intent and no value", r)
	}
	if h := r.Intent; h != nil && (h.Home != 2 || h.Deadline != deadline || len(h.Participants) != 2 || h.Expired) {
		t.Errorf("intent %+v: want home 2, deadline %d, participants 1 and 2", *h, deadline)
	}
	if r := p.Read("k"); r.Intent != nil || string(r.Value) != "kv" || r.Version != 1 {
		t.Errorf("read of a key under a condition lock: %+v, want kv@1", r)
	}
	p.Apply(3, resolve(tOld, Abort))
	if r := p.Read("a"); r.Intent != nil || string(r.Value) != "old" || r.Version != 1 {
		t.Errorf("read after the abort: %+v, want old@1", r)
	}
	p.Apply(4, prepare(tYoung, 2, "", "a="))
	p.Apply(5, resolve(tYoung, Commit))
	if r := p.Read("a"); r.Found || r.Intent != nil {
		t.Errorf("read after a committed delete: %+v, want absent", r)
	}
}

// TestParticipantCopies checks that the state shares no memory with the
// commands applied or the values read.
func TestParticipantCopies(t *testing.T) {
	p := NewParticipant(1)
	cmd := prepareCommit(tOld, "", "a=value")
	p.Apply(1, cmd)
	cmd.Writes[0].Value[0] = 'X'
	r := p.Read("a")
	r.Value[1] = 'Y'
	if got := string(p.Read("a").Value); got != "value" {
		t.Errorf("value %q after the caller changed its slices, want value", got)
	}
	q := p.Clone()
	q.Apply(2, prepare(tYoung, 2, "", "b=x"))
	if p.Applied() != 1 || p.Vote(tYoung) != VoteNone {
		t.Errorf("applying to a clone changed the original: %s", p)
	}
}

// TestParticipantDeterministic checks I7: replicas that apply the same
// log encode the same state, whatever order their maps were filled in.
func TestParticipantDeterministic(t *testing.T) {
	cmds := []Command{
		prepare(tOld, 1, "", "a=1 b=2 c=3"),
		prepare(tYoung, 2, "", "d=4"),
		prepareCommit(tThird, "", "e=5 f=6"),
		resolve(tOld, Commit),
		finalize(tOld, Commit, 0),
	}
	a, b := NewParticipant(1), NewParticipant(1)
	for i, c := range cmds {
		a.Apply(uint64(i+1), c)
	}
	// b gets the same log, after filling and emptying its maps with other
	// keys, so that its maps' internal order differs.
	for i := range 50 {
		b.data[fmt.Sprint("x", i)] = dataEntry{}
	}
	clear(b.data)
	for i, c := range cmds {
		b.Apply(uint64(i+1), c)
	}
	if !bytes.Equal(a.AppendState(nil), b.AppendState(nil)) {
		t.Errorf("equal logs, different states:\n%s\n%s", a, b)
	}
	b.Apply(6, resolve(tYoung, Abort))
	if bytes.Equal(a.AppendState(nil), b.AppendState(nil)) {
		t.Error("different states, equal encodings")
	}
}

func TestParticipantReadRecord(t *testing.T) {
	p := NewParticipant(1)
	p.Apply(1, prepare(tOld, 1, "", "a=x"))
	rec := p.ReadRecord(tOld)
	if rec.State != RecordStaging || rec.Prio != prio(tOld) || rec.Deadline != deadline || len(rec.Participants) != 2 {
		t.Errorf("record %+v", rec)
	}
	rec.Participants[0] = 9
	if p.ReadRecord(tOld).Participants[0] != 1 {
		t.Error("ReadRecord shares the participants with the state")
	}
	if rec := p.ReadRecord(tYoung); rec.State != RecordNone {
		t.Errorf("record of an unknown transaction: %+v", rec)
	}
}
