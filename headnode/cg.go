package headnode

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
	"github.com/ballast-storage/ballast/volume"
)

// Consistency groups (ballast cg). The group's record lives in the
// directory group; each member's record, in its volume group, names the
// group and the member's last cut. Creating and deleting a group, and
// every snapshot cut, is one transaction across the directory and every
// member's volume group. A cut is taken while every member's primary
// holds its writes (cuthold.go), so the cut is crash consistent across
// the members.

const (
	// maxMembers bounds a consistency group.
	maxMembers = 64
	// keptCuts is how many cuts a group's record lists.
	keptCuts = 64
	// cutHoldFor is how long a primary holds writes for a cut at most
	// before it settles the cut on its own: the longest write pause a
	// coordinator that dies mid-cut can cause.
	cutHoldFor = 5 * time.Second
	// cutAttempts bounds the rounds of a cut whose members keep changing.
	cutAttempts = 8
)

// cgMember is a member's record as a transaction reads it.
type cgMember struct {
	rec       *ballastpb.Volume
	version   txn.Version
	group     txn.GroupID
	placement txn.Version // of its name key in the directory
}

// readMember reads a member volume's placement and record.
func (n *Node) readMember(ctx context.Context, name string) (cgMember, error) {
	dir := txnGroupOf(consensus.DirectoryGroup)
	var place ballastpb.VolumePlacement
	pv, found, err := n.readProto(ctx, dir, volume.NameKey(name), &place)
	if err != nil {
		return cgMember{}, err
	}
	if !found {
		return cgMember{}, fmt.Errorf("%w: volume %q", volume.ErrNotFound, name)
	}
	g := txnGroupOf(place.Group)
	var rec ballastpb.Volume
	version, found, err := n.readProto(ctx, g, volume.VolumeKey(name), &rec)
	if err != nil {
		return cgMember{}, err
	}
	if !found || rec.Id != place.Id {
		return cgMember{}, status.Errorf(codes.FailedPrecondition, "volume %q has no transactional record (created before volume groups)", name)
	}
	if rec.MovedTo != 0 {
		return cgMember{}, status.Errorf(codes.Unavailable, "volume %q is moving to group %d; try again", name, rec.MovedTo)
	}
	return cgMember{rec: &rec, version: version, group: g, placement: pv}, nil
}

// readCG reads a consistency group's record; found is false if absent.
func (n *Node) readCG(ctx context.Context, name string) (*ballastpb.ConsistencyGroup, txn.Version, bool, error) {
	var cg ballastpb.ConsistencyGroup
	v, found, err := n.readProto(ctx, txnGroupOf(consensus.DirectoryGroup), volume.ConsistencyGroupKey(name), &cg)
	return &cg, v, found, err
}

// readCGNames reads the list of consistency groups.
func (n *Node) readCGNames(ctx context.Context) (*ballastpb.ConsistencyGroupNames, txn.Version, error) {
	var names ballastpb.ConsistencyGroupNames
	v, _, err := n.readProto(ctx, txnGroupOf(consensus.DirectoryGroup), volume.KeyConsistencyGroups, &names)
	return &names, v, err
}

// createCG creates a consistency group of members, none of which may be
// in another.
func (n *Node) createCG(ctx context.Context, name string, members []string) (*ballastpb.ConsistencyGroup, error) {
	if err := volume.ValidateName(name); err != nil {
		return nil, fmt.Errorf("consistency group: %w", err)
	}
	if len(members) == 0 || len(members) > maxMembers {
		return nil, status.Errorf(codes.InvalidArgument, "a consistency group has 1 to %d members, not %d", maxMembers, len(members))
	}
	members = slices.Clone(members)
	slices.Sort(members)
	for i, m := range members {
		if err := volume.ValidateName(m); err != nil {
			return nil, err
		}
		if i > 0 && members[i-1] == m {
			return nil, status.Errorf(codes.InvalidArgument, "volume %q is named twice", m)
		}
	}
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; attempt < createAttempts; attempt++ {
		if _, _, found, err := n.readCG(ctx, name); err != nil {
			return nil, err
		} else if found {
			return nil, status.Errorf(codes.AlreadyExists, "consistency group %q exists", name)
		}
		names, namesVersion, err := n.readCGNames(ctx)
		if err != nil {
			return nil, err
		}
		cg := &ballastpb.ConsistencyGroup{Name: name, Members: members, CreatedUnixNanos: time.Now().UnixNano()}
		names.Names = append(names.Names, name)
		slices.Sort(names.Names)
		vals, err := marshalAll(cg, names)
		if err != nil {
			return nil, err
		}
		spec := txn.Spec{
			Home: dir,
			Conditions: []txn.GroupCondition{
				{Group: dir, Condition: txn.Condition{Key: volume.ConsistencyGroupKey(name)}},
				{Group: dir, Condition: txn.Condition{Key: volume.KeyConsistencyGroups, Version: namesVersion}},
			},
			Writes: []txn.GroupWrite{
				{Group: dir, Write: txn.Write{Key: volume.ConsistencyGroupKey(name), Value: vals[0]}},
				{Group: dir, Write: txn.Write{Key: volume.KeyConsistencyGroups, Value: vals[1]}},
			},
		}
		for _, m := range members {
			mem, err := n.readMember(ctx, m)
			if err != nil {
				return nil, err
			}
			if mem.rec.ConsistencyGroup != "" {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %q is in consistency group %q", m, mem.rec.ConsistencyGroup)
			}
			mem.rec.ConsistencyGroup = name
			if err := addMemberWrite(&spec, mem, dir, m); err != nil {
				return nil, err
			}
		}
		done, err := n.commit(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("create consistency group %q: %w", name, err)
		}
		if done {
			return cg, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "create consistency group %q: its members kept changing; try again", name)
}

// addMemberWrite conditions spec on a member's placement and record as
// read, and writes the record as changed.
func addMemberWrite(spec *txn.Spec, mem cgMember, dir txn.GroupID, name string) error {
	vals, err := marshalAll(mem.rec)
	if err != nil {
		return err
	}
	spec.Conditions = append(spec.Conditions,
		txn.GroupCondition{Group: dir, Condition: txn.Condition{Key: volume.NameKey(name), Version: mem.placement}},
		txn.GroupCondition{Group: mem.group, Condition: txn.Condition{Key: volume.VolumeKey(name), Version: mem.version}})
	spec.Writes = append(spec.Writes, txn.GroupWrite{Group: mem.group, Write: txn.Write{Key: volume.VolumeKey(name), Value: vals[0]}})
	return nil
}

// deleteCG deletes a consistency group; its members stay, in none.
func (n *Node) deleteCG(ctx context.Context, name string) error {
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; attempt < createAttempts; attempt++ {
		cg, cgVersion, found, err := n.readCG(ctx, name)
		if err != nil {
			return err
		}
		if !found {
			return status.Errorf(codes.NotFound, "consistency group %q does not exist", name)
		}
		names, namesVersion, err := n.readCGNames(ctx)
		if err != nil {
			return err
		}
		names.Names = slices.DeleteFunc(names.Names, func(s string) bool { return s == name })
		vals, err := marshalAll(names)
		if err != nil {
			return err
		}
		spec := txn.Spec{
			Home: dir,
			Conditions: []txn.GroupCondition{
				{Group: dir, Condition: txn.Condition{Key: volume.ConsistencyGroupKey(name), Version: cgVersion}},
				{Group: dir, Condition: txn.Condition{Key: volume.KeyConsistencyGroups, Version: namesVersion}},
			},
			Writes: []txn.GroupWrite{
				{Group: dir, Write: txn.Write{Key: volume.ConsistencyGroupKey(name), Delete: true}},
				{Group: dir, Write: txn.Write{Key: volume.KeyConsistencyGroups, Value: vals[0]}},
			},
		}
		for _, m := range cg.Members {
			mem, err := n.readMember(ctx, m)
			if errors.Is(err, volume.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if mem.rec.ConsistencyGroup != name {
				continue
			}
			mem.rec.ConsistencyGroup = ""
			if err := addMemberWrite(&spec, mem, dir, m); err != nil {
				return err
			}
		}
		done, err := n.commit(ctx, spec)
		if err != nil {
			return fmt.Errorf("delete consistency group %q: %w", name, err)
		}
		if done {
			return nil
		}
	}
	return status.Errorf(codes.Aborted, "delete consistency group %q: its members kept changing; try again", name)
}

// heldMember is a member whose primary holds its writes for a cut.
type heldMember struct {
	name string
	mem  cgMember
	seq  uint64
}

// snapshotCG takes a cut of every member of a consistency group: each
// member's primary holds its writes and reports its log seq; one
// transaction records the cut in the group and in every member; then the
// writes go.
func (n *Node) snapshotCG(ctx context.Context, name string) (*ballastpb.SnapshotCut, error) {
	dir := txnGroupOf(consensus.DirectoryGroup)
	var lastErr error
	for attempt := 0; attempt < cutAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, status.Errorf(codes.DeadlineExceeded, "snapshot of %q: %v (last: %v)", name, ctx.Err(), lastErr)
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
			}
		}
		cg, cgVersion, found, err := n.readCG(ctx, name)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, status.Errorf(codes.NotFound, "consistency group %q does not exist", name)
		}
		g := cg.Generation + 1
		id := rand.Uint64() | 1 // never 0
		members := make([]heldMember, len(cg.Members))
		for i, m := range cg.Members {
			mem, err := n.readMember(ctx, m)
			if err != nil {
				return nil, err
			}
			if mem.rec.ConsistencyGroup != name {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not in consistency group %q any more", m, name)
			}
			members[i] = heldMember{name: m, mem: mem}
		}
		held, err := n.holdMembers(ctx, members, id)
		if err != nil {
			// Every member is told, held or not: a hold that arrives late
			// is then refused rather than pausing writes for nothing.
			n.releaseMembers(members, id)
			lastErr = err
			n.log.Debug("snapshot: holding the members failed; retrying", "group", name, "generation", g, "cut", id, "err", err)
			continue
		}
		cut := &ballastpb.SnapshotCut{Generation: g, TakenUnixNanos: time.Now().UnixNano()}
		spec := txn.Spec{Home: dir, Conditions: []txn.GroupCondition{
			{Group: dir, Condition: txn.Condition{Key: volume.ConsistencyGroupKey(name), Version: cgVersion}},
		}}
		for _, h := range members {
			cut.Members = append(cut.Members, &ballastpb.MemberCut{Volume: h.name, VolumeId: h.mem.rec.Id, Epoch: h.mem.rec.Epoch, Seq: h.seq})
			h.mem.rec.CutGeneration, h.mem.rec.CutSeq, h.mem.rec.CutId = g, h.seq, id
			if err := addMemberWrite(&spec, h.mem, dir, h.name); err != nil {
				n.releaseMembers(held, id)
				return nil, err
			}
		}
		cg.Generation = g
		cg.Cuts = append(cg.Cuts, cut)
		if len(cg.Cuts) > keptCuts {
			cg.Cuts = cg.Cuts[len(cg.Cuts)-keptCuts:]
		}
		vals, err := marshalAll(cg)
		if err != nil {
			n.releaseMembers(held, id)
			return nil, err
		}
		spec.Writes = append(spec.Writes, txn.GroupWrite{Group: dir, Write: txn.Write{Key: volume.ConsistencyGroupKey(name), Value: vals[0]}})
		done, err := n.commit(ctx, spec)
		if err != nil {
			// Unknown: the primaries settle the cut themselves once their
			// hold is up; until then, the writes wait.
			return nil, fmt.Errorf("snapshot of %q (generation %d): %w; the members' writes resume within %v either way", name, g, err, cutHoldFor)
		}
		n.releaseMembers(held, id)
		if done {
			return cut, nil
		}
		lastErr = fmt.Errorf("a member or the group changed under the cut")
	}
	return nil, status.Errorf(codes.Aborted, "snapshot of %q: %v; try again", name, lastErr)
}

// holdMembers asks every member's primary, in parallel, to hold its
// writes for cut id. It returns the members held, with
// their seqs filled in, even when some failed.
func (n *Node) holdMembers(ctx context.Context, members []heldMember, id uint64) ([]heldMember, error) {
	hctx, cancel := context.WithTimeout(ctx, cutHoldFor/2)
	defer cancel()
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := members[i].mem.rec
			req := &ballastpb.HoldForCutRequest{VolumeId: rec.Id, Epoch: rec.Epoch, CutId: id, HoldMillis: uint64(cutHoldFor / time.Millisecond)}
			resp, err := onHeadNode(n, hctx, rec.Primary, func(ctx context.Context, c ballastpb.AdminServer) (*ballastpb.HoldForCutResponse, error) {
				return c.HoldForCut(ctx, req)
			}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.HoldForCutResponse, error) {
				return c.HoldForCut(ctx, req)
			})
			if err != nil {
				errs[i] = fmt.Errorf("hold %s at %s: %w", members[i].name, rec.Primary, err)
				return
			}
			members[i].seq = resp.Seq
		}()
	}
	wg.Wait()
	var held []heldMember
	for i, m := range members {
		if errs[i] == nil {
			held = append(held, m)
		}
	}
	return held, errors.Join(errs...)
}

// releaseMembers tells the primaries of held members that cut id is
// decided (best effort: a primary not told settles the cut itself).
func (n *Node) releaseMembers(held []heldMember, id uint64) {
	var wg sync.WaitGroup
	for _, h := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req := &ballastpb.ReleaseCutRequest{VolumeId: h.mem.rec.Id, CutId: id}
			_, err := onHeadNode(n, ctx, h.mem.rec.Primary, func(ctx context.Context, c ballastpb.AdminServer) (*ballastpb.ReleaseCutResponse, error) {
				return c.ReleaseCut(ctx, req)
			}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ReleaseCutResponse, error) {
				return c.ReleaseCut(ctx, req)
			})
			if err != nil {
				n.log.Debug("release cut", "volume", h.name, "cut", id, "err", err)
			}
		}()
	}
	wg.Wait()
}

// onHeadNode calls the Admin service of head node id: in process when id
// is this node.
func onHeadNode[T any](n *Node, ctx context.Context, id string,
	local func(context.Context, ballastpb.AdminServer) (T, error),
	remote func(context.Context, ballastpb.AdminClient) (T, error)) (T, error) {
	var zero T
	if id == n.cfg.ID {
		return local(ctx, n.admin)
	}
	p, ok := n.peer(id)
	if !ok {
		return zero, status.Errorf(codes.Unavailable, "%q is not a known head node", id)
	}
	conn, err := n.pool.Get(p.Addresses)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "reach head node %s: %v", id, err)
	}
	return remote(ctx, ballastpb.NewAdminClient(conn))
}

// holdForCutRPC serves HoldForCut on the volume's primary.
func (n *Node) holdForCutRPC(ctx context.Context, req *ballastpb.HoldForCutRequest) (*ballastpb.HoldForCutResponse, error) {
	vol, ok := n.volumeByID(req.VolumeId)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %d: %v", req.VolumeId, volume.ErrNotFound)
	}
	if vol.Primary != n.cfg.ID || vol.Epoch != req.Epoch {
		return nil, status.Errorf(codes.FailedPrecondition, "head node %s is not primary of volume %s at epoch %d (primary %s at %d)", n.cfg.ID, vol.Name, req.Epoch, vol.Primary, vol.Epoch)
	}
	pv, err := n.primaryFor(vol)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "volume %s: %v", vol.Name, err)
	}
	if pv.vol.Epoch != req.Epoch {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s: this head node serves epoch %d, not %d", vol.Name, pv.vol.Epoch, req.Epoch)
	}
	holdFor := min(max(time.Duration(req.HoldMillis)*time.Millisecond, 100*time.Millisecond), time.Minute)
	seq, err := n.holdForCut(ctx, pv, req.CutId, holdFor)
	switch {
	case errors.Is(err, errCutOver):
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s: %v", vol.Name, err)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "volume %s: %v", vol.Name, err)
	}
	return &ballastpb.HoldForCutResponse{Seq: seq}, nil
}

// releaseCutRPC serves ReleaseCut on the volume's primary.
func (n *Node) releaseCutRPC(req *ballastpb.ReleaseCutRequest) {
	n.mu.Lock()
	pv, ok := n.primaries[req.VolumeId]
	n.mu.Unlock()
	if ok {
		n.letCutGo(pv, req.CutId)
	}
}

// BlocksWrittenThrough returns the blocks of a volume whose newest data
// on this node was written at or below log seq `seq`, among those not yet
// flushed to the sleds: for audits and tests of what a consistency
// group's cut at seq takes of the volume.
func (n *Node) BlocksWrittenThrough(volID, seq uint64) ([]uint64, error) {
	return n.blocks.BlocksWrittenThrough(volID, seq)
}

func (a *adminServer) CreateConsistencyGroup(ctx context.Context, req *ballastpb.CreateConsistencyGroupRequest) (*ballastpb.CreateConsistencyGroupResponse, error) {
	cg, err := a.node.createCG(ctx, req.Name, req.Members)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.CreateConsistencyGroupResponse{Group: cg}, nil
}

func (a *adminServer) DeleteConsistencyGroup(ctx context.Context, req *ballastpb.DeleteConsistencyGroupRequest) (*ballastpb.DeleteConsistencyGroupResponse, error) {
	if err := a.node.deleteCG(ctx, req.Name); err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.DeleteConsistencyGroupResponse{}, nil
}

func (a *adminServer) GetConsistencyGroup(ctx context.Context, req *ballastpb.GetConsistencyGroupRequest) (*ballastpb.GetConsistencyGroupResponse, error) {
	cg, _, found, err := a.node.readCG(ctx, req.Name)
	if err != nil {
		return nil, toStatus(err)
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "consistency group %q does not exist", req.Name)
	}
	return &ballastpb.GetConsistencyGroupResponse{Group: cg}, nil
}

func (a *adminServer) ListConsistencyGroups(ctx context.Context, _ *ballastpb.ListConsistencyGroupsRequest) (*ballastpb.ListConsistencyGroupsResponse, error) {
	names, _, err := a.node.readCGNames(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ballastpb.ListConsistencyGroupsResponse{}
	for _, name := range names.Names {
		cg, _, found, err := a.node.readCG(ctx, name)
		if err != nil {
			return nil, toStatus(err)
		}
		if found {
			resp.Groups = append(resp.Groups, cg)
		}
	}
	return resp, nil
}

func (a *adminServer) SnapshotConsistencyGroup(ctx context.Context, req *ballastpb.SnapshotConsistencyGroupRequest) (*ballastpb.SnapshotConsistencyGroupResponse, error) {
	cut, err := a.node.snapshotCG(ctx, req.Name)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.SnapshotConsistencyGroupResponse{Cut: cut}, nil
}

func (a *adminServer) HoldForCut(ctx context.Context, req *ballastpb.HoldForCutRequest) (*ballastpb.HoldForCutResponse, error) {
	return a.node.holdForCutRPC(ctx, req)
}

func (a *adminServer) ReleaseCut(_ context.Context, req *ballastpb.ReleaseCutRequest) (*ballastpb.ReleaseCutResponse, error) {
	a.node.releaseCutRPC(req)
	return &ballastpb.ReleaseCutResponse{}, nil
}
