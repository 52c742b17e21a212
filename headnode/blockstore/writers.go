package blockstore

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The clients' tables of applied writes
//
// A client names each write, and every record a write produces carries
// that name and the blocks it covers (WriteTag; why: headnode's
// writeops.go). Every replica applies the tags, in seq order like
// everything else, to a table per client ('W' keys: WriterState); the
// table travels with reconciliation and full copies.
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

// WriterState reads what this replica holds of a client's writes to a
// volume (nil: nothing).
func (s *Store) WriterState(vol, client uint64) (*ballastpb.WriterState, error) {
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
