package chaos

import (
	"testing"
)

func TestDecodeBlock(t *testing.T) {
	tag := Tag{Client: 3, Op: 3<<40 | 17, Volume: 2, Block: 1234, Seq: 9}
	valid := make([]byte, BlockSize)
	EncodeBlock(tag, valid)
	flip := func(i int) []byte {
		b := append([]byte(nil), valid...)
		b[i] ^= 0x01
		return b
	}
	oneByte := make([]byte, BlockSize)
	oneByte[100] = 1
	// A block of another tag shifted by a sector: what a torn or
	// misplaced write looks like.
	shifted := make([]byte, BlockSize)
	copy(shifted[512:], valid)

	tests := []struct {
		name    string
		buf     []byte
		want    Content
		wantTag Tag
	}{
		{"zero", make([]byte, BlockSize), Zero, Tag{}},
		{"valid", valid, Valid, tag},
		{"flipped magic", flip(0), Corrupt, Tag{}},
		{"flipped tag", flip(13), Corrupt, Tag{}},
		{"flipped filler", flip(2000), Corrupt, Tag{}},
		{"flipped crc", flip(BlockSize - 1), Corrupt, Tag{}},
		{"one stray byte", oneByte, Corrupt, Tag{}},
		{"shifted by a sector", shifted, Corrupt, Tag{}},
		{"short", valid[:BlockSize-1], Corrupt, Tag{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, content := DecodeBlock(tt.buf)
			if content != tt.want || got != tt.wantTag {
				t.Errorf("DecodeBlock = %+v, %v; want %+v, %v", got, content, tt.wantTag, tt.want)
			}
		})
	}
}

func TestEncodeBlockDistinct(t *testing.T) {
	// Two writes that differ only in their sequence number differ in every
	// part of the block after the header, not only in the tag.
	a, b := make([]byte, BlockSize), make([]byte, BlockSize)
	EncodeBlock(Tag{Client: 1, Op: 5, Block: 7, Seq: 1}, a)
	EncodeBlock(Tag{Client: 1, Op: 5, Block: 7, Seq: 2}, b)
	same := 0
	for i := headerEnd; i < crcOffset; i += 4 {
		if string(a[i:i+4]) == string(b[i:i+4]) {
			same++
		}
	}
	if same > 2 {
		t.Errorf("%d filler words equal between two tags", same)
	}
	// An all-zero tag still encodes to a valid, non-zero block.
	EncodeBlock(Tag{}, a)
	if _, c := DecodeBlock(a); c != Valid {
		t.Errorf("zero tag decodes as %v", c)
	}
}
