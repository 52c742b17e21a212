package nvmetcp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkTarget measures the target over loopback TCP with the
// in-memory device: qd commands in flight spread over the queues, from
// the Go host. ns/op is per command; MB/s counts data bytes.
//
//	go test -run='^$' -bench=BenchmarkTarget -benchtime=3s ./attach/nvmetcp/
func BenchmarkTarget(b *testing.B) {
	for _, bc := range []struct {
		write      bool
		bs, qd, qs int
		digests    bool
	}{
		{false, 4 << 10, 1, 1, false},
		{true, 4 << 10, 1, 1, false},
		{false, 4 << 10, 32, 1, false},
		{true, 4 << 10, 32, 1, false},
		{false, 4 << 10, 32, 4, false},
		{true, 4 << 10, 32, 4, false},
		{false, 4 << 10, 32, 4, true},
		{false, 256 << 10, 8, 2, false},
		{true, 256 << 10, 8, 2, false},
	} {
		op := map[bool]string{false: "read", true: "write"}[bc.write]
		name := fmt.Sprintf("%s-%dk-qd%d-queues%d", op, bc.bs>>10, bc.qd, bc.qs)
		if bc.digests {
			name += "-digests"
		}
		b.Run(name, func(b *testing.B) {
			tt := startTarget(b, nil)
			h := tt.connect(b, testNQN, HostOptions{IOQueues: bc.qs, HeaderDigest: bc.digests, DataDigest: bc.digests})
			blocks := uint64(testDiskSz / bc.bs)
			b.SetBytes(int64(bc.bs))
			b.ReportAllocs()
			b.ResetTimer()
			var n atomic.Int64
			var wg sync.WaitGroup
			for w := range bc.qd {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q := h.IO[w%len(h.IO)]
					buf := make([]byte, bc.bs)
					rnd := uint64(w + 1)
					for n.Add(1) <= int64(b.N) {
						rnd = rnd*6364136223846793005 + 1442695040888963407
						off := (rnd >> 20) % blocks * uint64(bc.bs)
						var err error
						if bc.write {
							err = h.WriteAtQueue(context.Background(), q, buf, off, false)
						} else {
							err = h.ReadAtQueue(context.Background(), q, buf, off)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
		})
	}
}
