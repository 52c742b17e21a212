package sled

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/internal/clock"
)

// ScrubStats describes the scrubber's progress.
type ScrubStats struct {
	Passes          uint64
	ShardsVerified  uint64
	BytesVerified   uint64
	CorruptFound    uint64
	LastPass        time.Time
	RateBytesPerSec uint64
	// BusyPieces counts the pieces checked at the busy rate, because
	// clients read or wrote since the piece before.
	BusyPieces uint64
}

// scrubPieceBytes is how much of a shard the scrubber checks at a time:
// its pauses come between pieces, so a large shard does not turn into
// one long burst of reading.
const scrubPieceBytes = 1 << 20

// scrubber reads every shard of the store, pass after pass, within a
// budget of bytes per second, and quarantines what fails its checks
// (scrubShard does that).
//
// It yields to clients: when any client read or write reached the store
// since its last piece, the next piece is paced at busyRate instead of
// rate, so a sled busy with clients scrubs slowly but still finishes its
// passes (a negative busyRate pauses it until clients have been quiet for
// a whole piece's wait).
type scrubber struct {
	store    *Store
	rate     uint64 // bytes per second; 0 disables the scrubber
	busyRate int64  // bytes per second while clients are busy; < 0: none
	clock    clock.Clock
	// sleep waits d or until ctx ends, saying whether ctx is still live.
	sleep func(ctx context.Context, d time.Duration) bool

	// Used by run's goroutine only.
	pacer    pacer
	clientIO uint64 // the store's client I/O count at the last piece

	mu    sync.Mutex
	stats ScrubStats
}

// newScrubber returns a scrubber on the real clock; busyRate 0 is a
// sixteenth of rate.
func newScrubber(store *Store, rate uint64, busyRate int64) *scrubber {
	if busyRate == 0 {
		busyRate = int64(max(rate/16, 1))
	}
	return &scrubber{store: store, rate: rate, busyRate: busyRate, clock: clock.Boot(), sleep: sleep, clientIO: store.clientIO.Load()}
}

func (sc *scrubber) snapshot() ScrubStats {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.stats
	st.RateBytesPerSec = sc.rate
	return st
}

// run scrubs until ctx ends.
func (sc *scrubber) run(ctx context.Context) {
	if sc.rate == 0 {
		return
	}
	buf := make([]byte, scrubPieceBytes)
	for sc.pass(ctx, buf) {
		// Between passes (and on an empty sled) rest a moment.
		if !sc.sleep(ctx, time.Second) {
			return
		}
	}
}

// pass checks every shard once, saying whether ctx is still live.
func (sc *scrubber) pass(ctx context.Context, buf []byte) bool {
	pace := func(n int) error { return sc.pace(ctx, n) }
	for _, sh := range sc.store.List(0, true) {
		n, err := sc.store.scrubShard(sh.ID, buf, pace)
		sc.mu.Lock()
		sc.stats.BytesVerified += n
		switch {
		case err == nil:
			sc.stats.ShardsVerified++
		case errors.Is(err, ErrCorrupt):
			sc.stats.ShardsVerified++
			sc.stats.CorruptFound++
		}
		sc.mu.Unlock()
		sc.store.m.scrubbedBytes.WithLabelValues(sc.store.id).Add(float64(n))
		if ctx.Err() != nil {
			return false
		}
	}
	sc.mu.Lock()
	sc.stats.Passes++
	sc.stats.LastPass = time.Now()
	sc.mu.Unlock()
	return true
}

// pace waits out the budget of the n bytes just checked: at rate, or at
// busyRate if clients used the store since the last piece.
func (sc *scrubber) pace(ctx context.Context, n int) error {
	rate := sc.rate
	if io := sc.store.clientIO.Load(); io != sc.clientIO {
		sc.clientIO = io
		sc.mu.Lock()
		sc.stats.BusyPieces++
		sc.mu.Unlock()
		if sc.busyRate < 0 {
			// Wait for a quiet spell as long as the piece's budget.
			quiet := time.Duration(uint64(n) * uint64(time.Second) / rate)
			for {
				if !sc.sleep(ctx, quiet) {
					return ctx.Err()
				}
				if io := sc.store.clientIO.Load(); io == sc.clientIO {
					break
				} else {
					sc.clientIO = io
				}
			}
		} else {
			rate = uint64(sc.busyRate)
		}
	}
	if !sc.sleep(ctx, sc.pacer.charge(sc.clock.Now(), uint64(n), rate)) {
		return ctx.Err()
	}
	return nil
}

// pacer spends a budget of bytes per second: each charge of n bytes at a
// rate moves the earliest start of the next read n/rate later. No credit
// is saved up while the reader is idle (a pause does not buy a burst),
// and the time the reads themselves take is not credited, so the rate
// stays under the budget.
type pacer struct {
	next clock.Instant // the earliest start of the next read
}

// charge accounts n bytes read at rate, now, and returns how long to wait
// before the next read.
func (p *pacer) charge(now clock.Instant, n, rate uint64) time.Duration {
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(n * uint64(time.Second) / max(rate, 1)))
	return p.next.Sub(now)
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
