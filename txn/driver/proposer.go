package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/txn"
)

// ProposerConfig configures a Proposer.
type ProposerConfig struct {
	// Node tells this proposer's transaction ids from every other
	// proposer's: it must be unique among the proposers of a rack.
	Node uint32
	// Groups reaches the groups' leaders.
	Groups Groups
	// Clock is the node's hybrid logical clock; nil makes one.
	Clock       *Clock
	Coordinator txn.CoordinatorConfig
	Recoverer   txn.RecovererConfig
	// RequestTimeout bounds one request to a group (default 2s): past
	// it, the outcome is unknown and the state machine resends.
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Proposer commits transactions and recovers those of others. It is safe
// for concurrent use; each transaction and recovery runs in goroutines
// of its own until it is done, or until Close.
type Proposer struct {
	cfg     ProposerConfig
	clock   *Clock
	log     *slog.Logger
	counter atomic.Uint32

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	runs   sync.WaitGroup

	mu sync.Mutex
	// recovering holds a channel per running recovery, closed when it
	// ends.
	recovering map[txn.TxnID]chan struct{}
}

// NewProposer returns a proposer.
func NewProposer(cfg ProposerConfig) (*Proposer, error) {
	if cfg.Groups == nil {
		return nil, errors.New("txn proposer: no Groups")
	}
	if cfg.Clock == nil {
		cfg.Clock = NewClock(nil)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The state machines check their configs; try one now rather than
	// failing every transaction later.
	if _, err := txn.NewCoordinator(cfg.Coordinator, txn.Spec{Writes: []txn.GroupWrite{{Group: 1, Write: txn.Write{Key: "k"}}}}); err != nil {
		return nil, fmt.Errorf("txn proposer: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Proposer{
		cfg: cfg, clock: cfg.Clock, log: cfg.Logger,
		ctx: ctx, cancel: cancel,
		recovering: map[txn.TxnID]chan struct{}{},
	}, nil
}

// Close stops every transaction and recovery and waits for them. A
// transaction not yet decided is reported unknown; others recover it
// past its deadline.
func (p *Proposer) Close() {
	// Under mu, so that no run starts after the cancel (start checks).
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.runs.Wait()
}

// newTxnID returns an id no other attempt of any proposer has.
func (p *Proposer) newTxnID() (txn.TxnID, txn.Timestamp) {
	now := p.clock.Now()
	return txn.TxnID{HLC: uint64(now), Node: p.cfg.Node, Counter: p.counter.Add(1)}, now
}

// ErrClosed is returned by Commit after Close.
var ErrClosed = errors.New("txn proposer closed")

// Commit runs spec as one transaction and returns its outcome: Committed,
// Aborted (the Report's Refusal says why: a failed condition, or
// contention that outlasted the retries), or Unknown with an error when
// ctx ended or the proposer closed before the outcome was known; an
// unknown transaction may still commit, and is recovered by others past
// its deadline if it does not.
func (p *Proposer) Commit(ctx context.Context, spec txn.Spec) (txn.Report, error) {
	return p.commit(ctx, spec, false)
}

// CommitResolved is Commit, but returns a commit only once every
// participant has installed the writes (the leaders applied the
// RESOLVEs): a reader of a group's state that does not look for locks
// (a decoded view kept beside the participant) then sees them. It costs
// one round more than Commit.
func (p *Proposer) CommitResolved(ctx context.Context, spec txn.Spec) (txn.Report, error) {
	return p.commit(ctx, spec, true)
}

func (p *Proposer) commit(ctx context.Context, spec txn.Spec, resolved bool) (txn.Report, error) {
	c, err := txn.NewCoordinator(p.cfg.Coordinator, spec)
	if err != nil {
		return txn.Report{}, fmt.Errorf("txn: %w", err)
	}
	r, err := p.start(c)
	if err != nil {
		return txn.Report{}, err
	}
	id, now := p.newTxnID()
	r.post(txn.Start{Txn: id, Now: now})
	select {
	case rep := <-r.reports:
		if !resolved || rep.Status != txn.StatusCommitted {
			return rep, nil
		}
		select {
		case <-r.done:
			if !c.Resolved() {
				// Stopped by Close before every participant answered.
				return rep, fmt.Errorf("txn %s committed; not yet installed everywhere: %w", rep.Txn, ErrClosed)
			}
			return rep, nil
		case <-ctx.Done():
			return rep, fmt.Errorf("txn %s committed; not yet installed everywhere: %w", rep.Txn, context.Cause(ctx))
		}
	case <-ctx.Done():
		r.post(txn.Cancel{Now: p.clock.Now()})
		// The cancel may come after the outcome.
		rep := <-r.reports
		if rep.Status != txn.StatusUnknown {
			return rep, nil
		}
		return rep, fmt.Errorf("txn %s: outcome unknown: %w", rep.Txn, context.Cause(ctx))
	}
}

// Recover finishes t's transaction unless a recovery of it already runs
// here, and returns a channel closed when that recovery ends.
func (p *Proposer) Recover(target txn.RecoveryTarget) <-chan struct{} {
	p.mu.Lock()
	if done, ok := p.recovering[target.Txn]; ok {
		p.mu.Unlock()
		return done
	}
	done := make(chan struct{})
	p.recovering[target.Txn] = done
	p.mu.Unlock()
	end := func() {
		p.mu.Lock()
		delete(p.recovering, target.Txn)
		p.mu.Unlock()
		close(done)
	}
	rec, err := txn.NewRecoverer(p.cfg.Recoverer, target)
	if err != nil {
		p.log.Error("txn: cannot recover", "txn", target.Txn, "err", err)
		end()
		return done
	}
	r, err := p.start(rec)
	if err != nil {
		end() // closed
		return done
	}
	go func() {
		<-r.done
		end()
	}()
	r.post(txn.Start{Txn: target.Txn, Now: p.clock.Now()})
	return done
}

// Read reads key in group g linearizably. A key under the write lock of
// a transaction is not read until that transaction is resolved: it may
// have committed already. The lock is waited for until its holder's
// deadline and then recovered.
func (p *Proposer) Read(ctx context.Context, g txn.GroupID, key string) (txn.ReadResult, error) {
	for attempt := 0; ; attempt++ {
		res, err := p.cfg.Groups.Read(ctx, g, key)
		if err != nil {
			return txn.ReadResult{}, err
		}
		h := res.Intent
		if h == nil {
			return res, nil
		}
		wait := p.cfg.Coordinator.Backoff(attempt)
		if h.Expired || h.Deadline <= p.clock.Now() {
			done := p.Recover(txn.RecoveryTarget{Txn: h.Txn, Home: h.Home, Participants: h.Participants, Deadline: h.Deadline})
			select {
			case <-done:
				continue
			case <-ctx.Done():
			}
		} else {
			select {
			case <-time.After(wait):
				continue
			case <-ctx.Done():
			}
		}
		return txn.ReadResult{}, fmt.Errorf("txn group %d: read %q: locked by %s: %w", g, key, h.Txn, context.Cause(ctx))
	}
}

// machine is a Coordinator or a Recoverer.
type machine interface {
	Step(txn.Event) ([]txn.Action, error)
	Done() bool
}

// run drives one state machine: it steps the machine with the events its
// actions bring back, one at a time, until the machine is done.
type run struct {
	p *Proposer
	m machine

	mu      sync.Mutex
	queue   []txn.Event
	ended   bool
	wake    chan struct{}
	reports chan txn.Report // buffered: a machine reports once
	done    chan struct{}
}

func (p *Proposer) start(m machine) (*run, error) {
	r := &run{p: p, m: m, wake: make(chan struct{}, 1), reports: make(chan txn.Report, 1), done: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return nil, ErrClosed
	}
	p.runs.Add(1)
	go r.loop()
	return r, nil
}

// post queues an event; it never blocks, and drops events after the end.
func (r *run) post(ev txn.Event) {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return
	}
	r.queue = append(r.queue, ev)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *run) loop() {
	defer r.p.runs.Done()
	defer close(r.done)
	// actx ends the machine's requests and timers when it is done.
	actx, cancel := context.WithCancel(r.p.ctx)
	defer cancel()
	closing := r.p.ctx.Done()
	for !r.m.Done() {
		select {
		case <-r.wake:
		case <-closing:
			closing = nil
			r.post(txn.Cancel{Now: r.p.clock.Now()})
			continue
		}
		r.mu.Lock()
		evs := r.queue
		r.queue = nil
		r.mu.Unlock()
		for _, ev := range evs {
			if r.m.Done() {
				break
			}
			acts, err := r.m.Step(ev)
			if err != nil {
				r.p.log.Error("txn: state machine refused an event", "event", fmt.Sprintf("%T", ev), "err", err)
			}
			for _, a := range acts {
				r.act(actx, a)
			}
		}
	}
	r.mu.Lock()
	r.ended = true
	r.mu.Unlock()
	// A machine stopped by Cancel before it started never reported.
	select {
	case r.reports <- txn.Report{Status: txn.StatusUnknown}:
	default:
	}
}

// act carries out one action; the I/O runs in goroutines that post the
// answer back.
func (r *run) act(ctx context.Context, a txn.Action) {
	p := r.p
	switch a := a.(type) {
	case txn.Send:
		go func() {
			rctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
			defer cancel()
			kind, id := a.Command.Kind(), a.Command.TxnID()
			res, err := p.cfg.Groups.Apply(rctx, a.To, a.Command)
			if err != nil {
				r.post(txn.Failed{To: a.To, Kind: kind, Txn: id, Now: p.clock.Now()})
				return
			}
			r.post(txn.Replied{From: a.To, Kind: kind, Txn: id, Result: res, Now: p.clock.Now()})
		}()
	case txn.ReadRecord:
		go func() {
			rctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
			defer cancel()
			rec, err := p.cfg.Groups.ReadRecord(rctx, a.From, a.Txn)
			if err != nil {
				r.post(txn.Failed{To: a.From, Kind: txn.KindReadRecord, Txn: a.Txn, Now: p.clock.Now()})
				return
			}
			r.post(txn.RecordRead{From: a.From, Txn: a.Txn, Record: rec, Now: p.clock.Now()})
		}()
	case txn.SetTimer:
		t := time.AfterFunc(a.After, func() { r.post(txn.TimerFired{Timer: a.Timer, Now: p.clock.Now()}) })
		context.AfterFunc(ctx, func() { t.Stop() })
	case txn.RetryLater:
		t := time.AfterFunc(a.After, func() {
			id, now := p.newTxnID()
			r.post(txn.Start{Txn: id, Now: now})
		})
		context.AfterFunc(ctx, func() { t.Stop() })
	case txn.Report:
		select {
		case r.reports <- a:
		default:
			p.log.Error("txn: a state machine reported twice", "txn", a.Txn)
		}
	case txn.RecoverHolder:
		p.Recover(a.Target)
	case txn.Recovered:
		p.log.Debug("txn: recovered", "txn", a.Txn, "outcome", a.Outcome)
	default:
		p.log.Error("txn: unknown action", "action", fmt.Sprintf("%T", a))
	}
}
