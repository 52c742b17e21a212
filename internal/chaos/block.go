package chaos

import (
	"encoding/binary"
	"hash/crc32"
)

// BlockSize is the size of every block the workload writes and reads.
const BlockSize = 4096

// Tag says who wrote a block and when: every write of the workload is
// unique, so a block's content names the write that left it there.
type Tag struct {
	Client uint32
	Op     uint64 // unique per client operation across the run
	Volume uint32
	Block  uint64
	Seq    uint64 // the client's write sequence number on that block
}

// Content classifies what a block held when read.
type Content int

const (
	// Zero: all BlockSize bytes are zero (never written, or trimmed).
	Zero Content = iota
	// Valid: a block written by EncodeBlock whose magic and CRC check out.
	Valid
	// Corrupt: neither zero nor a valid block.
	Corrupt
)

func (c Content) String() string {
	switch c {
	case Zero:
		return "zero"
	case Valid:
		return "valid"
	case Corrupt:
		return "corrupt"
	}
	return "content?"
}

// Layout of an encoded block, little endian:
//
//	[0:8)     magic
//	[8:12)    Client
//	[12:20)   Op
//	[20:24)   Volume
//	[24:32)   Block
//	[32:40)   Seq
//	[40:4092) filler, a xorshift stream seeded from the tag, so that a block
//	          torn or shifted by a sector still fails its CRC and is not zero
//	[4092:4096) CRC32C (Castagnoli) of bytes [0:4092)
const (
	blockMagic = 0xba11a57c4a05b10c
	headerEnd  = 40
	crcOffset  = BlockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// EncodeBlock fills buf[:BlockSize] with the block that tag t describes.
// It panics if buf is shorter than BlockSize: that is a caller's bug.
func EncodeBlock(t Tag, buf []byte) {
	buf = buf[:BlockSize]
	binary.LittleEndian.PutUint64(buf[0:], blockMagic)
	binary.LittleEndian.PutUint32(buf[8:], t.Client)
	binary.LittleEndian.PutUint64(buf[12:], t.Op)
	binary.LittleEndian.PutUint32(buf[20:], t.Volume)
	binary.LittleEndian.PutUint64(buf[24:], t.Block)
	binary.LittleEndian.PutUint64(buf[32:], t.Seq)
	x := uint64(t.Client)<<32 ^ t.Op*0x9e3779b97f4a7c15 ^ t.Block<<17 ^ t.Seq<<7 ^ uint64(t.Volume)
	if x == 0 {
		x = 1 // xorshift never leaves zero
	}
	for i := headerEnd; i < crcOffset; i += 4 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint32(buf[i:], uint32(x))
	}
	binary.LittleEndian.PutUint32(buf[crcOffset:], crc32.Checksum(buf[:crcOffset], castagnoli))
}

// DecodeBlock says what buf[:BlockSize] holds; the Tag is meaningful only
// when the Content is Valid. A buffer shorter than BlockSize is Corrupt.
func DecodeBlock(buf []byte) (Tag, Content) {
	if len(buf) < BlockSize {
		return Tag{}, Corrupt
	}
	buf = buf[:BlockSize]
	if isZero(buf) {
		return Tag{}, Zero
	}
	if binary.LittleEndian.Uint64(buf[0:]) != blockMagic ||
		binary.LittleEndian.Uint32(buf[crcOffset:]) != crc32.Checksum(buf[:crcOffset], castagnoli) {
		return Tag{}, Corrupt
	}
	return Tag{
		Client: binary.LittleEndian.Uint32(buf[8:]),
		Op:     binary.LittleEndian.Uint64(buf[12:]),
		Volume: binary.LittleEndian.Uint32(buf[20:]),
		Block:  binary.LittleEndian.Uint64(buf[24:]),
		Seq:    binary.LittleEndian.Uint64(buf[32:]),
	}, Valid
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
