package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// memLink is an in-memory replicaLink to a secondaryVolume, with faults.
type memLink struct {
	sec     *secondaryVolume
	f       *faults
	mu      sync.Mutex
	started []memStep // requests taken, for Wait
}

type faults struct {
	mu sync.Mutex
	// down makes dials and sends fail before the secondary sees anything.
	down bool
	// loseReply makes the next send apply on the secondary but report an
	// error, as when the reply is lost on the wire.
	loseReply bool
	sends     int

	// diskFull is what the secondary's replies say of its disk.
	diskFull bool
	// olderSecondary makes the secondary's hello name no features, as
	// one of an older build does.
	olderSecondary bool

	// waitDelay slows each reply; maxStarted is the most batches the
	// secondary has held unanswered at once.
	waitDelay  time.Duration
	maxStarted int
}

func (f *faults) set(fn func(*faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (l *memLink) Hello(ctx context.Context, req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	l.f.mu.Lock()
	down, older := l.f.down, l.f.olderSecondary
	l.f.mu.Unlock()
	if down {
		return nil, errors.New("secondary unreachable")
	}
	reply, err := l.sec.hello(req)
	if older && reply != nil {
		reply.Features = nil
	}
	return reply, err
}

func (l *memLink) Send(ctx context.Context, req *ballastpb.ReplicateRequest) (uint64, error) {
	if err := l.Start(ctx, req); err != nil {
		return 0, err
	}
	return l.Wait(ctx)
}

// Start does what the secondary does on receipt (replication_grpc.go): a
// batch of records is begun, and finished when its reply is waited for,
// so batches stream as they do over gRPC.
func (l *memLink) Start(ctx context.Context, req *ballastpb.ReplicateRequest) error {
	l.f.mu.Lock()
	down, lose := l.f.down, l.f.loseReply
	l.f.loseReply = false
	l.f.sends++
	l.f.mu.Unlock()
	st := memStep{lose: lose}
	switch {
	case down:
		st.err = errors.New("secondary unreachable")
	case req.SyncBegin || req.SyncState != nil || req.SyncEnd:
		st.reply, st.err = l.sec.apply(req)
	default:
		st.pending, st.err = l.sec.begin(req)
	}
	l.mu.Lock()
	l.started = append(l.started, st)
	n := len(l.started)
	l.mu.Unlock()
	l.f.set(func(f *faults) { f.maxStarted = max(f.maxStarted, n) })
	return nil
}

func (l *memLink) Wait(ctx context.Context) (uint64, error) {
	l.mu.Lock()
	if len(l.started) == 0 {
		l.mu.Unlock()
		return 0, errors.New("memLink: wait with no batch started")
	}
	st := l.started[0]
	l.started = l.started[1:]
	l.mu.Unlock()
	l.f.mu.Lock()
	delay := l.f.waitDelay
	l.f.mu.Unlock()
	time.Sleep(delay)
	if st.pending != nil {
		st.reply, st.err = l.sec.finish(st.pending)
	}
	if st.err != nil {
		return 0, st.err
	}
	if st.lose {
		return 0, errors.New("reply lost")
	}
	return st.reply.LastSeq, nil
}

// memStep is a request the secondary took and has not answered.
type memStep struct {
	pending *blockstore.PendingAppend
	reply   *ballastpb.ReplicateReply
	err     error
	lose    bool
}

func (l *memLink) JournalPressure() bool { return false }

func (l *memLink) JournalFull() bool { return false }

func (l *memLink) DiskFull() bool {
	l.f.mu.Lock()
	defer l.f.mu.Unlock()
	return l.f.diskFull
}

// Close ends the session as the secondary does: what it began is
// finished (replication_grpc.go, serveBatches).
func (l *memLink) Close() {
	l.mu.Lock()
	left := l.started
	l.started = nil
	l.mu.Unlock()
	for _, st := range left {
		if st.pending != nil {
			l.sec.finish(st.pending)
		}
	}
}

type pair struct {
	remote      *remoteIO // nil: no sleds
	auth        authority // nil: the lease always held
	replTimeout time.Duration
	primary     *primaryVolume
	pStore      *blockstore.Store
	sStore      *blockstore.Store
	faults      *faults
	vol         *ballastpb.Volume
	model       []byte
	modelLock   sync.Mutex
	// cache is the primary's read cache, following pStore: every test
	// of a pair reads through it.
	cache *readCache
}

func openMemStore(t testing.TB) *blockstore.Store { return openMemStoreJournal(t, 0) }

// openMemStoreJournal opens an in-memory store with a journal of
// journalBytes (0: the default for memory, 8 MiB).
func openMemStoreJournal(t testing.TB, journalBytes int64) *blockstore.Store {
	t.Helper()
	s, err := blockstore.Open("", blockstore.Options{FS: vfs.NewMem(), CacheBytes: 8 << 20, JournalBytes: journalBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newPair(t *testing.T, size uint64) *pair {
	t.Helper()
	p := &pair{
		pStore:      openMemStore(t),
		sStore:      openMemStore(t),
		faults:      &faults{},
		vol:         &ballastpb.Volume{Name: "v", Id: 7, SizeBytes: size, Epoch: 1, Primary: "a", Secondaries: []string{"b"}},
		model:       make([]byte, size),
		replTimeout: time.Second,
	}
	p.start(t)
	return p
}

func (p *pair) start(t testing.TB) {
	dial := func(ctx context.Context, vol *ballastpb.Volume, secondary string) (replicaLink, error) {
		p.faults.mu.Lock()
		defer p.faults.mu.Unlock()
		if p.faults.down {
			return nil, errors.New("secondary unreachable")
		}
		return &memLink{sec: &secondaryVolume{store: p.sStore, id: p.vol.Id}, f: p.faults}, nil
	}
	p.primary = newPrimaryVolume(p.vol, p.pStore, dial, p.replTimeout, slog.New(slog.DiscardHandler), p.remote, p.auth)
	if p.cache == nil {
		p.cache = newReadCache(4 << 20)
		p.pStore.SetBlockHook(p.cache.follow)
	}
	p.primary.cache = p.cache
	p.cache.start(p.vol.Id)
	t.Cleanup(p.primary.Close)
}

// readAll reads a replica's whole volume from its own store, fetching
// flushed blocks from the sleds (through the primary's remote, which
// reaches the same sleds).
func (p *pair) readAll(t *testing.T, s *blockstore.Store) []byte {
	t.Helper()
	out := make([]byte, p.vol.SizeBytes)
	lr, err := s.ReadLocal(p.vol.Id, 0, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.Remote) > 0 {
		if p.remote == nil {
			t.Fatalf("%d blocks indexed to segments without sleds", len(lr.Remote))
		}
		if err := p.remote.fetch(context.Background(), p.vol, out, lr, func(shardRef) {}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkReplicas asserts both stores and the model hold the same bytes.
func (p *pair) checkReplicas(t *testing.T) {
	t.Helper()
	got := make([]byte, p.vol.SizeBytes)
	if err := p.primary.read(context.Background(), 0, got); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, p.model); i >= 0 {
		t.Fatalf("primary differs from model at byte %d", i)
	}
	if i := firstDiff(p.readAll(t, p.pStore), p.readAll(t, p.sStore)); i >= 0 {
		t.Fatalf("secondary differs from primary at byte %d", i)
	}
	pl, _ := p.pStore.LastSeq(p.vol.Id)
	sl, _ := p.sStore.LastSeq(p.vol.Id)
	if pl != sl {
		t.Fatalf("primary at seq %d, secondary at %d", pl, sl)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// dropCache empties the primary's read cache, so that the next reads go
// to the store and the sleds (tests of the sled read path).
func (p *pair) dropCache() { p.cache.c.DropVolume(p.vol.Id) }

func (p *pair) write(t testing.TB, off uint64, data []byte) {
	t.Helper()
	if err := p.primary.write(context.Background(), off, uint64(len(data)), data, false, false, writeID{}); err != nil {
		t.Fatalf("write %d+%d: %v", off, len(data), err)
	}
	copy(p.model[off:], data)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestWritesOfEveryAlignmentReplicate(t *testing.T) {
	p := newPair(t, 1<<20)
	cases := []struct{ off, n uint64 }{
		{0, 4096}, {4096, 8192}, {1000, 5000}, {4095, 2}, {65536 - 512, 1024}, {1<<20 - 4096, 4096}, {123, 1},
	}
	for i, c := range cases {
		p.write(t, c.off, pattern(int(c.n), byte(i+1)))
	}
	p.checkReplicas(t)
}

func TestTrimAndZeroes(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(1<<20, 9))
	ctx := context.Background()
	// Trim whole and partial blocks: partial parts become zeroes too.
	if err := p.primary.write(ctx, 2048, 3*4096, nil, true, true, writeID{}); err != nil {
		t.Fatal(err)
	}
	clear(p.model[2048 : 2048+3*4096])
	// Zeroes that must stay allocated.
	if err := p.primary.write(ctx, 1<<19, 8192, nil, true, false, writeID{}); err != nil {
		t.Fatal(err)
	}
	clear(p.model[1<<19 : 1<<19+8192])
	p.checkReplicas(t)
}

func TestConcurrentWritersConverge(t *testing.T) {
	const size = 4 << 20
	p := newPair(t, size)
	var wg sync.WaitGroup
	// Writers touch disjoint regions so the model is exact, but their
	// unaligned edges share blocks, exercising read-modify-write.
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			region := uint64(size / 16)
			for i := 0; i < 40; i++ {
				off := uint64(w)*region + uint64(rng.Intn(int(region-9000)))
				n := 1 + rng.Intn(9000)
				if off+uint64(n) > uint64(w+1)*region {
					n = int(uint64(w+1)*region - off)
				}
				data := pattern(n, byte(rng.Intn(256)))
				if err := p.primary.write(context.Background(), off, uint64(n), data, false, false, writeID{}); err != nil {
					t.Error(err)
					return
				}
				p.modelLock.Lock()
				copy(p.model[off:], data)
				p.modelLock.Unlock()
			}
		}()
	}
	wg.Wait()
	p.checkReplicas(t)
	p.faults.mu.Lock()
	sends := p.faults.sends
	p.faults.mu.Unlock()
	if sends >= 16*40 {
		t.Logf("no group commit happened: %d sends for %d writes", sends, 16*40)
	}
}

// TestBatchesStream: with writes queued, the primary sends the next batch
// before the secondary answered the last one, and a reply lost in the
// middle of such a stream leaves the replicas the same.
func TestBatchesStream(t *testing.T) {
	p := newPair(t, 1<<20)
	p.faults.set(func(f *faults) { f.waitDelay = 5 * time.Millisecond })
	// Each writer writes again as soon as its write returns, so writes
	// keep arriving while batches are in flight.
	writeAll := func(round int) {
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 8 {
					p.write(t, uint64(i)*blockSize, pattern(blockSize, byte(round*32+i+k)))
				}
			}()
		}
		wg.Wait()
	}
	writeAll(0)
	var most int
	p.faults.set(func(f *faults) { most = f.maxStarted })
	if most < 2 {
		t.Fatalf("at most %d batch in flight to the secondary with 32 writers", most)
	}
	p.faults.set(func(f *faults) { f.loseReply = true })
	writeAll(1)
	p.checkReplicas(t)
}

func TestDeadSecondaryFailsWritesThenCatchesUp(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(8192, 1))
	p.faults.set(func(f *faults) { f.down = true })
	start := time.Now()
	err := p.primary.write(context.Background(), 8192, 4096, pattern(4096, 2), false, false, writeID{})
	if !errors.Is(err, ErrReplication) {
		t.Fatalf("write with the secondary down: got %v, want ErrReplication", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("write took %v to fail", time.Since(start))
	}
	// The failed write is in the primary's log but was never acknowledged;
	// whatever it left, both replicas must agree once the secondary is back.
	copy(p.model[8192:], pattern(4096, 2))
	p.faults.set(func(f *faults) { f.down = false })
	p.write(t, 16384, pattern(4096, 3))
	p.checkReplicas(t)
}

// A lost reply ends the session; the primary opens another, whose hello
// finds the batch on the secondary already, and then acknowledges it.
func TestLostReplyIsResentIdempotently(t *testing.T) {
	p := newPair(t, 1<<20)
	p.faults.set(func(f *faults) { f.loseReply = true })
	p.write(t, 0, pattern(4096, 5))
	p.write(t, 4096, pattern(4096, 6))
	p.checkReplicas(t)
}

func TestPrimaryAdoptsRecordsTheSecondaryHolds(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(4096, 1))
	// The primary crashed after the secondary made a batch durable but
	// before its own append: the secondary is one record ahead.
	last, _ := p.sStore.LastSeq(p.vol.Id)
	ahead := &ballastpb.LogRecord{Seq: last + 1, Blocks: []*ballastpb.BlockWrite{{Block: 3, Data: pattern(4096, 42)}}}
	if err := p.sStore.Append(p.vol.Id, []*ballastpb.LogRecord{ahead}, 0); err != nil {
		t.Fatal(err)
	}
	copy(p.model[3*4096:], pattern(4096, 42))
	p.primary.Close()
	p.start(t)
	p.write(t, 8192, pattern(4096, 2))
	p.checkReplicas(t)
}

// TestRandomOpsUnderFaultsKeepReplicasIdentical runs random writes, trims
// and zeroes while the secondary fails in every way the link can fail:
// unreachable before a batch, gone mid-session (the primary ends up ahead),
// a lost reply (both applied, not acknowledged), and a primary that lost
// its own append (the secondary ends up ahead). Whatever failed, the
// replicas must converge to the same bytes, and every byte whose last
// writer was acknowledged must hold what it wrote.
func TestRandomOpsUnderFaultsKeepReplicasIdentical(t *testing.T) {
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			const size = 256 << 10
			p := newPair(t, size)
			// Faults make writes wait out the timeout; keep that short.
			p.replTimeout = 100 * time.Millisecond
			p.primary.Close()
			p.start(t)
			rng := rand.New(rand.NewSource(seed))
			known := make([]bool, size) // model byte is certain
			for i := range known {
				known[i] = true
			}
			ctx := context.Background()
			for i := 0; i < 150; i++ {
				fault := rng.Intn(10)
				switch fault {
				case 0:
					p.faults.set(func(f *faults) { f.down = true })
				case 1:
					p.faults.set(func(f *faults) { f.loseReply = true })
				case 2:
					// The secondary holds a record the primary never wrote,
					// as when the primary crashed after sending a batch.
					// Only possible between sessions: restart the primary.
					p.primary.Close()
					last, _ := p.sStore.LastSeq(p.vol.Id)
					pl, _ := p.pStore.LastSeq(p.vol.Id)
					if last == pl {
						blk := uint64(rng.Intn(size / blockSize))
						data := pattern(blockSize, byte(rng.Intn(256)))
						if err := p.sStore.Append(p.vol.Id, []*ballastpb.LogRecord{{Seq: last + 1, Blocks: []*ballastpb.BlockWrite{{Block: blk, Data: data}}}}, 0); err != nil {
							t.Fatal(err)
						}
						copy(p.model[blk*blockSize:], data)
						for j := range blockSize {
							known[blk*blockSize+uint64(j)] = true
						}
					}
					p.start(t)
				}
				// Several operations at once, so that a batch (and hence
				// what one replica may hold beyond the other) spans records
				// that overlap, e.g. a trim and a later write inside it.
				type op struct {
					off, n uint64
					data   []byte
					zero   bool
					hole   bool
					err    error
				}
				ops := make([]*op, 1+rng.Intn(4))
				touched := map[uint64]int{}
				for k := range ops {
					o := &op{off: uint64(rng.Intn(size - 1))}
					o.n = 1 + uint64(rng.Intn(int(min(size-o.off, 40000))))
					switch rng.Intn(4) {
					case 0, 1:
						o.data = pattern(int(o.n), byte(rng.Intn(256)))
					case 2:
						o.zero, o.hole = true, true
					case 3:
						o.zero = true
					}
					ops[k] = o
					for j := o.off; j < o.off+o.n; j++ {
						touched[j]++
					}
				}
				var wg sync.WaitGroup
				for _, o := range ops {
					wg.Add(1)
					go func() {
						defer wg.Done()
						o.err = p.primary.write(ctx, o.off, o.n, o.data, o.zero, o.hole, writeID{})
					}()
				}
				wg.Wait()
				for _, o := range ops {
					for j := o.off; j < o.off+o.n; j++ {
						// Overlapping operations in flight together may land
						// in either order.
						known[j] = o.err == nil && touched[j] == 1
						if known[j] {
							if o.data != nil {
								p.model[j] = o.data[j-o.off]
							} else {
								p.model[j] = 0
							}
						}
					}
				}
				p.faults.set(func(f *faults) { f.down = false; f.loseReply = false })
			}
			// One clean write makes the primary reconcile with the secondary.
			p.write(t, 0, pattern(1, 9))
			known[0] = true
			if i := firstDiff(p.readAll(t, p.pStore), p.readAll(t, p.sStore)); i >= 0 {
				t.Fatalf("replicas differ at byte %d", i)
			}
			got := make([]byte, size)
			if err := p.primary.read(context.Background(), 0, got); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if known[i] && got[i] != p.model[i] {
					t.Fatalf("byte %d: got %#x, acknowledged %#x", i, got[i], p.model[i])
				}
			}
		})
	}
}
