package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTransmissionCommands(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	d := ts.disk

	// Unaligned write and read-back.
	data := pattern(3, 5000)
	c.pwrite(0, 1000, data)
	if got := c.pread(1000, 5000); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	// FUA is passed to the backend.
	c.pwrite(cmdFlagFUA, 1<<20, pattern(4, 4096))
	if d.fuaW.Load() != 1 || d.writes.Load() != 2 {
		t.Errorf("fua writes %d, writes %d; want 1, 2", d.fuaW.Load(), d.writes.Load())
	}
	// FLUSH.
	c.send(0, cmdFlush, 10, 0, 0, nil)
	c.simple(10, 0)
	if d.flushes.Load() != 1 {
		t.Errorf("flushes %d, want 1", d.flushes.Load())
	}
	// TRIM zeroes in this backend.
	c.send(0, cmdTrim, 11, 1000, 100, nil)
	c.simple(11, 0)
	if got := c.pread(1000, 100); !bytes.Equal(got, make([]byte, 100)) || d.trims.Load() != 1 {
		t.Error("trim not passed to the backend")
	}
	// WRITE_ZEROES, with and without NO_HOLE.
	c.send(cmdFlagNoHole, cmdWriteZeroes, 12, 2000, 1000, nil)
	c.simple(12, 0)
	c.send(0, cmdWriteZeroes, 13, 3000, 1000, nil)
	c.simple(13, 0)
	if d.zeroes.Load() != 2 || d.noHole.Load() != 1 {
		t.Errorf("zeroes %d noHole %d, want 2 1", d.zeroes.Load(), d.noHole.Load())
	}
	want := bytes.Clone(data)
	clear(want[0:100])     // trimmed
	clear(want[1000:3000]) // zeroed
	if got := c.pread(1000, 5000); !bytes.Equal(got, want) {
		t.Error("trim / write zeroes did not zero exactly their ranges")
	}
	// FUA on TRIM / WRITE_ZEROES makes them durable with a flush.
	c.send(cmdFlagFUA, cmdWriteZeroes, 14, 0, 512, nil)
	c.simple(14, 0)
	c.send(cmdFlagFUA, cmdTrim, 15, 0, 512, nil)
	c.simple(15, 0)
	if d.flushes.Load() != 3 {
		t.Errorf("flushes %d after FUA trim and zeroes, want 3", d.flushes.Load())
	}
	// FUA on FLUSH and READ is accepted.
	c.send(cmdFlagFUA, cmdFlush, 16, 0, 0, nil)
	c.simple(16, 0)
	c.send(cmdFlagFUA, cmdRead, 17, 0, 512, nil)
	c.simple(17, 0)
	c.readFull(512)
	// Zero-length requests succeed without touching the backend.
	reads := d.reads.Load()
	c.send(0, cmdRead, 18, 4096, 0, nil)
	c.simple(18, 0)
	c.send(0, cmdWrite, 19, 4096, 0, nil)
	c.simple(19, 0)
	if d.reads.Load() != reads {
		t.Error("zero-length read reached the backend")
	}
	// The last byte of the export.
	c.pwrite(0, 64<<20-1, []byte{0xee})
	if got := c.pread(64<<20-1, 1); got[0] != 0xee {
		t.Error("last byte")
	}
}

func TestTransmissionOutOfRange(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "small", false, false) // 1 MiB
	const size = 1 << 20
	for i, tc := range []struct {
		typ     uint16
		off     uint64
		length  uint32
		payload bool
		errno   uint32
	}{
		{cmdRead, size - 511, 512, false, 22},
		{cmdRead, size, 1, false, 22},
		{cmdRead, 1 << 62, 512, false, 22},
		{cmdRead, ^uint64(0) - 100, 512, false, 22}, // offset+length overflows
		{cmdWrite, size - 511, 512, true, 28},
		{cmdWrite, ^uint64(0) - 100, 512, true, 28},
		{cmdWriteZeroes, size - 4096, 8192, false, 28},
		{cmdWriteZeroes, ^uint64(0), 1, false, 28},
		{cmdTrim, size - 4096, 8192, false, 22},
		{cmdTrim, ^uint64(0) - 1, 4, false, 22},
	} {
		var p []byte
		if tc.payload {
			p = bytes.Repeat([]byte{0xaa}, int(tc.length))
		}
		c.send(0, tc.typ, uint64(100+i), tc.off, tc.length, p)
		c.simple(uint64(100+i), tc.errno)
	}
	// Still usable, and nothing was written.
	if got := c.pread(size-512, 512); !bytes.Equal(got, make([]byte, 512)) {
		t.Error("refused write changed the disk")
	}
}

func TestTransmissionUnknownCommandsAndFlags(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	for i, tc := range []struct {
		flags, typ uint16
		length     uint32
		payload    bool
	}{
		{0, 8, 0, false},                 // RESIZE: unknown here
		{0, 0xffff, 512, false},          // unknown command
		{0, cmdCache, 4096, false},       // not advertised
		{0, cmdBlockStatus, 4096, false}, // no meta context negotiated
		{cmdFlagNoHole, cmdRead, 512, false},
		{cmdFlagDF, cmdRead, 512, false}, // DF without structured replies
		{cmdFlagReqOne, cmdWrite, 512, true},
		{cmdFlagFastZero, cmdWriteZeroes, 512, false}, // FAST_ZERO not advertised
		{cmdFlagPayloadLen, cmdWrite, 512, true},
		{1 << 15, cmdFlush, 0, false},
		{1 << 6, cmdTrim, 512, false},
	} {
		var p []byte
		if tc.payload {
			p = bytes.Repeat([]byte{0xbb}, int(tc.length))
		}
		c.send(tc.flags, tc.typ, uint64(200+i), 0, tc.length, p)
		c.simple(uint64(200+i), 22)
	}
	if got := c.pread(0, 512); !bytes.Equal(got, make([]byte, 512)) {
		t.Error("refused write changed the disk")
	}
}

func TestTransmissionHugeRead(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	c.send(0, cmdRead, 1, 0, 32<<20+1, nil)
	c.simple(1, 22)
	c.send(0, cmdRead, 2, 0, 0xffffffff, nil)
	c.simple(2, 22)
	// Exactly the maximum is fine.
	c.pwrite(0, 32<<20-4096, pattern(9, 4096))
	got := c.pread(0, 32<<20)
	if !bytes.Equal(got[32<<20-4096:], pattern(9, 4096)) {
		t.Error("32 MiB read")
	}
}

func TestTransmissionHugeWriteCloses(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	c.send(0, cmdWrite, 1, 0, 32<<20+1, nil)
	c.expectClosed()
	ts.log.waitFor(t, "protocol violation", "exceeds the maximum block size", "remote=127.0.0.1:")
	// Only that connection.
	c2 := connect(t, ts.addr, "disk", false, false)
	c2.pread(0, 512)
}

func TestTransmissionBadMagicCloses(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	c.pread(0, 512)
	bad := make([]byte, 28)
	binary.BigEndian.PutUint32(bad, 0x21e41c71) // extended header magic: not negotiated
	c.write(bad)
	c.expectClosed()
	ts.log.waitFor(t, "protocol violation", "bad magic", "remote=127.0.0.1:")
	connect(t, ts.addr, "disk", false, false).pread(0, 512)
}

func TestTransmissionTrimAndZeroesBeyondMaxBlockSize(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	c.pwrite(0, 40<<20, pattern(5, 4096))
	c.send(0, cmdWriteZeroes, 1, 0, 48<<20, nil)
	c.simple(1, 0)
	c.send(0, cmdTrim, 2, 0, 64<<20, nil)
	c.simple(2, 0)
	if got := c.pread(40<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("not zeroed")
	}
}

func TestTransmissionDiscWaitsForInFlight(t *testing.T) {
	ts := startServer(t, nil)
	release := make(chan struct{})
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		if op == "write" {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	c := connect(t, ts.addr, "disk", false, false)
	for i := range 3 {
		c.send(cmdFlagFUA, cmdWrite, uint64(i), uint64(i)*4096, 4096, pattern(byte(i), 4096))
	}
	c.send(0, cmdDisc, 99, 0, 0, nil)
	waitUntil(t, func() bool { return ts.disk.inFlight.Load() == 3 }, "three writes in the backend")
	time.Sleep(50 * time.Millisecond)
	close(release)
	seen := map[uint64]bool{}
	for range 3 {
		r := c.readReply()
		if !r.simple || r.errno != 0 {
			t.Fatalf("reply %+v", r)
		}
		seen[r.cookie] = true
	}
	if len(seen) != 3 {
		t.Fatalf("replies to %v", seen)
	}
	c.expectClosed()
	for i := range 3 {
		if !bytes.Equal(ts.disk.snapshot(i*4096, 4096), pattern(byte(i), 4096)) {
			t.Errorf("write %d lost", i)
		}
	}
	waitUntil(t, func() bool { return ts.disk.closes.Load() == 1 }, "backend closed after DISC")
}

func TestTransmissionRepliesOutOfOrder(t *testing.T) {
	ts := startServer(t, nil)
	release := make(chan struct{})
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		if off == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	c := connect(t, ts.addr, "disk", false, false)
	c.pwrite(0, 4096, pattern(1, 4096)) // not blocked: offset 4096
	c.send(0, cmdRead, 1, 0, 4096, nil) // blocked
	c.send(0, cmdRead, 2, 4096, 4096, nil)
	c.simple(2, 0)
	if got := c.readFull(4096); !bytes.Equal(got, pattern(1, 4096)) {
		t.Fatal("data of the second read")
	}
	close(release)
	c.simple(1, 0)
	c.readFull(4096)
}

// TestTransmissionManyInFlight pipelines more requests than the server
// admits at once, against a backend that delays them at random, and checks
// every reply against a model.
func TestTransmissionManyInFlight(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts := startServer(t, nil)
			rng := rand.New(rand.NewPCG(1, 2))
			var mu sync.Mutex
			ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
				mu.Lock()
				d := time.Duration(rng.IntN(3000)) * time.Microsecond
				mu.Unlock()
				time.Sleep(d)
				return nil
			})
			c := connect(t, ts.addr, "disk", structured, false)
			const n = 600
			const bs = 4096
			// Phase 1: n writes to distinct blocks; phase 2: n reads of them.
			go func() {
				for i := range n {
					c.send(0, cmdWrite, uint64(i), uint64(i)*bs, bs, pattern(byte(i), bs))
				}
			}()
			order := make([]uint64, 0, n)
			for range n {
				r := c.readReply()
				if !r.simple || r.errno != 0 {
					t.Fatalf("write reply %+v", r)
				}
				order = append(order, r.cookie)
			}
			go func() {
				for i := range n {
					c.send(0, cmdRead, uint64(n+i), uint64(i)*bs, bs, nil)
				}
			}()
			got := map[uint64]bool{}
			for range n {
				var cookie uint64
				var data []byte
				if structured {
					r := c.readReply()
					if r.typ != 1 || r.flags != 1 || len(r.data) != 8+bs {
						t.Fatalf("read chunk %+v", r)
					}
					cookie, data = r.cookie, r.data[8:]
					if off := binary.BigEndian.Uint64(r.data); off != (cookie-n)*bs {
						t.Fatalf("chunk offset %d for cookie %d", off, cookie)
					}
				} else {
					r := c.readReply()
					if !r.simple || r.errno != 0 {
						t.Fatalf("read reply %+v", r)
					}
					cookie, data = r.cookie, c.readFull(bs)
				}
				if cookie < n || cookie >= 2*n || got[cookie] {
					t.Fatalf("unexpected cookie %d", cookie)
				}
				got[cookie] = true
				if !bytes.Equal(data, pattern(byte(cookie-n), bs)) {
					t.Fatalf("read %d returned the wrong data", cookie-n)
				}
			}
			inOrder := true
			for i, ck := range order {
				inOrder = inOrder && ck == uint64(i)
			}
			if inOrder {
				t.Error("600 delayed writes were all answered in order: no concurrency?")
			}
			if m := ts.disk.maxInFlight.Load(); m < 8 || m > DefaultMaxRequestsInFlight {
				t.Errorf("max backend calls in flight %d, want between 8 and %d", m, DefaultMaxRequestsInFlight)
			}
		})
	}
}

func TestTransmissionBudgetBoundsRequestsInFlight(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.MaxRequestsInFlight = 2 })
	release := make(chan struct{})
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	c := connect(t, ts.addr, "disk", false, false)
	for i := range 5 {
		c.send(0, cmdRead, uint64(i), 0, 512, nil)
	}
	waitUntil(t, func() bool { return ts.disk.inFlight.Load() == 2 }, "two reads in the backend")
	time.Sleep(50 * time.Millisecond)
	if n := ts.disk.inFlight.Load(); n != 2 {
		t.Fatalf("%d reads in the backend, want 2", n)
	}
	close(release)
	for range 5 {
		r := c.readReply()
		if r.errno != 0 {
			t.Fatal(r)
		}
		c.readFull(512)
	}
}

func TestTransmissionBudgetBoundsBytes(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.MaxBytesInFlight = 1 << 20 })
	release := make(chan struct{})
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	c := connect(t, ts.addr, "disk", false, false)
	for i := range 4 {
		c.send(0, cmdRead, uint64(i), 0, 512<<10, nil)
	}
	c.send(0, cmdRead, 4, 0, 4<<20, nil) // larger than the budget: admitted alone
	waitUntil(t, func() bool { return ts.disk.inFlight.Load() == 2 }, "two 512 KiB reads in the backend")
	time.Sleep(50 * time.Millisecond)
	if n := ts.disk.inFlight.Load(); n != 2 {
		t.Fatalf("%d reads in the backend, want 2 (1 MiB budget)", n)
	}
	close(release)
	for range 5 {
		r := c.readReply()
		if r.errno != 0 {
			t.Fatal(r)
		}
		if r.cookie == 4 {
			c.readFull(4 << 20)
		} else {
			c.readFull(512 << 10)
		}
	}
}

func TestTransmissionStructuredReplies(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", true, true)
	c.pwrite(0, 8192, pattern(6, 8192)) // success on a non-READ: a simple reply

	// READ: one OFFSET_DATA chunk with DONE.
	for _, flags := range []uint16{0, cmdFlagDF} {
		c.send(flags, cmdRead, 1, 8192+100, 5000, nil)
		r := c.readReply()
		if r.simple || r.typ != 1 || r.flags != 1 || r.cookie != 1 {
			t.Fatalf("READ reply %+v", r)
		}
		if off := binary.BigEndian.Uint64(r.data); off != 8192+100 || !bytes.Equal(r.data[8:], pattern(6, 8192)[100:5100]) {
			t.Fatalf("OFFSET_DATA offset %d", off)
		}
	}
	// A zero-length read: NONE with DONE.
	c.send(0, cmdRead, 2, 0, 0, nil)
	if r := c.readReply(); r.simple || r.typ != 0 || r.flags != 1 || len(r.data) != 0 {
		t.Fatalf("zero-length READ reply %+v", r)
	}
	// Errors are error chunks with a message, READ or not.
	for _, tc := range []struct {
		flags, typ uint16
		off        uint64
		length     uint32
		errno      uint32
	}{
		{0, cmdRead, 64 << 20, 512, 22},
		{0, cmdRead, 0, 33 << 20, 22},
		{cmdFlagNoHole, cmdRead, 0, 512, 22},
		{0, cmdWriteZeroes, 64 << 20, 512, 28},
		{0, cmdBlockStatus, 64<<20 - 512, 1024, 22},
		{0, cmdBlockStatus, 0, 0, 22},
		{0, 77, 0, 0, 22},
	} {
		c.send(tc.flags, tc.typ, 3, tc.off, tc.length, nil)
		r := c.readReply()
		if r.simple || r.typ != 0x8001 || r.flags != 1 || r.cookie != 3 {
			t.Fatalf("%s error reply %+v", commandName(tc.typ), r)
		}
		if errno, msg := chunkError(t, r); errno != tc.errno || msg == "" {
			t.Errorf("%s: errno %d message %q, want %d", commandName(tc.typ), errno, msg, tc.errno)
		}
	}
	// BLOCK_STATUS: one extent, allocated data.
	for _, flags := range []uint16{0, cmdFlagReqOne} {
		c.send(flags, cmdBlockStatus, 4, 4096, 1<<20, nil)
		r := c.readReply()
		if r.simple || r.typ != 5 || r.flags != 1 || len(r.data) != 12 {
			t.Fatalf("BLOCK_STATUS reply %+v", r)
		}
		if id, l, st := binary.BigEndian.Uint32(r.data), binary.BigEndian.Uint32(r.data[4:]), binary.BigEndian.Uint32(r.data[8:]); id != 1 || l != 1<<20 || st != 0 {
			t.Errorf("extent: context %d length %d status %d", id, l, st)
		}
	}
	// Other commands succeed with simple replies.
	c.send(0, cmdFlush, 5, 0, 0, nil)
	c.simple(5, 0)
}

func TestTransmissionBackendErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts := startServer(t, nil)
			ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
				switch off {
				case 4096:
					return errors.New("replica lost")
				case 8192:
					return fmt.Errorf("%w: volume full", ENOSPC)
				case 12288:
					return Errno(99) // not an NBD errno
				case 16384:
					return EPERM
				}
				return nil
			})
			c := connect(t, ts.addr, "disk", structured, false)
			for _, tc := range []struct {
				typ   uint16
				off   uint64
				errno uint32
				msg   string
			}{
				{cmdRead, 4096, 5, "replica lost"},
				{cmdWrite, 8192, 28, "volume full"},
				{cmdRead, 12288, 5, ""},
				{cmdTrim, 16384, 1, ""},
			} {
				var p []byte
				if tc.typ == cmdWrite {
					p = make([]byte, 512)
				}
				c.send(0, tc.typ, 9, tc.off, 512, p)
				if structured {
					r := c.readReply()
					errno, msg := chunkError(t, r)
					if errno != tc.errno || !strings.Contains(msg, tc.msg) {
						t.Errorf("%s at %d: errno %d %q, want %d %q", commandName(tc.typ), tc.off, errno, msg, tc.errno, tc.msg)
					}
				} else {
					// No data after a failed READ's header.
					c.simple(9, tc.errno)
				}
			}
			// The connection is still usable.
			c.send(0, cmdRead, 10, 0, 512, nil)
			r := c.readReply()
			if structured {
				if r.typ != 1 {
					t.Fatal(r)
				}
			} else {
				c.readFull(512)
			}
		})
	}
}

func TestMultipleConnectionsShareTheExport(t *testing.T) {
	ts := startServer(t, nil)
	a := connect(t, ts.addr, "disk", false, false)
	b := connect(t, ts.addr, "disk", true, false)
	a.pwrite(cmdFlagFUA, 12345, pattern(8, 3000))
	b.send(0, cmdRead, 1, 12345, 3000, nil)
	r := b.readReply()
	if !bytes.Equal(r.data[8:], pattern(8, 3000)) {
		t.Fatal("second connection does not see the first one's write")
	}
	if ts.disk.opens.Load() != 2 {
		t.Errorf("opens %d, want one per connection", ts.disk.opens.Load())
	}
	a.send(0, cmdDisc, 0, 0, 0, nil)
	a.expectClosed()
	waitUntil(t, func() bool { return ts.disk.closes.Load() == 1 }, "first backend closed")
	b.send(0, cmdRead, 2, 0, 512, nil)
	if r := b.readReply(); r.typ != 1 || r.cookie != 2 {
		t.Fatalf("second connection after the first left: %+v", r)
	}
}

func TestServerCloseEndsConnections(t *testing.T) {
	ts := startServer(t, nil)
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		if op == "read" {
			<-ctx.Done() // a backend call that only ends when canceled
			return ctx.Err()
		}
		return nil
	})
	c := connect(t, ts.addr, "disk", false, false)
	c.send(0, cmdRead, 1, 0, 512, nil)
	idle := dial(t, ts.addr) // in the handshake
	idle.greet(3)
	waitUntil(t, func() bool { return ts.disk.inFlight.Load() == 1 }, "read in the backend")
	done := make(chan struct{})
	go func() { ts.s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	// The canceled read may be answered ESHUTDOWN before the socket closes.
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := c.r.Peek(1); err == nil && b[0] == 0x67 {
		c.simple(1, 108)
	}
	c.expectClosed()
	idle.expectClosed()
	if err := <-ts.serve; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	ts.serve <- ErrServerClosed // for the cleanup
	if ts.disk.closes.Load() != 1 {
		t.Error("backend not closed")
	}
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.s.Serve(context.Background(), l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: %v, want ErrServerClosed", err)
	}
	if _, err := l.Accept(); err == nil {
		t.Error("Serve after Close left its listener open")
	}
}

func TestServeEndsWithContext(t *testing.T) {
	ts := startServer(t, nil)
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ts.s.Serve(ctx, l) }()
	c := connect(t, l.Addr().String(), "disk", false, false)
	c.pread(0, 512)
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v after its context ended", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	c.expectClosed()
	// The other Serve is unaffected.
	connect(t, ts.addr, "disk", false, false).pread(0, 512)
}

func TestServeRejectsBadConfig(t *testing.T) {
	for name, s := range map[string]*Server{
		"no exports":       {},
		"negative":         {Exports: &memExports{}, MaxRequestsInFlight: -1},
		"option too large": {Exports: &memExports{}, MaxOptionBytes: 1 << 30},
	} {
		l, err := netListen()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Serve(context.Background(), l); err == nil || errors.Is(err, ErrServerClosed) {
			t.Errorf("%s: Serve returned %v", name, err)
		}
		if _, err := l.Accept(); err == nil {
			t.Errorf("%s: listener left open", name)
		}
	}
	cfg, err := (&Server{Exports: &memExports{}}).config()
	if err != nil || cfg.handshakeTimeout != DefaultHandshakeTimeout || cfg.maxRequests != DefaultMaxRequestsInFlight ||
		cfg.maxBytes != DefaultMaxBytesInFlight || cfg.maxOptions != DefaultMaxOptions || cfg.maxOptionBytes != DefaultMaxOptionBytes || cfg.log == nil {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
}
