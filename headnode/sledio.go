package headnode

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// shardID names one shard of one segment of a volume.
type shardID struct {
	volume  uint64
	segment uint64
	index   uint32
}

func (id shardID) String() string {
	return fmt.Sprintf("volume %d segment %d shard %d", id.volume, id.segment, id.index)
}

// shardStamp is what a sled says a shard it read is: the identity and the
// writer's epoch in the shard's header.
type shardStamp struct {
	id    shardID
	epoch uint64
	// unknown: the sled predates stamps and reported none. Its reads are
	// taken as before, unchecked, so that head nodes may be upgraded
	// before the sleds.
	unknown bool
}

// shardInfo is a shard a sled reports holding.
type shardInfo struct {
	id       shardID
	size     uint64
	modified time.Time
}

// shardStore is how the head node reaches the sleds. The gRPC version is
// below; tests use an in-memory one with injected faults.
type shardStore interface {
	Put(ctx context.Context, sled string, id shardID, epoch uint64, data []byte) error
	// Get returns bytes [off, off+length) of a shard, verified by the
	// sled, and the stamp of the shard the sled read them from.
	Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error)
	Delete(ctx context.Context, sled string, id shardID, epoch uint64) error
	List(ctx context.Context, sled string, volume uint64) ([]shardInfo, error)
	Stat(ctx context.Context, sled string) (*sledpb.StatResponse, error)
}

// The classes of sled error the head node acts on; test with errors.Is.
var (
	errShardMissing = errors.New("sled: no such shard")
	errShardCorrupt = errors.New("sled: shard failed its checksum")
	errSledFull     = errors.New("sled: no room for the shard")
	errStaleEpoch   = errors.New("sled: epoch is stale")
	errSledDown     = errors.New("sled: unreachable")
)

// classifySledError maps a gRPC status from a sled onto the classes.
func classifySledError(sled string, op string, err error) error {
	if err == nil {
		return nil
	}
	var class error
	switch status.Code(err) {
	case codes.NotFound:
		class = errShardMissing
	case codes.DataLoss:
		class = errShardCorrupt
	case codes.ResourceExhausted:
		class = errSledFull
	case codes.FailedPrecondition:
		class = errStaleEpoch
	default:
		class = errSledDown
	}
	return fmt.Errorf("%w: sled %s: %s: %v", class, sled, op, err)
}

// grpcShards reaches sleds over gRPC, at the addresses the directory group
// records for them. Every shard call may be sent twice (a put of the same
// bytes, a get, a delete), so each is marked rpc.Idempotent: a call caught
// on a network that fails is resent over the other.
type grpcShards struct {
	addresses func(sled string) ([]string, bool)
	pool      *rpc.Pool
}

func (g *grpcShards) client(sled string) (sledpb.SledClient, error) {
	addrs, ok := g.addresses(sled)
	if !ok {
		return nil, fmt.Errorf("%w: sled %s is not registered", errSledDown, sled)
	}
	conn, err := g.pool.Get(addrs)
	if err != nil {
		return nil, fmt.Errorf("%w: sled %s: %v", errSledDown, sled, err)
	}
	return sledpb.NewSledClient(conn), nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (g *grpcShards) Put(ctx context.Context, sled string, id shardID, epoch uint64, data []byte) error {
	c, err := g.client(sled)
	if err != nil {
		return err
	}
	_, err = c.PutShard(ctx, &sledpb.PutShardRequest{
		Id:     &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index},
		Epoch:  epoch,
		Data:   data,
		Crc32C: crc32.Checksum(data, castagnoli),
	}, rpc.Idempotent)
	return classifySledError(sled, "put "+id.String(), err)
}

func (g *grpcShards) Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error) {
	c, err := g.client(sled)
	if err != nil {
		return nil, shardStamp{}, err
	}
	resp, err := c.GetShard(ctx, &sledpb.GetShardRequest{
		Id:     &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index},
		Offset: off,
		Length: length,
	}, rpc.Idempotent)
	if err != nil {
		return nil, shardStamp{}, classifySledError(sled, "get "+id.String(), err)
	}
	if length != 0 && uint64(len(resp.Data)) != length {
		return nil, shardStamp{}, fmt.Errorf("%w: sled %s returned %d bytes of %s for %d", errSledDown, sled, len(resp.Data), id, length)
	}
	stamp := shardStamp{
		id:      shardID{volume: resp.Id.GetVolumeId(), segment: resp.Id.GetSegmentId(), index: resp.Id.GetIndex()},
		epoch:   resp.Epoch,
		unknown: resp.Id == nil,
	}
	return resp.Data, stamp, nil
}

func (g *grpcShards) Delete(ctx context.Context, sled string, id shardID, epoch uint64) error {
	c, err := g.client(sled)
	if err != nil {
		return err
	}
	_, err = c.DeleteShard(ctx, &sledpb.DeleteShardRequest{
		Id:    &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index},
		Epoch: epoch,
	}, rpc.Idempotent)
	return classifySledError(sled, "delete "+id.String(), err)
}

func (g *grpcShards) List(ctx context.Context, sled string, vol uint64) ([]shardInfo, error) {
	c, err := g.client(sled)
	if err != nil {
		return nil, err
	}
	stream, err := c.ListShards(ctx, &sledpb.ListShardsRequest{VolumeId: vol, AllVolumes: vol == 0})
	if err != nil {
		return nil, classifySledError(sled, "list", err)
	}
	var out []shardInfo
	for {
		si, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, classifySledError(sled, "list", err)
		}
		out = append(out, shardInfo{
			id:       shardID{volume: si.Id.GetVolumeId(), segment: si.Id.GetSegmentId(), index: si.Id.GetIndex()},
			size:     si.SizeBytes,
			modified: time.Unix(0, si.ModifiedUnixNanos),
		})
	}
}

func (g *grpcShards) Stat(ctx context.Context, sled string) (*sledpb.StatResponse, error) {
	c, err := g.client(sled)
	if err != nil {
		return nil, err
	}
	resp, err := c.Stat(ctx, &sledpb.StatRequest{}, rpc.Idempotent)
	return resp, classifySledError(sled, "stat", err)
}
