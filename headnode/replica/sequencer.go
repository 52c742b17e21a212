package replica

import (
	"errors"
	"sync"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BlockSize is the unit of a record: a volume block.
const BlockSize = 4096

// ErrStopped is returned once the sequencer was stopped.
var ErrStopped = errors.New("replica: volume stopped")

// Pending is one record on its way through the committer: a client write
// or a record of the committer's own (flush, segment write, barrier).
type Pending struct {
	// Ticket is its place in the volume's order; seqs are assigned in
	// ticket order when its batch begins.
	Ticket uint64
	Record *ballastpb.LogRecord
	// Bytes is what it holds of the write queue's budget.
	Bytes int64
	// Done receives the record's outcome once (buffered).
	Done chan error
}

// overlayBlock is the newest not-yet-durable content of a block; the next
// read-modify-write of that block must start from it, not from the store.
type overlayBlock struct {
	ticket uint64
	data   []byte // nil: removed (reads as zeroes)
}

// Write is a client request to sequence: Length bytes at byte offset Off,
// of Data, or of zeroes when Zero (Data nil). Removable says whole zero
// blocks may become holes (trim, or write-zeroes without NO_HOLE). Tag,
// if set, names the write in its record.
type Write struct {
	Off, Length     uint64
	Data            []byte
	Zero, Removable bool
	Tag             *ballastpb.WriteTag
}

// Sequencer orders one volume's records. Writers sequence under its lock,
// so queue order is overlay order; the committer takes batches in that
// order and releases them once they are applied or failed. Safe for
// concurrent use.
type Sequencer struct {
	mu      sync.Mutex
	next    uint64
	overlay map[uint64]overlayBlock
	queue   []*Pending
	stopped bool
}

// NewSequencer returns an empty sequencer.
func NewSequencer() *Sequencer {
	return &Sequencer{overlay: map[uint64]overlayBlock{}}
}

// Sequence turns w into whole-block writes, records them in the overlay
// and queues them as one record costing cost bytes. A block w covers only
// in part starts from its overlay entry, or else from stored(block): the
// block as the store holds it (called under the sequencer's lock, so no
// other write of the block can be ordered meanwhile).
func (s *Sequencer) Sequence(w Write, cost int64, stored func(block uint64) ([]byte, error)) (*Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, ErrStopped
	}
	ticket := s.next
	rec := &ballastpb.LogRecord{}
	if w.Tag != nil {
		rec.Writes = []*ballastpb.WriteTag{w.Tag}
	}
	// The overlay changes only once the record is sure to be queued: a
	// failed base read leaves no entry of a write that never was.
	type change struct {
		block uint64
		data  []byte
	}
	var changes []change
	end := w.Off + w.Length
	first := w.Off / BlockSize
	last := (end - 1) / BlockSize
	for b := first; b <= last; b++ {
		bStart := b * BlockSize
		lo := max(w.Off, bStart) - bStart
		hi := min(end, bStart+BlockSize) - bStart
		whole := lo == 0 && hi == BlockSize
		var content []byte
		switch {
		case whole && w.Zero && w.Removable:
			// Coalesce runs of removed blocks into ranges.
			if n := len(rec.Removed); n > 0 && rec.Removed[n-1].First+rec.Removed[n-1].Count == b {
				rec.Removed[n-1].Count++
			} else {
				rec.Removed = append(rec.Removed, &ballastpb.BlockRange{First: b, Count: 1})
			}
			changes = append(changes, change{block: b})
			continue
		case whole && w.Zero:
			content = make([]byte, BlockSize)
		case whole:
			content = make([]byte, BlockSize)
			copy(content, w.Data[bStart-w.Off:])
		default:
			base, err := s.baseLocked(b, stored)
			if err != nil {
				return nil, err
			}
			if w.Zero {
				clear(base[lo:hi])
			} else {
				copy(base[lo:hi], w.Data[bStart+lo-w.Off:])
			}
			content = base
		}
		rec.Blocks = append(rec.Blocks, &ballastpb.BlockWrite{Block: b, Data: content})
		changes = append(changes, change{block: b, data: content})
	}
	for _, c := range changes {
		s.overlay[c.block] = overlayBlock{ticket: ticket, data: c.data}
	}
	s.next++
	pw := &Pending{Ticket: ticket, Record: rec, Bytes: cost, Done: make(chan error, 1)}
	s.queue = append(s.queue, pw)
	return pw, nil
}

// baseLocked returns a copy of block b's current content: its overlay
// entry, or what the store holds.
func (s *Sequencer) baseLocked(b uint64, stored func(uint64) ([]byte, error)) ([]byte, error) {
	if ob, ok := s.overlay[b]; ok {
		out := make([]byte, BlockSize)
		if ob.data != nil {
			copy(out, ob.data)
		}
		return out, nil
	}
	return stored(b)
}

// Queue queues a record of the committer's own, costing cost bytes.
// admit, if set, runs under the lock just before the record is queued, and
// may put blocks in the overlay for it with hold; its error keeps the
// record out (and no block it held stays).
func (s *Sequencer) Queue(rec *ballastpb.LogRecord, cost int64, admit func(hold func(block uint64, data []byte)) error) (*Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, ErrStopped
	}
	ticket := s.next
	if admit != nil {
		var held []uint64
		prior := map[uint64]overlayBlock{}
		hold := func(b uint64, data []byte) {
			if ob, ok := s.overlay[b]; ok {
				if _, seen := prior[b]; !seen {
					prior[b] = ob
				}
			}
			held = append(held, b)
			s.overlay[b] = overlayBlock{ticket: ticket, data: data}
		}
		if err := admit(hold); err != nil {
			for _, b := range held {
				if ob, ok := prior[b]; ok {
					s.overlay[b] = ob
				} else {
					delete(s.overlay, b)
				}
			}
			return nil, err
		}
	}
	s.next++
	pw := &Pending{Ticket: ticket, Record: rec, Bytes: cost, Done: make(chan error, 1)}
	s.queue = append(s.queue, pw)
	return pw, nil
}

// Take takes the queued records of the next batch: at most maxRecords and
// limit bytes, but at least one if first (nothing else is in flight, so
// a record larger than limit must still go).
func (s *Sequencer) Take(limit int64, maxRecords int, first bool) []*Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, bytes := 0, int64(0)
	for n < len(s.queue) && n < maxRecords {
		if (n > 0 || !first) && bytes+s.queue[n].Bytes > limit {
			break
		}
		bytes += s.queue[n].Bytes
		n++
	}
	batch := s.queue[:n:n]
	s.queue = s.queue[n:]
	return batch
}

// Release drops the overlay entries of a batch the store now holds (or
// which failed, and so reads as what the store holds). An entry a later
// record replaced stays.
func (s *Sequencer) Release(batch []*Pending) {
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := func(b, ticket uint64) {
		if ob, ok := s.overlay[b]; ok && ob.ticket == ticket {
			delete(s.overlay, b)
		}
	}
	for _, pw := range batch {
		for _, bw := range pw.Record.Blocks {
			drop(bw.Block, pw.Ticket)
		}
		for _, rg := range pw.Record.Removed {
			for b := rg.First; b < rg.First+rg.Count; b++ {
				drop(b, pw.Ticket)
			}
		}
		if sw := pw.Record.SegmentWrite; sw != nil {
			for _, b := range sw.SlotBlocks {
				drop(b, pw.Ticket)
			}
		}
	}
}

// Stop refuses every later record. It reports whether it was the first
// call.
func (s *Sequencer) Stop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := !s.stopped
	s.stopped = true
	return first
}

// Drain takes every queued record (to fail them once the committer stops).
func (s *Sequencer) Drain() []*Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}
