package bench

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestBucketBoundsHoldTheirValues(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 255, 256, 257, 1000, 4095, 4096, 123456, 1e6, 987654321, 1 << 40, 1<<42 - 1} {
		i := bucketOf(v)
		lo, hi := bucketBounds(i)
		if v < lo || v >= hi {
			t.Errorf("value %d in bucket %d = [%d, %d)", v, i, lo, hi)
		}
		if v >= 256 {
			if width := float64(hi-lo) / float64(lo); width > 1.0/histSub+1e-12 {
				t.Errorf("bucket of %d is %.4f wide relative to its value, want ≤ 1/%d", v, width, histSub)
			}
		}
	}
	// Values past the last bucket land in it rather than out of range.
	if i := bucketOf(math.MaxUint64); i != histBuckets-1 {
		t.Errorf("bucketOf(max) = %d, want %d", i, histBuckets-1)
	}
	// Bucket indexes grow with the values.
	prev := -1
	for v := uint64(0); v < 1<<22; v += 97 {
		i := bucketOf(v)
		if i < prev {
			t.Fatalf("bucketOf(%d) = %d after %d", v, i, prev)
		}
		prev = i
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h Histogram
	if got := h.Percentile(50); got != 0 {
		t.Errorf("empty histogram p50 = %v, want 0", got)
	}
	// 1..10000 µs, each once: percentile p is p*100 µs.
	for us := 1; us <= 10000; us++ {
		h.Record(time.Duration(us) * time.Microsecond)
	}
	if h.Count() != 10000 {
		t.Fatalf("count = %d", h.Count())
	}
	for _, c := range []struct{ p, wantUs float64 }{
		{50, 5000}, {90, 9000}, {99, 9900}, {99.9, 9990}, {1, 100},
	} {
		got := h.Percentile(c.p) / 1e3
		if math.Abs(got-c.wantUs)/c.wantUs > 0.01 {
			t.Errorf("p%v = %.1f µs, want %.0f µs within 1%%", c.p, got, c.wantUs)
		}
	}
	if got := h.Percentile(0); got != 1000 {
		t.Errorf("p0 = %v ns, want the minimum 1000", got)
	}
	if got := h.Percentile(100); got != 10000e3 {
		t.Errorf("p100 = %v ns, want the maximum 1e7", got)
	}
	l := h.Latency()
	if math.Abs(l.MeanUs-5000.5) > 0.01 {
		t.Errorf("mean = %v µs, want 5000.5", l.MeanUs)
	}
	if l.CDF[0].Percentile != 0 || l.CDF[len(l.CDF)-1].Percentile != 100 {
		t.Errorf("CDF runs from %v to %v, want 0 to 100", l.CDF[0].Percentile, l.CDF[len(l.CDF)-1].Percentile)
	}
	for i := 1; i < len(l.CDF); i++ {
		if l.CDF[i].LatencyUs < l.CDF[i-1].LatencyUs {
			t.Errorf("CDF goes down at %v: %v", l.CDF[i].Percentile, l.CDF)
		}
	}
}

func TestHistogramSmallAndConcurrent(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				h.Record(time.Duration(100 + g*1000 + i))
			}
		}()
	}
	wg.Wait()
	if h.Count() != 8000 {
		t.Fatalf("count = %d, want 8000", h.Count())
	}
	if lo, hi := h.Percentile(0), h.Percentile(100); lo != 100 || hi != 8099 {
		t.Errorf("min, max = %v, %v; want 100, 8099", lo, hi)
	}
	// A single value is every percentile.
	var one Histogram
	one.Record(42 * time.Microsecond)
	for _, p := range []float64{0, 50, 99.9, 100} {
		if got := one.Percentile(p); got != 42000 {
			t.Errorf("single value: p%v = %v, want 42000", p, got)
		}
	}
}

func pts(pairs ...float64) []CDFPoint {
	var out []CDFPoint
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, CDFPoint{Percentile: pairs[i], LatencyUs: pairs[i+1]})
	}
	return out
}

func TestMixtureOfOneCurveIsTheCurve(t *testing.T) {
	c := curve{Points: pts(0, 10, 50, 100, 99, 1000, 100, 2000), Weight: 7, MeanUs: 123}
	at, mean := mixture([]curve{c})
	if mean != 123 {
		t.Errorf("mean = %v, want 123", mean)
	}
	for _, p := range c.Points {
		if got := at(p.Percentile); got != p.LatencyUs {
			t.Errorf("p%v = %v, want %v", p.Percentile, got, p.LatencyUs)
		}
	}
	if got := at(25); got != 55 {
		t.Errorf("p25 = %v, want 55 (linear between p0=10 and p50=100)", got)
	}
}

func TestMixtureWeightsCurves(t *testing.T) {
	// Reads uniform over 0..100 µs, writes uniform over 100..200 µs.
	reads := curve{Points: pts(0, 0, 100, 100), Weight: 1, MeanUs: 50}
	writes := curve{Points: pts(0, 100, 100, 200), Weight: 1, MeanUs: 150}
	at, mean := mixture([]curve{reads, writes})
	if mean != 100 {
		t.Errorf("mean = %v, want 100", mean)
	}
	for _, c := range []struct{ p, want float64 }{{50, 100}, {25, 50}, {75, 150}, {0, 0}, {100, 200}} {
		if got := at(c.p); math.Abs(got-c.want) > 0.01 {
			t.Errorf("equal weights: p%v = %v, want %v", c.p, got, c.want)
		}
	}
	// Three times as many writes: the median moves into the writes.
	writes.Weight = 3
	at, mean = mixture([]curve{reads, writes})
	if mean != 125 {
		t.Errorf("weighted mean = %v, want 125", mean)
	}
	// F(x) = (1*F_r + 3*F_w)/4; at x = 100 + 100/3, F_w = 1/3 → F = (100+100)/4 = 50.
	if got := at(50); math.Abs(got-(100+100.0/3)) > 0.01 {
		t.Errorf("weighted p50 = %v, want %v", got, 100+100.0/3)
	}
	// Curves without requests do not count.
	at, _ = mixture([]curve{reads, {Points: pts(0, 1e6, 100, 2e6), Weight: 0}})
	if got := at(100); got != 100 {
		t.Errorf("p100 with an empty curve = %v, want 100", got)
	}
}

func TestRatio(t *testing.T) {
	if r := ratio(3, 2); r == nil || *r != 1.5 {
		t.Errorf("ratio(3, 2) = %v", r)
	}
	for _, c := range [][2]float64{{1, 0}, {math.NaN(), 1}, {1, math.Inf(1)}, {math.Inf(-1), 2}} {
		if r := ratio(c[0], c[1]); r != nil {
			t.Errorf("ratio(%v, %v) = %v, want nil", c[0], c[1], *r)
		}
	}
	if finite(math.NaN()) != 0 || finite(math.Inf(1)) != 0 || finite(2.5) != 2.5 {
		t.Error("finite does not replace non-finite values by 0")
	}
}

func TestGoalEvaluation(t *testing.T) {
	results := map[[2]string]*Result{}
	add := func(w, target string, iops, p50 float64) {
		results[[2]string{w, target}] = &Result{Workload: w, Target: target, IOPS: iops, MBps: iops / 10, Latency: &Latency{P50Us: p50}}
	}
	find := func(w, target string) *Result { return results[[2]string{w, target}] }
	add("w", "ballast", 600, 300)
	add("w", BaselineWritethrough, 1000, 100)

	floor := Goal{Name: "iops", Workload: "w", Metric: MetricIOPS, Baseline: BaselineWritethrough, Threshold: 0.8}
	g := floor.evaluate("ballast", find)
	if g.Status != GoalMissed || g.Ratio == nil || math.Abs(*g.Ratio-0.6) > 1e-9 {
		t.Fatalf("floor goal: %+v", g)
	}
	if got := shortfall(0.6, 0.8, true); math.Abs(got-25) > 1e-9 {
		t.Errorf("shortfall(0.6 of 0.8) = %v%%, want 25%%", got)
	}
	if want := "0.60× (goal ≥ 0.8×): 25% short"; g.Note != want {
		t.Errorf("note = %q, want %q", g.Note, want)
	}
	floor.Threshold = 0.6
	if g := floor.evaluate("ballast", find); g.Status != GoalMet {
		t.Errorf("ratio equal to the floor: %s, want met", g.Status)
	}

	ceiling := Goal{Name: "p50", Workload: "w", Metric: MetricP50Us, Baseline: BaselineWritethrough, Threshold: 2}
	g = ceiling.evaluate("ballast", find)
	if g.Status != GoalMissed || *g.Ratio != 3 || g.Note != "3.00× (goal ≤ 2×): 50% over" {
		t.Errorf("ceiling goal: %+v", g)
	}
	ceiling.Threshold = 3
	if g := ceiling.evaluate("ballast", find); g.Status != GoalMet {
		t.Errorf("ratio equal to the ceiling: %s, want met", g.Status)
	}

	missing := Goal{Workload: "other", Metric: MetricIOPS, Baseline: BaselineWritethrough, Threshold: 1}
	if g := missing.evaluate("ballast", find); g.Status != GoalUnknown || g.Ratio != nil {
		t.Errorf("goal on a workload that did not run: %+v", g)
	}
	results[[2]string{"w", "ballast"}].Error = "boom"
	if g := floor.evaluate("ballast", find); g.Status != GoalUnknown || g.Note != "no iops of ballast on w: boom" {
		t.Errorf("goal on a failed result: %+v", g)
	}
}
