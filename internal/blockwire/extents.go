package blockwire

import (
	"encoding/binary"
	"fmt"
)

// Extents: the data of a block status reply.
//
// A block status reply describes its request's range from the request's
// offset on as consecutive extents, each 16 bytes:
//
//	offset  size  field
//	0       8     length in bytes, little-endian, not 0
//	8       1     flags: 0x01 hole (never written, trimmed or zeroed:
//	              reads as zeroes); other bits 0
//	9       7     reserved, 0
//
// The extents may describe less than the requested range (the head node
// bounds the work of one request; the client asks again for the rest),
// never more, and at least one byte of it.

// ExtentBytes is the encoded size of one extent.
const ExtentBytes = 16

const extentHole = 0x01

// Extent is a run of a volume's address space in one allocation state.
type Extent struct {
	Length uint64
	Hole   bool
}

// AppendExtents appends the encoding of ext.
func AppendExtents(dst []byte, ext []Extent) []byte {
	for _, e := range ext {
		dst = binary.LittleEndian.AppendUint64(dst, e.Length)
		var flags byte
		if e.Hole {
			flags = extentHole
		}
		dst = append(dst, flags, 0, 0, 0, 0, 0, 0, 0)
	}
	return dst
}

// ParseExtents decodes a block status reply's data describing a request
// of length bytes: at least one extent, none empty, together at most
// length bytes.
func ParseExtents(b []byte, length uint64) ([]Extent, error) {
	if len(b) == 0 || len(b)%ExtentBytes != 0 {
		return nil, fmt.Errorf("%w: block status of %d bytes, not a positive multiple of %d", ErrMalformed, len(b), ExtentBytes)
	}
	out := make([]Extent, 0, len(b)/ExtentBytes)
	var total uint64
	for i := 0; i < len(b); i += ExtentBytes {
		e := b[i : i+ExtentBytes]
		n := binary.LittleEndian.Uint64(e)
		flags := e[8]
		switch {
		case n == 0:
			return nil, fmt.Errorf("%w: block status extent %d is empty", ErrMalformed, len(out))
		case flags&^extentHole != 0 || binary.LittleEndian.Uint64(e[8:])>>8 != 0:
			return nil, fmt.Errorf("%w: block status extent %d has flags %#x and reserved bytes %x", ErrMalformed, len(out), flags, e[9:])
		case n > length-total:
			return nil, fmt.Errorf("%w: block status extents of more than the %d bytes asked for", ErrMalformed, length)
		}
		total += n
		out = append(out, Extent{Length: n, Hole: flags&extentHole != 0})
	}
	return out, nil
}
