package sled

import (
	"context"
	"sync"
	"time"
)

// ScrubStats describes the scrubber's progress.
type ScrubStats struct {
	Passes          uint64
	ShardsVerified  uint64
	BytesVerified   uint64
	CorruptFound    uint64
	LastPass        time.Time
	RateBytesPerSec uint64
}

// scrubber reads every shard of the store, pass after pass, at a bounded
// rate, and quarantines what fails its checks (Get does that).
type scrubber struct {
	store *Store
	rate  uint64 // bytes per second; 0 disables

	mu    sync.Mutex
	stats ScrubStats
}

func (sc *scrubber) snapshot() ScrubStats {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.stats
	st.RateBytesPerSec = sc.rate
	return st
}

// run scrubs until ctx ends. Pacing: after reading n bytes it sleeps until
// n/rate seconds have passed since the read began, so the average rate
// never exceeds the bound.
func (sc *scrubber) run(ctx context.Context) {
	if sc.rate == 0 {
		return
	}
	for {
		shards := sc.store.List(0, true)
		for _, sh := range shards {
			start := time.Now()
			_, n, err := sc.store.Get(sh.ID, 0, 0)
			sc.mu.Lock()
			sc.stats.ShardsVerified++
			sc.stats.BytesVerified += n
			if err != nil && isCorruptErr(err) {
				sc.stats.CorruptFound++
			}
			sc.mu.Unlock()
			sc.store.m.scrubbedBytes.WithLabelValues(sc.store.id).Add(float64(n))
			budget := time.Duration(float64(max(n, chunkBytes)) / float64(sc.rate) * float64(time.Second))
			if wait := budget - time.Since(start); !sleep(ctx, wait) {
				return
			}
		}
		sc.mu.Lock()
		sc.stats.Passes++
		sc.stats.LastPass = time.Now()
		sc.mu.Unlock()
		// Between passes (and on an empty sled) rest a moment.
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
