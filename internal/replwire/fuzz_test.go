package replwire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReader reads any bytes as frames: it never panics, every error is
// one of the documented ones, and what it decodes encodes back to the
// same bytes.
func FuzzReader(f *testing.F) {
	var seed bytes.Buffer
	w := NewWriter(&seed)
	w.Message([]byte("a replicate request"))
	w.Ping(1)
	w.Pong(1)
	w.Message(nil)
	f.Add(seed.Bytes())
	f.Add(AppendPreamble(nil))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 64)
		var out bytes.Buffer
		rw := NewWriter(&out)
		consumed := 0
		for {
			fr, err := r.Next()
			if err != nil {
				if !errors.Is(err, ErrMalformed) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			switch fr.Kind {
			case KindMessage:
				rw.Message(fr.Payload)
				consumed += HeaderBytes + len(fr.Payload)
			case KindPing:
				rw.Ping(fr.ID)
				consumed += HeaderBytes
			case KindPong:
				rw.Pong(fr.ID)
				consumed += HeaderBytes
			default:
				t.Fatalf("decoded a frame of %v", fr.Kind)
			}
		}
		if !bytes.Equal(out.Bytes(), data[:consumed]) {
			t.Fatalf("re-encoded frames differ from the input")
		}
	})
}
