package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---- In-memory backend ----

type hookFunc func(ctx context.Context, op string, off, length uint64) error

// memDisk is an export's data, shared by every connection that opens it.
type memDisk struct {
	mu   sync.RWMutex
	data []byte

	// hook, if set, runs before every backend call and may block (honour
	// ctx) or fail it. op is "read", "write", "flush", "trim", "zeroes",
	// or "alloc" (a sparse disk's Allocation).
	hook atomic.Pointer[hookFunc]

	opens, closes          atomic.Int32
	reads, writes, fuaW    atomic.Int32
	flushes, trims, zeroes atomic.Int32
	noHole                 atomic.Int32
	misuse                 atomic.Int32 // out-of-range calls or calls after Close: must stay 0
	inFlight, maxInFlight  atomic.Int32

	// alloc, if set, makes the disk sparse: its backends implement
	// blockdev.Allocator (see blockstatus_test.go).
	alloc *allocMap
}

func newMemDisk(size int) *memDisk { return &memDisk{data: make([]byte, size)} }

func (d *memDisk) setHook(h hookFunc) { d.hook.Store(&h) }

func (d *memDisk) size() uint64 { return uint64(len(d.data)) }

// snapshot copies [off, off+n).
func (d *memDisk) snapshot(off, n int) []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return bytes.Clone(d.data[off : off+n])
}

// memBackend is one connection's handle on a memDisk.
type memBackend struct {
	d      *memDisk
	closed atomic.Bool
}

func (b *memBackend) Size() uint64        { return b.d.size() }
func (b *memBackend) Description() string { return "in-memory test disk" }

func (b *memBackend) Close() error {
	if b.closed.Swap(true) {
		b.d.misuse.Add(1) // closed twice
	}
	b.d.closes.Add(1)
	return nil
}

// enter checks a call and runs the hook.
func (b *memBackend) enter(ctx context.Context, op string, off, length uint64) error {
	d := b.d
	if b.closed.Load() || length > d.size() || off > d.size()-length {
		d.misuse.Add(1)
		return fmt.Errorf("%w: %s [%d,+%d) out of range or after close", EIO, op, off, length)
	}
	n := d.inFlight.Add(1)
	for {
		m := d.maxInFlight.Load()
		if n <= m || d.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	if h := d.hook.Load(); h != nil && *h != nil {
		if err := (*h)(ctx, op, off, length); err != nil {
			d.inFlight.Add(-1)
			return err
		}
	}
	return nil
}

func (b *memBackend) leave() { b.d.inFlight.Add(-1) }

func (b *memBackend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := b.enter(ctx, "read", off, uint64(len(p))); err != nil {
		return err
	}
	defer b.leave()
	b.d.reads.Add(1)
	b.d.mu.RLock()
	copy(p, b.d.data[off:])
	b.d.mu.RUnlock()
	return nil
}

func (b *memBackend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := b.enter(ctx, "write", off, uint64(len(p))); err != nil {
		return err
	}
	defer b.leave()
	b.d.writes.Add(1)
	if fua {
		b.d.fuaW.Add(1)
	}
	b.d.mu.Lock()
	copy(b.d.data[off:], p)
	b.d.mu.Unlock()
	return nil
}

func (b *memBackend) Flush(ctx context.Context) error {
	if err := b.enter(ctx, "flush", 0, 0); err != nil {
		return err
	}
	defer b.leave()
	b.d.flushes.Add(1)
	return nil
}

func (b *memBackend) Trim(ctx context.Context, off, length uint64) error {
	if err := b.enter(ctx, "trim", off, length); err != nil {
		return err
	}
	defer b.leave()
	b.d.trims.Add(1)
	b.d.mu.Lock()
	clear(b.d.data[off : off+length])
	b.d.mu.Unlock()
	return nil
}

func (b *memBackend) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	if err := b.enter(ctx, "zeroes", off, length); err != nil {
		return err
	}
	defer b.leave()
	b.d.zeroes.Add(1)
	if noHole {
		b.d.noHole.Add(1)
	}
	b.d.mu.Lock()
	clear(b.d.data[off : off+length])
	b.d.mu.Unlock()
	return nil
}

// memExports serves memDisks by name. "broken" fails Open with an error
// that is not ErrUnknownExport; listErr makes List fail.
type memExports struct {
	disks   map[string]*memDisk
	listErr atomic.Pointer[error]
}

func (e *memExports) Open(ctx context.Context, name string) (Backend, error) {
	if name == "broken" {
		return nil, errors.New("head nodes unreachable")
	}
	d, ok := e.disks[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownExport, name)
	}
	d.opens.Add(1)
	if d.alloc != nil {
		return &sparseBackend{memBackend{d: d}}, nil
	}
	return &memBackend{d: d}, nil
}

func (e *memExports) List(ctx context.Context) ([]string, error) {
	if err := e.listErr.Load(); err != nil {
		return nil, *err
	}
	var names []string
	for n := range e.disks {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// ---- Logging ----

// logBuf collects log output so tests can check what was logged.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls the log until it contains all of subs.
func (l *logBuf) waitFor(t testing.TB, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := l.String()
		ok := true
		for _, sub := range subs {
			ok = ok && strings.Contains(s, sub)
		}
		if ok {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never contained %q:\n%s", subs, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- Server under test ----

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

type testServer struct {
	s     *Server
	addr  string
	disk  *memDisk
	ex    *memExports
	log   *logBuf
	serve chan error
}

// startServer serves a 64 MiB disk "disk" and a 1 MiB disk "small" on
// 127.0.0.1. mod may change the server before it starts.
func startServer(t testing.TB, mod func(*Server)) *testServer {
	t.Helper()
	ts := &testServer{
		disk:  newMemDisk(64 << 20),
		log:   &logBuf{},
		serve: make(chan error, 1),
	}
	ts.ex = &memExports{disks: map[string]*memDisk{"disk": ts.disk, "small": newMemDisk(1 << 20)}}
	ts.s = &Server{
		Exports: ts.ex,
		Logger:  slog.New(slog.NewTextHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(ts.s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.Addr().String()
	go func() { ts.serve <- ts.s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ts.s.Close()
		if err := <-ts.serve; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		for name, d := range ts.ex.disks {
			if o, c := d.opens.Load(), d.closes.Load(); o != c {
				t.Errorf("export %s opened %d times, closed %d times", name, o, c)
			}
			if m := d.misuse.Load(); m != 0 {
				t.Errorf("export %s: %d out-of-range or after-close backend calls", name, m)
			}
		}
		if t.Failed() {
			t.Logf("server log:\n%s", ts.log.String())
		}
	})
	return ts
}

// ---- Raw test client ----

// client speaks NBD with raw bytes, independently of the package's codec.
type client struct {
	t  testing.TB
	c  net.Conn
	r  *bufio.Reader
	mu sync.Mutex // serialises sends
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReaderSize(c, 1<<20)}
}

func (c *client) write(b []byte) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *client) readFull(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server closes the connection (after
// sending nothing more).
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := c.r.ReadByte()
	if err == nil {
		c.t.Fatalf("server sent %#x, want the connection closed", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("server did not close the connection")
	}
}

// greet reads the greeting and sends the client flags.
func (c *client) greet(flags uint32) {
	c.t.Helper()
	g := c.readFull(18)
	if string(g[:16]) != "NBDMAGICIHAVEOPT" || binary.BigEndian.Uint16(g[16:]) != 3 {
		c.t.Fatalf("greeting %x", g)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (c *client) sendOption(opt uint32, data []byte) {
	c.t.Helper()
	b := []byte("IHAVEOPT")
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	h := c.readFull(20)
	if m := binary.BigEndian.Uint64(h); m != 0x3e889045565a9 {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	r.data = c.readFull(int(n))
	return r
}

// expectOptReply reads a reply and checks its option and type.
func (c *client) expectOptReply(opt, typ uint32) optReply {
	c.t.Helper()
	r := c.readOptReply()
	if r.opt != opt || r.typ != typ {
		c.t.Fatalf("reply to option %d: got option %d type %#x (%q), want type %#x", opt, r.opt, r.typ, r.data, typ)
	}
	return r
}

// exportData encodes GO/INFO data.
func exportData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaData encodes LIST/SET_META_CONTEXT data.
func metaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo is what INFO/GO told the client.
type exportInfo struct {
	size                  uint64
	flags                 uint16
	min, pref, max        uint32
	name, descr           string
	gotBlockSize, gotName bool
}

// readInfoReplies reads REP_INFO replies up to the ACK.
func (c *client) readInfoReplies(opt uint32) exportInfo {
	c.t.Helper()
	var ei exportInfo
	gotExport := false
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		switch r.typ {
		case 1: // ACK
			if !gotExport {
				c.t.Fatalf("ACK without INFO_EXPORT")
			}
			return ei
		case 3:
			if len(r.data) < 2 {
				c.t.Fatalf("short REP_INFO %x", r.data)
			}
			switch binary.BigEndian.Uint16(r.data) {
			case 0:
				if len(r.data) != 12 {
					c.t.Fatalf("INFO_EXPORT of %d bytes", len(r.data))
				}
				gotExport = true
				ei.size = binary.BigEndian.Uint64(r.data[2:])
				ei.flags = binary.BigEndian.Uint16(r.data[10:])
			case 1:
				ei.gotName, ei.name = true, string(r.data[2:])
			case 2:
				ei.descr = string(r.data[2:])
			case 3:
				if len(r.data) != 14 {
					c.t.Fatalf("INFO_BLOCK_SIZE of %d bytes", len(r.data))
				}
				ei.gotBlockSize = true
				ei.min = binary.BigEndian.Uint32(r.data[2:])
				ei.pref = binary.BigEndian.Uint32(r.data[6:])
				ei.max = binary.BigEndian.Uint32(r.data[10:])
			}
		default:
			c.t.Fatalf("reply type %#x (%q) to option %d", r.typ, r.data, opt)
		}
	}
}

// open runs a whole handshake with GO: optionally structured replies and
// base:allocation.
func (c *client) open(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(3)
	if structured {
		c.sendOption(8, nil)
		c.expectOptReply(8, 1)
	}
	if meta {
		c.sendOption(10, metaData(name, "base:allocation"))
		c.expectOptReply(10, 4)
		c.expectOptReply(10, 1)
	}
	c.sendOption(7, exportData(name, 3))
	return c.readInfoReplies(7)
}

// connect dials and opens export name.
func connect(t testing.TB, addr, name string, structured, meta bool) *client {
	t.Helper()
	c := dial(t, addr)
	c.open(name, structured, meta)
	return c
}

// send sends one request with its payload.
func (c *client) send(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(b, 0x25609513)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.write(append(b, payload...))
}

// reply is a simple reply or one structured chunk.
type reply struct {
	simple bool
	errno  uint32 // simple replies
	cookie uint64
	flags  uint16 // chunks
	typ    uint16
	data   []byte // chunk payload
}

// readReply reads one simple reply header (without its data) or one
// whole structured chunk.
func (c *client) readReply() reply {
	c.t.Helper()
	m := binary.BigEndian.Uint32(c.readFull(4))
	switch m {
	case 0x67446698:
		h := c.readFull(12)
		return reply{simple: true, errno: binary.BigEndian.Uint32(h), cookie: binary.BigEndian.Uint64(h[4:])}
	case 0x668e33ef:
		h := c.readFull(16)
		r := reply{flags: binary.BigEndian.Uint16(h), typ: binary.BigEndian.Uint16(h[2:]), cookie: binary.BigEndian.Uint64(h[4:])}
		n := binary.BigEndian.Uint32(h[12:])
		if n > 64<<20 {
			c.t.Fatalf("chunk of %d bytes", n)
		}
		r.data = c.readFull(int(n))
		return r
	}
	c.t.Fatalf("reply magic %#x", m)
	return reply{}
}

// simple reads a simple reply and checks its cookie and errno.
func (c *client) simple(cookie uint64, errno uint32) {
	c.t.Helper()
	r := c.readReply()
	if !r.simple || r.cookie != cookie || r.errno != errno {
		c.t.Fatalf("got %+v, want simple reply to %d with errno %d", r, cookie, errno)
	}
}

// chunkError decodes an error chunk's errno and message.
func chunkError(t testing.TB, r reply) (uint32, string) {
	t.Helper()
	if r.typ&0x8000 == 0 || len(r.data) < 6 {
		t.Fatalf("not an error chunk: %+v", r)
	}
	n := int(binary.BigEndian.Uint16(r.data[4:]))
	if 6+n > len(r.data) {
		t.Fatalf("error message of %d bytes in a %d-byte chunk", n, len(r.data))
	}
	return binary.BigEndian.Uint32(r.data), string(r.data[6 : 6+n])
}

// Simple-reply operations, one at a time.

func (c *client) pread(off uint64, n int) []byte {
	c.t.Helper()
	c.send(0, cmdRead, 7, off, uint32(n), nil)
	c.simple(7, 0)
	return c.readFull(n)
}

func (c *client) pwrite(flags uint16, off uint64, p []byte) {
	c.t.Helper()
	c.send(flags, cmdWrite, 8, off, uint32(len(p)), p)
	c.simple(8, 0)
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
