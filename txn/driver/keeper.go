package driver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/txn"
)

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	// Proposer runs the recoveries and reaches the groups.
	Proposer *Proposer
	// Members lists this node's members of txn groups; the keeper works
	// on those that lead their group.
	Members func() []Member
	// Interval is how often the keeper looks (default 1s).
	Interval time.Duration
	// Linger is how long after its deadline a finished transaction's
	// votes and record are kept (default 10s): a late duplicate of one
	// of its commands still finds them, and after that the groups' log
	// time refuses it anyway.
	Linger time.Duration
}

// Keeper does the background work of a node's group leaders: it recovers
// the transactions whose proposer is late or gone, from the STAGING
// records a home holds past their deadline (as a new home leader must)
// and from the locks held past their deadline; and it forgets finished
// transactions: FORGET_VOTE at every participant once the home's record
// is final, then FORGET_RECORD at the home.
type Keeper struct {
	cfg  KeeperConfig
	stop context.CancelFunc
	done chan struct{}
}

// StartKeeper starts a keeper; Stop ends it.
func StartKeeper(cfg KeeperConfig) *Keeper {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Linger <= 0 {
		cfg.Linger = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{cfg: cfg, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				k.Pass(ctx)
			}
		}
	}()
	return k
}

// Stop ends the keeper and waits for its pass to finish.
func (k *Keeper) Stop() {
	k.stop()
	<-k.done
}

// Pass looks once at every group this node leads.
func (k *Keeper) Pass(ctx context.Context) {
	p := k.cfg.Proposer
	now := p.clock.Now()
	var gc sync.WaitGroup
	for _, m := range k.cfg.Members() {
		g := m.Host.Group()
		if !m.Node.Leads(m.Host.RaftGroup()) {
			continue
		}
		for _, h := range m.Host.Holders() {
			if h.Deadline <= now {
				p.Recover(txn.RecoveryTarget{Txn: h.Txn, Home: h.Home, Participants: h.Participants, Deadline: h.Deadline})
			}
		}
		for _, rec := range m.Host.Records() {
			target := txn.RecoveryTarget{Txn: rec.Txn, Home: g, Participants: rec.Participants, Deadline: rec.Deadline}
			switch {
			case rec.State == txn.RecordStaging && rec.Deadline <= now:
				p.Recover(target)
			case rec.State != txn.RecordStaging && rec.Deadline.Add(k.cfg.Linger) <= now:
				gc.Add(1)
				go func() {
					defer gc.Done()
					k.forget(ctx, target)
				}()
			}
		}
	}
	gc.Wait()
}

// forget removes a finished transaction's votes, then its record. A
// participant that still holds its locks is resolved by a recovery
// first; what fails is tried again at the next pass.
func (k *Keeper) forget(ctx context.Context, t txn.RecoveryTarget) {
	p := k.cfg.Proposer
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	for _, g := range t.Participants {
		res, err := p.cfg.Groups.Apply(ctx, g, &txn.ForgetVote{Txn: t.Txn, Now: p.clock.Now()})
		switch {
		case err != nil:
			return
		case errors.Is(res.Err, txn.ErrNotForgettable) && res.Vote == txn.VotePrepared:
			p.Recover(t)
			return
		case res.Err != nil:
			p.log.Warn("txn: cannot forget a vote", "txn", t.Txn, "group", g, "err", res.Err)
			return
		}
	}
	res, err := p.cfg.Groups.Apply(ctx, t.Home, &txn.ForgetRecord{Txn: t.Txn, Now: p.clock.Now()})
	if err == nil && res.Err != nil {
		p.log.Warn("txn: cannot forget a record", "txn", t.Txn, "group", t.Home, "err", res.Err)
	}
}
