package headnode

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// sledView is one head node's view of the rack's sleds: their standing in
// the directory group, whether they answered lately, and how full they
// are. Placement, reads and rebuild consult it; it polls every sled's Stat
// in the background.
type sledView struct {
	directory func() []*ballastpb.Sled
	shards    shardStore
	log       *slog.Logger
	now       func() time.Time

	mu   sync.Mutex
	seen map[string]*sledSeen
}

type sledSeen struct {
	reachable bool
	since     time.Time // when reachable last changed
	stat      *sledpb.StatResponse
	err       string
}

func newSledView(directory func() []*ballastpb.Sled, shards shardStore, log *slog.Logger) *sledView {
	return &sledView{directory: directory, shards: shards, log: log, now: time.Now, seen: map[string]*sledSeen{}}
}

// run polls every sled each interval until ctx ends.
func (v *sledView) run(ctx context.Context, interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		v.pollOnce(ctx, timeout)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pollOnce asks every registered sled (but removed ones) for its Stat.
func (v *sledView) pollOnce(ctx context.Context, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, s := range v.directory() {
		if s.State == ballastpb.SledState_SLED_STATE_REMOVED {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			st, err := v.shards.Stat(cctx, s.Id)
			if ctx.Err() != nil {
				return
			}
			v.record(s.Id, st, err)
		}()
	}
	wg.Wait()
}

// record notes the outcome of talking to a sled; reads and writes report
// failures here too, so the view learns of a dead sled before the next poll.
func (v *sledView) record(id string, st *sledpb.StatResponse, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.seen[id]
	if s == nil {
		s = &sledSeen{since: v.now()}
		v.seen[id] = s
	}
	ok := err == nil
	if ok != s.reachable {
		s.reachable, s.since = ok, v.now()
		if ok {
			v.log.Info("sled reachable", "sled", id)
		} else {
			v.log.Warn("sled unreachable", "sled", id, "err", err)
		}
	}
	if ok {
		if st != nil {
			s.stat = st
		}
		s.err = ""
	} else {
		s.err = err.Error()
	}
}

// reportFailure notes that a sled failed a request in a way that says it
// is unreachable.
func (v *sledView) reportFailure(id string, err error) { v.record(id, nil, err) }

// readable says whether reads should try a sled at all.
func (v *sledView) readable(id string, standing ballastpb.SledState) bool {
	if standing != ballastpb.SledState_SLED_STATE_UP && standing != ballastpb.SledState_SLED_STATE_DRAINING {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.seen[id]
	return s == nil || s.reachable // not yet polled: try it
}

// reachable says whether a sled answered its last poll.
func (v *sledView) reachable(id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.seen[id]
	return s != nil && s.reachable
}

// unreachableFor says how long a sled has been unreachable (0 if it is
// reachable or was never polled).
func (v *sledView) unreachableFor(id string) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.seen[id]
	if s == nil || s.reachable {
		return 0
	}
	return v.now().Sub(s.since)
}

// placement returns every sled as placement sees it: usable if it is up in
// the directory and answered its last poll.
func (v *sledView) placement() []ec.Sled {
	dir := v.directory()
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]ec.Sled, 0, len(dir))
	for _, d := range dir {
		st := ec.Sled{ID: d.Id}
		s := v.seen[d.Id]
		// A full sled would refuse every shard: new ones go elsewhere.
		if d.State == ballastpb.SledState_SLED_STATE_UP && s != nil && s.reachable && s.stat != nil && !s.stat.Full {
			st.Usable = true
			st.UsedBytes, st.CapBytes = s.stat.UsedBytes, s.stat.CapacityBytes
		}
		out = append(out, st)
	}
	return out
}

// statuses reports every sled for rack status.
func (v *sledView) statuses() []*ballastpb.SledStatus {
	dir := v.directory()
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []*ballastpb.SledStatus
	for _, d := range dir {
		ss := &ballastpb.SledStatus{Sled: d}
		if s := v.seen[d.Id]; s != nil {
			ss.Reachable, ss.Error = s.reachable, s.err
			if st := s.stat; st != nil {
				ss.Shards, ss.CapacityBytes, ss.UsedBytes, ss.Full = st.Shards, st.CapacityBytes, st.UsedBytes, st.Full
				for _, dev := range st.Devices {
					if dev.Failed {
						ss.FailedDevices++
					}
				}
				if st.Scrub != nil {
					ss.CorruptFound = st.Scrub.CorruptFound
				}
			}
		}
		out = append(out, ss)
	}
	return out
}
