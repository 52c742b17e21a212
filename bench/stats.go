package bench

import (
	"math"
	"math/bits"
	"sort"
	"sync/atomic"
	"time"
)

// Latency is a latency distribution as the results report it, in
// microseconds.
type Latency struct {
	MeanUs float64 `json:"mean_us"`
	MinUs  float64 `json:"min_us"`
	P50Us  float64 `json:"p50_us"`
	P90Us  float64 `json:"p90_us"`
	P99Us  float64 `json:"p99_us"`
	P999Us float64 `json:"p99_9_us"`
	MaxUs  float64 `json:"max_us"`
	// CDF is the distribution: for each percentile P, the latency below
	// which P percent of the requests completed. It starts at 0 (the
	// minimum) and ends at 100 (the maximum).
	CDF []CDFPoint `json:"cdf"`
}

// CDFPoint is one point of a latency distribution.
type CDFPoint struct {
	Percentile float64 `json:"percentile"`
	LatencyUs  float64 `json:"latency_us"`
}

// cdfPercentiles are the points a Latency's CDF holds when the source
// allows any percentile (the Go load generator's histograms).
var cdfPercentiles = []float64{
	0, 1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85,
	90, 92.5, 95, 96, 97, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.99, 100,
}

// percentileFunc returns the latency (µs) at percentile p (0..100).
type percentileFunc func(p float64) float64

// latencyFrom builds a Latency from a distribution's percentile function.
func latencyFrom(at percentileFunc, meanUs float64, points []float64) Latency {
	l := Latency{
		MeanUs: meanUs,
		MinUs:  at(0),
		P50Us:  at(50),
		P90Us:  at(90),
		P99Us:  at(99),
		P999Us: at(99.9),
		MaxUs:  at(100),
	}
	for _, p := range points {
		l.CDF = append(l.CDF, CDFPoint{Percentile: p, LatencyUs: at(p)})
	}
	return l
}

// Histogram counts latencies in buckets of about 1% relative width (a
// log-linear layout, as HdrHistogram's): values below 256 ns are exact,
// and every power of two above is split into 128 buckets. It is safe for
// concurrent use; Record is one atomic add per counter.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sumNs  atomic.Uint64
	minNs  atomic.Uint64 // stored as ^min so the zero value means "none"
	maxNs  atomic.Uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // buckets per power of two
	// histMaxExp bounds the values counted exactly: 2^42 ns is over an
	// hour; longer values land in the last bucket.
	histMaxExp  = 42
	histBuckets = 2*histSub + (histMaxExp-histSubBits-1)*histSub
)

// bucketOf returns the bucket index of a value in nanoseconds.
func bucketOf(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(v) - (histSubBits + 1) // ≥ 1
	m := v >> e                            // in [histSub, 2*histSub)
	i := 2*histSub + (e-1)*histSub + int(m-histSub)
	return min(i, histBuckets-1)
}

// bucketBounds returns the values [lo, hi) a bucket counts.
func bucketBounds(i int) (lo, hi uint64) {
	if i < 2*histSub {
		return uint64(i), uint64(i) + 1
	}
	e := (i-2*histSub)/histSub + 1
	m := uint64((i-2*histSub)%histSub + histSub)
	return m << e, (m + 1) << e
}

// Record counts one latency.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sumNs.Add(v)
	for {
		old := h.minNs.Load()
		if old != 0 && ^old <= v {
			break
		}
		if h.minNs.CompareAndSwap(old, ^v) {
			break
		}
	}
	for {
		old := h.maxNs.Load()
		if old >= v || h.maxNs.CompareAndSwap(old, v) {
			break
		}
	}
}

// Count is the number of latencies recorded.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Percentile returns the latency at percentile p (0..100) in
// nanoseconds: the smallest recorded value's bucket such that at least p
// percent of the values are at or below it, reported as the bucket's
// midpoint and clamped to the recorded minimum and maximum. 0 gives the
// minimum and 100 the maximum; an empty histogram gives 0.
func (h *Histogram) Percentile(p float64) float64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	lo, hi := float64(^h.minNs.Load()), float64(h.maxNs.Load())
	if p <= 0 {
		return lo
	}
	if p >= 100 {
		return hi
	}
	rank := uint64(math.Ceil(p / 100 * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			blo, bhi := bucketBounds(i)
			mid := (float64(blo) + float64(bhi-1)) / 2
			return math.Min(math.Max(mid, lo), hi)
		}
	}
	return hi
}

// Latency summarises the histogram in microseconds.
func (h *Histogram) Latency() Latency {
	mean := 0.0
	if n := h.n.Load(); n > 0 {
		mean = float64(h.sumNs.Load()) / float64(n) / 1e3
	}
	return latencyFrom(func(p float64) float64 { return h.Percentile(p) / 1e3 }, mean, cdfPercentiles)
}

// curve is a latency distribution known at a few percentiles, as fio
// reports it: points sorted by percentile, the minimum at 0 and the
// maximum at 100. Weight is the number of requests it describes.
type curve struct {
	Points []CDFPoint
	Weight float64
	MeanUs float64
}

// fractionBelow returns the share (0..100) of the curve's requests at or
// below latency x, interpolating linearly between known points.
func (c curve) fractionBelow(x float64) float64 {
	pts := c.Points
	if len(pts) == 0 {
		return 100
	}
	if x < pts[0].LatencyUs {
		return 0
	}
	if x >= pts[len(pts)-1].LatencyUs {
		return 100
	}
	// The last point whose latency is ≤ x; the next one is above it.
	i := sort.Search(len(pts), func(i int) bool { return pts[i].LatencyUs > x }) - 1
	a, b := pts[i], pts[i+1]
	return a.Percentile + (b.Percentile-a.Percentile)*(x-a.LatencyUs)/(b.LatencyUs-a.LatencyUs)
}

// mixture returns the percentile function of several distributions taken
// together, each weighted by its number of requests: fio reports reads
// and writes (and each job without group reporting) apart. At a point a
// single curve knows, the result is that point exactly; between points it
// interpolates.
func mixture(curves []curve) (percentileFunc, float64) {
	var live []curve
	total, meanSum := 0.0, 0.0
	for _, c := range curves {
		if c.Weight > 0 && len(c.Points) > 0 {
			live = append(live, c)
			total += c.Weight
			meanSum += c.Weight * c.MeanUs
		}
	}
	if len(live) == 0 {
		return func(float64) float64 { return 0 }, 0
	}
	if len(live) == 1 {
		pts := live[0].Points
		return func(p float64) float64 { return interpolateAt(pts, p) }, live[0].MeanUs
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, c := range live {
		lo = math.Min(lo, c.Points[0].LatencyUs)
		hi = math.Max(hi, c.Points[len(c.Points)-1].LatencyUs)
	}
	below := func(x float64) float64 {
		s := 0.0
		for _, c := range live {
			s += c.Weight * c.fractionBelow(x)
		}
		return s / total
	}
	return func(p float64) float64 {
		if p <= 0 {
			return lo
		}
		if p >= 100 {
			return hi
		}
		a, b := lo, hi
		for range 100 {
			mid := (a + b) / 2
			if below(mid) >= p {
				b = mid
			} else {
				a = mid
			}
			if b-a < 1e-3 {
				break
			}
		}
		return b
	}, meanSum / total
}

// interpolateAt returns the latency at percentile p on a sorted curve.
func interpolateAt(pts []CDFPoint, p float64) float64 {
	if p <= pts[0].Percentile {
		return pts[0].LatencyUs
	}
	for i := 1; i < len(pts); i++ {
		if p <= pts[i].Percentile {
			a, b := pts[i-1], pts[i]
			if p == b.Percentile {
				return b.LatencyUs
			}
			return a.LatencyUs + (b.LatencyUs-a.LatencyUs)*(p-a.Percentile)/(b.Percentile-a.Percentile)
		}
	}
	return pts[len(pts)-1].LatencyUs
}

// ratio returns a/b, or nil when it is undefined (b is zero, either is
// unknown or not finite): JSON has no NaN, and a table shows "—".
func ratio(a, b float64) *float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a, 0) || math.IsInf(b, 0) {
		return nil
	}
	r := a / b
	return &r
}

// finite replaces NaN and infinities by 0, so JSON can encode a value.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}
