package blockwire

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// InlineDataBytes is the most data a writer copies into its buffer beside
// the frame's header; larger data is handed to the kernel in place
// (writev), where a copy would cost more than the system call it saves.
const InlineDataBytes = 16 << 10

// Writer gathers frames to write to a stream in one system call. It is not
// safe for concurrent use (Sender is). Data larger than InlineDataBytes
// is referenced, not copied: it must stay unchanged until Flush returns.
type Writer struct {
	buf    []byte      // headers, texts and inline data
	mark   int         // buf[mark:] is not yet in chunks
	chunks net.Buffers // what to write, in order, when referenced data is pending
	out    net.Buffers // WriteTo consumes its receiver: a scratch copy of chunks
	n      int         // bytes pending
}

// Append adds a frame and its data, len(data) == f.DataLen, to what Flush
// writes. An invalid frame is refused and nothing is added.
func (w *Writer) Append(f *Frame, data []byte) error {
	if len(data) != f.DataLen {
		return fmt.Errorf("%w: frame of %d bytes of data given %d", ErrMalformed, f.DataLen, len(data))
	}
	before := len(w.buf)
	var err error
	if w.buf, err = AppendFrame(w.buf, f); err != nil {
		return err
	}
	if len(data) <= InlineDataBytes {
		w.buf = append(w.buf, data...)
		w.n += len(w.buf) - before
	} else {
		w.chunks = append(w.chunks, w.buf[w.mark:], data)
		w.mark = len(w.buf)
		w.n += len(w.buf) - before + len(data)
	}
	return nil
}

// Buffered returns the bytes pending.
func (w *Writer) Buffered() int { return w.n }

// Flush writes every pending frame to dst (with one writev when data is
// referenced and dst is a TCP connection) and empties the writer, whether
// or not the write succeeded.
func (w *Writer) Flush(dst io.Writer) error {
	var err error
	if len(w.chunks) == 0 {
		if len(w.buf) > 0 {
			_, err = dst.Write(w.buf)
		}
	} else {
		w.chunks = append(w.chunks, w.buf[w.mark:])
		w.out = append(w.out[:0], w.chunks...)
		_, err = w.out.WriteTo(dst)
		clear(w.chunks) // let go of the callers' data
		clear(w.out)
		w.chunks = w.chunks[:0]
	}
	// A burst may have grown the buffer far beyond the usual batch.
	if cap(w.buf) > 4*maxPendingBytes {
		w.buf = nil
	}
	w.buf, w.mark, w.n = w.buf[:0], 0, 0
	return err
}

// maxPendingBytes bounds the inline frames a Sender holds while another
// goroutine writes: past it, Send waits.
const maxPendingBytes = 256 << 10

// Sender writes frames to a stream from many goroutines, never
// interleaving two. The goroutine that finds nobody writing writes, and
// keeps writing whatever the others add meanwhile, so that frames sent
// together share a system call and no goroutine is woken to write.
type Sender struct {
	dst io.Writer

	mu       sync.Mutex
	room     sync.Cond // broadcast when a write ends
	cur      *Writer   // frames waiting for the writing goroutine
	spare    *Writer   // the one being written, or empty
	flushing bool
	err      error // the stream's write error: every later Send fails
}

// NewSender returns a Sender writing to dst.
func NewSender(dst io.Writer) *Sender {
	s := &Sender{dst: dst, cur: &Writer{}, spare: &Writer{}}
	s.room.L = &s.mu
	return s
}

// Send writes f and its data (len(data) == f.DataLen). It returns once
// they are written, or copied to be written by the goroutine writing now:
// the caller may reuse data when Send returns. A write error breaks the
// stream: it is returned to the Send that met it and to every later one
// (frames that other Sends had handed over are lost with it, and their
// callers learn of it from the stream, which the caller closes). An
// invalid frame is refused and the stream is unaffected.
func (s *Sender) Send(f *Frame, data []byte) error {
	inline := len(data) <= InlineDataBytes
	s.mu.Lock()
	// Referenced data must be written before Send returns, so its Send
	// writes itself; an inline frame waits only while too much is pending.
	for s.err == nil && s.flushing && (!inline || s.cur.Buffered() >= maxPendingBytes) {
		s.room.Wait()
	}
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	if err := s.cur.Append(f, data); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.flushing {
		s.mu.Unlock()
		return nil
	}
	s.flushing = true
	for s.err == nil && s.cur.Buffered() > 0 {
		w := s.cur
		s.cur, s.spare = s.spare, w
		s.mu.Unlock()
		err := w.Flush(s.dst)
		s.mu.Lock()
		if err != nil {
			s.err = fmt.Errorf("blockwire: write: %w", err)
		}
		s.room.Broadcast()
	}
	s.flushing = false
	s.room.Broadcast()
	err := s.err
	s.mu.Unlock()
	return err
}
