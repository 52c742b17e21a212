package headnode

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
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

// shardRange is one range of a batched read: bytes [off, off+length) of
// a shard, length at least 1.
type shardRange struct {
	id          shardID
	off, length uint64
}

// rangeResult is the outcome of one range of a batched read: its verified
// data and the stamp of the shard it came from, or why it failed.
type rangeResult struct {
	data  []byte
	stamp shardStamp
	err   error
}

// rangeBatcher is a shardStore that reads several ranges of one sled in
// one request (GetShardRanges). The gRPC store is one; a store that is
// not is read range by range.
type rangeBatcher interface {
	// GetRanges returns one result per range, in order; its error means
	// no range was read (the sled is unreachable, or predates batches:
	// errBatchUnsupported).
	GetRanges(ctx context.Context, sled string, ranges []shardRange) ([]rangeResult, error)
}

// errBatchUnsupported: the sled does not serve GetShardRanges.
var errBatchUnsupported = errors.New("sled: no batched reads")

// The classes of sled error the head node acts on; test with errors.Is.
var (
	errShardMissing = errors.New("sled: no such shard")
	errShardCorrupt = errors.New("sled: shard failed its checksum")
	errSledFull     = errors.New("sled: no room for the shard")
	errStaleEpoch   = errors.New("sled: epoch is stale")
	errSledDown     = errors.New("sled: unreachable")
	// errSledCanceled: the caller gave up on the request (a read that has
	// its shards from other sleds, a put whose segment failed elsewhere);
	// it says nothing of the sled, which must not be taken for down.
	errSledCanceled = errors.New("sled: request canceled")
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
	case codes.Canceled:
		class = errSledCanceled
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
	// wire, if not nil, carries the puts (sledwire.go).
	wire *sledWire
	// noBatch holds when each sled that answered a GetShardRanges with
	// Unimplemented (one that predates it) did; it is asked again after
	// noBatchRetry, in case it was upgraded.
	noBatch sync.Map // sled id -> time.Time
}

// noBatchRetry is how long a sled that cannot batch reads is not asked to.
const noBatchRetry = time.Minute

func (g *grpcShards) client(sled string) (sledpb.SledClient, error) {
	conn, err := g.conn(sled)
	if err != nil {
		return nil, err
	}
	return sledpb.NewSledClient(conn), nil
}

func (g *grpcShards) conn(sled string) (*rpc.Conn, error) {
	addrs, ok := g.addresses(sled)
	if !ok {
		return nil, fmt.Errorf("%w: sled %s is not registered", errSledDown, sled)
	}
	conn, err := g.pool.Get(addrs)
	if err != nil {
		return nil, fmt.Errorf("%w: sled %s: %v", errSledDown, sled, err)
	}
	return conn, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (g *grpcShards) Put(ctx context.Context, sled string, id shardID, epoch uint64, data []byte) error {
	conn, err := g.conn(sled)
	if err != nil {
		return err
	}
	if g.wire != nil {
		if sent, err := g.wire.put(ctx, sled, conn, id, epoch, data); sent {
			return err
		}
	}
	_, err = sledpb.NewSledClient(conn).PutShard(ctx, &sledpb.PutShardRequest{
		Id:     &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index},
		Epoch:  epoch,
		Data:   data,
		Crc32C: crc32.Checksum(data, castagnoli),
	}, rpc.Idempotent)
	return classifySledError(sled, "put "+id.String(), err)
}

func (g *grpcShards) Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error) {
	if g.wire != nil && length > 0 {
		// A range of a shard: the framed protocol's range read, as one
		// range (a read of one run per sled, which is most of them).
		if conn, err := g.conn(sled); err == nil {
			r := shardRange{id: id, off: off, length: length}
			req := &sledpb.GetShardRangesRequest{Ranges: []*sledpb.ShardRange{{
				Id: &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index}, Offset: off, Length: length}}}
			if sent, resp, err := g.wire.getRanges(ctx, sled, conn, req); sent {
				if err != nil {
					return nil, shardStamp{}, err
				}
				res := rangeResultOf(sled, r, resp.Results[0])
				return res.data, res.stamp, res.err
			}
		}
	}
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

// GetRanges reads ranges of a sled's shards with as few GetShardRanges
// requests as the batch bounds allow (sledpb.MaxRangesPerRequest ranges,
// sledpb.MaxRangeBytesPerRequest bytes), one after the other, over the
// framed protocol where the sled speaks it.
func (g *grpcShards) GetRanges(ctx context.Context, sled string, ranges []shardRange) ([]rangeResult, error) {
	if since, ok := g.noBatch.Load(sled); ok && time.Since(since.(time.Time)) < noBatchRetry {
		return nil, fmt.Errorf("%w: sled %s", errBatchUnsupported, sled)
	}
	conn, err := g.conn(sled)
	if err != nil {
		return nil, err
	}
	c := sledpb.NewSledClient(conn)
	out := make([]rangeResult, 0, len(ranges))
	for len(ranges) > 0 {
		req := &sledpb.GetShardRangesRequest{}
		var bytes uint64
		for _, r := range ranges {
			if len(req.Ranges) == sledpb.MaxRangesPerRequest || (len(req.Ranges) > 0 && bytes+r.length > sledpb.MaxRangeBytesPerRequest) {
				break
			}
			req.Ranges = append(req.Ranges, &sledpb.ShardRange{
				Id:     &sledpb.ShardID{VolumeId: r.id.volume, SegmentId: r.id.segment, Index: r.id.index},
				Offset: r.off,
				Length: r.length,
			})
			bytes += r.length
		}
		batch := ranges[:len(req.Ranges)]
		ranges = ranges[len(req.Ranges):]
		var resp *sledpb.GetShardRangesResponse
		sent := false
		if g.wire != nil {
			sent, resp, err = g.wire.getRanges(ctx, sled, conn, req)
		}
		if !sent {
			resp, err = c.GetShardRanges(ctx, req, rpc.Idempotent)
			if status.Code(err) == codes.Unimplemented {
				g.noBatch.Store(sled, time.Now())
				return nil, fmt.Errorf("%w: sled %s: %v", errBatchUnsupported, sled, err)
			}
			err = classifySledError(sled, fmt.Sprintf("get %d ranges", len(batch)), err)
		}
		if err != nil {
			return nil, err
		}
		if len(resp.Results) != len(batch) {
			return nil, fmt.Errorf("%w: sled %s answered %d ranges of %d", errSledDown, sled, len(resp.Results), len(batch))
		}
		for i, res := range resp.Results {
			out = append(out, rangeResultOf(sled, batch[i], res))
		}
	}
	return out, nil
}

// rangeResultOf reads one result of a GetShardRanges response.
func rangeResultOf(sled string, r shardRange, res *sledpb.ShardRangeResult) rangeResult {
	if code := codes.Code(res.Code); code != codes.OK {
		return rangeResult{err: classifySledError(sled, "get "+r.id.String(), status.Error(code, res.Error))}
	}
	if uint64(len(res.Data)) != r.length {
		return rangeResult{err: fmt.Errorf("%w: sled %s returned %d bytes of %s for %d", errSledDown, sled, len(res.Data), r.id, r.length)}
	}
	return rangeResult{data: res.Data, stamp: shardStamp{
		id:      shardID{volume: res.Id.GetVolumeId(), segment: res.Id.GetSegmentId(), index: res.Id.GetIndex()},
		epoch:   res.Epoch,
		unknown: res.Id == nil,
	}}
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
