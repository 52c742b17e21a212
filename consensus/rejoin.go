package consensus

// Rejoining after lost state
//
// raft's safety rests on every voter remembering what it stored and whom
// it voted for. A node whose directory was emptied or replaced comes back
// with neither, under the id and address its group still counts as a
// voter: hashicorp/raft would let it grant a vote in a term it already
// voted in, and let a candidate that lacks a committed entry win with the
// vote of a node that had stored the entry (the quorums no longer
// intersect). So such a member starts abstaining:
//
//  1. RejoinGroup starts it without bootstrapping (like JoinGroup), and its
//     transport answers every vote and pre-vote request with a refusal and
//     sends none of its own (its candidacies see refusals), so it neither
//     votes nor wins an election.
//     It also refuses a leadership transfer to it (TimeoutNow).
//  2. The member asks the group's leader to readmit it (Readmit, on the
//     leader): the leader waits until the member reports a log that
//     reaches the leader's last index as of the call, and returns it.
//  3. Readmitted lifts the abstention once the member's log reaches that
//     index: it then holds every entry that was committed with the help
//     of its lost log, and votes as any voter does.
//
// The configuration never changes: the member stays a voter (or a
// non-voter) throughout, and a group of three tolerates no other failure
// until it is readmitted, as it would not with the member demoted.
//
// What abstention cannot restore: the terms the lost state had voted in.
// Once readmitted, the member's term is at least its leader's; a vote the
// lost state cast in a later term, for a candidate that has not won and
// still campaigns in that term, could be cast again.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// errAbstaining refuses a leadership transfer to a member that abstains.
var errAbstaining = errors.New("consensus: member rejoining after lost state does not campaign")

// abstention relays a rejoining member's incoming RPCs to raft, answering
// vote and pre-vote requests itself with a refusal until lifted.
type abstention struct {
	localID []byte
	lifted  atomic.Bool
	in      <-chan raft.RPC
	out     chan raft.RPC
	stop    chan struct{}
	once    sync.Once
}

func newAbstention(localID string, in <-chan raft.RPC) *abstention {
	a := &abstention{localID: []byte(localID), in: in, out: make(chan raft.RPC), stop: make(chan struct{})}
	go a.relay()
	return a
}

// relay runs until close: the transport's consumer channel is never
// closed, so stop ends it.
func (a *abstention) relay() {
	for {
		var rpc raft.RPC
		select {
		case rpc = <-a.in:
		case <-a.stop:
			return
		}
		if !a.lifted.Load() && a.refuse(rpc) {
			continue
		}
		select {
		case a.out <- rpc:
		case <-a.stop:
			rpc.Respond(nil, raft.ErrRaftShutdown)
			return
		}
	}
}

// refuse answers a vote or pre-vote request with a refusal in the
// candidate's term (so the candidate does not step down), and reports
// whether it did.
func (a *abstention) refuse(rpc raft.RPC) bool {
	header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: a.localID}
	switch req := rpc.Command.(type) {
	case *raft.RequestVoteRequest:
		rpc.Respond(&raft.RequestVoteResponse{RPCHeader: header, Term: req.Term}, nil)
	case *raft.RequestPreVoteRequest:
		rpc.Respond(&raft.RequestPreVoteResponse{RPCHeader: header, Term: req.Term}, nil)
	case *raft.TimeoutNowRequest:
		// Campaigning at once would bump its term and depose the leader
		// for an election it may not win.
		rpc.Respond(nil, errAbstaining)
	default:
		return false
	}
	return true
}

func (a *abstention) close() { a.once.Do(func() { close(a.stop) }) }

// RejoinGroup starts this node's member of a group it was a member of
// before it lost its state. With state on disk it restarts from it, as
// StartGroup does. Without, it starts as JoinGroup does and abstains from
// every election until Readmitted: see "Rejoining after lost state".
func (n *Node) RejoinGroup(groupID uint64, fsm raft.FSM) (*raft.Raft, error) {
	return n.start(groupID, fsm, nil, true)
}

// Abstaining says whether this node's member of a group rejoined after
// lost state and is not yet readmitted.
func (n *Node) Abstaining(groupID uint64) bool {
	g, err := n.group(groupID)
	return err == nil && g.trans.abstaining()
}

// Readmitted lifts the abstention of this node's member of a group once
// its log reaches index, the index Readmit returned on the leader. It
// does nothing for a member that does not abstain.
func (n *Node) Readmitted(ctx context.Context, groupID uint64, index uint64) error {
	g, err := n.group(groupID)
	if err != nil {
		return fmt.Errorf("consensus: readmitted to group %d: %w", groupID, err)
	}
	if !g.trans.abstaining() {
		return nil
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for g.r.LastIndex() < index {
		select {
		case <-ctx.Done():
			return fmt.Errorf("consensus: readmitted to group %d: log at %d, want %d: %w", groupID, g.r.LastIndex(), index, context.Cause(ctx))
		case <-t.C:
		}
	}
	g.trans.abst.lifted.Store(true)
	return nil
}

// Readmit takes back server id of a group, which rejoined after losing
// its state (RejoinGroup): it waits until the member reports a log that
// reaches the leader's last index as of the call, and returns that index,
// which the member's Readmitted waits for in turn. Every entry committed
// with the help of the member's lost log is in that prefix, so from then
// on the member's vote is as good as any voter's; meanwhile its
// acknowledgements count toward commits as usual, since it acknowledges
// only what it stored. It must run on the group's leader; elsewhere it
// fails with a *NotLeaderError. The configuration does not change.
func (n *Node) Readmit(ctx context.Context, groupID uint64, id raft.ServerID) (uint64, error) {
	index, err := n.readmit(ctx, groupID, id)
	if err != nil {
		return 0, fmt.Errorf("consensus: readmit %s to group %d: %w", id, groupID, err)
	}
	return index, nil
}

func (n *Node) readmit(ctx context.Context, groupID uint64, id raft.ServerID) (uint64, error) {
	if id == "" {
		return 0, errors.New("server id is required")
	}
	g, err := n.leaderOf(groupID)
	if err != nil {
		return 0, err
	}
	servers, err := configuration(g.r)
	if err != nil {
		return 0, err
	}
	if _, ok := findServer(servers, id); !ok {
		return 0, fmt.Errorf("%s is not in the configuration", id)
	}
	if id == raft.ServerID(n.cfg.NodeID) {
		// A leader has the whole log (and an abstaining member never
		// leads).
		return g.r.LastIndex(), nil
	}
	// Only reports from after the call count: the member's earlier ones
	// may be its lost state's.
	g.trans.forget(id)
	index := g.r.LastIndex()
	if err := g.waitCaughtUp(ctx, groupID, id, index); err != nil {
		return 0, fmt.Errorf("%s %w", id, err)
	}
	return index, nil
}
