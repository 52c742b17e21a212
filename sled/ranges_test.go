package sled

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

func pbID(id ShardID) *sledpb.ShardID {
	return &sledpb.ShardID{VolumeId: id.Volume, SegmentId: id.Segment, Index: id.Index}
}

func rng(id ShardID, off, n uint64) *sledpb.ShardRange {
	return &sledpb.ShardRange{Id: pbID(id), Offset: off, Length: n}
}

// TestGetShardRangesAcrossShards: one request reads ranges of several
// shards of two volumes, the same shard twice, aligned or not; each range
// comes back in order with its shard's stamp, and a range that fails
// (missing shard, past the end, a corrupt chunk) fails alone, with the
// code GetShard would give it.
func TestGetShardRangesAcrossShards(t *testing.T) {
	s := openCacheStore(t, t.TempDir(), 2, 0, nil)
	srv := &server{sled: &Sled{store: s}}
	a, b, c := ShardID{1, 10, 0}, ShardID{1, 10, 3}, ShardID{2, 5, 1}
	da, db, dc := randomData(1, 64<<10), randomData(2, 10_000), randomData(3, 5*4096)
	for _, p := range []struct {
		id    ShardID
		epoch uint64
		data  []byte
	}{{a, 4, da}, {b, 4, db}, {c, 7, dc}} {
		if _, err := s.Put(p.id, p.epoch, p.data); err != nil {
			t.Fatal(err)
		}
	}
	corruptShardFile(t, s, c, headerBytes+2*4096+1) // c's chunk 2
	req := &sledpb.GetShardRangesRequest{Ranges: []*sledpb.ShardRange{
		rng(a, 0, 4096),
		rng(b, 100, 9000),
		rng(a, 32<<10, 8192),
		rng(c, 0, 4096),             // sound
		rng(ShardID{9, 9, 9}, 0, 1), // no such shard
		rng(b, 9000, 1001),          // one byte past the end
		rng(c, 8192, 10),            // the corrupt chunk: c is quarantined
		rng(c, 0, 4096),             // and gone
		rng(a, 65535, 1),
	}}
	resp, err := srv.GetShardRanges(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(req.Ranges) {
		t.Fatalf("%d results for %d ranges", len(resp.Results), len(req.Ranges))
	}
	want := []struct {
		code  codes.Code
		data  []byte
		id    ShardID
		epoch uint64
	}{
		{codes.OK, da[:4096], a, 4},
		{codes.OK, db[100:9100], b, 4},
		{codes.OK, da[32<<10 : 40<<10], a, 4},
		{codes.OK, dc[:4096], c, 7},
		{code: codes.NotFound},
		{code: codes.InvalidArgument},
		{code: codes.DataLoss},
		{code: codes.NotFound},
		{codes.OK, da[65535:], a, 4},
	}
	for i, w := range want {
		r := resp.Results[i]
		if codes.Code(r.Code) != w.code {
			t.Fatalf("range %d: code %v (%s), want %v", i, codes.Code(r.Code), r.Error, w.code)
		}
		if w.code != codes.OK {
			if r.Error == "" || len(r.Data) != 0 {
				t.Fatalf("range %d failed with no reason, or with data", i)
			}
			continue
		}
		if !bytes.Equal(r.Data, w.data) || !proto.Equal(r.Id, pbID(w.id)) || r.Epoch != w.epoch {
			t.Fatalf("range %d: %d bytes of %v at epoch %d", i, len(r.Data), r.Id, r.Epoch)
		}
	}
	if !strings.Contains(resp.Results[5].Error, "past the end") {
		t.Fatalf("a range past the end says %q", resp.Results[5].Error)
	}
}

// TestGetShardRangesRefusesBadRequests: a request out of bounds, or with a
// range that has no id, no length or no end, is refused whole, saying why.
func TestGetShardRangesRefusesBadRequests(t *testing.T) {
	s := openCacheStore(t, t.TempDir(), 1, 0, nil)
	srv := &server{sled: &Sled{store: s}}
	id := ShardID{1, 1, 0}
	if _, err := s.Put(id, 1, randomData(1, 4096)); err != nil {
		t.Fatal(err)
	}
	many := make([]*sledpb.ShardRange, sledpb.MaxRangesPerRequest+1)
	for i := range many {
		many[i] = rng(id, 0, 1)
	}
	big := []*sledpb.ShardRange{rng(id, 0, sledpb.MaxRangeBytesPerRequest/2), rng(id, 0, sledpb.MaxRangeBytesPerRequest/2), rng(id, 0, 1)}
	for _, c := range []struct {
		name   string
		ranges []*sledpb.ShardRange
		says   string
	}{
		{"none", nil, "0 ranges"},
		{"too many", many, "257 ranges"},
		{"no id", []*sledpb.ShardRange{rng(id, 0, 1), {Offset: 0, Length: 1}}, "range 1 has no shard id"},
		{"no length", []*sledpb.ShardRange{rng(id, 0, 0)}, "no length"},
		{"no end", []*sledpb.ShardRange{rng(id, 1<<63, 1<<63)}, "past 2^64"},
		{"too many bytes", big, "more than the 16777216 bytes"},
		{"one range too big", []*sledpb.ShardRange{rng(id, 0, sledpb.MaxRangeBytesPerRequest+1)}, "more than"},
	} {
		_, err := srv.GetShardRanges(context.Background(), &sledpb.GetShardRangesRequest{Ranges: c.ranges})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.says) {
			t.Fatalf("%s: %v, want InvalidArgument saying %q", c.name, err, c.says)
		}
	}
	// The bounds themselves are fine.
	full := many[:sledpb.MaxRangesPerRequest]
	if resp, err := srv.GetShardRanges(context.Background(), &sledpb.GetShardRangesRequest{Ranges: full}); err != nil || len(resp.Results) != len(full) {
		t.Fatalf("%d ranges: %v", len(full), err)
	}
}

// TestGetShardRangesOverGRPC: the batched read through a running sled.
func TestGetShardRangesOverGRPC(t *testing.T) {
	sl, c := startTestSled(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := ShardID{3, 1, 0}, ShardID{3, 2, 0}
	da, db := randomData(1, 3*4096), randomData(2, 2*4096)
	for _, p := range []struct {
		id   ShardID
		data []byte
	}{{a, da}, {b, db}} {
		if _, err := sl.Store().Put(p.id, 1, p.data); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := c.GetShardRanges(ctx, &sledpb.GetShardRangesRequest{Ranges: []*sledpb.ShardRange{rng(b, 4096, 4096), rng(a, 0, 8192)}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.Results[0].Data, db[4096:]) || !bytes.Equal(resp.Results[1].Data, da[:8192]) {
		t.Fatal("wrong data")
	}
	if _, err := c.GetShardRanges(ctx, &sledpb.GetShardRangesRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("an empty request: %v", err)
	}
}

// FuzzGetShardRanges feeds arbitrary requests to the parser and the
// handler: a request is refused whole or answered range by range, and
// every range answered OK holds exactly the bytes of its shard.
func FuzzGetShardRanges(f *testing.F) {
	s := openCacheStore(&testing.T{}, f.TempDir(), 1, 0, nil)
	f.Cleanup(func() { s.Close() })
	srv := &server{sled: &Sled{store: s}}
	shards := map[ShardID][]byte{{1, 1, 0}: randomData(1, 3*4096+5), {1, 2, 1}: randomData(2, 100)}
	for id, data := range shards {
		if _, err := s.Put(id, 1, data); err != nil {
			f.Fatal(err)
		}
	}
	seed := func(ranges ...*sledpb.ShardRange) {
		b, err := proto.Marshal(&sledpb.GetShardRangesRequest{Ranges: ranges})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(rng(ShardID{1, 1, 0}, 0, 4096), rng(ShardID{1, 2, 1}, 10, 90))
	seed(rng(ShardID{1, 1, 0}, 4095, 4097), rng(ShardID{7, 7, 7}, 0, 1))
	seed(rng(ShardID{1, 1, 0}, 1<<63, 1<<63))
	seed(&sledpb.ShardRange{Length: 1})
	seed()
	f.Fuzz(func(t *testing.T, b []byte) {
		var req sledpb.GetShardRangesRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		ranges, perr := parseRanges(&req)
		resp, err := srv.GetShardRanges(context.Background(), &req)
		if perr != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refused by the parser (%v) but the handler says %v", perr, err)
			}
			return
		}
		var total uint64
		for _, r := range ranges {
			if r.length == 0 || r.off+r.length < r.off {
				t.Fatalf("parser let through %+v", r)
			}
			total += r.length
		}
		if len(ranges) == 0 || len(ranges) > sledpb.MaxRangesPerRequest || total > sledpb.MaxRangeBytesPerRequest {
			t.Fatalf("parser let through %d ranges of %d bytes", len(ranges), total)
		}
		if err != nil || len(resp.Results) != len(ranges) {
			t.Fatalf("handler: %v", err)
		}
		for i, r := range ranges {
			res := resp.Results[i]
			if res.Code != 0 {
				continue
			}
			data, ok := shards[r.id]
			if !ok || r.off+r.length > uint64(len(data)) || !bytes.Equal(res.Data, data[r.off:r.off+r.length]) {
				t.Fatalf("range %d %+v: OK with %d wrong bytes", i, r, len(res.Data))
			}
		}
	})
}

// startTestSled starts a sled on loopback, scrubbing off, and a client.
func startTestSled(t *testing.T) (*Sled, sledpb.SledClient) {
	t.Helper()
	sl, err := Start(Config{ID: "s1", DataDir: t.TempDir(), Devices: 1, ListenAddresses: []string{"127.0.0.1:0"},
		Logger: slog.New(slog.DiscardHandler), ScrubBytesPerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Close() })
	conn, err := rpc.Dial(sl.Addresses())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sl, sledpb.NewSledClient(conn)
}
