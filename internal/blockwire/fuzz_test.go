package blockwire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzDecodeHeader: any bytes either decode to a frame whose encoding is
// those bytes again, or fail with ErrMalformed.
func FuzzDecodeHeader(f *testing.F) {
	for _, s := range headerSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr Frame
		n, err := DecodeHeader(b, &fr)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		switch fr.Kind {
		case KindRequest:
			fr.Host = strings.Repeat("h", n)
		case KindReply:
			fr.Error = strings.Repeat("e", n)
		}
		again, err := AppendFrame(nil, &fr)
		if err != nil {
			t.Fatalf("decoded %+v, which does not encode: %v", fr, err)
		}
		if !bytes.Equal(again[:HeaderBytes], b[:HeaderBytes]) {
			t.Fatalf("header %x decoded to %+v, which encodes to %x", b[:HeaderBytes], fr, again[:HeaderBytes])
		}
	})
}

// FuzzReader: a stream of any bytes is read frame by frame until it ends
// or fails; every frame read re-encodes to exactly the bytes it came from,
// and the reader fails only with io.EOF, io.ErrUnexpectedEOF or
// ErrMalformed.
func FuzzReader(f *testing.F) {
	for _, s := range streamSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		src := bytes.NewReader(stream)
		r := NewReader(src, 64)
		pos := 0
		for {
			var fr Frame
			err := r.Next(&fr)
			if err == nil && fr.DataLen > 0 {
				if fr.DataLen > len(stream) {
					// Claimed more than there is: reading must fail, not
					// allocate the claim; the fuzzer need not prove it.
					return
				}
				data := make([]byte, fr.DataLen)
				if err = r.ReadData(data); err == nil {
					var w Writer
					if err := w.Append(&fr, data); err != nil {
						t.Fatalf("read %+v, which does not encode: %v", fr, err)
					}
					var out bytes.Buffer
					w.Flush(&out)
					end := pos + out.Len()
					if end > len(stream) || !bytes.Equal(out.Bytes(), stream[pos:end]) {
						t.Fatalf("frame at %d read as %+v re-encodes differently", pos, fr)
					}
					pos = end
					continue
				}
			} else if err == nil {
				b, aerr := AppendFrame(nil, &fr)
				if aerr != nil {
					t.Fatalf("read %+v, which does not encode: %v", fr, aerr)
				}
				if end := pos + len(b); end > len(stream) || !bytes.Equal(b, stream[pos:end]) {
					t.Fatalf("frame at %d read as %+v re-encodes differently", pos, fr)
				}
				pos += len(b)
				continue
			}
			if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrMalformed) {
				t.Fatalf("reader failed with %v", err)
			}
			if err == io.EOF && pos != len(stream) {
				t.Fatalf("io.EOF at %d of %d bytes", pos, len(stream))
			}
			if err2 := r.Next(&fr); err2 != err {
				t.Fatalf("error not sticky: %v then %v", err, err2)
			}
			return
		}
	})
}

// FuzzParsePreamble: any bytes either parse to a version whose preamble
// they begin with, or fail with ErrNotBlockwire.
func FuzzParsePreamble(f *testing.F) {
	f.Add([]byte("BLSTIO\x01\x00"))
	f.Add([]byte("BLSTIO\xff\xff"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Add([]byte("\x00\x00\x06\x04\x00\x00\x00\x00\x00"))
	f.Add([]byte("BLST"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParsePreamble(b)
		if err != nil {
			if !errors.Is(err, ErrNotBlockwire) {
				t.Fatalf("error %v does not wrap ErrNotBlockwire", err)
			}
			return
		}
		if len(b) < PreambleBytes || string(b[:6]) != "BLSTIO" || int(b[6])|int(b[7])<<8 != int(v) {
			t.Fatalf("%q parsed as version %d", b, v)
		}
	})
}

func encode(frames ...Frame) []byte {
	var w Writer
	for _, f := range frames {
		if err := w.Append(&f, make([]byte, f.DataLen)); err != nil {
			panic(err)
		}
	}
	var out bytes.Buffer
	w.Flush(&out)
	return out.Bytes()
}

func headerSeeds() map[string][]byte {
	out := map[string][]byte{}
	for name, c := range validFrames() {
		out[name] = encode(c.f)[:HeaderBytes]
	}
	out["short"] = make([]byte, 10)
	out["zeros"] = make([]byte, HeaderBytes)
	out["reserved"] = header(func(b []byte) { b[12] = 1 })
	return out
}

func streamSeeds() map[string][]byte {
	frames := validFrames()
	names := slices.Sorted(maps.Keys(frames)) // the same seed every time
	var all []Frame
	for _, name := range names {
		if c := frames[name]; c.f.DataLen <= 4096 {
			all = append(all, c.f)
		}
	}
	good := encode(all...)
	return map[string][]byte{
		"frames":           good,
		"truncated":        good[:len(good)-3],
		"one-request":      encode(Frame{Kind: KindRequest, ID: 1, Op: OpWrite, Host: "h1", Generation: 2, DataLen: 8}),
		"requests-pings":   encode(Frame{Kind: KindPing, ID: 1}, Frame{Kind: KindRequest, ID: 2, Op: OpRead, Length: 4096}, Frame{Kind: KindPong, ID: 1}),
		"reply-then-junk":  append(encode(Frame{Kind: KindReply, ID: 1, Status: StatusFenced, Error: "fenced"}), "junk junk junk junk junk junk junk junk junk junk junk junk"...),
		"huge-claim":       header(func(b []byte) { b[8], b[9], b[10], b[11] = 0, 0, 0, 2 }),
		"host-not-utf8":    append(header(func(b []byte) { b[1] = byte(OpRead); b[4] = 2; b[8] = 0 }), 0xff, 0xfe),
		"error-then-error": encode(Frame{Kind: KindReply, ID: 1, Status: StatusIOError, Error: "a"}, Frame{Kind: KindReply, ID: 2, Status: StatusIOError, Error: "b"}, Frame{Kind: KindReply, ID: 3, Status: StatusIOError, Error: "b"}),
		"empty":            nil,
	}
}

// TestGenerateSeedCorpus writes the seed corpus under testdata/fuzz. Run
// it after changing the seeds:
// BLOCKWIRE_WRITE_SEED_CORPUS=1 go test -run TestGenerateSeedCorpus ./internal/blockwire/
func TestGenerateSeedCorpus(t *testing.T) {
	if os.Getenv("BLOCKWIRE_WRITE_SEED_CORPUS") == "" {
		t.Skip("set BLOCKWIRE_WRITE_SEED_CORPUS=1 to rewrite testdata/fuzz")
	}
	write := func(target, name string, in []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, in := range headerSeeds() {
		write("FuzzDecodeHeader", name, in)
	}
	for name, in := range streamSeeds() {
		write("FuzzReader", name, in)
	}
	for name, in := range map[string]string{"v1": "BLSTIO\x01\x00", "v65535": "BLSTIO\xff\xff", "http2": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "settings": "\x00\x00\x06\x04\x00\x00\x00\x00\x00", "short": "BLST"} {
		write("FuzzParsePreamble", name, []byte(in))
	}
}

// FuzzParseExtents: any reply data either parses into extents that
// encode back to the same bytes and stay within the asked length, or is
// refused.
func FuzzParseExtents(f *testing.F) {
	f.Add(AppendExtents(nil, []Extent{{Length: 4096}}), uint64(4096))
	f.Add(AppendExtents(nil, []Extent{{Length: 4096, Hole: true}, {Length: 8192}}), uint64(1<<20))
	f.Add(AppendExtents(nil, []Extent{{Length: 1 << 40, Hole: true}}), uint64(1<<40))
	f.Add(AppendExtents(nil, []Extent{{Length: 0}}), uint64(4096))
	f.Add([]byte{1, 2, 3}, uint64(4096))
	f.Fuzz(func(t *testing.T, b []byte, length uint64) {
		ext, err := ParseExtents(b, length)
		if err != nil {
			return
		}
		var total uint64
		for _, e := range ext {
			if e.Length == 0 {
				t.Fatal("an empty extent parsed")
			}
			total += e.Length
			if total > length || total < e.Length {
				t.Fatalf("extents of %d bytes and more for a request of %d", total, length)
			}
		}
		if got := AppendExtents(nil, ext); !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x, want %x", got, b)
		}
	})
}
