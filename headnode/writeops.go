package headnode

import (
	"context"
	"fmt"
	"slices"
	"sync"

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
// The table of each client and its bounds: headnode/blockstore (writers.go).

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
