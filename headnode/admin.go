package headnode

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// forwardedKey marks an admin call that a follower forwarded to the leader;
// the receiver never forwards it again, so a stale view cannot loop.
const forwardedKey = "ballast-forwarded"

// applyTimeout bounds one directory command's trip through raft.
const applyTimeout = 10 * time.Second

// errNotLeader asks the admin call loop to find the leader again.
var errNotLeader = errors.New("not the directory leader")

// adminServer answers Admin on every head node: the leader of the
// directory group serves, followers forward to it.
type adminServer struct {
	ballastpb.UnimplementedAdminServer
	node *Node
}

// onLeader runs local on the directory group's leader, or remote against
// it through a forwarded call (see onGroupLeader).
func onLeader[T any](a *adminServer, ctx context.Context,
	local func(context.Context) (T, error),
	remote func(context.Context, ballastpb.AdminClient) (T, error),
) (T, error) {
	return onGroupLeader(a, ctx, a.node.groups[consensus.DirectoryGroup], local, remote)
}

// toStatus maps the volume package's error classes onto gRPC codes.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case status.Code(err) != codes.Unknown:
		return err
	case errors.Is(err, volume.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, volume.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, volume.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, volume.ErrConflict), errors.Is(err, volume.ErrDeposed):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, volume.ErrBusy):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrQuota):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, volume.ErrNoPlacement):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, raft.ErrLeadershipLost):
		return status.Error(codes.Unavailable, "leadership lost while committing; the outcome is unknown: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

// apply commits a directory command on this node, the directory leader,
// and returns the volume it touched.
func (a *adminServer) apply(cmd *ballastpb.DirectoryCommand) (*ballastpb.Volume, error) {
	res, err := a.applyCommand(cmd)
	return res.Volume, err
}

// applyCommand commits a directory command on this node, the directory
// leader; the error is the commit's or the directory's refusal.
func (a *adminServer) applyCommand(cmd *ballastpb.DirectoryCommand) (volume.ApplyResult, error) {
	return a.node.groups[consensus.DirectoryGroup].apply(cmd)
}

// readBarrier makes the directory leader's reads linearizable.
func (a *adminServer) readBarrier() error {
	return a.node.groups[consensus.DirectoryGroup].readBarrier()
}

func currentTerm(r *raft.Raft) uint64 {
	var term uint64
	fmt.Sscan(r.Stats()["term"], &term)
	return term
}

func (a *adminServer) peerIDs() []string {
	peers := a.node.peers()
	ids := make([]string, 0, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
	}
	return ids
}

func (a *adminServer) CreateVolume(ctx context.Context, req *ballastpb.CreateVolumeRequest) (*ballastpb.CreateVolumeResponse, error) {
	if err := volume.ValidateName(req.Name); err != nil {
		return nil, toStatus(err)
	}
	if err := volume.ValidateSize(req.SizeBytes); err != nil {
		return nil, toStatus(err)
	}
	if req.AttachHost != "" {
		if err := migrate.ValidateHost(req.AttachHost); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	v, err := a.node.createVolume(ctx, req.Name, req.SizeBytes, req.AttachHost)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.CreateVolumeResponse{Volume: v}, nil
}

// lookup finds a volume's record by name, linearizably: on the directory
// leader (which the caller must be, past its read barrier), in the
// directory's own records or through its placement in a volume group.
func (a *adminServer) lookup(ctx context.Context, name string) (*ballastpb.Volume, *ballastpb.VolumePlacement, error) {
	dir := a.node.groups[consensus.DirectoryGroup]
	if v, err := dir.fsm.Get(name); err == nil {
		return v, nil, nil
	}
	p, ok := dir.fsm.Placement(name)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %q", volume.ErrNotFound, name)
	}
	resp, err := a.node.readGroup(ctx, p.Group)
	if err != nil {
		return nil, p, err
	}
	for _, v := range resp.Volumes {
		if v.Id == p.Id {
			return v, p, nil
		}
	}
	// Moving between groups: the placement may name the new group before
	// its leader installed the record; the old group's copy answers.
	if v, ok := a.node.volumeByID(p.Id); ok {
		return proto.Clone(v).(*ballastpb.Volume), p, nil
	}
	return nil, p, fmt.Errorf("%w: %q (its creation did not finish; create it again)", volume.ErrNotFound, name)
}

func (a *adminServer) GetVolume(ctx context.Context, req *ballastpb.GetVolumeRequest) (*ballastpb.GetVolumeResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.GetVolumeResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		v, _, err := a.lookup(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		resp := &ballastpb.GetVolumeResponse{Volume: v}
		for _, id := range append([]string{v.Primary}, v.Secondaries...) {
			p, _ := a.node.peer(id)
			resp.Replicas = append(resp.Replicas, &ballastpb.HeadNode{Id: id, Addresses: p.Addresses})
		}
		if req.WithUsage {
			u, err := a.usageOf(ctx, v)
			if err != nil {
				resp.UsageError = err.Error()
			}
			resp.Usage = u
		}
		return resp, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return c.GetVolume(ctx, req)
	})
}

// usageOf asks the volume's primary what the volume holds: this node's
// store if it is the primary, else the primary's.
func (a *adminServer) usageOf(ctx context.Context, v *ballastpb.Volume) (*ballastpb.VolumeUsage, error) {
	if v.Primary == a.node.cfg.ID {
		return a.node.volumeUsage(v)
	}
	p, ok := a.node.peer(v.Primary)
	if !ok {
		return nil, fmt.Errorf("primary %q of volume %s is not a known head node", v.Primary, v.Name)
	}
	conn, err := a.node.pool.Get(p.Addresses)
	if err != nil {
		return nil, fmt.Errorf("reach primary %s: %w", v.Primary, err)
	}
	resp, err := ballastpb.NewAdminClient(conn).VolumeUsage(ctx, &ballastpb.VolumeUsageRequest{VolumeId: v.Id})
	if err != nil {
		return nil, fmt.Errorf("usage of volume %s from primary %s: %w", v.Name, v.Primary, err)
	}
	return resp.Usage, nil
}

// VolumeUsage answers from this node's copy, if it is the volume's primary.
func (a *adminServer) VolumeUsage(ctx context.Context, req *ballastpb.VolumeUsageRequest) (*ballastpb.VolumeUsageResponse, error) {
	v, ok := a.node.volumeByID(req.VolumeId)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no volume with id %d", req.VolumeId)
	}
	if v.Primary != a.node.cfg.ID {
		return nil, status.Errorf(codes.FailedPrecondition, "head node %s is not the primary of volume %s (%s is)", a.node.cfg.ID, v.Name, v.Primary)
	}
	u, err := a.node.volumeUsage(v)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.VolumeUsageResponse{Usage: u}, nil
}

func (a *adminServer) ListVolumes(ctx context.Context, req *ballastpb.ListVolumesRequest) (*ballastpb.ListVolumesResponse, error) {
	vols, err := a.node.readAllVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.ListVolumesResponse{Volumes: vols}, nil
}

func (a *adminServer) ResizeVolume(ctx context.Context, req *ballastpb.ResizeVolumeRequest) (*ballastpb.ResizeVolumeResponse, error) {
	if err := volume.ValidateSize(req.SizeBytes); err != nil {
		return nil, toStatus(err)
	}
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.ResizeVolumeResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		cmd := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ResizeVolume{
			ResizeVolume: &ballastpb.ResizeVolumeCommand{Name: req.Name, SizeBytes: req.SizeBytes},
		}}
		v, _, err := a.lookup(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		res, err := a.node.applyIn(ctx, v.Group, cmd)
		if err != nil {
			return nil, err
		}
		return &ballastpb.ResizeVolumeResponse{Volume: res.Volume}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ResizeVolumeResponse, error) {
		return c.ResizeVolume(ctx, req)
	})
}

func (a *adminServer) DeleteVolume(ctx context.Context, req *ballastpb.DeleteVolumeRequest) (*ballastpb.DeleteVolumeResponse, error) {
	err := a.node.deleteVolume(ctx, req.Name)
	if !errors.Is(err, volume.ErrNotFound) {
		if err != nil {
			return nil, toStatus(err)
		}
		return &ballastpb.DeleteVolumeResponse{}, nil
	}
	// No transactional name: a volume of the directory group's own, or
	// one placed before creates were transactions.
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.DeleteVolumeResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		v, p, err := a.lookup(ctx, req.Name)
		if err != nil && (p == nil || !errors.Is(err, volume.ErrNotFound)) {
			return nil, err
		}
		// The record goes first (every replica drops the data as it
		// applies the delete), then the name: a delete stopped between
		// the two leaves a placement without a record, which deleting
		// the name again removes.
		if v != nil {
			if _, err := a.node.applyIn(ctx, v.Group, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_DeleteVolume{
				DeleteVolume: &ballastpb.DeleteVolumeCommand{Name: req.Name},
			}}); err != nil {
				return nil, err
			}
		}
		if p != nil {
			if _, err := a.applyCommand(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_UnplaceVolume{
				UnplaceVolume: &ballastpb.UnplaceVolumeCommand{Name: p.Name, Id: p.Id},
			}}); err != nil {
				return nil, err
			}
		}
		return &ballastpb.DeleteVolumeResponse{}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.DeleteVolumeResponse, error) {
		return c.DeleteVolume(ctx, req)
	})
}

func (a *adminServer) GetQuota(ctx context.Context, req *ballastpb.GetQuotaRequest) (*ballastpb.GetQuotaResponse, error) {
	q, u, err := a.node.quota(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.GetQuotaResponse{Quota: q, Usage: u}, nil
}

func (a *adminServer) SetQuota(ctx context.Context, req *ballastpb.SetQuotaRequest) (*ballastpb.SetQuotaResponse, error) {
	if req.Quota == nil {
		return nil, status.Error(codes.InvalidArgument, "no quota given")
	}
	if err := a.node.setQuota(ctx, req.Quota); err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.SetQuotaResponse{}, nil
}

func (a *adminServer) MoveVolume(ctx context.Context, req *ballastpb.MoveVolumeRequest) (*ballastpb.MoveVolumeResponse, error) {
	if req.Group < 1 || req.Group >= uint64(len(a.node.groups)) {
		return nil, status.Errorf(codes.InvalidArgument, "no volume group %d (there are 1..%d)", req.Group, len(a.node.groups)-1)
	}
	v, err := a.node.moveVolume(ctx, req.Name, req.Group)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ballastpb.MoveVolumeResponse{Volume: v}, nil
}

// attachForwardedKey marks a ChangeAttachment forwarded to the volume's
// primary; the receiver never forwards it again.
const attachForwardedKey = "ballast-attachment-forwarded"

// ChangeAttachment runs on the volume's primary, which alone changes the
// attachment (see attachGate); any other head node forwards it there.
func (a *adminServer) ChangeAttachment(ctx context.Context, req *ballastpb.ChangeAttachmentRequest) (*ballastpb.ChangeAttachmentResponse, error) {
	c := migrate.Change{Host: req.Host}
	switch req.Change {
	case ballastpb.AttachmentChange_ATTACHMENT_CHANGE_ATTACH:
		c.Kind = migrate.Attach
	case ballastpb.AttachmentChange_ATTACHMENT_CHANGE_DETACH:
		c.Kind = migrate.Detach
	case ballastpb.AttachmentChange_ATTACHMENT_CHANGE_PREPARE_MIGRATION:
		c.Kind = migrate.Prepare
	case ballastpb.AttachmentChange_ATTACHMENT_CHANGE_ABORT_MIGRATION:
		c.Kind = migrate.Abort
	case ballastpb.AttachmentChange_ATTACHMENT_CHANGE_SWITCH_NOW:
		c.Kind = migrate.SwitchNow
	default:
		return nil, status.Errorf(codes.InvalidArgument, "unknown attachment change %v", req.Change)
	}
	if c.Kind != migrate.Detach && c.Kind != migrate.Abort {
		if err := migrate.ValidateHost(req.Host); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	got, err := a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: req.Name})
	if err != nil {
		return nil, err
	}
	v := got.Volume
	if v.Primary != a.node.cfg.ID {
		md, _ := metadata.FromIncomingContext(ctx)
		if len(md.Get(attachForwardedKey)) > 0 {
			return nil, status.Errorf(codes.Unavailable, "head node %s is not the primary of volume %s", a.node.cfg.ID, req.Name)
		}
		p, ok := a.node.peer(v.Primary)
		if !ok {
			return nil, status.Errorf(codes.Unavailable, "primary %q of volume %s is not a known head node", v.Primary, req.Name)
		}
		conn, err := a.node.pool.Get(p.Addresses)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "reach primary %s: %v", v.Primary, err)
		}
		octx := metadata.AppendToOutgoingContext(ctx, attachForwardedKey, a.node.cfg.ID)
		return ballastpb.NewAdminClient(conn).ChangeAttachment(octx, req)
	}
	pv, err := a.node.primaryFor(v)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "volume %s: %v", req.Name, err)
	}
	if pv.vol.Epoch != v.Epoch {
		return nil, status.Errorf(codes.Unavailable, "volume %s: this head node is primary at epoch %d, the record at %d", req.Name, pv.vol.Epoch, v.Epoch)
	}
	if err := pv.gate.change(ctx, c); err != nil {
		return nil, err
	}
	got, err = a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: req.Name})
	if err != nil {
		return nil, err
	}
	return &ballastpb.ChangeAttachmentResponse{Volume: got.Volume}, nil
}
