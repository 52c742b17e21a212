package sledwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
)

func TestPreamble(t *testing.T) {
	p := AppendPreamble(nil)
	if len(p) != PreambleBytes || string(p) != "BLSTSW\x01\x00" {
		t.Fatalf("preamble %q", p)
	}
	if v, err := ParsePreamble(p); err != nil || v != Version {
		t.Fatalf("ParsePreamble: %d, %v", v, err)
	}
	if got := AppendPreamble([]byte("x")); string(got) != "xBLSTSW\x01\x00" {
		t.Fatalf("AppendPreamble to a prefix: %q", got)
	}
	for b, want := range map[string]uint16{"BLSTSW\x02\x00": 2, "BLSTSW\x00\x01": 256, "BLSTSW\x00\x00": 0} {
		if v, err := ParsePreamble([]byte(b)); err != nil || v != want {
			t.Errorf("ParsePreamble(%q): %d, %v; want %d", b, v, err, want)
		}
	}
	for _, b := range [][]byte{
		[]byte("BLSTIO\x01\x00"),                            // blockwire's
		[]byte("BLSTRW\x01\x00"),                            // another magic
		[]byte("blstsw\x01\x00"),                            // case
		[]byte("PRI * HT"),                                  // HTTP/2's preface
		[]byte("\x00\x00\x06\x04\x00\x00\x00\x00"),          // a SETTINGS frame
		p[:PreambleBytes-1],                                 // short
		append(AppendPreamble(nil), 0),                      // long
		append(AppendPreamble(nil), AppendPreamble(nil)...), // two
		[]byte("BLSTSW"),
		nil,
	} {
		if v, err := ParsePreamble(b); !errors.Is(err, ErrNotSledwire) || v != 0 {
			t.Errorf("ParsePreamble(%q): %d, %v; want ErrNotSledwire", b, v, err)
		}
	}
}

func TestStrings(t *testing.T) {
	for v, want := range map[fmt.Stringer]string{
		KindRequest: "request", KindReply: "reply", KindPing: "ping", KindPong: "pong", Kind(0): "kind 0", Kind(9): "kind 9",
		OpPutShard: "put shard", Op(0): "op 0", Op(7): "op 7",
	} {
		if got := v.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", v, got, want)
		}
	}
}

// validFrames are one frame of every shape.
func validFrames() []struct {
	name string
	f    Frame
} {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	return []struct {
		name string
		f    Frame
	}{
		{"request", Frame{Kind: KindRequest, Op: OpPutShard, ID: 1, Meta: []byte("\x0a\x03seg\x10\x02"), Data: data}},
		{"request-meta-only", Frame{Kind: KindRequest, Op: OpPutShard, ID: 2, Meta: []byte("m")}},
		{"request-data-only", Frame{Kind: KindRequest, Op: OpPutShard, ID: 3, Data: []byte("d")}},
		{"request-empty", Frame{Kind: KindRequest, Op: OpPutShard, ID: 4}},
		{"request-unknown-op", Frame{Kind: KindRequest, Op: 200, ID: 5, Meta: []byte("new")}},
		{"request-meta-max", Frame{Kind: KindRequest, Op: OpPutShard, ID: 6, Meta: bytes.Repeat([]byte{0xa5}, MaxMetaBytes)}},
		{"reply-ok", Frame{Kind: KindReply, Op: OpPutShard, ID: 1, Meta: []byte("\x08\x01")}},
		{"reply-ok-data", Frame{Kind: KindReply, Op: OpPutShard, ID: 7, Data: data[:4096]}},
		{"reply-error", Frame{Kind: KindReply, Op: OpPutShard, Status: 5, ID: 2, Meta: []byte("shard not found")}},
		{"reply-unimplemented", Frame{Kind: KindReply, Op: 200, Status: StatusUnimplemented, ID: 5, Meta: []byte("op 200")}},
		{"reply-status-max", Frame{Kind: KindReply, Op: OpPutShard, Status: ^uint16(0), ID: ^uint64(0)}},
		{"ping", Frame{Kind: KindPing, ID: 12}},
		{"ping-id-0", Frame{Kind: KindPing}},
		{"pong", Frame{Kind: KindPong, ID: ^uint64(0)}},
	}
}

// sameFrame says how got differs from want (nil and empty meta and data
// are alike).
func sameFrame(got, want Frame) error {
	if got.Kind != want.Kind || got.Op != want.Op || got.Status != want.Status || got.ID != want.ID {
		return fmt.Errorf("read %v %v status %d id %d, want %v %v status %d id %d", got.Kind, got.Op, got.Status, got.ID, want.Kind, want.Op, want.Status, want.ID)
	}
	if !bytes.Equal(got.Meta, want.Meta) {
		return fmt.Errorf("meta of %d bytes, want %d (%.20q, want %.20q)", len(got.Meta), len(want.Meta), got.Meta, want.Meta)
	}
	if !bytes.Equal(got.Data, want.Data) {
		return fmt.Errorf("data of %d bytes differ from the %d written", len(got.Data), len(want.Data))
	}
	return nil
}

func TestRoundTrip(t *testing.T) {
	for _, c := range validFrames() {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := NewWriter(&buf, 0).Write(c.f); err != nil {
				t.Fatal(err)
			}
			if want := HeaderBytes + len(c.f.Meta) + len(c.f.Data); buf.Len() != want {
				t.Fatalf("encoded %d bytes, want %d", buf.Len(), want)
			}
			h := buf.Bytes()[:HeaderBytes]
			if !bytes.Equal(h[12:16], []byte{0, 0, 0, 0}) {
				t.Fatalf("reserved bytes %x", h[12:16])
			}
			le := binary.LittleEndian
			if h[0] != byte(c.f.Kind) || h[1] != byte(c.f.Op) || le.Uint16(h[2:]) != c.f.Status ||
				le.Uint32(h[4:]) != uint32(len(c.f.Meta)) || le.Uint32(h[8:]) != uint32(len(c.f.Data)) || le.Uint64(h[16:]) != c.f.ID {
				t.Fatalf("header %x does not lay out %+v", h, c.f)
			}
			r := NewReader(&buf, 4096, nil)
			got, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			if err := sameFrame(got, c.f); err != nil {
				t.Fatal(err)
			}
			if len(c.f.Meta) == 0 && got.Meta != nil || len(c.f.Data) == 0 && got.Data != nil {
				t.Fatalf("empty parts read as %v and %v, want nil", got.Meta, got.Data)
			}
			if _, err := r.Next(); err != io.EOF {
				t.Fatalf("after the frame: %v, want io.EOF", err)
			}
		})
	}
}

// Frames back to back on one stream read back in order, whatever the
// reader's buffer size.
func TestStream(t *testing.T) {
	frames := validFrames()
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	for _, c := range frames {
		if err := w.Write(c.f); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	stream := buf.Bytes()
	for _, size := range []int{1, 16, 4096, 1 << 20} {
		r := NewReader(bytes.NewReader(stream), size, nil)
		var kept []Frame
		for i, c := range frames {
			got, err := r.Next()
			if err != nil {
				t.Fatalf("buffer %d, frame %d (%s): %v", size, i, c.name, err)
			}
			if err := sameFrame(got, c.f); err != nil {
				t.Fatalf("buffer %d, frame %d (%s): %v", size, i, c.name, err)
			}
			kept = append(kept, got)
		}
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("buffer %d, after the last frame: %v, want io.EOF", size, err)
		}
		// Meta and data are the caller's: the later frames did not
		// overwrite the earlier ones.
		for i, c := range frames {
			if err := sameFrame(kept[i], c.f); err != nil {
				t.Fatalf("buffer %d, frame %d (%s) after reading on: %v", size, i, c.name, err)
			}
		}
	}
}

// countingWriter counts the calls to Write.
type countingWriter struct {
	calls int
	bytes.Buffer
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(b)
}

func TestWriteRefuses(t *testing.T) {
	cases := map[string]Frame{
		"kind 0":                {Op: OpPutShard},
		"kind 5":                {Kind: 5, Op: OpPutShard},
		"kind 255":              {Kind: 255},
		"request op 0":          {Kind: KindRequest, Meta: []byte("m"), Data: []byte("d")},
		"reply op 0":            {Kind: KindReply, Meta: []byte("m")},
		"request with status":   {Kind: KindRequest, Op: OpPutShard, Status: 1},
		"request unimplemented": {Kind: KindRequest, Op: OpPutShard, Status: StatusUnimplemented},
		"request meta too big":  {Kind: KindRequest, Op: OpPutShard, Meta: make([]byte, MaxMetaBytes+1)},
		"reply meta too big":    {Kind: KindReply, Op: OpPutShard, Status: 13, Meta: make([]byte, MaxMetaBytes+1)},
		"request data too big":  {Kind: KindRequest, Op: OpPutShard, Data: make([]byte, MaxDataBytes+1)},
		"ping with data":        {Kind: KindPing, Data: []byte("d")},
		"ping with meta":        {Kind: KindPing, Meta: []byte("m")},
		"ping with an op":       {Kind: KindPing, Op: OpPutShard},
		"ping with a status":    {Kind: KindPing, Status: 1},
		"pong with data":        {Kind: KindPong, ID: 1, Data: []byte("d")},
		"pong with meta":        {Kind: KindPong, ID: 1, Meta: []byte("m")},
		"pong with an op":       {Kind: KindPong, Op: OpPutShard},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			var out countingWriter
			if err := NewWriter(&out, 0).Write(f); err == nil {
				t.Fatal("written")
			}
			if out.calls != 0 || out.Len() != 0 {
				t.Fatalf("%d bytes written in %d calls", out.Len(), out.calls)
			}
		})
	}
	// A Writer that refused a frame writes the next one whole.
	var out bytes.Buffer
	w := NewWriter(&out, 0)
	if err := w.Write(Frame{Kind: KindPing, Data: []byte("d")}); err == nil {
		t.Fatal("ping with data written")
	}
	want := Frame{Kind: KindPong, ID: 3}
	if err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	got, err := NewReader(&out, 64, nil).Next()
	if err != nil {
		t.Fatal(err)
	}
	if err := sameFrame(got, want); err != nil {
		t.Fatal(err)
	}
}

// sink counts the bytes written to it and keeps the first HeaderBytes.
type sink struct {
	n    int
	head []byte
}

func (s *sink) Write(b []byte) (int, error) {
	if n := HeaderBytes - len(s.head); n > 0 {
		s.head = append(s.head, b[:min(n, len(b))]...)
	}
	s.n += len(b)
	return len(b), nil
}

// The largest data a frame carries are written (to a sink: the pages of
// the buffer are never touched).
func TestWriteMaxData(t *testing.T) {
	var s sink
	if err := NewWriter(&s, 0).Write(Frame{Kind: KindRequest, Op: OpPutShard, Data: make([]byte, MaxDataBytes)}); err != nil {
		t.Fatal(err)
	}
	if s.n != HeaderBytes+MaxDataBytes || binary.LittleEndian.Uint32(s.head[8:]) != MaxDataBytes {
		t.Fatalf("%d bytes written, header %x", s.n, s.head)
	}
}

// validHeader returns the header of a request with meta and data, to
// break.
func validHeader(mod func(h []byte)) []byte {
	h := make([]byte, HeaderBytes)
	encodeHeader(h, &Frame{Kind: KindRequest, Op: OpPutShard, ID: 9, Meta: make([]byte, 3), Data: make([]byte, 5)})
	mod(h)
	return h
}

func TestMalformed(t *testing.T) {
	le := binary.LittleEndian
	cases := map[string][]byte{
		"reserved 12":           validHeader(func(h []byte) { h[12] = 1 }),
		"reserved 15":           validHeader(func(h []byte) { h[15] = 0x80 }),
		"kind 0":                validHeader(func(h []byte) { h[0] = 0 }),
		"kind 5":                validHeader(func(h []byte) { h[0] = 5 }),
		"kind 255":              validHeader(func(h []byte) { h[0] = 255 }),
		"request op 0":          validHeader(func(h []byte) { h[1] = 0 }),
		"reply op 0":            validHeader(func(h []byte) { h[0] = byte(KindReply); h[1] = 0 }),
		"request with status":   validHeader(func(h []byte) { le.PutUint16(h[2:], 1) }),
		"request status 0x100":  validHeader(func(h []byte) { le.PutUint16(h[2:], 0x100) }),
		"meta MaxMetaBytes+1":   validHeader(func(h []byte) { le.PutUint32(h[4:], MaxMetaBytes+1) }),
		"meta 4 GiB-1":          validHeader(func(h []byte) { le.PutUint32(h[4:], ^uint32(0)) }),
		"data MaxDataBytes+1":   validHeader(func(h []byte) { le.PutUint32(h[8:], MaxDataBytes+1) }),
		"data 4 GiB-1":          validHeader(func(h []byte) { le.PutUint32(h[8:], ^uint32(0)) }),
		"reply meta too big":    validHeader(func(h []byte) { h[0] = byte(KindReply); le.PutUint32(h[4:], MaxMetaBytes+1) }),
		"reply data too big":    validHeader(func(h []byte) { h[0] = byte(KindReply); le.PutUint32(h[8:], MaxDataBytes+1) }),
		"ping with meta length": validHeader(func(h []byte) { h[0] = byte(KindPing); h[1] = 0; le.PutUint32(h[8:], 0) }),
		"ping with data length": validHeader(func(h []byte) { h[0] = byte(KindPing); h[1] = 0; le.PutUint32(h[4:], 0) }),
		"pong with an op":       validHeader(func(h []byte) { h[0] = byte(KindPong); le.PutUint32(h[4:], 0); le.PutUint32(h[8:], 0) }),
		"pong with a status": validHeader(func(h []byte) {
			h[0] = byte(KindPong)
			h[1] = 0
			h[2] = 1
			le.PutUint32(h[4:], 0)
			le.PutUint32(h[8:], 0)
		}),
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, _, err := decodeHeader(h); !errors.Is(err, ErrMalformed) {
				t.Fatalf("decodeHeader: %v, want ErrMalformed", err)
			}
			// Followed by enough bytes for the meta and data it claims
			// were it valid: the header is refused before any is read or
			// allocated.
			stream := append(h, make([]byte, 64)...)
			src := bytes.NewReader(stream)
			r := NewReader(src, 16, func(n int) []byte {
				t.Errorf("alloc(%d) for a malformed header", n)
				return make([]byte, n)
			})
			f, err := r.Next()
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Next: %v, want ErrMalformed", err)
			}
			if f.Kind != 0 || f.Meta != nil || f.Data != nil {
				t.Fatalf("Next returned %+v with its error", f)
			}
		})
	}
	// The refusal of a huge data length allocates nothing much.
	h := validHeader(func(h []byte) { binary.LittleEndian.PutUint32(h[8:], MaxDataBytes+1) })
	allocs := testing.AllocsPerRun(20, func() {
		if _, _, _, err := decodeHeader(h); err == nil {
			t.Fatal("accepted")
		}
	})
	if allocs > 4 {
		t.Errorf("%v allocations refusing a header", allocs)
	}
}

// The bounds themselves are accepted.
func TestBoundsAccepted(t *testing.T) {
	le := binary.LittleEndian
	h := validHeader(func(h []byte) { le.PutUint32(h[4:], MaxMetaBytes); le.PutUint32(h[8:], MaxDataBytes) })
	f, m, d, err := decodeHeader(h)
	if err != nil || m != MaxMetaBytes || d != MaxDataBytes || f.Kind != KindRequest || f.ID != 9 {
		t.Fatalf("decodeHeader: %+v, %d, %d, %v", f, m, d, err)
	}
	// A stream with a header claiming MaxDataBytes, cut after the meta:
	// the data are allocated (not touched past what arrived), then the
	// stream ends.
	var asked int
	stream := append(h, make([]byte, MaxMetaBytes+10)...)
	r := NewReader(bytes.NewReader(stream), 4096, func(n int) []byte { asked = n; return make([]byte, n) })
	if _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("Next: %v, want io.ErrUnexpectedEOF", err)
	}
	if asked != MaxDataBytes {
		t.Fatalf("alloc(%d), want alloc(%d)", asked, MaxDataBytes)
	}
}

// A stream cut anywhere inside a frame is io.ErrUnexpectedEOF; at a frame
// boundary, io.EOF.
func TestCut(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	frames := []Frame{
		{Kind: KindRequest, Op: OpPutShard, ID: 1, Meta: []byte("meta"), Data: []byte("0123456789")},
		{Kind: KindPing, ID: 2},
		{Kind: KindReply, Op: OpPutShard, ID: 1, Meta: []byte("ok")},
		{Kind: KindReply, Op: OpPutShard, ID: 3, Data: []byte("data")},
	}
	ends := map[int]bool{0: true}
	for _, f := range frames {
		if err := w.Write(f); err != nil {
			t.Fatal(err)
		}
		ends[buf.Len()] = true
	}
	whole := buf.Bytes()
	for cut := 0; cut <= len(whole); cut++ {
		for _, size := range []int{16, 4096} {
			r := NewReader(bytes.NewReader(whole[:cut]), size, nil)
			var err error
			n := 0
			for err == nil {
				if _, err = r.Next(); err == nil {
					n++
				}
			}
			want := io.ErrUnexpectedEOF
			if ends[cut] {
				want = io.EOF
			}
			if err != want {
				t.Errorf("cut at %d, buffer %d: %v after %d frames, want %v", cut, size, err, n, want)
			}
		}
	}
	// Named cuts of the first frame.
	for name, cut := range map[string]int{
		"inside the header": HeaderBytes / 2,
		"after the header":  HeaderBytes,
		"inside the meta":   HeaderBytes + 2,
		"after the meta":    HeaderBytes + 4,
		"inside the data":   HeaderBytes + 4 + 5,
		"before last byte":  HeaderBytes + 4 + 9,
	} {
		if _, err := NewReader(bytes.NewReader(whole[:cut]), 64, nil).Next(); err != io.ErrUnexpectedEOF {
			t.Errorf("%s: %v, want io.ErrUnexpectedEOF", name, err)
		}
	}
	if _, err := NewReader(bytes.NewReader(nil), 64, nil).Next(); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
}

// errAfter returns its bytes, then err.
type errAfter struct {
	b   []byte
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	if len(e.b) == 0 {
		return 0, e.err
	}
	n := copy(p, e.b)
	e.b = e.b[n:]
	return n, nil
}

// An error of the stream itself is returned as it is, wherever it comes.
func TestStreamError(t *testing.T) {
	var buf bytes.Buffer
	NewWriter(&buf, 0).Write(Frame{Kind: KindRequest, Op: OpPutShard, ID: 1, Meta: []byte("meta"), Data: []byte("data")})
	boom := errors.New("connection reset")
	for _, cut := range []int{0, 3, HeaderBytes, HeaderBytes + 2, HeaderBytes + 6} {
		if _, err := NewReader(&errAfter{buf.Bytes()[:cut], boom}, 16, nil).Next(); err != boom {
			t.Errorf("cut at %d: %v, want %v", cut, err, boom)
		}
	}
}

func TestAlloc(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	frames := []Frame{
		{Kind: KindRequest, Op: OpPutShard, ID: 1, Meta: []byte("meta"), Data: []byte("0123456789")},
		{Kind: KindRequest, Op: OpPutShard, ID: 2, Meta: []byte("meta only")},
		{Kind: KindPing, ID: 3},
		{Kind: KindReply, Op: OpPutShard, ID: 4, Data: []byte("abc")},
	}
	for _, f := range frames {
		if err := w.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	var asked []int
	var given [][]byte
	alloc := func(n int) []byte {
		asked = append(asked, n)
		b := make([]byte, n, n+100) // more room than asked: Data is cut to n
		given = append(given, b)
		return b
	}
	r := NewReader(bytes.NewReader(buf.Bytes()), 64, alloc)
	var got []Frame
	for range frames {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f)
	}
	if fmt.Sprint(asked) != "[10 3]" {
		t.Fatalf("alloc called with %v, want [10 3] (only for data)", asked)
	}
	for i, fi := range []int{0, 3} {
		f := got[fi]
		if err := sameFrame(f, frames[fi]); err != nil {
			t.Fatalf("frame %d: %v", fi, err)
		}
		if len(f.Data) != asked[i] || &f.Data[0] != &given[i][0] {
			t.Fatalf("frame %d: data of %d bytes at %p, not the %d allocated at %p", fi, len(f.Data), &f.Data[0], asked[i], &given[i][0])
		}
	}

	// An alloc returning a longer slice: Data is its first n bytes.
	buf.Reset()
	w.Write(Frame{Kind: KindReply, Op: OpPutShard, ID: 5, Data: []byte("xyz")})
	pool := make([]byte, 16)
	f, err := NewReader(&buf, 64, func(n int) []byte { return pool }).Next()
	if err != nil {
		t.Fatal(err)
	}
	if string(f.Data) != "xyz" || &f.Data[0] != &pool[0] || string(pool[:3]) != "xyz" {
		t.Fatalf("data %q read outside the buffer alloc returned", f.Data)
	}

	// Nil alloc: each frame's data are its own.
	buf.Reset()
	w.Write(Frame{Kind: KindReply, Op: OpPutShard, ID: 6, Data: []byte("first")})
	w.Write(Frame{Kind: KindReply, Op: OpPutShard, ID: 7, Data: []byte("other")})
	r = NewReader(&buf, 64, nil)
	a, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Data) != "first" || string(b.Data) != "other" || a.ID != 6 || b.ID != 7 {
		t.Fatalf("nil alloc: %q id %d, %q id %d", a.Data, a.ID, b.Data, b.ID)
	}
}

// Concurrent writes on one Writer never interleave their frames.
func TestConcurrentWrite(t *testing.T) {
	const writers, perWriter = 8, 25 // 200 frames
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	frame := func(g, i int) Frame {
		id := uint64(g)<<32 | uint64(i)
		f := Frame{Kind: KindRequest, Op: OpPutShard, ID: id, Meta: []byte(fmt.Sprintf("g%d i%d", g, i))}
		switch i % 4 {
		case 0:
			f.Data = bytes.Repeat([]byte{byte(g), byte(i)}, 500+i*37)
		case 1:
			f = Frame{Kind: KindPing, ID: id}
		case 2:
			f.Kind, f.Status, f.Data = KindReply, uint16(i), bytes.Repeat([]byte{byte(i)}, 3000)
		}
		return f
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if err := w.Write(frame(g, i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r := NewReader(&buf, 4096, nil)
	next := make([]int, writers) // each writer's frames in its order
	for n := range writers * perWriter {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", n, err)
		}
		g, i := int(f.ID>>32), int(uint32(f.ID))
		if g >= writers || i != next[g] {
			t.Fatalf("frame %d: id %x, want writer %d's frame %d", n, f.ID, g, next[min(g, writers-1)])
		}
		next[g]++
		if err := sameFrame(f, frame(g, i)); err != nil {
			t.Fatalf("frame %d (writer %d, %d): %v", n, g, i, err)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after %d frames: %v, want io.EOF", writers*perWriter, err)
	}
}

// TestWriteDataInParts: data given in parts go on the wire as one frame's
// data, read back whole; data and parts together are refused.
func TestWriteDataInParts(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	parts := [][]byte{[]byte("abc"), nil, []byte("defgh")}
	if err := w.Write(Frame{Kind: KindReply, Op: OpGetShardRanges, ID: 3, Meta: []byte("m"), DataParts: parts}); err != nil {
		t.Fatal(err)
	}
	f, err := NewReader(&buf, 64, nil).Next()
	if err != nil || string(f.Data) != "abcdefgh" || string(f.Meta) != "m" || f.ID != 3 {
		t.Fatalf("read %q %q %d: %v", f.Data, f.Meta, f.ID, err)
	}
	buf.Reset()
	if err := w.Write(Frame{Kind: KindReply, Op: OpGetShardRanges, Data: []byte("x"), DataParts: parts}); err == nil || buf.Len() != 0 {
		t.Fatalf("data and parts together: %v, %d bytes written", err, buf.Len())
	}
}
