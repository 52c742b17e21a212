package blockwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many goroutines sending frames of every size on one connection: the
// other end reads every frame whole, each once, with its data.
func TestSenderDoesNotInterleave(t *testing.T) {
	a, b := tcpPair(t)
	s := NewSender(a)
	const senders, each = 8, 100
	sizes := []int{0, 1, 4096, InlineDataBytes, InlineDataBytes + 1, 256 << 10}
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := uint64(g*each + i)
				data := make([]byte, sizes[int(id)%len(sizes)])
				for k := 0; k+8 <= len(data); k += 8 {
					binary.LittleEndian.PutUint64(data[k:], id)
				}
				if err := s.Send(&Frame{Kind: KindRequest, ID: id, Op: OpWrite, Host: "h", DataLen: len(data)}, data); err != nil {
					t.Error(err)
					return
				}
				clear(data) // the caller owns data again once Send returns
			}
		}()
	}
	r := NewReader(b, 64<<10)
	seen := map[uint64]bool{}
	for range senders * each {
		var f Frame
		if err := r.Next(&f); err != nil {
			t.Fatal(err)
		}
		if seen[f.ID] || f.DataLen != sizes[int(f.ID)%len(sizes)] {
			t.Fatalf("frame %d again or with %d bytes", f.ID, f.DataLen)
		}
		seen[f.ID] = true
		data := make([]byte, f.DataLen)
		if err := r.ReadData(data); err != nil {
			t.Fatal(err)
		}
		for k := 0; k+8 <= len(data); k += 8 {
			if got := binary.LittleEndian.Uint64(data[k:]); got != f.ID {
				t.Fatalf("frame %d: data of frame %d at %d", f.ID, got, k)
			}
		}
	}
	wg.Wait()
}

// A write error fails the Send that met it and every later one; an
// invalid frame fails only itself.
func TestSenderErrorIsSticky(t *testing.T) {
	w := &failingWriter{after: 1}
	s := NewSender(w)
	if err := s.Send(&Frame{Kind: KindPing}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&Frame{Kind: KindPing, Op: OpRead}, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("invalid frame: %v", err)
	}
	if err := s.Send(&Frame{Kind: KindPing}, nil); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write error: %v", err)
	}
	if err := s.Send(&Frame{Kind: KindPing}, nil); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("after the write error: %v", err)
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after == 0 {
		return 0, io.ErrClosedPipe
	}
	w.after--
	return len(p), nil
}

// While the stream is stuck, inline frames are held only up to the bound,
// and a frame with referenced data waits until it can be written itself.
func TestSenderBoundsWhatItHolds(t *testing.T) {
	w := &blockedWriter{release: make(chan struct{})}
	s := NewSender(w)
	var returned atomic.Int32
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Send(&Frame{Kind: KindReply, DataLen: 4096}, make([]byte, 4096)); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		}()
	}
	time.Sleep(100 * time.Millisecond)
	// One writes (stuck), the rest hold at most maxPendingBytes.
	if n := int(returned.Load()); n > maxPendingBytes/4096+1 {
		t.Errorf("%d of 200 Sends returned while nothing could be written", n)
	}
	close(w.release)
	wg.Wait()
	if got, want := w.n.Load(), int64(200*(HeaderBytes+4096)); got != want {
		t.Errorf("wrote %d bytes, want %d", got, want)
	}
}

type blockedWriter struct {
	release chan struct{}
	n       atomic.Int64
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	<-w.release
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// Frames with referenced data go out with the headers gathered before
// them in one writev: the receiving side reads them in order.
func TestWriterReferencesLargeData(t *testing.T) {
	var w Writer
	big := bytes.Repeat([]byte{7}, InlineDataBytes+1)
	w.Append(&Frame{Kind: KindPing, ID: 1}, nil)
	w.Append(&Frame{Kind: KindReply, ID: 2, DataLen: len(big)}, big)
	w.Append(&Frame{Kind: KindPong, ID: 3}, nil)
	if got, want := w.Buffered(), 3*HeaderBytes+len(big); got != want {
		t.Fatalf("Buffered %d, want %d", got, want)
	}
	var out bytes.Buffer
	if err := w.Flush(&out); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&out, 4096)
	for _, id := range []uint64{1, 2, 3} {
		var f Frame
		if err := r.Next(&f); err != nil || f.ID != id {
			t.Fatalf("frame %d: %+v, %v", id, f, err)
		}
	}
	if w.Buffered() != 0 || len(w.chunks) != 0 {
		t.Errorf("not empty after Flush")
	}
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}
