package txn

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// describeActions renders actions in the tests' short form, one string
// each: "PREPARE->1", "FINALIZE(abort by 2)->1", "timer PREPARE->2 5ms",
// "report committed", ...
func describeActions(acts []Action) []string {
	var out []string
	for _, a := range acts {
		switch a := a.(type) {
		case Send:
			s := a.Command.Kind().String()
			switch c := a.Command.(type) {
			case *Finalize:
				if c.RefusedBy != 0 {
					s += fmt.Sprintf("(%s by %d)", c.Outcome, c.RefusedBy)
				} else {
					s += "(" + c.Outcome.String() + ")"
				}
			case *Resolve:
				s += "(" + c.Outcome.String() + ")"
			}
			out = append(out, fmt.Sprintf("%s->%d", s, a.To))
		case ReadRecord:
			out = append(out, fmt.Sprintf("READ_RECORD->%d", a.From))
		case SetTimer:
			out = append(out, fmt.Sprintf("timer %s->%d %v", a.Timer.Kind, a.Timer.Group, a.After))
		case Report:
			s := "report " + a.Status.String()
			if a.Status == StatusAborted {
				s += " (" + a.Refusal.Reason.String() + ")"
			}
			out = append(out, s)
		case RetryLater:
			out = append(out, fmt.Sprintf("retry after %v", a.After))
		case RecoverHolder:
			out = append(out, "recover "+a.Target.Txn.String())
		case Recovered:
			out = append(out, fmt.Sprintf("recovered %s %s", a.Txn, a.Outcome))
		default:
			out = append(out, fmt.Sprintf("%T", a))
		}
	}
	return out
}

func answer(g GroupID, kind CommandKind, t TxnID, r Result) Replied {
	return Replied{From: g, Kind: kind, Txn: t, Result: r}
}

var (
	prepared       = Result{Vote: VotePrepared}
	preparedHome   = Result{Vote: VotePrepared, Record: RecordStaging}
	committedRec   = Result{Record: RecordCommitted}
	abortedRec     = Result{Record: RecordAborted}
	resolvedCommit = Result{Vote: VoteResolvedCommit}
	resolvedAbort  = Result{Vote: VoteResolvedAbort}
	conditionFails = Result{Vote: VoteRefused, Refusal: Refusal{Reason: RefusedCondition}}
	conflict       = Result{Vote: VoteRefused, Refusal: Refusal{Reason: RefusedConflict, Holder: Holder{Txn: tThird}}}
	busy           = Result{Busy: true, Holder: Holder{Txn: tThird, Home: 3, Participants: []GroupID{2, 3}}}
	busyExpired    = Result{Busy: true, Holder: Holder{Txn: tThird, Home: 3, Participants: []GroupID{2, 3}, Expired: true}}
)

// twoGroups is a transaction over groups 1 (home) and 2.
var twoGroups = Spec{
	Conditions: []GroupCondition{{2, Condition{Key: "b"}}},
	Writes:     []GroupWrite{{1, Write{Key: "a", Value: []byte("x")}}, {2, Write{Key: "c", Value: []byte("y")}}},
}

var testConfig = CoordinatorConfig{Lifetime: time.Second, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxAttempts: 2}

// cstep is one event fed to a state machine and the actions it must
// return (in describeActions's form), or the error it must wrap.
type cstep struct {
	ev   Event
	want []string
	err  error
}

func runSteps(t *testing.T, step func(Event) ([]Action, error), steps []cstep) {
	t.Helper()
	for i, s := range steps {
		acts, err := step(s.ev)
		if s.err != nil {
			if !errors.Is(err, s.err) {
				t.Errorf("step %d (%T): error %v, want %v", i+1, s.ev, err, s.err)
			}
		} else if err != nil {
			t.Errorf("step %d (%T): %v", i+1, s.ev, err)
		}
		if got := describeActions(acts); !slices.Equal(got, s.want) {
			t.Errorf("step %d (%T):\n got %q\nwant %q", i+1, s.ev, got, s.want)
		}
	}
}

func TestCoordinator(t *testing.T) {
	t1 := TxnID{HLC: 100, Node: 1, Counter: 1}
	t2 := TxnID{HLC: 150, Node: 1, Counter: 2}
	for _, tc := range []struct {
		name  string
		spec  Spec
		cfg   CoordinatorConfig
		steps []cstep
		done  bool
	}{
		{
			name: "commit: acked once every vote is seen, then finalized and resolved",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, prepared)},
				{ev: answer(2, KindPrepare, t1, prepared)}, // a duplicate
				{ev: answer(1, KindPrepare, t1, preparedHome), want: []string{"report committed", "FINALIZE(commit)->1", "RESOLVE(commit)->1", "RESOLVE(commit)->2"}},
				{ev: answer(1, KindFinalize, t1, committedRec)},
				{ev: answer(2, KindResolve, t1, resolvedCommit)},
				{ev: Failed{To: 1, Kind: KindResolve, Txn: t1}, want: []string{"timer RESOLVE->1 5ms"}},
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindResolve, Group: 1}}, want: []string{"RESOLVE(commit)->1"}},
				{ev: answer(1, KindResolve, t1, resolvedCommit)},
			},
			done: true,
		},
		{
			name: "one group: one-phase commit",
			spec: Spec{Writes: []GroupWrite{{7, Write{Key: "a", Value: []byte("x")}}}},
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE_COMMIT->7"}},
				{ev: answer(7, KindPrepareCommit, t1, busy), want: []string{"timer PREPARE_COMMIT->7 5ms"}},
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindPrepareCommit, Group: 7}}, want: []string{"PREPARE_COMMIT->7"}},
				{ev: answer(7, KindPrepareCommit, t1, resolvedCommit), want: []string{"report committed"}},
			},
			done: true,
		},
		{
			name: "a failed condition: the record confirms the abort before the client hears",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(1, KindPrepare, t1, preparedHome)},
				{ev: answer(2, KindPrepare, t1, conditionFails), want: []string{"FINALIZE(abort by 2)->1"}},
				{ev: answer(1, KindFinalize, t1, abortedRec), want: []string{"report aborted (condition failed)", "RESOLVE(abort)->1"}},
				{ev: answer(1, KindResolve, t1, resolvedAbort)},
			},
			done: true,
		},
		{
			name: "contention: the old attempt is cleaned up, then a new one under the same priority",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, conflict), want: []string{"FINALIZE(abort by 2)->1"}},
				{ev: answer(1, KindPrepare, t1, preparedHome)}, // overtaken by the abort
				{ev: answer(1, KindFinalize, t1, abortedRec), want: []string{"RESOLVE(abort)->1"}},
				{ev: answer(1, KindResolve, t1, resolvedAbort), want: []string{"retry after 5ms"}},
				{ev: Start{Txn: t2}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(1, KindResolve, t1, resolvedAbort)}, // the old attempt's
				{ev: answer(2, KindPrepare, t2, conflict), want: []string{"FINALIZE(abort by 2)->1"}},
				{ev: answer(1, KindFinalize, t2, abortedRec), want: []string{"report aborted (lock held by an older transaction)", "RESOLVE(abort)->1"}},
			},
		},
		{
			name: "busy: resend with growing backoff; an expired holder is recovered",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, busy), want: []string{"timer PREPARE->2 5ms"}},
				{ev: answer(2, KindPrepare, t1, busy)}, // a resend is already due
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindPrepare, Group: 2}}, want: []string{"PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, busy), want: []string{"timer PREPARE->2 10ms"}},
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindPrepare, Group: 2}}, want: []string{"PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, busyExpired), want: []string{"timer PREPARE->2 20ms", "recover t30.3.1"}},
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindPrepare, Group: 2}}, want: []string{"PREPARE->2"}},
				{ev: answer(2, KindPrepare, t1, busy), want: []string{"timer PREPARE->2 20ms"}},
			},
		},
		{
			name: "an ambiguous failure is resent; a stale timer or answer does nothing",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: Failed{To: 2, Kind: KindPrepare, Txn: t1}, want: []string{"timer PREPARE->2 5ms"}},
				{ev: answer(2, KindPrepare, t1, prepared)},
				{ev: TimerFired{Timer: Timer{Txn: t1, Kind: KindPrepare, Group: 2}}},
				{ev: answer(1, KindPrepare, t2, prepared)},
				{ev: TimerFired{Timer: Timer{Txn: t2, Kind: KindPrepare, Group: 1}}},
			},
		},
		{
			name: "attempts exhausted: the contention abort is reported",
			spec: twoGroups,
			cfg:  CoordinatorConfig{MaxAttempts: 1},
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(1, KindPrepare, t1, conflict), want: []string{"FINALIZE(abort by 1)->1"}},
				{ev: answer(1, KindFinalize, t1, Result{Expired: true}), want: []string{"report aborted (lock held by an older transaction)", "RESOLVE(abort)->2"}},
				{ev: answer(2, KindResolve, t1, Result{Expired: true})},
			},
			done: true,
		},
		{
			name: "cancel: unknown, and nothing more",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(1, KindPrepare, t1, preparedHome)},
				{ev: Cancel{}, want: []string{"report unknown"}},
				{ev: answer(2, KindPrepare, t1, prepared)},
			},
			done: true,
		},
		{
			name: "a contradiction stops the coordinator with an unknown outcome",
			spec: twoGroups,
			steps: []cstep{
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: answer(1, KindPrepare, t1, Result{Err: ErrMalformed}), want: []string{"report unknown"}, err: ErrInconsistent},
			},
			done: true,
		},
		{
			name: "events the coordinator cannot take",
			spec: twoGroups,
			steps: []cstep{
				{ev: answer(1, KindPrepare, t1, prepared)}, // before the start: stale
				{ev: Start{}, err: ErrUnexpectedEvent},
				{ev: Start{Txn: t1}, want: []string{"PREPARE->1", "PREPARE->2"}},
				{ev: Start{Txn: t2}, err: ErrUnexpectedEvent},
				{ev: answer(9, KindPrepare, t1, prepared), err: ErrUnexpectedEvent},
				{ev: Failed{To: 9, Kind: KindPrepare, Txn: t1}, err: ErrUnexpectedEvent},
				{ev: nil, err: ErrUnexpectedEvent},
				{ev: RecordRead{}, err: ErrUnexpectedEvent},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg == (CoordinatorConfig{}) {
				cfg = testConfig
			}
			c, err := NewCoordinator(cfg, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			runSteps(t, c.Step, tc.steps)
			if c.Done() != tc.done {
				t.Errorf("Done() = %v, want %v", c.Done(), tc.done)
			}
		})
	}
}

// TestCoordinatorCommands checks what the commands carry: the priority
// of the first attempt, the deadline from the attempt's start, each
// group's share of the spec.
func TestCoordinatorCommands(t *testing.T) {
	c, err := NewCoordinator(testConfig, twoGroups)
	if err != nil {
		t.Fatal(err)
	}
	first := TxnID{HLC: 100, Node: 1, Counter: 1}
	acts, _ := c.Step(Start{Txn: first, Now: 1000})
	p := acts[1].(Send).Command.(*Prepare)
	want := &Prepare{Txn: first, Prio: 100, Home: 1, Participants: []GroupID{1, 2}, Deadline: 1000 + Timestamp(time.Second), Now: 1000,
		Conditions: []Condition{{Key: "b"}}, Writes: []Write{{Key: "c", Value: []byte("y")}}}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Errorf("PREPARE to group 2:\n got %+v\nwant %+v", p, want)
	}
	c.Step(answer(2, KindPrepare, first, conflict))
	c.Step(answer(1, KindFinalize, first, abortedRec))
	c.Step(answer(1, KindResolve, first, resolvedAbort))
	second := TxnID{HLC: 900, Node: 1, Counter: 2}
	acts, _ = c.Step(Start{Txn: second, Now: 5000})
	p = acts[0].(Send).Command.(*Prepare)
	if p.Txn != second || p.Prio != 100 || p.Deadline != 5000+Timestamp(time.Second) {
		t.Errorf("second attempt's PREPARE %+v: want txn %s, priority 100, deadline from 5000", p, second)
	}
}

func TestNewCoordinatorRefuses(t *testing.T) {
	w := func(g GroupID, k string) GroupWrite { return GroupWrite{g, Write{Key: k, Value: []byte("v")}} }
	for _, tc := range []struct {
		name string
		cfg  CoordinatorConfig
		spec Spec
	}{
		{"nothing to do", CoordinatorConfig{}, Spec{}},
		{"group 0", CoordinatorConfig{}, Spec{Writes: []GroupWrite{w(0, "a")}}},
		{"a key twice", CoordinatorConfig{}, Spec{Writes: []GroupWrite{w(1, "a"), w(1, "a")}}},
		{"an empty key", CoordinatorConfig{}, Spec{Writes: []GroupWrite{w(1, "")}}},
		{"home not a participant", CoordinatorConfig{}, Spec{Writes: []GroupWrite{w(1, "a")}, Home: 2}},
		{"negative lifetime", CoordinatorConfig{Lifetime: -1}, Spec{Writes: []GroupWrite{w(1, "a")}}},
		{"backoff bounds crossed", CoordinatorConfig{BackoffMin: time.Second, BackoffMax: time.Millisecond}, Spec{Writes: []GroupWrite{w(1, "a")}}},
	} {
		if _, err := NewCoordinator(tc.cfg, tc.spec); err == nil {
			t.Errorf("%s: NewCoordinator accepted it", tc.name)
		}
	}
}

func TestRecoverer(t *testing.T) {
	tr := TxnID{HLC: 7, Node: 3, Counter: 1}
	target := RecoveryTarget{Txn: tr, Home: 1, Participants: []GroupID{2, 1, 3}, Deadline: 50}
	staging := RecordInfo{State: RecordStaging, Participants: []GroupID{1, 2, 3}, Deadline: 50}
	for _, tc := range []struct {
		name  string
		steps []cstep
	}{
		{
			name: "a final record is resolved everywhere",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: RecordRead{From: 1, Txn: tr, Record: RecordInfo{State: RecordCommitted}}, want: []string{"RESOLVE(commit)->1", "RESOLVE(commit)->2", "RESOLVE(commit)->3"}},
				{ev: answer(1, KindResolve, tr, resolvedCommit)},
				{ev: answer(2, KindResolve, tr, Result{Expired: true})}, // forgotten
				{ev: answer(3, KindResolve, tr, resolvedCommit), want: []string{"recovered t7.3.1 commit"}},
			},
		},
		{
			name: "no record: abort it, unless the home's PREPARE got in first",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: RecordRead{From: 1, Txn: tr}, want: []string{"FINALIZE(abort)->1"}},
				{ev: answer(1, KindFinalize, tr, Result{Record: RecordStaging}), want: []string{"PREVENT->2", "PREVENT->3"}},
				{ev: answer(3, KindPrevent, tr, prepared)},
				{ev: answer(2, KindPrevent, tr, resolvedCommit), want: []string{"FINALIZE(commit)->1"}},
				{ev: answer(1, KindFinalize, tr, Result{Record: RecordStaging})}, // the first FINALIZE's duplicate
				{ev: answer(1, KindFinalize, tr, committedRec), want: []string{"RESOLVE(commit)->1", "RESOLVE(commit)->2", "RESOLVE(commit)->3"}},
			},
		},
		{
			name: "no record, and the abort holds",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: RecordRead{From: 1, Txn: tr}, want: []string{"FINALIZE(abort)->1"}},
				{ev: answer(1, KindFinalize, tr, abortedRec), want: []string{"RESOLVE(abort)->1", "RESOLVE(abort)->2", "RESOLVE(abort)->3"}},
			},
		},
		{
			name: "staging: one refusal aborts",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: Failed{To: 1, Kind: KindReadRecord, Txn: tr}, want: []string{"timer READ_RECORD->1 10ms"}},
				{ev: TimerFired{Timer: Timer{Txn: tr, Kind: KindReadRecord, Group: 1}}, want: []string{"READ_RECORD->1"}},
				{ev: RecordRead{From: 1, Txn: tr, Record: staging}, want: []string{"PREVENT->2", "PREVENT->3"}},
				{ev: Failed{To: 2, Kind: KindPrevent, Txn: tr}, want: []string{"timer PREVENT->2 10ms"}},
				{ev: answer(3, KindPrevent, tr, Result{Vote: VoteRefused, Refusal: Refusal{Reason: RefusedPrevented}}), want: []string{"FINALIZE(abort by 3)->1"}},
				{ev: TimerFired{Timer: Timer{Txn: tr, Kind: KindPrevent, Group: 2}}},
				{ev: answer(1, KindFinalize, tr, abortedRec), want: []string{"RESOLVE(abort)->1", "RESOLVE(abort)->2", "RESOLVE(abort)->3"}},
				{ev: answer(1, KindResolve, tr, resolvedAbort)},
				{ev: answer(2, KindResolve, tr, Result{Vote: VoteRefused})},
				{ev: answer(3, KindResolve, tr, Result{Expired: true}), want: []string{"recovered t7.3.1 abort"}},
				{ev: answer(3, KindResolve, tr, Result{Expired: true})}, // after the end
			},
		},
		{
			name: "a contradiction is reported, and the record followed",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: RecordRead{From: 1, Txn: tr, Record: staging}, want: []string{"PREVENT->2", "PREVENT->3"}},
				{ev: answer(2, KindPrevent, tr, prepared)},
				{ev: answer(3, KindPrevent, tr, prepared), want: []string{"FINALIZE(commit)->1"}},
				{ev: answer(1, KindFinalize, tr, abortedRec), want: []string{"RESOLVE(abort)->1", "RESOLVE(abort)->2", "RESOLVE(abort)->3"}, err: ErrInconsistent},
			},
		},
		{
			name: "events the recoverer cannot take",
			steps: []cstep{
				{ev: Start{Txn: tThird}, err: ErrUnexpectedEvent},
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: Start{Txn: tr}, err: ErrUnexpectedEvent},
				{ev: RecordRead{From: 2, Txn: tr}, err: ErrUnexpectedEvent},
				{ev: answer(9, KindPrevent, tr, prepared), err: ErrUnexpectedEvent},
			},
		},
		{
			name: "a cancel stops the recovery where it is",
			steps: []cstep{
				{ev: Start{Txn: tr}, want: []string{"READ_RECORD->1"}},
				{ev: Cancel{}},
				{ev: RecordRead{From: 1, Txn: tr, Record: staging}}, // after the end: ignored
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRecoverer(RecovererConfig{}, target)
			if err != nil {
				t.Fatal(err)
			}
			runSteps(t, r.Step, tc.steps)
		})
	}
	for _, bad := range []RecoveryTarget{
		{Home: 1, Participants: []GroupID{1, 2}},
		{Txn: tr, Home: 3, Participants: []GroupID{1, 2}},
		{Txn: tr, Home: 1, Participants: []GroupID{1, 1}},
	} {
		if _, err := NewRecoverer(RecovererConfig{}, bad); err == nil {
			t.Errorf("NewRecoverer accepted %+v", bad)
		}
	}
}

func TestTxnIDOrder(t *testing.T) {
	ids := []TxnID{{HLC: 2}, {HLC: 1, Node: 2}, {HLC: 1, Node: 1, Counter: 5}, {HLC: 1, Node: 1, Counter: 4}}
	slices.SortFunc(ids, TxnID.Compare)
	if got := fmt.Sprint(ids); got != "[t1.1.4 t1.1.5 t1.2.0 t2.0.0]" {
		t.Errorf("sorted: %s", got)
	}
	// Wait-die's age: the priority first, then the id.
	if !olderThan(1, TxnID{HLC: 9}, 2, TxnID{HLC: 1}) || olderThan(2, TxnID{HLC: 1}, 1, TxnID{HLC: 9}) {
		t.Error("the priority does not come first")
	}
	if !olderThan(1, TxnID{HLC: 1, Counter: 1}, 1, TxnID{HLC: 1, Counter: 2}) {
		t.Error("between equal priorities, the lower id is not older")
	}
	if Timestamp(1<<63).Add(1<<62) != 1<<63+1<<62 || Timestamp(^uint64(0)-1).Add(5) != Timestamp(^uint64(0)) || Timestamp(7).Add(-1) != 7 {
		t.Error("Timestamp.Add does not saturate")
	}
	if backoff(time.Millisecond, 10*time.Millisecond, 0) != time.Millisecond || backoff(time.Millisecond, 10*time.Millisecond, 2) != 4*time.Millisecond ||
		backoff(time.Millisecond, 10*time.Millisecond, 60) != 10*time.Millisecond {
		t.Error("backoff")
	}
	if s := strings.Join(describeActions([]Action{RetryLater{After: time.Second}}), ""); s != "retry after 1s" {
		t.Error(s)
	}
}
