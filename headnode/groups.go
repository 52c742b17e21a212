package headnode

// Volume groups. The directory group (0) holds the sleds and, for each
// volume, a placement: its name, its id and the volume group (1..N) that
// holds its record: size, primary, secondaries, epoch and lease. Every
// head node is a member of every group; each group's leader commits the
// commands of its volumes, times their leases and fails them over, so the
// work spreads over the head nodes as the groups' leaders do.
//
// Volumes created before there were volume groups keep their record in
// the directory group, which serves them as a volume group would.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// DefaultVolumeGroups is the number of volume groups of a rack.
const DefaultVolumeGroups = 16

// groupVoters is how many voters each group has (all head nodes if the
// rack has fewer). Every other head node is a non-voting member: it
// applies the group's log, so every head node has every volume's record at
// hand, without lengthening the group's commits or its elections.
const groupVoters = 3

// sortedPeers returns the rack's head nodes by id.
func sortedPeers(peers []Peer) []Peer {
	out := slices.Clone(peers)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// groupServers is the initial membership of a group: the head nodes by id,
// rotated so that group g (g >= 1) starts at the (g-1)th, the directory
// group at the first; the first groupVoters are voters and the first of
// them the group's preferred leader. Voters and leaders so spread over the
// rack, as the volumes do over the groups.
func groupServers(peers []Peer, group uint64) []raft.Server {
	sorted := sortedPeers(peers)
	start := 0
	if group > 0 {
		start = int((group - 1) % uint64(len(sorted)))
	}
	out := make([]raft.Server, 0, len(sorted))
	for i := range sorted {
		p := sorted[(start+i)%len(sorted)]
		suffrage := raft.Nonvoter
		if i < groupVoters {
			suffrage = raft.Voter
		}
		out = append(out, raft.Server{Suffrage: suffrage, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(strings.Join(p.Addresses, ","))})
	}
	return out
}

// vgroup is this node's member of one group holding volume records.
type vgroup struct {
	id       uint64
	fsm      *volume.Directory
	raft     *raft.Raft
	promoter *promoter
	cons     *consensus.Node
	// fence linearizes the reads of the group's state, the admin API's
	// and the txn driver's (consensus.Node.Linearize).
	fence consensus.ReadFence
}

// group returns this node's member of group id.
func (n *Node) group(id uint64) (*vgroup, bool) {
	if id >= uint64(len(n.groups)) {
		return nil, false
	}
	return n.groups[id], true
}

// volumeByID returns the shared record of a volume from whichever group
// holds it, as this node has applied it.
//
// A volume being moved between groups may have left its old group here
// before this node applied its arrival in the new one: the old group's
// forwarding copy stands in meanwhile (the same replicas and epoch as at
// the move).
func (n *Node) volumeByID(id uint64) (*ballastpb.Volume, bool) {
	for _, g := range n.groups {
		if v, ok := g.fsm.Shared(id); ok {
			return v, true
		}
	}
	for _, g := range n.groups {
		if v, ok := g.fsm.MovedCopy(id); ok {
			return v, true
		}
	}
	return nil, false
}

// allVolumes returns copies of every volume record this node has applied,
// sorted by name.
func (n *Node) allVolumes() []*ballastpb.Volume {
	var out []*ballastpb.Volume
	for _, g := range n.groups {
		out = append(out, g.fsm.List()...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// groupOfVolume returns the group holding a volume's record.
func (n *Node) groupOfVolume(id uint64) (*vgroup, bool) {
	for _, g := range n.groups {
		if _, ok := g.fsm.Shared(id); ok {
			return g, true
		}
	}
	return nil, false
}

// apply commits a command through the group's raft on this node, which
// must lead the group; the error is the commit's or the state machine's
// refusal.
func (g *vgroup) apply(cmd *ballastpb.DirectoryCommand) (volume.ApplyResult, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return volume.ApplyResult{}, fmt.Errorf("encode command: %w", err)
	}
	f := g.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return volume.ApplyResult{}, errNotLeader
		}
		return volume.ApplyResult{}, fmt.Errorf("commit command in group %d: %w", g.id, err)
	}
	res, ok := f.Response().(volume.ApplyResult)
	if !ok {
		return volume.ApplyResult{}, fmt.Errorf("group %d returned %T", g.id, f.Response())
	}
	return res, res.Err
}

// readBarrier makes a leader's reads of the group linearizable: once per
// term it waits until its state machine holds every committed entry, and
// on every read it checks it is still the leader.
func (g *vgroup) readBarrier() error {
	ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
	defer cancel()
	err := g.cons.Linearize(ctx, g.id, &g.fence)
	var nl *consensus.NotLeaderError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &nl), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// The caller asks the leader again, wherever it is now.
		return errNotLeader
	}
	return fmt.Errorf("group %d barrier: %w", g.id, err)
}

// forwardedFor says whether the call was forwarded to this node as the
// leader of group g: the receiver never forwards it again for g, so a
// stale view of who leads cannot loop. A call may be forwarded once per
// group (the directory's leader asks a volume group's).
func forwardedFor(ctx context.Context, g uint64) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return slices.Contains(md.Get(forwardedKey), strconv.FormatUint(g, 10))
}

// onGroupLeader runs local on the group's leader, or remote against the
// leader through a forwarded call, retrying while leadership moves, until
// the node's LeaderWaitTimeout.
func onGroupLeader[T any](a *adminServer, ctx context.Context, g *vgroup,
	local func(context.Context) (T, error),
	remote func(context.Context, ballastpb.AdminClient) (T, error),
) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, a.node.cfg.LeaderWaitTimeout)
	defer cancel()
	forwarded := forwardedFor(ctx, g.id)
	for {
		var err error
		if g.raft.State() == raft.Leader {
			var out T
			out, err = local(ctx)
			if !errors.Is(err, errNotLeader) {
				return out, toStatus(err)
			}
		} else if forwarded {
			return zero, status.Errorf(codes.Unavailable, "head node %s is not the leader of group %d", a.node.cfg.ID, g.id)
		} else if _, id := g.raft.LeaderWithID(); id != "" {
			p, ok := a.node.peer(string(id))
			if !ok {
				return zero, status.Errorf(codes.Internal, "leader %q is not a known head node", id)
			}
			conn, cerr := a.node.pool.Get(p.Addresses)
			if cerr != nil {
				return zero, status.Errorf(codes.Unavailable, "reach leader %s: %v", id, cerr)
			}
			octx := metadata.AppendToOutgoingContext(ctx, forwardedKey, strconv.FormatUint(g.id, 10))
			out, err := remote(octx, ballastpb.NewAdminClient(conn))
			if status.Code(err) != codes.Unavailable {
				return out, err
			}
		}
		select {
		case <-ctx.Done():
			return zero, status.Errorf(codes.Unavailable, "group %d has no reachable leader: %v", g.id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// applyIn commits cmd in group id, on its leader wherever that is.
func (n *Node) applyIn(ctx context.Context, id uint64, cmd *ballastpb.DirectoryCommand) (volume.ApplyResult, error) {
	g, ok := n.group(id)
	if !ok {
		return volume.ApplyResult{}, status.Errorf(codes.InvalidArgument, "no group %d", id)
	}
	resp, err := onGroupLeader(n.admin, ctx, g, func(context.Context) (*ballastpb.ApplyInGroupResponse, error) {
		res, err := g.apply(cmd)
		if err != nil {
			return nil, err
		}
		return &ballastpb.ApplyInGroupResponse{Volume: res.Volume, Sled: res.Sled, Refused: res.Refused, Moved: res.Moved, Placement: res.Placement}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ApplyInGroupResponse, error) {
		return c.ApplyInGroup(ctx, &ballastpb.ApplyInGroupRequest{Group: id, Command: cmd})
	})
	if err != nil {
		return volume.ApplyResult{}, err
	}
	return volume.ApplyResult{Volume: resp.Volume, Sled: resp.Sled, Refused: resp.Refused, Moved: resp.Moved, Placement: resp.Placement}, nil
}

// ApplyInGroup commits a command forwarded by another head node.
func (a *adminServer) ApplyInGroup(ctx context.Context, req *ballastpb.ApplyInGroupRequest) (*ballastpb.ApplyInGroupResponse, error) {
	if req.Command == nil {
		return nil, status.Error(codes.InvalidArgument, "no command")
	}
	res, err := a.node.applyIn(ctx, req.Group, req.Command)
	if err != nil {
		return nil, err
	}
	return &ballastpb.ApplyInGroupResponse{Volume: res.Volume, Sled: res.Sled, Refused: res.Refused, Moved: res.Moved, Placement: res.Placement}, nil
}

// readGroup returns every volume record of group id (and, of the
// directory group, every placement), read linearizably on its leader.
func (n *Node) readGroup(ctx context.Context, id uint64) (*ballastpb.ReadGroupResponse, error) {
	g, ok := n.group(id)
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "no group %d", id)
	}
	return onGroupLeader(n.admin, ctx, g, func(context.Context) (*ballastpb.ReadGroupResponse, error) {
		if err := g.readBarrier(); err != nil {
			return nil, err
		}
		resp := &ballastpb.ReadGroupResponse{Volumes: g.fsm.List()}
		if id == consensus.DirectoryGroup {
			resp.Placements = g.fsm.Placements()
		}
		return resp, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ReadGroupResponse, error) {
		return c.ReadGroup(ctx, &ballastpb.ReadGroupRequest{Group: id})
	})
}

// ReadGroup answers a linearizable read forwarded by another head node.
func (a *adminServer) ReadGroup(ctx context.Context, req *ballastpb.ReadGroupRequest) (*ballastpb.ReadGroupResponse, error) {
	return a.node.readGroup(ctx, req.Group)
}

// readAllVolumes reads every group linearizably, in parallel, and returns
// every volume record sorted by name.
func (n *Node) readAllVolumes(ctx context.Context) ([]*ballastpb.Volume, error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		out  []*ballastpb.Volume
		errs []error
	)
	for _, g := range n.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := n.readGroup(ctx, g.id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("group %d: %w", g.id, err))
				return
			}
			out = append(out, resp.Volumes...)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// spreadLeaders moves the leadership of each volume group this node leads
// to the group's preferred head node (groupServers), if that node answers
// and is not being drained: otherwise raft's elections would leave most
// groups led by whichever node started first, and one node would commit
// and time the leases of most volumes. A node being drained hands away
// every group it comes to lead (by an election, say), the directory group
// included.
func (n *Node) spreadLeaders(ctx context.Context) {
	every(ctx, 5*time.Second, func() {
		drained := n.directory.Draining(n.cfg.ID)
		for _, g := range n.groups {
			if g.raft.State() != raft.Leader || (g.id == consensus.DirectoryGroup && !drained) {
				continue
			}
			var to raft.ServerID // "": any other voter, raft's choice
			if g.id != consensus.DirectoryGroup {
				want, ok := n.preferredLeader(g)
				switch {
				case ok && want.ID != n.cfg.ID && !n.directory.Draining(want.ID) && n.peerAnswers(want):
					to = raft.ServerID(want.ID)
				case !drained:
					continue
				}
			}
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := n.cons.TransferLeadership(tctx, g.id, to)
			cancel()
			if err != nil && ctx.Err() == nil {
				n.log.Debug("spread group leaders", "group", g.id, "to", to, "err", err)
			}
		}
	})
}
