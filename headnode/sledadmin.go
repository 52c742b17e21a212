package headnode

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// applySled commits a sled command through the directory group.
func (a *adminServer) applySled(cmd *ballastpb.DirectoryCommand) (*ballastpb.Sled, error) {
	res, err := a.applyCommand(cmd)
	return res.Sled, err
}

func (a *adminServer) RegisterSled(ctx context.Context, req *ballastpb.RegisterSledRequest) (*ballastpb.RegisterSledResponse, error) {
	if err := volume.ValidateSledID(req.Id); err != nil {
		return nil, toStatus(err)
	}
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.RegisterSledResponse, error) {
		sl, err := a.applySled(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RegisterSled{
			RegisterSled: &ballastpb.RegisterSledCommand{Sled: &ballastpb.Sled{Id: req.Id, Addresses: req.Addresses}},
		}})
		if err != nil {
			return nil, err
		}
		return &ballastpb.RegisterSledResponse{Sled: sl}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.RegisterSledResponse, error) {
		return c.RegisterSled(ctx, req)
	})
}

func (a *adminServer) ListSleds(ctx context.Context, req *ballastpb.ListSledsRequest) (*ballastpb.ListSledsResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.ListSledsResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		resp := &ballastpb.ListSledsResponse{}
		for _, s := range a.node.directory.Sleds() {
			resp.Sleds = append(resp.Sleds, proto.Clone(s).(*ballastpb.Sled))
		}
		return resp, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ListSledsResponse, error) {
		return c.ListSleds(ctx, req)
	})
}

func (a *adminServer) SetSledState(ctx context.Context, req *ballastpb.SetSledStateRequest) (*ballastpb.SetSledStateResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.SetSledStateResponse, error) {
		sl, err := a.applySled(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SetSledState{
			SetSledState: &ballastpb.SetSledStateCommand{Id: req.Id, State: req.State},
		}})
		if err != nil {
			return nil, err
		}
		return &ballastpb.SetSledStateResponse{Sled: sl}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.SetSledStateResponse, error) {
		return c.SetSledState(ctx, req)
	})
}

// NodeStatus answers for this head node alone: never forwarded.
func (a *adminServer) NodeStatus(ctx context.Context, req *ballastpb.NodeStatusRequest) (*ballastpb.NodeStatusResponse, error) {
	return a.node.nodeStatus(), nil
}

func (n *Node) nodeStatus() *ballastpb.NodeStatusResponse {
	n.mu.Lock()
	prims := make([]*primaryVolume, 0, len(n.primaries))
	for _, pv := range n.primaries {
		prims = append(prims, pv)
	}
	n.mu.Unlock()
	resp := &ballastpb.NodeStatusResponse{HeadNode: n.cfg.ID, Redundancy: &ballastpb.Redundancy{}}
	r := resp.Redundancy
	for _, pv := range prims {
		resp.PrimaryOf = append(resp.PrimaryOf, pv.vol.Name)
		if pv.maint != nil {
			c := pv.maint.counts()
			r.SegmentsFull += c.full
			r.SegmentsDegraded += c.degraded
			r.SegmentsLost += c.lost
			r.ShardsPending += c.pendingShards
		}
		if dirty, err := n.blocks.DirtyCount(pv.vol.Id); err == nil {
			r.DirtyBytes += uint64(dirty) * blockSize
		}
	}
	sort.Strings(resp.PrimaryOf)
	st := n.remote.stats
	r.ShardsRebuilt, r.ShardsRepaired, r.FlushedBytes = st.rebuilt.Load(), st.repaired.Load(), st.flushedBytes.Load()
	r.DirectWrittenBytes = st.directBytes.Load()
	resp.Groups = n.groupStatuses()
	resp.Paths = n.pathStatuses()
	resp.Disk = n.disk.status()
	resp.Disk.HeadNode = n.cfg.ID
	resp.ResentWrites = n.resentWrites.Load()
	if n.cache != nil {
		resp.ReadCache = n.cache.status()
		resp.ReadCache.HeadNode = n.cfg.ID
	}
	return resp
}

// RackStatus answers from this node's view of the directory and the
// sleds, and asks every head node for its own status, summing redundancy.
func (a *adminServer) RackStatus(ctx context.Context, req *ballastpb.RackStatusRequest) (*ballastpb.RackStatusResponse, error) {
	r := a.node.raft
	resp := &ballastpb.RackStatusResponse{Term: currentTerm(r), AppliedIndex: r.AppliedIndex(), Redundancy: &ballastpb.Redundancy{}}
	_, leader := r.LeaderWithID()
	resp.Leader = string(leader)
	for _, p := range a.node.peers() {
		resp.HeadNodes = append(resp.HeadNodes, &ballastpb.HeadNode{Id: p.ID, Addresses: p.Addresses})
	}
	sort.Slice(resp.HeadNodes, func(i, j int) bool { return resp.HeadNodes[i].Id < resp.HeadNodes[j].Id })
	resp.Sleds = a.node.remote.view.statuses()
	resp.Partitions = a.node.allVolumes()

	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range a.node.peers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ns *ballastpb.NodeStatusResponse
			var err error
			if p.ID == a.node.cfg.ID {
				ns = a.node.nodeStatus()
			} else {
				c, cerr := a.node.pool.Get(p.Addresses)
				if cerr != nil {
					err = cerr
				} else {
					cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					ns, err = ballastpb.NewAdminClient(c).NodeStatus(cctx, &ballastpb.NodeStatusRequest{})
					cancel()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				resp.UnreachableHeadNodes = append(resp.UnreachableHeadNodes, p.ID)
				return
			}
			addRedundancy(resp.Redundancy, ns.Redundancy)
			resp.ResentWrites += ns.ResentWrites
			resp.Groups = append(resp.Groups, ns.Groups...)
			resp.Paths = append(resp.Paths, ns.Paths...)
			if ns.Disk != nil {
				resp.Disks = append(resp.Disks, ns.Disk)
			}
			if ns.ReadCache != nil {
				resp.ReadCaches = append(resp.ReadCaches, ns.ReadCache)
			}
		}()
	}
	wg.Wait()
	sort.Strings(resp.UnreachableHeadNodes)
	sortGroups(resp.Groups)
	sortPaths(resp.Paths)
	sort.Slice(resp.Disks, func(i, j int) bool { return resp.Disks[i].HeadNode < resp.Disks[j].HeadNode })
	sort.Slice(resp.ReadCaches, func(i, j int) bool { return resp.ReadCaches[i].HeadNode < resp.ReadCaches[j].HeadNode })
	return resp, nil
}

func addRedundancy(sum, r *ballastpb.Redundancy) {
	if r == nil {
		return
	}
	sum.SegmentsFull += r.SegmentsFull
	sum.SegmentsDegraded += r.SegmentsDegraded
	sum.SegmentsLost += r.SegmentsLost
	sum.ShardsPending += r.ShardsPending
	sum.ShardsRebuilt += r.ShardsRebuilt
	sum.ShardsRepaired += r.ShardsRepaired
	sum.DirtyBytes += r.DirtyBytes
	sum.FlushedBytes += r.FlushedBytes
	sum.DirectWrittenBytes += r.DirectWrittenBytes
}

// watchSleds runs on every head node; while this one leads the directory
// group, it declares down the sleds it has not reached for the down
// timeout. Its view is one head node's, which is enough: a sled that every
// path to a head node misses for that long cannot be counted on.
func (n *Node) watchSleds(ctx context.Context) {
	every(ctx, n.cfg.Storage.SledPollInterval, func() {
		if n.raft.State() != raft.Leader {
			return
		}
		for _, s := range n.directory.Sleds() {
			var to ballastpb.SledState
			switch d := n.remote.view.unreachableFor(s.Id); {
			case s.State == ballastpb.SledState_SLED_STATE_UP && d >= n.cfg.Storage.SledDownTimeout:
				n.log.Warn("declaring sled down", "sled", s.Id, "unreachable_for", d.Round(time.Second))
				to = ballastpb.SledState_SLED_STATE_DOWN
			case s.State == ballastpb.SledState_SLED_STATE_DOWN && n.remote.view.reachable(s.Id):
				// Back (a network healed): what was not rebuilt yet is
				// served from it again; what was is an orphan now.
				n.log.Info("sled is back up", "sled", s.Id)
				to = ballastpb.SledState_SLED_STATE_UP
			default:
				continue
			}
			cmd := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SetSledState{SetSledState: &ballastpb.SetSledStateCommand{
				Id: s.Id, State: to, IfState: s.State,
			}}}
			if _, err := n.admin.applyCommand(cmd); err != nil {
				n.log.Warn("change sled state", "sled", s.Id, "to", to, "err", err)
			}
		}
	})
}
