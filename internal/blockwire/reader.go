package blockwire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Reader reads frames from a stream. It reuses its header and text
// buffers: reading a frame allocates nothing but, when a frame's text
// differs from the previous frame's, its string (a connection carries one
// host, so requests allocate nothing). Data goes straight into the
// caller's buffer. It is not safe for concurrent use.
type Reader struct {
	br     *bufio.Reader
	hdr    [HeaderBytes]byte
	text   []byte
	last   string // the last text read, returned again while it repeats
	unread int    // data of the current frame not yet read
	err    error  // sticky: after a malformed frame the stream is lost
}

// NewReader returns a Reader over r, buffering bufBytes at a time (small
// frames arrive many to a read; data larger than the buffer is read
// straight into the caller's buffer).
func NewReader(r io.Reader, bufBytes int) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, bufBytes), text: make([]byte, max(MaxHostBytes, MaxErrorBytes))}
}

// Next reads the next frame's header and text into f, discarding first
// whatever data of the frame before was not read. It returns io.EOF if
// the stream ends before the frame begins, io.ErrUnexpectedEOF if it ends
// inside, and an error wrapping ErrMalformed (for this and every later
// call) if the frame is not valid.
func (r *Reader) Next(f *Frame) error {
	if r.err != nil {
		return r.err
	}
	if r.unread > 0 {
		if _, err := r.br.Discard(r.unread); err != nil {
			return r.fail(unexpected(err))
		}
		r.unread = 0
	}
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return r.fail(err)
	}
	n, err := DecodeHeader(r.hdr[:], f)
	if err != nil {
		return r.fail(err)
	}
	if n > 0 {
		t := r.text[:n]
		if _, err := io.ReadFull(r.br, t); err != nil {
			return r.fail(unexpected(err))
		}
		if string(t) != r.last { // compared without allocating
			if !utf8.Valid(t) {
				return r.fail(fmt.Errorf("%w: %v text is not UTF-8", ErrMalformed, f.Kind))
			}
			r.last = string(t)
		}
		if f.Kind == KindRequest {
			f.Host = r.last
		} else {
			f.Error = r.last
		}
	}
	r.unread = f.DataLen
	return nil
}

// ReadData reads the data of the frame Next returned into p, which must be
// as long as the frame's DataLen.
func (r *Reader) ReadData(p []byte) error {
	if r.err != nil {
		return r.err
	}
	if len(p) != r.unread {
		return fmt.Errorf("blockwire: ReadData of %d bytes, the frame has %d unread", len(p), r.unread)
	}
	if _, err := io.ReadFull(r.br, p); err != nil {
		return r.fail(unexpected(err))
	}
	r.unread = 0
	return nil
}

// fail makes err sticky. The stream's end is io.EOF only between frames
// (io.ReadFull of a header reports a partial one as io.ErrUnexpectedEOF).
func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

// unexpected turns the EOF of a stream that ended inside a frame into
// io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
