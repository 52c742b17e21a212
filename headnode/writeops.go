package headnode

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// Writes applied once
//
// A client that loses a write's outcome (its stream broke, the primary
// stopped or moved) sends the write again, perhaps to another head node.
// If the first send was applied, applying the second too would be wrong
// in a way no client can see coming: a write of another client that
// landed in between would be undone by an old one (the chaos harness
// found exactly that). So a client names each write (a random client id
// for each time it opens the volume, and an op number that a resend
// keeps), every record a write produces carries that name and the blocks
// it covers (WriteTag), and every replica applies the tags, in seq order
// like everything else, to a table per client ('W' keys: WriterState).
// The table travels with reconciliation and full copies, so a replica
// that becomes primary knows what its predecessor applied.
//
// The primary that receives a named write waits for any earlier send of
// it that it is still running to settle (its records applied or failed,
// never still on their way), then writes only the blocks no record of
// that op has applied yet; a write found applied whole is answered once
// an empty record ordered after it is durable on both replicas under the
// lease, which is what its first send's acknowledgement would have said.
//
// A client's oldest op without an answer travels with each request: the
// table forgets the ops below it, which the client will never send again.
// A volume keeps at most maxWritersPerVolume clients (the one that
// changed least recently goes first) and a client at most maxOpsPerWriter
// ops: both bounds are far beyond what a live client needs and keep a
// misbehaving one from growing the table without end.

const (
	prefixWriter = 'W'

	maxOpsPerWriter = 4096
)

// maxWritersPerVolume is a variable for tests (every replica must use the
// same bound).
var maxWritersPerVolume = 1024

func writerKey(vol, client uint64) []byte { return volKey(prefixWriter, vol, client) }

// writeID names one client write (zero: none).
type writeID struct {
	client, op, oldest uint64
}

func (w writeID) named() bool { return w.client != 0 && w.op != 0 }

// tag returns the record tag of the part of the write that covers bytes
// [off, off+length).
func (w writeID) tag(off, length uint64) *ballastpb.WriteTag {
	first := off / blockSize
	last := (off + length - 1) / blockSize
	return &ballastpb.WriteTag{Client: w.client, Op: w.op, Oldest: w.oldest, FirstBlock: first, Blocks: last - first + 1}
}

// blockSpan is a run of blocks [first, first+count).
type blockSpan struct{ first, count uint64 }

// noteApplied applies one tag of the record at seq to its client's state.
func noteApplied(ws *ballastpb.WriterState, t *ballastpb.WriteTag, seq uint64) {
	if t.Oldest > ws.Oldest {
		ws.Oldest = t.Oldest
		ws.Ops = slices.DeleteFunc(ws.Ops, func(a *ballastpb.AppliedWrite) bool { return a.Op < ws.Oldest })
	}
	if t.Op >= ws.Oldest {
		ws.Ops = append(ws.Ops, &ballastpb.AppliedWrite{Op: t.Op, Seq: seq, FirstBlock: t.FirstBlock, Blocks: t.Blocks})
	}
	if n := len(ws.Ops) - maxOpsPerWriter; n > 0 {
		ws.Ops = slices.Delete(ws.Ops, 0, n)
	}
	ws.LastSeq = seq
}

// appliedSpans returns the blocks that records applied for op, and the
// last seq among those records (0: none).
func appliedSpans(ws *ballastpb.WriterState, op uint64) (spans []blockSpan, lastSeq uint64) {
	if ws == nil {
		return nil, 0
	}
	for _, a := range ws.Ops {
		if a.Op == op {
			spans = append(spans, blockSpan{a.FirstBlock, a.Blocks})
			lastSeq = max(lastSeq, a.Seq)
		}
	}
	return spans, lastSeq
}

// uncoveredSpans returns the runs of the blocks in want that no span of
// applied covers, in order.
func uncoveredSpans(want blockSpan, applied []blockSpan) []blockSpan {
	applied = slices.Clone(applied)
	slices.SortFunc(applied, func(a, b blockSpan) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	var out []blockSpan
	at, end := want.first, want.first+want.count
	for _, s := range applied {
		if at >= end {
			break
		}
		sEnd := s.first + s.count
		if sEnd <= at {
			continue
		}
		if s.first > at {
			out = append(out, blockSpan{at, min(s.first, end) - at})
		}
		at = max(at, sEnd)
	}
	if at < end {
		out = append(out, blockSpan{at, end - at})
	}
	return out
}

// writerState reads what this replica holds of a client's writes to a
// volume (nil: nothing).
func (s *blockStore) writerState(vol, client uint64) (*ballastpb.WriterState, error) {
	return readWriter(s.db, vol, client)
}

func readWriter(r reader, vol, client uint64) (*ballastpb.WriterState, error) {
	v, closer, err := r.Get(writerKey(vol, client))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read writes of client %x of volume %d: %w", client, vol, err)
	}
	defer closer.Close()
	ws := &ballastpb.WriterState{}
	if err := proto.Unmarshal(v, ws); err != nil {
		return nil, fmt.Errorf("%w: writes of client %x of volume %d: %v", ErrCorrupt, client, vol, err)
	}
	return ws, nil
}

// noteWrites applies a record's tags to the clients' states in the batch.
func (a *applier) noteWrites(r *ballastpb.LogRecord) error {
	for _, t := range r.Writes {
		if t.Client == 0 || t.Op == 0 || t.Blocks == 0 {
			return fmt.Errorf("record %d: write tag %v names no write", r.Seq, t)
		}
		ws, err := a.writer(t.Client)
		if err != nil {
			return err
		}
		noteApplied(ws, t, r.Seq)
		a.noteWriter(t.Client)
	}
	return nil
}

// writer returns a client's state as the batch holds it, or a new one;
// making room, if the volume has no more, by forgetting the client that
// changed least recently. The state is kept decoded in a.writers until
// flushWriters writes it to the batch: a batch of many records of one
// client decodes and encodes its state once, not once per record.
func (a *applier) writer(client uint64) (*ballastpb.WriterState, error) {
	if ws, ok := a.writers[client]; ok {
		return ws, nil
	}
	ws, err := readWriter(a.b, a.vol, client)
	if err != nil {
		return nil, err
	}
	if ws == nil {
		if ws, err = a.newWriter(client); err != nil {
			return nil, err
		}
	}
	if a.writers == nil {
		a.writers = map[uint64]*ballastpb.WriterState{}
	}
	a.writers[client] = ws
	return ws, nil
}

// newWriter makes room for a client's new state.
func (a *applier) newWriter(client uint64) (*ballastpb.WriterState, error) {
	// The count and the choice read every state: the batch must hold
	// them as they are now.
	if err := a.flushWriters(); err != nil {
		return nil, err
	}
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: writerKey(a.vol, 0), UpperBound: volumeUpper(prefixWriter, a.vol)})
	if err != nil {
		return nil, fmt.Errorf("iterate writers of volume %d: %w", a.vol, err)
	}
	n, stalest, stalestSeq := 0, uint64(0), uint64(0)
	for ok := it.First(); ok; ok = it.Next() {
		var other ballastpb.WriterState
		if err := proto.Unmarshal(it.Value(), &other); err != nil {
			it.Close()
			return nil, fmt.Errorf("%w: writes of client %x of volume %d: %v", ErrCorrupt, keyNumber(it.Key()), a.vol, err)
		}
		if n == 0 || other.LastSeq < stalestSeq {
			stalest, stalestSeq = other.Client, other.LastSeq
		}
		n++
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("iterate writers of volume %d: %w", a.vol, err)
	}
	if n >= maxWritersPerVolume {
		if err := a.b.Delete(writerKey(a.vol, stalest), nil); err != nil {
			return nil, err
		}
		a.noteWriter(stalest)
	}
	return &ballastpb.WriterState{Client: client}, nil
}

// flushWriters writes the states a.writers holds to the batch and forgets
// them; the batch then holds what writing each after every record would
// have left.
func (a *applier) flushWriters() error {
	clients := slices.Collect(maps.Keys(a.writers))
	slices.Sort(clients) // the batch's content does not depend on map order
	for _, c := range clients {
		if err := a.putWriter(a.writers[c]); err != nil {
			return err
		}
	}
	clear(a.writers)
	return nil
}

func (a *applier) putWriter(ws *ballastpb.WriterState) error {
	v, err := proto.Marshal(ws)
	if err != nil {
		return fmt.Errorf("encode writes of client %x: %w", ws.Client, err)
	}
	return a.b.Set(writerKey(a.vol, ws.Client), v, nil)
}

// noteWriter lists a client whose state the record changed in its log
// entry, for reconciliation to carry.
func (a *applier) noteWriter(client uint64) {
	if !slices.Contains(a.entry.Writers, client) {
		a.entry.Writers = append(a.entry.Writers, client)
	}
}

// applyWriterStates installs clients' states from a state record.
func (a *applier) applyWriterStates(states []*ballastpb.WriterState) error {
	for _, ws := range states {
		if ws.Client == 0 {
			return errors.New("state record: writer state of client 0")
		}
		a.noteWriter(ws.Client)
		delete(a.writers, ws.Client) // replaced whole
		if ws.Gone {
			if err := a.b.Delete(writerKey(a.vol, ws.Client), nil); err != nil {
				return err
			}
			continue
		}
		if err := a.putWriter(ws); err != nil {
			return err
		}
	}
	return nil
}

// writerStates reads the current states of clients for a state record; a
// client this replica holds nothing of is sent as gone.
func writerStates(r reader, vol uint64, clients []uint64) ([]*ballastpb.WriterState, error) {
	var out []*ballastpb.WriterState
	for _, c := range clients {
		ws, err := readWriter(r, vol, c)
		if err != nil {
			return nil, err
		}
		if ws == nil {
			ws = &ballastpb.WriterState{Client: c, Gone: true}
		}
		out = append(out, ws)
	}
	return out, nil
}

// opRegistry knows which named writes this node is running, so that a
// resend waits for the send before it to settle.
type opRegistry struct {
	mu      sync.Mutex
	running map[opKey]chan struct{}
}

type opKey struct{ vol, client, op uint64 }

// begin waits until no other send of the write runs here, then marks
// this one running until end is called.
func (r *opRegistry) begin(ctx context.Context, k opKey) (end func(), err error) {
	for {
		r.mu.Lock()
		if r.running == nil {
			r.running = map[opKey]chan struct{}{}
		}
		ch, busy := r.running[k]
		if !busy {
			ch = make(chan struct{})
			r.running[k] = ch
			r.mu.Unlock()
			return func() {
				r.mu.Lock()
				delete(r.running, k)
				r.mu.Unlock()
				close(ch)
			}, nil
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for an earlier send of the same write: %w", ctx.Err())
		}
	}
}
