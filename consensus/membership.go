package consensus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// pollInterval is how often the waits below look at raft's state: raft
// offers no notification of a follower's progress or of a new leader that
// does not also consume the notifications other code may rely on.
const pollInterval = 10 * time.Millisecond

// drainParallel bounds how many groups Drain moves at once: each transfer
// blocks its group's writes until it ends, but a node leading a thousand
// groups must not start a thousand elections at the same instant.
const drainParallel = 16

// drainRetryDelay is how long Drain waits before it retries the groups it
// failed to move.
const drainRetryDelay = 100 * time.Millisecond

// NotLeaderError is returned by the membership and leadership methods when
// this node does not lead the group. It wraps raft.ErrNotLeader; the
// leader, if this node knows it, is where to retry.
type NotLeaderError struct {
	Group         uint64
	LeaderID      raft.ServerID
	LeaderAddress raft.ServerAddress
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return fmt.Sprintf("not the leader of group %d; leader unknown", e.Group)
	}
	return fmt.Sprintf("not the leader of group %d; leader is %s at %s", e.Group, e.LeaderID, e.LeaderAddress)
}

func (e *NotLeaderError) Unwrap() error { return raft.ErrNotLeader }

// DrainError is returned by Drain for the groups this node still leads.
type DrainError struct {
	// Groups maps every group this node could not move away to the last
	// error moving it.
	Groups map[uint64]error
}

func (e *DrainError) Error() string {
	ids := slices.Sorted(maps.Keys(e.Groups))
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("group %d: %v", id, e.Groups[id])
	}
	return fmt.Sprintf("consensus: drain: still leading %d group(s): %s", len(ids), strings.Join(parts, "; "))
}

func (e *DrainError) Unwrap() []error {
	errs := make([]error, 0, len(e.Groups))
	for _, err := range e.Groups {
		errs = append(errs, err)
	}
	return errs
}

// AddVoter adds server id at addr to a group as a voter, or updates its
// address if it is one already, and returns once the new configuration is
// committed. It must run on the group's leader; elsewhere it fails with a
// *NotLeaderError. The new server should run the group's member started
// with JoinGroup; it catches up after AddVoter returns.
//
// raft cannot cancel a change: one that ctx abandons may still be made.
func (n *Node) AddVoter(ctx context.Context, groupID uint64, id raft.ServerID, addr raft.ServerAddress) error {
	if id == "" || addr == "" {
		return fmt.Errorf("consensus: add voter to group %d: server id and address are required", groupID)
	}
	g, err := n.leaderOf(groupID)
	if err == nil {
		_, err = g.addVoter(ctx, groupID, id, addr)
	}
	if err != nil {
		return fmt.Errorf("consensus: add voter %s to group %d: %w", id, groupID, err)
	}
	return nil
}

// AddNonvoter adds server id at addr to a group as a non-voting member:
// it receives and applies the log but neither votes nor counts toward a
// commit. A server already in the configuration is left as it is. It must
// run on the group's leader; elsewhere it fails with a *NotLeaderError.
func (n *Node) AddNonvoter(ctx context.Context, groupID uint64, id raft.ServerID, addr raft.ServerAddress) error {
	if id == "" || addr == "" {
		return fmt.Errorf("consensus: add non-voter to group %d: server id and address are required", groupID)
	}
	g, err := n.leaderOf(groupID)
	if err == nil {
		var servers []raft.Server
		if servers, err = configuration(g.r); err == nil {
			if _, ok := findServer(servers, id); ok {
				return nil
			}
			var timeout time.Duration
			if timeout, err = enqueueTimeout(ctx); err == nil {
				if err = await(ctx, g.r.AddNonvoter(id, addr, 0, timeout)); err != nil {
					err = g.raftError(groupID, err)
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("consensus: add non-voter %s to group %d: %w", id, groupID, err)
	}
	return nil
}

// RemoveServer removes server id from a group and returns once the new
// configuration is committed. Removing a server that is not in the
// configuration does nothing. It must run on the group's leader; elsewhere
// it fails with a *NotLeaderError. A leader that removes itself steps down
// (and, with raft's default ShutdownOnRemove, shuts its member down). The
// removed server's member keeps running until its node stops it
// (StopGroup).
func (n *Node) RemoveServer(ctx context.Context, groupID uint64, id raft.ServerID) error {
	if id == "" {
		return fmt.Errorf("consensus: remove server from group %d: server id is required", groupID)
	}
	g, err := n.leaderOf(groupID)
	if err == nil {
		err = g.removeServer(ctx, groupID, id)
	}
	if err != nil {
		return fmt.Errorf("consensus: remove server %s from group %d: %w", id, groupID, err)
	}
	return nil
}

// MoveVoter replaces voter from with to in a group: it adds to as a voter,
// waits until to reports a log that reaches the configuration entry that
// added it, and only then removes from, so that the group never counts on
// a voter that has nothing. It must run on the group's leader; elsewhere
// it fails with a *NotLeaderError. to should run the group's member
// started with JoinGroup.
//
// If ctx ends while to catches up, to stays a voter and from is not
// removed; the error says so. MoveVoter is safe to retry: once from is gone
// and to is a voter it returns nil.
func (n *Node) MoveVoter(ctx context.Context, groupID uint64, from raft.ServerID, to raft.Server) error {
	if err := n.moveVoter(ctx, groupID, from, to, false); err != nil {
		return fmt.Errorf("consensus: move voter %s of group %d to %s: %w", from, groupID, to.ID, err)
	}
	return nil
}

// MoveVote is MoveVoter that keeps from in the group as a non-voter (it
// goes on applying the log) instead of removing it. When from is this
// node, the leader, it hands the leadership to the new voter and fails
// with a *NotLeaderError: finish the move on the new leader.
func (n *Node) MoveVote(ctx context.Context, groupID uint64, from raft.ServerID, to raft.Server) error {
	if err := n.moveVoter(ctx, groupID, from, to, true); err != nil {
		return fmt.Errorf("consensus: move the vote of %s in group %d to %s: %w", from, groupID, to.ID, err)
	}
	return nil
}

func (n *Node) moveVoter(ctx context.Context, groupID uint64, from raft.ServerID, to raft.Server, demote bool) error {
	if from == "" || to.ID == "" || to.Address == "" {
		return errors.New("server ids and the new server's address are required")
	}
	if from == to.ID {
		return errors.New("cannot move a voter to itself")
	}
	g, err := n.leaderOf(groupID)
	if err != nil {
		return err
	}
	servers, err := configuration(g.r)
	if err != nil {
		return err
	}
	fromSrv, hasFrom := findServer(servers, from)
	toSrv, hasTo := findServer(servers, to.ID)
	if demote && hasFrom && fromSrv.Suffrage != raft.Voter && hasTo && toSrv.Suffrage == raft.Voter {
		return nil // An earlier attempt finished the move.
	}
	if !hasFrom {
		if hasTo && toSrv.Suffrage == raft.Voter {
			return nil // An earlier attempt finished the move.
		}
		return fmt.Errorf("%s is not in the configuration", from)
	}
	g.trans.forget(to.ID)
	index, err := g.addVoter(ctx, groupID, to.ID, to.Address)
	if err != nil {
		return fmt.Errorf("adding %s: %w; %s not removed", to.ID, err, from)
	}
	// A leader has the whole log: only another node has to catch up (and
	// only another node's responses are tracked).
	if to.ID != raft.ServerID(n.cfg.NodeID) {
		if err := g.waitCaughtUp(ctx, groupID, to.ID, index); err != nil {
			return fmt.Errorf("%s is a voter but %w; %s not removed", to.ID, err, from)
		}
	}
	if demote && from == raft.ServerID(n.cfg.NodeID) {
		// A leader that demotes itself steps down and, with raft's
		// ShutdownOnRemove, shuts its member down: it would stop applying
		// the log it is meant to keep following. Hand the leadership to
		// the new voter first; the caller retries there (the move is
		// idempotent).
		if err := n.transfer(ctx, groupID, g, to.ID); err != nil {
			return fmt.Errorf("%s is a voter; handing it the leadership before demoting %s: %w", to.ID, from, err)
		}
		return notLeader(groupID, g.r)
	}
	if demote {
		timeout, err := enqueueTimeout(ctx)
		if err == nil {
			if err = await(ctx, g.r.DemoteVoter(from, 0, timeout)); err != nil {
				err = g.raftError(groupID, err)
			}
		}
		if err != nil {
			return fmt.Errorf("%s is a voter but demoting %s failed: %w", to.ID, from, err)
		}
		return nil
	}
	if err := g.removeServer(ctx, groupID, from); err != nil {
		return fmt.Errorf("%s is a voter but removing %s failed: %w", to.ID, from, err)
	}
	return nil
}

// TransferLeadership hands the leadership of a group to voter to, or, if
// to is empty, to the voter raft finds most up to date. It returns once
// this node sees a new leader: the one asked for, or any other voter if to
// is empty. It must run on the group's leader; elsewhere it fails with a
// *NotLeaderError.
//
// The target's election can lose to another voter's; TransferLeadership
// then fails, naming the leader, and the caller may ask that one to
// transfer again.
func (n *Node) TransferLeadership(ctx context.Context, groupID uint64, to raft.ServerID) error {
	g, err := n.leaderOf(groupID)
	if err == nil {
		err = n.transfer(ctx, groupID, g, to)
	}
	if err != nil {
		if to == "" {
			return fmt.Errorf("consensus: transfer leadership of group %d: %w", groupID, err)
		}
		return fmt.Errorf("consensus: transfer leadership of group %d to %s: %w", groupID, to, err)
	}
	return nil
}

// Drain moves away the leadership of every group this node leads, and
// returns nil once it leads none. Groups it cannot move (it is their only
// voter, or ctx ends first) come back in a *DrainError.
//
// Draining does not stop this node from being elected again: a node that
// is about to stop should stop soon after, and one that stays should
// expect to lead again.
func (n *Node) Drain(ctx context.Context) error {
	failed := map[uint64]error{}
	// unmovable holds the groups with no other voter: retrying them is
	// pointless.
	unmovable := map[uint64]bool{}
	for attempt := 0; ; attempt++ {
		leading := map[uint64]*group{}
		for id, g := range n.snapshotGroups() {
			if g.r.State() == raft.Leader {
				leading[id] = g
			}
		}
		// A group no longer led moved away, perhaps by itself.
		for id := range failed {
			if _, ok := leading[id]; !ok {
				delete(failed, id)
			}
		}
		led := map[uint64]*group{}
		for id, g := range leading {
			if !unmovable[id] {
				led[id] = g
			}
		}
		if len(led) == 0 {
			break
		}
		if err := context.Cause(ctx); err != nil {
			for id := range led {
				if failed[id] == nil {
					failed[id] = err
				}
			}
			break
		}
		retry := false
		for id, err := range n.transferAll(ctx, led, attempt) {
			switch {
			case err == nil:
				delete(failed, id)
			case errors.Is(err, errNoOtherVoter):
				unmovable[id] = true
				failed[id] = err
			default:
				failed[id] = err
				retry = true
			}
		}
		if retry {
			select {
			case <-ctx.Done():
			case <-time.After(drainRetryDelay):
			}
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &DrainError{Groups: failed}
}

// transferAll transfers the leadership of every group in led, at most
// drainParallel at once, and returns each group's error.
func (n *Node) transferAll(ctx context.Context, led map[uint64]*group, attempt int) map[uint64]error {
	var mu sync.Mutex
	results := make(map[uint64]error, len(led))
	sem := make(chan struct{}, drainParallel)
	var wg sync.WaitGroup
	for id, g := range led {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := n.drainOne(ctx, id, g, attempt)
			mu.Lock()
			results[id] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return results
}

// errNoOtherVoter means a group has no voter to hand its leadership to.
var errNoOtherVoter = errors.New("no other voter")

// drainOne moves one group's leadership away. The first attempt lets raft
// pick the most up-to-date voter; later ones go round the other voters in
// id order, so that one unreachable voter raft keeps picking cannot stall
// the drain.
func (n *Node) drainOne(ctx context.Context, groupID uint64, g *group, attempt int) error {
	servers, err := configuration(g.r)
	if err != nil {
		return err
	}
	var others []raft.ServerID
	for _, s := range servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(n.cfg.NodeID) {
			others = append(others, s.ID)
		}
	}
	if len(others) == 0 {
		return errNoOtherVoter
	}
	var to raft.ServerID
	if attempt > 0 {
		slices.Sort(others)
		to = others[(attempt-1)%len(others)]
	}
	return n.transfer(ctx, groupID, g, to)
}

// transfer asks g's raft to hand its leadership to to (any voter if
// empty) and waits until this node sees the new leader.
func (n *Node) transfer(ctx context.Context, groupID uint64, g *group, to raft.ServerID) error {
	self := raft.ServerID(n.cfg.NodeID)
	var f raft.Future
	if to == "" {
		f = g.r.LeadershipTransfer()
	} else {
		if to == self {
			return errors.New("this node already leads the group")
		}
		servers, err := configuration(g.r)
		if err != nil {
			return err
		}
		s, ok := findServer(servers, to)
		if !ok || s.Suffrage != raft.Voter {
			return fmt.Errorf("%s is not a voter of the group", to)
		}
		f = g.r.LeadershipTransferToServer(s.ID, s.Address)
	}
	if err := await(ctx, f); err != nil {
		return g.raftError(groupID, err)
	}
	return waitNewLeader(ctx, g.r, self, to)
}

// waitNewLeader waits until r knows a leader other than self: to, or any
// if to is empty. raft's transfer future succeeds as soon as this node
// stops leading; the target still has to win its election, and the wait
// for that is bounded even if ctx is not, since a group whose target lost
// elects someone else within a few election timeouts.
func waitNewLeader(ctx context.Context, r *raft.Raft, self, to raft.ServerID) error {
	rc := r.ReloadableConfig()
	bound := 5 * max(rc.ElectionTimeout, rc.HeartbeatTimeout)
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		_, id := r.LeaderWithID()
		switch {
		case id == "":
		case id == self:
			return errors.New("this node was elected again")
		case to != "" && id != to:
			return fmt.Errorf("%s was elected instead", id)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no new leader seen: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// leaderOf returns this node's member of groupID if it leads the group.
func (n *Node) leaderOf(groupID uint64) (*group, error) {
	g, err := n.group(groupID)
	if err != nil {
		return nil, err
	}
	if g.r.State() != raft.Leader {
		return nil, notLeader(groupID, g.r)
	}
	return g, nil
}

func notLeader(groupID uint64, r *raft.Raft) *NotLeaderError {
	addr, id := r.LeaderWithID()
	return &NotLeaderError{Group: groupID, LeaderID: id, LeaderAddress: addr}
}

// raftError turns raft's ErrNotLeader (the leadership moved after
// leaderOf looked) into a *NotLeaderError naming the leader.
func (g *group) raftError(groupID uint64, err error) error {
	if errors.Is(err, raft.ErrNotLeader) {
		return notLeader(groupID, g.r)
	}
	return err
}

func (g *group) addVoter(ctx context.Context, groupID uint64, id raft.ServerID, addr raft.ServerAddress) (uint64, error) {
	timeout, err := enqueueTimeout(ctx)
	if err != nil {
		return 0, err
	}
	f := g.r.AddVoter(id, addr, 0, timeout)
	if err := await(ctx, f); err != nil {
		return 0, g.raftError(groupID, err)
	}
	return f.Index(), nil
}

func (g *group) removeServer(ctx context.Context, groupID uint64, id raft.ServerID) error {
	servers, err := configuration(g.r)
	if err != nil {
		return err
	}
	if _, ok := findServer(servers, id); !ok {
		return nil
	}
	timeout, err := enqueueTimeout(ctx)
	if err != nil {
		return err
	}
	if err := await(ctx, g.r.RemoveServer(id, 0, timeout)); err != nil {
		return g.raftError(groupID, err)
	}
	return nil
}

// waitCaughtUp waits until id reports a last log index of at least index,
// while this node still leads.
func (g *group) waitCaughtUp(ctx context.Context, groupID uint64, id raft.ServerID, index uint64) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if g.r.State() != raft.Leader {
			return notLeader(groupID, g.r)
		}
		if last, ok := g.trans.peerLastLog(id); ok && last >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			last, _ := g.trans.peerLastLog(id)
			return fmt.Errorf("has not caught up (last log index %d, want %d): %w", last, index, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// configuration returns r's latest configuration (perhaps not yet
// committed).
func configuration(r *raft.Raft) ([]raft.Server, error) {
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

func findServer(servers []raft.Server, id raft.ServerID) (raft.Server, bool) {
	for _, s := range servers {
		if s.ID == id {
			return s, true
		}
	}
	return raft.Server{}, false
}

// enqueueTimeout is how long raft may wait to start a configuration
// change: until ctx's deadline, or forever (0) without one.
func enqueueTimeout(ctx context.Context) (time.Duration, error) {
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	d, ok := ctx.Deadline()
	if !ok {
		return 0, nil
	}
	timeout := time.Until(d)
	if timeout <= 0 {
		return 0, context.DeadlineExceeded
	}
	return timeout, nil
}

// await waits for f or for ctx to end. raft cannot cancel a request, so
// one that ctx abandons may still take effect; the goroutine waiting for
// it ends when raft answers, which it does for every future but
// VerifyLeader's at the latest when the group shuts down (for that one,
// see group.verifyLeader).
func await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
