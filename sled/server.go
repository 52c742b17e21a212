package sled

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/proto/sledpb"
)

// server is the gRPC face of a Sled.
type server struct {
	sledpb.UnimplementedSledServer
	sled *Sled
}

// toStatus maps the store's error classes onto the codes sled.proto names.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrCorrupt):
		return status.Error(codes.DataLoss, err.Error())
	case errors.Is(err, ErrStaleEpoch):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrNoSpace):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func isCorruptErr(err error) bool { return errors.Is(err, ErrCorrupt) }

func shardID(id *sledpb.ShardID) (ShardID, error) {
	if id == nil {
		return ShardID{}, status.Error(codes.InvalidArgument, "no shard id")
	}
	return ShardID{Volume: id.VolumeId, Segment: id.SegmentId, Index: id.Index}, nil
}

func (s *server) PutShard(ctx context.Context, req *sledpb.PutShardRequest) (*sledpb.PutShardResponse, error) {
	id, err := shardID(req.Id)
	if err != nil {
		return nil, err
	}
	dev, err := s.sled.store.putChecked(id, req.Epoch, req.Data, req.Crc32C)
	if err != nil {
		return nil, toStatus(err)
	}
	return &sledpb.PutShardResponse{Device: dev}, nil
}

func (s *server) GetShard(ctx context.Context, req *sledpb.GetShardRequest) (*sledpb.GetShardResponse, error) {
	id, err := shardID(req.Id)
	if err != nil {
		return nil, err
	}
	data, h, err := s.sled.store.get(id, req.Offset, req.Length)
	if err != nil {
		return nil, toStatus(err)
	}
	return &sledpb.GetShardResponse{
		Data:           data,
		ShardSizeBytes: h.length,
		Id:             &sledpb.ShardID{VolumeId: h.id.Volume, SegmentId: h.id.Segment, Index: h.id.Index},
		Epoch:          h.epoch,
	}, nil
}

// shardRange is one range of a GetShardRanges request, checked.
type shardRange struct {
	id          ShardID
	off, length uint64
}

// parseRanges checks a GetShardRanges request against the bounds
// sled.proto gives (limits.go) and returns its ranges; any range that
// breaks them refuses the whole request, with ErrInvalid saying which and
// why. Whether a range is within its shard is each range's own outcome.
func parseRanges(req *sledpb.GetShardRangesRequest) ([]shardRange, error) {
	n := len(req.GetRanges())
	if n == 0 || n > sledpb.MaxRangesPerRequest {
		return nil, fmt.Errorf("%w: %d ranges in one request: want 1 to %d", ErrInvalid, n, sledpb.MaxRangesPerRequest)
	}
	out := make([]shardRange, n)
	var total uint64
	for i, r := range req.Ranges {
		if r.GetId() == nil {
			return nil, fmt.Errorf("%w: range %d has no shard id", ErrInvalid, i)
		}
		id := ShardID{Volume: r.Id.VolumeId, Segment: r.Id.SegmentId, Index: r.Id.Index}
		switch {
		case r.Length == 0:
			return nil, fmt.Errorf("%w: range %d of %s has no length", ErrInvalid, i, id)
		case r.Offset+r.Length < r.Offset:
			return nil, fmt.Errorf("%w: range %d of %s, [%d, +%d), ends past 2^64", ErrInvalid, i, id, r.Offset, r.Length)
		case r.Length > sledpb.MaxRangeBytesPerRequest || total+r.Length > sledpb.MaxRangeBytesPerRequest:
			return nil, fmt.Errorf("%w: ranges 0 to %d read more than the %d bytes a request may", ErrInvalid, i, sledpb.MaxRangeBytesPerRequest)
		}
		total += r.Length
		out[i] = shardRange{id: id, off: r.Offset, length: r.Length}
	}
	return out, nil
}

// GetShardRanges reads the ranges of a request (readRanges).
func (s *server) GetShardRanges(ctx context.Context, req *sledpb.GetShardRangesRequest) (*sledpb.GetShardRangesResponse, error) {
	ranges, err := parseRanges(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return readRanges(ctx, s.sled.store, ranges)
}

// readRanges reads each range as GetShard would, one after the other
// (each through its shard's open file); a range that fails, fails alone.
func readRanges(ctx context.Context, store *Store, ranges []shardRange) (*sledpb.GetShardRangesResponse, error) {
	resp := &sledpb.GetShardRangesResponse{Results: make([]*sledpb.ShardRangeResult, len(ranges))}
	for i, r := range ranges {
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		data, h, err := store.get(r.id, r.off, r.length)
		if err != nil {
			resp.Results[i] = &sledpb.ShardRangeResult{Code: uint32(status.Code(toStatus(err))), Error: err.Error()}
			continue
		}
		resp.Results[i] = &sledpb.ShardRangeResult{
			Data:           data,
			ShardSizeBytes: h.length,
			Id:             &sledpb.ShardID{VolumeId: h.id.Volume, SegmentId: h.id.Segment, Index: h.id.Index},
			Epoch:          h.epoch,
		}
	}
	return resp, nil
}

func (s *server) DeleteShard(ctx context.Context, req *sledpb.DeleteShardRequest) (*sledpb.DeleteShardResponse, error) {
	id, err := shardID(req.Id)
	if err != nil {
		return nil, err
	}
	if err := s.sled.store.Delete(id, req.Epoch); err != nil {
		return nil, toStatus(err)
	}
	return &sledpb.DeleteShardResponse{}, nil
}

func (s *server) ListShards(req *sledpb.ListShardsRequest, stream sledpb.Sled_ListShardsServer) error {
	for _, sh := range s.sled.store.List(req.VolumeId, req.AllVolumes) {
		if err := stream.Send(&sledpb.ShardInfo{
			Id:                &sledpb.ShardID{VolumeId: sh.ID.Volume, SegmentId: sh.ID.Segment, Index: sh.ID.Index},
			SizeBytes:         sh.Length,
			Device:            sh.Device,
			ModifiedUnixNanos: sh.Modified.UnixNano(),
		}); err != nil {
			return err
		}
	}
	return nil
}

func (s *server) Stat(ctx context.Context, req *sledpb.StatRequest) (*sledpb.StatResponse, error) {
	s.sled.store.RefreshSpace()
	resp := &sledpb.StatResponse{SledId: s.sled.cfg.ID, Full: s.sled.store.Full()}
	for _, d := range s.sled.store.Devices() {
		resp.Devices = append(resp.Devices, &sledpb.DeviceStat{
			Id: d.ID, Path: d.Path, CapacityBytes: d.CapacityBytes, UsedBytes: d.UsedBytes,
			Shards: d.Shards, Failed: d.Failed, Failure: d.Failure,
		})
		resp.Shards += d.Shards
		if !d.Failed {
			resp.CapacityBytes += d.CapacityBytes
			resp.UsedBytes += d.UsedBytes
		}
	}
	st := s.sled.scrub.snapshot()
	resp.Scrub = &sledpb.ScrubStat{
		Passes: st.Passes, ShardsVerified: st.ShardsVerified, BytesVerified: st.BytesVerified,
		CorruptFound: s.sled.store.Quarantined(), RateBytesPerSecond: st.RateBytesPerSec,
	}
	if !st.LastPass.IsZero() {
		resp.Scrub.LastPassUnixNanos = st.LastPass.UnixNano()
	}
	return resp, nil
}
