package consensus

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// Apply proposes data, a command for the group's FSM, on this node's
// member of groupID and returns what the FSM's Apply answered. It must
// run on the group's leader; elsewhere it fails with a *NotLeaderError.
//
// If ctx ends or the leadership is lost (raft.ErrLeadershipLost) while
// the command is in flight, it may still apply: commands proposed this
// way must be idempotent, or be made safe to retry by their FSM.
func (n *Node) Apply(ctx context.Context, groupID uint64, data []byte) (any, error) {
	// A command whose caller has gone is not proposed.
	timeout, err := enqueueTimeout(ctx)
	if err != nil {
		return nil, err
	}
	g, err := n.leaderOf(groupID)
	if err != nil {
		return nil, err
	}
	f := g.r.Apply(data, timeout)
	if err := await(ctx, f); err != nil {
		return nil, g.raftError(groupID, err)
	}
	return f.Response(), nil
}

// ReadFence remembers, for one member's FSM, the last term in which a
// Barrier completed on it: from then on the FSM holds every command
// committed before the term began, and a linearizable read only has to
// confirm the leadership. The zero value is ready; keep one per FSM.
type ReadFence struct {
	barrierTerm atomic.Uint64
}

// Linearize returns once this node's member of groupID has applied every
// command committed before the call, with this node still leading: a
// read of its FSM that follows reflects every write that completed
// before Linearize was called, on any node. fence must belong to the
// FSM that will be read. Elsewhere than on the leader it fails with a
// *NotLeaderError.
//
// A new leader's state may lack commands its predecessor committed, so
// the first read of each term waits for a Barrier; and since a leader may
// be deposed without knowing it yet, every read confirms the leadership
// with a quorum (VerifyLeader).
func (n *Node) Linearize(ctx context.Context, groupID uint64, fence *ReadFence) error {
	// A read whose caller has gone asks nothing of raft.
	timeout, err := enqueueTimeout(ctx)
	if err != nil {
		return err
	}
	g, err := n.leaderOf(groupID)
	if err != nil {
		return err
	}
	term := g.r.CurrentTerm()
	if fence.barrierTerm.Load() != term {
		if err := await(ctx, g.r.Barrier(timeout)); err != nil {
			return g.raftError(groupID, err)
		}
		// Concurrent reads may store an older term over a newer one; that
		// only costs the next read another barrier.
		fence.barrierTerm.Store(term)
	}
	if err := g.verifyLeader(ctx); err != nil {
		return g.raftError(groupID, err)
	}
	// A confirmation in a later term than the barrier's (this node lost
	// and won the leadership meanwhile) proves nothing about the commands
	// committed in between.
	if now := g.r.CurrentTerm(); now != term {
		return fmt.Errorf("term changed from %d to %d during the read: %w", term, now, raft.ErrLeadershipLost)
	}
	return nil
}

// Leads reports whether this node's member of groupID is the group's
// leader, as far as it knows (a deposed leader may not know yet).
func (n *Node) Leads(groupID uint64) bool {
	_, err := n.leaderOf(groupID)
	return err == nil
}
