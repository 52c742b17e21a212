package sled

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
)

// Shard file format, version 2 (all integers little-endian):
//
//	header, 56 bytes:
//	  0  magic     "BALSHARD"
//	  8  version   u16 (2)
//	 10  reserved  u16 (0)
//	 12  chunk     u32: bytes per checksummed chunk (4096)
//	 16  volume    u64
//	 24  segment   u64
//	 32  index     u32
//	 36  length    u64: bytes of shard data
//	 44  epoch     u64: the writer's epoch of the volume
//	 52  crc       u32: CRC32C of bytes 0..51
//	data, `length` bytes
//	chunk table: one u32 CRC32C per chunk of data (the last may be short)
//	table crc:   u32 CRC32C of the chunk table
//
// A read of a range checks the header, the whole chunk table against its
// crc, and every chunk the range touches against its entry; any mismatch
// means the shard is corrupt and none of its data is returned.
//
// The header names the shard (volume, segment, index) and the epoch it
// was written at, so a file at the wrong path, or a shard that replaced
// another, is told apart from the one a reader asked for; a sled also
// refuses to replace a shard with one of an older epoch.
//
// Version 1, which sleds wrote before shards carried their epoch, is read
// too, as written at epoch 0: its header is 48 bytes, the same up to the
// length, with its crc (of bytes 0..43) at 44. Only version 2 is written,
// so a version 1 shard is replaced the first time its segment is
// rewritten or repaired.

const (
	shardMagic      = "BALSHARD"
	formatVersion   = 2
	headerBytes     = 56
	headerCRCAt     = 52
	formatVersionV1 = 1
	headerBytesV1   = 48
	headerCRCAtV1   = 44
	chunkBytes      = 4096
	maxShardBytes   = 64 << 20
	crcBytes        = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt marks a shard file that fails a check: its data must never
// be returned. Test with errors.Is.
var ErrCorrupt = errors.New("sled: shard is corrupt")

// ShardID names one shard.
type ShardID struct {
	Volume  uint64
	Segment uint64
	Index   uint32
}

func (id ShardID) String() string {
	return fmt.Sprintf("volume %d segment %d shard %d", id.Volume, id.Segment, id.Index)
}

// header is the decoded fixed header of a shard file.
type header struct {
	version uint16
	id      ShardID
	epoch   uint64
	chunk   uint32
	length  uint64
}

// bytes is the size of the header on disk, where the data starts.
func (h header) bytes() uint64 {
	if h.version == formatVersionV1 {
		return headerBytesV1
	}
	return headerBytes
}

// fileBytes is the size of the file that holds the shard.
func (h header) fileBytes() uint64 {
	return h.bytes() + h.length + chunksFor(h.length)*crcBytes + crcBytes
}

func chunksFor(length uint64) uint64 { return (length + chunkBytes - 1) / chunkBytes }

// fileSize is the size of the file that holds a shard of length bytes in
// the format written now.
func fileSize(length uint64) uint64 {
	return header{version: formatVersion, length: length}.fileBytes()
}

// encodeShard returns the whole file of a shard written at epoch.
func encodeShard(id ShardID, epoch uint64, data []byte) []byte {
	return encodeShardVersion(formatVersion, id, epoch, data)
}

// encodeShardVersion encodes in a given format version; only tests write
// version 1 (whose header has no epoch: it must be 0).
func encodeShardVersion(version uint16, id ShardID, epoch uint64, data []byte) []byte {
	trailer, _ := encodeTrailer(data)
	return slices.Concat(encodeHeader(version, id, epoch, uint64(len(data))), data, trailer)
}

// encodeHeader returns the header of a shard of length bytes.
func encodeHeader(version uint16, id ShardID, epoch, length uint64) []byte {
	out := make([]byte, header{version: version}.bytes())
	copy(out, shardMagic)
	binary.LittleEndian.PutUint16(out[8:], version)
	binary.LittleEndian.PutUint32(out[12:], chunkBytes)
	binary.LittleEndian.PutUint64(out[16:], id.Volume)
	binary.LittleEndian.PutUint64(out[24:], id.Segment)
	binary.LittleEndian.PutUint32(out[32:], id.Index)
	binary.LittleEndian.PutUint64(out[36:], length)
	if version == formatVersionV1 {
		binary.LittleEndian.PutUint32(out[headerCRCAtV1:], crc32.Checksum(out[:headerCRCAtV1], castagnoli))
	} else {
		binary.LittleEndian.PutUint64(out[44:], epoch)
		binary.LittleEndian.PutUint32(out[headerCRCAt:], crc32.Checksum(out[:headerCRCAt], castagnoli))
	}
	return out
}

// encodeTrailer returns what follows a shard's data in its file, the chunk
// table and its crc, and the CRC32C of the whole of data, which it derives
// from the chunks' (crc32Combine): the data is read once for both.
func encodeTrailer(data []byte) (trailer []byte, sum uint32) {
	n := uint64(len(data))
	chunks := chunksFor(n)
	trailer = make([]byte, chunks*crcBytes+crcBytes)
	for c := range chunks {
		end := min((c+1)*chunkBytes, n)
		crc := crc32.Checksum(data[c*chunkBytes:end], castagnoli)
		binary.LittleEndian.PutUint32(trailer[c*crcBytes:], crc)
		if end-c*chunkBytes == chunkBytes {
			sum = crcShiftChunk(sum) ^ crc
		} else {
			sum = crc32Combine(sum, crc, end-c*chunkBytes)
		}
	}
	table := trailer[:chunks*crcBytes]
	binary.LittleEndian.PutUint32(trailer[chunks*crcBytes:], crc32.Checksum(table, castagnoli))
	return trailer, sum
}

// CRC combination: the CRC32C of a||b from crc(a), crc(b) and len(b),
// without reading a or b again (zlib's crc32_combine, for the Castagnoli
// polynomial). CRCs are polynomials over GF(2) in reflected bit order;
// appending len(b) bytes to a multiplies crc(a) by x^(8*len(b)) modulo
// the polynomial.

const castagnoliReflected = 0x82f63b78

// crcMultModP returns a*b modulo the Castagnoli polynomial.
func crcMultModP(a, b uint32) uint32 {
	m := uint32(1) << 31
	var p uint32
	for {
		if a&m != 0 {
			p ^= b
			if a&(m-1) == 0 {
				return p
			}
		}
		m >>= 1
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
}

// crcX2N[k] is x^(2^k) modulo the polynomial.
var crcX2N = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	t[0] = p
	for k := 1; k < 32; k++ {
		p = crcMultModP(p, p)
		t[k] = p
	}
	return t
}()

// crcX8N returns x^(8n) modulo the polynomial: the effect of n bytes.
func crcX8N(n uint64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 3; n != 0; n, k = n>>1, k+1 {
		if n&1 != 0 {
			p = crcMultModP(crcX2N[k&31], p)
		}
	}
	return p
}

// crcChunkStep[k][v] is crcMultModP(crcX8N(chunkBytes), v<<8k): the
// multiplication is linear in its second operand, so appending a whole
// chunk to a CRC is four table lookups (crcShiftChunk) instead of a
// 32-step multiplication.
var crcChunkStep = func() (t [4][256]uint32) {
	x := crcX8N(chunkBytes)
	for k := range t {
		for v := range t[k] {
			t[k][v] = crcMultModP(x, uint32(v)<<(8*k))
		}
	}
	return t
}()

// crcShiftChunk returns crc times x^(8*chunkBytes): the CRC of a message
// with chunkBytes of zeros appended, before the CRC of those bytes is
// added in.
func crcShiftChunk(crc uint32) uint32 {
	t := &crcChunkStep
	return t[0][crc&0xff] ^ t[1][crc>>8&0xff] ^ t[2][crc>>16&0xff] ^ t[3][crc>>24]
}

// crc32Combine returns the CRC32C of a||b given crcA, crcB and len(b).
func crc32Combine(crcA, crcB uint32, lenB uint64) uint32 {
	return crcMultModP(crcX8N(lenB), crcA) ^ crcB
}

// decodeHeader checks and decodes a shard file's header. b holds the
// first headerBytes of the file, or all of it if it is shorter.
func decodeHeader(b []byte) (header, error) {
	if len(b) < headerBytesV1 {
		return header{}, fmt.Errorf("%w: header of %d bytes", ErrCorrupt, len(b))
	}
	if string(b[:8]) != shardMagic {
		return header{}, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	// The version first: it says where the header's checksum is.
	h := header{version: binary.LittleEndian.Uint16(b[8:])}
	crcAt := headerCRCAt
	switch h.version {
	case formatVersion:
		if len(b) < headerBytes {
			return header{}, fmt.Errorf("%w: header of %d bytes", ErrCorrupt, len(b))
		}
		h.epoch = binary.LittleEndian.Uint64(b[44:])
	case formatVersionV1:
		crcAt = headerCRCAtV1
	default:
		return header{}, fmt.Errorf("%w: format version %d", ErrCorrupt, h.version)
	}
	if got, want := crc32.Checksum(b[:crcAt], castagnoli), binary.LittleEndian.Uint32(b[crcAt:]); got != want {
		return header{}, fmt.Errorf("%w: header checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	if r := binary.LittleEndian.Uint16(b[10:]); r != 0 {
		return header{}, fmt.Errorf("%w: reserved field %d", ErrCorrupt, r)
	}
	h.chunk = binary.LittleEndian.Uint32(b[12:])
	h.length = binary.LittleEndian.Uint64(b[36:])
	h.id = ShardID{
		Volume:  binary.LittleEndian.Uint64(b[16:]),
		Segment: binary.LittleEndian.Uint64(b[24:]),
		Index:   binary.LittleEndian.Uint32(b[32:]),
	}
	if h.chunk != chunkBytes {
		return header{}, fmt.Errorf("%w: chunk size %d", ErrCorrupt, h.chunk)
	}
	if h.length > maxShardBytes {
		return header{}, fmt.Errorf("%w: length %d", ErrCorrupt, h.length)
	}
	return h, nil
}

// checkTable checks the chunk table (with its trailing crc) of a shard of
// length bytes and returns the table without its crc: one u32 CRC32C per
// chunk, read with chunkCRC.
func checkTable(b []byte, length uint64) ([]byte, error) {
	n := chunksFor(length)
	if uint64(len(b)) != n*crcBytes+crcBytes {
		return nil, fmt.Errorf("%w: chunk table of %d bytes for %d chunks", ErrCorrupt, len(b), n)
	}
	table := b[:n*crcBytes]
	if got, want := crc32.Checksum(table, castagnoli), binary.LittleEndian.Uint32(b[n*crcBytes:]); got != want {
		return nil, fmt.Errorf("%w: chunk table checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	return table, nil
}

// chunkCRC is chunk c's entry in a chunk table.
func chunkCRC(table []byte, c uint64) uint32 { return binary.LittleEndian.Uint32(table[c*crcBytes:]) }

// checkChunks checks data, which starts at chunk `first` of a shard, chunk
// by chunk against the table.
func checkChunks(data []byte, first uint64, table []byte) error {
	chunks := uint64(len(table)) / crcBytes
	for i := uint64(0); uint64(len(data)) > i*chunkBytes; i++ {
		c := first + i
		if c >= chunks {
			return fmt.Errorf("%w: chunk %d past the table", ErrCorrupt, c)
		}
		end := min((i+1)*chunkBytes, uint64(len(data)))
		if got, want := crc32.Checksum(data[i*chunkBytes:end], castagnoli), chunkCRC(table, c); got != want {
			return fmt.Errorf("%w: chunk %d checksum %08x, want %08x", ErrCorrupt, c, got, want)
		}
	}
	return nil
}

// decodeShard checks a whole shard file and returns its header and data.
func decodeShard(b []byte) (header, []byte, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return header{}, nil, err
	}
	if uint64(len(b)) != h.fileBytes() {
		return header{}, nil, fmt.Errorf("%w: file of %d bytes for a shard of %d", ErrCorrupt, len(b), h.length)
	}
	data := b[h.bytes() : h.bytes()+h.length]
	table, err := checkTable(b[h.bytes()+h.length:], h.length)
	if err != nil {
		return header{}, nil, err
	}
	if err := checkChunks(data, 0, table); err != nil {
		return header{}, nil, err
	}
	return h, data, nil
}
