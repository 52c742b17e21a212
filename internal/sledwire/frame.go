package sledwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

const (
	// Version is the version of the protocol this package speaks.
	Version = 1
	// PreambleBytes is the length of the preamble (that of the head
	// node's framed protocols too, so one read tells them apart).
	PreambleBytes = 8
	// HeaderBytes is the length of a frame's header.
	HeaderBytes = 24
	// MaxMetaBytes bounds a frame's meta part: a request's fields (a read
	// of 256 ranges), a reply's (their results, errors included) or an
	// error message, never data.
	MaxMetaBytes = 1 << 20
	// MaxDataBytes bounds a frame's data: the sled's largest shard.
	MaxDataBytes = 64 << 20
)

const magic = "BLSTSW"

// Kind is a frame's kind.
type Kind uint8

// The kinds of frame.
const (
	KindRequest Kind = 1
	KindReply   Kind = 2
	KindPing    Kind = 3
	KindPong    Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindReply:
		return "reply"
	case KindPing:
		return "ping"
	case KindPong:
		return "pong"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Op is the operation of a request and of its reply.
type Op uint8

// The operations.
const (
	OpPutShard       Op = 1
	OpGetShardRanges Op = 2
)

func (o Op) String() string {
	switch o {
	case OpPutShard:
		return "put shard"
	case OpGetShardRanges:
		return "get shard ranges"
	}
	return fmt.Sprintf("op %d", uint8(o))
}

// StatusUnimplemented is the status of a reply to an op the sled does
// not serve (gRPC's code for it).
const StatusUnimplemented = 12

var (
	// ErrMalformed: bytes that are not a frame of this protocol.
	ErrMalformed = errors.New("sledwire: malformed frame")
	// ErrNotSledwire: a preamble of another protocol.
	ErrNotSledwire = errors.New("sledwire: not a sled preamble")
)

// AppendPreamble appends this version's preamble to b.
func AppendPreamble(b []byte) []byte {
	b = append(b, magic...)
	return binary.LittleEndian.AppendUint16(b, Version)
}

// ParsePreamble returns the version of a preamble (PreambleBytes bytes),
// or ErrNotSledwire.
func ParsePreamble(b []byte) (uint16, error) {
	if len(b) != PreambleBytes || string(b[:len(magic)]) != magic {
		return 0, ErrNotSledwire
	}
	return binary.LittleEndian.Uint16(b[len(magic):]), nil
}

// Frame is a decoded frame.
type Frame struct {
	Kind   Kind
	Op     Op     // a request's or reply's
	Status uint16 // a reply's: 0 ok, else a gRPC code and Meta the message
	ID     uint64
	Meta   []byte
	Data   []byte
	// DataParts, for Write only, are the data in pieces, written one
	// after the other in place of Data: a reply that gathers several
	// reads need not copy them into one buffer.
	DataParts [][]byte
}

// dataLen is the length of f's data, whole or in parts.
func (f *Frame) dataLen() int {
	n := len(f.Data)
	for _, p := range f.DataParts {
		n += len(p)
	}
	return n
}

// encodeHeader writes f's header.
func encodeHeader(h []byte, f *Frame) {
	clear(h[:HeaderBytes])
	h[0] = byte(f.Kind)
	h[1] = byte(f.Op)
	binary.LittleEndian.PutUint16(h[2:], f.Status)
	binary.LittleEndian.PutUint32(h[4:], uint32(len(f.Meta)))
	binary.LittleEndian.PutUint32(h[8:], uint32(f.dataLen()))
	binary.LittleEndian.PutUint64(h[16:], f.ID)
}

// decodeHeader checks a header and returns the frame it starts (without
// its meta and data) and their lengths.
func decodeHeader(h []byte) (f Frame, metaLen, dataLen int, err error) {
	f = Frame{Kind: Kind(h[0]), Op: Op(h[1]), Status: binary.LittleEndian.Uint16(h[2:]), ID: binary.LittleEndian.Uint64(h[16:])}
	m := binary.LittleEndian.Uint32(h[4:])
	d := binary.LittleEndian.Uint32(h[8:])
	if r := binary.LittleEndian.Uint32(h[12:]); r != 0 {
		return Frame{}, 0, 0, fmt.Errorf("%w: reserved bytes %x", ErrMalformed, h[12:16])
	}
	if err := check(&f, m, d); err != nil {
		return Frame{}, 0, 0, err
	}
	return f, int(m), int(d), nil
}

// check says whether a frame of f's kind, op and status may have meta
// and data of these lengths.
func check(f *Frame, meta, data uint32) error {
	switch f.Kind {
	case KindRequest, KindReply:
		if f.Op == 0 {
			return fmt.Errorf("%w: a %v without an op", ErrMalformed, f.Kind)
		}
		if f.Kind == KindRequest && f.Status != 0 {
			return fmt.Errorf("%w: a request with status %d", ErrMalformed, f.Status)
		}
		if meta > MaxMetaBytes {
			return fmt.Errorf("%w: %d bytes of meta, more than %d", ErrMalformed, meta, MaxMetaBytes)
		}
		if data > MaxDataBytes {
			return fmt.Errorf("%w: %d bytes of data, more than %d", ErrMalformed, data, MaxDataBytes)
		}
	case KindPing, KindPong:
		if f.Op != 0 || f.Status != 0 || meta != 0 || data != 0 {
			return fmt.Errorf("%w: a %v with an op, a status, meta or data", ErrMalformed, f.Kind)
		}
	default:
		return fmt.Errorf("%w: %v", ErrMalformed, f.Kind)
	}
	return nil
}

// Reader reads frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r     *bufio.Reader
	hdr   [HeaderBytes]byte
	alloc func(n int) []byte
}

// ErrNoBuffer: the Reader's alloc gave no buffer for a frame's data (its
// owner is closing the stream).
var ErrNoBuffer = errors.New("sledwire: no buffer for a frame's data")

// NewReader reads frames from r through a buffer of bufSize bytes. alloc
// returns the buffer of at least n bytes a frame's data is read into (nil:
// make), or a shorter one (nil) to fail Next with ErrNoBuffer; the data
// belong to the caller, who may keep them past the next frame.
func NewReader(r io.Reader, bufSize int, alloc func(n int) []byte) *Reader {
	if alloc == nil {
		alloc = func(n int) []byte { return make([]byte, n) }
	}
	return &Reader{r: bufio.NewReaderSize(r, bufSize), alloc: alloc}
}

// Next reads the next frame. Its meta part is newly allocated; its data
// come from the Reader's alloc.
func (r *Reader) Next() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return Frame{}, err // io.EOF between frames, io.ErrUnexpectedEOF inside one
	}
	f, metaLen, dataLen, err := decodeHeader(r.hdr[:])
	if err != nil {
		return Frame{}, err
	}
	if metaLen > 0 {
		f.Meta = make([]byte, metaLen)
		if err := readFull(r.r, f.Meta); err != nil {
			return Frame{}, err
		}
	}
	if dataLen > 0 {
		buf := r.alloc(dataLen)
		if len(buf) < dataLen {
			return Frame{}, ErrNoBuffer
		}
		f.Data = buf[:dataLen]
		if err := readFull(r.r, f.Data); err != nil {
			return Frame{}, err
		}
	}
	return f, nil
}

// readFull reads len(b) bytes of a frame whose header was read: an end
// of the stream is unexpected.
func readFull(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// Writer writes frames to a stream; concurrent calls never interleave
// their frames.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	timeout time.Duration // of each frame's write, where w has deadlines
	hdr     [HeaderBytes]byte
	bufs    net.Buffers
}

// NewWriter writes frames to w. If timeout is positive and w has write
// deadlines (a net.Conn), a frame not written within timeout of its turn
// fails with the deadline's error: a peer that stops reading cannot hold
// the writers forever.
func NewWriter(w io.Writer, timeout time.Duration) *Writer {
	return &Writer{w: w, timeout: timeout}
}

// Write writes f: header, meta and data in one writev where w is a
// connection. It refuses a frame that Reader would not accept.
func (w *Writer) Write(f Frame) error {
	dataLen := f.dataLen()
	if len(f.Data) > 0 && len(f.DataParts) > 0 {
		return fmt.Errorf("sledwire: a %v with both data and data parts", f.Kind)
	}
	if len(f.Meta) > MaxMetaBytes || dataLen > MaxDataBytes {
		return fmt.Errorf("sledwire: a %v with %d bytes of meta and %d of data, over the bounds", f.Kind, len(f.Meta), dataLen)
	}
	if err := check(&f, uint32(len(f.Meta)), uint32(dataLen)); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if d, ok := w.w.(interface{ SetWriteDeadline(time.Time) error }); ok && w.timeout > 0 {
		if err := d.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
			return err
		}
	}
	encodeHeader(w.hdr[:], &f)
	w.bufs = append(w.bufs[:0], w.hdr[:])
	if len(f.Meta) > 0 {
		w.bufs = append(w.bufs, f.Meta)
	}
	if len(f.Data) > 0 {
		w.bufs = append(w.bufs, f.Data)
	}
	for _, p := range f.DataParts {
		if len(p) > 0 {
			w.bufs = append(w.bufs, p)
		}
	}
	bufs := w.bufs // WriteTo consumes its receiver
	_, err := bufs.WriteTo(w.w)
	clear(w.bufs)
	return err
}
