package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// encodeTestHeader is a whole header (fixed part and entry table) with a
// valid CRC, as the writer lays it out before splitting it around the
// data.
func encodeTestHeader(h header, metas [][]byte, crcs [][]uint32) []byte {
	hdr := make([]byte, fixedHeaderLen)
	for i := range metas {
		hdr = appendEntry(hdr, metas[i], crcs[i])
	}
	h.hdrLen = uint32(len(hdr))
	h.entries = uint32(len(metas))
	h.blocks = 0
	for _, c := range crcs {
		h.blocks += uint32(len(c))
	}
	putFixedHeader(hdr, &h)
	putUint32(hdr[12:], headerCRC(hdr))
	return hdr
}

// fuzzHeaderSeeds are the seeds of FuzzDecodeHeader (also in
// testdata/fuzz, written by TestWriteFuzzCorpus).
func fuzzHeaderSeeds() map[string][]byte {
	base := header{kind: kindBatch, lsn: 7, gen: 3, offset: superblockArea + 5*BlockSize, prevCRC: 0xdeadbeef}
	marker := make([]byte, BlockSize)
	encodeZoneEnd(marker, 9, 2, superblockArea+60<<10, 0x1234)
	seeds := map[string][]byte{
		"batch":       encodeTestHeader(base, [][]byte{[]byte("meta"), nil}, [][]uint32{{1, 2}, {3}}),
		"meta-only":   encodeTestHeader(base, [][]byte{[]byte("just metadata")}, [][]uint32{nil}),
		"long-header": encodeTestHeader(base, [][]byte{bytes.Repeat([]byte{'m'}, 5000)}, [][]uint32{{4, 5, 6}}),
		"zone-end":    marker[:fixedHeaderLen],
		"empty":       {},
		"zeros":       make([]byte, BlockSize),
	}
	bad := bytes.Clone(seeds["batch"])
	binary.LittleEndian.PutUint32(bad[fixedHeaderLen:], 1<<30) // metadata length
	putUint32(bad[12:], 0)
	putUint32(bad[12:], headerCRC(bad))
	seeds["bad-meta-length"] = bad
	return seeds
}

// FuzzDecodeHeader checks that no input panics the header decoders or
// makes them allocate beyond their limits, and that what decodes
// re-encodes to the same bytes.
func FuzzDecodeHeader(f *testing.F) {
	for _, s := range fuzzHeaderSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Headers of a few blocks exercise every path; longer inputs only
		// make the fuzzer's minimization of new finds slow.
		if len(b) > 8<<10 {
			return
		}
		// The offset the header claims, so that the fuzzer gets past
		// that check; a zone of 64 MiB.
		var off int64
		if len(b) >= 40 {
			off = int64(binary.LittleEndian.Uint64(b[32:]))
		}
		h, err := decodeFixedHeader(b, off, 64<<20)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error of another class: %v", err)
			}
			return
		}
		if int(h.hdrLen) > len(b) {
			return
		}
		entries, err := decodeHeader(h, b[:h.hdrLen])
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error of another class: %v", err)
			}
			return
		}
		var metas [][]byte
		var crcs [][]uint32
		for _, e := range entries {
			metas = append(metas, e.meta)
			var c []uint32
			for i := range e.blocks() {
				c = append(c, e.crc(i))
			}
			crcs = append(crcs, c)
		}
		if again := encodeTestHeader(h, metas, crcs); !bytes.Equal(again, b[:h.hdrLen]) {
			t.Fatalf("%x decoded to %+v, which re-encodes to %x", b[:h.hdrLen], h, again)
		}
	})
}

func fuzzSuperblockSeeds() map[string][]byte {
	seeds := map[string][]byte{"empty": {}, "zeros": make([]byte, superblockLen)}
	for i, sb := range []superblock{
		{copy: 0, seq: 2, gen: 2, zoneBytes: 64 << 20, zones: 16, tailLSN: 1, tailOffset: superblockArea},
		{copy: 1, seq: 9, gen: 4, zoneBytes: 64 << 10, zones: 3, tailLSN: 77, tailOffset: superblockArea + 128<<10, tailPrevCRC: 0xabcdef01},
	} {
		b := make([]byte, BlockSize)
		encodeSuperblock(b, &sb)
		seeds[fmt.Sprint("copy-", i)] = b
	}
	return seeds
}

// FuzzDecodeSuperblock checks that no input panics the superblock decoder
// and that what decodes re-encodes to the same bytes.
func FuzzDecodeSuperblock(f *testing.F) {
	for _, s := range fuzzSuperblockSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for copyIndex := range 2 {
			sb, err := decodeSuperblock(b, copyIndex)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error of another class: %v", err)
				}
				continue
			}
			again := make([]byte, superblockLen)
			encodeSuperblock(again, &sb)
			if !bytes.Equal(again, b[:superblockLen]) {
				t.Fatalf("%x decoded to %+v, which re-encodes to %x", b[:superblockLen], sb, again)
			}
		}
	})
}

// TestWriteFuzzCorpus writes the seeds above to testdata/fuzz when
// JOURNAL_WRITE_CORPUS is set (after a format change); the fuzzers' own
// finds land there too.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("JOURNAL_WRITE_CORPUS") == "" {
		t.Skip("JOURNAL_WRITE_CORPUS not set")
	}
	for fuzzer, seeds := range map[string]map[string][]byte{
		"FuzzDecodeHeader":     fuzzHeaderSeeds(),
		"FuzzDecodeSuperblock": fuzzSuperblockSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", fuzzer)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The superblock and header layouts are those doc.go describes.
func TestFormatLayout(t *testing.T) {
	sb := superblock{copy: 1, seq: 0x0102, gen: 0x0304, zoneBytes: 1 << 20, zones: 5, tailLSN: 0x0506, tailOffset: 0x0708, tailPrevCRC: 0x090a}
	b := make([]byte, superblockLen)
	encodeSuperblock(b, &sb)
	le := binary.LittleEndian
	if string(b[:8]) != "BLSTJSB1" || le.Uint16(b[8:]) != 1 || le.Uint16(b[10:]) != 1 || le.Uint64(b[16:]) != 0x0102 ||
		le.Uint64(b[24:]) != 0x0304 || le.Uint64(b[32:]) != 1<<20 || le.Uint32(b[40:]) != 5 || le.Uint32(b[44:]) != 0x090a ||
		le.Uint64(b[48:]) != 0x0506 || le.Uint64(b[56:]) != 0x0708 {
		t.Fatalf("superblock layout: %x", b)
	}
	h := header{kind: kindBatch, lsn: 11, gen: 12, offset: 13, prevCRC: 14}
	hdr := encodeTestHeader(h, [][]byte{[]byte("ab")}, [][]uint32{{0x0f0e0d0c}})
	if string(hdr[:8]) != "BLSTJNL1" || le.Uint16(hdr[8:]) != 1 || le.Uint16(hdr[10:]) != kindBatch || le.Uint64(hdr[16:]) != 11 ||
		le.Uint64(hdr[24:]) != 12 || le.Uint64(hdr[32:]) != 13 || le.Uint32(hdr[40:]) != 14 || le.Uint32(hdr[44:]) != 70 ||
		le.Uint32(hdr[48:]) != 1 || le.Uint32(hdr[52:]) != 1 ||
		!bytes.Equal(hdr[56:], []byte{2, 0, 0, 0, 1, 0, 0, 0, 'a', 'b', 0x0c, 0x0d, 0x0e, 0x0f}) {
		t.Fatalf("header layout: %x", hdr)
	}
	if le.Uint32(hdr[12:]) != crc32c(append(append(bytes.Clone(hdr[:12]), 0, 0, 0, 0), hdr[16:]...)) {
		t.Fatal("header CRC is not the CRC32C of the header with its CRC field zero")
	}
}
