package sled

import (
	"context"
	"math/rand"
	"testing"

	"github.com/ballast-storage/ballast/proto/sledpb"
)

// BenchmarkGetShardRanges reads 16 ranges of 4 KiB, one of each of 16
// cached shards of 1 MiB, in one request: compare with 16 times
// BenchmarkGetShard/4KiB, the requests it replaces.
func BenchmarkGetShardRanges(b *testing.B) {
	srv := benchServer(b)
	const shards, shardBytes, size = 16, 1 << 20, 4 << 10
	for i := range shards {
		if _, err := srv.sled.store.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, randomData(int64(i), shardBytes)); err != nil {
			b.Fatal(err)
		}
	}
	rng := rand.New(rand.NewSource(1))
	ctx := context.Background()
	measureCPU(b, func(int) {
		req := &sledpb.GetShardRangesRequest{}
		for i := range shards {
			req.Ranges = append(req.Ranges, &sledpb.ShardRange{
				Id:     &sledpb.ShardID{VolumeId: 1, SegmentId: uint64(i)},
				Offset: uint64(rng.Intn(shardBytes/size)) * size,
				Length: size,
			})
		}
		resp, err := srv.GetShardRanges(ctx, req)
		if err != nil || len(resp.Results) != shards || resp.Results[0].Code != 0 {
			b.Fatal(err)
		}
	})
}
