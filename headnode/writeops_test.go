package headnode

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestUncoveredSpans(t *testing.T) {
	cases := []struct {
		name    string
		want    blockSpan
		applied []blockSpan
		rest    []blockSpan
	}{
		{"nothing applied", blockSpan{4, 4}, nil, []blockSpan{{4, 4}}},
		{"all applied", blockSpan{4, 4}, []blockSpan{{4, 4}}, nil},
		{"applied beyond", blockSpan{4, 4}, []blockSpan{{0, 100}}, nil},
		{"head applied", blockSpan{4, 4}, []blockSpan{{4, 2}}, []blockSpan{{6, 2}}},
		{"tail applied", blockSpan{4, 4}, []blockSpan{{7, 5}}, []blockSpan{{4, 3}}},
		{"middle applied", blockSpan{4, 8}, []blockSpan{{6, 2}}, []blockSpan{{4, 2}, {8, 4}}},
		{"out of order", blockSpan{0, 10}, []blockSpan{{8, 1}, {2, 2}}, []blockSpan{{0, 2}, {4, 4}, {9, 1}}},
		{"overlapping", blockSpan{0, 10}, []blockSpan{{1, 4}, {3, 4}}, []blockSpan{{0, 1}, {7, 3}}},
		{"elsewhere", blockSpan{4, 2}, []blockSpan{{0, 4}, {6, 1}}, []blockSpan{{4, 2}}},
	}
	for _, c := range cases {
		if got := uncoveredSpans(c.want, c.applied); !slices.Equal(got, c.rest) {
			t.Errorf("%s: uncovered %v, want %v", c.name, got, c.rest)
		}
	}
}

// TestAppliedSpans: the blocks a client's table says records applied for
// an op, and the last seq among those records (the table itself, and what
// it forgets, is the block store's: its writers_test.go).
func TestAppliedSpans(t *testing.T) {
	ws := &ballastpb.WriterState{Client: 9, Oldest: 3, LastSeq: 20, Ops: []*ballastpb.AppliedWrite{
		{Op: 3, Seq: 13, FirstBlock: 3, Blocks: 1},
		{Op: 4, Seq: 14, FirstBlock: 4, Blocks: 1},
		{Op: 5, Seq: 15, FirstBlock: 5, Blocks: 1},
		{Op: 6, Seq: 20, FirstBlock: 6, Blocks: 1},
	}}
	if spans, seq := appliedSpans(ws, 4); !slices.Equal(spans, []blockSpan{{4, 1}}) || seq != 14 {
		t.Fatalf("op 4: %v at %d", spans, seq)
	}
	// An op whose write took several records: every span, the last seq.
	ws.Ops = append(ws.Ops, &ballastpb.AppliedWrite{Op: 4, Seq: 21, FirstBlock: 9, Blocks: 2})
	if spans, seq := appliedSpans(ws, 4); !slices.Equal(spans, []blockSpan{{4, 1}, {9, 2}}) || seq != 21 {
		t.Fatalf("op 4 in two records: %v at %d", spans, seq)
	}
	if spans, seq := appliedSpans(ws, 7); spans != nil || seq != 0 {
		t.Fatalf("op 7, never applied: %v at %d", spans, seq)
	}
	if spans, seq := appliedSpans(nil, 4); spans != nil || seq != 0 {
		t.Fatalf("no table: %v at %d", spans, seq)
	}
}

// namedWrite is a client's write request as the agent sends it.
func namedWrite(client, op, oldest, off uint64, data []byte) *ballastpb.IORequest {
	return &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE, Offset: off, Data: data,
		Client: client, WriteOp: op, OldestOp: oldest}
}

// resent marks a request as the agent marks a send after the first.
func resent(req *ballastpb.IORequest) *ballastpb.IORequest {
	again := proto.Clone(req).(*ballastpb.IORequest)
	again.Resend = true
	return again
}

func serve(t *testing.T, n *Node, pv *primaryVolume, req *ballastpb.IORequest) {
	t.Helper()
	length := req.Length
	if req.Op == ballastpb.IOOp_IO_OP_WRITE {
		length = uint64(len(req.Data))
	}
	if err := n.serveWrite(context.Background(), pv, req, length); err != nil {
		t.Fatalf("write %d+%d of client %d op %d: %v", req.Offset, length, req.Client, req.WriteOp, err)
	}
}

func readBack(t *testing.T, pv *primaryVolume, off uint64, n int) []byte {
	t.Helper()
	got := make([]byte, n)
	if err := pv.read(context.Background(), off, got); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestResentWriteIsAppliedOnce is the chaos harness's finding (seed 5729)
// in small: a write whose answer was lost is sent again after another
// client overwrote its blocks; applying it again would bring the old data
// back.
func TestResentWriteIsAppliedOnce(t *testing.T) {
	p := newPair(t, 1<<20)
	n := &Node{blocks: p.pStore}
	a, b, c := pattern(4*blockSize, 1), pattern(4*blockSize, 2), pattern(4*blockSize, 3)

	serve(t, n, p.primary, namedWrite(1, 1, 1, 0, a))
	serve(t, n, p.primary, namedWrite(2, 1, 1, 0, b))
	serve(t, n, p.primary, resent(namedWrite(1, 1, 1, 0, a)))
	if got := readBack(t, p.primary, 0, len(b)); !bytes.Equal(got, b) {
		t.Fatal("the resent write was applied again over a later one")
	}
	if got := n.resentWrites.Load(); got != 1 {
		t.Fatalf("%d resent writes counted, want 1", got)
	}

	// Applied in part (a large write's first segment, say): a resend
	// applies the rest only. Unaligned, so the parts' edges are partial
	// blocks.
	off := uint64(8*blockSize + 100)
	serve(t, n, p.primary, namedWrite(1, 2, 1, off, c[:2*blockSize-100]))
	serve(t, n, p.primary, namedWrite(2, 2, 1, 8*blockSize, b))
	serve(t, n, p.primary, resent(namedWrite(1, 2, 1, off, c[:4*blockSize-200])))
	want := slices.Concat(b[:2*blockSize], c[2*blockSize-100:4*blockSize-200], b[4*blockSize-100:])
	if got := readBack(t, p.primary, 8*blockSize, 4*blockSize); !bytes.Equal(got, want) {
		t.Fatalf("partly applied resend: first difference at byte %d", firstDiff(got, want))
	}

	// Trims are named too.
	trim := &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_TRIM, Offset: 0, Length: 2 * blockSize, Client: 1, WriteOp: 3, OldestOp: 1}
	serve(t, n, p.primary, trim)
	serve(t, n, p.primary, namedWrite(2, 3, 1, 0, b[:blockSize]))
	serve(t, n, p.primary, resent(trim))
	if got := readBack(t, p.primary, 0, blockSize); !bytes.Equal(got, b[:blockSize]) {
		t.Fatal("the resent trim was applied again over a later write")
	}

	// Both replicas hold the same table; the client's later writes let
	// it forget the ops it has answers for.
	serve(t, n, p.primary, namedWrite(1, 4, 4, 20*blockSize, a[:blockSize]))
	for _, s := range []*blockstore.Store{p.pStore, p.sStore} {
		ws, err := s.WriterState(p.vol.Id, 1)
		if err != nil || ws == nil {
			t.Fatalf("writer state: %v, %v", ws, err)
		}
		if len(ws.Ops) != 1 || ws.Ops[0].Op != 4 || ws.Oldest != 4 {
			t.Fatalf("writer state %v", ws)
		}
	}
}

// TestResendToTheNewPrimaryIsAppliedOnce: the primary replicated a write
// and failed before answering; the agent sends it to the secondary, now
// primary, after another client wrote the same blocks there.
func TestResendToTheNewPrimaryIsAppliedOnce(t *testing.T) {
	p := newPair(t, 1<<20)
	old := &Node{blocks: p.pStore}
	a, b := pattern(2*blockSize, 1), pattern(2*blockSize, 2)
	serve(t, old, p.primary, namedWrite(7, 1, 1, 0, a))
	p.primary.Close()

	vol := &ballastpb.Volume{Name: "v", Id: p.vol.Id, SizeBytes: p.vol.SizeBytes, Epoch: 2, Primary: "b", Secondaries: []string{"a"}}
	dial := func(ctx context.Context, vol *ballastpb.Volume, secondary string) (replicaLink, error) {
		return &memLink{sec: &secondaryVolume{store: p.pStore, id: vol.Id}, f: &faults{}}, nil
	}
	promoted := newPrimaryVolume(vol, p.sStore, dial, time.Second, slog.New(slog.DiscardHandler), nil, nil)
	t.Cleanup(promoted.Close)
	n := &Node{blocks: p.sStore}
	serve(t, n, promoted, namedWrite(8, 1, 1, 0, b))
	serve(t, n, promoted, resent(namedWrite(7, 1, 1, 0, a)))
	if got := readBack(t, promoted, 0, len(b)); !bytes.Equal(got, b) {
		t.Fatal("the write resent to the new primary was applied again")
	}
}

// TestNamedWriteSettlesBeforeItReturns: once a named write's record is
// queued, the write returns only with the record's outcome, though its
// caller gave up: a resend must never run beside a record that may still
// land.
func TestNamedWriteSettlesBeforeItReturns(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(blockSize, 1)) // the session is open
	p.faults.set(func(f *faults) { f.waitDelay = 300 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := p.primary.write(ctx, 0, blockSize, pattern(blockSize, 2), false, false, writeID{client: 3, op: 1, oldest: 1})
	if err != nil {
		t.Fatalf("named write: %v (want its record's outcome)", err)
	}
	if ws, _ := p.pStore.WriterState(p.vol.Id, 3); ws == nil || len(ws.Ops) != 1 {
		t.Fatalf("writer state %v", ws)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	err = p.primary.write(ctx2, 0, blockSize, pattern(blockSize, 3), false, false, writeID{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unnamed write: %v, want the caller's deadline", err)
	}
}

// TestResendWaitsForItsFirstSend: a resend that reaches the node while
// the first send still runs there waits for it.
func TestResendWaitsForItsFirstSend(t *testing.T) {
	p := newPair(t, 1<<20)
	n := &Node{blocks: p.pStore}
	end, err := n.writeOps.begin(context.Background(), opKey{vol: p.vol.Id, client: 5, op: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- n.serveWrite(context.Background(), p.primary, resent(namedWrite(5, 1, 1, 0, pattern(blockSize, 4))), blockSize)
	}()
	select {
	case err := <-done:
		t.Fatalf("the resend ran beside its first send: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	end()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	end, _ = n.writeOps.begin(context.Background(), opKey{vol: p.vol.Id, client: 5, op: 2})
	defer end()
	if err := n.serveWrite(ctx, p.primary, namedWrite(5, 2, 1, 0, pattern(blockSize, 5)), blockSize); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a first send whose resend runs, its caller gone: %v", err)
	}
	if err := n.serveWrite(ctx, p.primary, resent(namedWrite(5, 2, 1, 0, pattern(blockSize, 5))), blockSize); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a resend whose caller gave up while waiting: %v", err)
	}
}

// TestWriterStatesTravelWithCopies: reconciliation and a full copy hand
// the tables to the replica that is behind.
func TestWriterStatesTravelWithCopies(t *testing.T) {
	r := newStorageRig(t, 4<<20, 7, 256<<10)
	n := &Node{blocks: r.pStore}
	serve(t, n, r.primary, namedWrite(11, 1, 1, 0, pattern(3*blockSize, 1)))
	serve(t, n, r.primary, namedWrite(12, 1, 1, 1<<20, pattern(blockSize, 2)))

	fresh := openMemStore(t)
	r.primary.Close()
	r.sStore = fresh
	r.vol.Secondaries = []string{"c"}
	r.vol.CatchingUp = []string{"c"}
	r.start(t)
	r.write(t, 2<<20, pattern(blockSize, 3)) // the first write copies the volume
	for _, client := range []uint64{11, 12} {
		ws, err := fresh.WriterState(r.vol.Id, client)
		if err != nil || ws == nil || len(ws.Ops) != 1 {
			t.Fatalf("client %d after a full copy: %v, %v", client, ws, err)
		}
	}

	// The secondary is one tagged record ahead (the primary failed before
	// its own append): the primary adopts it with its tag.
	last, _ := r.sStore.LastSeq(r.vol.Id)
	ahead := &ballastpb.LogRecord{Seq: last + 1, Blocks: []*ballastpb.BlockWrite{{Block: 40, Data: pattern(blockSize, 4)}},
		Writes: []*ballastpb.WriteTag{{Client: 13, Op: 1, Oldest: 1, FirstBlock: 40, Blocks: 1}}}
	if err := r.sStore.Append(r.vol.Id, []*ballastpb.LogRecord{ahead}, 0); err != nil {
		t.Fatal(err)
	}
	r.vol.CatchingUp = nil
	r.restart(t)
	r.write(t, 3<<20, pattern(blockSize, 5))
	if ws, err := r.pStore.WriterState(r.vol.Id, 13); err != nil || ws == nil || ws.Ops[0].Seq != last+1 {
		t.Fatalf("adopted record's writer: %v, %v", ws, err)
	}
}
