package sledwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzReader reads any bytes as frames: it never panics, every error is
// one of the documented ones, and what it decodes encodes back to exactly
// the bytes it consumed.
func FuzzReader(f *testing.F) {
	var seed bytes.Buffer
	w := NewWriter(&seed, 0)
	for _, fr := range []Frame{
		{Kind: KindRequest, Op: OpPutShard, ID: 1, Meta: []byte("\x0a\x03seg\x10\x02"), Data: []byte("shard bytes")},
		{Kind: KindPing, ID: 2},
		{Kind: KindReply, Op: OpPutShard, ID: 1, Meta: []byte("\x08\x01")},
		{Kind: KindRequest, Op: OpPutShard, ID: 3, Data: []byte("data only")},
		{Kind: KindReply, Op: OpPutShard, ID: 3, Data: []byte("reply data")},
		{Kind: KindReply, Op: 2, Status: StatusUnimplemented, ID: 4, Meta: []byte("op 2")},
		{Kind: KindPong, ID: 2},
	} {
		if err := w.Write(fr); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(seed.Bytes())
	f.Add(AppendPreamble(nil))
	huge := make([]byte, HeaderBytes)
	encodeHeader(huge, &Frame{Kind: KindRequest, Op: OpPutShard, ID: 5})
	binary.LittleEndian.PutUint32(huge[8:], 0xffffffff)
	f.Add(huge)
	binary.LittleEndian.PutUint32(huge[8:], MaxDataBytes)
	f.Add(huge) // valid, cut short
	f.Add([]byte{})

	// One buffer for every frame's data (each is re-encoded before the
	// next is read): a header claiming up to MaxDataBytes costs no
	// allocation, and only the pages the input reaches are touched.
	pool := make([]byte, MaxDataBytes)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 16, func(n int) []byte {
			if n <= 0 || n > MaxDataBytes {
				t.Fatalf("alloc(%d)", n)
			}
			return pool[:n]
		})
		var out bytes.Buffer
		rw := NewWriter(&out, 0)
		consumed := 0
		for {
			fr, err := r.Next()
			if err != nil {
				if !errors.Is(err, ErrMalformed) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %v", err)
				}
				if err == io.EOF && consumed != len(data) {
					t.Fatalf("io.EOF after %d of %d bytes", consumed, len(data))
				}
				break
			}
			if err := rw.Write(fr); err != nil {
				t.Fatalf("decoded %v %v status %d id %d with %d bytes of meta and %d of data, which does not encode: %v",
					fr.Kind, fr.Op, fr.Status, fr.ID, len(fr.Meta), len(fr.Data), err)
			}
			consumed += HeaderBytes + len(fr.Meta) + len(fr.Data)
		}
		if consumed > len(data) || !bytes.Equal(out.Bytes(), data[:consumed]) {
			t.Fatalf("re-encoded frames (%d bytes) differ from the %d bytes consumed", out.Len(), consumed)
		}
	})
}
