package migrate

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// The exhaustive test drives a Gate, and the gates of the primaries that
// follow it after a failover, through every interleaving of: the source's
// write in flight, its late flush and late write, the destination's first
// write and a flush after it, an operator's abort, the crash of either
// agent, a head-node failover, and the I/O the gates ask for (loads and
// commits, which land in the volume group's log at a moment of their
// own). After every step it checks:
//
//   - fencing: a write lands only while its session is the attached one
//     in the log;
//   - an acknowledged write has landed;
//   - a gate that knows the record and is not changing it agrees with
//     the log;
//
// and when nothing more can happen, liveness: every request of a live
// agent is decided, the destination's write is acknowledged unless the
// abort won, and the source is refused only if the volume moved.

const (
	srcHost = "src"
	dstHost = "dst"
)

type reqPhase int

const (
	unsent   reqPhase = iota
	waiting           // held in a gate
	inflight          // admitted write, executing at the primary
	acked
	refused
	abandoned // its agent crashed
)

type modelReq struct {
	name   string
	client int // 0 source, 1 destination
	op     Op
	after  int // index of a request that must be acked first, or -1
	phase  reqPhase
	landed bool
	id     uint64 // of the current attempt
}

type pendingCommit struct {
	target  Attachment
	base    int // log version the commit is conditioned on
	applied bool
	won     bool
}

type modelWorld struct {
	log     Attachment
	version int

	gate     *Gate
	load     bool // a load asked of the current gate is in flight
	commit   *pendingCommit
	nextID   uint64
	attempts map[uint64]int // attempt id -> request index, at the current gate

	reqs     []modelReq
	crashed  [3]bool
	sessions [3]Session

	failovers, agentCrashes int
	abortState              int // 0 not yet, 1 asked (pending), 2 done or refused, 3 waits for a load
	abortWon                bool
	backState               int // 0 not yet, 1 asked, 2 the source is prepared again

	trace []string
}

func (w *modelWorld) clone() *modelWorld {
	c := *w
	g := *w.gate
	g.held = slices.Clone(w.gate.held)
	c.gate = &g
	if w.commit != nil {
		pc := *w.commit
		c.commit = &pc
	}
	c.attempts = make(map[uint64]int, len(w.attempts))
	for k, v := range w.attempts {
		c.attempts[k] = v
	}
	c.reqs = slices.Clone(w.reqs)
	c.trace = slices.Clone(w.trace)
	return &c
}

type modelLimits struct {
	failovers, agentCrashes int
	abort                   bool
	// back: once the destination holds the volume, the operator prepares
	// the way back, and the source opens it again under a new session
	// while its old session's late write may still arrive.
	back bool
}

func newModelWorld() *modelWorld {
	// The source is attached at generation 1; the destination is prepared
	// at generation 2.
	rec := Attachment{Host: srcHost, Generation: 1, To: dstHost, ToGeneration: 2, Last: 2}
	w := &modelWorld{
		log:      rec,
		version:  1,
		gate:     NewGate(),
		attempts: map[uint64]int{},
		sessions: [3]Session{{Host: srcHost, Generation: 1}, {Host: dstHost, Generation: 2}, {Host: srcHost, Generation: 3}},
	}
	w.reqs = []modelReq{
		{name: "src write", client: 0, op: Write, after: -1},
		{name: "src late flush", client: 0, op: Flush, after: -1},
		{name: "src late write", client: 0, op: Write, after: -1},
		{name: "dst first write", client: 1, op: Write, after: -1},
		{name: "dst flush", client: 1, op: Flush, after: 3},
		{name: "src write after coming back", client: 2, op: Write, after: -2},
	}
	return w
}

func (w *modelWorld) step(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf(format, args...))
}

func (w *modelWorld) fail(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s\ntrace:\n  %s", fmt.Sprintf(format, args...), strings.Join(w.trace, "\n  "))
}

// apply carries out a gate's actions as the driver would.
func (w *modelWorld) apply(t *testing.T, acts Actions) {
	t.Helper()
	if acts.Load {
		if w.load {
			w.fail(t, "a second load asked while one is in flight")
		}
		w.load = true
	}
	if acts.Commit != nil {
		if w.commit != nil {
			w.fail(t, "a second commit asked while one is in flight")
		}
		w.commit = &pendingCommit{target: *acts.Commit, base: w.version}
	}
	for _, r := range acts.Release {
		i, ok := w.attempts[r.ID]
		if !ok {
			w.fail(t, "release of unknown request %d", r.ID)
		}
		delete(w.attempts, r.ID)
		w.decided(t, i, r.Verdict)
	}
}

// decided records a verdict on request i's current attempt.
func (w *modelWorld) decided(t *testing.T, i int, v Verdict) {
	t.Helper()
	r := &w.reqs[i]
	w.step("  %s: %v", r.name, v)
	switch v {
	case Proceed:
		if r.op == Write {
			r.phase = inflight
			w.attempts[r.id] = i
			return
		}
		r.phase = acked
	case Hold:
		r.phase = waiting
		w.attempts[r.id] = i
	case Refuse:
		if r.op != Write {
			w.fail(t, "%s refused: only writes are refused", r.name)
		}
		r.phase = refused
	case Retry:
		r.phase = unsent
	}
	if w.crashed[r.client] && r.phase != inflight {
		r.phase = abandoned
	}
}

func (w *modelWorld) check(t *testing.T) {
	t.Helper()
	for _, r := range w.reqs {
		if r.phase == acked && r.op == Write && !r.landed {
			w.fail(t, "%s acknowledged but never landed", r.name)
		}
	}
	if rec, ok := w.gate.Known(); ok && !w.gate.busy && rec != w.log {
		w.fail(t, "gate holds %v, the log %v", rec, w.log)
	}
}

// moves lists the steps possible from w, each as a function applying it to
// a clone.
func (w *modelWorld) moves(lim modelLimits) []func(*testing.T, *modelWorld) {
	var out []func(*testing.T, *modelWorld)
	for i := range w.reqs {
		r := w.reqs[i]
		if r.after == -2 && w.backState != 2 {
			continue
		}
		if r.phase == unsent && !w.crashed[r.client] && (r.after < 0 || w.reqs[r.after].phase == acked || w.reqs[r.after].phase == refused) {
			out = append(out, func(t *testing.T, w *modelWorld) {
				r := &w.reqs[i]
				w.nextID++
				r.id = w.nextID
				w.step("send %s", r.name)
				v, acts := w.gate.Admit(Request{ID: r.id, Session: w.sessions[r.client], Op: r.op})
				w.decided(t, i, v)
				w.apply(t, acts)
			})
		}
		if r.phase == inflight {
			out = append(out, func(t *testing.T, w *modelWorld) {
				r := &w.reqs[i]
				w.step("%s completes", r.name)
				w.land(t, i)
				delete(w.attempts, r.id)
				r.phase = acked
				if w.crashed[r.client] {
					r.phase = abandoned
				}
				w.apply(t, w.gate.Done())
			})
		}
	}
	if w.load {
		out = append(out, func(t *testing.T, w *modelWorld) {
			w.step("load returns %v", w.log)
			w.load = false
			w.apply(t, w.gate.Loaded(w.log))
		})
	}
	if c := w.commit; c != nil {
		if !c.applied {
			out = append(out, func(t *testing.T, w *modelWorld) {
				c := w.commit
				c.applied = true
				if c.base == w.version {
					c.won = true
					w.log = c.target
					w.version++
					w.step("commit lands: %v", w.log)
				} else {
					w.step("commit loses its condition")
				}
			})
		} else {
			out = append(out, func(t *testing.T, w *modelWorld) {
				w.step("commit outcome reaches the primary: %v", w.log)
				w.commit = nil
				w.apply(t, w.gate.Finished(w.log))
				w.changeEnded()
			})
		}
	}
	if lim.abort && (w.abortState == 0 || w.abortState == 3 && w.gate.known) {
		out = append(out, func(t *testing.T, w *modelWorld) {
			w.step("operator aborts")
			_, acts, err := w.gate.Begin(Change{Kind: Abort})
			switch err {
			case nil:
				w.abortState = 1
			case ErrUnknown:
				// The admin path loads, and tries again once loaded.
				w.abortState = 3
				w.apply(t, w.gate.RequestLoad())
				return
			default:
				w.abortState = 2
				w.step("  abort: %v", err)
			}
			w.apply(t, acts)
		})
	}
	if lim.back && w.backState == 0 && w.log.Host == dstHost && w.gate.known && !w.gate.busy {
		out = append(out, func(t *testing.T, w *modelWorld) {
			w.step("operator prepares the way back")
			_, acts, err := w.gate.Begin(Change{Kind: Prepare, Host: srcHost})
			if err != nil {
				w.fail(t, "prepare back: %v", err)
			}
			w.backState = 1
			w.apply(t, acts)
		})
	}
	if w.failovers < lim.failovers {
		out = append(out, func(t *testing.T, w *modelWorld) { w.failover(t, false) })
		out = append(out, func(t *testing.T, w *modelWorld) { w.failover(t, true) })
	}
	if w.agentCrashes < lim.agentCrashes {
		for c := 0; c < 3; c++ {
			if !w.crashed[c] {
				out = append(out, func(t *testing.T, w *modelWorld) { w.crashAgent(t, c) })
			}
		}
	}
	return out
}

// changeEnded records how the operator's pending change (an abort, or
// preparing the way back) ended, once the log shows it.
func (w *modelWorld) changeEnded() {
	if w.abortState == 1 {
		w.abortState = 2
		w.abortWon = w.log.To == ""
	}
	if w.backState == 1 {
		w.backState = 0
		if w.log.To == srcHost {
			w.backState = 2
		}
	}
}

// land makes request i's write part of the volume.
func (w *modelWorld) land(t *testing.T, i int) {
	t.Helper()
	r := &w.reqs[i]
	// The model's own rule, not Attachment.Attached: the check must not
	// share the code it checks.
	s := w.sessions[r.client]
	if s.Host != w.log.Host || s.Generation != w.log.Generation {
		w.fail(t, "%s of %v landed while the log holds %v", r.name, s, w.log)
	}
	r.landed = true
}

// failover kills the primary; its executing writes land (landInFlight)
// or are lost, a new primary is promoted (which changes the record's
// version), and every agent resends what it has not had answered.
func (w *modelWorld) failover(t *testing.T, landInFlight bool) {
	w.failovers++
	w.step("primary fails over (writes in flight land: %v)", landInFlight)
	for i := range w.reqs {
		r := &w.reqs[i]
		if r.phase == inflight && landInFlight {
			w.land(t, i)
		}
		if r.phase == inflight || r.phase == waiting {
			r.phase = unsent
			if w.crashed[r.client] {
				r.phase = abandoned
			}
		}
	}
	if w.commit != nil && !w.commit.applied {
		w.commit.applied = true // can no longer land: the version moves on
	}
	w.commit = nil
	w.changeEnded()
	w.version++
	w.gate, w.load = NewGate(), false
	w.attempts = map[uint64]int{}
}

// crashAgent ends an agent: what it has in flight gets no answer, and its
// held requests leave the gate as their streams end.
func (w *modelWorld) crashAgent(t *testing.T, c int) {
	w.agentCrashes++
	w.crashed[c] = true
	w.step("agent %d crashes", c)
	for i := range w.reqs {
		r := &w.reqs[i]
		if r.client != c {
			continue
		}
		switch r.phase {
		case waiting:
			w.gate.Cancel(r.id)
			delete(w.attempts, r.id)
			r.phase = abandoned
		case unsent:
			r.phase = abandoned
		}
	}
}

// quiescent checks liveness once nothing more can happen.
func (w *modelWorld) quiescent(t *testing.T) {
	t.Helper()
	if len(w.gate.held) != 0 {
		w.fail(t, "requests still held at the end: %v", w.gate.held)
	}
	moved := w.log.Host == dstHost || w.log.Generation >= 3
	for _, r := range w.reqs {
		if w.crashed[r.client] || r.after == -2 && w.backState != 2 {
			continue
		}
		switch r.phase {
		case acked:
		case refused:
			if r.client == 0 && !moved {
				w.fail(t, "%s refused though the volume never moved", r.name)
			}
			if r.client == 1 && !w.abortWon && w.log.Generation < 3 {
				w.fail(t, "%s refused though no abort won and the volume did not come back", r.name)
			}
			if r.client == 2 && !w.abortWon {
				w.fail(t, "%s refused though no abort won", r.name)
			}
		default:
			w.fail(t, "%s undecided at the end (phase %d)", r.name, r.phase)
		}
	}
	if !w.crashed[1] && !w.abortWon && !moved {
		w.fail(t, "the destination wrote without the volume moving")
	}
}

// key identifies a state for the search: two paths that reach equal
// states need not both go on.
func (w *modelWorld) key() string {
	var b strings.Builder
	g := w.gate
	fmt.Fprintf(&b, "%v|%d|%v %v %v %d %d %d %v %v %v %v|", w.log, w.version, g.rec, g.known, g.loading,
		g.loadsStarted-g.loadsDone, g.inflight, 0, g.busy, g.draining, g.committed, g.target)
	for _, h := range g.held {
		mark := uint64(0)
		if h.mark > g.loadsDone {
			mark = h.mark - g.loadsDone
		}
		fmt.Fprintf(&b, "h%d/%d,", w.attempts[h.req.ID], mark)
	}
	fmt.Fprintf(&b, "|%v", w.load)
	if w.commit != nil {
		fmt.Fprintf(&b, "|c%v %v %v %v", w.commit.target, w.commit.base, w.commit.applied, w.commit.won)
	}
	for _, r := range w.reqs {
		fmt.Fprintf(&b, "|%d%v", r.phase, r.landed)
	}
	fmt.Fprintf(&b, "|%v %d %d %d %v %d", w.crashed, w.failovers, w.agentCrashes, w.abortState, w.abortWon, w.backState)
	return b.String()
}

func explore(t *testing.T, w *modelWorld, lim modelLimits, seen map[string]bool) {
	k := w.key()
	if seen[k] {
		return
	}
	seen[k] = true
	ms := w.moves(lim)
	if len(ms) == 0 {
		w.quiescent(t)
		return
	}
	for _, m := range ms {
		c := w.clone()
		m(t, c)
		c.check(t)
		explore(t, c, lim, seen)
	}
}

// The two largest searches (a quarter of a million states, a minute with
// the race detector) run under `make soak`, or with MIGRATE_DEEP=1.
func deepSearches() bool { return os.Getenv("MIGRATE_DEEP") != "" }

func TestEveryInterleavingOfAHandoff(t *testing.T) {
	limits := []modelLimits{
		{},
		{abort: true},
		{failovers: 1},
		{agentCrashes: 1},
		{failovers: 1, agentCrashes: 1},
		{abort: true, failovers: 1},
		{back: true},
		{back: true, failovers: 1, agentCrashes: 1},
	}
	if deepSearches() {
		limits = append(limits, modelLimits{abort: true, failovers: 2, agentCrashes: 2}, modelLimits{back: true, abort: true, failovers: 2})
	}
	for _, lim := range limits {
		t.Run(fmt.Sprintf("failovers=%d,crashes=%d,abort=%v,back=%v", lim.failovers, lim.agentCrashes, lim.abort, lim.back), func(t *testing.T) {
			t.Parallel()
			seen := map[string]bool{}
			explore(t, newModelWorld(), lim, seen)
			t.Logf("%d distinct states", len(seen))
		})
	}
}
