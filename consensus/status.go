package consensus

import (
	"cmp"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// GroupStatus is what this node's member of one group knows of the group.
// Its fields are read one after the other from a running raft, so they may
// straddle a change (a new term, an entry committed in between).
type GroupStatus struct {
	Group uint64
	// State is this member's raft state: Leader, Follower, Candidate, or
	// Shutdown (a leader that removed itself shuts its member down).
	State         raft.RaftState
	LeaderID      raft.ServerID
	LeaderAddress raft.ServerAddress
	Term          uint64
	// LastLogIndex is the last index in this member's log or snapshot.
	LastLogIndex uint64
	CommitIndex  uint64
	// AppliedIndex is the last index handed to the FSM (which may not
	// have finished applying it).
	AppliedIndex uint64
	// Servers is the latest configuration this member knows, which may
	// not be committed yet. A member started with JoinGroup and not yet
	// added has none.
	Servers []raft.Server
	// LastContact is when this member last heard from a leader: zero if
	// it never has. SinceContact is the time since then, when Status ran;
	// 0 on the leader, and when there was no contact.
	LastContact  time.Time
	SinceContact time.Duration
}

// Status reports every group this node runs a member of, by group id.
func (n *Node) Status() []GroupStatus {
	groups := n.snapshotGroups()
	out := make([]GroupStatus, 0, len(groups))
	for id, g := range groups {
		out = append(out, groupStatus(id, g.r))
	}
	slices.SortFunc(out, func(a, b GroupStatus) int { return cmp.Compare(a.Group, b.Group) })
	return out
}

func groupStatus(id uint64, r *raft.Raft) GroupStatus {
	addr, leader := r.LeaderWithID()
	s := GroupStatus{
		Group:         id,
		State:         r.State(),
		LeaderID:      leader,
		LeaderAddress: addr,
		Term:          r.CurrentTerm(),
		LastLogIndex:  r.LastIndex(),
		CommitIndex:   r.CommitIndex(),
		AppliedIndex:  r.AppliedIndex(),
		LastContact:   r.LastContact(),
	}
	// GetConfiguration reads a copy raft keeps outside its main loop; it
	// does not fail on a running raft, and an error leaves Servers empty.
	if f := r.GetConfiguration(); f.Error() == nil {
		// The slice is raft's own copy: the caller may change its.
		s.Servers = slices.Clone(f.Configuration().Servers)
	}
	if s.State != raft.Leader && !s.LastContact.IsZero() {
		s.SinceContact = time.Since(s.LastContact)
	}
	return s
}
