package replwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

const (
	// Version is the version of the protocol this package speaks.
	Version = 1
	// PreambleBytes is the length of the preamble.
	PreambleBytes = 8
	// HeaderBytes is the length of a frame's header.
	HeaderBytes = 16
	// MaxPayloadBytes bounds a message: the largest replication message
	// (a batch of records, a catch-up or full-sync chunk) with room to
	// spare; the head node's gRPC bound is the same.
	MaxPayloadBytes = 40 << 20
)

const magic = "BLSTRP"

// Kind is a frame's kind.
type Kind uint8

// The kinds of frame.
const (
	KindMessage Kind = 1
	KindPing    Kind = 2
	KindPong    Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindMessage:
		return "message"
	case KindPing:
		return "ping"
	case KindPong:
		return "pong"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

var (
	// ErrMalformed: bytes that are not a frame of this protocol.
	ErrMalformed = errors.New("replwire: malformed frame")
	// ErrNotReplwire: a preamble of another protocol.
	ErrNotReplwire = errors.New("replwire: not a replication preamble")
)

// AppendPreamble appends this version's preamble to b.
func AppendPreamble(b []byte) []byte {
	b = append(b, magic...)
	return binary.LittleEndian.AppendUint16(b, Version)
}

// ParsePreamble returns the version of a preamble (PreambleBytes bytes),
// or ErrNotReplwire.
func ParsePreamble(b []byte) (uint16, error) {
	if len(b) != PreambleBytes || string(b[:len(magic)]) != magic {
		return 0, ErrNotReplwire
	}
	return binary.LittleEndian.Uint16(b[len(magic):]), nil
}

// Frame is a decoded frame.
type Frame struct {
	Kind    Kind
	ID      uint64 // a ping's or pong's
	Payload []byte // a message's
}

// encodeHeader writes the header of a frame of kind with n payload bytes.
func encodeHeader(h []byte, kind Kind, id uint64, n int) {
	clear(h[:HeaderBytes])
	h[0] = byte(kind)
	binary.LittleEndian.PutUint32(h[4:], uint32(n))
	binary.LittleEndian.PutUint64(h[8:], id)
}

// decodeHeader checks a header and returns its kind, id and payload
// length.
func decodeHeader(h []byte) (Kind, uint64, int, error) {
	kind := Kind(h[0])
	if h[1] != 0 || h[2] != 0 || h[3] != 0 {
		return 0, 0, 0, fmt.Errorf("%w: reserved bytes %x", ErrMalformed, h[1:4])
	}
	n := binary.LittleEndian.Uint32(h[4:])
	id := binary.LittleEndian.Uint64(h[8:])
	switch kind {
	case KindMessage:
		if n > MaxPayloadBytes {
			return 0, 0, 0, fmt.Errorf("%w: a message of %d bytes, more than %d", ErrMalformed, n, MaxPayloadBytes)
		}
		if id != 0 {
			return 0, 0, 0, fmt.Errorf("%w: a message with id %d", ErrMalformed, id)
		}
	case KindPing, KindPong:
		if n != 0 {
			return 0, 0, 0, fmt.Errorf("%w: a %v with %d payload bytes", ErrMalformed, kind, n)
		}
	default:
		return 0, 0, 0, fmt.Errorf("%w: %v", ErrMalformed, kind)
	}
	return kind, id, int(n), nil
}

// Reader reads frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	hdr [HeaderBytes]byte
	// buf holds message payloads up to keepPayloadBytes, reused: the
	// session decodes each message before it reads the next.
	buf []byte
}

// keepPayloadBytes bounds the payload buffer a Reader keeps between
// frames; a larger message gets a buffer of its own.
const keepPayloadBytes = 1 << 20

// NewReader reads frames from r through a buffer of bufSize bytes.
func NewReader(r io.Reader, bufSize int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, bufSize)}
}

// Next reads the next frame. A message's payload is valid until the next
// call of Next.
func (r *Reader) Next() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return Frame{}, err // io.EOF between frames, io.ErrUnexpectedEOF inside one
	}
	kind, id, n, err := decodeHeader(r.hdr[:])
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Kind: kind, ID: id}
	if kind == KindMessage {
		if n <= keepPayloadBytes {
			if cap(r.buf) < n {
				r.buf = make([]byte, n, max(n, 64<<10))
			}
			f.Payload = r.buf[:n]
		} else {
			f.Payload = make([]byte, n)
		}
		if _, err := io.ReadFull(r.r, f.Payload); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// Writer writes frames to a stream; concurrent calls never interleave
// their frames.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	hdr [HeaderBytes]byte
}

// NewWriter writes frames to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Message writes a message frame with payload, header and payload in one
// writev where w is a connection.
func (w *Writer) Message(payload []byte) error {
	if len(payload) > MaxPayloadBytes {
		return fmt.Errorf("replwire: a message of %d bytes, more than %d", len(payload), MaxPayloadBytes)
	}
	return w.write(KindMessage, 0, payload)
}

// Ping writes a ping with id.
func (w *Writer) Ping(id uint64) error { return w.write(KindPing, id, nil) }

// Pong writes the pong that answers the ping with id.
func (w *Writer) Pong(id uint64) error { return w.write(KindPong, id, nil) }

func (w *Writer) write(kind Kind, id uint64, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	encodeHeader(w.hdr[:], kind, id, len(payload))
	if len(payload) == 0 {
		_, err := w.w.Write(w.hdr[:])
		return err
	}
	bufs := net.Buffers{w.hdr[:], payload}
	_, err := bufs.WriteTo(w.w)
	return err
}
