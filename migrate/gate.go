package migrate

import (
	"errors"
	"fmt"
)

// Session identifies who sends a request: the host an agent serves and
// the generation under which it opened the volume. The zero Session is a
// client that names no host (tools, benchmarks); it may write only a
// volume that is attached to no host.
type Session struct {
	Host       string
	Generation uint64
}

// Attachment is a volume's attachment record.
type Attachment struct {
	// Host may write the volume under Generation; "" when detached.
	Host       string
	Generation uint64
	// To is the prepared destination of a migration ("" when none); its
	// first write or flush makes it the attached host under ToGeneration.
	To           string
	ToGeneration uint64
	// Last is the highest generation ever issued for the volume. A
	// generation is issued once, so a session at or below Last that is
	// neither attached nor prepared can never write again.
	Last uint64
}

// Attached says whether s is the session that may write now.
func (a Attachment) Attached(s Session) bool {
	if a.Host == "" {
		return s.Host == ""
	}
	return s.Host == a.Host && s.Generation == a.Generation
}

// Destination says whether s is the prepared destination.
func (a Attachment) Destination(s Session) bool {
	return a.To != "" && s.Host == a.To && s.Generation == a.ToGeneration
}

// SessionFor is the session an agent on host opens the volume under,
// and false when the volume is neither attached nor migrating to host.
func (a Attachment) SessionFor(host string) (Session, bool) {
	switch {
	case host == "":
		return Session{}, false
	case a.Host == host:
		return Session{Host: host, Generation: a.Generation}, true
	case a.To == host:
		return Session{Host: host, Generation: a.ToGeneration}, true
	}
	return Session{}, false
}

func (a Attachment) String() string {
	s := "detached"
	if a.Host != "" {
		s = fmt.Sprintf("attached to %s (generation %d)", a.Host, a.Generation)
	}
	if a.To != "" {
		s += fmt.Sprintf(", migrating to %s (generation %d)", a.To, a.ToGeneration)
	}
	return s
}

// Op is the kind of a request as the Gate sees it. Trims and zeroes are
// writes.
type Op int

const (
	Read Op = iota
	Write
	Flush
)

// Request is one client request at the primary.
type Request struct {
	ID      uint64
	Session Session
	Op      Op
}

// Verdict is what becomes of a request.
type Verdict int

const (
	// Proceed: serve it. A write that proceeds must be reported with Done
	// when it has completed, whatever its outcome.
	Proceed Verdict = iota
	// Hold: wait; a later Actions.Release decides it.
	Hold
	// Refuse: the session may not write (it handed the volume over, was
	// detached, or never held it).
	Refuse
	// Retry: the head node lost track of the record (a change whose
	// outcome it does not know, or it is no longer primary); the client
	// should send the request again, as for a moved primary.
	Retry
)

func (v Verdict) String() string {
	switch v {
	case Proceed:
		return "proceed"
	case Hold:
		return "hold"
	case Refuse:
		return "refuse"
	case Retry:
		return "retry"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Release decides a held request.
type Release struct {
	ID      uint64
	Verdict Verdict
}

// Actions is what the driver must do after a call.
type Actions struct {
	// Load: read the record linearizably and call Loaded.
	Load bool
	// Commit: commit this record in place of the current one (if the
	// record still is what the Gate holds), then call Finished with the
	// record as it then is, or Failed if the outcome cannot be learned.
	Commit *Attachment
	// Release decides held requests.
	Release []Release
}

func (a *Actions) merge(b Actions) {
	a.Load = a.Load || b.Load
	if b.Commit != nil {
		a.Commit = b.Commit
	}
	a.Release = append(a.Release, b.Release...)
}

// ChangeKind is an administrative change of the attachment.
type ChangeKind int

const (
	// Prepare makes Host the migration's destination: it may open the
	// volume and read, and its first write or flush switches over.
	Prepare ChangeKind = iota
	// Abort drops the prepared destination before the switchover.
	Abort
	// SwitchNow switches over to Host at once (preparing it first).
	SwitchNow
	// Attach attaches a detached volume to Host.
	Attach
	// Detach ends the attachment: no host may write.
	Detach
)

// Change is an administrative change.
type Change struct {
	Kind ChangeKind
	Host string
}

// Errors of Begin.
var (
	// ErrBusy: another change is being committed; try again.
	ErrBusy = errors.New("migrate: another attachment change is in progress")
	// ErrUnknown: the Gate has not loaded the record; load and try again.
	ErrUnknown = errors.New("migrate: the attachment record is not loaded")
	// ErrRefused: the change does not apply to the record as it is.
	ErrRefused = errors.New("migrate: change refused")
)

type held struct {
	req Request
	// mark > 0: the request waits for the load of that number (one
	// started after it arrived), as its session is newer than any the
	// Gate knows.
	mark uint64
}

// Gate admits requests to a volume at its primary and sequences the
// changes of its attachment. It is not safe for concurrent use.
type Gate struct {
	rec   Attachment
	known bool

	loading      bool
	loadsStarted uint64
	loadsDone    uint64

	inflight int // admitted writes not yet Done

	busy      bool // a change is being committed
	draining  bool // ... and it changes the host: writes wait
	committed bool // its Commit action was given
	target    Attachment

	held []held
}

// NewGate returns a Gate that knows nothing of the record yet.
func NewGate() *Gate { return &Gate{} }

// Known says whether the record is loaded, and returns it.
func (g *Gate) Known() (Attachment, bool) { return g.rec, g.known }

// Inflight is the number of admitted writes not yet done.
func (g *Gate) Inflight() int { return g.inflight }

// Admit decides a new request.
func (g *Gate) Admit(r Request) (Verdict, Actions) {
	h := held{req: r}
	var acts Actions
	v := g.evaluate(&h, &acts)
	if v == Hold {
		g.held = append(g.held, h)
	}
	return v, acts
}

// evaluate decides one request against what the Gate knows; a held
// request may get a mark or start the switchover.
func (g *Gate) evaluate(h *held, acts *Actions) Verdict {
	r := h.req
	if r.Op == Read {
		// Reads change nothing; the destination reads before it owns
		// the volume.
		return Proceed
	}
	if !g.known {
		g.awaitLoad(h, acts)
		return Hold
	}
	if g.rec.Attached(r.Session) {
		if g.busy && g.draining && r.Op == Write {
			return Hold
		}
		if r.Op == Write {
			g.inflight++
		}
		// A flush is a barrier over acknowledged writes, which are
		// durable already.
		return Proceed
	}
	if g.busy {
		return Hold
	}
	if g.rec.Destination(r.Session) {
		g.target = Attachment{Host: g.rec.To, Generation: g.rec.ToGeneration, Last: g.rec.Last}
		g.begin(true, acts)
		return Hold
	}
	if r.Session.Host != "" && r.Session.Generation > g.rec.Last {
		// Newer than anything known: a change the Gate has not seen
		// (after a failover, say). Decide on a load begun after now.
		if h.mark == 0 || h.mark > g.loadsDone {
			g.awaitLoad(h, acts)
			return Hold
		}
	}
	if r.Op == Flush {
		// The old host's last flush finds nothing pending: its writes
		// either were acknowledged (and are durable) or were refused.
		return Proceed
	}
	return Refuse
}

// awaitLoad marks h to wait for a load that starts after now, and starts
// one unless one is under way (h then waits for the next).
func (g *Gate) awaitLoad(h *held, acts *Actions) {
	if h.mark == 0 || h.mark <= g.loadsDone {
		h.mark = g.loadsStarted + 1
	}
	if !g.loading && h.mark > g.loadsStarted {
		g.loading = true
		g.loadsStarted++
		acts.Load = true
	}
}

// begin starts committing g.target.
func (g *Gate) begin(drain bool, acts *Actions) {
	g.busy, g.draining, g.committed = true, drain, false
	g.maybeCommit(acts)
}

func (g *Gate) maybeCommit(acts *Actions) {
	if g.busy && !g.committed && (!g.draining || g.inflight == 0) {
		g.committed = true
		t := g.target
		acts.Commit = &t
	}
}

// Done reports that an admitted write completed.
func (g *Gate) Done() Actions {
	var acts Actions
	if g.inflight > 0 {
		g.inflight--
	}
	g.maybeCommit(&acts)
	return acts
}

// Cancel forgets a held request whose client went away.
func (g *Gate) Cancel(id uint64) {
	for i, h := range g.held {
		if h.req.ID == id {
			g.held = append(g.held[:i], g.held[i+1:]...)
			return
		}
	}
}

// RequestLoad asks for a load unless one is under way.
func (g *Gate) RequestLoad() Actions {
	var acts Actions
	if !g.loading {
		g.loading = true
		g.loadsStarted++
		acts.Load = true
	}
	return acts
}

// Loaded gives the record as a linearizable read found it, answering the
// load the Gate asked for.
func (g *Gate) Loaded(rec Attachment) Actions {
	if g.loading {
		g.loading = false
		g.loadsDone = g.loadsStarted
	}
	if !g.busy {
		g.rec, g.known = rec, true
	}
	return g.reevaluate()
}

// Begin starts an administrative change. It fails with ErrUnknown before
// the record is loaded, ErrBusy during another change, and ErrRefused
// when the change does not apply; noop means the record already is what
// the change asks for.
func (g *Gate) Begin(c Change) (noop bool, acts Actions, err error) {
	if !g.known {
		return false, acts, ErrUnknown
	}
	if g.busy {
		return false, acts, ErrBusy
	}
	rec := g.rec
	next := rec
	drain := false
	switch c.Kind {
	case Prepare:
		if err := migrationTarget(c.Host, rec); err != nil {
			return false, acts, err
		}
		if c.Host == rec.To {
			return true, acts, nil
		}
		next.Last++
		next.To, next.ToGeneration = c.Host, next.Last
	case Abort:
		if rec.To == "" {
			return false, acts, fmt.Errorf("%w: no migration is prepared (%s)", ErrRefused, rec)
		}
		next.To, next.ToGeneration = "", 0
	case SwitchNow:
		if c.Host != "" && c.Host == rec.Host {
			return true, acts, nil
		}
		if err := migrationTarget(c.Host, rec); err != nil {
			return false, acts, err
		}
		if c.Host != rec.To {
			next.Last++
			next.ToGeneration = next.Last
		}
		next.Host, next.Generation, next.To, next.ToGeneration = c.Host, next.ToGeneration, "", 0
		drain = true
	case Attach:
		switch {
		case c.Host == "":
			return false, acts, fmt.Errorf("%w: no host", ErrRefused)
		case c.Host == rec.Host:
			return true, acts, nil
		case rec.Host != "":
			return false, acts, fmt.Errorf("%w: the volume is attached to %s (detach or migrate it)", ErrRefused, rec.Host)
		}
		next.Last++
		next = Attachment{Host: c.Host, Generation: next.Last, Last: next.Last}
		drain = true
	case Detach:
		if rec.Host == "" && rec.To == "" {
			return true, acts, nil
		}
		next.Last++
		next = Attachment{Generation: next.Last, Last: next.Last}
		drain = true
	default:
		return false, acts, fmt.Errorf("%w: unknown change %d", ErrRefused, c.Kind)
	}
	g.target = next
	g.begin(drain, &acts)
	return false, acts, nil
}

// migrationTarget checks that host may become the destination of a
// migration of a volume attached as rec.
func migrationTarget(host string, rec Attachment) error {
	switch {
	case host == "":
		return fmt.Errorf("%w: no destination host", ErrRefused)
	case rec.Host == "":
		return fmt.Errorf("%w: the volume is not attached (attach it instead)", ErrRefused)
	case host == rec.Host:
		return fmt.Errorf("%w: the volume is attached to %s already", ErrRefused, host)
	}
	return nil
}

// Finished ends the change under way with the record as it is now: the
// committed target, or, when the commit lost to something else, the
// record that won.
func (g *Gate) Finished(rec Attachment) Actions {
	g.busy, g.draining, g.committed = false, false, false
	g.rec, g.known = rec, true
	return g.reevaluate()
}

// Failed ends the change under way without knowing its outcome, or tells
// the Gate that this node no longer serves the volume: held requests are
// sent back to be retried and the record must be loaded again.
func (g *Gate) Failed() Actions {
	g.busy, g.draining, g.committed = false, false, false
	g.known = false
	var acts Actions
	for _, h := range g.held {
		acts.Release = append(acts.Release, Release{ID: h.req.ID, Verdict: Retry})
	}
	g.held = nil
	return acts
}

// reevaluate decides what it can of the held requests.
func (g *Gate) reevaluate() Actions {
	var acts Actions
	hs := g.held
	g.held = nil
	for i := range hs {
		h := hs[i]
		v := g.evaluate(&h, &acts)
		if v == Hold {
			g.held = append(g.held, h)
			continue
		}
		acts.Release = append(acts.Release, Release{ID: h.req.ID, Verdict: v})
	}
	return acts
}

// Changing returns the record the change under way commits, and whether
// one is under way.
func (g *Gate) Changing() (Attachment, bool) { return g.target, g.busy }

// ValidateHost checks a host name: 1 to 63 letters, digits, '.', '_' or
// '-'.
func ValidateHost(host string) error {
	if host == "" || len(host) > 63 {
		return fmt.Errorf("%w: host name %q must be 1 to 63 characters", ErrRefused, host)
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: host name %q may hold only letters, digits, '.', '_' and '-'", ErrRefused, host)
		}
	}
	return nil
}
