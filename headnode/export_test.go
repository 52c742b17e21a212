package headnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/ec"
)

// memShardReader is the offline shard reader of an export over the
// in-memory sleds of a storageRig.
type memShardReader struct{ m *memShards }

func (r memShardReader) ReadShard(sled string, volume, segment uint64, index uint32, off, length uint64) ([]byte, ShardHeader, error) {
	data, st, err := r.m.Get(context.Background(), sled, shardID{volume: volume, segment: segment, index: index}, off, length)
	if err != nil {
		return nil, ShardHeader{}, err
	}
	return data, ShardHeader{Volume: st.id.volume, Segment: st.id.segment, Index: st.id.index, Epoch: st.epoch}, nil
}

// TestExportReplicaReadsFlushedBlocksFromShards: a replica whose volume is
// partly in its log and partly flushed exports as what was written, with
// one shard failing its checksum, one missing and one whose header names
// another shard, each read around from the others and the parity; with too
// few shards left the export fails naming the segment and every shard's
// problem; without a shard reader it fails as it always did.
func TestExportReplicaReadsFlushedBlocksFromShards(t *testing.T) {
	const size = 2 << 20
	r := newStorageRig(t, size, 7, 256<<10)
	rng := rand.New(rand.NewSource(15))
	data := make([]byte, 1<<20)
	rng.Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	// After the flush: overwrites of flushed blocks, partial ones too, and
	// new blocks, all in the log; the end of the volume never written.
	r.write(t, 4096*5+300, pattern(10000, 4))
	r.write(t, 1<<20+8192, pattern(64<<10, 5))
	segs, err := r.sStore.Segments(r.vol.Id)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) < 2 || r.dirty(t) == 0 {
		t.Fatalf("%d segments and %d blocks in the log: want both", len(segs), r.dirty(t))
	}
	r.corruptShard(segs[0], 1)
	r.shards.set(func(m *memShards) {
		delete(m.sleds[segs[0].ShardSleds[3]], shardID{volume: r.vol.Id, segment: segs[0].Id, index: 3})
	})
	r.misplaceShard(segs[1], segs[0], 0)

	for name, s := range map[string]*blockstore.Store{"secondary": r.sStore, "primary": r.pStore} {
		var out bytes.Buffer
		if err := exportVolume(r.ctx, s, r.vol.Id, size, memShardReader{r.shards}, &out); err != nil {
			t.Fatalf("export of the %s: %v", name, err)
		}
		if !bytes.Equal(out.Bytes(), r.model) {
			t.Fatalf("export of the %s differs from what was written at byte %d", name, firstDiff(out.Bytes(), r.model))
		}
	}

	// Without shards, the first flushed block stops the export.
	if err := exportVolume(r.ctx, r.sStore, r.vol.Id, size, nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "live on the sleds") {
		t.Fatalf("export without shards: %v", err)
	}

	// A third shard of segs[0] gone leaves three of the four it needs.
	r.shards.set(func(m *memShards) { m.down[segs[0].ShardSleds[5]] = true })
	err = exportVolume(r.ctx, r.sStore, r.vol.Id, size, memShardReader{r.shards}, &bytes.Buffer{})
	if !errors.Is(err, ec.ErrSegmentLost) {
		t.Fatalf("export with a segment lost: %v, want ec.ErrSegmentLost", err)
	}
	// Every failing shard is named with its sled: the one whose read
	// failed first as "shard N of segment S (sled X", the others as
	// "shard N on sled X"; which comes first depends on the read order.
	msg := err.Error()
	if !strings.Contains(msg, fmt.Sprintf("segment %d", segs[0].Id)) {
		t.Errorf("error %q does not name segment %d", msg, segs[0].Id)
	}
	for _, i := range []int{1, 3, 5} {
		first := fmt.Sprintf("shard %d of segment %d (sled %s", i, segs[0].Id, segs[0].ShardSleds[i])
		other := fmt.Sprintf("shard %d on sled %s", i, segs[0].ShardSleds[i])
		if !strings.Contains(msg, first) && !strings.Contains(msg, other) {
			t.Errorf("error %q does not name shard %d on sled %s", msg, i, segs[0].ShardSleds[i])
		}
	}
}
