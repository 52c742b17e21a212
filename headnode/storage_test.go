package headnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/headnode/ec"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// memShards is an in-memory shardStore: one map of shards per sled, with
// injected faults.
type memShards struct {
	mu       sync.Mutex
	sleds    map[string]map[shardID]memShard
	down     map[string]bool // requests fail as if the sled were unreachable
	full     map[string]bool // puts fail as if no device had room
	capBytes uint64
	puts     int
	// hold, if set, is called before each put, outside the lock: a
	// test holds puts in flight with it.
	hold func()
}

type memShard struct {
	data     []byte
	stamp    shardStamp // what its header says it is
	corrupt  bool
	modified time.Time
}

func newMemShards(n int) *memShards {
	m := &memShards{sleds: map[string]map[shardID]memShard{}, down: map[string]bool{}, full: map[string]bool{}, capBytes: 1 << 30}
	for i := range n {
		m.sleds[sledName(i)] = map[shardID]memShard{}
	}
	return m
}

func sledName(i int) string { return fmt.Sprintf("s%d", i) }

func (m *memShards) check(sled string) (map[shardID]memShard, error) {
	sh, ok := m.sleds[sled]
	if !ok || m.down[sled] {
		return nil, fmt.Errorf("%w: sled %s (test)", errSledDown, sled)
	}
	return sh, nil
}

func (m *memShards) Put(ctx context.Context, sled string, id shardID, epoch uint64, data []byte) error {
	m.mu.Lock()
	hold := m.hold
	m.mu.Unlock()
	if hold != nil {
		hold()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	sh, err := m.check(sled)
	if err != nil {
		return err
	}
	if m.full[sled] {
		return fmt.Errorf("%w: sled %s (test)", errSledFull, sled)
	}
	m.puts++
	sh[id] = memShard{data: bytes.Clone(data), stamp: shardStamp{id: id, epoch: epoch}, modified: time.Now()}
	return nil
}

func (m *memShards) Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sh, err := m.check(sled)
	if err != nil {
		return nil, shardStamp{}, err
	}
	s, ok := sh[id]
	if !ok {
		return nil, shardStamp{}, fmt.Errorf("%w: %s on %s (test)", errShardMissing, id, sled)
	}
	if s.corrupt {
		// A sled quarantines a shard that fails its checksum.
		delete(sh, id)
		return nil, shardStamp{}, fmt.Errorf("%w: %s on %s (test)", errShardCorrupt, id, sled)
	}
	if length == 0 {
		length = uint64(len(s.data)) - off
	}
	if off+length > uint64(len(s.data)) {
		return nil, shardStamp{}, fmt.Errorf("range past the end of %s", id)
	}
	return bytes.Clone(s.data[off : off+length]), s.stamp, nil
}

func (m *memShards) Delete(ctx context.Context, sled string, id shardID, epoch uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	sh, err := m.check(sled)
	if err != nil {
		return err
	}
	if _, ok := sh[id]; !ok {
		return fmt.Errorf("%w: %s", errShardMissing, id)
	}
	delete(sh, id)
	return nil
}

func (m *memShards) List(ctx context.Context, sled string, vol uint64) ([]shardInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sh, err := m.check(sled)
	if err != nil {
		return nil, err
	}
	var out []shardInfo
	for id, s := range sh {
		if vol == 0 || id.volume == vol {
			out = append(out, shardInfo{id: id, size: uint64(len(s.data)), modified: s.modified})
		}
	}
	return out, nil
}

func (m *memShards) Stat(ctx context.Context, sled string) (*sledpb.StatResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sh, err := m.check(sled)
	if err != nil {
		return nil, err
	}
	var used uint64
	for _, s := range sh {
		used += uint64(len(s.data))
	}
	return &sledpb.StatResponse{SledId: sled, Shards: uint64(len(sh)), CapacityBytes: m.capBytes, UsedBytes: used}, nil
}

func (m *memShards) set(fn func(*memShards)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m)
}

func (m *memShards) totalBytes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n uint64
	for _, sh := range m.sleds {
		for _, s := range sh {
			n += uint64(len(s.data))
		}
	}
	return n
}

// holders returns the sleds holding a shard.
func (m *memShards) holders(id shardID) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for sled, sh := range m.sleds {
		if _, ok := sh[id]; ok {
			out = append(out, sled)
		}
	}
	sort.Strings(out)
	return out
}

// testSleds is a sled directory for tests: every sled up unless changed.
type testSleds struct {
	mu    sync.Mutex
	sleds map[string]*ballastpb.Sled
}

func newTestSleds(n int) *testSleds {
	d := &testSleds{sleds: map[string]*ballastpb.Sled{}}
	for i := range n {
		d.sleds[sledName(i)] = &ballastpb.Sled{Id: sledName(i), State: ballastpb.SledState_SLED_STATE_UP}
	}
	return d
}

func (d *testSleds) list() []*ballastpb.Sled {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*ballastpb.Sled
	for _, s := range d.sleds {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

func (d *testSleds) get(id string) (*ballastpb.Sled, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sleds[id]
	return s, ok
}

func (d *testSleds) setState(id string, st ballastpb.SledState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := proto.Clone(d.sleds[id]).(*ballastpb.Sled)
	s.State = st
	d.sleds[id] = s
}

// storageRig is a primary/secondary pair whose primary keeps data on
// in-memory sleds, with its maintainer driven by hand.
type storageRig struct {
	*pair
	shards *memShards
	dir    *testSleds
	ctx    context.Context
}

func newStorageRig(t testing.TB, size uint64, sleds int, segmentBytes int64) *storageRig {
	t.Helper()
	return newStorageRigJournal(t, size, sleds, segmentBytes, 0)
}

// newStorageRigJournal is newStorageRig with journals of journalBytes (0:
// the in-memory default), for writes larger than that before a flush.
func newStorageRigJournal(t testing.TB, size uint64, sleds int, segmentBytes, journalBytes int64) *storageRig {
	t.Helper()
	shards := newMemShards(sleds)
	dir := newTestSleds(sleds)
	// Large writes take the journal here, as the flush tests expect;
	// segwrite_test.go turns the segment path on.
	cfg := StorageConfig{SegmentBytes: segmentBytes, ShardGCGrace: time.Nanosecond, ShardTimeout: time.Second, DirectWriteBytes: -1}
	cfg.EnsureDefaults()
	log := slog.New(slog.DiscardHandler)
	remote := &remoteIO{cfg: cfg, shards: shards, sled: dir.get, stats: &storageStats{}, log: log, manual: true}
	remote.view = newSledView(dir.list, shards, log)
	remote.view.pollOnce(context.Background(), time.Second)
	p := &pair{
		pStore:      openMemStoreJournal(t, journalBytes),
		sStore:      openMemStoreJournal(t, journalBytes),
		faults:      &faults{},
		vol:         &ballastpb.Volume{Name: "v", Id: 7, SizeBytes: size, Epoch: 1, Primary: "a", Secondaries: []string{"b"}},
		model:       make([]byte, size),
		replTimeout: time.Second,
		remote:      remote,
	}
	p.start(t)
	return &storageRig{pair: p, shards: shards, dir: dir, ctx: context.Background()}
}

func (r *storageRig) m() *maintainer { return r.primary.maint }

// restart closes the primary and starts a new one over the same stores and
// sleds, as a head node does after a crash: only durable state survives.
func (r *storageRig) restart(t *testing.T) {
	t.Helper()
	r.primary.Close()
	r.start(t)
}

// check asserts the primary reads the model, both replicas hold the same
// bytes and the same segments, and both stores are internally consistent.
func (r *storageRig) check(t *testing.T) {
	t.Helper()
	r.checkReplicas(t)
	for _, s := range []*blockstore.Store{r.pStore, r.sStore} {
		checkStoreInvariants(t, s, r.vol.Id)
	}
	ps, err := r.pStore.Segments(r.vol.Id)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := r.sStore.Segments(r.vol.Id)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != len(ss) {
		t.Fatalf("primary has %d segments, secondary %d", len(ps), len(ss))
	}
	for i := range ps {
		if !proto.Equal(ps[i], ss[i]) {
			t.Fatalf("segment differs between replicas:\n%v\n%v", ps[i], ss[i])
		}
	}
	pw, sw := writerTables(t, r.pStore, r.vol.Id), writerTables(t, r.sStore, r.vol.Id)
	if !maps.Equal(pw, sw) {
		t.Fatalf("the replicas' tables of named writes differ: primary has %d clients, secondary %d", len(pw), len(sw))
	}
}

// writerTables returns a store's tables of named writes of a volume
// (writeops.go), encoded, by client.
func writerTables(t *testing.T, s *blockstore.Store, vol uint64) map[uint64]string {
	t.Helper()
	out, err := s.WriterTable(vol)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkStoreInvariants recomputes what the store keeps incrementally
// (blockstore.Store.CheckInvariants): its in-memory index and counts of
// journal refs, every index entry naming an existing segment slot
// written for that block, and every segment's live count.
func checkStoreInvariants(t *testing.T, s *blockstore.Store, vol uint64) {
	t.Helper()
	if err := s.CheckInvariants(vol); err != nil {
		t.Fatal(err)
	}
}

// checkShardsMatch asserts the sleds hold exactly the shards the segments
// name, each with the content the segment's blocks encode to.
func (r *storageRig) checkShardsMatch(t *testing.T) {
	t.Helper()
	segs, err := r.pStore.Segments(r.vol.Id)
	if err != nil {
		t.Fatal(err)
	}
	want := map[shardID]string{}
	for _, seg := range segs {
		for i, sled := range seg.ShardSleds {
			want[shardID{volume: r.vol.Id, segment: seg.Id, index: uint32(i)}] = sled
		}
	}
	r.shards.mu.Lock()
	defer r.shards.mu.Unlock()
	for sled, sh := range r.shards.sleds {
		for id := range sh {
			if want[id] != sled {
				t.Errorf("sled %s holds %s, which no segment names there", sled, id)
			}
		}
	}
	for id, sled := range want {
		if _, ok := r.shards.sleds[sled][id]; !ok {
			t.Errorf("%s should be on sled %s but is not", id, sled)
		}
	}
}

func (r *storageRig) dirty(t testing.TB) int {
	t.Helper()
	n, err := r.pStore.DirtyCount(r.vol.Id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFlushMovesTheLogToSegments(t *testing.T) {
	r := newStorageRig(t, 4<<20, 7, 256<<10)
	rng := rand.New(rand.NewSource(2))
	data := make([]byte, 3<<20)
	rng.Read(data)
	r.write(t, 0, data)
	r.write(t, 100_000, pattern(9000, 3)) // unaligned
	before := r.dirty(t)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.dirty(t); n != 0 || before == 0 {
		t.Fatalf("dirty blocks: %d before the flush, %d after", before, n)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	if len(segs) != (before+63)/64 {
		t.Fatalf("%d segments for %d blocks of 64 per segment", len(segs), before)
	}
	r.check(t)
	r.checkShardsMatch(t)
	// Writes after a flush land in the log again, over flushed blocks,
	// partially too (read-modify-write from the sleds).
	r.write(t, 4096*10+100, pattern(5000, 7))
	r.write(t, 1<<20, pattern(8192, 8))
	r.check(t)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
	r.checkShardsMatch(t)
	// A trim removes flushed blocks: they read as zeroes and their
	// segments count them dead.
	if err := r.primary.write(r.ctx, 0, 1<<20, nil, true, true, writeID{}); err != nil {
		t.Fatal(err)
	}
	clear(r.model[:1<<20])
	r.check(t)
}

func TestFlushSkipsBlocksWrittenSinceItReadThem(t *testing.T) {
	r := newStorageRig(t, 1<<20, 7, 1<<20)
	r.write(t, 0, pattern(64<<10, 1))
	dirty, err := r.pStore.DirtyBlocks(r.vol.Id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// Blocks 2 and 5 are written again while the flusher encodes the old
	// versions; block 7 is trimmed.
	r.write(t, 2*4096, pattern(4096, 20))
	r.write(t, 5*4096, pattern(4096, 50))
	if err := r.primary.write(r.ctx, 7*4096, 4096, nil, true, true, writeID{}); err != nil {
		t.Fatal(err)
	}
	clear(r.model[7*4096 : 8*4096])
	if err := r.m().flushSegment(r.ctx, dirty); err != nil {
		t.Fatal(err)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	if len(segs) != 1 || segs[0].LiveBlocks != 13 || segs[0].Blocks != 16 {
		t.Fatalf("segment after a racing flush: %v (want 13 live of 16)", segs)
	}
	if n := r.dirty(t); n != 2 {
		t.Fatalf("%d blocks left in the log, want the 2 rewritten", n)
	}
	r.check(t)
}

func TestDegradedReadsRepairAndRebuild(t *testing.T) {
	// Eight sleds: six hold each segment, one goes down, one drains.
	r := newStorageRig(t, 2<<20, 8, 512<<10)
	rng := rand.New(rand.NewSource(3))
	data := make([]byte, 2<<20)
	rng.Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	seg := segs[0]

	// Two sleds of the segment unreachable: reads come from parity.
	r.shards.set(func(m *memShards) { m.down[seg.ShardSleds[0]], m.down[seg.ShardSleds[4]] = true, true })
	r.dropCache()
	r.check(t)
	if r.remote.stats.degradedReads.Load() == 0 {
		t.Fatal("no degraded read counted")
	}
	r.shards.set(func(m *memShards) { clear(m.down) })
	r.remote.view.pollOnce(r.ctx, time.Second)

	// A shard that fails its checksum is never returned; the read asks for
	// it to be repaired, and repair rewrites it in place.
	r.corruptShard(seg, 1)
	r.dropCache()
	r.check(t)
	r.m().drainRepairRequests()
	if !r.m().pending[shardRef{segment: seg.Id, index: 1}] {
		t.Fatal("a corrupt shard was read around but not queued for repair")
	}
	if err := r.m().repair(r.ctx); err != nil {
		t.Fatal(err)
	}
	if r.remote.stats.repaired.Load() != 1 {
		t.Fatalf("repaired %d shards, want 1", r.remote.stats.repaired.Load())
	}
	r.checkShardsMatch(t)

	// A sled declared down: the audit rebuilds its shards elsewhere.
	lost := seg.ShardSleds[2]
	r.shards.set(func(m *memShards) { m.down[lost] = true })
	r.dir.setState(lost, ballastpb.SledState_SLED_STATE_DOWN)
	r.remote.view.pollOnce(r.ctx, time.Second)
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	segs, _ = r.pStore.Segments(r.vol.Id)
	for _, s := range segs {
		if slices.Contains(s.ShardSleds, lost) {
			t.Fatalf("segment %d still has a shard on down sled %s", s.Id, lost)
		}
	}
	if r.remote.stats.rebuilt.Load() == 0 {
		t.Fatal("nothing rebuilt")
	}
	r.dropCache()
	r.check(t)
	// Lose two more sleds at once: still readable.
	r.shards.set(func(m *memShards) { m.down[segs[0].ShardSleds[0]], m.down[segs[0].ShardSleds[5]] = true, true })
	r.dropCache()
	r.check(t)
	r.shards.set(func(m *memShards) { clear(m.down) })

	// Draining a sled moves its shards off, copying rather than rebuilding.
	drained := segs[0].ShardSleds[3]
	r.dir.setState(drained, ballastpb.SledState_SLED_STATE_DRAINING)
	r.remote.view.pollOnce(r.ctx, time.Second)
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.shards.mu.Lock()
	left := len(r.shards.sleds[drained])
	r.shards.mu.Unlock()
	if left != 0 {
		t.Fatalf("drained sled still holds %d shards", left)
	}
	r.dropCache()
	r.check(t)
}

func TestFullSledTakesNoShards(t *testing.T) {
	r := newStorageRig(t, 1<<20, 7, 256<<10)
	r.shards.set(func(m *memShards) { m.full["s0"], m.full["s1"] = true, true })
	r.write(t, 0, pattern(1<<20, 4))
	// Six shards, seven sleds, two full: a refused shard must find the
	// one sled left, or the flush fails cleanly and the data stays put.
	err := r.m().flush(r.ctx)
	if err == nil {
		r.check(t)
		segs, _ := r.pStore.Segments(r.vol.Id)
		for _, s := range segs {
			if slices.Contains(s.ShardSleds, "s0") || slices.Contains(s.ShardSleds, "s1") {
				t.Fatalf("segment %d has a shard on a full sled: %v", s.Id, s.ShardSleds)
			}
		}
		t.Fatal("six shards placed on five sleds with room")
	}
	if !errors.Is(err, errSledFull) && !errors.Is(err, ec.ErrNoPlacement) {
		t.Fatalf("flush with too few sleds with room: %v", err)
	}
	r.check(t)
	r.shards.set(func(m *memShards) { m.full["s1"] = false })
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatalf("flush with one sled full: %v", err)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	for _, s := range segs {
		if slices.Contains(s.ShardSleds, "s0") {
			t.Fatalf("segment %d has a shard on the full sled: %v", s.Id, s.ShardSleds)
		}
	}
	r.check(t)
}

func TestCompactionReclaimsOverwrittenSpace(t *testing.T) {
	const size = 1 << 20
	r := newStorageRig(t, size, 7, 128<<10) // 32 blocks a segment
	rng := rand.New(rand.NewSource(4))
	for round := range 20 {
		// Rewrite a random half of the blocks each round.
		for b := range size / blockSize {
			if rng.Intn(2) == 0 || round == 0 {
				r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(round*7+b)))
			}
		}
		if err := r.m().flush(r.ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.m().maintain(r.ctx); err != nil {
			t.Fatal(err)
		}
	}
	r.check(t)
	r.checkShardsMatch(t)
	limit := uint64(3 * size * 6 / 4)
	if got := r.shards.totalBytes(); got > limit {
		t.Fatalf("sleds hold %d bytes for a %d-byte volume rewritten 20 times; want under %d", got, size, limit)
	}
}

// TestCrashPointsKeepEveryAcknowledgedWrite stops flush, compaction,
// freeing and repair at every step boundary, restarts the primary over the
// same stores and sleds (what a crashed head node finds), and checks that
// every acknowledged write reads back, the replicas agree, the stores are
// consistent, and the next audit leaves the sleds holding exactly what the
// segments name.
func TestCrashPointsKeepEveryAcknowledgedWrite(t *testing.T) {
	steps := []string{"flush:shards-written", "compact:shards-written", "compact:committed", "free:committed", "repair:shard-written"}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			r := newStorageRig(t, 512<<10, 7, 64<<10)
			rng := rand.New(rand.NewSource(5))
			writeRandom := func(n int) {
				for range n {
					b := uint64(rng.Intn(128))
					r.write(t, b*blockSize, pattern(blockSize, byte(rng.Intn(256))))
				}
			}
			writeRandom(200)
			crashed := false
			r.remote.crashAt = func(s string) error {
				if s == step && !crashed {
					crashed = true
					return errors.New("injected crash")
				}
				return nil
			}
			// Drive every kind of maintenance until the crash point is hit.
			for i := 0; i < 10 && !crashed; i++ {
				r.m().flush(r.ctx)
				if step == "repair:shard-written" {
					segs, _ := r.pStore.Segments(r.vol.Id)
					if len(segs) > 0 {
						r.m().requestRepair(shardRef{segment: segs[0].Id, index: 0})
						r.m().drainRepairRequests()
						r.m().repair(r.ctx)
					}
				}
				r.m().maintain(r.ctx)
				writeRandom(100)
			}
			if !crashed {
				t.Fatalf("step %s never reached", step)
			}
			r.remote.crashAt = nil
			r.restart(t)
			r.check(t)
			writeRandom(50)
			if err := r.m().flush(r.ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.m().maintain(r.ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.m().maintain(r.ctx); err != nil {
				t.Fatal(err)
			}
			r.check(t)
			r.checkShardsMatch(t)
		})
	}
}

// TestReconcileAcrossMaintenanceRecords: a secondary that misses batches
// holding flush, compaction and free records, or holds batches the primary
// lost the reply to, catches up to exactly the primary's state.
// Maintenance records move data without changing it, so the model holds
// whatever happened to them.
func TestReconcileAcrossMaintenanceRecords(t *testing.T) {
	r := newStorageRig(t, 512<<10, 7, 64<<10)
	rng := rand.New(rand.NewSource(6))
	r.replTimeout = 100 * time.Millisecond
	r.restart(t)
	failures := 0
	for range 15 {
		for range 60 {
			b := uint64(rng.Intn(128))
			r.write(t, b*blockSize, pattern(blockSize, byte(rng.Intn(256))))
		}
		fault := rng.Intn(3)
		r.faults.set(func(f *faults) { f.down, f.loseReply = fault == 1, fault == 2 })
		if r.m().flush(r.ctx) != nil {
			failures++
		}
		r.faults.set(func(f *faults) { f.down, f.loseReply = fault == 1 && rng.Intn(2) == 0, false })
		if r.m().maintain(r.ctx) != nil {
			failures++
		}
		r.faults.set(func(f *faults) { f.down, f.loseReply = false, false })
	}
	if failures == 0 {
		t.Fatal("no maintenance step failed: the faults did not bite")
	}
	r.write(t, 0, pattern(1, 1)) // reconcile
	r.check(t)
	// And the state keeps working: more flushes and compaction.
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
}

// TestCompactionDoesNotResurrectMovedBlocks: blocks trimmed, or written
// and flushed again, while compaction copies them must keep their new
// state when its record lands.
func TestCompactionDoesNotResurrectMovedBlocks(t *testing.T) {
	r := newStorageRig(t, 512<<10, 7, 64<<10) // 16 blocks a segment
	for b := range 64 {
		r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(b+1)))
	}
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	// Overwrite most of every segment so all are sparse, and flush that.
	for b := range 64 {
		if b%4 != 0 {
			r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(b+100)))
		}
	}
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	// While compaction has copied the live blocks (0, 4, 8, ...) but not
	// yet committed, block 4 is trimmed and block 8 is written and flushed
	// elsewhere.
	interleaved := false
	r.remote.crashAt = func(step string) error {
		if step != "compact:shards-written" || interleaved {
			return nil
		}
		interleaved = true
		if err := r.primary.write(r.ctx, 4*blockSize, blockSize, nil, true, true, writeID{}); err != nil {
			return err
		}
		clear(r.model[4*blockSize : 5*blockSize])
		r.write(t, 8*blockSize, pattern(blockSize, 200))
		dirty, err := r.pStore.DirtyBlocks(r.vol.Id, 0, 100)
		if err != nil {
			return err
		}
		return r.m().flushSegment(r.ctx, dirty)
	}
	if err := r.m().compact(r.ctx); err != nil {
		t.Fatal(err)
	}
	if !interleaved {
		t.Fatal("compaction never reached the point between copy and commit")
	}
	r.remote.crashAt = nil
	r.check(t)
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
	r.checkShardsMatch(t)
}

// TestReturningSledIsNotRewritten: a sled that was down, with no spare to
// rebuild its shards on, comes back with its shards intact; they are not
// reconstructed and written again.
func TestReturningSledIsNotRewritten(t *testing.T) {
	r := newStorageRig(t, 1<<20, 6, 256<<10)
	r.write(t, 0, pattern(1<<20, 5))
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	gone := sledName(2)
	r.shards.set(func(m *memShards) { m.down[gone] = true })
	r.dir.setState(gone, ballastpb.SledState_SLED_STATE_DOWN)
	r.remote.view.pollOnce(r.ctx, time.Second)
	r.m().maintain(r.ctx) // nowhere to rebuild: the shards stay pending
	if len(r.m().pending) == 0 {
		t.Fatal("a down sled's shards were not queued")
	}
	r.shards.set(func(m *memShards) { clear(m.down) })
	r.dir.setState(gone, ballastpb.SledState_SLED_STATE_UP)
	r.remote.view.pollOnce(r.ctx, time.Second)
	r.shards.mu.Lock()
	putsBefore := r.shards.puts
	r.shards.mu.Unlock()
	if err := r.m().maintain(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.shards.mu.Lock()
	puts := r.shards.puts - putsBefore
	r.shards.mu.Unlock()
	if puts != 0 || len(r.m().pending) != 0 || r.remote.stats.repaired.Load() != 0 {
		t.Fatalf("after the sled returned: %d shards written, %d pending, %d repaired; want none", puts, len(r.m().pending), r.remote.stats.repaired.Load())
	}
	r.check(t)
}

// TestFullSyncToNewSecondary replaces the secondary with an empty store
// (and then with one holding another history of the volume) and checks the
// primary mirrors everything: blocks in the log, flushed blocks' index
// entries and the segments, after which replication goes on as usual.
func TestFullSyncToNewSecondary(t *testing.T) {
	r := newStorageRig(t, 4<<20, 7, 256<<10)
	rng := rand.New(rand.NewSource(5))
	data := make([]byte, 2<<20)
	rng.Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.write(t, 1<<20+100, pattern(9000, 4)) // in the log, over flushed blocks
	r.write(t, 3<<20, pattern(8192, 5))
	r.check(t)

	for _, stale := range []bool{false, true} {
		fresh := openMemStore(t)
		if stale {
			// A node that once held the volume: another history, with a
			// log that reaches further than the primary's.
			recs := []*ballastpb.LogRecord{}
			for seq := uint64(1); seq <= 500; seq++ {
				recs = append(recs, &ballastpb.LogRecord{Seq: seq, Blocks: []*ballastpb.BlockWrite{{Block: seq % 64, Data: pattern(4096, byte(seq))}}})
			}
			if err := fresh.Append(r.vol.Id, recs, 0); err != nil {
				t.Fatal(err)
			}
		}
		r.primary.Close()
		r.sStore = fresh
		r.vol.Secondaries = []string{"c"}
		r.vol.CatchingUp = []string{"c"}
		r.start(t)
		r.write(t, 2<<20, pattern(4096, 6)) // the first write mirrors first
		r.check(t)
		if err := r.m().flush(r.ctx); err != nil {
			t.Fatal(err)
		}
		r.write(t, 5000, pattern(3000, 7))
		r.vol.CatchingUp = nil
		r.restart(t) // now reconciled record by record
		r.write(t, 7000, pattern(3000, 8))
		r.check(t)
	}
}

// TestInterruptedFullSyncStartsOver cuts a full sync short: the secondary
// must say it needs another, never pass the partial copy off as a replica.
func TestInterruptedFullSyncStartsOver(t *testing.T) {
	r := newStorageRig(t, 4<<20, 7, 256<<10)
	r.write(t, 0, pattern(1<<20, 1))
	sec := &secondaryVolume{store: openMemStore(t), id: r.vol.Id}
	if _, err := sec.hello(&ballastpb.ReplicateRequest{VolumeId: r.vol.Id, Epoch: 1, SyncBegin: true}); err != nil {
		t.Fatal(err)
	}
	sent := 0
	_, _, err := r.pStore.FullState(r.vol.Id, 64<<10, func(rec *ballastpb.StateRecord) error {
		if sent == 2 {
			return errors.New("cut")
		}
		sent++
		_, err := sec.apply(&ballastpb.ReplicateRequest{SyncState: rec})
		return err
	})
	if err == nil || sent != 2 {
		t.Fatalf("full state: sent %d chunks, err %v", sent, err)
	}
	reply, err := sec.hello(&ballastpb.ReplicateRequest{VolumeId: r.vol.Id, Epoch: 1, PrimaryLastSeq: 1})
	if err != nil || !reply.NeedsSync {
		t.Fatalf("hello after a cut sync: %+v %v, want needs_sync", reply, err)
	}
	if _, err := sec.apply(&ballastpb.ReplicateRequest{Records: []*ballastpb.LogRecord{{Seq: 1}}}); err == nil {
		t.Fatal("records applied over a partial copy")
	}
}

// A view that still holds two sleds unreachable after they came back does
// not make a segment lost when a third shard is corrupt: a read short of
// shards asks the sleds the view skipped.
func TestReadsAskSledsTheViewHoldsDown(t *testing.T) {
	r, seg := flushedWithStaleView(t, 5)
	r.corruptShard(seg, 1)
	r.check(t)
}

// flushedWithStaleView writes and flushes 2 MiB of random data (from
// seed) into one segment, whose shards 0 and 4 are on sleds the view saw
// fail: they are back now, and no poll has told the view yet.
func flushedWithStaleView(t *testing.T, seed int64) (*storageRig, *ballastpb.Segment) {
	t.Helper()
	r := newStorageRig(t, 2<<20, 8, 512<<10)
	data := make([]byte, 2<<20)
	rand.New(rand.NewSource(seed)).Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	seg := segs[0]
	for _, i := range []int{0, 4} {
		r.remote.view.reportFailure(seg.ShardSleds[i], errSledDown)
	}
	return r, seg
}

// The same when the view holds down the sled of the very shard a read
// wants: once the others cannot rebuild it, that sled is asked after all.
func TestReadsAskTheirOwnShardsSledTheViewHoldsDown(t *testing.T) {
	r, seg := flushedWithStaleView(t, 6)
	// Shard 0's data: its sled skipped, two shards corrupt, and the other
	// skipped one too few to rebuild it.
	r.corruptShard(seg, 1)
	r.corruptShard(seg, 2)
	r.check(t)
}

// corruptShard makes shard i of seg fail its checksum on its sled.
func (r *storageRig) corruptShard(seg *ballastpb.Segment, i int) {
	id := shardID{volume: r.vol.Id, segment: seg.Id, index: uint32(i)}
	r.shards.set(func(m *memShards) {
		s := m.sleds[seg.ShardSleds[i]][id]
		s.corrupt = true
		m.sleds[seg.ShardSleds[i]][id] = s
	})
}

// misplaceShard makes the sled of shard i of seg serve, under that name,
// shard i of other: a file at the wrong path, or a shard some other writer
// put there, which passes every checksum of its own.
func (r *storageRig) misplaceShard(seg, other *ballastpb.Segment, i int) {
	id := shardID{volume: r.vol.Id, segment: seg.Id, index: uint32(i)}
	from := shardID{volume: r.vol.Id, segment: other.Id, index: uint32(i)}
	r.shards.set(func(m *memShards) {
		m.sleds[seg.ShardSleds[i]][id] = m.sleds[other.ShardSleds[i]][from]
	})
}

// TestMisplacedShardIsReadAsCorrupt: a sled that answers a read with a
// shard whose header names another segment is caught: the read comes from
// the other shards and parity, and the shard is queued for repair.
func TestMisplacedShardIsReadAsCorrupt(t *testing.T) {
	r := newStorageRig(t, 1<<20, 7, 256<<10)
	rng := rand.New(rand.NewSource(8))
	data := make([]byte, 1<<20)
	rng.Read(data)
	r.write(t, 0, data)
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	if len(segs) < 2 {
		t.Fatalf("%d segments, want two or more", len(segs))
	}
	r.misplaceShard(segs[0], segs[1], 1)
	r.dropCache()
	r.check(t)
	r.m().drainRepairRequests()
	if !r.m().pending[shardRef{segment: segs[0].Id, index: 1}] {
		t.Fatal("a misplaced shard was read around but not queued for repair")
	}
	if err := r.m().repair(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.checkShardsMatch(t)
	r.check(t)
}

// TestSegmentIDsNeverRepeatAcrossEpochs: a primary that wrote a segment's
// shards but was deposed before recording it leaves them on the sleds; its
// successor, whose log holds the same records, must not give its next
// segment the same id, or the two primaries' shards could replace and
// pass for each other.
func TestSegmentIDsNeverRepeatAcrossEpochs(t *testing.T) {
	r := newStorageRig(t, 512<<10, 7, 64<<10)
	r.write(t, 0, pattern(64<<10, 1))
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.write(t, 0, pattern(64<<10, 2))
	r.remote.crashAt = func(step string) error {
		if step == "flush:shards-written" {
			return errors.New("deposed before recording the segment")
		}
		return nil
	}
	if err := r.m().flush(r.ctx); err == nil {
		t.Fatal("the flush was not stopped")
	}
	recorded := map[uint64]bool{}
	segs, _ := r.sStore.Segments(r.vol.Id)
	for _, s := range segs {
		recorded[s.Id] = true
	}
	orphans := map[uint64]bool{}
	r.shards.mu.Lock()
	for _, sh := range r.shards.sleds {
		for id := range sh {
			if !recorded[id.segment] {
				orphans[id.segment] = true
			}
		}
	}
	r.shards.mu.Unlock()
	if len(orphans) != 1 {
		t.Fatalf("unrecorded segments on the sleds: %v, want one", orphans)
	}
	// The successor at the next epoch, over the secondary's log.
	vol := proto.Clone(r.vol).(*ballastpb.Volume)
	vol.Epoch, vol.Primary, vol.Secondaries = r.vol.Epoch+1, "b", []string{"a"}
	next := newMaintainer(&primaryVolume{vol: vol, store: r.sStore}, r.remote)
	id, err := next.allocSegment()
	if err != nil {
		t.Fatal(err)
	}
	if orphans[id] || recorded[id] {
		t.Fatalf("the primary at epoch %d names its next segment %d, as the one at epoch %d did", vol.Epoch, id, r.vol.Epoch)
	}
	if ec.SegmentEpoch(id) != vol.Epoch {
		t.Fatalf("segment %d reads as made at epoch %d, want %d", id, ec.SegmentEpoch(id), vol.Epoch)
	}
	// And the deposed primary, which never learns, stops at the newer
	// epoch's segments rather than reuse them.
	if _, err := ec.NextSegmentID(r.vol.Epoch, id+1, 0); err == nil {
		t.Fatal("a primary at an older epoch was given an id below a newer epoch's")
	}
}

// depositionAuthority holds the lease until told the node was deposed.
type depositionAuthority struct {
	vol     *ballastpb.Volume
	deposed atomic.Bool
}

func (a *depositionAuthority) current(id uint64) (*ballastpb.Volume, bool)    { return a.vol, true }
func (a *depositionAuthority) reportInSync(*ballastpb.Volume, string, string) {}
func (a *depositionAuthority) holdsCopy(*ballastpb.Volume, string) bool       { return true }
func (a *depositionAuthority) incarnation(*ballastpb.Volume, string) (string, bool) {
	return "", false
}
func (a *depositionAuthority) awaitLease(ctx context.Context, vol, epoch uint64, wait time.Duration) error {
	if a.deposed.Load() {
		return fmt.Errorf("%w: deposed as primary of volume %d at epoch %d (test)", ErrStopped, vol, epoch)
	}
	return nil
}

// TestDeposedPrimaryFlushWritesNothing: once the lease is lost, flushes,
// compactions and repairs write no shard: the sleds may not have seen the
// new epoch yet, so the primary itself must stop.
func TestDeposedPrimaryFlushWritesNothing(t *testing.T) {
	r := newStorageRig(t, 512<<10, 7, 64<<10)
	auth := &depositionAuthority{vol: r.vol}
	r.auth = auth
	r.restart(t)
	for b := range 64 {
		r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(b+1)))
	}
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	// Overwrite most of every segment and flush that, so all are sparse:
	// compaction has work.
	for b := range 64 {
		if b%4 != 0 {
			r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(b+100)))
		}
	}
	if err := r.m().flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	for b := range 16 {
		r.write(t, uint64(b)*blockSize, pattern(blockSize, byte(b+200)))
	}
	segs, _ := r.pStore.Segments(r.vol.Id)
	if len(ec.PlanCompaction(segs, r.remote.cfg.CompactLiveFraction, r.remote.cfg.segmentBlocks())) == 0 {
		t.Fatal("nothing to compact")
	}
	auth.deposed.Store(true)
	r.shards.mu.Lock()
	puts := r.shards.puts
	r.shards.mu.Unlock()
	if err := r.m().flush(r.ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("flush of a deposed primary: %v, want ErrStopped", err)
	}
	r.m().markBad(shardRef{segment: segs[0].Id, index: 0})
	if err := r.m().maintain(r.ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("maintenance of a deposed primary: %v, want ErrStopped", err)
	}
	r.shards.mu.Lock()
	wrote := r.shards.puts - puts
	r.shards.mu.Unlock()
	if wrote != 0 {
		t.Fatalf("a deposed primary wrote %d shards", wrote)
	}
	if n := r.dirty(t); n != 16 {
		t.Fatalf("%d dirty blocks after a deposed flush, want the 16 written since the last", n)
	}
}

func TestCheckStamp(t *testing.T) {
	want := shardID{volume: 7, segment: 3<<ec.EpochShift | 9, index: 2}
	legacy := shardID{volume: 7, segment: 12, index: 2}
	for _, c := range []struct {
		name    string
		want    shardID
		got     shardStamp
		corrupt bool
	}{
		{"the shard asked for", want, shardStamp{id: want, epoch: 3}, false},
		{"rewritten at a later epoch", want, shardStamp{id: want, epoch: 5}, false},
		{"another segment", want, shardStamp{id: shardID{volume: 7, segment: want.segment + 1, index: 2}, epoch: 3}, true},
		{"another index", want, shardStamp{id: shardID{volume: 7, segment: want.segment, index: 1}, epoch: 3}, true},
		{"another volume", want, shardStamp{id: shardID{volume: 8, segment: want.segment, index: 2}, epoch: 3}, true},
		{"older than its segment", want, shardStamp{id: want, epoch: 2}, true},
		{"a segment made before ids carried epochs", legacy, shardStamp{id: legacy}, false},
		{"a sled that reports no stamp", want, shardStamp{unknown: true}, false},
	} {
		err := checkStamp("s1", c.want, c.got)
		if c.corrupt != errors.Is(err, errShardCorrupt) || (!c.corrupt && err != nil) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
