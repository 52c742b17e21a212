package txn

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// deep selects the bigger bounds, for `make soak`:
//
//	go test -run TestExhaustive -timeout 0 -txn.exhaustive.deep ./txn/
//
// or TXN_EXHAUSTIVE_DEEP=1 in the environment. They are meant to run
// without the race detector. Two more variables help there:
// TXN_STATE_LIMIT=n stops each scenario after n states, and
// TXN_EXHAUSTIVE_SEED=s shuffles the order of the steps, so that runs
// stopped by the limit sample different parts of the state graph.
var deep = flag.Bool("txn.exhaustive.deep", false, "explore the exhaustive test's bigger bounds (long: for make soak, without -race)")

func deepRun() bool { return *deep || os.Getenv("TXN_EXHAUSTIVE_DEEP") != "" }

// The scenarios: two transactions over three groups, contending in one
// group, each proposed by its own coordinator (node 1's older than node
// 2's), plus one recoverer that may start, at any step, on an attempt
// that left a vote or a record somewhere.
//
// twoByTwo: T1 writes a@1 and b@2 (home 1); T2 requires b@2 absent and
// writes c@3 (home 3). They contend on b: T1 waits for T2's condition
// lock (Busy) or T2 dies at T1's write lock (REFUSED, then a retry that
// finds b written, a final abort on the condition).
//
// threeByThree: both span the three groups and contend on two: T1
// writes a@1, b@2, c@3; T2 requires b@2 absent, writes c@3 and d@1.
func twoByTwo() []Spec {
	return []Spec{
		{Home: 1, Writes: []GroupWrite{{1, Write{Key: "a", Value: []byte("T1")}}, {2, Write{Key: "b", Value: []byte("T1")}}}},
		{Home: 3, Conditions: []GroupCondition{{2, Condition{Key: "b"}}}, Writes: []GroupWrite{{3, Write{Key: "c", Value: []byte("T2")}}}},
	}
}

func threeByThree() []Spec {
	return []Spec{
		{Home: 1, Writes: []GroupWrite{{1, Write{Key: "a", Value: []byte("T1")}}, {2, Write{Key: "b", Value: []byte("T1")}}, {3, Write{Key: "c", Value: []byte("T1")}}}},
		{Home: 3, Conditions: []GroupCondition{{2, Condition{Key: "b"}}}, Writes: []GroupWrite{{3, Write{Key: "c", Value: []byte("T2")}}, {1, Write{Key: "d", Value: []byte("T2")}}}},
	}
}

func modelConfig(attempts int) CoordinatorConfig {
	return CoordinatorConfig{Lifetime: modelLifetime, BackoffMin: time.Nanosecond, BackoffMax: 2 * time.Nanosecond, MaxAttempts: attempts}
}

// scenarios are the runs of TestExhaustive. Each explores every
// interleaving of two transactions' messages over three groups, with
// the coordinators' answers delivered in any order or never (a crash at
// any point), and one kind of fault on top: what fits in about twenty
// seconds with the race detector. The deep runs combine the faults and
// retries: each has more than a million states (the sampled runs never
// reached the end), for a soak without -race.
func scenarios() []*scenario {
	groups := []GroupID{1, 2, 3}
	if !deepRun() {
		return []*scenario{
			// Retries under the same priority after a wait-die refusal.
			{name: "2x2/retry", groups: groups, specs: twoByTwo(), cfg: modelConfig(2)},
			// One request applied whose answer is lost (the resend finds
			// what the first one decided), or one request lost before it
			// applies (a resend, or a proposer that crashed with part of
			// its requests unsent).
			{name: "2x2/ambiguous|lost", groups: groups, specs: twoByTwo(), cfg: modelConfig(1), ambiguous: 1, lost: 1, faults: 1},
			// One request delivered twice, the second time at any later
			// step.
			{name: "2x2/duplicate", groups: groups, specs: twoByTwo(), cfg: modelConfig(1), dups: 1},
			// The recoverer racing the proposers, on T2 (the deep run
			// recovers either transaction, twice).
			{name: "2x2/recovery", groups: groups, specs: twoByTwo(), cfg: modelConfig(1), recoveries: 1, recoverable: 1 << 1},
			// The clock passing the deadlines at any step, and the garbage
			// collector forgetting tombstones after it, before answers and
			// resends that were still in flight.
			{name: "2x2/clock+gc", groups: groups, specs: twoByTwo(), cfg: modelConfig(1), clockStep: true, gc: true},
		}
	}
	return []*scenario{
		{name: "2x2/faults", groups: groups, specs: twoByTwo(), cfg: modelConfig(2), ambiguous: 1, lost: 1, dups: 1},
		{name: "2x2/recovery", groups: groups, specs: twoByTwo(), cfg: modelConfig(2), ambiguous: 1, recoveries: 2, recovererWaits: true},
		{name: "2x2/clock+gc", groups: groups, specs: twoByTwo(), cfg: modelConfig(2), dups: 1, recoveries: 1, clockStep: true, gc: true},
		{name: "3x3/recovery", groups: groups, specs: threeByThree(), cfg: modelConfig(1), ambiguous: 1, recoveries: 1},
		{name: "3x3/clock+gc", groups: groups, specs: threeByThree(), cfg: modelConfig(1), dups: 1, clockStep: true, gc: true},
	}
}

// TestExhaustive explores every interleaving of the scenarios' message
// deliveries and faults, up to the repetition of a state: after each step
// it checks I2, I3, I4 and I5 (checkInvariants, scenario.apply), and at
// every state where only answers are in flight it crashes the actors
// still waiting, recovers everything left and checks I1, I4 and that
// nothing is left (crashPending, finish).
func TestExhaustive(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			start := time.Now()
			e := newExplorer(sc)
			if err := e.run(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d states, %d transitions, %d quiescent states checked, longest path %d, in %v",
				len(e.visited), e.transitions, e.quiescent, e.maxDepth, time.Since(start).Round(time.Millisecond))
			names := slices.Sorted(maps.Keys(e.covered))
			for _, name := range names {
				t.Logf("  reached %q %d times", name, e.covered[name])
			}
			want := []string{"acked", "told aborted", "busy", "wait-die refusal", "condition failed"}
			if sc.cfg.MaxAttempts > 1 {
				want = append(want, "retry")
			}
			if sc.recoveries > 0 {
				want = append(want, "recovered commit", "recovered abort", "prevented")
			}
			if sc.clockStep {
				want = append(want, "expired")
			}
			if sc.gc {
				want = append(want, "forgotten")
			}
			for _, name := range want {
				if e.covered[name] == 0 {
					t.Errorf("the run never reached %q", name)
				}
			}
		})
	}
}

// transition is one step the explorer may take from a world.
type transition struct {
	kind  transitionKind
	index int // the message, coordinator, attempt slot or forget, by kind
}

type transitionKind uint8

const (
	deliverOK        transitionKind = iota // deliver a message
	deliverAmbiguous                       // apply a request, lose its answer
	deliverLost                            // lose a request before it applies
	deliverTwice                           // deliver a request and keep it
	startRetry                             // a coordinator's next attempt starts
	startRecovery                          // the recoverer starts on an attempt
	clockStep                              // the clock passes the early deadlines
	forgetTombstone                        // the garbage collector forgets something
)

func (w *world) transitions(forgets []forgetting) []transition {
	var out []transition
	for i, m := range w.net {
		if i > 0 && w.net[i-1].key == m.key {
			continue // the same message twice: either delivery leads to the same state
		}
		out = append(out, transition{kind: deliverOK, index: i})
		if !m.request || w.faults == 0 {
			continue
		}
		if w.ambiguous > 0 {
			out = append(out, transition{kind: deliverAmbiguous, index: i})
		}
		if w.lost > 0 {
			out = append(out, transition{kind: deliverLost, index: i})
		}
		if w.dups > 0 {
			out = append(out, transition{kind: deliverTwice, index: i})
		}
	}
	for i, s := range w.coords {
		if !s.crashed && s.retry {
			out = append(out, transition{kind: startRetry, index: i})
		}
	}
	if w.rec.r == nil && w.rec.left > 0 {
		// Any attempt that left a trace may be recovered at any time: a
		// reader met one of its intents, the home leader scanned its
		// records after a change of leader, a contending proposer met its
		// lock.
		for slot, gh := range w.ghosts {
			recoverable := w.sc.recoverable == 0 || w.sc.recoverable&(1<<slot) != 0
			if recoverable && gh.started && w.rec.recovered&(1<<slot) == 0 && w.traced(slot) {
				out = append(out, transition{kind: startRecovery, index: slot})
			}
		}
	}
	if w.sc.clockStep && !w.late {
		out = append(out, transition{kind: clockStep})
	}
	for i := range forgets {
		out = append(out, transition{kind: forgetTombstone, index: i})
	}
	return out
}

// take returns the world after tr, checked.
func (w *world) take(tr transition, forgets []forgetting) *world {
	n := w.clone()
	switch tr.kind {
	case deliverOK:
		n.deliver(tr.index, true, true, false)
	case deliverAmbiguous:
		n.ambiguous--
		n.faults--
		n.deliver(tr.index, true, false, false)
	case deliverLost:
		n.lost--
		n.faults--
		n.deliver(tr.index, false, false, false)
	case deliverTwice:
		n.dups--
		n.faults--
		n.deliver(tr.index, true, true, true)
	case startRetry:
		s := &n.coords[tr.index]
		s.retry = false
		n.stepCoord(tr.index, Start{Txn: n.sc.attemptID(tr.index, s.c.attempts+1), Now: n.now})
	case startRecovery:
		n.startRecovery(tr.index)
	case clockStep:
		n.tick()
	case forgetTombstone:
		n.forgetPass(forgets[tr.index], true)
	}
	n.checkInvariants()
	return n
}

func (w *world) describe(tr transition, forgets []forgetting) string {
	switch tr.kind {
	case deliverOK, deliverAmbiguous, deliverLost, deliverTwice:
		how := [...]string{"deliver", "deliver, answer lost:", "lose", "deliver, keep a duplicate:"}[tr.kind]
		return fmt.Sprintf("%s %s", how, describeMessage(w.net[tr.index]))
	case startRetry:
		return fmt.Sprintf("coordinator %d starts its next attempt", tr.index)
	case startRecovery:
		return fmt.Sprintf("recoverer starts on %s", w.sc.slotTxn(tr.index))
	case clockStep:
		return "the clock passes the early deadlines"
	case forgetTombstone:
		return fmt.Sprintf("the garbage collector forgets what it may of %s", forgets[tr.index].txn)
	}
	return "?"
}

// step is one step of the current path, kept to print a violation's
// trace.
type step struct {
	from    *world
	tr      transition
	forgets []forgetting
}

// explorer walks the state graph depth first, visiting each state once.
type explorer struct {
	sc          *scenario
	visited     map[[2]uint64]struct{}
	finished    map[[2]uint64]struct{} // the crashed states checked by finish
	transitions int
	quiescent   int
	maxDepth    int
	path        []step
	buf         []byte
	// covered counts what the run reached, so that the test can tell a
	// run that explored the interesting cases from one that never got
	// there.
	covered map[string]int
	// limit, if positive, stops the run after that many states: for
	// measuring a scenario, or sampling a deep one (TXN_STATE_LIMIT).
	limit int
	// rand, if set, shuffles the order in which the steps from a state
	// are explored (TXN_EXHAUSTIVE_SEED): a run stopped by limit then
	// samples another part of the graph. A full run visits the same
	// states in any order.
	rand *rand.Rand
}

func newExplorer(sc *scenario) *explorer {
	e := &explorer{sc: sc, visited: map[[2]uint64]struct{}{}, finished: map[[2]uint64]struct{}{}, covered: map[string]int{}}
	if n, err := strconv.Atoi(os.Getenv("TXN_STATE_LIMIT")); err == nil {
		e.limit = n
	}
	if seed, err := strconv.ParseUint(os.Getenv("TXN_EXHAUSTIVE_SEED"), 10, 64); err == nil {
		e.rand = rand.New(rand.NewPCG(seed, seed))
	}
	return e
}

func (e *explorer) run() error {
	w, err := newWorld(e.sc)
	if err != nil {
		return err
	}
	if w.violation != "" {
		return fmt.Errorf("initial state: %s", w.violation)
	}
	var h [2]uint64
	h, e.buf = w.hash(e.buf)
	e.visited[h] = struct{}{}
	return e.visit(w)
}

// visit explores from w. The recursion is as deep as the longest path
// without a repeated state: tens of steps.
func (e *explorer) visit(w *world) error {
	e.maxDepth = max(e.maxDepth, len(e.path))
	if w.settled() {
		if err := e.checkSettled(w); err != nil {
			return err
		}
	}
	var forgets []forgetting
	if w.sc.gc && w.late {
		forgets = w.forgettable()
	}
	trs := w.transitions(forgets)
	if e.rand != nil {
		e.rand.Shuffle(len(trs), func(i, j int) { trs[i], trs[j] = trs[j], trs[i] })
	}
	for _, tr := range trs {
		n := w.take(tr, forgets)
		e.transitions++
		e.path = append(e.path, step{w, tr, forgets})
		if n.violation != "" {
			return e.failure(w, n.violation, n)
		}
		var h [2]uint64
		h, e.buf = n.hash(e.buf)
		if _, seen := e.visited[h]; !seen {
			e.visited[h] = struct{}{}
			if e.limit > 0 && len(e.visited) >= e.limit {
				return fmt.Errorf("state limit %d reached after %d transitions, %d quiescent states; reached %v", e.limit, e.transitions, e.quiescent, e.covered)
			}
			e.cover(w, n, tr)
			if err := e.visit(n); err != nil {
				return err
			}
		}
		e.path = e.path[:len(e.path)-1]
	}
	return nil
}

// checkSettled checks a state where only answers are in flight: the
// actors still waiting may hear them (the exploration goes on from w),
// or crash now, which is checked here.
func (e *explorer) checkSettled(w *world) error {
	e.quiescent++
	f := w.crashPending()
	if f.violation == "" {
		// Many states crash into the same one: check each once.
		var h [2]uint64
		h, e.buf = f.hash(e.buf)
		if _, seen := e.finished[h]; seen {
			return nil
		}
		e.finished[h] = struct{}{}
		f = f.finish()
	}
	if f.violation != "" {
		return e.failure(w, "at quiescence, with the waiting actors crashed: "+f.violation, f)
	}
	return nil
}

func (e *explorer) cover(w, n *world, tr transition) {
	for slot := range n.ghosts {
		a, b := w.ghosts[slot], n.ghosts[slot]
		if b.acked && !a.acked {
			e.covered["acked"]++
		}
		if b.toldAbort && !a.toldAbort {
			e.covered["told aborted"]++
		}
	}
	if w.rec.r != nil && n.rec.r == nil {
		e.covered["recovered "+w.rec.r.outcome.String()]++
	}
	switch tr.kind {
	case startRetry:
		e.covered["retry"]++
	case forgetTombstone:
		e.covered["forgotten"]++
	}
	if r := n.answered; r != nil {
		switch {
		case r.Busy:
			e.covered["busy"]++
		case r.Refusal.Reason == RefusedCondition:
			e.covered["condition failed"]++
		case r.Refusal.Reason == RefusedConflict:
			e.covered["wait-die refusal"]++
		case r.Refusal.Reason == RefusedPrevented:
			e.covered["prevented"]++
		case r.Refusal.Reason == RefusedExpired:
			e.covered["expired"]++
		}
	}
}

func (e *explorer) failure(before *world, violation string, after *world) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\n\nsteps from the initial state:\n", violation)
	for i, s := range e.path {
		fmt.Fprintf(&sb, "%4d. %s\n", i+1, s.from.describe(s.tr, s.forgets))
	}
	fmt.Fprintf(&sb, "\nstate before the last step:\n%s\nstate after:\n%s", before, after)
	return errors.New(sb.String())
}

// TestExhaustiveFindsPlantedBugs checks that the explorer notices a
// broken protocol, and shows what the fix in Recoverer step 3 prevents.
func TestExhaustiveFindsPlantedBugs(t *testing.T) {
	for _, tc := range []struct {
		name string
		bug  plantedBug
		// want lists substrings, one of which the violation found has.
		want []string
		// seed, if not 0, shuffles the order of the steps: one that finds
		// the violation in a few states.
		seed uint64
	}{
		// PREVENT's refusals read as PREPARED: a recoverer commits what a
		// group refused.
		{"prevent-lies", preventLies, []string{"aborted though every vote is prepared", "I1", "I2"}, 0},
		// Design §5's Recover(t) as written: record absent, so abort, even
		// though the FINALIZE found STAGING: the proposer may have seen
		// every vote PREPARED and acked.
		{"design-recover", designRecover, []string{"I2", "I1", "contradicts the group's vote"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := &scenario{name: tc.name, groups: []GroupID{1, 2, 3}, specs: twoByTwo(), cfg: modelConfig(1), recoveries: 1, recoverable: 1 << 1, plantedBug: tc.bug}
			e := newExplorer(sc)
			if tc.seed != 0 {
				e.rand = rand.New(rand.NewPCG(tc.seed, tc.seed))
			}
			err := e.run()
			if err == nil {
				t.Fatal("the explorer found no violation")
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			t.Logf("found after %d states: %s", len(e.visited), first)
			if testing.Verbose() && os.Getenv("TXN_TRACE") != "" {
				t.Log(err)
			}
			if !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(first, w) }) {
				t.Errorf("found %q, want a violation with one of %q", first, tc.want)
			}
		})
	}
}
