package blockwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 4

// Sizes and bounds of version 4.
const (
	// PreambleBytes is the length of the preamble each side sends first.
	PreambleBytes = 8
	// HeaderBytes is the fixed length of every frame's header.
	HeaderBytes = 80
	// MaxDataBytes bounds a frame's data: the head node's largest read
	// or write (the NBD maximum the agent advertises).
	MaxDataBytes = 32 << 20
	// MaxHostBytes bounds a request's host name (host names are at
	// most 63 characters; this leaves room without leaving it open).
	MaxHostBytes = 255
	// MaxErrorBytes bounds a reply's error text; a longer one is cut
	// when written (it is advice for a human, not worth failing for).
	MaxErrorBytes = 4096
)

// magic opens the preamble.
const magic = "BLSTIO"

// Errors. ErrMalformed and ErrNotBlockwire are wrapped with the details.
var (
	// ErrMalformed is returned for bytes that are not a valid frame (or
	// preamble) of this version, and for a frame a writer is asked to
	// write that is not valid.
	ErrMalformed = errors.New("blockwire: malformed")
	// ErrNotBlockwire is returned by ParsePreamble for bytes that do not
	// begin with the magic: the peer speaks another protocol.
	ErrNotBlockwire = errors.New("blockwire: not a blockwire preamble")
)

// Kind is a frame's kind.
type Kind uint8

// Frame kinds.
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
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Op is a request's operation; the numbers are ballastpb.IOOp's.
type Op uint8

// Operations.
const (
	OpRead        Op = 1
	OpWrite       Op = 2
	OpFlush       Op = 3
	OpTrim        Op = 4
	OpWriteZeroes Op = 5
	OpBlockStatus Op = 6 // reply data: extents (extents.go)
)

// Status is a reply's outcome; the numbers are ballastpb.IOStatus's.
type Status uint8

// Statuses.
const (
	StatusOK           Status = 0
	StatusIOError      Status = 1
	StatusOutOfRange   Status = 2
	StatusInvalid      Status = 3
	StatusNotPrimary   Status = 4
	StatusNoSuchVolume Status = 5
	StatusNoSpace      Status = 6
	StatusFenced       Status = 7
	maxStatus                 = StatusFenced
)

// Request flags.
const (
	flagFUA    = 0x01
	flagNoHole = 0x02
	flagResend = 0x04
)

// Frame is one frame: a request, a reply, a ping or a pong. A field that
// its kind does not carry must be zero. Data is not part of it: the
// writer takes it beside the frame, and the reader reads it into a buffer
// the caller supplies, DataLen bytes.
type Frame struct {
	Kind Kind
	ID   uint64

	// Requests.
	Op         Op
	VolumeID   uint64
	Offset     uint64
	Length     uint64
	FUA        bool
	NoHole     bool
	Host       string
	Generation uint64
	// A write's identity (ballastpb.IORequest): 0 for none.
	Client, WriteOp, OldestOp uint64
	// Resend marks a named write sent again (ballastpb.IORequest).
	Resend bool

	// Replies.
	Status Status
	Error  string

	// DataLen is the length of the data that follows the frame.
	DataLen int
}

// AppendPreamble appends the preamble of this version.
func AppendPreamble(dst []byte) []byte {
	return binary.LittleEndian.AppendUint16(append(dst, magic...), Version)
}

// ParsePreamble returns the version a preamble announces. Bytes that do
// not begin with the magic (or are too short to tell) wrap
// ErrNotBlockwire; any version is returned, for the caller to judge.
func ParsePreamble(b []byte) (uint16, error) {
	if len(b) < PreambleBytes || string(b[:len(magic)]) != magic {
		return 0, fmt.Errorf("%w: %q", ErrNotBlockwire, b[:min(len(b), PreambleBytes)])
	}
	return binary.LittleEndian.Uint16(b[len(magic):]), nil
}

// check reports whether f (with a text of textLen bytes) is a valid frame
// of its kind. The text's content is checked where it is read or written.
func check(f *Frame, textLen int) error {
	if f.DataLen < 0 || f.DataLen > MaxDataBytes {
		return fmt.Errorf("%w: %d bytes of data, over the maximum of %d", ErrMalformed, f.DataLen, MaxDataBytes)
	}
	switch f.Kind {
	case KindRequest:
		switch {
		case f.Op < OpRead || f.Op > OpBlockStatus:
			return fmt.Errorf("%w: unknown op %d", ErrMalformed, f.Op)
		case f.DataLen > 0 && f.Op != OpWrite:
			return fmt.Errorf("%w: %d bytes of data in a request of op %d", ErrMalformed, f.DataLen, f.Op)
		case textLen > MaxHostBytes:
			return fmt.Errorf("%w: host of %d bytes, over the maximum of %d", ErrMalformed, textLen, MaxHostBytes)
		case f.Status != 0 || f.Error != "":
			return fmt.Errorf("%w: a request with a reply's status or error", ErrMalformed)
		case f.Resend && (f.Client == 0 || f.WriteOp == 0):
			return fmt.Errorf("%w: a resend of a write that has no identity", ErrMalformed)
		}
		return nil
	case KindReply:
		switch {
		case f.Status > maxStatus:
			return fmt.Errorf("%w: unknown status %d", ErrMalformed, f.Status)
		case textLen > MaxErrorBytes:
			return fmt.Errorf("%w: error text of %d bytes, over the maximum of %d", ErrMalformed, textLen, MaxErrorBytes)
		case f.Status == StatusOK && textLen > 0:
			return fmt.Errorf("%w: error text in an OK reply", ErrMalformed)
		case f.Status != StatusOK && f.DataLen > 0:
			return fmt.Errorf("%w: %d bytes of data in a reply of status %d", ErrMalformed, f.DataLen, f.Status)
		}
	case KindPing, KindPong:
		if f.Status != 0 || f.Error != "" || textLen != 0 || f.DataLen != 0 {
			return fmt.Errorf("%w: a %v carries more than its id", ErrMalformed, f.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown frame kind %d", ErrMalformed, f.Kind)
	}
	// Replies, pings and pongs carry none of a request's fields.
	if f.Op != 0 || f.VolumeID != 0 || f.Offset != 0 || f.Length != 0 || f.FUA || f.NoHole || f.Host != "" || f.Generation != 0 ||
		f.Client != 0 || f.WriteOp != 0 || f.OldestOp != 0 || f.Resend {
		return fmt.Errorf("%w: a %v with a request's fields", ErrMalformed, f.Kind)
	}
	return nil
}

// text returns the text f carries, a reply's error made valid UTF-8 and
// cut to MaxErrorBytes (at a character boundary).
func text(f *Frame) string {
	switch f.Kind {
	case KindRequest:
		return f.Host
	case KindReply:
		s := f.Error
		if !utf8.ValidString(s) {
			s = strings.ToValidUTF8(s, "\uFFFD")
		}
		if len(s) > MaxErrorBytes {
			cut := MaxErrorBytes
			for cut > 0 && !utf8.RuneStart(s[cut]) {
				cut--
			}
			s = s[:cut]
		}
		return s
	}
	return ""
}

// AppendFrame appends f's header and text (not its data, which follows)
// to dst. An invalid frame (a host that is not UTF-8 included) is refused
// with an error wrapping ErrMalformed and dst is returned unchanged.
func AppendFrame(dst []byte, f *Frame) ([]byte, error) {
	t := text(f)
	if err := check(f, len(t)); err != nil {
		return dst, err
	}
	if f.Kind == KindRequest && !utf8.ValidString(t) {
		return dst, fmt.Errorf("%w: host %q is not UTF-8", ErrMalformed, t)
	}
	var h [HeaderBytes]byte
	h[0] = byte(f.Kind)
	switch f.Kind {
	case KindRequest:
		h[1] = byte(f.Op)
		if f.FUA {
			h[2] |= flagFUA
		}
		if f.NoHole {
			h[2] |= flagNoHole
		}
		if f.Resend {
			h[2] |= flagResend
		}
	case KindReply:
		h[1] = byte(f.Status)
	}
	binary.LittleEndian.PutUint16(h[4:], uint16(len(t)))
	binary.LittleEndian.PutUint32(h[8:], uint32(f.DataLen))
	binary.LittleEndian.PutUint64(h[16:], f.ID)
	binary.LittleEndian.PutUint64(h[24:], f.VolumeID)
	binary.LittleEndian.PutUint64(h[32:], f.Offset)
	binary.LittleEndian.PutUint64(h[40:], f.Length)
	binary.LittleEndian.PutUint64(h[48:], f.Generation)
	binary.LittleEndian.PutUint64(h[56:], f.Client)
	binary.LittleEndian.PutUint64(h[64:], f.WriteOp)
	binary.LittleEndian.PutUint64(h[72:], f.OldestOp)
	return append(append(dst, h[:]...), t...), nil
}

// DecodeHeader decodes a frame's fixed header into f (its text, Host or
// Error, is left empty) and returns the length of the text that follows.
// b must hold at least HeaderBytes bytes. Every field is checked: an
// invalid header returns an error wrapping ErrMalformed.
func DecodeHeader(b []byte, f *Frame) (textLen int, err error) {
	if len(b) < HeaderBytes {
		return 0, fmt.Errorf("%w: header of %d bytes, want %d", ErrMalformed, len(b), HeaderBytes)
	}
	if b[3] != 0 || b[6] != 0 || b[7] != 0 || binary.LittleEndian.Uint32(b[12:]) != 0 {
		return 0, fmt.Errorf("%w: reserved header bytes are not zero", ErrMalformed)
	}
	*f = Frame{
		Kind:    Kind(b[0]),
		ID:      binary.LittleEndian.Uint64(b[16:]),
		DataLen: int(binary.LittleEndian.Uint32(b[8:])),
	}
	code, flags := b[1], b[2]
	switch f.Kind {
	case KindRequest:
		if flags&^(flagFUA|flagNoHole|flagResend) != 0 {
			return 0, fmt.Errorf("%w: unknown request flags %#x", ErrMalformed, flags)
		}
		f.Op = Op(code)
		f.FUA = flags&flagFUA != 0
		f.NoHole = flags&flagNoHole != 0
		f.Resend = flags&flagResend != 0
		f.VolumeID = binary.LittleEndian.Uint64(b[24:])
		f.Offset = binary.LittleEndian.Uint64(b[32:])
		f.Length = binary.LittleEndian.Uint64(b[40:])
		f.Generation = binary.LittleEndian.Uint64(b[48:])
		f.Client = binary.LittleEndian.Uint64(b[56:])
		f.WriteOp = binary.LittleEndian.Uint64(b[64:])
		f.OldestOp = binary.LittleEndian.Uint64(b[72:])
	case KindReply, KindPing, KindPong:
		if flags != 0 {
			return 0, fmt.Errorf("%w: flags %#x in a %v", ErrMalformed, flags, f.Kind)
		}
		if f.Kind == KindReply {
			f.Status = Status(code)
		} else if code != 0 {
			return 0, fmt.Errorf("%w: code %d in a %v", ErrMalformed, code, f.Kind)
		}
		for off := 24; off < HeaderBytes; off += 8 {
			if binary.LittleEndian.Uint64(b[off:]) != 0 {
				return 0, fmt.Errorf("%w: a %v with a request's fields", ErrMalformed, f.Kind)
			}
		}
	}
	textLen = int(binary.LittleEndian.Uint16(b[4:]))
	if err := check(f, textLen); err != nil {
		return 0, err
	}
	return textLen, nil
}
