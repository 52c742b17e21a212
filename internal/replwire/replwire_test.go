package replwire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestPreamble(t *testing.T) {
	p := AppendPreamble(nil)
	if len(p) != PreambleBytes {
		t.Fatalf("preamble of %d bytes", len(p))
	}
	if v, err := ParsePreamble(p); err != nil || v != Version {
		t.Fatalf("ParsePreamble = %d, %v", v, err)
	}
	for _, other := range [][]byte{[]byte("BLSTIO\x01\x00"), []byte("PRI * HT"), p[:7]} {
		if _, err := ParsePreamble(other); !errors.Is(err, ErrNotReplwire) {
			t.Errorf("ParsePreamble(%q) = %v, want ErrNotReplwire", other, err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte{7}, 1<<20)
	if err := w.Message([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := w.Ping(9); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(big); err != nil {
		t.Fatal(err)
	}
	if err := w.Pong(9); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(nil); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf, 4096)
	want := []Frame{{Kind: KindMessage, Payload: []byte("hello")}, {Kind: KindPing, ID: 9}, {Kind: KindMessage, Payload: big}, {Kind: KindPong, ID: 9}, {Kind: KindMessage, Payload: []byte{}}}
	for i, wf := range want {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		f.Payload = bytes.Clone(f.Payload) // valid until the next Next
		if f.Kind != wf.Kind || f.ID != wf.ID || !bytes.Equal(f.Payload, wf.Payload) {
			t.Fatalf("frame %d: %v id %d, %d bytes; want %v id %d, %d bytes", i, f.Kind, f.ID, len(f.Payload), wf.Kind, wf.ID, len(wf.Payload))
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestMalformed(t *testing.T) {
	header := func(kind byte, reserved byte, n uint32, id uint64) []byte {
		h := make([]byte, HeaderBytes)
		encodeHeader(h, Kind(kind), id, int(n))
		h[2] = reserved
		return h
	}
	for name, b := range map[string][]byte{
		"kind 0":              header(0, 0, 0, 0),
		"kind 4":              header(4, 0, 0, 0),
		"reserved byte":       header(1, 1, 0, 0),
		"message too large":   header(1, 0, MaxPayloadBytes+1, 0),
		"message with an id":  header(1, 0, 0, 3),
		"ping with a payload": header(2, 0, 1, 3),
		"pong with a payload": header(3, 0, 8, 3),
	} {
		if _, err := NewReader(bytes.NewReader(b), 64).Next(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// Cut short: inside the header, inside the payload.
	var buf bytes.Buffer
	NewWriter(&buf).Message([]byte("0123456789"))
	for _, n := range []int{1, HeaderBytes - 1, HeaderBytes, HeaderBytes + 5} {
		if _, err := NewReader(bytes.NewReader(buf.Bytes()[:n]), 64).Next(); err != io.ErrUnexpectedEOF {
			t.Errorf("cut at %d: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	if err := NewWriter(io.Discard).Message(make([]byte, MaxPayloadBytes+1)); err == nil {
		t.Error("a message over the bound was written")
	}
}
