package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// LoadWorkload runs the built-in Go load generator: what fio cannot do.
// It drives the target's volume (or Volumes new volumes at once) through
// the attach client when the target's head nodes are known, else over
// NBD, either closed-loop (QueueDepth requests in flight per volume) or
// open-loop (RateIOPS requests a second, each timed from when it was
// meant to be sent, so a stalled target is charged for every request it
// held up: no coordinated omission). It records IOPS over time and
// injects Faults on schedule, marking them as events.
type LoadWorkload struct {
	ID   string
	Desc string
	// BlockBytes is the size of each request; offsets are random and
	// aligned to it.
	BlockBytes int
	// ReadPercent is the share of reads (the rest are writes).
	ReadPercent int
	// QueueDepth, for a closed loop, is the requests in flight per volume.
	QueueDepth int
	// RateIOPS, when set, makes the loop open: requests are sent at this
	// rate in total, at most MaxInFlight at once (default 256); a request
	// that finds them all busy waits, and the wait counts.
	RateIOPS    float64
	MaxInFlight int
	// Volumes, when set, creates this many volumes of VolumeBytes through
	// the admin API and drives them all at once (a target with head nodes
	// only); they are deleted afterwards.
	Volumes     int
	VolumeBytes uint64
	// Duration overrides the suite's runtime when set.
	Duration time.Duration
	// TimelineInterval, when set, records IOPS over time at this
	// resolution.
	TimelineInterval time.Duration
	// Faults are injected during the run.
	Faults []FaultAt
	// RequireFaults skips the workload on a target that does not support
	// every one of its faults (the faults are the point of it); otherwise
	// an unsupported fault is only marked as not injected.
	RequireFaults bool
}

// FaultAt schedules a fault: it starts At into the run.
type FaultAt struct {
	At    time.Duration
	Fault Fault
}

func (w *LoadWorkload) Name() string        { return w.ID }
func (w *LoadWorkload) Description() string { return w.Desc }

func (w *LoadWorkload) Params() map[string]any {
	p := map[string]any{"block_bytes": w.BlockBytes, "read_percent": w.ReadPercent}
	if w.RateIOPS > 0 {
		p["rate_iops"] = w.RateIOPS
		p["max_in_flight"] = w.maxInFlight()
	} else {
		p["queue_depth_per_volume"] = w.QueueDepth
	}
	if w.Volumes > 0 {
		p["volumes"] = w.Volumes
		p["volume_bytes"] = w.VolumeBytes
	}
	if w.TimelineInterval > 0 {
		p["timeline_interval_s"] = w.TimelineInterval.Seconds()
	}
	var faults []string
	for _, f := range w.Faults {
		faults = append(faults, fmt.Sprintf("%s at %v", f.Fault.Name(), f.At))
	}
	if len(faults) > 0 {
		p["faults"] = faults
	}
	return p
}

func (w *LoadWorkload) maxInFlight() int {
	if w.MaxInFlight > 0 {
		return w.MaxInFlight
	}
	return 256
}

func (w *LoadWorkload) duration(s *Suite) time.Duration {
	if w.Duration > 0 {
		return w.Duration
	}
	return s.Runtime
}

func (w *LoadWorkload) Supports(t *Target) error {
	if w.Volumes > 0 && len(t.HeadNodes) == 0 {
		return fmt.Errorf("%w: creating %d volumes needs the rack's head nodes", ErrNotSupported, w.Volumes)
	}
	if w.RequireFaults {
		for _, f := range w.Faults {
			if err := f.Fault.Supports(t); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *LoadWorkload) Planned(s *Suite) time.Duration { return w.duration(s) + time.Second }

// concurrency is the number of requests that may be in flight at once.
func (w *LoadWorkload) concurrency(devices int) int {
	if w.RateIOPS > 0 {
		return w.maxInFlight()
	}
	return max(w.QueueDepth, 1) * devices
}

func (w *LoadWorkload) Run(ctx context.Context, env *runEnv, t *Target) (*Result, error) {
	d := w.duration(env.suite)
	r := &Result{Workload: w.ID, Target: t.Name, Engine: "go", Volumes: w.Volumes}
	region := env.suite.RegionBytes
	conns := w.concurrency(1)
	set, err := openDevices(ctx, t, w.Volumes, w.VolumeBytes, conns, "bench-"+w.ID)
	if err != nil {
		return r, err
	}
	defer func() {
		if cerr := set.close(); cerr != nil {
			env.log.Warn("closing the load generator's volumes", "target", t.Name, "err", cerr)
		}
	}()
	r.Path = set.path
	if w.Volumes > 0 {
		region = set.size
	}
	region = min(region, set.size)
	if region < uint64(w.BlockBytes) {
		return r, fmt.Errorf("region of %d bytes is smaller than one %d-byte request", region, w.BlockBytes)
	}
	g := &generator{
		w:        w,
		devs:     set.devs,
		blocks:   region / uint64(w.BlockBytes),
		duration: d,
	}
	if w.TimelineInterval > 0 {
		g.timeline = newTimelineCounter(d, w.TimelineInterval)
	}
	m := env.measure(ctx, t, w.ID, d)
	var (
		faultMu    sync.Mutex
		faultErr   error
		faultsDone sync.WaitGroup
	)
	g.start = time.Now()
	for _, f := range w.Faults {
		faultsDone.Add(1)
		go func() {
			defer faultsDone.Done()
			err := g.inject(ctx, t, f)
			switch {
			case err == nil:
			case errors.Is(err, ErrNotSupported):
				g.mark(fmt.Sprintf("%s not injected: %v", f.Fault.Name(), err))
			default:
				g.mark(fmt.Sprintf("%s failed: %v", f.Fault.Name(), err))
				faultMu.Lock()
				faultErr = errors.Join(faultErr, err)
				faultMu.Unlock()
			}
		}()
	}
	g.run(ctx)
	faultsDone.Wait()
	r.DurationS = time.Since(g.start).Seconds()
	// Throughput counts what completed within the run; latency counts
	// every request, those an open loop still waited for at the end too.
	r.Ops = float64(g.inWindow.Load())
	r.Bytes = r.Ops * float64(w.BlockBytes)
	r.Errors = float64(g.errors.Load())
	if d > 0 {
		r.IOPS = r.Ops / d.Seconds()
		r.MBps = r.Bytes / d.Seconds() / 1e6
	}
	lat := g.lat.Latency()
	r.Latency = &lat
	if w.RateIOPS > 0 {
		svc := g.svc.Latency()
		r.ServiceTime = &svc
	}
	if g.timeline != nil {
		r.Timeline = g.timeline.result(g.events())
	}
	m.finish(r)
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	if faultErr != nil {
		return r, fmt.Errorf("fault: %w", faultErr)
	}
	if g.lat.Count() == 0 {
		return r, fmt.Errorf("no request completed (%v errors; first: %v)", r.Errors, g.firstErr.Load())
	}
	return r, nil
}

// generator is one run of a LoadWorkload.
type generator struct {
	w        *LoadWorkload
	devs     []device
	blocks   uint64
	duration time.Duration
	start    time.Time

	lat      Histogram    // from the intended send time
	svc      Histogram    // from the actual send time (open loop)
	inWindow atomic.Int64 // completed before the end of the run
	errors   atomic.Int64
	firstErr atomic.Value
	timeline *timelineCounter

	mu     sync.Mutex
	marked []Event
}

func (g *generator) mark(label string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.marked = append(g.marked, Event{AtS: time.Since(g.start).Seconds(), Label: label})
}

func (g *generator) events() []Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Event(nil), g.marked...)
}

func (g *generator) inject(ctx context.Context, t *Target, f FaultAt) error {
	select {
	case <-time.After(time.Until(g.start.Add(f.At))):
	case <-ctx.Done():
		return nil
	}
	if err := f.Fault.Supports(t); err != nil {
		return err
	}
	return f.Fault.Inject(ctx, t, g.mark)
}

// run drives the devices until the duration is over.
func (g *generator) run(ctx context.Context) {
	end := g.start.Add(g.duration)
	ctx, cancel := context.WithDeadline(ctx, end.Add(30*time.Second))
	defer cancel()
	var wg sync.WaitGroup
	if g.w.RateIOPS > 0 {
		interval := float64(time.Second) / g.w.RateIOPS
		var next atomic.Int64
		for i := range g.w.maxInFlight() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), 0x62616c6c617374))
				buf := randomBlock(rng, g.w.BlockBytes)
				for ctx.Err() == nil {
					n := next.Add(1) - 1
					intended := g.start.Add(time.Duration(float64(n) * interval))
					if !intended.Before(end) {
						return
					}
					if wait := time.Until(intended); wait > 0 {
						time.Sleep(wait)
					}
					g.one(ctx, rng, g.devs[int(n)%len(g.devs)], buf, intended)
				}
			}()
		}
	} else {
		for di, dev := range g.devs {
			for q := range max(g.w.QueueDepth, 1) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(di), uint64(q)))
					buf := randomBlock(rng, g.w.BlockBytes)
					for ctx.Err() == nil && time.Now().Before(end) {
						g.one(ctx, rng, dev, buf, time.Time{})
					}
				}()
			}
		}
	}
	wg.Wait()
}

// one sends one request and records it. intended is when an open loop
// meant to send it (zero for a closed loop: now).
func (g *generator) one(ctx context.Context, rng *rand.Rand, dev device, buf []byte, intended time.Time) {
	off := rng.Uint64N(g.blocks) * uint64(len(buf))
	sent := time.Now()
	if intended.IsZero() {
		intended = sent
	}
	var err error
	if rng.IntN(100) < g.w.ReadPercent {
		err = dev.ReadAt(ctx, buf, off)
	} else {
		err = dev.WriteAt(ctx, buf, off, false)
	}
	done := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		g.errors.Add(1)
		g.firstErr.CompareAndSwap(nil, err.Error())
		if g.timeline != nil {
			g.timeline.add(done.Sub(g.start), false)
		}
		time.Sleep(10 * time.Millisecond) // a failing target must not be spun on
		return
	}
	if done.Before(g.start.Add(g.duration)) {
		g.inWindow.Add(1)
	}
	g.lat.Record(done.Sub(intended))
	g.svc.Record(done.Sub(sent))
	if g.timeline != nil {
		g.timeline.add(done.Sub(g.start), true)
	}
}

// randomBlock is a request's payload: random bytes, so no layer can
// shortcut zeroes or compress.
func randomBlock(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// timelineCounter counts completions and errors per interval.
type timelineCounter struct {
	interval time.Duration
	ok, errs []atomic.Int64
}

func newTimelineCounter(d, interval time.Duration) *timelineCounter {
	n := int((d + interval - 1) / interval)
	return &timelineCounter{interval: interval, ok: make([]atomic.Int64, n), errs: make([]atomic.Int64, n)}
}

func (c *timelineCounter) add(at time.Duration, ok bool) {
	i := int(at / c.interval)
	if i < 0 || i >= len(c.ok) {
		return // completed after the run's end
	}
	if ok {
		c.ok[i].Add(1)
	} else {
		c.errs[i].Add(1)
	}
}

func (c *timelineCounter) result(events []Event) *Timeline {
	t := &Timeline{IntervalS: c.interval.Seconds(), Events: events}
	for i := range c.ok {
		t.IOPS = append(t.IOPS, float64(c.ok[i].Load())/c.interval.Seconds())
		t.Errors = append(t.Errors, float64(c.errs[i].Load()))
	}
	if t.Events == nil {
		t.Events = []Event{}
	}
	return t
}
