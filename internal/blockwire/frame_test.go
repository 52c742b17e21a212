package blockwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// validFrames are one frame of every shape, each with its data.
func validFrames() map[string]struct {
	f    Frame
	data []byte
} {
	w := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB
	return map[string]struct {
		f    Frame
		data []byte
	}{
		"read":          {Frame{Kind: KindRequest, ID: 1, Op: OpRead, VolumeID: 7, Offset: 4096, Length: 8192, Host: "h1", Generation: 3}, nil},
		"write":         {Frame{Kind: KindRequest, ID: 2, Op: OpWrite, VolumeID: 7, Offset: 1 << 40, FUA: true, Host: "h1", Generation: 3, Client: 0xfeedface, WriteOp: 9, OldestOp: 5, DataLen: len(w)}, w},
		"write-big":     {Frame{Kind: KindRequest, ID: 3, Op: OpWrite, VolumeID: ^uint64(0), DataLen: InlineDataBytes + 1}, make([]byte, InlineDataBytes+1)},
		"write-empty":   {Frame{Kind: KindRequest, ID: 4, Op: OpWrite}, nil},
		"write-resent":  {Frame{Kind: KindRequest, ID: 14, Op: OpWrite, VolumeID: 7, Client: 3, WriteOp: 2, OldestOp: 1, Resend: true, DataLen: len(w)}, w},
		"flush":         {Frame{Kind: KindRequest, ID: 5, Op: OpFlush, VolumeID: 1}, nil},
		"trim":          {Frame{Kind: KindRequest, ID: 6, Op: OpTrim, VolumeID: 1, Offset: 512, Length: 1 << 50}, nil},
		"zeroes":        {Frame{Kind: KindRequest, ID: 7, Op: OpWriteZeroes, Offset: 0, Length: 4096, NoHole: true, FUA: true}, nil},
		"reply-ok":      {Frame{Kind: KindReply, ID: 8}, nil},
		"reply-data":    {Frame{Kind: KindReply, ID: 9, DataLen: len(w)}, w},
		"reply-fenced":  {Frame{Kind: KindReply, ID: 10, Status: StatusFenced, Error: "volume v is attached to h2 (generation 4)"}, nil},
		"reply-unicode": {Frame{Kind: KindReply, ID: 11, Status: StatusIOError, Error: "écrit: ☃"}, nil},
		"ping":          {Frame{Kind: KindPing, ID: 12}, nil},
		"pong":          {Frame{Kind: KindPong, ID: ^uint64(0)}, nil},
		"host-max":      {Frame{Kind: KindRequest, ID: 13, Op: OpFlush, Host: strings.Repeat("h", MaxHostBytes)}, nil},
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for name, c := range validFrames() {
		t.Run(name, func(t *testing.T) {
			var w Writer
			if err := w.Append(&c.f, c.data); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := w.Flush(&out); err != nil {
				t.Fatal(err)
			}
			if want := HeaderBytes + len(c.f.Host) + len(c.f.Error) + len(c.data); out.Len() != want {
				t.Fatalf("encoded %d bytes, want %d", out.Len(), want)
			}
			r := NewReader(&out, 4096)
			var got Frame
			if err := r.Next(&got); err != nil {
				t.Fatal(err)
			}
			if got != c.f {
				t.Fatalf("read %+v\nwrote %+v", got, c.f)
			}
			data := make([]byte, got.DataLen)
			if err := r.ReadData(data); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, c.data) {
				t.Fatal("data differs")
			}
			if err := r.Next(&got); err != io.EOF {
				t.Fatalf("after the frame: %v, want io.EOF", err)
			}
		})
	}
}

// header returns a valid request header to break.
func header(mod func(b []byte)) []byte {
	b, err := AppendFrame(nil, &Frame{Kind: KindRequest, ID: 1, Op: OpWrite, VolumeID: 2, DataLen: 10})
	if err != nil {
		panic(err)
	}
	mod(b)
	return b
}

func TestDecodeHeaderRefuses(t *testing.T) {
	le := binary.LittleEndian
	reply := func(mod func(b []byte)) []byte {
		b, _ := AppendFrame(nil, &Frame{Kind: KindReply, ID: 1})
		mod(b)
		return b
	}
	cases := map[string][]byte{
		"short":               header(func(b []byte) {})[:HeaderBytes-1],
		"kind 0":              header(func(b []byte) { b[0] = 0 }),
		"kind 5":              header(func(b []byte) { b[0] = 5 }),
		"op 0":                header(func(b []byte) { b[1] = 0 }),
		"op 6":                header(func(b []byte) { b[1] = 6 }),
		"unknown flag":        header(func(b []byte) { b[2] = 0x04 }),
		"reserved 3":          header(func(b []byte) { b[3] = 1 }),
		"reserved 6":          header(func(b []byte) { b[6] = 1 }),
		"reserved 12":         header(func(b []byte) { b[15] = 1 }),
		"data too big":        header(func(b []byte) { le.PutUint32(b[8:], MaxDataBytes+1) }),
		"data on a read":      header(func(b []byte) { b[1] = byte(OpRead) }),
		"data on a flush":     header(func(b []byte) { b[1] = byte(OpFlush) }),
		"host too long":       header(func(b []byte) { le.PutUint16(b[4:], MaxHostBytes+1) }),
		"status 8":            reply(func(b []byte) { b[1] = 8 }),
		"error text in OK":    reply(func(b []byte) { le.PutUint16(b[4:], 1) }),
		"error too long":      reply(func(b []byte) { b[1] = byte(StatusIOError); le.PutUint16(b[4:], MaxErrorBytes+1) }),
		"data in a failure":   reply(func(b []byte) { b[1] = byte(StatusIOError); le.PutUint32(b[8:], 1) }),
		"reply flags":         reply(func(b []byte) { b[2] = flagFUA }),
		"reply volume":        reply(func(b []byte) { b[24] = 1 }),
		"reply generation":    reply(func(b []byte) { b[55] = 1 }),
		"ping code":           reply(func(b []byte) { b[0] = byte(KindPing); b[1] = 1 }),
		"ping data":           reply(func(b []byte) { b[0] = byte(KindPing); le.PutUint32(b[8:], 1) }),
		"pong text":           reply(func(b []byte) { b[0] = byte(KindPong); le.PutUint16(b[4:], 1) }),
		"ping with an offset": reply(func(b []byte) { b[0] = byte(KindPing); b[32] = 1 }),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var f Frame
			if _, err := DecodeHeader(b, &f); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeHeader: %v, want ErrMalformed", err)
			}
			r := NewReader(bytes.NewReader(append(b, make([]byte, 64)...)), 4096)
			if err := r.Next(&f); !errors.Is(err, ErrMalformed) && !(name == "short" && err == nil) {
				t.Fatalf("Reader.Next: %v, want ErrMalformed", err)
			}
		})
	}
}

func TestAppendFrameRefuses(t *testing.T) {
	cases := map[string]Frame{
		"kind 0":             {},
		"unknown op":         {Kind: KindRequest, Op: 9},
		"data on a read":     {Kind: KindRequest, Op: OpRead, DataLen: 1},
		"data too big":       {Kind: KindRequest, Op: OpWrite, DataLen: MaxDataBytes + 1},
		"negative data":      {Kind: KindRequest, Op: OpWrite, DataLen: -1},
		"host too long":      {Kind: KindRequest, Op: OpRead, Host: strings.Repeat("h", MaxHostBytes+1)},
		"host not UTF-8":     {Kind: KindRequest, Op: OpRead, Host: "h\xff"},
		"request error":      {Kind: KindRequest, Op: OpRead, Error: "x"},
		"request status":     {Kind: KindRequest, Op: OpRead, Status: StatusFenced},
		"reply with a host":  {Kind: KindReply, Host: "h"},
		"pong with an op id": {Kind: KindPong, WriteOp: 1},
		"reply offset":       {Kind: KindReply, Offset: 1},
		"OK with an error":   {Kind: KindReply, Error: "x"},
		"failure with data":  {Kind: KindReply, Status: StatusIOError, Error: "x", DataLen: 1},
		"unknown status":     {Kind: KindReply, Status: 42},
		"ping with data":     {Kind: KindPing, DataLen: 1},
		"pong with an op":    {Kind: KindPong, Op: OpRead},
		"resend of nothing":  {Kind: KindRequest, Op: OpWrite, Resend: true},
		"reply resent":       {Kind: KindReply, Resend: true},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := AppendFrame([]byte("x"), &f)
			if !errors.Is(err, ErrMalformed) || string(b) != "x" {
				t.Fatalf("AppendFrame: %q, %v: want ErrMalformed and dst unchanged", b, err)
			}
		})
	}
	var w Writer
	if err := w.Append(&Frame{Kind: KindRequest, Op: OpWrite, DataLen: 3}, []byte("ab")); !errors.Is(err, ErrMalformed) || w.Buffered() != 0 {
		t.Fatalf("Append with data of the wrong length: %v, %d buffered", err, w.Buffered())
	}
}

// A reply's error text is cut to the bound at a character boundary and
// made valid UTF-8, rather than failing the reply.
func TestReplyErrorTextIsCut(t *testing.T) {
	long := strings.Repeat("é", MaxErrorBytes) // 2 bytes each
	for in, want := range map[string]string{
		long:            long[:MaxErrorBytes],
		"x" + long:      "x" + long[:MaxErrorBytes-2], // not half an é
		"bad \xff byte": "bad \uFFFD byte",
	} {
		b, err := AppendFrame(nil, &Frame{Kind: KindReply, Status: StatusIOError, Error: in})
		if err != nil {
			t.Fatal(err)
		}
		r := NewReader(bytes.NewReader(b), 4096)
		var f Frame
		if err := r.Next(&f); err != nil {
			t.Fatal(err)
		}
		if f.Error != want {
			t.Errorf("error text of %d bytes read back as %d bytes: %.20q", len(in), len(f.Error), f.Error)
		}
	}
}

func TestPreamble(t *testing.T) {
	p := AppendPreamble(nil)
	if len(p) != PreambleBytes || string(p) != "BLSTIO\x04\x00" {
		t.Fatalf("preamble %q", p)
	}
	if v, err := ParsePreamble(p); err != nil || v != Version {
		t.Fatalf("ParsePreamble: %d, %v", v, err)
	}
	if v, err := ParsePreamble([]byte("BLSTIO\x01\x00")); err != nil || v != 1 {
		t.Fatalf("another version: %d, %v", v, err)
	}
	// A gRPC server's first bytes: an HTTP/2 SETTINGS frame.
	for _, b := range [][]byte{[]byte("\x00\x00\x06\x04\x00\x00\x00\x00\x00"), []byte("PRI * HTTP/2.0"), []byte("BLSTI"), nil} {
		if _, err := ParsePreamble(b); !errors.Is(err, ErrNotBlockwire) {
			t.Errorf("ParsePreamble(%q): %v, want ErrNotBlockwire", b, err)
		}
	}
}

func TestReaderEnds(t *testing.T) {
	var w Writer
	w.Append(&Frame{Kind: KindRequest, ID: 1, Op: OpWrite, Host: "h", DataLen: 4}, []byte("abcd"))
	w.Append(&Frame{Kind: KindReply, ID: 2, Status: StatusIOError, Error: "no"}, nil)
	var buf bytes.Buffer
	w.Flush(&buf)
	whole := buf.Bytes()

	// Every cut inside a frame is io.ErrUnexpectedEOF; at a boundary, io.EOF.
	first := HeaderBytes + 1 + 4
	for cut := 0; cut <= len(whole); cut++ {
		r := NewReader(bytes.NewReader(whole[:cut]), 16)
		var err error
		var f Frame
		for err == nil {
			if err = r.Next(&f); err == nil && f.DataLen > 0 {
				err = r.ReadData(make([]byte, f.DataLen))
			}
		}
		want := io.ErrUnexpectedEOF
		if cut == 0 || cut == first || cut == len(whole) {
			want = io.EOF
		}
		if err != want {
			t.Errorf("cut at %d: %v, want %v", cut, err, want)
		}
	}

	// Data not read is skipped by the next Next.
	r := NewReader(bytes.NewReader(whole), 16)
	var f Frame
	if err := r.Next(&f); err != nil || f.DataLen != 4 {
		t.Fatal(f, err)
	}
	if err := r.ReadData(make([]byte, 3)); err == nil {
		t.Fatal("ReadData of the wrong length accepted")
	}
	if err := r.Next(&f); err != nil || f.ID != 2 || f.Error != "no" {
		t.Fatal(f, err)
	}
}

// Reading requests that repeat their host allocates nothing.
func TestReaderDoesNotAllocate(t *testing.T) {
	var w Writer
	data := make([]byte, 4096)
	for i := range 100 {
		w.Append(&Frame{Kind: KindRequest, ID: uint64(i), Op: OpWrite, Host: "host-1", Generation: 2, DataLen: len(data)}, data)
	}
	var stream bytes.Buffer
	w.Flush(&stream)
	src := bytes.NewReader(stream.Bytes())
	r := NewReader(src, 64<<10)
	var f Frame
	r.Next(&f) // the first one keeps the host
	r.ReadData(data)
	allocs := testing.AllocsPerRun(50, func() {
		if err := r.Next(&f); err != nil {
			t.Fatal(err)
		}
		if err := r.ReadData(data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations a frame", allocs)
	}
}
