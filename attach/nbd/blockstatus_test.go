package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// BLOCK_STATUS for base:allocation from a Backend that implements
// blockdev.Allocator: the encoding (appendAllocation), the server with
// our raw client, and the real clients (nbdinfo --map, qemu-img map,
// nbdcopy, qemu-img convert) against a sparse in-memory disk.

// ---- A sparse in-memory backend ----

// allocHook, if set on a sparse disk, answers Allocation in its place.
type allocHook func(off, length uint64) ([]blockdev.Extent, error)

// allocMap is a sparse memDisk's allocation: one flag per unit bytes. A
// unit that is not allocated holds zeroes.
type allocMap struct {
	unit uint64
	// maxExtents bounds the extents one Allocation returns (0: no
	// bound), as a backend that describes less than asked would.
	maxExtents atomic.Int32

	mu        sync.Mutex
	allocated []bool

	hook      atomic.Pointer[allocHook]
	calls     atomic.Int32 // Allocation calls
	bytesRead atomic.Int64 // bytes ReadAt returned

	readsMu sync.Mutex
	reads   []extent // the ranges ReadAt returned
}

// newSparseDisk returns an empty (all hole) sparse disk of size bytes
// whose allocation is tracked per unit bytes.
func newSparseDisk(size int, unit uint64) *memDisk {
	d := newMemDisk(size)
	d.alloc = &allocMap{unit: unit, allocated: make([]bool, (uint64(size)+unit-1)/unit)}
	return d
}

func (d *memDisk) setAllocHook(h allocHook) { d.alloc.hook.Store(&h) }

// fill writes p at off and allocates the units it touches.
func (d *memDisk) fill(off int, p []byte) {
	d.alloc.mark(uint64(off), uint64(len(p)), true)
	d.mu.Lock()
	copy(d.data[off:], p)
	d.mu.Unlock()
}

// mark allocates the units that [off, off+n) touches or, if !allocated,
// makes holes of the units it covers whole.
func (m *allocMap) mark(off, n uint64, allocated bool) {
	first, end := off/m.unit, (off+n+m.unit-1)/m.unit
	if !allocated {
		first, end = (off+m.unit-1)/m.unit, (off+n)/m.unit
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := first; i < end && i < uint64(len(m.allocated)); i++ {
		m.allocated[i] = allocated
	}
}

// extents describes [off, off+length) from off on, in at most maxExtents
// extents.
func (m *allocMap) extents(off, length uint64) []blockdev.Extent {
	m.mu.Lock()
	defer m.mu.Unlock()
	var exts []blockdev.Extent
	end := off + length
	limit := int(m.maxExtents.Load())
	for pos := off; pos < end && (limit == 0 || len(exts) < limit); {
		a := m.allocated[pos/m.unit]
		next := (pos/m.unit + 1) * m.unit
		for next < end && m.allocated[next/m.unit] == a {
			next += m.unit
		}
		next = min(next, end)
		exts = append(exts, blockdev.Extent{Length: next - pos, Hole: !a})
		pos = next
	}
	return exts
}

// sparseBackend is a memBackend of a sparse disk: it keeps the
// allocation map up to date and implements blockdev.Allocator.
type sparseBackend struct{ memBackend }

var _ blockdev.Allocator = (*sparseBackend)(nil)

func (b *sparseBackend) inRange(off, n uint64) bool {
	return n <= b.d.size() && off <= b.d.size()-n
}

func (b *sparseBackend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	err := b.memBackend.ReadAt(ctx, p, off)
	if err == nil {
		m := b.d.alloc
		m.bytesRead.Add(int64(len(p)))
		m.readsMu.Lock()
		m.reads = append(m.reads, extent{off, uint64(len(p)), false})
		m.readsMu.Unlock()
	}
	return err
}

func (b *sparseBackend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if b.inRange(off, uint64(len(p))) {
		b.d.alloc.mark(off, uint64(len(p)), true) // before the data: never a hole that is not zeroes
	}
	return b.memBackend.WriteAt(ctx, p, off, fua)
}

func (b *sparseBackend) Trim(ctx context.Context, off, length uint64) error {
	err := b.memBackend.Trim(ctx, off, length)
	if err == nil {
		b.d.alloc.mark(off, length, false) // after the zeroes
	}
	return err
}

func (b *sparseBackend) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	if noHole && b.inRange(off, length) {
		b.d.alloc.mark(off, length, true)
	}
	err := b.memBackend.WriteZeroes(ctx, off, length, noHole)
	if err == nil && !noHole {
		b.d.alloc.mark(off, length, false)
	}
	return err
}

func (b *sparseBackend) Allocation(ctx context.Context, off, length uint64) ([]blockdev.Extent, error) {
	if err := b.enter(ctx, "alloc", off, length); err != nil {
		return nil, err
	}
	defer b.leave()
	m := b.d.alloc
	m.calls.Add(1)
	if h := m.hook.Load(); h != nil && *h != nil {
		return (*h)(off, length)
	}
	return m.extents(off, length), nil
}

// ---- The encoding ----

// desc is a decoded base:allocation descriptor.
type desc struct{ length, flags uint32 }

func (d desc) String() string {
	if d.flags == stateHole|stateZero {
		return fmt.Sprintf("hole:%d", d.length)
	}
	return fmt.Sprintf("data(%d):%d", d.flags, d.length)
}

func decodeDescs(t testing.TB, b []byte) []desc {
	t.Helper()
	if len(b)%descriptorLen != 0 {
		t.Fatalf("descriptors of %d bytes", len(b))
	}
	var ds []desc
	for ; len(b) > 0; b = b[descriptorLen:] {
		ds = append(ds, desc{binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])})
	}
	return ds
}

func dataExt(n uint64) blockdev.Extent { return blockdev.Extent{Length: n} }
func holeExt(n uint64) blockdev.Extent { return blockdev.Extent{Length: n, Hole: true} }
func dataDesc(n uint32) desc           { return desc{n, 0} }
func holeDesc(n uint32) desc           { return desc{n, stateHole | stateZero} }

func TestAppendAllocation(t *testing.T) {
	const K = 1 << 10
	const top = math.MaxUint64 - 8191 // 8 KiB below 2^64, block-aligned
	type ext = blockdev.Extent
	for _, tc := range []struct {
		name   string
		offset uint64
		length uint32
		reqOne bool
		exts   []ext
		want   []desc
		bad    string // the error says this, and nothing is appended
	}{
		{name: "all data", length: 64 * K, exts: []ext{dataExt(64 * K)}, want: []desc{dataDesc(64 * K)}},
		{name: "all hole", offset: 4 * K, length: 64 * K, exts: []ext{holeExt(64 * K)}, want: []desc{holeDesc(64 * K)}},
		{name: "alternating", length: 16 * K, exts: []ext{dataExt(4 * K), holeExt(4 * K), dataExt(4 * K), holeExt(4 * K)},
			want: []desc{dataDesc(4 * K), holeDesc(4 * K), dataDesc(4 * K), holeDesc(4 * K)}},
		{name: "adjacent extents of one kind merge", length: 16 * K, exts: []ext{dataExt(K), dataExt(3 * K), holeExt(4 * K), holeExt(8 * K)},
			want: []desc{dataDesc(4 * K), holeDesc(12 * K)}},
		{name: "less than asked", length: 1 << 20, exts: []ext{dataExt(4 * K), holeExt(8 * K)},
			want: []desc{dataDesc(4 * K), holeDesc(8 * K)}},
		{name: "REQ_ONE: the first run only", length: 16 * K, reqOne: true, exts: []ext{dataExt(K), dataExt(3 * K), holeExt(12 * K)},
			want: []desc{dataDesc(4 * K)}},
		{name: "REQ_ONE: a hole", offset: 8 * K, length: 4 * K, reqOne: true, exts: []ext{holeExt(4 * K)}, want: []desc{holeDesc(4 * K)}},
		{name: "REQ_ONE: merged hole", length: 64 * K, reqOne: true, exts: []ext{holeExt(512), holeExt(512), holeExt(63 * K)},
			want: []desc{holeDesc(64 * K)}},
		// Holes only over whole 512-byte blocks: [100, 5100) → [512, 4608).
		{name: "hole sharing blocks with data", length: 8 * K, exts: []ext{dataExt(100), holeExt(5000), dataExt(3092)},
			want: []desc{dataDesc(512), holeDesc(4096), dataDesc(3584)}},
		{name: "hole within one block", length: 4 * K, exts: []ext{dataExt(100), holeExt(300), dataExt(3696)},
			want: []desc{dataDesc(4 * K)}},
		{name: "hole short of a block boundary", length: 4 * K, exts: []ext{holeExt(1000), dataExt(3096)},
			want: []desc{holeDesc(512), dataDesc(3584)}},
		// A description ending inside a block is reported to the block's end.
		{name: "described end inside a block", length: 16 * K, exts: []ext{dataExt(4 * K), holeExt(4*K + 100)},
			want: []desc{dataDesc(4 * K), holeDesc(4 * K), dataDesc(512)}},
		{name: "a described hole shorter than a block", length: 16 * K, exts: []ext{holeExt(100)},
			want: []desc{dataDesc(512)}},
		{name: "described end inside the request's last block", length: 1000, exts: []ext{dataExt(600)},
			want: []desc{dataDesc(1000)}},
		// An unaligned request: its own ends need not be aligned.
		{name: "unaligned request", offset: 100, length: 8000, exts: []ext{holeExt(412), dataExt(4096), holeExt(3492)},
			want: []desc{holeDesc(412), dataDesc(4096), holeDesc(3492)}},
		{name: "unaligned request in one block", offset: 100, length: 200, exts: []ext{holeExt(200)},
			want: []desc{holeDesc(200)}},
		{name: "unaligned request, hole in the middle", offset: 100, length: 1000, exts: []ext{dataExt(100), holeExt(900)},
			want: []desc{dataDesc(412), holeDesc(588)}},
		// Lengths at the limits of 32 bits: descriptors never pass the
		// request, so they always fit.
		{name: "largest request, one hole", length: math.MaxUint32, exts: []ext{holeExt(1 << 31), holeExt(1<<31 - 1)},
			want: []desc{holeDesc(math.MaxUint32)}},
		{name: "largest request, data tail", length: math.MaxUint32, exts: []ext{holeExt(1 << 31), dataExt(1<<31 - 1)},
			want: []desc{holeDesc(1 << 31), dataDesc(1<<31 - 1)}},
		{name: "an extent longer than 32 bits", length: math.MaxUint32, exts: []ext{holeExt(5 << 30)},
			bad: "more than the 4294967295 bytes asked for"},
		// At the top of the 64-bit space: no overflow.
		{name: "top of the address space", offset: top, length: 8191, exts: []ext{holeExt(4096), holeExt(100)},
			want: []desc{holeDesc(4096), dataDesc(512)}},
		{name: "top of the address space, hole to the end", offset: top, length: 8191, exts: []ext{dataExt(100), holeExt(8091)},
			want: []desc{dataDesc(512), holeDesc(7679)}},
		// Malformed results.
		{name: "range overflows", offset: math.MaxUint64 - 10, length: 100, exts: []ext{dataExt(100)}, bad: "overflows"},
		{name: "empty request", length: 0, exts: []ext{dataExt(1)}, bad: "empty request"},
		{name: "no extent", length: 4 * K, bad: "no extent"},
		{name: "empty slice", length: 4 * K, exts: []ext{}, bad: "no extent"},
		{name: "empty extent", length: 4 * K, exts: []ext{dataExt(K), holeExt(0)}, bad: "extent 1 of 2 is empty"},
		{name: "more than asked", length: 4 * K, exts: []ext{dataExt(4 * K), holeExt(1)}, bad: "more than the 4096 bytes"},
		{name: "sum wraps", length: 4 * K, exts: []ext{dataExt(1), dataExt(math.MaxUint64)}, bad: "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("prefix")
			got, err := appendAllocation(bytes.Clone(prefix), tc.offset, tc.length, tc.reqOne, tc.exts)
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("the prefix was overwritten: %x", got)
			}
			if tc.bad != "" {
				if err == nil || !errors.Is(err, errBadAllocation) || !strings.Contains(err.Error(), tc.bad) || errnoOf(err) != EIO {
					t.Fatalf("error %v (errno %d), want errBadAllocation saying %q, sent as EIO", err, errnoOf(err), tc.bad)
				}
				if len(got) != len(prefix) {
					t.Fatalf("%d bytes appended with an error", len(got)-len(prefix))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ds := decodeDescs(t, got[len(prefix):]); fmt.Sprint(ds) != fmt.Sprint(tc.want) {
				t.Fatalf("descriptors %v, want %v", ds, tc.want)
			}
		})
	}
}

func TestAppendAllocationCap(t *testing.T) {
	const n = 2000
	alternating := make([]blockdev.Extent, n)
	for i := range alternating {
		alternating[i] = blockdev.Extent{Length: 4096, Hole: i%2 == 1}
	}
	// More runs than one reply holds: the first 512, then the client asks again.
	got, err := appendAllocation(nil, 0, n*4096, false, alternating)
	if err != nil {
		t.Fatal(err)
	}
	ds := decodeDescs(t, got)
	if len(ds) != maxBlockStatusDescriptors {
		t.Fatalf("%d descriptors, want %d", len(ds), maxBlockStatusDescriptors)
	}
	for i, d := range ds {
		if want := (desc{4096, uint32(i%2) * (stateHole | stateZero)}); d != want {
			t.Fatalf("descriptor %d is %v, want %v", i, d, want)
		}
	}
	// REQ_ONE: one.
	got, err = appendAllocation(nil, 0, n*4096, true, alternating)
	if ds := decodeDescs(t, got); err != nil || len(ds) != 1 || ds[0] != dataDesc(4096) {
		t.Fatalf("REQ_ONE: %v %v", ds, err)
	}
	// The cap counts descriptors, not extents: many extents of one kind
	// are one descriptor, and the whole map fits.
	same := make([]blockdev.Extent, n)
	for i := range same {
		same[i] = blockdev.Extent{Length: 512, Hole: i >= n/2}
	}
	got, err = appendAllocation(nil, 0, n*512, false, same)
	if ds := decodeDescs(t, got); err != nil || fmt.Sprint(ds) != fmt.Sprint([]desc{dataDesc(n / 2 * 512), holeDesc(n / 2 * 512)}) {
		t.Fatalf("merged: %v %v", ds, err)
	}
	// The descriptors of a full reply fill exactly one pooled buffer.
	if maxBlockStatusDescriptors*descriptorLen != 4096 {
		t.Fatalf("a full reply's descriptors take %d bytes, not the 4 KiB buffer", maxBlockStatusDescriptors*descriptorLen)
	}
}

// The encoding appends into the caller's buffer without allocating.
func TestAppendAllocationAllocs(t *testing.T) {
	exts := make([]blockdev.Extent, 600)
	for i := range exts {
		exts[i] = blockdev.Extent{Length: 4096, Hole: i%2 == 1}
	}
	buf := make([]byte, 0, maxBlockStatusDescriptors*descriptorLen)
	if n := testing.AllocsPerRun(100, func() {
		_, _ = appendAllocation(buf, 0, 600*4096, false, exts)
	}); n != 0 {
		t.Fatalf("%v allocations per encoding, want 0", n)
	}
}

func TestBlockStatusHeaderEncoding(t *testing.T) {
	got := appendBlockStatusHeader(nil, 9, 1, 16)
	want := []byte{0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 20, 0, 0, 0, 1}
	if !bytes.Equal(got, want) {
		t.Errorf("BLOCK_STATUS header %x, want %x", got, want)
	}
}

// ---- The server, with the raw client ----

const sparseDiskSize = 64 << 20

// sparseLayout is the data of the sparse test disk: everything else is
// a hole. It has a run of many small extents (to pass the cap of one
// reply) and an allocated run of zeroes (data, not a hole).
type dataRange struct{ off, n int }

var sparseLayout = func() []dataRange {
	r := []dataRange{
		{0, 64 << 10},
		{1<<20 + 4<<10, 8 << 10},
		{10 << 20, 3 << 20},
		{20 << 20, 64 << 10}, // allocated zeroes
	}
	for off := 30 << 20; off < 34<<20; off += 8 << 10 {
		r = append(r, dataRange{off, 4 << 10}) // 512 data runs and 512 holes
	}
	return append(r, dataRange{sparseDiskSize - 512<<10, 512 << 10})
}()

// startSparseServer starts the test server with a sparse export "sparse"
// holding sparseLayout (allocation tracked per 4 KiB).
func startSparseServer(t testing.TB) (*testServer, *memDisk) {
	t.Helper()
	d := newSparseDisk(sparseDiskSize, 4096)
	for i, r := range sparseLayout {
		if r.off == 20<<20 {
			d.fill(r.off, make([]byte, r.n))
			continue
		}
		d.fill(r.off, pattern(byte(i+1)|1, r.n)) // never a zero byte at the start
	}
	ts := startServer(t, func(s *Server) { s.Exports.(*memExports).disks["sparse"] = d })
	return ts, d
}

// extent is what a map says of a range.
type extent struct {
	off, n uint64
	hole   bool
}

// wantMap is sparseLayout as a map of the whole disk, runs merged.
func wantMap() []extent {
	var m []extent
	add := func(off, n uint64, hole bool) {
		if k := len(m); k > 0 && m[k-1].hole == hole && m[k-1].off+m[k-1].n == off {
			m[k-1].n += n
			return
		}
		m = append(m, extent{off, n, hole})
	}
	var pos uint64
	for _, r := range sparseLayout {
		if uint64(r.off) > pos {
			add(pos, uint64(r.off)-pos, true)
		}
		add(uint64(r.off), uint64(r.n), false)
		pos = uint64(r.off + r.n)
	}
	if pos < sparseDiskSize {
		add(pos, sparseDiskSize-pos, true)
	}
	return m
}

// mergeMap merges adjacent extents of one kind, as clients may report
// them split.
func mergeMap(in []extent) []extent {
	var m []extent
	for _, e := range in {
		if k := len(m); k > 0 && m[k-1].hole == e.hole && m[k-1].off+m[k-1].n == e.off {
			m[k-1].n += e.n
			continue
		}
		m = append(m, e)
	}
	return m
}

func diffMaps(got, want []extent) string {
	var b strings.Builder
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w string
		if i < len(got) {
			g = fmt.Sprint(got[i])
		}
		if i < len(want) {
			w = fmt.Sprint(want[i])
		}
		if g != w {
			fmt.Fprintf(&b, "  #%d: got %s, want %s\n", i, g, w)
		}
	}
	return b.String()
}

// blockStatus sends one BLOCK_STATUS and returns its descriptors, or
// fails unless the reply is one valid BLOCK_STATUS chunk.
func (c *client) blockStatus(flags uint16, off uint64, length uint32) []desc {
	c.t.Helper()
	c.send(flags, cmdBlockStatus, 11, off, length, nil)
	r := c.readReply()
	if r.simple || r.typ != replyTypeBlockStatus || r.flags != replyFlagDone || r.cookie != 11 {
		if !r.simple && r.typ&0x8000 != 0 {
			errno, msg := chunkError(c.t, r)
			c.t.Fatalf("BLOCK_STATUS [%d,+%d) failed: errno %d: %s", off, length, errno, msg)
		}
		c.t.Fatalf("BLOCK_STATUS reply %+v", r)
	}
	if len(r.data) < 4+descriptorLen || binary.BigEndian.Uint32(r.data) != baseAllocationID {
		c.t.Fatalf("BLOCK_STATUS payload %x", r.data)
	}
	return decodeDescs(c.t, r.data[4:])
}

// blockStatusError sends one BLOCK_STATUS and returns its error chunk.
func (c *client) blockStatusError(flags uint16, off uint64, length uint32) (uint32, string) {
	c.t.Helper()
	c.send(flags, cmdBlockStatus, 12, off, length, nil)
	r := c.readReply()
	if r.simple || r.typ != replyTypeError || r.flags != replyFlagDone || r.cookie != 12 {
		c.t.Fatalf("BLOCK_STATUS reply %+v, want an error chunk", r)
	}
	return chunkError(c.t, r)
}

func TestBlockStatusAllocator(t *testing.T) {
	ts, d := startSparseServer(t)
	c := connect(t, ts.addr, "sparse", true, true)
	const K, M = 1 << 10, 1 << 20

	check := func(name string, got []desc, want ...desc) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: descriptors %v, want %v", name, got, want)
		}
	}
	check("first 2 MiB", c.blockStatus(0, 0, 2*M),
		dataDesc(64*K), holeDesc(M+4*K-64*K), dataDesc(8*K), holeDesc(M-12*K))
	check("REQ_ONE in data", c.blockStatus(cmdFlagReqOne, 32*K, M), dataDesc(32*K))
	check("REQ_ONE in a hole", c.blockStatus(cmdFlagReqOne, 64*K, 4*K), holeDesc(4*K))
	check("REQ_ONE over a hole and data", c.blockStatus(cmdFlagReqOne, 64*K, 2*M), holeDesc(M+4*K-64*K))
	check("to the end", c.blockStatus(0, sparseDiskSize-M, M), holeDesc(512*K), dataDesc(512*K))
	check("unaligned", c.blockStatus(0, 64*K-100, 300), dataDesc(100), holeDesc(200))

	// The run of 1024 small extents: one reply holds 512 descriptors.
	ds := c.blockStatus(0, 30*M, 4*M)
	if len(ds) != maxBlockStatusDescriptors {
		t.Fatalf("%d descriptors over 1024 extents, want %d", len(ds), maxBlockStatusDescriptors)
	}
	for i, x := range ds {
		if want := (desc{4 * K, uint32(i%2) * 3}); x != want {
			t.Fatalf("descriptor %d: %v, want %v", i, x, want)
		}
	}

	// Writes, trims and zeroes change the map.
	c.pwrite(0, 40*M+4*K, pattern(9, 4*K))
	check("after a write", c.blockStatus(0, 40*M, 16*K), holeDesc(4*K), dataDesc(4*K), holeDesc(8*K))
	c.send(0, cmdTrim, 13, 40*M, 16*K, nil)
	c.simple(13, 0)
	check("after a trim", c.blockStatus(0, 40*M, 16*K), holeDesc(16*K))
	c.send(cmdFlagNoHole, cmdWriteZeroes, 14, 40*M, 8*K, nil)
	c.simple(14, 0)
	check("after zeroes with NO_HOLE", c.blockStatus(0, 40*M, 16*K), dataDesc(8*K), holeDesc(8*K))

	// A backend that describes less than asked: the reply ends early.
	d.alloc.maxExtents.Store(3)
	check("a backend describing less", c.blockStatus(0, 0, 2*M), dataDesc(64*K), holeDesc(M+4*K-64*K), dataDesc(8*K))
	d.alloc.maxExtents.Store(0)

	// Backend output the server must not pass on: EIO with a message,
	// and the connection stays usable.
	for _, tc := range []struct {
		name  string
		exts  []blockdev.Extent
		err   error
		errno uint32
		says  string
	}{
		{name: "nil", errno: 5, says: "no extent"},
		{name: "empty extent", exts: []blockdev.Extent{dataExt(4 * K), holeExt(0)}, errno: 5, says: "extent 1 of 2 is empty"},
		{name: "too long", exts: []blockdev.Extent{holeExt(64*K + 1)}, errno: 5, says: "more than the 65536 bytes"},
		{name: "longer than 32 bits", exts: []blockdev.Extent{holeExt(5 << 30)}, errno: 5, says: "more than"},
		{name: "ErrIO", err: fmt.Errorf("replica lost: %w", blockdev.ErrIO), errno: 5, says: "replica lost"},
		{name: "ErrInvalid", err: blockdev.ErrInvalid, errno: 22, says: "invalid"},
		{name: "Errno", err: ENOMEM, errno: 12, says: "ENOMEM"},
	} {
		d.setAllocHook(func(off, length uint64) ([]blockdev.Extent, error) { return tc.exts, tc.err })
		errno, msg := c.blockStatusError(0, 0, 64*K)
		if errno != tc.errno || !strings.Contains(msg, tc.says) {
			t.Errorf("%s: errno %d %q, want %d saying %q", tc.name, errno, msg, tc.errno, tc.says)
		}
	}
	// Extents off the 512-byte grid: holes only over whole blocks.
	d.setAllocHook(func(off, length uint64) ([]blockdev.Extent, error) {
		return []blockdev.Extent{dataExt(100), holeExt(5000), dataExt(length - 5100)}, nil
	})
	check("unaligned extents", c.blockStatus(0, 0, 8*K), dataDesc(512), holeDesc(4096), dataDesc(3584))
	d.setAllocHook(nil)
	check("after the hooks", c.blockStatus(cmdFlagReqOne, 0, M), dataDesc(64*K))
	c.send(0, cmdRead, 15, 0, 512, nil)
	if r := c.readReply(); r.typ != replyTypeOffsetData || !bytes.Equal(r.data[8:], pattern(1, 512)) { // sparseLayout[0]'s seed is 1
		t.Errorf("READ after the failed BLOCK_STATUS: %+v", r)
	}
	if s := ts.log.String(); !strings.Contains(s, "invalid allocation map") {
		t.Errorf("the malformed map was not logged:\n%s", s)
	}
}

// A backend without Allocator keeps the old answer: one descriptor of
// the whole request, allocated.
func TestBlockStatusWithoutAllocator(t *testing.T) {
	ts, _ := startSparseServer(t)
	c := connect(t, ts.addr, "disk", true, true)
	for _, flags := range []uint16{0, cmdFlagReqOne} {
		if ds := c.blockStatus(flags, 4096, 1<<20); fmt.Sprint(ds) != fmt.Sprint([]desc{dataDesc(1 << 20)}) {
			t.Errorf("flags %#x: %v", flags, ds)
		}
	}
	if n := ts.disk.reads.Load() + ts.disk.writes.Load(); n != 0 {
		t.Errorf("%d backend calls", n)
	}
}

// A sparse export's base:allocation is only asked for when the client
// selected it: without it BLOCK_STATUS is refused and Allocation is
// never called.
func TestBlockStatusAllocatorNeedsContext(t *testing.T) {
	ts, d := startSparseServer(t)
	c := connect(t, ts.addr, "sparse", true, false)
	if errno, _ := c.blockStatusError(0, 0, 4096); errno != 22 {
		t.Fatalf("errno %d, want EINVAL", errno)
	}
	if n := d.alloc.calls.Load(); n != 0 {
		t.Fatalf("%d Allocation calls", n)
	}
}

// ---- The real clients ----

func TestBlockStatusRealClients(t *testing.T) {
	ts, d := startSparseServer(t)
	uri := "nbd://" + ts.addr + "/sparse"
	want := wantMap()
	var dataBytes uint64
	for _, e := range want {
		if !e.hole {
			dataBytes += e.n
		}
	}
	image := d.snapshot(0, sparseDiskSize)

	t.Run("nbdinfo-map", func(t *testing.T) {
		before := d.alloc.calls.Load()
		out := runTool(t, "nbdinfo", "--map", "--json", uri)
		var exts []struct {
			Offset uint64 `json:"offset"`
			Length uint64 `json:"length"`
			Type   uint32 `json:"type"`
		}
		if err := json.Unmarshal([]byte(out), &exts); err != nil {
			t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
		}
		var got []extent
		for _, e := range exts {
			if e.Type != 0 && e.Type != 3 {
				t.Fatalf("extent %+v: type %d, want 0 (data) or 3 (hole,zero)", e, e.Type)
			}
			got = append(got, extent{e.Offset, e.Length, e.Type == 3})
		}
		if diff := diffMaps(mergeMap(got), want); diff != "" {
			t.Fatalf("nbdinfo --map differs from the backend's holes:\n%s", diff)
		}
		// 1024 runs in one range take more than one reply.
		if calls := d.alloc.calls.Load() - before; calls < 3 {
			t.Errorf("%d Allocation calls for the whole map, want several (512 descriptors a reply)", calls)
		}
		t.Logf("nbdinfo --map: %d extents, %d Allocation calls", len(exts), d.alloc.calls.Load()-before)
	})

	t.Run("qemu-img-map", func(t *testing.T) {
		out := runTool(t, "qemu-img", "map", "-f", "raw", "--output=json", uri)
		var exts []struct {
			Start  uint64 `json:"start"`
			Length uint64 `json:"length"`
			Data   bool   `json:"data"`
			Zero   bool   `json:"zero"`
		}
		if err := json.Unmarshal([]byte(out), &exts); err != nil {
			t.Fatalf("qemu-img map --output=json: %v\n%s", err, out)
		}
		var got []extent
		for _, e := range exts {
			if e.Data == e.Zero {
				t.Fatalf("extent %+v: want data and not zero, or zero and not data", e)
			}
			got = append(got, extent{e.Start, e.Length, e.Zero})
		}
		if diff := diffMaps(mergeMap(got), want); diff != "" {
			t.Fatalf("qemu-img map differs from the backend's holes:\n%s", diff)
		}
	})

	// A copy skips the holes: it reads about the data, not the export.
	for _, tc := range []struct {
		name string
		args func(out string) []string
	}{
		{"nbdcopy", func(out string) []string { return []string{"nbdcopy", uri, out} }},
		{"qemu-img-convert", func(out string) []string {
			return []string{"qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "copy.raw")
			if tc.name == "nbdcopy" {
				// nbdcopy writes into an existing file of the right size.
				if err := os.WriteFile(out, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(out, sparseDiskSize); err != nil {
					t.Fatal(err)
				}
			}
			d.alloc.readsMu.Lock()
			d.alloc.reads = nil
			d.alloc.readsMu.Unlock()
			before := d.alloc.bytesRead.Load()
			args := tc.args(out)
			runTool(t, args[0], args[1:]...)
			read := d.alloc.bytesRead.Load() - before
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, image) {
				t.Fatalf("the copy (%d bytes) differs from the export (%d bytes)", len(got), len(image))
			}
			// The holes are skipped: no read lies wholly in a hole (a
			// client may read a whole request-sized chunk that holds some
			// data: nbdcopy reads 256 KiB), and far less than the export
			// is read.
			d.alloc.readsMu.Lock()
			reads := d.alloc.reads
			d.alloc.readsMu.Unlock()
			for _, r := range reads {
				if !slices.ContainsFunc(want, func(e extent) bool { return !e.hole && e.off < r.off+r.n && r.off < e.off+e.n }) {
					t.Errorf("%s read [%d,+%d), which holds no data", tc.name, r.off, r.n)
				}
			}
			if read < int64(dataBytes) || read > sparseDiskSize/4 {
				t.Errorf("%s read %d bytes of a %d-byte export holding %d bytes of data", tc.name, read, sparseDiskSize, dataBytes)
			}
			t.Logf("%s read %d bytes in %d calls; the export has %d bytes, %d of them data", tc.name, read, len(reads), sparseDiskSize, dataBytes)
		})
	}
}
