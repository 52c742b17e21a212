package headnode

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
	"github.com/ballast-storage/ballast/txn/driver"
	"github.com/ballast-storage/ballast/volume"
)

// txnGroupOf is the txn group of consensus group g: txn numbers groups
// from 1 (0 means none there), so the directory group is txn group 1 and
// volume group k is k+1.
func txnGroupOf(g uint64) txn.GroupID { return txn.GroupID(g + 1) }

// txnHost is a group's state as the txn driver sees it: the directory
// FSM holds the group's participant, and a txn command travels in the
// log as a DirectoryCommand.
type txnHost struct{ g *vgroup }

func (h txnHost) Group() txn.GroupID                    { return txnGroupOf(h.g.id) }
func (h txnHost) RaftGroup() uint64                     { return h.g.id }
func (h txnHost) Fence() *consensus.ReadFence           { return &h.g.fence }
func (h txnHost) Read(key string) txn.ReadResult        { return h.g.fsm.TxnRead(key) }
func (h txnHost) ReadRecord(t txn.TxnID) txn.RecordInfo { return h.g.fsm.TxnRecord(t) }
func (h txnHost) Records() []txn.RecordEntry            { return h.g.fsm.TxnRecords() }
func (h txnHost) Holders() []txn.Holder                 { return h.g.fsm.TxnHolders() }
func (h txnHost) Entry(cmd []byte) ([]byte, error) {
	return proto.Marshal(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_Txn{Txn: cmd}})
}

func (h txnHost) Result(resp any) (txn.Result, error) {
	r, ok := resp.(volume.ApplyResult)
	switch {
	case !ok:
		return txn.Result{}, fmt.Errorf("group %d answered %T, not a directory result", h.g.id, resp)
	case r.Txn == nil:
		return txn.Result{}, fmt.Errorf("group %d answered a txn command without a txn result: %v", h.g.id, r.Err)
	}
	return *r.Txn, nil
}

// startTxn serves the node's groups to the rack's proposers and starts
// this node's proposer and keeper. Call before serving.
func (n *Node) startTxn(srv grpc.ServiceRegistrar) error {
	svc := driver.NewService(n.cons)
	members := make([]driver.Member, 0, len(n.groups))
	for _, g := range n.groups {
		svc.Add(txnHost{g})
		members = append(members, driver.Member{Node: n.cons, Host: txnHost{g}})
	}
	svc.Register(srv)
	// The node's own groups are served in process (NodeGroups); the
	// others through any other head node. The node never dials itself,
	// even when an answer names it the leader: it would show in the
	// rack's network paths, and its own leadership is tried first.
	self := map[string]bool{strings.Join(n.cfg.ListenAddresses, ","): true}
	addrs := make([]string, 0, len(n.cfg.Peers))
	for _, p := range n.cfg.Peers {
		a := strings.Join(p.Addresses, ",")
		if p.ID == n.cfg.ID {
			self[a] = true
			continue
		}
		addrs = append(addrs, a)
	}
	dial := func(_ context.Context, addr string) (grpc.ClientConnInterface, error) {
		if self[addr] {
			return nil, errDialSelf
		}
		return n.pool.Get(rpc.SplitAddresses(addr))
	}
	// A proposer's transaction ids must differ from every other's: a
	// hash of the head node's id (unique in the rack) tells them apart,
	// and the clock and a counter tell a node's own apart.
	h := fnv.New32a()
	h.Write([]byte(n.cfg.ID))
	var err error
	n.proposer, err = driver.NewProposer(driver.ProposerConfig{
		Node:   h.Sum32(),
		Groups: driver.NewNodeGroups(members, driver.NewRemote(dial, addrs)),
		Logger: n.log,
	})
	if err != nil {
		return fmt.Errorf("head node %s: %w", n.cfg.ID, err)
	}
	n.keeper = driver.StartKeeper(driver.KeeperConfig{
		Proposer: n.proposer,
		Members:  func() []driver.Member { return members },
	})
	return nil
}

// stopTxn ends the keeper and the proposer's transactions.
func (n *Node) stopTxn() {
	if n.keeper != nil {
		n.keeper.Stop()
	}
	if n.proposer != nil {
		n.proposer.Close()
	}
}

// errDialSelf: the txn client never dials its own node.
var errDialSelf = errors.New("the node's own groups are reached in process")

// ErrQuota: a create would take the rack past its quota.
var ErrQuota = errors.New("rack quota exceeded")

// createAttempts bounds the rounds of a create or delete that keeps
// meeting concurrent changes of the rack's usage.
const createAttempts = 16

// readProto reads a txn key linearizably and decodes it into m; found is
// false if the key is absent.
func (n *Node) readProto(ctx context.Context, g txn.GroupID, key string, m proto.Message) (version txn.Version, found bool, err error) {
	r, err := n.proposer.Read(ctx, g, key)
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", key, err)
	}
	if !r.Found {
		return 0, false, nil
	}
	if err := proto.Unmarshal(r.Value, m); err != nil {
		return 0, false, fmt.Errorf("decode %s: %w", key, err)
	}
	return r.Version, true, nil
}

// marshalAll encodes messages for txn writes.
func marshalAll(ms ...proto.Message) ([][]byte, error) {
	out := make([][]byte, len(ms))
	for i, m := range ms {
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode %T: %w", m, err)
		}
		out[i] = b
	}
	return out, nil
}

// createVolume creates a volume in one transaction across the directory
// group (the name, the rack's usage, checked against its quota) and the
// volume group that will hold the record. A concurrent create or delete
// changes the usage under it: the transaction's condition fails and the
// create runs again, so that exactly one of two creates of a name wins.
func (n *Node) createVolume(ctx context.Context, name string, size uint64, attachHost string) (*ballastpb.Volume, error) {
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; ; attempt++ {
		if attempt == createAttempts {
			return nil, status.Errorf(codes.Aborted, "create %q: the rack's usage kept changing; try again", name)
		}
		var taken ballastpb.VolumePlacement
		if _, found, err := n.readProto(ctx, dir, volume.NameKey(name), &taken); err != nil {
			return nil, err
		} else if found {
			return nil, fmt.Errorf("%w: %q", volume.ErrExists, name)
		}
		// Volumes of the directory group's own, from before volume
		// groups, and placements made before creates were transactions
		// hold names too, without a name key.
		if legacy, err := n.legacyName(ctx, name); err != nil {
			return nil, err
		} else if legacy {
			return nil, fmt.Errorf("%w: %q", volume.ErrExists, name)
		}
		var usage ballastpb.RackUsage
		usageVersion, found, err := n.readProto(ctx, dir, volume.KeyUsage, &usage)
		if err != nil {
			return nil, err
		}
		if !found {
			// The first transactional create continues the ids the
			// directory handed out before.
			usage.NextVolumeId = n.directory.NextVolumeID()
		}
		var quota ballastpb.RackQuota
		quotaVersion, _, err := n.readProto(ctx, dir, volume.KeyQuota, &quota)
		if err != nil {
			return nil, err
		}
		if quota.MaxVolumes > 0 && usage.Volumes+1 > quota.MaxVolumes {
			return nil, fmt.Errorf("%w: %d volumes of at most %d", ErrQuota, usage.Volumes, quota.MaxVolumes)
		}
		if quota.MaxBytes > 0 && usage.Bytes+size > quota.MaxBytes {
			return nil, fmt.Errorf("%w: %d bytes provisioned, %d more asked, at most %d", ErrQuota, usage.Bytes, size, quota.MaxBytes)
		}
		primary, secondary, err := volume.Place(n.admin.peerIDs(), n.allVolumes())
		if err != nil {
			return nil, err
		}
		id := usage.NextVolumeId
		group := 1 + (id-1)%uint64(len(n.groups)-1)
		rec := &ballastpb.Volume{
			Name: name, Id: id, Group: group, SizeBytes: size, BlockSizeBytes: volume.BlockSizeBytes,
			Epoch: 1, Primary: primary, Secondaries: []string{secondary}, CreatedUnixNanos: time.Now().UnixNano(),
		}
		if g, ok := n.group(group); ok {
			// An empty volume: its replicas' incarnations hold all of it.
			// A view of the group that is behind a registration makes a
			// replica void at once, which costs a full copy, not data.
			rec.Copies = volume.CopiesAt([]string{primary, secondary}, g.fsm.Incarnation)
		}
		if attachHost != "" {
			rec.AttachedHost, rec.AttachGeneration, rec.LastGeneration = attachHost, 1, 1
		}
		next := &ballastpb.RackUsage{Volumes: usage.Volumes + 1, Bytes: usage.Bytes + size, NextVolumeId: id + 1}
		vals, err := marshalAll(next, &ballastpb.VolumePlacement{Name: name, Id: id, Group: group}, rec)
		if err != nil {
			return nil, err
		}
		spec := txn.Spec{
			Home: dir,
			Conditions: []txn.GroupCondition{
				{Group: dir, Condition: txn.Condition{Key: volume.NameKey(name)}},
				{Group: dir, Condition: txn.Condition{Key: volume.KeyUsage, Version: usageVersion}},
				{Group: dir, Condition: txn.Condition{Key: volume.KeyQuota, Version: quotaVersion}},
			},
			Writes: []txn.GroupWrite{
				{Group: dir, Write: txn.Write{Key: volume.KeyUsage, Value: vals[0]}},
				{Group: dir, Write: txn.Write{Key: volume.NameKey(name), Value: vals[1]}},
				{Group: txnGroupOf(group), Write: txn.Write{Key: volume.VolumeKey(name), Value: vals[2]}},
			},
		}
		done, err := n.commit(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("create %q: %w", name, err)
		}
		if done {
			return rec, nil
		}
	}
}

// deleteVolume deletes a volume in one transaction across the directory
// group (the name, the usage) and the volume's group (the record, whose
// data every replica then drops).
func (n *Node) deleteVolume(ctx context.Context, name string) error {
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; attempt < createAttempts; attempt++ {
		var place ballastpb.VolumePlacement
		nameVersion, found, err := n.readProto(ctx, dir, volume.NameKey(name), &place)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: %q", volume.ErrNotFound, name)
		}
		g := txnGroupOf(place.Group)
		var rec ballastpb.Volume
		recVersion, recFound, err := n.readProto(ctx, g, volume.VolumeKey(name), &rec)
		if err != nil {
			return err
		}
		if recFound && rec.ConsistencyGroup != "" {
			return status.Errorf(codes.FailedPrecondition, "volume %q is in consistency group %q: delete the group first", name, rec.ConsistencyGroup)
		}
		var usage ballastpb.RackUsage
		usageVersion, _, err := n.readProto(ctx, dir, volume.KeyUsage, &usage)
		if err != nil {
			return err
		}
		next := &ballastpb.RackUsage{NextVolumeId: usage.NextVolumeId}
		if recFound {
			next.Volumes, next.Bytes = usage.Volumes-min(usage.Volumes, 1), usage.Bytes-min(usage.Bytes, rec.SizeBytes)
		} else {
			next.Volumes, next.Bytes = usage.Volumes, usage.Bytes
		}
		vals, err := marshalAll(next)
		if err != nil {
			return err
		}
		spec := txn.Spec{
			Home: dir,
			Conditions: []txn.GroupCondition{
				{Group: dir, Condition: txn.Condition{Key: volume.NameKey(name), Version: nameVersion}},
				{Group: dir, Condition: txn.Condition{Key: volume.KeyUsage, Version: usageVersion}},
				{Group: g, Condition: txn.Condition{Key: volume.VolumeKey(name), Version: recVersion}},
			},
			Writes: []txn.GroupWrite{
				{Group: dir, Write: txn.Write{Key: volume.KeyUsage, Value: vals[0]}},
				{Group: dir, Write: txn.Write{Key: volume.NameKey(name), Delete: true}},
			},
		}
		if recFound {
			spec.Writes = append(spec.Writes, txn.GroupWrite{Group: g, Write: txn.Write{Key: volume.VolumeKey(name), Delete: true}})
		}
		done, err := n.commit(ctx, spec)
		if err != nil {
			return fmt.Errorf("delete %q: %w", name, err)
		}
		if done {
			return nil
		}
	}
	return status.Errorf(codes.Aborted, "delete %q: the rack's usage kept changing; try again", name)
}

// commit runs spec: done once it committed; false (and no error) when a
// condition failed or contention outlasted the retries, so the caller
// reads again and retries.
func (n *Node) commit(ctx context.Context, spec txn.Spec) (done bool, err error) {
	rep, err := n.proposer.CommitResolved(ctx, spec)
	switch {
	case err != nil:
		return false, status.Errorf(codes.Unavailable, "the outcome is unknown (it may still take effect): %v", err)
	case rep.Status == txn.StatusCommitted:
		return true, nil
	case rep.Status == txn.StatusAborted:
		n.log.Debug("transaction aborted; retrying", "txn", rep.Txn, "reason", rep.Refusal.Reason, "key", rep.Refusal.Condition.Key)
		return false, nil
	}
	return false, status.Errorf(codes.Unavailable, "transaction %s: outcome %s", rep.Txn, rep.Status)
}

// quota reads the rack's quota and usage, linearizably.
func (n *Node) quota(ctx context.Context) (*ballastpb.RackQuota, *ballastpb.RackUsage, error) {
	dir := txnGroupOf(consensus.DirectoryGroup)
	q, u := &ballastpb.RackQuota{}, &ballastpb.RackUsage{}
	if _, _, err := n.readProto(ctx, dir, volume.KeyQuota, q); err != nil {
		return nil, nil, err
	}
	if _, _, err := n.readProto(ctx, dir, volume.KeyUsage, u); err != nil {
		return nil, nil, err
	}
	return q, u, nil
}

// setQuota replaces the rack's quota: a one-group transaction, which
// every create then conditions on. A quota below the usage refuses
// creates only; what exists stays.
func (n *Node) setQuota(ctx context.Context, q *ballastpb.RackQuota) error {
	vals, err := marshalAll(q)
	if err != nil {
		return err
	}
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; attempt < createAttempts; attempt++ {
		done, err := n.commit(ctx, txn.Spec{Writes: []txn.GroupWrite{{Group: dir, Write: txn.Write{Key: volume.KeyQuota, Value: vals[0]}}}})
		if err != nil || done {
			return err
		}
	}
	return status.Error(codes.Aborted, "set quota: kept losing to concurrent creates; try again")
}

// moveVolume moves a volume's record to volume group to, in one
// transaction across the directory (the placement), the old group (which
// keeps a forwarding copy, so that a head node that has not yet applied
// the arrival still finds the volume) and the new group (the record).
// The volume's data and replicas stay where they are: I/O goes on, and
// its lease is renewed in the new group from then on.
func (n *Node) moveVolume(ctx context.Context, name string, to uint64) (*ballastpb.Volume, error) {
	dir := txnGroupOf(consensus.DirectoryGroup)
	for attempt := 0; attempt < createAttempts; attempt++ {
		var place ballastpb.VolumePlacement
		placeVersion, found, err := n.readProto(ctx, dir, volume.NameKey(name), &place)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("%w: %q (or created before creates were transactions, and not movable)", volume.ErrNotFound, name)
		}
		if place.Group == to {
			return nil, fmt.Errorf("%w: volume %q is in group %d already", volume.ErrInvalid, name, to)
		}
		from := txnGroupOf(place.Group)
		var rec ballastpb.Volume
		recVersion, recFound, err := n.readProto(ctx, from, volume.VolumeKey(name), &rec)
		if err != nil {
			return nil, err
		}
		if !recFound || rec.MovedTo != 0 || rec.Id != place.Id {
			return nil, fmt.Errorf("%w: volume %q has no record in group %d", volume.ErrNotFound, name, place.Group)
		}
		var there ballastpb.Volume
		thereVersion, _, err := n.readProto(ctx, txnGroupOf(to), volume.VolumeKey(name), &there)
		if err != nil {
			return nil, err
		}
		moved := proto.Clone(&rec).(*ballastpb.Volume)
		moved.Group = to
		stub := proto.Clone(&rec).(*ballastpb.Volume)
		stub.MovedTo = to
		vals, err := marshalAll(&ballastpb.VolumePlacement{Name: name, Id: place.Id, Group: to}, stub, moved)
		if err != nil {
			return nil, err
		}
		spec := txn.Spec{
			Home: dir,
			Conditions: []txn.GroupCondition{
				{Group: dir, Condition: txn.Condition{Key: volume.NameKey(name), Version: placeVersion}},
				{Group: from, Condition: txn.Condition{Key: volume.VolumeKey(name), Version: recVersion}},
				{Group: txnGroupOf(to), Condition: txn.Condition{Key: volume.VolumeKey(name), Version: thereVersion}},
			},
			Writes: []txn.GroupWrite{
				{Group: dir, Write: txn.Write{Key: volume.NameKey(name), Value: vals[0]}},
				{Group: from, Write: txn.Write{Key: volume.VolumeKey(name), Value: vals[1]}},
				{Group: txnGroupOf(to), Write: txn.Write{Key: volume.VolumeKey(name), Value: vals[2]}},
			},
		}
		done, err := n.commit(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("move %q: %w", name, err)
		}
		if done {
			n.leases.renewSoon()
			return moved, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "move %q: the volume kept changing; try again", name)
}

// legacyName reports whether name is taken the way it was before
// transactions: a volume of the directory group's own, or a placement
// without a name key. This node's view may lag (a name just deleted may
// still show), so a name it shows is checked again on the directory's
// leader, linearizably.
func (n *Node) legacyName(ctx context.Context, name string) (bool, error) {
	taken := func() bool {
		if _, err := n.directory.Get(name); err == nil {
			return true
		}
		_, placed := n.directory.Placement(name)
		return placed && !n.directory.TxnRead(volume.NameKey(name)).Found
	}
	if !taken() {
		return false, nil
	}
	resp, err := onLeader(n.admin, ctx, func(context.Context) (*ballastpb.GetVolumeResponse, error) {
		if err := n.admin.readBarrier(); err != nil {
			return nil, err
		}
		if !taken() {
			return nil, fmt.Errorf("%w: %q", volume.ErrNotFound, name)
		}
		return &ballastpb.GetVolumeResponse{}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		// Another node leads the directory: it answers for its view.
		return c.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: name})
	})
	switch {
	case status.Code(err) == codes.NotFound:
		return false, nil
	case err != nil:
		return false, err
	}
	return resp != nil, nil
}
