package headnode

import (
	"sort"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// groupStatuses reports every consensus group this node is a member of.
func (n *Node) groupStatuses() []*ballastpb.GroupStatus {
	var out []*ballastpb.GroupStatus
	for _, g := range n.cons.Status() {
		out = append(out, groupStatusProto(n.cfg.ID, g))
	}
	return out
}

func groupStatusProto(node string, g consensus.GroupStatus) *ballastpb.GroupStatus {
	gs := &ballastpb.GroupStatus{
		Group:             g.Group,
		HeadNode:          node,
		State:             g.State.String(),
		Leader:            string(g.LeaderID),
		Term:              g.Term,
		LastIndex:         g.LastLogIndex,
		CommitIndex:       g.CommitIndex,
		AppliedIndex:      g.AppliedIndex,
		LastContactMillis: g.SinceContact.Milliseconds(),
	}
	for _, s := range g.Servers {
		if s.Suffrage == raft.Voter {
			gs.Voters = append(gs.Voters, string(s.ID))
		}
	}
	return gs
}

// pathStatuses reports this node's network paths to every node it has a
// connection to, naming each node by its id where the rack knows it.
func (n *Node) pathStatuses() []*ballastpb.PathStatus {
	names := map[string]string{}
	for _, p := range n.cfg.Peers {
		names[strings.Join(p.Addresses, ",")] = p.ID
	}
	for _, s := range n.directory.Sleds() {
		names[strings.Join(s.Addresses, ",")] = s.Id
	}
	var out []*ballastpb.PathStatus
	for key, paths := range n.pool.Paths() {
		to, ok := names[key]
		if !ok {
			to = key
		}
		for _, p := range paths {
			ps := &ballastpb.PathStatus{From: n.cfg.ID, To: to, Address: p.Address, Up: p.Up,
				SinceUnixNanos: p.Since.UnixNano(), LastError: p.LastError}
			out = append(out, ps)
		}
	}
	sortPaths(out)
	return out
}

func sortPaths(ps []*ballastpb.PathStatus) {
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.From != b.From {
			return a.From < b.From
		}
		if a.To != b.To {
			return a.To < b.To
		}
		return a.Address < b.Address
	})
}

func sortGroups(gs []*ballastpb.GroupStatus) {
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].Group != gs[j].Group {
			return gs[i].Group < gs[j].Group
		}
		return gs[i].HeadNode < gs[j].HeadNode
	})
}
