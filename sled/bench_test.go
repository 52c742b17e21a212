package sled

import (
	"context"
	"fmt"
	"hash/crc32"
	"math/rand"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/proto/sledpb"
)

// The benchmarks of the shard I/O path call the gRPC handlers directly
// (no network): what a sled spends on a request, from the decoded request
// to the response it hands gRPC. Besides ns/op (wall time, which includes
// waiting for fsync) they report cpu-µs/op, the process's user and system
// CPU time per operation (getrusage: every thread, the garbage collector
// included), the number the CPU budget in DESIGN.md is about, and
// sys-µs/op, the part of it spent in the kernel.

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// measureCPU runs op b.N times and reports its CPU time per operation.
func measureCPU(b *testing.B, op func(i int)) {
	b.ReportAllocs()
	b.ResetTimer()
	user0, sys0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		op(i)
	}
	user1, sys1 := cpuTime(b)
	b.StopTimer()
	user, sys := user1-user0, sys1-sys0
	b.ReportMetric(float64((user+sys).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(sys.Microseconds())/float64(b.N), "sys-µs/op")
}

func benchServer(b *testing.B) *server {
	s := openTestStore(&testing.T{}, b.TempDir(), 1, 0, nil)
	b.Cleanup(func() { s.Close() })
	return &server{sled: &Sled{store: s}}
}

// BenchmarkGetShard reads a 4 KiB or 64 KiB range, block-aligned, at a
// random offset of one of 16 shards of 1 MiB (the default segment's) that
// were read before: the files are in the page cache, so this is the
// sled's own cost.
func BenchmarkGetShard(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			srv := benchServer(b)
			const shards, shardBytes = 16, 1 << 20
			for i := range shards {
				if _, err := srv.sled.store.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, randomData(int64(i), shardBytes)); err != nil {
					b.Fatal(err)
				}
				if _, _, err := srv.sled.store.Get(ShardID{Volume: 1, Segment: uint64(i)}, 0, 0); err != nil {
					b.Fatal(err)
				}
			}
			rng := rand.New(rand.NewSource(1))
			ctx := context.Background()
			measureCPU(b, func(int) {
				req := &sledpb.GetShardRequest{
					Id:     &sledpb.ShardID{VolumeId: 1, SegmentId: uint64(rng.Intn(shards))},
					Offset: uint64(rng.Intn(shardBytes/size)) * uint64(size),
					Length: uint64(size),
				}
				resp, err := srv.GetShard(ctx, req)
				if err != nil || len(resp.Data) != size {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkPutShard writes 256 KiB shards (a 1 MiB segment over 4 data
// shards), each acknowledged durable, as a flush does: new ones on an
// empty device, and in the steady state of a sled whose head nodes
// compact, where every put comes with the delete of a shard written
// earlier (the op is both).
func BenchmarkPutShard(b *testing.B) {
	for _, steady := range []bool{false, true} {
		name := "new"
		if steady {
			name = "with-a-delete"
		}
		b.Run(name, func(b *testing.B) {
			srv := benchServer(b)
			data := randomData(1, 256<<10)
			sum := crc32.Checksum(data, castagnoli)
			ctx := context.Background()
			const behind = 16
			measureCPU(b, func(i int) {
				req := &sledpb.PutShardRequest{
					Id:     &sledpb.ShardID{VolumeId: 1, SegmentId: uint64(i)},
					Epoch:  1,
					Data:   data,
					Crc32C: sum,
				}
				if _, err := srv.PutShard(ctx, req); err != nil {
					b.Fatal(err)
				}
				if steady && i >= behind {
					del := &sledpb.DeleteShardRequest{Id: &sledpb.ShardID{VolumeId: 1, SegmentId: uint64(i - behind)}, Epoch: 1}
					if _, err := srv.DeleteShard(ctx, del); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
