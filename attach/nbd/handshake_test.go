package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// Option reply types as the client sees them.
const (
	tAck         = 1
	tServer      = 2
	tInfo        = 3
	tMetaContext = 4
	tErrUnsup    = 1<<31 | 1
	tErrPolicy   = 1<<31 | 2
	tErrInvalid  = 1<<31 | 3
	tErrUnknown  = 1<<31 | 6
	tErrTooBig   = 1<<31 | 9
)

const (
	flagsSimple     = 0x016d // HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|MULTI_CONN
	flagsStructured = 0x01ed // ... |SEND_DF
)

func TestHandshakeGreetingAndGo(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	g := c.readFull(18)
	want := append([]byte("NBDMAGICIHAVEOPT"), 0, 3)
	if !bytes.Equal(g, want) {
		t.Fatalf("greeting %x, want %x", g, want)
	}
	c.write([]byte{0, 0, 0, 3})
	c.sendOption(7, exportData("disk", 3, 1, 2)) // BLOCK_SIZE, NAME, DESCRIPTION
	ei := c.readInfoReplies(7)
	if ei.size != 64<<20 || ei.flags != flagsSimple {
		t.Errorf("INFO_EXPORT size %d flags %#x, want %d %#x", ei.size, ei.flags, 64<<20, flagsSimple)
	}
	if !ei.gotBlockSize || ei.min != 512 || ei.pref != 4096 || ei.max != 32<<20 {
		t.Errorf("block sizes %+v, want 512/4096/32MiB", ei)
	}
	if !ei.gotName || ei.name != "disk" || ei.descr != "in-memory test disk" {
		t.Errorf("name %q (%v) description %q", ei.name, ei.gotName, ei.descr)
	}
	// Transmission starts right after the ACK, with no padding.
	c.pwrite(0, 4096, pattern(1, 512))
	if got := c.pread(4096, 512); !bytes.Equal(got, pattern(1, 512)) {
		t.Fatal("read back differs")
	}
}

func TestHandshakeGoWithoutInfoRequestsStillSendsBlockSize(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(1) // no C_NO_ZEROES: irrelevant to GO
	c.sendOption(7, exportData("disk"))
	ei := c.readInfoReplies(7)
	if !ei.gotBlockSize || ei.min != 512 || ei.pref != 4096 || ei.max != 32<<20 {
		t.Errorf("block sizes %+v, want them sent unasked", ei)
	}
	if ei.gotName || ei.descr != "" {
		t.Errorf("unrequested name/description sent: %+v", ei)
	}
}

func TestHandshakeInfoThenGo(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(6, exportData("small", 3))
	ei := c.readInfoReplies(6)
	if ei.size != 1<<20 || ei.flags != flagsSimple {
		t.Errorf("INFO: %+v", ei)
	}
	d := ts.ex.disks["small"]
	waitUntil(t, func() bool { return d.closes.Load() == 1 }, "INFO's backend closed")
	c.sendOption(7, exportData("small", 3))
	if ei := c.readInfoReplies(7); ei.size != 1<<20 {
		t.Errorf("GO: %+v", ei)
	}
	c.pread(0, 512)
}

func TestHandshakeUnknownOptionsThenGo(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	for _, opt := range []uint32{4, 11, 12, 42, 0xffffffff} {
		c.sendOption(opt, []byte("some data the server must skip"))
		r := c.expectOptReply(opt, tErrUnsup)
		if len(r.data) == 0 {
			t.Errorf("ERR_UNSUP for %d without a message", opt)
		}
	}
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
	c.pread(0, 4096)
}

func TestHandshakeStartTLSRefused(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(5, nil)
	c.expectOptReply(5, tErrPolicy)
	c.sendOption(5, []byte{1})
	c.expectOptReply(5, tErrInvalid)
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
}

func TestHandshakeStructuredReplyWithDataInvalid(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(8, []byte{0})
	c.expectOptReply(8, tErrInvalid)
	c.sendOption(7, exportData("disk"))
	if ei := c.readInfoReplies(7); ei.flags != flagsSimple {
		t.Errorf("flags %#x after a refused STRUCTURED_REPLY, want %#x", ei.flags, flagsSimple)
	}
}

func TestHandshakeExportName(t *testing.T) {
	for _, tc := range []struct {
		name       string
		flags      uint32
		structured bool
	}{
		{"no-zeroes", 3, false},
		{"zeroes", 1, false},
		{"non-fixed-client", 0, false},
		{"structured-first", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			c := dial(t, ts.addr)
			c.greet(tc.flags)
			wantFlags := uint16(flagsSimple)
			if tc.structured {
				c.sendOption(8, nil)
				c.expectOptReply(8, tAck)
				wantFlags = flagsStructured
			}
			c.sendOption(1, []byte("disk"))
			r := c.readFull(10)
			if size, f := binary.BigEndian.Uint64(r), binary.BigEndian.Uint16(r[8:]); size != 64<<20 || f != wantFlags {
				t.Fatalf("EXPORT_NAME reply size %d flags %#x, want %d %#x", size, f, 64<<20, wantFlags)
			}
			if tc.flags&2 == 0 {
				if z := c.readFull(124); !bytes.Equal(z, make([]byte, 124)) {
					t.Fatalf("padding %x, want 124 zeroes", z)
				}
			}
			// The next bytes must be the reply to our first request.
			c.send(0, cmdRead, 99, 0, 512, nil)
			rep := c.readReply()
			if rep.cookie != 99 || rep.simple == tc.structured {
				t.Fatalf("first reply after EXPORT_NAME: %+v", rep)
			}
		})
	}
}

func TestHandshakeExportNameUnknownDrops(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(1, []byte("nope"))
	c.expectClosed()
	ts.log.waitFor(t, "handshake failed", "nope", "remote=127.0.0.1")
}

func TestHandshakeGoUnknownExportThenContinue(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(7, exportData("nope", 3))
	r := c.expectOptReply(7, tErrUnknown)
	if !strings.Contains(string(r.data), "nope") {
		t.Errorf("ERR_UNKNOWN message %q does not name the export", r.data)
	}
	c.sendOption(6, exportData("nope"))
	c.expectOptReply(6, tErrUnknown)
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
	c.pread(0, 512)
}

func TestHandshakeOpenFailureIsReportedAndNegotiationContinues(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(7, exportData("broken"))
	r := c.readOptReply()
	if r.typ&(1<<31) == 0 || !strings.Contains(string(r.data), "head nodes unreachable") {
		t.Fatalf("reply %#x %q, want an error carrying the Open error", r.typ, r.data)
	}
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
	ts.log.waitFor(t, "not available", "head nodes unreachable")
}

func TestHandshakeList(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(3, nil)
	var names []string
	for {
		r := c.readOptReply()
		if r.typ == tAck {
			break
		}
		if r.typ != tServer || len(r.data) < 4 {
			t.Fatalf("LIST reply %#x %x", r.typ, r.data)
		}
		n := binary.BigEndian.Uint32(r.data)
		if int(n) != len(r.data)-4 {
			t.Fatalf("REP_SERVER name length %d in %d bytes", n, len(r.data))
		}
		names = append(names, string(r.data[4:]))
	}
	if strings.Join(names, ",") != "disk,small" {
		t.Errorf("LIST gave %q", names)
	}
	c.sendOption(3, []byte("x"))
	c.expectOptReply(3, tErrInvalid)

	listErr := errors.New("no head node answered")
	ts.ex.listErr.Store(&listErr)
	c.sendOption(3, nil)
	r := c.readOptReply()
	if r.typ&(1<<31) == 0 || !strings.Contains(string(r.data), "no head node answered") {
		t.Errorf("failed LIST: %#x %q", r.typ, r.data)
	}
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
}

func TestHandshakeAbort(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(2, nil)
	c.expectOptReply(2, tAck)
	c.expectClosed()
}

func TestHandshakeOverlongOption(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(7, make([]byte, 64<<10+1))
	c.expectOptReply(7, tErrTooBig)
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)

	t.Run("huge", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.greet(3)
		h := append([]byte("IHAVEOPT"), 0, 0, 0, 7, 0x40, 0, 0, 0) // 1 GiB of data announced
		c.write(h)
		c.expectClosed()
	})
	t.Run("export-name", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.greet(3)
		c.sendOption(1, make([]byte, 64<<10+1))
		c.expectClosed()
	})
}

func TestHandshakeMalformedGo(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	for _, data := range [][]byte{
		nil,
		{0, 0, 0, 4, 'd', 'i', 's', 'k'},        // no info count
		{0, 0, 0, 99, 'd', 'i', 's', 'k', 0, 0}, // name longer than the data
		{0xff, 0xff, 0xff, 0xff, 0, 0},          // overflowing name length
		append(exportData("disk"), 0, 3),        // count 0 with a request after it
		{0, 0, 0, 0, 0, 2, 0, 3},                // count 2, one request
	} {
		c.sendOption(7, data)
		c.expectOptReply(7, tErrInvalid)
	}
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
}

func TestHandshakeMetaContext(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	// Only after structured replies.
	c.sendOption(10, metaData("disk", "base:allocation"))
	c.expectOptReply(10, tErrInvalid)
	c.sendOption(9, metaData("disk"))
	c.expectOptReply(9, tErrInvalid)

	c.sendOption(8, nil)
	c.expectOptReply(8, tAck)
	for _, queries := range [][]string{nil, {"base:"}, {"base:allocation"}, {"x-other:thing", "base:allocation"}} {
		c.sendOption(9, metaData("disk", queries...))
		r := c.expectOptReply(9, tMetaContext)
		if string(r.data[4:]) != "base:allocation" {
			t.Errorf("LIST_META_CONTEXT %q gave %q", queries, r.data[4:])
		}
		c.expectOptReply(9, tAck)
	}
	// Unknown namespaces select nothing.
	c.sendOption(10, metaData("disk", "qemu:dirty-bitmap:x"))
	c.expectOptReply(10, tAck)
	c.sendOption(9, append(metaData("disk"), 1)) // trailing byte
	c.expectOptReply(9, tErrInvalid)
	c.sendOption(10, metaData("disk", "base:allocation", "x-foo:bar"))
	r := c.expectOptReply(10, tMetaContext)
	if id := binary.BigEndian.Uint32(r.data); id == 0 || string(r.data[4:]) != "base:allocation" {
		t.Errorf("SET_META_CONTEXT reply %x", r.data)
	}
	c.expectOptReply(10, tAck)
	c.sendOption(7, exportData("disk"))
	if ei := c.readInfoReplies(7); ei.flags != flagsStructured {
		t.Errorf("flags %#x, want %#x", ei.flags, flagsStructured)
	}
	c.send(0, cmdBlockStatus, 5, 4096, 8192, nil)
	rep := c.readReply()
	if rep.simple || rep.typ != 5 || rep.flags != 1 || rep.cookie != 5 || len(rep.data) != 12 {
		t.Fatalf("BLOCK_STATUS reply %+v", rep)
	}
}

func TestHandshakeMetaContextForAnotherExport(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(8, nil)
	c.expectOptReply(8, tAck)
	c.sendOption(10, metaData("small", "base:allocation"))
	c.expectOptReply(10, tMetaContext)
	c.expectOptReply(10, tAck)
	c.sendOption(7, exportData("disk"))
	c.readInfoReplies(7)
	// The context was selected for another export: no block status.
	c.send(0, cmdBlockStatus, 5, 0, 4096, nil)
	rep := c.readReply()
	if errno, _ := chunkError(t, rep); errno != 22 {
		t.Fatalf("BLOCK_STATUS errno %d, want EINVAL", errno)
	}
}

func TestHandshakeBadClientFlagsDrop(t *testing.T) {
	ts := startServer(t, nil)
	for _, f := range []uint32{4, 0x80000000, 7} {
		c := dial(t, ts.addr)
		c.greet(f)
		c.expectClosed()
	}
	ts.log.waitFor(t, "unknown client flags")
}

func TestHandshakeBadOptionMagicDrops(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.addr)
	c.greet(3)
	c.write(append([]byte("IHAVEOPX"), 0, 0, 0, 7, 0, 0, 0, 0))
	c.expectClosed()
}

func TestHandshakeTooManyOptions(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.MaxOptions = 5 })
	c := dial(t, ts.addr)
	c.greet(3)
	for range 5 {
		c.sendOption(8, nil)
		c.expectOptReply(8, tAck)
	}
	c.sendOption(8, nil)
	c.expectClosed()
	ts.log.waitFor(t, "more than 5 options")
}

func TestHandshakeTimeout(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.HandshakeTimeout = 200 * time.Millisecond })
	c := dial(t, ts.addr)
	c.greet(3)
	c.sendOption(8, nil)
	c.expectOptReply(8, tAck)
	start := time.Now()
	c.expectClosed() // a client that goes quiet is dropped
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dropped after %v", d)
	}
	ts.log.waitFor(t, "handshake timed out")
	// The deadline does not carry over into transmission.
	c2 := connect(t, ts.addr, "disk", false, false)
	time.Sleep(400 * time.Millisecond)
	c2.pread(0, 512)
}

func waitUntil(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
