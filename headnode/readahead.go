package headnode

import (
	"context"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/headnode/blockcache"
)

// Readahead
//
// A volume read sequentially (each read beginning where the one before
// ended, or a little past it, as reads in flight together arrive) gets
// the blocks after the latest read fetched into the read cache in the
// background, readaheadBlocks at a time, one fetch at a time: the store
// reads whole runs of segments from the sleds at once instead of the
// client's read size at a time, and a client reading at a low queue depth
// finds its next blocks in memory. A read that falls in a fetch still
// running waits for it instead of fetching the same blocks. The fetch
// fills the cache like any read (a fill begun before its lookup), so a
// write meanwhile wins.
const (
	// maxFillReadBlocks: larger reads neither fill the cache nor read
	// ahead (they are copies and backups more often than not, the
	// client keeps enough in flight, and the cache's bookkeeping of each
	// block cost a sixth of the CPU of 1 MiB reads, measured).
	maxFillReadBlocks = 64   // 256 KiB
	readaheadBlocks   = 1024 // 4 MiB: a segment's worth of volume data
	// readaheadStreak is how many reads in a row must look sequential:
	// each begins within readaheadSlack reads' length of where the latest
	// ended (reads in flight together arrive out of order).
	readaheadStreak = 3
	readaheadSlack  = 32
	// readaheadTimeout bounds one fetch: a sled that hangs costs the
	// readahead, not the reads, which fetch for themselves after it.
	readaheadTimeout = 5 * time.Second
)

// readAhead follows one volume's reads. The zero value is ready.
type readAhead struct {
	mu     sync.Mutex
	next   uint64 // the block after the latest read
	streak int
	// until is the first block not yet asked for; running is the fetch
	// in flight, if any.
	until   uint64
	running *aheadFetch
	closed  bool
	wg      sync.WaitGroup
}

type aheadFetch struct {
	first, count uint64
	done         chan struct{}
	cancel       context.CancelFunc
}

// close stops the fetch in flight, waits for it, and starts no other.
func (a *readAhead) close() {
	a.mu.Lock()
	a.closed = true
	if a.running != nil {
		a.running.cancel()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// note records a read and says whether the volume is being read
// sequentially.
func (a *readAhead) note(first, count uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	slack := min(readaheadSlack*count, readaheadBlocks)
	if first+slack >= a.next && first <= a.next+slack {
		a.streak++
		a.next = max(a.next, first+count)
	} else {
		a.streak, a.until, a.next = 0, 0, first+count
	}
	return a.streak >= readaheadStreak
}

// await waits for a fetch in flight that holds any of the blocks.
func (a *readAhead) await(ctx context.Context, first, count uint64) error {
	a.mu.Lock()
	f := a.running
	a.mu.Unlock()
	if f == nil || first >= f.first+f.count || first+count <= f.first {
		return nil
	}
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readAhead starts fetching the blocks after end into the cache, unless a
// fetch runs already or they were asked for.
func (p *primaryVolume) readAhead(end uint64) {
	blocks := (p.vol.SizeBytes + blockSize - 1) / blockSize
	a := &p.ahead
	a.mu.Lock()
	first := max(end, a.until)
	if a.closed || a.running != nil || first >= blocks || first >= end+readaheadBlocks {
		a.mu.Unlock()
		return
	}
	// New blocks enter the cache's small queue, a tenth of it: a fetch
	// larger than half that would push itself out before it is read.
	count := min(readaheadBlocks, blocks-first, uint64(p.cache.c.CapacityBytes()/blockSize/20))
	if count < 16 {
		a.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), readaheadTimeout)
	f := &aheadFetch{first: first, count: count, done: make(chan struct{}), cancel: cancel}
	a.running, a.until = f, f.first+f.count
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer func() {
			cancel()
			a.mu.Lock()
			a.running = nil
			a.mu.Unlock()
			close(f.done)
		}()
		fill := p.cache.c.StartFill(p.vol.Id, f.first, f.count)
		defer fill.Done()
		buf := make([]byte, f.count*blockSize)
		if err := p.readStore(ctx, f.first, buf); err != nil {
			p.log.Debug("readahead failed", "first_block", f.first, "blocks", f.count, "err", err)
			return
		}
		for i := range f.count {
			fill.Put(f.first+i, buf[i*blockSize:(i+1)*blockSize])
		}
		p.cache.aheadBlocks.Add(f.count)
	}()
}

// A fetch is one fill.
const _ = uint(blockcache.MaxFillBlocks - readaheadBlocks)
