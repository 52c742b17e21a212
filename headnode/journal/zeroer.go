package journal

import (
	"fmt"
	"time"
)

// The zeroer. fallocate reserves a new journal's blocks as "unwritten"
// extents: they read as zeros, but the first write into one changes the
// filesystem's metadata, so the fdatasync after it also commits the
// filesystem's own journal. On ext4 a 4 KiB O_DIRECT write and fdatasync
// took 283 µs at the median into unwritten blocks against 128 µs into
// written ones: a new journal paid that on every batch of its first pass
// round the ring. So a zeroer writes zeros into the ranges the file
// reports unwritten, a chunk at a time and synced, up to ZeroAheadBytes
// beyond the last batch begun: the writer then lands on blocks the
// filesystem already holds written, and one metadata commit per chunk
// replaces one per batch.
//
// Zeros written where the file reads as zeros change nothing a reader
// can see; what must never happen is zeros landing after a batch's data.
// So the zeroer takes only a chunk at or beyond the end of every batch
// begun (an open batch counted at the most it may grow to), reserves it
// under the lock while it writes, and the writer waits before it writes
// into a reserved chunk. Once the write head wraps round the ring the
// zeroer stops: the ranges ahead may hold batches again.

// The window: a chunk takes a few milliseconds to write and sync, so
// eight keep well ahead of a journal taking hundreds of MB/s, and a rack
// that writes little (tests start hundreds) zeroes little.
const (
	defaultZeroAhead = 8 << 20
	zeroChunk        = 1 << 20
)

// zeroerPause, set by tests before Open, holds each chunk between its
// reservation and its write, so batches begun meanwhile reach the writer
// while the chunk is reserved.
var zeroerPause time.Duration

// unwrittenReporter is implemented by files that can list the ranges of
// [off, end) that hold nothing written (unwritten extents and holes).
type unwrittenReporter interface {
	Unwritten(off, end int64) ([][2]int64, error)
}

// startZeroer starts the zeroer over the ranges the file reports
// unwritten, if it reports any; otherwise zeroerDone is closed at once.
func (j *Journal) startZeroer() {
	r, ok := j.f.(unwrittenReporter)
	if !ok || j.zeroAhead <= 0 {
		close(j.zeroerDone)
		return
	}
	ranges, err := r.Unwritten(superblockArea, j.g.fileBytes())
	if err != nil || len(ranges) == 0 {
		// No extent map (tmpfs has no unwritten extents either): the
		// writer pays for first writes as before.
		close(j.zeroerDone)
		return
	}
	j.mu.Lock()
	wraps := j.mu.wraps
	j.mu.Unlock()
	go j.runZeroer(ranges, wraps)
}

func (j *Journal) runZeroer(ranges [][2]int64, wraps uint64) {
	defer close(j.zeroerDone)
	var zeros []byte
	for _, r := range ranges {
		off, end := roundUp(r[0]), r[1]/BlockSize*BlockSize
		for off < end {
			start, ok := j.reserveZeros(off, end, wraps)
			if !ok {
				return
			}
			if start >= end {
				break // the writer has passed the rest of this range
			}
			stop := min(end, start+zeroChunk)
			if zeroerPause > 0 {
				time.Sleep(zeroerPause)
			}
			if zeros == nil {
				zeros = alignedBuf(zeroChunk)
			}
			err := writeFull(j.f, zeros[:stop-start], start)
			if err == nil {
				err = j.sync()
			}
			if err != nil {
				err = fmt.Errorf("journal %s: zeros ahead of the writer at %d: %w", j.path, start, err)
			}
			j.releaseZeros(stop-start, err)
			if err != nil {
				return
			}
			off = stop
		}
	}
}

// reserveZeros waits until a chunk of [off, end) (4 KiB-aligned) from off (or from the end of the
// batches begun, if that is further) lies within ZeroAheadBytes of that
// end, and reserves it. It returns the chunk's start, at or beyond end
// when the writer has passed [off, end), and false when the zeroer must
// stop: the journal is closed or broken, or the head wrapped round.
func (j *Journal) reserveZeros(off, end int64, wraps uint64) (int64, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if j.usableLocked() != nil || j.mu.wraps != wraps {
			return 0, false
		}
		front := roundUp(j.frontierLocked())
		start := max(off, front)
		if start >= end {
			return start, true
		}
		if start < front+j.zeroAhead {
			j.mu.zeroing = [2]int64{start, min(end, start+zeroChunk)}
			return start, true
		}
		// Far enough ahead: wait until the batches come within the
		// window (the writer kicks once they do), not for every batch.
		j.mu.zeroWaitFrom = start - j.zeroAhead + 1
		j.mu.Unlock()
		<-j.zeroKick
		j.mu.Lock()
		j.mu.zeroWaitFrom = 0
	}
}

// kickZeroerLocked wakes a zeroer waiting for the batches to come within
// its window, once they have; and on Close or a failure.
func (j *Journal) kickZeroerLocked() {
	w := j.mu.zeroWaitFrom
	if w > 0 && (j.frontierLocked() >= w || j.usableLocked() != nil) {
		kick(j.zeroKick)
	}
}

// releaseZeros ends the reservation, counting n bytes zeroed, or breaks
// the journal with err.
func (j *Journal) releaseZeros(n int64, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.mu.zeroing = [2]int64{}
	if err != nil {
		j.failLocked(err)
		return
	}
	j.mu.zeroed += n
	j.notifyLocked()
}

// frontierLocked is the end of every batch begun: no batch will ever be
// written beyond it before the next one opens.
func (j *Journal) frontierLocked() int64 {
	if b := j.mu.open; b != nil {
		return max(j.mu.nextPos, b.off+j.roomLocked(b))
	}
	return j.mu.nextPos
}

// zeroingOverlapsLocked says whether the writer must wait before writing
// b: the zeroer holds a chunk that b (or its zone-end marker) falls in.
func (j *Journal) zeroingOverlapsLocked(b *batch) bool {
	z := j.mu.zeroing
	if z[1] == 0 {
		return false
	}
	overlaps := func(off, n int64) bool { return off < z[1] && z[0] < off+n }
	return overlaps(b.off, b.size) || (b.markerOff >= 0 && overlaps(b.markerOff, BlockSize))
}
