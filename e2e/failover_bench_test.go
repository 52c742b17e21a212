package e2e

import (
	"context"
	"math/rand"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
)

// BenchmarkFailover measures failover time: from the kill -9 of a volume's
// primary head node to the completion of the first write issued after it
// (so at most one write's latency more than the pause itself), with
// one writer keeping one 4 KiB write in flight. Each killed node is
// restarted once the volume has failed over and its new secondary is
// mirrored. Run it once:
//
//	go test -run '^$' -bench Failover -benchtime 1x ./e2e/
//
// BALLAST_FAILOVER_KILLS sets the number of kills (default 20).
func BenchmarkFailover(b *testing.B) {
	kills := 20
	if s := os.Getenv("BALLAST_FAILOVER_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	r := newRack(b)
	r.startProcesses()
	if out, err := r.cli("volume", "create", "fb", "--size", "64MiB", "--attach", agentHost); err != nil {
		b.Fatalf("create: %v\n%s", err, out)
	}
	var hns [][]string
	for _, h := range r.headNodes {
		hns = append(hns, strings.Split(h, ","))
	}
	c := &attach.Client{HeadNodes: hns, RequestTimeout: 2 * time.Minute}
	defer c.Close()
	ctx := context.Background()
	vol, err := c.OpenVolume(ctx, "fb")
	if err != nil {
		b.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)

	var mu sync.Mutex
	// completions holds, in order, when each write completed and when it
	// was issued.
	var completions, issued []time.Time
	var writeErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(1))
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			rng.Read(buf)
			start := time.Now()
			if err := dev.WriteAt(ctx, buf, uint64(rng.Intn(16384))*4096, false); err != nil {
				mu.Lock()
				writeErr = err
				mu.Unlock()
				return
			}
			mu.Lock()
			completions = append(completions, time.Now())
			issued = append(issued, start)
			mu.Unlock()
		}
	}()
	// firstAfter is when the first write issued after t completed: a
	// write whose reply was on its way as the node died does not count.
	firstAfter := func(t time.Time) (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		i, _ := slices.BinarySearchFunc(issued, t, func(a, b time.Time) int { return a.Compare(b) })
		if i == len(issued) {
			return time.Time{}, false
		}
		return completions[i], true
	}

	b.ResetTimer()
	var gaps []time.Duration
	for k := 0; k < kills; k++ {
		time.Sleep(time.Second)
		v := r.showVolume("fb")
		killedAt := time.Now()
		r.nodes[v.Volume.Primary].kill()
		deadline := killedAt.Add(2 * time.Minute)
		for {
			if t, ok := firstAfter(killedAt); ok {
				gaps = append(gaps, t.Sub(killedAt))
				break
			}
			mu.Lock()
			err := writeErr
			mu.Unlock()
			if err != nil || time.Now().After(deadline) {
				b.Fatalf("kill %d: no write completed after the kill (write error: %v)", k, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		r.waitFailover("fb", v.Volume.Primary, n(v.Volume.Epoch), 2*time.Minute)
		r.restartHeadNode(v.Volume.Primary)
		b.Logf("kill %d of %s: first write completed %v later", k, v.Volume.Primary, gaps[k].Round(time.Millisecond))
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	slices.Sort(gaps)
	pct := func(p float64) float64 { return gaps[int(p*float64(len(gaps)-1))].Seconds() }
	b.ReportMetric(float64(len(gaps)), "kills")
	b.ReportMetric(pct(0.5), "p50-s")
	b.ReportMetric(pct(0.99), "p99-s")
	b.ReportMetric(gaps[len(gaps)-1].Seconds(), "max-s")
}
