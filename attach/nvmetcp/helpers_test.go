package nvmetcp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// ---- In-memory device ----

type hookFunc func(ctx context.Context, op string, off, length uint64) error

// memDisk is a namespace's data, shared by every controller that opens it.
type memDisk struct {
	mu   sync.RWMutex
	data []byte
	id   [16]byte

	hook atomic.Pointer[hookFunc]

	opens, closes                 atomic.Int32
	reads, writes, fuaW           atomic.Int32
	flushes, trims, zeroes, holes atomic.Int32
	misuse                        atomic.Int32 // out-of-range calls or calls after Close: must stay 0
}

func newMemDisk(size int, id byte) *memDisk {
	d := &memDisk{data: make([]byte, size)}
	d.id[0], d.id[15] = 0xba, id
	return d
}

func (d *memDisk) setHook(h hookFunc) { d.hook.Store(&h) }

func (d *memDisk) snapshot(off, n int) []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return bytes.Clone(d.data[off : off+n])
}

// memDev is one controller's handle on a memDisk.
type memDev struct {
	d      *memDisk
	closed atomic.Bool
}

var _ blockdev.Device = (*memDev)(nil)

func (b *memDev) Size() uint64 {
	b.d.mu.RLock()
	defer b.d.mu.RUnlock()
	return uint64(len(b.d.data))
}

func (b *memDev) Close() error {
	if b.closed.Swap(true) {
		b.d.misuse.Add(1)
	}
	b.d.closes.Add(1)
	return nil
}

func (b *memDev) enter(ctx context.Context, op string, off, length uint64) error {
	size := b.Size()
	if b.closed.Load() || length > size || off > size-length {
		b.d.misuse.Add(1)
		return fmt.Errorf("%w: %s [%d,+%d) out of range or after close", blockdev.ErrIO, op, off, length)
	}
	if h := b.d.hook.Load(); h != nil && *h != nil {
		return (*h)(ctx, op, off, length)
	}
	return nil
}

func (b *memDev) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := b.enter(ctx, "read", off, uint64(len(p))); err != nil {
		return err
	}
	b.d.reads.Add(1)
	b.d.mu.RLock()
	copy(p, b.d.data[off:])
	b.d.mu.RUnlock()
	return nil
}

func (b *memDev) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := b.enter(ctx, "write", off, uint64(len(p))); err != nil {
		return err
	}
	b.d.writes.Add(1)
	if fua {
		b.d.fuaW.Add(1)
	}
	b.d.mu.Lock()
	copy(b.d.data[off:], p)
	b.d.mu.Unlock()
	return nil
}

func (b *memDev) Flush(ctx context.Context) error {
	if err := b.enter(ctx, "flush", 0, 0); err != nil {
		return err
	}
	b.d.flushes.Add(1)
	return nil
}

func (b *memDev) Trim(ctx context.Context, off, length uint64) error {
	if err := b.enter(ctx, "trim", off, length); err != nil {
		return err
	}
	b.d.trims.Add(1)
	b.d.mu.Lock()
	clear(b.d.data[off : off+length])
	b.d.mu.Unlock()
	return nil
}

func (b *memDev) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	if err := b.enter(ctx, "zeroes", off, length); err != nil {
		return err
	}
	b.d.zeroes.Add(1)
	if !noHole {
		b.d.holes.Add(1)
	}
	b.d.mu.Lock()
	clear(b.d.data[off : off+length])
	b.d.mu.Unlock()
	return nil
}

// memSubsystems serves memDisks by NQN.
type memSubsystems struct {
	mu    sync.Mutex
	disks map[string]*memDisk
	fail  error // Open fails with it when set
}

func (s *memSubsystems) List(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.disks {
		out = append(out, n)
	}
	return out, nil
}

func (s *memSubsystems) Open(ctx context.Context, nqn string) (Namespace, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return Namespace{}, s.fail
	}
	d, ok := s.disks[nqn]
	if !ok {
		return Namespace{}, fmt.Errorf("%w: %s", ErrUnknownSubsystem, nqn)
	}
	d.opens.Add(1)
	return Namespace{Device: &memDev{d: d}, ID: d.id}, nil
}

// ---- Target under test ----

const (
	testNQN    = "nqn.2026-11.io.ballast:disk"
	testNQN2   = "nqn.2026-11.io.ballast:small"
	testDiskSz = 8 << 20
)

type testTarget struct {
	t      *Target
	addr   string
	subs   *memSubsystems
	disk   *memDisk
	small  *memDisk
	logBuf *syncBuffer
}

// syncBuffer collects log output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startTarget serves a 8 MiB disk and a 64 KiB one on a loopback port.
func startTarget(tb testing.TB, configure func(*Target)) *testTarget {
	tb.Helper()
	tt := &testTarget{disk: newMemDisk(testDiskSz, 1), small: newMemDisk(64<<10, 2), logBuf: &syncBuffer{}}
	tt.subs = &memSubsystems{disks: map[string]*memDisk{testNQN: tt.disk, testNQN2: tt.small}}
	var w io.Writer = tt.logBuf
	tt.t = &Target{Subsystems: tt.subs, Logger: slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if configure != nil {
		configure(tt.t)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tt.addr = l.Addr().String()
	done := make(chan error, 1)
	go func() { done <- tt.t.Serve(context.Background(), l) }()
	tb.Cleanup(func() {
		tt.t.Close()
		if err := <-done; err != nil && err != ErrTargetClosed {
			tb.Errorf("Serve: %v", err)
		}
		for name, d := range map[string]*memDisk{"disk": tt.disk, "small": tt.small} {
			if o, c := d.opens.Load(), d.closes.Load(); o != c {
				tb.Errorf("%s opened %d times, closed %d times", name, o, c)
			}
			if m := d.misuse.Load(); m != 0 {
				tb.Errorf("%s: %d out-of-range or after-close device calls", name, m)
			}
		}
		if tb.Failed() {
			tb.Logf("target log:\n%s", tail(tt.logBuf.String(), 6000))
		}
	})
	return tt
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// connect brings up a controller of nqn on the target.
func (tt *testTarget) connect(tb testing.TB, nqn string, opts HostOptions) *Host {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := Connect(ctx, tt.addr, nqn, opts)
	if err != nil {
		tb.Fatalf("connect to %s: %v", nqn, err)
	}
	tb.Cleanup(func() { h.closeQueues() })
	return h
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x = x*1103515245 + 12345
		b[i] = byte(x >> 16)
	}
	return b
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// expectStatus checks that err is the NVMe status want.
func expectStatus(tb testing.TB, err error, want Status) {
	tb.Helper()
	var got Status
	if err == nil {
		tb.Fatalf("command succeeded, want %v", want)
	}
	if s, ok := err.(Status); ok {
		got = s
	} else if !asStatus(err, &got) {
		tb.Fatalf("error %v, want NVMe status %v", err, want)
	}
	if got&0x7FFF != want&0x7FFF {
		tb.Fatalf("status %v, want %v", got, want)
	}
}

func asStatus(err error, s *Status) bool {
	for err != nil {
		if st, ok := err.(Status); ok {
			*s = st
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func logContains(tt *testTarget, s string) bool { return strings.Contains(tt.logBuf.String(), s) }
