package headnode

// Rack membership. A rack is founded by the head nodes every one of them is
// configured with (--peer); head nodes added later are recorded in the
// directory group, and every head node's view of the rack is the union,
// less those removed. A new head node starts with --join (its members of
// the groups wait to be added instead of founding the groups), then
// AddHeadNode makes it a non-voting member of every group: it applies
// every log and so holds every volume's record, may be chosen as a
// replica, and may take a voter's place (MoveVoter). RemoveHeadNode takes
// out a head node that votes in no group and holds no replica.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// peers returns the rack's head nodes by id: those this node was
// configured with and those added since, less those removed.
func (n *Node) peers() []Peer {
	added, removed := n.directory.HeadNodes()
	byID := map[string]Peer{}
	for _, p := range n.cfg.Peers {
		byID[p.ID] = p
	}
	for _, h := range added {
		byID[h.Id] = Peer{ID: h.Id, Addresses: h.Addresses}
	}
	for _, id := range removed {
		delete(byID, id)
	}
	out := make([]Peer, 0, len(byID))
	for _, p := range byID {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// peer returns a head node of the rack by id.
func (n *Node) peer(id string) (Peer, bool) {
	for _, p := range n.peers() {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}

func raftAddress(addresses []string) raft.ServerAddress {
	return raft.ServerAddress(strings.Join(addresses, ","))
}

// voters returns the voters of a group as this node's member knows them.
func (g *vgroup) voters() (map[string]bool, error) {
	f := g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("configuration of group %d: %w", g.id, err)
	}
	out := map[string]bool{}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out[string(s.ID)] = true
		}
	}
	return out, nil
}

// preferredLeader is the head node that should lead volume group g: going
// round the rack's head nodes by id from the (g-1)th, the first that votes
// in the group now (for a group as founded, its first voter).
func (n *Node) preferredLeader(g *vgroup) (Peer, bool) {
	peers := n.peers()
	voters, err := g.voters()
	if err != nil || len(peers) == 0 {
		return Peer{}, false
	}
	start := int((g.id - 1) % uint64(len(peers)))
	for i := range peers {
		if p := peers[(start+i)%len(peers)]; voters[p.ID] {
			return p, true
		}
	}
	return Peer{}, false
}

// changeMembership changes one group's membership on its leader.
func (n *Node) changeMembership(ctx context.Context, req *ballastpb.ChangeMembershipRequest) error {
	g, ok := n.group(req.Group)
	if !ok {
		return status.Errorf(codes.InvalidArgument, "no group %d", req.Group)
	}
	_, err := onGroupLeader(n.admin, ctx, g, func(ctx context.Context) (struct{}, error) {
		var err error
		switch req.Op {
		case ballastpb.MembershipOp_MEMBERSHIP_OP_ADD_NONVOTER:
			err = n.cons.AddNonvoter(ctx, g.id, raft.ServerID(req.HeadNode), raftAddress(req.Addresses))
		case ballastpb.MembershipOp_MEMBERSHIP_OP_MOVE_VOTER:
			// The old voter stays as a non-voter: every head node applies
			// every group's log.
			err = n.cons.MoveVote(ctx, g.id, raft.ServerID(req.From),
				raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(req.HeadNode), Address: raftAddress(req.Addresses)})
		case ballastpb.MembershipOp_MEMBERSHIP_OP_REMOVE:
			err = n.cons.RemoveServer(ctx, g.id, raft.ServerID(req.HeadNode))
		default:
			return struct{}{}, status.Errorf(codes.InvalidArgument, "unknown membership change %v", req.Op)
		}
		if errors.Is(err, raft.ErrNotLeader) {
			return struct{}{}, errNotLeader
		}
		return struct{}{}, err
	}, func(ctx context.Context, c ballastpb.AdminClient) (struct{}, error) {
		_, err := c.ChangeMembership(ctx, req)
		return struct{}{}, err
	})
	return err
}

// ChangeMembership answers a membership change forwarded by another head
// node.
func (a *adminServer) ChangeMembership(ctx context.Context, req *ballastpb.ChangeMembershipRequest) (*ballastpb.ChangeMembershipResponse, error) {
	if req.HeadNode == "" {
		return nil, status.Error(codes.InvalidArgument, "no head node")
	}
	if req.Op == ballastpb.MembershipOp_MEMBERSHIP_OP_READMIT {
		g, ok := a.node.group(req.Group)
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "no group %d", req.Group)
		}
		index, err := a.node.readmitMember(ctx, g, req.HeadNode)
		if err != nil {
			return nil, err
		}
		return &ballastpb.ChangeMembershipResponse{Index: index}, nil
	}
	if err := a.node.changeMembership(ctx, req); err != nil {
		return nil, err
	}
	return &ballastpb.ChangeMembershipResponse{}, nil
}

func (a *adminServer) AddHeadNode(ctx context.Context, req *ballastpb.AddHeadNodeRequest) (*ballastpb.AddHeadNodeResponse, error) {
	h := req.GetHeadNode()
	if h.GetId() == "" || len(h.GetAddresses()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "a head node needs an id and its addresses")
	}
	n := a.node
	if p, ok := n.peer(h.Id); ok && strings.Join(p.Addresses, ",") != strings.Join(h.Addresses, ",") {
		return nil, status.Errorf(codes.AlreadyExists, "head node %s is in the rack at %s", h.Id, strings.Join(p.Addresses, ","))
	}
	// The directory first: from then on every head node knows where the
	// new one is, before any group sends it its log.
	if _, err := n.applyIn(ctx, consensus.DirectoryGroup, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_AddHeadNode{
		AddHeadNode: &ballastpb.AddHeadNodeCommand{HeadNode: h},
	}}); err != nil {
		return nil, err
	}
	for _, g := range n.groups {
		if err := n.changeMembership(ctx, &ballastpb.ChangeMembershipRequest{
			Group: g.id, Op: ballastpb.MembershipOp_MEMBERSHIP_OP_ADD_NONVOTER, HeadNode: h.Id, Addresses: h.Addresses,
		}); err != nil {
			return nil, fmt.Errorf("add %s to group %d (adding it again finishes the rest): %w", h.Id, g.id, err)
		}
	}
	n.log.Info("head node added to every group", "head_node", h.Id)
	return &ballastpb.AddHeadNodeResponse{}, nil
}

func (a *adminServer) MoveVoter(ctx context.Context, req *ballastpb.MoveVoterRequest) (*ballastpb.MoveVoterResponse, error) {
	n := a.node
	to, ok := n.peer(req.To)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no head node %q in the rack", req.To)
	}
	if _, ok := n.peer(req.From); !ok {
		return nil, status.Errorf(codes.NotFound, "no head node %q in the rack", req.From)
	}
	if err := n.changeMembership(ctx, &ballastpb.ChangeMembershipRequest{
		Group: req.Group, Op: ballastpb.MembershipOp_MEMBERSHIP_OP_MOVE_VOTER, HeadNode: to.ID, Addresses: to.Addresses, From: req.From,
	}); err != nil {
		return nil, err
	}
	n.log.Info("moved a voter", "group", req.Group, "from", req.From, "to", req.To)
	return &ballastpb.MoveVoterResponse{}, nil
}

func (a *adminServer) RemoveHeadNode(ctx context.Context, req *ballastpb.RemoveHeadNodeRequest) (*ballastpb.RemoveHeadNodeResponse, error) {
	n := a.node
	id := req.HeadNode
	if _, ok := n.peer(id); !ok {
		return nil, status.Errorf(codes.NotFound, "no head node %q in the rack", id)
	}
	for _, g := range n.groups {
		voters, err := g.voters()
		if err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		if voters[id] {
			return nil, status.Errorf(codes.FailedPrecondition, "%s votes in group %d: move its voter first (ballast rack move-voter)", id, g.id)
		}
	}
	vols, err := n.readAllVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	for _, v := range vols {
		if replicaOf(v, id) {
			return nil, status.Errorf(codes.FailedPrecondition, "%s holds a replica of volume %s: stop it and let the rack replace it first", id, v.Name)
		}
	}
	for _, g := range n.groups {
		if err := n.changeMembership(ctx, &ballastpb.ChangeMembershipRequest{
			Group: g.id, Op: ballastpb.MembershipOp_MEMBERSHIP_OP_REMOVE, HeadNode: id,
		}); err != nil {
			return nil, fmt.Errorf("remove %s from group %d (removing it again finishes the rest): %w", id, g.id, err)
		}
	}
	if _, err := n.applyIn(ctx, consensus.DirectoryGroup, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RemoveHeadNode{
		RemoveHeadNode: &ballastpb.RemoveHeadNodeCommand{HeadNode: id},
	}}); err != nil {
		return nil, err
	}
	n.log.Info("head node removed from the rack", "head_node", id)
	return &ballastpb.RemoveHeadNodeResponse{}, nil
}
