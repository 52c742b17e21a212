package headnode

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// memStream is the secondary's end of one Replication stream, driven by
// the test as the primary.
type memStream struct {
	grpc.ServerStream // not used by Replicate
	ctx               context.Context
	in                chan *ballastpb.ReplicateRequest
	out               chan *ballastpb.ReplicateReply
}

func (s *memStream) Context() context.Context { return s.ctx }

func (s *memStream) Recv() (*ballastpb.ReplicateRequest, error) {
	select {
	case r, ok := <-s.in:
		if !ok {
			return nil, io.EOF
		}
		return r, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

func (s *memStream) Send(r *ballastpb.ReplicateReply) error {
	select {
	case s.out <- r:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// openSession starts a session of srv's Replicate as a primary would: it
// sends hello and returns the stream and the reply.
func openSession(t *testing.T, srv *replicationServer, hello *ballastpb.ReplicateRequest) (*memStream, *ballastpb.ReplicateReply) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &memStream{ctx: ctx, in: make(chan *ballastpb.ReplicateRequest, 1), out: make(chan *ballastpb.ReplicateReply, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Replicate(s)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, s.roundTrip(t, hello)
}

func (s *memStream) roundTrip(t *testing.T, req *ballastpb.ReplicateRequest) *ballastpb.ReplicateReply {
	t.Helper()
	select {
	case s.in <- req:
	case <-time.After(10 * time.Second):
		t.Fatal("the secondary stopped reading the stream")
	}
	select {
	case r := <-s.out:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no reply from the secondary")
		return nil
	}
}

func refused(r *ballastpb.ReplicateReply) bool {
	return r.Status != ballastpb.ReplicateStatus_REPLICATE_STATUS_OK || r.Error != ""
}

func blockRecord(seq, block uint64, seed byte) *ballastpb.LogRecord {
	return &ballastpb.LogRecord{Seq: seq, Blocks: []*ballastpb.BlockWrite{{Block: block, Data: pattern(blockSize, seed)}}}
}

// TestOldPrimaryFencedAfterPromotion: once secondary b is promoted and
// takes the volume over, nothing of old primary a's replication lands on
// b: not the next batch of its live session, and not a session it opens
// at the old epoch after b restarted with a directory that has not yet
// replayed the promotion (as raft restores a snapshot before the log).
func TestOldPrimaryFencedAfterPromotion(t *testing.T) {
	fs := vfs.NewMem()
	open := func() *blockstore.Store {
		s, err := blockstore.Open("", blockstore.Options{FS: fs, CacheBytes: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	b := bareNode(t, "b", open())
	b.repl = &replicationServer{node: b}
	vol := applyDir(t, b, createCmd("v", "a", "b"))

	// a, primary at epoch 1, replicates a batch to b.
	sess, hello := openSession(t, b.repl, &ballastpb.ReplicateRequest{VolumeId: vol.Id, Epoch: vol.Epoch})
	if refused(hello) {
		t.Fatalf("hello of the primary refused: %v", hello.Error)
	}
	if r := sess.roundTrip(t, &ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{blockRecord(1, 0, 1)}}); refused(r) || r.LastSeq != 1 {
		t.Fatalf("batch 1: %v", r)
	}

	// a's lease runs out; the group promotes b, which takes the volume
	// over and commits a write of its own.
	promoted := applyDir(t, b, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PromoteVolume{PromoteVolume: &ballastpb.PromoteVolumeCommand{
		VolumeId: vol.Id, IfEpoch: vol.Epoch, Primary: "b", Secondaries: []string{"c"},
	}}})
	pv, err := b.primaryFor(promoted)
	if err != nil {
		t.Fatal(err)
	}
	pv.Close()
	if err := b.blocks.Append(vol.Id, []*ballastpb.LogRecord{blockRecord(2, 1, 2)}, 0); err != nil {
		t.Fatal(err)
	}

	// a, not yet aware, sends its next batch on the live session.
	if r := sess.roundTrip(t, &ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{blockRecord(2, 0, 3), blockRecord(3, 0, 3)}}); !refused(r) {
		t.Fatalf("the old primary's batch after the promotion was applied: %v", r)
	}

	// b restarts; its directory is back at the volume's creation.
	if err := b.blocks.Close(); err != nil {
		t.Fatal(err)
	}
	b = bareNode(t, "b", open())
	t.Cleanup(func() { b.blocks.Close() })
	b.repl = &replicationServer{node: b}
	applyDir(t, b, createCmd("v", "a", "b"))

	sess, hello = openSession(t, b.repl, &ballastpb.ReplicateRequest{VolumeId: vol.Id, Epoch: vol.Epoch, PrimaryLastSeq: 1})
	if !refused(hello) {
		r := sess.roundTrip(t, &ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{blockRecord(3, 0, 4)}})
		last, _ := b.blocks.LastSeq(vol.Id)
		t.Fatalf("after a restart b accepted the old primary's session at epoch %d (handed it %d records of epoch %d), then its batch: %v; b's log is at seq %d",
			vol.Epoch, len(hello.RecordsAhead), promoted.Epoch, r, last)
	}
	if hello.Status != ballastpb.ReplicateStatus_REPLICATE_STATUS_STALE_EPOCH {
		t.Fatalf("old primary's hello after the restart: %v %q, want a stale epoch", hello.Status, hello.Error)
	}

	// b's log holds a's batch 1 and b's own write, nothing else.
	if last, err := b.blocks.LastSeq(vol.Id); err != nil || last != 2 {
		t.Fatalf("b's log is at seq %d (%v), want 2", last, err)
	}
	got := make([]byte, 2*blockSize)
	if _, err := b.blocks.ReadLocal(vol.Id, 0, got); err != nil {
		t.Fatal(err)
	}
	if firstDiff(got[:blockSize], pattern(blockSize, 1)) >= 0 || firstDiff(got[blockSize:], pattern(blockSize, 2)) >= 0 {
		t.Fatal("b's blocks are not a's batch 1 and b's own write")
	}
}

// TestTakeOverWaitsForTheOldPrimarysBatch: a batch of the old primary that
// passed its checks just before the promotion lands before the new
// primary's first commit, never after it: taking the volume over waits
// for it, and the session's next batch is refused.
func TestTakeOverWaitsForTheOldPrimarysBatch(t *testing.T) {
	b := bareNode(t, "b", openMemStore(t))
	b.repl = &replicationServer{node: b}
	vol := applyDir(t, b, createCmd("v", "a", "b"))
	sess, hello := openSession(t, b.repl, &ballastpb.ReplicateRequest{VolumeId: vol.Id, Epoch: vol.Epoch})
	if refused(hello) {
		t.Fatalf("hello of the primary refused: %v", hello.Error)
	}

	// While a's batch is between its checks and its apply, the group
	// promotes b, and b takes the volume over and commits its first
	// write (as its committer would, after its log's last seq).
	type takeOver struct {
		atSeq uint64 // b's last seq when it took the volume over
		err   error
	}
	took := make(chan takeOver, 1)
	b.repl.testBeforeApply = func(uint64) {
		b.repl.testBeforeApply = nil
		promoted := applyDir(t, b, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PromoteVolume{PromoteVolume: &ballastpb.PromoteVolumeCommand{
			VolumeId: vol.Id, IfEpoch: vol.Epoch, Primary: "b", Secondaries: []string{"c"},
		}}})
		started := make(chan struct{})
		go func() {
			close(started)
			pv, err := b.primaryFor(promoted)
			if err != nil {
				took <- takeOver{err: err}
				return
			}
			pv.Close()
			last, err := b.blocks.LastSeq(vol.Id)
			if err == nil {
				err = b.blocks.Append(vol.Id, []*ballastpb.LogRecord{blockRecord(last+1, 1, 9)}, 0)
			}
			took <- takeOver{atSeq: last, err: err}
		}()
		<-started
		// Let the take-over run as far as it can: to its end (then a's
		// batch would land after b's commit), or until it raised the
		// fence and waits for this batch.
		for {
			if e, _ := b.blocks.EpochFence(vol.Id); e >= promoted.Epoch {
				return
			}
			select {
			case tk := <-took:
				took <- tk
				return
			case <-time.After(time.Millisecond):
			}
		}
	}
	r := sess.roundTrip(t, &ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{blockRecord(1, 0, 1), blockRecord(2, 0, 1)}})
	tk := <-took
	if tk.err != nil {
		t.Fatal(tk.err)
	}
	if last, _ := b.blocks.LastSeq(vol.Id); last != tk.atSeq+1 {
		t.Fatalf("b took the volume over at seq %d and committed one record, but its log is at seq %d: the old primary's batch (reply %v) landed after b's commit", tk.atSeq, last, r)
	}
	if r := sess.roundTrip(t, &ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{blockRecord(tk.atSeq+1, 0, 3)}}); !refused(r) {
		t.Fatalf("the old primary's batch after the take-over was applied: %v", r)
	}
	if last, _ := b.blocks.LastSeq(vol.Id); last != tk.atSeq+1 {
		t.Fatalf("b's log is at seq %d after the take-over at %d and one commit", last, tk.atSeq)
	}
}
