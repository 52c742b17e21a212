package headnode

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	for _, p := range n.peers() {
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

// DrainHeadNode moves every group's leadership off the named head node
// (answered there, forwarded from anywhere else), after marking it drained
// in the directory so that no group's leadership is handed back to it; or,
// with undo, ends the drain.
func (a *adminServer) DrainHeadNode(ctx context.Context, req *ballastpb.DrainHeadNodeRequest) (*ballastpb.DrainHeadNodeResponse, error) {
	n := a.node
	target, ok := n.peer(req.HeadNode)
	addrs := target.Addresses
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no head node %q in the rack", req.HeadNode)
	}
	if req.Undo || req.HeadNode == n.cfg.ID {
		if _, err := n.applyIn(ctx, consensus.DirectoryGroup, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SetDraining{
			SetDraining: &ballastpb.SetDrainingCommand{HeadNode: req.HeadNode, Draining: !req.Undo},
		}}); err != nil {
			return nil, err
		}
		if req.Undo {
			n.log.Info("drain ended", "head_node", req.HeadNode)
			return &ballastpb.DrainHeadNodeResponse{}, nil
		}
	}
	if req.HeadNode != n.cfg.ID {
		c, err := n.pool.Get(addrs)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "head node %s: %v", req.HeadNode, err)
		}
		return ballastpb.NewAdminClient(c).DrainHeadNode(ctx, req)
	}
	var led []uint64
	for _, g := range n.cons.Status() {
		if g.State == raft.Leader {
			led = append(led, g.Group)
		}
	}
	if err := n.cons.Drain(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "drain %s: %v", n.cfg.ID, err)
	}
	n.log.Info("drained: leads no consensus group", "moved", led)
	return &ballastpb.DrainHeadNodeResponse{Moved: led}, nil
}

// volumeUsage counts what this node's copy of v holds.
func (n *Node) volumeUsage(v *ballastpb.Volume) (*ballastpb.VolumeUsage, error) {
	used, inJournal, err := n.blocks.Usage(v.Id, (v.SizeBytes+blockSize-1)/blockSize)
	if err != nil {
		return nil, fmt.Errorf("usage of volume %s: %w", v.Name, err)
	}
	return &ballastpb.VolumeUsage{UsedBytes: used * blockSize, JournalBytes: inJournal * blockSize, HeadNode: n.cfg.ID}, nil
}
