package sled

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/sledwire"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// dialWire opens a framed connection to a sled and exchanges preambles.
func dialWire(t *testing.T, addr string) (net.Conn, *sledwire.Reader, *sledwire.Writer) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write(sledwire.AppendPreamble(nil)); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, sledwire.PreambleBytes)
	if _, err := io.ReadFull(nc, answer); err != nil {
		t.Fatal(err)
	}
	if v, err := sledwire.ParsePreamble(answer); err != nil || v != sledwire.Version {
		t.Fatalf("preamble answer %q: version %d, %v", answer, v, err)
	}
	return nc, sledwire.NewReader(nc, 4096, nil), sledwire.NewWriter(nc, 0)
}

func putFrame(t *testing.T, reqID uint64, id ShardID, epoch uint64, data []byte, crc uint32) sledwire.Frame {
	t.Helper()
	meta, err := proto.Marshal(&sledpb.PutShardRequest{
		Id:    &sledpb.ShardID{VolumeId: id.Volume, SegmentId: id.Segment, Index: id.Index},
		Epoch: epoch, Crc32C: crc,
	})
	if err != nil {
		t.Fatal(err)
	}
	return sledwire.Frame{Kind: sledwire.KindRequest, Op: sledwire.OpPutShard, ID: reqID, Meta: meta, Data: data}
}

// TestWirePutsAnsweredInAnyOrderWithTheStoresErrors: puts over the framed
// protocol land in the store like gRPC's; each failure comes back under
// its request's id with the gRPC code gRPC would have given it; an op the
// sled does not serve is answered "unimplemented"; a ping is answered.
func TestWirePutsAnsweredInAnyOrderWithTheStoresErrors(t *testing.T) {
	sl, _ := startTestSled(t)
	_, rd, wr := dialWire(t, sl.Addresses()[0])
	good := randomData(1, 1<<20)
	fenced := ShardID{Volume: 2, Segment: 1, Index: 0}
	if _, err := sl.Store().put(fenced, 9, []byte("newer"), nil); err != nil {
		t.Fatal(err)
	}
	frames := []sledwire.Frame{
		putFrame(t, 1, ShardID{Volume: 1, Segment: 1, Index: 2}, 3, good, crc32.Checksum(good, castagnoli)),
		putFrame(t, 2, ShardID{Volume: 1, Segment: 1, Index: 3}, 3, good, 12345), // damaged in transit
		putFrame(t, 3, fenced, 8, good, crc32.Checksum(good, castagnoli)),        // older epoch
		{Kind: sledwire.KindRequest, Op: 99, ID: 4},
		{Kind: sledwire.KindRequest, Op: sledwire.OpPutShard, ID: 5, Meta: []byte{0xff, 0xff}}, // fields that do not decode
		{Kind: sledwire.KindPing, ID: 77},
	}
	for _, f := range frames {
		if err := wr.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	want := map[uint64]uint16{1: 0, 2: uint16(codes.InvalidArgument), 3: uint16(codes.FailedPrecondition), 4: sledwire.StatusUnimplemented, 5: uint16(codes.InvalidArgument)}
	pong := false
	for len(want) > 0 || !pong {
		f, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Kind == sledwire.KindPong {
			if f.ID != 77 {
				t.Fatalf("pong %d", f.ID)
			}
			pong = true
			continue
		}
		code, ok := want[f.ID]
		if f.Kind != sledwire.KindReply || !ok {
			t.Fatalf("unexpected %v %d", f.Kind, f.ID)
		}
		delete(want, f.ID)
		if f.Status != code {
			t.Fatalf("request %d: status %d (%s), want %d", f.ID, f.Status, f.Meta, code)
		}
		if f.ID == 1 {
			resp := &sledpb.PutShardResponse{}
			if err := proto.Unmarshal(f.Meta, resp); err != nil || resp.Device == "" {
				t.Fatalf("put reply %+v: %v", resp, err)
			}
		}
	}
	got, _, err := sl.Store().get(ShardID{Volume: 1, Segment: 1, Index: 2}, 0, uint64(len(good)))
	if err != nil || !bytes.Equal(got, good) {
		t.Fatalf("the put shard reads back wrong: %v", err)
	}
	if _, _, err := sl.Store().get(ShardID{Volume: 1, Segment: 1, Index: 3}, 0, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a put damaged in transit was stored: %v", err)
	}
	if got, _, err := sl.Store().get(fenced, 0, 5); err != nil || string(got) != "newer" {
		t.Fatalf("a fenced put replaced the newer shard: %q %v", got, err)
	}
}

// TestWireClosesBrokenQuietAndStoppedConnections: a frame that does not
// decode, a frame only a sled sends, and silence past the idle bound each
// end the connection; a client of another version gets the sled's
// preamble and is closed; stopping the sled ends the connections it
// serves.
func TestWireClosesBrokenQuietAndStoppedConnections(t *testing.T) {
	sl, _ := startTestSled(t)
	sl.wire.tick = 100 * time.Millisecond // the idle bound: 3 ticks
	addr := sl.Addresses()[0]
	closed := func(nc net.Conn) {
		t.Helper()
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(nc); err != nil {
			t.Fatalf("connection not closed by the sled: %v", err)
		}
	}
	nc, _, _ := dialWire(t, addr)
	bad := make([]byte, sledwire.HeaderBytes)
	bad[0] = 9
	nc.Write(bad)
	closed(nc)

	nc, _, wr := dialWire(t, addr)
	wr.Write(sledwire.Frame{Kind: sledwire.KindReply, Op: sledwire.OpPutShard, ID: 1})
	closed(nc)

	nc, _, _ = dialWire(t, addr)
	start := time.Now()
	closed(nc)
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("a quiet connection was closed after %v, before its bound", d)
	}

	other, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.Write([]byte("BLSTSW\x07\x00"))
	other.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, err := io.ReadAll(other)
	if err != nil || !bytes.Equal(answer, sledwire.AppendPreamble(nil)) {
		t.Fatalf("another version's client got %q, %v", answer, err)
	}

	sl.wire.tick = time.Hour
	nc, _, _ = dialWire(t, addr)
	time.Sleep(50 * time.Millisecond) // served, not only sniffed
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		sl.Close()
	}()
	closed(nc)
	<-stopped
}

// TestWireReadsRangesAfterTheReplysFields: a read's reply carries its
// results without data in its fields and the data of those that
// succeeded after them, in order; a request out of bounds is refused
// whole.
func TestWireReadsRangesAfterTheReplysFields(t *testing.T) {
	sl, _ := startTestSled(t)
	_, rd, wr := dialWire(t, sl.Addresses()[0])
	a, b := ShardID{Volume: 3, Segment: 1, Index: 0}, ShardID{Volume: 3, Segment: 1, Index: 1}
	da, db := randomData(3, 64<<10), randomData(4, 8<<10)
	for id, d := range map[ShardID][]byte{a: da, b: db} {
		if _, err := sl.Store().put(id, 1, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	rng := func(id ShardID, off, n uint64) *sledpb.ShardRange {
		return &sledpb.ShardRange{Id: &sledpb.ShardID{VolumeId: id.Volume, SegmentId: id.Segment, Index: id.Index}, Offset: off, Length: n}
	}
	read := func(reqID uint64, req *sledpb.GetShardRangesRequest) sledwire.Frame {
		t.Helper()
		meta, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if err := wr.Write(sledwire.Frame{Kind: sledwire.KindRequest, Op: sledwire.OpGetShardRanges, ID: reqID, Meta: meta}); err != nil {
			t.Fatal(err)
		}
		f, err := rd.Next()
		if err != nil || f.Kind != sledwire.KindReply || f.ID != reqID {
			t.Fatalf("reply %v %d: %v", f.Kind, f.ID, err)
		}
		return f
	}
	f := read(1, &sledpb.GetShardRangesRequest{Ranges: []*sledpb.ShardRange{
		rng(a, 4096, 8192), rng(ShardID{Volume: 3, Segment: 9}, 0, 4096), rng(b, 0, 8<<10), rng(b, 4096, 8192),
	}})
	if f.Status != 0 {
		t.Fatalf("status %d: %s", f.Status, f.Meta)
	}
	resp := &sledpb.GetShardRangesResponse{}
	if err := proto.Unmarshal(f.Meta, resp); err != nil || len(resp.Results) != 4 {
		t.Fatalf("%d results: %v", len(resp.Results), err)
	}
	for i, r := range resp.Results {
		if len(r.Data) != 0 {
			t.Fatalf("result %d carries data in the fields", i)
		}
	}
	if resp.Results[1].Code != uint32(codes.NotFound) || resp.Results[3].Code != uint32(codes.InvalidArgument) {
		t.Fatalf("failed ranges' codes %d and %d", resp.Results[1].Code, resp.Results[3].Code)
	}
	want := append(append([]byte{}, da[4096:4096+8192]...), db...)
	if !bytes.Equal(f.Data, want) {
		t.Fatalf("%d bytes of data, want the %d of the two ranges read", len(f.Data), len(want))
	}
	if f := read(2, &sledpb.GetShardRangesRequest{}); f.Status != uint16(codes.InvalidArgument) {
		t.Fatalf("a read of no ranges: status %d", f.Status)
	}
}
