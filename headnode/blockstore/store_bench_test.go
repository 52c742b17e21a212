package blockstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BenchmarkStoreAppend4K is the block store's share of a replicated 4 KiB
// write on one head node: appends of one-block records by 8 volumes at
// once (as 8 primaries' committers, or a secondary's sessions, make them)
// to a store on a real disk, each append durable when it returns. It
// reports the process's CPU time per write (cpu-µs/op: user and system),
// the figure the data plane's budget speaks of, beside the wall time.
//
//	go test -run '^$' -bench StoreAppend4K -benchtime 20000x ./headnode/blockstore/
//
// BenchmarkStoreAppend4K appends 4 KiB writes to eight volumes at once;
// named=true tags each as an agent's write at QD32 does (the writer
// table's cost, writers.go).
func BenchmarkStoreAppend4K(b *testing.B) {
	for _, c := range []struct {
		perAppend int
		named     bool
	}{{1, false}, {8, false}, {8, true}, {32, true}} {
		perAppend := c.perAppend
		b.Run(fmt.Sprintf("records=%d/named=%v", perAppend, c.named), func(b *testing.B) {
			s, err := Open(b.TempDir()+"/blocks", Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const volumes = 8
			data := pattern(blockSize, 7)
			var next atomic.Int64
			b.SetBytes(int64(blockSize))
			b.ResetTimer()
			cpu0 := cpuTime()
			var wg sync.WaitGroup
			for v := uint64(1); v <= volumes; v++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var seq uint64
					for next.Add(int64(perAppend)) <= int64(b.N) {
						recs := make([]*ballastpb.LogRecord, perAppend)
						for i := range recs {
							seq++
							recs[i] = &ballastpb.LogRecord{Seq: seq, Blocks: []*ballastpb.BlockWrite{{Block: seq % 65536, Data: data}}}
							if c.named {
								recs[i].Writes = []*ballastpb.WriteTag{{Client: v, Op: seq, Oldest: max(1, seq-31), FirstBlock: seq % 65536, Blocks: 1}}
							}
						}
						if err := s.Append(v, recs, seq-uint64(perAppend)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
