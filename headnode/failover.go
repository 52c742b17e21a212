package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// Failover (the decisions are volume/lease.go's; this is their I/O).
//
// Every head node runs a leaseKeeper: every RenewEvery it renews, in one
// command to each volume group, the lease of every volume of that group it
// is primary of; the command also shows the group's leader the node is
// alive, as do the leader's health probes of it. A refused renewal deposes the node's primary of that volume
// for good: it stops, and its writes in flight fail as "not primary", for
// the agent to send again to the new primary.
//
// Each volume group's leader runs a promoter: it times every lease and every
// node's renewals on its own clock (fed from the FSM as renewals apply),
// promotes a mirrored secondary when a primary's lease has surely ended,
// and replaces a secondary whose node has been silent as long. The new
// primary mirrors the volume to the new secondary, which then reports in
// sync and may be promoted in turn.
//
// Every lease decision reads Config.LeaseClock, which counts time the
// machine was suspended (package clock says why); logs keep time.Now.

// leaseKeeper holds this node's primary leases.
type leaseKeeper struct {
	node  *Node
	cfg   volume.LeaseConfig
	clock clock.Clock
	log   *slog.Logger
	kick  chan struct{}

	mu      sync.RWMutex
	leases  map[uint64]*volume.PrimaryLease
	changed chan struct{} // closed and replaced whenever a lease changes
}

func newLeaseKeeper(n *Node, cfg volume.LeaseConfig, c clock.Clock) *leaseKeeper {
	return &leaseKeeper{
		node:    n,
		cfg:     cfg,
		clock:   c,
		log:     n.log,
		kick:    make(chan struct{}, 1),
		leases:  map[uint64]*volume.PrimaryLease{},
		changed: make(chan struct{}),
	}
}

func (k *leaseKeeper) current(id uint64) (*ballastpb.Volume, bool) {
	return k.node.volumeByID(id)
}

// awaitLease implements authority.
func (k *leaseKeeper) awaitLease(ctx context.Context, vol, epoch uint64, wait time.Duration) error {
	// Every read and every batch asks: the answer is almost always yes, at
	// the cost of a read lock, with no timer.
	if held, err := k.check(vol, epoch); held || err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// A primary that just took over need not wait for the tick.
	k.renewSoon()
	for {
		k.mu.RLock()
		changed := k.changed
		k.mu.RUnlock()
		if held, err := k.check(vol, epoch); held || err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w: no lease on volume %d at epoch %d: %w", ErrStopped, vol, epoch, ctx.Err())
		}
	}
}

// check says whether this node holds the volume's lease at epoch now, or
// (an error) never will again.
func (k *leaseKeeper) check(vol, epoch uint64) (held bool, err error) {
	// PrimaryLease is not safe for concurrent use: its readers share the
	// read lock, renew changes it under the write lock.
	k.mu.RLock()
	defer k.mu.RUnlock()
	l := k.leases[vol]
	switch {
	case l == nil:
	case l.Epoch() == epoch && l.Valid(k.clock.Now()):
		return true, nil
	case l.Epoch() == epoch && l.Deposed():
		return false, fmt.Errorf("%w: deposed as primary of volume %d at epoch %d", ErrStopped, vol, epoch)
	case l.Epoch() > epoch:
		return false, fmt.Errorf("%w: volume %d moved past epoch %d", ErrStopped, vol, epoch)
	}
	return false, nil
}

func (k *leaseKeeper) renewSoon() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// holdsCopy implements authority.
func (k *leaseKeeper) holdsCopy(vol *ballastpb.Volume, node string) bool {
	g, ok := k.node.groupOfVolume(vol.Id)
	if !ok {
		return true // the caller finds the volume gone
	}
	return g.fsm.HoldsCopy(vol, node)
}

// incarnation implements authority.
func (k *leaseKeeper) incarnation(vol *ballastpb.Volume, node string) (string, bool) {
	g, ok := k.node.groupOfVolume(vol.Id)
	if !ok {
		return "", false
	}
	return g.fsm.Incarnation(node)
}

// needsCopy says whether node, a secondary of vol, must be sent a full
// copy before it may be promoted.
func needsCopy(a authority, vol *ballastpb.Volume, node string) bool {
	return slices.Contains(vol.CatchingUp, node) || !a.holdsCopy(vol, node)
}

// reportInSync implements authority. It keeps trying until the group
// has the report, or the report no longer matters (the volume moved to
// another epoch, or the node is no longer catching up): a report given
// up would leave a full copy unpromotable until the next full sync.
func (k *leaseKeeper) reportInSync(vol *ballastpb.Volume, node, incarnation string) {
	go func() {
		cmd := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SecondaryInSync{
			SecondaryInSync: &ballastpb.SecondaryInSyncCommand{VolumeId: vol.Id, Epoch: vol.Epoch, Node: node, Incarnation: incarnation},
		}}
		backoff := 500 * time.Millisecond
		group := vol.Group
		for attempt := 1; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
			_, err := k.node.applyIn(ctx, group, cmd)
			cancel()
			if err == nil {
				k.log.Info("secondary in sync", "volume", vol.Name, "secondary", node, "epoch", vol.Epoch)
				return
			}
			if status.Code(err) == codes.Aborted || k.node.isClosed() {
				return
			}
			cur, ok := k.node.volumeByID(vol.Id)
			if !ok || cur.Epoch != vol.Epoch || !needsCopy(k, cur, node) {
				return
			}
			group = cur.Group // a move takes the record to another group
			k.log.Warn("report secondary in sync", "volume", vol.Name, "secondary", node, "attempt", attempt, "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, 5*time.Second)
		}
	}()
}

func (k *leaseKeeper) run(ctx context.Context) {
	t := time.NewTicker(k.cfg.RenewEvery())
	defer t.Stop()
	for {
		k.renew(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-k.kick:
		}
	}
}

// renew sends one renewal of every lease this node should hold: one
// command to each group holding volumes it is primary of, in parallel.
// (Whether a node is alive, for choosing and replacing secondaries, the
// groups' leaders also learn from their health probes of it, so groups
// where it leads nothing are spared a command a second.)
func (k *leaseKeeper) renew(ctx context.Context) {
	me := k.node.cfg.ID
	start := time.Now() // for the log
	now := k.clock.Now()
	cmds := map[uint64]*ballastpb.RenewLeasesCommand{}
	ids := map[uint64]uint64{}
	groupOf := map[uint64]uint64{}
	k.mu.Lock()
	keep := map[uint64]bool{}
	for _, g := range k.node.groups {
		for _, v := range g.fsm.List() {
			if v.Primary != me {
				continue
			}
			if cmds[g.id] == nil {
				cmds[g.id] = &ballastpb.RenewLeasesCommand{Holder: me, Incarnation: k.node.incarnation}
			}
			l := k.leases[v.Id]
			if l == nil || l.Epoch() < v.Epoch {
				l = volume.NewPrimaryLease(k.cfg, v.Epoch)
				k.leases[v.Id] = l
			}
			keep[v.Id] = true
			if l.Deposed() || l.Epoch() != v.Epoch {
				continue
			}
			ids[v.Id] = l.StartRenewal(now)
			groupOf[v.Id] = g.id
			cmds[g.id].Leases = append(cmds[g.id].Leases, &ballastpb.RenewLeaseCommand{VolumeId: v.Id, Epoch: v.Epoch})
		}
	}
	for id, l := range k.leases {
		// Leases of volumes we no longer lead are dropped once they can
		// no longer be valid, so a late primary still sees them lapse.
		if !keep[id] && !l.Valid(now) {
			delete(k.leases, id)
		}
	}
	k.mu.Unlock()

	type outcome struct {
		res volume.ApplyResult
		err error
	}
	results := make(map[uint64]outcome, len(cmds))
	var mu sync.Mutex
	var wg sync.WaitGroup
	rctx, cancel := context.WithTimeout(ctx, k.cfg.Duration)
	for gid, cmd := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := k.node.applyIn(rctx, gid, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{RenewLeases: cmd}})
			mu.Lock()
			results[gid] = outcome{res, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	cancel()
	took := time.Since(start)

	var deposed []uint64
	var failed []error
	k.mu.Lock()
	for id, rid := range ids {
		l := k.leases[id]
		out := results[groupOf[id]]
		switch {
		case l == nil:
		case out.err != nil:
			l.Failed(rid)
		case slices.Contains(out.res.Refused, id):
			l.Refused(rid)
			deposed = append(deposed, id)
		case slices.Contains(out.res.Moved, id):
			// Renewed in the wrong group: the next round renews where the
			// volume lives now.
			l.Failed(rid)
		default:
			l.Renewed(rid)
		}
	}
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
	for gid, out := range results {
		if out.err != nil && len(cmds[gid].Leases) > 0 {
			failed = append(failed, fmt.Errorf("group %d: %w", gid, out.err))
		}
	}
	// A primary whose renewals fail or crawl stops acknowledging writes
	// once its lease runs out: say so, it is the first thing to look for
	// when writes stall.
	switch {
	case ctx.Err() != nil:
	case len(failed) > 0:
		k.log.Warn("lease renewal failed", "volumes", len(ids), "took", took, "err", errors.Join(failed...))
	case took > k.cfg.Duration/2 && len(ids) > 0:
		k.log.Warn("lease renewal slow", "volumes", len(ids), "took", took)
	}
	for _, id := range deposed {
		k.log.Warn("deposed as primary", "volume_id", id)
	}
	k.node.stopStalePrimaries()
}

// stopStalePrimaries stops the primary state of every volume this node no
// longer leads at that epoch; its writes in flight fail as "not primary".
func (n *Node) stopStalePrimaries() {
	var stale []*primaryVolume
	n.mu.Lock()
	for id, pv := range n.primaries {
		v, ok := n.volumeByID(id)
		if ok && v.Primary == n.cfg.ID && v.Epoch == pv.vol.Epoch {
			if _, err := n.leases.check(id, pv.vol.Epoch); err == nil {
				continue
			}
		}
		if !ok {
			continue // deleted: dropLoop reclaims it
		}
		delete(n.primaries, id)
		stale = append(stale, pv)
	}
	n.mu.Unlock()
	for _, pv := range stale {
		pv.log.Info("no longer primary; stopping", "epoch", pv.vol.Epoch)
		go pv.Close()
	}
}

// promoter makes a volume group leader's failover decisions for the
// group's volumes.
type promoter struct {
	node  *Node
	group *vgroup
	cfg   volume.LeaseConfig
	clock clock.Clock
	log   *slog.Logger

	mu    sync.Mutex
	term  uint64 // the term of the current table; 0: not leader
	since clock.Instant
	table *volume.LeaseTable
	seen  map[string]clock.Instant // head node -> last renewal applied
}

// renewed is the group's OnLeasesRenewed hook (raft's FSM goroutine).
func (p *promoter) renewed(holder string, vols []uint64) {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.table == nil {
		return
	}
	p.seen[holder] = now
	for _, v := range vols {
		p.table.Renewed(v, now)
	}
}

// added is the group's OnVolumeAdded hook (raft's FSM goroutine): a
// volume created or moved into the group after this leader's table began
// has its lease timed from now, not from the table's start.
func (p *promoter) added(vol uint64) {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.table != nil {
		p.table.Renewed(vol, now)
	}
}

// runPromoters steps the promoter of every group, on the groups this
// node leads.
func (n *Node) runPromoters(ctx context.Context) {
	every(ctx, 200*time.Millisecond, func() {
		for _, g := range n.groups {
			g.promoter.step(ctx, g.promoter.clock.Now())
		}
	})
}

// step runs one round of decisions at now, if this node leads.
func (p *promoter) step(ctx context.Context, now clock.Instant) {
	r := p.group.raft
	if r.State() != raft.Leader {
		p.mu.Lock()
		p.term, p.table = 0, nil
		p.mu.Unlock()
		return
	}
	term := currentTerm(r)
	// What the group and the directory hold, and which peers answer, is
	// read before p.mu is taken, never under it: the state machine calls
	// renewed and added while it holds its own lock, so reading it under
	// p.mu would have the two wait for each other, and the group would
	// apply nothing more on its leader for good. The hooks run under the
	// state machine's lock, so a volume listed here has had added run.
	peers := p.node.peers()
	answering := map[string]bool{}
	for _, peer := range peers {
		answering[peer.ID] = p.node.peerAnswers(peer)
	}
	vols := p.group.fsm.List()
	p.mu.Lock()
	if p.term != term {
		// A new leader has seen no renewals: every lease counts as
		// renewed now, every node as seen now.
		p.term, p.since = term, now
		p.table = volume.NewLeaseTable(p.cfg, now)
		p.seen = map[string]clock.Instant{}
		p.mu.Unlock()
		return
	}
	noteAnswering(p.seen, peers, func(peer Peer) bool { return answering[peer.ID] }, now)
	live, silent := classifyPeers(peers, p.node.cfg.ID, p.seen, p.since, now, p.cfg)
	var promote []*ballastpb.Volume
	for _, v := range vols {
		if p.table.Expired(v.Id, now) {
			promote = append(promote, v)
		}
	}
	p.mu.Unlock()

	for _, v := range promote {
		plan, err := volume.PlanPromotionOf(v, live, func(node string) bool { return p.group.fsm.HoldsCopy(v, node) })
		if err != nil {
			p.log.Warn("primary's lease expired; cannot fail over", "volume", v.Name, "primary", v.Primary, "err", err)
			p.forget(v.Id, now) // ask again after another lease period
			continue
		}
		res, err := p.group.apply(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PromoteVolume{PromoteVolume: plan}})
		if err != nil {
			p.log.Warn("promote", "volume", v.Name, "err", err)
			continue
		}
		p.forget(v.Id, now)
		p.log.Warn("failed over", "volume", v.Name, "from", v.Primary, "to", res.Volume.Primary,
			"secondaries", res.Volume.Secondaries, "epoch", res.Volume.Epoch)
	}
	promoted := map[uint64]bool{}
	for _, v := range promote {
		promoted[v.Id] = true
	}
	for _, v := range p.group.fsm.List() {
		if promoted[v.Id] {
			continue
		}
		for _, s := range v.Secondaries {
			if !silent[s] {
				continue
			}
			plan, err := volume.PlanReplacement(v, s, live)
			if err != nil {
				continue
			}
			res, err := p.group.apply(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ReplaceSecondary{ReplaceSecondary: plan}})
			if err != nil {
				p.log.Warn("replace secondary", "volume", v.Name, "secondary", s, "err", err)
				continue
			}
			p.log.Warn("replaced lost secondary", "volume", v.Name, "lost", s, "new", plan.Add, "epoch", res.Volume.Epoch)
			break
		}
	}
}

// classifyPeers tells, from when each head node was last heard from (seen:
// a renewal applied in the group, or an answered health probe; since is
// when this leader took office, before which it cannot have heard any),
// which nodes are live (heard within a lease: they may be chosen as
// secondaries) and which are silent (may be replaced as secondaries).
// Replacing a secondary costs a full copy and leaves the volume unable to
// fail over until it is done, so a node must be silent for two lease
// periods: renewals that crawl under load, or a probe or two lost, are a
// slow node, not a dead one.
func classifyPeers(peers []Peer, self string, seen map[string]clock.Instant, since, now clock.Instant,
	cfg volume.LeaseConfig) (live []string, silent map[string]bool) {
	silent = map[string]bool{}
	for _, peer := range peers {
		last := seen[peer.ID]
		if last.Before(since) {
			last = since
		}
		if peer.ID == self || now.Sub(last) <= cfg.Duration {
			live = append(live, peer.ID)
			continue
		}
		if now.Sub(last) > 2*(cfg.Duration+cfg.Margin) {
			silent[peer.ID] = true
		}
	}
	return live, silent
}

// noteAnswering records as heard from now every peer that answers the
// health probes of one of its network paths: a node that is primary of
// nothing in a group sends that group no renewals.
func noteAnswering(seen map[string]clock.Instant, peers []Peer, answers func(Peer) bool, now clock.Instant) {
	for _, p := range peers {
		if answers(p) {
			seen[p.ID] = now
		}
	}
}

// peerAnswers says whether any network path to a head node answers its
// health probes.
func (n *Node) peerAnswers(p Peer) bool {
	if p.ID == n.cfg.ID {
		return true
	}
	c, err := n.pool.Get(p.Addresses)
	if err != nil {
		return false
	}
	for _, ps := range c.Paths() {
		if ps.Up {
			return true
		}
	}
	return false
}

func (p *promoter) forget(vol uint64, now clock.Instant) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.table != nil {
		p.table.Forget(vol, now)
	}
}
