package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/internal/bufpool"
)

// Unit tests of the pure codec: byte layouts against hand-written
// expectations, and every decoder on short, overflowing and inconsistent
// input.

func TestGreetingBytes(t *testing.T) {
	want := []byte{'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C', 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 3}
	if got := appendGreeting(nil); !bytes.Equal(got, want) {
		t.Fatalf("greeting %x, want %x", got, want)
	}
}

func TestParseClientFlags(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want uint32
		ok   bool
	}{
		{[]byte{0, 0, 0, 0}, 0, true},
		{[]byte{0, 0, 0, 1}, 1, true},
		{[]byte{0, 0, 0, 3}, 3, true},
		{[]byte{0, 0, 0, 4}, 4, false},
		{[]byte{0x80, 0, 0, 3}, 0x80000003, false},
		{[]byte{0, 0, 3}, 0, false},
	} {
		got, err := parseClientFlags(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseClientFlags(%x) = %#x, %v", tc.in, got, err)
		}
	}
}

func TestParseOptionHeader(t *testing.T) {
	b := append([]byte("IHAVEOPT"), 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff)
	h, err := parseOptionHeader(b)
	if err != nil || h.Option != 7 || h.Length != 0xffffffff {
		t.Fatalf("%+v %v", h, err)
	}
	if _, err := parseOptionHeader(b[:15]); !errors.Is(err, errShort) {
		t.Errorf("short header: %v", err)
	}
	b[0] = 'X'
	if _, err := parseOptionHeader(b); !errors.Is(err, errBadMagic) {
		t.Errorf("bad magic: %v", err)
	}
}

func TestOptionReplyEncoding(t *testing.T) {
	got := appendOptionReply(nil, 7, repInfo, []byte{1, 2})
	want := []byte{0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 2, 1, 2}
	if !bytes.Equal(got, want) {
		t.Fatalf("option reply %x, want %x", got, want)
	}
	e := appendOptionError(nil, 1, repErrUnknown, "nope")
	if binary.BigEndian.Uint32(e[12:]) != 0x80000006 || binary.BigEndian.Uint32(e[16:]) != 4 || string(e[20:]) != "nope" {
		t.Fatalf("error reply %x", e)
	}
	if got := appendInfoExport(nil, 0x0102030405060708, 0x16d); !bytes.Equal(got, []byte{0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0x6d}) {
		t.Errorf("INFO_EXPORT %x", got)
	}
	if got := appendInfoBlockSize(nil, 512, 4096, 32<<20); !bytes.Equal(got, []byte{0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0}) {
		t.Errorf("INFO_BLOCK_SIZE %x", got)
	}
	if got := appendServerData(nil, "ab"); !bytes.Equal(got, []byte{0, 0, 0, 2, 'a', 'b'}) {
		t.Errorf("REP_SERVER %x", got)
	}
	if got := appendMetaContextData(nil, 1, "base:allocation"); !bytes.Equal(got, append([]byte{0, 0, 0, 1}, "base:allocation"...)) {
		t.Errorf("REP_META_CONTEXT %x", got)
	}
	if got := appendExportNameReply(nil, 1<<20, 0x16d, true); !bytes.Equal(got, []byte{0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x6d}) {
		t.Errorf("EXPORT_NAME reply %x", got)
	}
	if got := appendExportNameReply(nil, 1<<20, 0x16d, false); len(got) != 134 || !bytes.Equal(got[10:], make([]byte, 124)) {
		t.Errorf("EXPORT_NAME reply with zeroes: %d bytes", len(got))
	}
}

func TestTransmissionFlags(t *testing.T) {
	if f := transmissionFlags(false); f != 0x16d {
		t.Errorf("flags %#x, want 0x16d", f)
	}
	if f := transmissionFlags(true); f != 0x1ed {
		t.Errorf("structured flags %#x, want 0x1ed", f)
	}
	for _, f := range []uint16{transmissionFlags(false), transmissionFlags(true)} {
		if f&tflagHasFlags == 0 || f&(tflagReadOnly|tflagRotational|tflagSendCache|tflagSendFastZero|tflagSendResize) != 0 {
			t.Errorf("flags %#x", f)
		}
	}
}

func TestParseExportRequest(t *testing.T) {
	r, err := parseExportRequest(exportData("vol-1", 3, 1))
	if err != nil || r.Name != "vol-1" || !slices.Equal(r.Infos, []uint16{3, 1}) {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseExportRequest(exportData(""))
	if err != nil || r.Name != "" || len(r.Infos) != 0 {
		t.Fatalf("default export: %+v %v", r, err)
	}
	long := exportData(strings.Repeat("x", 4097))
	for name, in := range map[string][]byte{
		"empty":              nil,
		"five bytes":         {0, 0, 0, 0, 0},
		"name past the end":  {0, 0, 0, 5, 'a', 0, 0},
		"name length 2^32-1": {0xff, 0xff, 0xff, 0xff, 0, 0},
		"count too large":    {0, 0, 0, 0, 0, 2, 0, 3},
		"trailing byte":      append(exportData("a", 3), 0),
		"odd tail":           append(exportData("a"), 0),
		"name over 4096":     long,
	} {
		if _, err := parseExportRequest(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseMetaContextRequest(t *testing.T) {
	r, err := parseMetaContextRequest(metaData("disk", "base:allocation", "x-a:b"))
	if err != nil || r.Export != "disk" || !slices.Equal(r.Queries, []string{"base:allocation", "x-a:b"}) {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseMetaContextRequest(metaData("disk"))
	if err != nil || len(r.Queries) != 0 {
		t.Fatalf("no queries: %+v %v", r, err)
	}
	for name, in := range map[string][]byte{
		"empty":               nil,
		"seven bytes":         {0, 0, 0, 0, 0, 0, 0},
		"name past the end":   {0, 0, 0, 9, 'a', 0, 0, 0, 0},
		"many queries":        {0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
		"query past the end":  append(metaData(""), 0, 0, 0, 1, 0, 0, 0, 5, 'a'),
		"query count too big": {0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0},
		"trailing bytes":      append(metaData("d", "base:"), 1),
		"query over 4096":     metaData("d", strings.Repeat("q", 4097)),
	} {
		if _, err := parseMetaContextRequest(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestMatchMetaContexts(t *testing.T) {
	for _, tc := range []struct {
		queries []string
		list    bool
		want    []string
	}{
		{nil, true, []string{"base:allocation"}},
		{nil, false, nil},
		{[]string{"base:"}, true, []string{"base:allocation"}},
		{[]string{"base:"}, false, nil},
		{[]string{"base:allocation"}, false, []string{"base:allocation"}},
		{[]string{"qemu:dirty-bitmap:a", "base:allocation", "base:allocation"}, false, []string{"base:allocation"}},
		{[]string{"nocolon"}, true, nil},
		{[]string{"base:allocationx"}, false, nil},
	} {
		if got := matchMetaContexts(tc.queries, tc.list); !slices.Equal(got, tc.want) {
			t.Errorf("match(%q, list=%v) = %q, want %q", tc.queries, tc.list, got, tc.want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	b := appendRequest(nil, request{Flags: 1, Type: cmdWrite, Cookie: 0xdeadbeef, Offset: 1 << 40, Length: 4096})
	want := []byte{0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("request %x, want %x", b, want)
	}
	r, err := parseRequest(b)
	if err != nil || r != (request{Flags: 1, Type: cmdWrite, Cookie: 0xdeadbeef, Offset: 1 << 40, Length: 4096}) {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := parseRequest(b[:27]); !errors.Is(err, errShort) {
		t.Errorf("short: %v", err)
	}
	b[3] = 0x14
	if _, err := parseRequest(b); !errors.Is(err, errBadMagic) {
		t.Errorf("bad magic: %v", err)
	}
}

func TestValidateRequest(t *testing.T) {
	const size = 1 << 20
	plain := exportState{Size: size}
	structured := exportState{Size: size, Structured: true}
	meta := exportState{Size: size, Structured: true, MetaContext: true}
	for _, tc := range []struct {
		r     request
		st    exportState
		errno Errno
	}{
		{request{Type: cmdRead, Length: 512}, plain, 0},
		{request{Type: cmdRead, Offset: size - 512, Length: 512}, plain, 0},
		{request{Type: cmdRead, Offset: size - 511, Length: 512}, plain, EINVAL},
		{request{Type: cmdRead, Offset: size, Length: 0}, plain, 0},
		{request{Type: cmdRead, Offset: size + 1, Length: 0}, plain, EINVAL},
		{request{Type: cmdRead, Offset: ^uint64(0) - 10, Length: 512}, plain, EINVAL},
		{request{Type: cmdRead, Length: MaxBlockSize + 1}, exportState{Size: 1 << 30}, EINVAL},
		{request{Type: cmdRead, Length: MaxBlockSize}, exportState{Size: 1 << 30}, 0},
		{request{Type: cmdRead, Flags: cmdFlagDF, Length: 512}, plain, EINVAL},
		{request{Type: cmdRead, Flags: cmdFlagDF, Length: 512}, structured, 0},
		{request{Type: cmdRead, Flags: cmdFlagFUA, Length: 512}, plain, 0},
		{request{Type: cmdRead, Flags: cmdFlagNoHole, Length: 512}, plain, EINVAL},
		{request{Type: cmdWrite, Offset: size - 511, Length: 512}, plain, ENOSPC},
		{request{Type: cmdWrite, Offset: ^uint64(0), Length: 1}, plain, ENOSPC},
		{request{Type: cmdWrite, Flags: cmdFlagFUA, Length: 512}, plain, 0},
		{request{Type: cmdWrite, Flags: cmdFlagDF, Length: 512}, structured, EINVAL},
		{request{Type: cmdWriteZeroes, Flags: cmdFlagNoHole | cmdFlagFUA, Length: size}, plain, 0},
		{request{Type: cmdWriteZeroes, Flags: cmdFlagFastZero, Length: 512}, plain, EINVAL},
		{request{Type: cmdWriteZeroes, Offset: 1, Length: size}, plain, ENOSPC},
		{request{Type: cmdTrim, Length: size}, plain, 0},
		{request{Type: cmdTrim, Offset: 1, Length: size}, plain, EINVAL},
		{request{Type: cmdTrim, Flags: cmdFlagNoHole, Length: 1}, plain, EINVAL},
		{request{Type: cmdFlush, Offset: 1 << 62, Length: 1 << 31}, plain, 0},
		{request{Type: cmdFlush, Flags: cmdFlagReqOne}, plain, EINVAL},
		{request{Type: cmdCache, Length: 512}, plain, EINVAL},
		{request{Type: cmdBlockStatus, Length: 512}, structured, EINVAL},
		{request{Type: cmdBlockStatus, Length: 512, Flags: cmdFlagReqOne}, meta, 0},
		{request{Type: cmdBlockStatus, Length: 0}, meta, EINVAL},
		{request{Type: cmdBlockStatus, Offset: size - 1, Length: 2}, meta, EINVAL},
		{request{Type: 8}, plain, EINVAL},
		{request{Type: 0xffff}, plain, EINVAL},
		{request{Type: cmdRead, Flags: cmdFlagPayloadLen, Length: 1}, plain, EINVAL},
		{request{Type: cmdRead, Flags: 1 << 15, Length: 1}, plain, EINVAL},
	} {
		errno, msg := validateRequest(tc.r, tc.st)
		if errno != tc.errno || (errno != 0) != (msg != "") {
			t.Errorf("validate(%+v, %+v) = %v %q, want %v", tc.r, tc.st, errno, msg, tc.errno)
		}
	}
}

func TestReplyEncoding(t *testing.T) {
	if got := appendSimpleReply(nil, EINVAL, 0x0102); !bytes.Equal(got, []byte{0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 1, 2}) {
		t.Errorf("simple reply %x", got)
	}
	got := appendOffsetDataHeader(nil, replyFlagDone, 9, 4096, 512)
	want := []byte{0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 2, 8, 0, 0, 0, 0, 0, 0, 0x10, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("OFFSET_DATA header %x, want %x", got, want)
	}
	got = appendErrorChunk(nil, 9, ENOSPC, "full")
	want = []byte{0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0, 28, 0, 4, 'f', 'u', 'l', 'l'}
	if !bytes.Equal(got, want) {
		t.Errorf("ERROR chunk %x, want %x", got, want)
	}
	got = appendBlockStatusChunk(nil, 9, 1, 65536, 0)
	want = []byte{0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 12, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("BLOCK_STATUS chunk %x, want %x", got, want)
	}
}

func TestClipMessage(t *testing.T) {
	for _, in := range []string{
		"plain",
		strings.Repeat("é", 1000), // 2000 bytes: cut on a rune boundary
		"bad \xff utf8",
		"nul\x00byte",
		strings.Repeat("\xff", 5000),
	} {
		got := clipMessage(in)
		if len(got) > maxErrorMessageLen || !utf8.ValidString(got) || strings.IndexByte(got, 0) >= 0 {
			t.Errorf("clipMessage(%.20q...) = %d bytes, valid %v", in, len(got), utf8.ValidString(got))
		}
	}
	if clipMessage("plain") != "plain" {
		t.Error("changed a valid message")
	}
}

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Errno
	}{
		{nil, 0},
		{EPERM, EPERM},
		{fmt.Errorf("%w: volume full", ENOSPC), ENOSPC},
		// A head node whose disk is full, as the agent's device says it.
		{fmt.Errorf("%w: head node disk full", blockdev.ErrNoSpace), ENOSPC},
		{fmt.Errorf("%w: handed over", blockdev.ErrNotPermitted), EPERM},
		{fmt.Errorf("outer: %w", fmt.Errorf("%w: bad", EINVAL)), EINVAL},
		{errors.New("anything else"), EIO},
		{Errno(99), EIO},
		{Errno(0), EIO},
	} {
		if got := errnoOf(tc.err); got != tc.want {
			t.Errorf("errnoOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if !errors.Is(fmt.Errorf("%w: x", ESHUTDOWN), ESHUTDOWN) {
		t.Error("errors.Is")
	}
	for _, e := range []Errno{EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN, 99} {
		if !strings.HasPrefix(e.Error(), "nbd: ") {
			t.Errorf("%d: %q", e, e.Error())
		}
	}
	if uint32(EINVAL) != 22 || uint32(ENOSPC) != 28 || uint32(ESHUTDOWN) != 108 || uint32(EOVERFLOW) != 75 || uint32(ENOTSUP) != 95 {
		t.Error("errno values")
	}
}

func TestBufPool(t *testing.T) {
	for _, n := range []int{1, 511, 4096, 4097, 1 << 20, MaxBlockSize} {
		p := bufpool.Get(n)
		if len(*p) < n || cap(*p)&(cap(*p)-1) != 0 {
			t.Errorf("bufpool.Get(%d): len %d cap %d", n, len(*p), cap(*p))
		}
		bufpool.Put(p)
	}
	bufpool.Put(nil)
	odd := make([]byte, 5000)
	bufpool.Put(&odd) // not a size class: dropped
}
