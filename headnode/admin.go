package headnode

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
	// barrierTerm is the term in which this node, as leader, last applied
	// a barrier, so its state holds every entry committed before it.
	barrierTerm atomic.Uint64
}

// onLeader runs local on the leader, or remote against the leader through
// a forwarded call, retrying while leadership moves, until the node's
// LeaderWaitTimeout.
func onLeader[T any](a *adminServer, ctx context.Context,
	local func(context.Context) (T, error),
	remote func(context.Context, ballastpb.AdminClient) (T, error),
) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, a.node.cfg.LeaderWaitTimeout)
	defer cancel()
	md, _ := metadata.FromIncomingContext(ctx)
	forwarded := len(md.Get(forwardedKey)) > 0
	r := a.node.raft
	for {
		var err error
		if r.State() == raft.Leader {
			var out T
			out, err = local(ctx)
			if !errors.Is(err, errNotLeader) {
				return out, toStatus(err)
			}
		} else if forwarded {
			return zero, status.Error(codes.Unavailable, "head node "+a.node.cfg.ID+" is not the directory leader")
		} else if _, id := r.LeaderWithID(); id != "" {
			addrs, ok := a.node.cfg.peerAddresses(string(id))
			if !ok {
				return zero, status.Errorf(codes.Internal, "leader %q is not a known head node", id)
			}
			conn, cerr := a.node.pool.Get(addrs)
			if cerr != nil {
				return zero, status.Errorf(codes.Unavailable, "reach leader %s: %v", id, cerr)
			}
			out, err := remote(metadata.AppendToOutgoingContext(ctx, forwardedKey, a.node.cfg.ID), ballastpb.NewAdminClient(conn))
			if status.Code(err) != codes.Unavailable {
				return out, err
			}
		}
		select {
		case <-ctx.Done():
			return zero, status.Errorf(codes.Unavailable, "directory group has no reachable leader: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
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

// apply commits a directory command through raft and returns the volume
// it touched.
func (a *adminServer) apply(cmd *ballastpb.DirectoryCommand) (*ballastpb.Volume, error) {
	res, err := a.applyCommand(cmd)
	return res.Volume, err
}

// applyCommand commits a directory command through raft; the error is the
// commit's or the directory's refusal.
func (a *adminServer) applyCommand(cmd *ballastpb.DirectoryCommand) (volume.ApplyResult, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return volume.ApplyResult{}, fmt.Errorf("encode command: %w", err)
	}
	f := a.node.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return volume.ApplyResult{}, errNotLeader
		}
		return volume.ApplyResult{}, fmt.Errorf("commit directory command: %w", err)
	}
	res, ok := f.Response().(volume.ApplyResult)
	if !ok {
		return volume.ApplyResult{}, fmt.Errorf("directory returned %T", f.Response())
	}
	return res, res.Err
}

// readBarrier makes a leader's reads linearizable: once per term it waits
// until its state machine holds every committed entry, and on every read it
// checks it is still the leader.
func (a *adminServer) readBarrier() error {
	r := a.node.raft
	term := currentTerm(r)
	if a.barrierTerm.Load() != term {
		if err := r.Barrier(applyTimeout).Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) {
				return errNotLeader
			}
			return fmt.Errorf("directory barrier: %w", err)
		}
		a.barrierTerm.Store(term)
	}
	if err := r.VerifyLeader().Error(); err != nil {
		return errNotLeader
	}
	return nil
}

func currentTerm(r *raft.Raft) uint64 {
	var term uint64
	fmt.Sscan(r.Stats()["term"], &term)
	return term
}

func (a *adminServer) peerIDs() []string {
	ids := make([]string, 0, len(a.node.cfg.Peers))
	for _, p := range a.node.cfg.Peers {
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
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.CreateVolumeResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		if _, err := a.node.directory.Get(req.Name); err == nil {
			return nil, fmt.Errorf("%w: %q", volume.ErrExists, req.Name)
		}
		primary, secondary, err := volume.Place(a.peerIDs(), a.node.directory.List())
		if err != nil {
			return nil, err
		}
		v, err := a.apply(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_CreateVolume{
			CreateVolume: &ballastpb.CreateVolumeCommand{Volume: &ballastpb.Volume{
				Name:        req.Name,
				SizeBytes:   req.SizeBytes,
				Primary:     primary,
				Secondaries: []string{secondary},
			}},
		}})
		if err != nil {
			return nil, err
		}
		return &ballastpb.CreateVolumeResponse{Volume: v}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.CreateVolumeResponse, error) {
		return c.CreateVolume(ctx, req)
	})
}

func (a *adminServer) GetVolume(ctx context.Context, req *ballastpb.GetVolumeRequest) (*ballastpb.GetVolumeResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.GetVolumeResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		v, err := a.node.directory.Get(req.Name)
		if err != nil {
			return nil, err
		}
		resp := &ballastpb.GetVolumeResponse{Volume: v}
		for _, id := range append([]string{v.Primary}, v.Secondaries...) {
			addrs, _ := a.node.cfg.peerAddresses(id)
			resp.Replicas = append(resp.Replicas, &ballastpb.HeadNode{Id: id, Addresses: addrs})
		}
		return resp, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return c.GetVolume(ctx, req)
	})
}

func (a *adminServer) ListVolumes(ctx context.Context, req *ballastpb.ListVolumesRequest) (*ballastpb.ListVolumesResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.ListVolumesResponse, error) {
		if err := a.readBarrier(); err != nil {
			return nil, err
		}
		return &ballastpb.ListVolumesResponse{Volumes: a.node.directory.List()}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ListVolumesResponse, error) {
		return c.ListVolumes(ctx, req)
	})
}

func (a *adminServer) ResizeVolume(ctx context.Context, req *ballastpb.ResizeVolumeRequest) (*ballastpb.ResizeVolumeResponse, error) {
	if err := volume.ValidateSize(req.SizeBytes); err != nil {
		return nil, toStatus(err)
	}
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.ResizeVolumeResponse, error) {
		v, err := a.apply(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ResizeVolume{
			ResizeVolume: &ballastpb.ResizeVolumeCommand{Name: req.Name, SizeBytes: req.SizeBytes},
		}})
		if err != nil {
			return nil, err
		}
		return &ballastpb.ResizeVolumeResponse{Volume: v}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.ResizeVolumeResponse, error) {
		return c.ResizeVolume(ctx, req)
	})
}

func (a *adminServer) DeleteVolume(ctx context.Context, req *ballastpb.DeleteVolumeRequest) (*ballastpb.DeleteVolumeResponse, error) {
	return onLeader(a, ctx, func(ctx context.Context) (*ballastpb.DeleteVolumeResponse, error) {
		if _, err := a.apply(&ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_DeleteVolume{
			DeleteVolume: &ballastpb.DeleteVolumeCommand{Name: req.Name},
		}}); err != nil {
			return nil, err
		}
		return &ballastpb.DeleteVolumeResponse{}, nil
	}, func(ctx context.Context, c ballastpb.AdminClient) (*ballastpb.DeleteVolumeResponse, error) {
		return c.DeleteVolume(ctx, req)
	})
}
