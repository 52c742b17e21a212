package journal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"unsafe"
)

// The on-disk format is described in doc.go; this file is its only
// encoder and decoder. All integers are little-endian.

const (
	// BlockSize is the size of a data block and the unit of every offset
	// and length in the file.
	BlockSize = 4096
	// MaxMetaBytes bounds an entry's metadata.
	MaxMetaBytes = 64 << 10

	formatVersion = 1

	// superblockArea is the start of the file holding the two superblock
	// copies, A at 0 and B at 4096; zone 0 starts after it.
	superblockArea = 2 * BlockSize
	superblockLen  = 64

	headerMagic = "BLSTJNL1"
	sbMagic     = "BLSTJSB1"

	// fixedHeaderLen is the part of a batch header before its entry
	// table; entryFixedLen the part of each entry before its metadata.
	fixedHeaderLen = 56
	entryFixedLen  = 8
	// maxHeaderBytes bounds a batch header (its entry table), so that a
	// header read from disk never asks for more memory than this.
	maxHeaderBytes = 4 << 20

	kindBatch   = 1 // a batch of entries
	kindZoneEnd = 2 // the next batch is at the start of the next zone
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// header is a decoded batch header (or zone-end marker, which has no
// entries).
type header struct {
	kind    uint16
	lsn     uint64
	gen     uint64 // the Open that wrote it; see doc.go
	offset  int64  // file offset of the header's first block
	prevCRC uint32 // the previous batch's header CRC
	crc     uint32 // this header's CRC
	hdrLen  uint32 // bytes of header: fixed part and entry table
	entries uint32
	blocks  uint32 // data blocks in the batch
}

// batchBytes is the size on disk of a batch with this header: its first
// header block, its data blocks, and the blocks the rest of its header
// (past the first block) takes after the data.
func (h *header) batchBytes() int64 {
	return BlockSize + int64(h.blocks)*BlockSize + trailerBytes(int64(h.hdrLen))
}

// trailerBytes is the space, after the data blocks, that a header of
// hdrLen bytes needs for what does not fit in its first block.
func trailerBytes(hdrLen int64) int64 {
	if hdrLen <= BlockSize {
		return 0
	}
	return roundUp(hdrLen - BlockSize)
}

func roundUp(n int64) int64 { return (n + BlockSize - 1) / BlockSize * BlockSize }

// putFixedHeader writes h's fixed part into b[:fixedHeaderLen], with a zero
// CRC; sealHeader fills the CRC in.
func putFixedHeader(b []byte, h *header) {
	copy(b[0:8], headerMagic)
	binary.LittleEndian.PutUint16(b[8:], formatVersion)
	binary.LittleEndian.PutUint16(b[10:], h.kind)
	binary.LittleEndian.PutUint32(b[12:], 0)
	binary.LittleEndian.PutUint64(b[16:], h.lsn)
	binary.LittleEndian.PutUint64(b[24:], h.gen)
	binary.LittleEndian.PutUint64(b[32:], uint64(h.offset))
	binary.LittleEndian.PutUint32(b[40:], h.prevCRC)
	binary.LittleEndian.PutUint32(b[44:], h.hdrLen)
	binary.LittleEndian.PutUint32(b[48:], h.entries)
	binary.LittleEndian.PutUint32(b[52:], h.blocks)
}

// headerCRC is the CRC32C of a whole header (fixed part and table) with
// its CRC field taken as zero.
func headerCRC(hdr []byte) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, hdr[:12])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, hdr[16:])
}

// appendEntry appends one entry's record to an entry table: metadata
// length, block count, the metadata, and each block's CRC.
func appendEntry(table []byte, meta []byte, crcs []uint32) []byte {
	table = binary.LittleEndian.AppendUint32(table, uint32(len(meta)))
	table = binary.LittleEndian.AppendUint32(table, uint32(len(crcs)))
	table = append(table, meta...)
	for _, c := range crcs {
		table = binary.LittleEndian.AppendUint32(table, c)
	}
	return table
}

func entryRecordLen(metaLen, blocks int) int { return entryFixedLen + metaLen + 4*blocks }

// decodeFixedHeader checks and decodes the fixed part of a header from the
// first block of a batch read at offset, in a zone with room bytes left
// from offset. It checks everything that does not need the rest of the
// header: magic, version, kind, the offset, and that the lengths fit in
// room and in the limits. It does not check the CRC.
func decodeFixedHeader(b []byte, offset, room int64) (header, error) {
	var h header
	if len(b) < fixedHeaderLen {
		return h, fmt.Errorf("header: %d bytes: %w", len(b), ErrCorrupt)
	}
	if string(b[0:8]) != headerMagic {
		return h, fmt.Errorf("header at %d: bad magic: %w", offset, ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != formatVersion {
		return h, fmt.Errorf("header at %d: version %d: %w", offset, v, ErrCorrupt)
	}
	h.kind = binary.LittleEndian.Uint16(b[10:])
	h.crc = binary.LittleEndian.Uint32(b[12:])
	h.lsn = binary.LittleEndian.Uint64(b[16:])
	h.gen = binary.LittleEndian.Uint64(b[24:])
	h.offset = int64(binary.LittleEndian.Uint64(b[32:]))
	h.prevCRC = binary.LittleEndian.Uint32(b[40:])
	h.hdrLen = binary.LittleEndian.Uint32(b[44:])
	h.entries = binary.LittleEndian.Uint32(b[48:])
	h.blocks = binary.LittleEndian.Uint32(b[52:])
	if h.offset != offset {
		return h, fmt.Errorf("header at %d says it is at %d: %w", offset, h.offset, ErrCorrupt)
	}
	switch h.kind {
	case kindBatch:
	case kindZoneEnd:
		if h.hdrLen != fixedHeaderLen || h.entries != 0 || h.blocks != 0 {
			return h, fmt.Errorf("zone-end marker at %d has a body: %w", offset, ErrCorrupt)
		}
	default:
		return h, fmt.Errorf("header at %d: kind %d: %w", offset, h.kind, ErrCorrupt)
	}
	if h.hdrLen < fixedHeaderLen || h.hdrLen > maxHeaderBytes {
		return h, fmt.Errorf("header at %d: length %d: %w", offset, h.hdrLen, ErrCorrupt)
	}
	if uint64(h.entries)*entryFixedLen > uint64(h.hdrLen-fixedHeaderLen) {
		return h, fmt.Errorf("header at %d: %d entries in %d bytes: %w", offset, h.entries, h.hdrLen, ErrCorrupt)
	}
	if uint64(h.blocks)*4 > uint64(h.hdrLen-fixedHeaderLen) || h.batchBytes() > room {
		return h, fmt.Errorf("header at %d: %d blocks, %d header bytes do not fit in %d bytes: %w",
			offset, h.blocks, h.hdrLen, room, ErrCorrupt)
	}
	if h.lsn == 0 {
		return h, fmt.Errorf("header at %d: LSN 0: %w", offset, ErrCorrupt)
	}
	return h, nil
}

// entryHeader is one entry of a decoded entry table: its metadata and
// block CRCs, aliasing the header bytes.
type entryHeader struct {
	meta []byte
	crcs []byte // 4 bytes per block
}

func (e entryHeader) blocks() int      { return len(e.crcs) / 4 }
func (e entryHeader) crc(i int) uint32 { return binary.LittleEndian.Uint32(e.crcs[4*i:]) }

// decodeHeader checks a whole header hdr (h.hdrLen bytes: the fixed part
// already decoded into h, then the entry table) and returns its entries.
// The table must hold exactly h.entries records whose block counts add
// up to h.blocks, and end exactly at h.hdrLen.
func decodeHeader(h header, hdr []byte) ([]entryHeader, error) {
	if len(hdr) != int(h.hdrLen) {
		return nil, fmt.Errorf("header at %d: have %d of %d bytes: %w", h.offset, len(hdr), h.hdrLen, ErrCorrupt)
	}
	if got := headerCRC(hdr); got != h.crc {
		return nil, fmt.Errorf("header at %d: CRC %08x, recorded %08x: %w", h.offset, got, h.crc, ErrCorrupt)
	}
	entries := make([]entryHeader, 0, h.entries)
	rest := hdr[fixedHeaderLen:]
	var blocks uint64
	for i := uint32(0); i < h.entries; i++ {
		if len(rest) < entryFixedLen {
			return nil, fmt.Errorf("header at %d: entry %d truncated: %w", h.offset, i, ErrCorrupt)
		}
		metaLen := uint64(binary.LittleEndian.Uint32(rest[0:]))
		n := uint64(binary.LittleEndian.Uint32(rest[4:]))
		rest = rest[entryFixedLen:]
		if metaLen > MaxMetaBytes || metaLen+4*n > uint64(len(rest)) {
			return nil, fmt.Errorf("header at %d: entry %d: %d metadata bytes, %d blocks in %d bytes: %w",
				h.offset, i, metaLen, n, len(rest), ErrCorrupt)
		}
		entries = append(entries, entryHeader{meta: rest[:metaLen], crcs: rest[metaLen : metaLen+4*n]})
		rest = rest[metaLen+4*n:]
		blocks += n
	}
	if len(rest) != 0 || blocks != uint64(h.blocks) {
		return nil, fmt.Errorf("header at %d: %d trailing bytes, %d blocks listed of %d: %w",
			h.offset, len(rest), blocks, h.blocks, ErrCorrupt)
	}
	return entries, nil
}

// superblock records where replay starts; see doc.go.
type superblock struct {
	copy      int    // 0 (A, at offset 0) or 1 (B, at 4096)
	seq       uint64 // higher is newer
	gen       uint64 // the generation of the last Open
	zoneBytes int64
	zones     uint32
	// The tail: the first batch replay must read, where it is, and the
	// header CRC of the batch before it.
	tailLSN     uint64
	tailOffset  int64
	tailPrevCRC uint32
}

func encodeSuperblock(b []byte, sb *superblock) {
	clear(b[:superblockLen])
	copy(b[0:8], sbMagic)
	binary.LittleEndian.PutUint16(b[8:], formatVersion)
	binary.LittleEndian.PutUint16(b[10:], uint16(sb.copy))
	binary.LittleEndian.PutUint64(b[16:], sb.seq)
	binary.LittleEndian.PutUint64(b[24:], sb.gen)
	binary.LittleEndian.PutUint64(b[32:], uint64(sb.zoneBytes))
	binary.LittleEndian.PutUint32(b[40:], sb.zones)
	binary.LittleEndian.PutUint32(b[44:], sb.tailPrevCRC)
	binary.LittleEndian.PutUint64(b[48:], sb.tailLSN)
	binary.LittleEndian.PutUint64(b[56:], uint64(sb.tailOffset))
	binary.LittleEndian.PutUint32(b[12:], headerCRC(b[:superblockLen]))
}

// decodeSuperblock checks and decodes copy (0 or 1) of the superblock
// from b (at least superblockLen bytes).
func decodeSuperblock(b []byte, copyIndex int) (superblock, error) {
	var sb superblock
	if len(b) < superblockLen {
		return sb, fmt.Errorf("superblock: %d bytes: %w", len(b), ErrCorrupt)
	}
	b = b[:superblockLen]
	if string(b[0:8]) != sbMagic {
		return sb, fmt.Errorf("superblock %c: bad magic: %w", 'A'+copyIndex, ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != formatVersion {
		return sb, fmt.Errorf("superblock %c: version %d: %w", 'A'+copyIndex, v, ErrCorrupt)
	}
	if got, want := headerCRC(b), binary.LittleEndian.Uint32(b[12:]); got != want {
		return sb, fmt.Errorf("superblock %c: CRC %08x, recorded %08x: %w", 'A'+copyIndex, got, want, ErrCorrupt)
	}
	sb.copy = int(binary.LittleEndian.Uint16(b[10:]))
	sb.seq = binary.LittleEndian.Uint64(b[16:])
	sb.gen = binary.LittleEndian.Uint64(b[24:])
	sb.zoneBytes = int64(binary.LittleEndian.Uint64(b[32:]))
	sb.zones = binary.LittleEndian.Uint32(b[40:])
	sb.tailPrevCRC = binary.LittleEndian.Uint32(b[44:])
	sb.tailLSN = binary.LittleEndian.Uint64(b[48:])
	sb.tailOffset = int64(binary.LittleEndian.Uint64(b[56:]))
	g := geometry{zoneBytes: sb.zoneBytes, zones: int(sb.zones)}
	switch {
	case sb.copy != copyIndex:
		return sb, fmt.Errorf("superblock %c says it is copy %d: %w", 'A'+copyIndex, sb.copy, ErrCorrupt)
	case sb.zoneBytes < minZoneBytes || sb.zoneBytes%BlockSize != 0 || sb.zoneBytes > maxZoneBytes ||
		sb.zones < 2 || sb.zones > maxZones:
		return sb, fmt.Errorf("superblock %c: %d zones of %d bytes: %w", 'A'+copyIndex, sb.zones, sb.zoneBytes, ErrCorrupt)
	case sb.tailLSN == 0 || sb.tailOffset < superblockArea || sb.tailOffset >= g.fileBytes() ||
		sb.tailOffset%BlockSize != 0:
		return sb, fmt.Errorf("superblock %c: tail LSN %d at %d: %w", 'A'+copyIndex, sb.tailLSN, sb.tailOffset, ErrCorrupt)
	}
	return sb, nil
}

// geometry is the file's division into zones.
type geometry struct {
	zoneBytes int64
	zones     int
}

const (
	minZoneBytes = 4 * BlockSize
	maxZoneBytes = 1 << 40
	maxZones     = 1 << 20
)

func (g geometry) fileBytes() int64      { return superblockArea + int64(g.zones)*g.zoneBytes }
func (g geometry) zoneStart(z int) int64 { return superblockArea + int64(z)*g.zoneBytes }
func (g geometry) zoneEnd(z int) int64   { return g.zoneStart(z) + g.zoneBytes }
func (g geometry) next(z int) int        { return (z + 1) % g.zones }
func (g geometry) zoneOf(off int64) int  { return int((off - superblockArea) / g.zoneBytes) }
func (g geometry) totalBytes() int64     { return int64(g.zones) * g.zoneBytes }

// alignedBuf returns n zeroed bytes starting at a 4096-aligned address, as
// direct I/O needs.
func alignedBuf(n int) []byte {
	b := make([]byte, n+BlockSize)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % BlockSize); r != 0 {
		skip = BlockSize - r
	}
	return b[skip : skip+n : skip+n]
}

func isAligned(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%BlockSize == 0
}

func putUint32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }

// encodeZoneEnd lays out in b (a block) the marker that says the batch
// lsn, whose predecessor's header CRC is prevCRC, is at the start of the
// next zone, not at offset.
func encodeZoneEnd(b []byte, lsn, gen uint64, offset int64, prevCRC uint32) {
	clear(b)
	h := header{kind: kindZoneEnd, lsn: lsn, gen: gen, offset: offset, prevCRC: prevCRC, hdrLen: fixedHeaderLen}
	putFixedHeader(b, &h)
	putUint32(b[12:], headerCRC(b[:fixedHeaderLen]))
}
