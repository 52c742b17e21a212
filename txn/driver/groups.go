package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/txn"
)

// Groups reaches the leaders of txn groups. An error means the outcome
// is unknown: an Apply may have applied, and its caller resends it
// (every txn command is idempotent).
type Groups interface {
	// Apply proposes cmd on group g's leader and returns its Result.
	Apply(ctx context.Context, g txn.GroupID, cmd txn.Command) (txn.Result, error)
	// Read reads key linearizably on group g's leader.
	Read(ctx context.Context, g txn.GroupID, key string) (txn.ReadResult, error)
	// ReadRecord reads t's record linearizably on group g's leader.
	ReadRecord(ctx context.Context, g txn.GroupID, t txn.TxnID) (txn.RecordInfo, error)
}

// Member is one node's member of a txn group: the node that runs it and
// the group's state there.
type Member struct {
	Node *consensus.Node
	Host Host
}

// Local reaches the members of txn groups that run in this process: it
// tries each member of a group until one leads it, and waits for an
// election while none does. The members may come and go (Add, Remove).
type Local struct {
	mu      sync.Mutex
	members map[txn.GroupID][]Member
	// leader is the member that last led each group: the first to try.
	leader map[txn.GroupID]*consensus.Node
}

// NewLocal returns a Local without members.
func NewLocal() *Local {
	return &Local{members: map[txn.GroupID][]Member{}, leader: map[txn.GroupID]*consensus.Node{}}
}

// Add makes m reachable.
func (l *Local) Add(m Member) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := m.Host.Group()
	l.members[g] = append(l.members[g], m)
}

// Remove forgets every member that node runs (before it closes).
func (l *Local) Remove(node *consensus.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for g, ms := range l.members {
		kept := ms[:0]
		for _, m := range ms {
			if m.Node != node {
				kept = append(kept, m)
			}
		}
		l.members[g] = kept
		if l.leader[g] == node {
			delete(l.leader, g)
		}
	}
}

// errNoLeader: no member of the group leads it yet.
var errNoLeader = errors.New("no member leads the group")

// electionPoll is how often Local looks for a leader while none is known.
const electionPoll = 10 * time.Millisecond

// onLeader runs fn on the member of g that leads it, looking for the
// leader while fn fails with a *consensus.NotLeaderError or
// consensus.ErrNoGroup (neither proposed anything), until ctx ends.
func (l *Local) onLeader(ctx context.Context, g txn.GroupID, fn func(Member) error) error {
	for {
		last := errNoLeader
		for _, m := range l.candidates(g) {
			err := fn(m)
			if proposedNothing(err) {
				last = err
				continue
			}
			if err == nil {
				l.mu.Lock()
				l.leader[g] = m.Node
				l.mu.Unlock()
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("txn group %d: %w (last: %w)", g, context.Cause(ctx), last)
		case <-time.After(electionPoll):
		}
	}
}

// candidates are g's members, the last leader first.
func (l *Local) candidates(g txn.GroupID) []Member {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := make([]Member, 0, len(l.members[g]))
	for _, m := range l.members[g] {
		if m.Node == l.leader[g] {
			ms = append([]Member{m}, ms...)
		} else {
			ms = append(ms, m)
		}
	}
	return ms
}

// Apply implements Groups.
func (l *Local) Apply(ctx context.Context, g txn.GroupID, cmd txn.Command) (txn.Result, error) {
	data, err := txn.MarshalCommand(cmd)
	if err != nil {
		return txn.Result{}, fmt.Errorf("txn group %d: encode %s: %w", g, cmd.Kind(), err)
	}
	var res txn.Result
	err = l.onLeader(ctx, g, func(m Member) error {
		res, err = propose(ctx, m, data)
		return err
	})
	return res, err
}

// propose proposes an encoded command on m, which must lead its group.
func propose(ctx context.Context, m Member, cmd []byte) (txn.Result, error) {
	entry, err := m.Host.Entry(cmd)
	if err != nil {
		return txn.Result{}, err
	}
	resp, err := m.Node.Apply(ctx, m.Host.RaftGroup(), entry)
	if err != nil {
		return txn.Result{}, err
	}
	return m.Host.Result(resp)
}

// linearize returns once m's state holds every command that completed
// before the call, with m leading.
func linearize(ctx context.Context, m Member) error {
	return m.Node.Linearize(ctx, m.Host.RaftGroup(), m.Host.Fence())
}

// Read implements Groups.
func (l *Local) Read(ctx context.Context, g txn.GroupID, key string) (txn.ReadResult, error) {
	var res txn.ReadResult
	err := l.onLeader(ctx, g, func(m Member) error {
		if err := linearize(ctx, m); err != nil {
			return err
		}
		res = m.Host.Read(key)
		return nil
	})
	return res, err
}

// ReadRecord implements Groups.
func (l *Local) ReadRecord(ctx context.Context, g txn.GroupID, t txn.TxnID) (txn.RecordInfo, error) {
	var rec txn.RecordInfo
	err := l.onLeader(ctx, g, func(m Member) error {
		if err := linearize(ctx, m); err != nil {
			return err
		}
		rec = m.Host.ReadRecord(t)
		return nil
	})
	return rec, err
}

// NodeGroups reaches groups from a node that runs members of them: a
// group this node leads is served here, without a network hop; any
// other through remote.
type NodeGroups struct {
	members map[txn.GroupID]Member
	remote  Groups
}

// NewNodeGroups returns the Groups of a node running members.
func NewNodeGroups(members []Member, remote Groups) *NodeGroups {
	m := make(map[txn.GroupID]Member, len(members))
	for _, mem := range members {
		m[mem.Host.Group()] = mem
	}
	return &NodeGroups{members: m, remote: remote}
}

// leading is this node's member of g if it leads g.
func (n *NodeGroups) leading(g txn.GroupID) (Member, bool) {
	m, ok := n.members[g]
	return m, ok && m.Node.Leads(m.Host.RaftGroup())
}

// proposedNothing reports whether err says that nothing was proposed:
// the member was not, or no longer, the leader.
func proposedNothing(err error) bool {
	var nl *consensus.NotLeaderError
	return errors.As(err, &nl) || errors.Is(err, consensus.ErrNoGroup) || errors.Is(err, consensus.ErrClosed)
}

// Apply implements Groups.
func (n *NodeGroups) Apply(ctx context.Context, g txn.GroupID, cmd txn.Command) (txn.Result, error) {
	if m, ok := n.leading(g); ok {
		data, err := txn.MarshalCommand(cmd)
		if err != nil {
			return txn.Result{}, fmt.Errorf("txn group %d: encode %s: %w", g, cmd.Kind(), err)
		}
		res, err := propose(ctx, m, data)
		if !proposedNothing(err) {
			return res, err
		}
	}
	return n.remote.Apply(ctx, g, cmd)
}

// Read implements Groups.
func (n *NodeGroups) Read(ctx context.Context, g txn.GroupID, key string) (txn.ReadResult, error) {
	if m, ok := n.leading(g); ok {
		err := linearize(ctx, m)
		if err == nil {
			return m.Host.Read(key), nil
		}
		if !proposedNothing(err) {
			return txn.ReadResult{}, err
		}
	}
	return n.remote.Read(ctx, g, key)
}

// ReadRecord implements Groups.
func (n *NodeGroups) ReadRecord(ctx context.Context, g txn.GroupID, t txn.TxnID) (txn.RecordInfo, error) {
	if m, ok := n.leading(g); ok {
		err := linearize(ctx, m)
		if err == nil {
			return m.Host.ReadRecord(t), nil
		}
		if !proposedNothing(err) {
			return txn.RecordInfo{}, err
		}
	}
	return n.remote.ReadRecord(ctx, g, t)
}
