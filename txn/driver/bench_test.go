package driver

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/txn"
)

// BenchmarkCrossGroupCommit measures the latency of a transaction over
// 2, 3 and 5 groups against a one-group transaction (one PREPARE_COMMIT)
// in the same run, on three raft nodes in this process: the two kinds
// alternate, so that both see the same machine. It reports p50 and p99 of
// each and the ratio of the p50s (the target is at most 1.3).
//
//	go test -run '^$' -bench CrossGroupCommit -benchtime 300x ./txn/driver/
func BenchmarkCrossGroupCommit(b *testing.B) {
	groups := []txn.GroupID{1, 2, 3, 4, 5}
	rack := newTestRack(b, 3, groups...)
	p := newClientProposer(b, rack.local, 1)
	defer p.Close()
	ctx := context.Background()
	commit := func(gs []txn.GroupID, i int) time.Duration {
		var spec txn.Spec
		for _, g := range gs {
			spec.Writes = append(spec.Writes, txn.GroupWrite{Group: g, Write: txn.Write{Key: fmt.Sprintf("k%d", i%16), Value: []byte("v")}})
		}
		start := time.Now()
		rep, err := p.Commit(ctx, spec)
		if err != nil || rep.Status != txn.StatusCommitted {
			b.Fatalf("commit over %v: %s, %v", gs, rep.Status, err)
		}
		return time.Since(start)
	}
	// Warm up: elections, connections.
	for i := range 20 {
		commit(groups, i)
	}
	for _, n := range []int{2, 3, 5} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			var one, many []time.Duration
			for i := range b.N {
				one = append(one, commit(groups[i%len(groups):][:1], i))
				many = append(many, commit(groups[:n], i))
			}
			p50one, p50many := percentile(one, 50), percentile(many, 50)
			b.ReportMetric(float64(p50one.Microseconds()), "p50-1group-µs")
			b.ReportMetric(float64(percentile(one, 99).Microseconds()), "p99-1group-µs")
			b.ReportMetric(float64(p50many.Microseconds()), fmt.Sprintf("p50-%dgroups-µs", n))
			b.ReportMetric(float64(percentile(many, 99).Microseconds()), fmt.Sprintf("p99-%dgroups-µs", n))
			b.ReportMetric(float64(p50many)/float64(p50one), "p50-ratio")
		})
	}
}

// BenchmarkContention measures throughput when eight proposers keep
// writing the same two keys in two groups: every commit conflicts with
// the others' locks, and wait-die decides.
//
//	go test -run '^$' -bench Contention -benchtime 5s ./txn/driver/
func BenchmarkContention(b *testing.B) {
	rack := newTestRack(b, 3, 1, 2)
	const proposers = 8
	ps := make([]*Proposer, proposers)
	for i := range ps {
		ps[i] = newClientProposer(b, rack.local, uint32(i+1))
		defer ps[i].Close()
	}
	var committed, aborted atomic.Int64
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				spec := txn.Spec{Writes: []txn.GroupWrite{
					{Group: 1, Write: txn.Write{Key: "hot", Value: []byte("v")}},
					{Group: 2, Write: txn.Write{Key: "hot", Value: []byte("v")}},
				}}
				rep, err := p.Commit(context.Background(), spec)
				switch {
				case err != nil:
					b.Errorf("commit: %v", err)
					return
				case rep.Status == txn.StatusCommitted:
					committed.Add(1)
				default:
					aborted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.ReportMetric(float64(committed.Load())/elapsed.Seconds(), "commits/s")
	b.ReportMetric(float64(aborted.Load())/float64(max(committed.Load()+aborted.Load(), 1)), "abort-ratio")
}

// percentile returns the p-th percentile of ds (sorted in place).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, len(ds)*p/100)]
}
