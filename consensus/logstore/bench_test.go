package logstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/hashicorp/raft"
)

// BenchmarkStoreLogsManyGroups appends one 256-byte entry per StoreLogs
// call (a synced commit) from N goroutines, one per group, on a real
// directory, and reports the WAL fsyncs per append and per round (one
// append by each of the N groups). With group commit, N concurrent groups
// need far fewer than N fsyncs per round.
//
//	go test -run '^$' -bench StoreLogsManyGroups -benchtime 2000x ./consensus/logstore/
func BenchmarkStoreLogsManyGroups(b *testing.B) {
	for _, groups := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			fs := &walFS{FS: vfs.Default}
			s, err := OpenWithOptions(b.TempDir(), Options{FS: fs, Logger: quietLogger{}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			data := make([]byte, 256)
			b.SetBytes(int64(len(data)))
			var issued atomic.Int64
			var wg sync.WaitGroup
			syncs := fs.syncs.Load()
			b.ResetTimer()
			for i := 0; i < groups; i++ {
				g := s.Group(uint64(i + 1))
				wg.Add(1)
				go func() {
					defer wg.Done()
					for index := uint64(1); issued.Add(1) <= int64(b.N); index++ {
						err := g.StoreLogs([]*raft.Log{{Index: index, Term: 1, Type: raft.LogCommand, Data: data}})
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			n := float64(fs.syncs.Load() - syncs)
			b.ReportMetric(n/float64(b.N), "fsyncs/append")
			b.ReportMetric(n/float64(b.N)*float64(groups), "fsyncs/round")
		})
	}
}
