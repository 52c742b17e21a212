//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package journal

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestReadBlocksOnDiskGoTogether reads blocks scattered over a journal on
// the disk (O_DIRECT where the filesystem allows it) in one ReadBlocks,
// more than one io_submit takes, in an order unlike the journal's: every
// block must come back, through native AIO, and a damaged one must be
// caught as before.
func TestReadBlocksOnDiskGoTogether(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, err := Open(path, Options{SizeBytes: superblockArea + 8<<20, ZoneBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	const n = aioBatch*2 + 17
	var locs []Location
	var ids []uint64
	for i := range n {
		// A block of its own batch each, with a header between: no two
		// are adjacent, so each is a run of its own.
		_, l := appendWait(t, j, entryOf("", uint64(1000+i)))
		locs, ids = append(locs, l[0][0]), append(ids, uint64(1000+i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(n, func(a, b int) { locs[a], locs[b] = locs[b], locs[a]; ids[a], ids[b] = ids[b], ids[a] })
	before := j.aio.submits.Load()
	buf := alignedBuf(n * BlockSize)
	if err := j.ReadBlocks(locs, buf); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if !bytes.Equal(buf[i*BlockSize:(i+1)*BlockSize], blockData(id)) {
			t.Fatalf("block %d of the read is not block %d", i, id)
		}
	}
	if got := j.aio.submits.Load() - before; got < 3 {
		t.Fatalf("%d io_submit calls for %d scattered blocks: the reads did not go together", got, n)
	}

	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, locs[5].Offset+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := j.ReadBlocks(locs[:9], alignedBuf(9*BlockSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a read of scattered blocks, one of them damaged: %v", err)
	}
}

// TestReadBatchPastTheEnd: a range beyond the end of the file is a short
// read, an error, and the ranges before it are still read.
func TestReadBatchPastTheEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := bytes.Repeat([]byte{7}, 3*BlockSize)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	file, err := openOS(path, os.O_RDONLY|DirectFlag, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	o := file.(*osFile)
	p := newAIOPool()
	defer p.close()
	a, b := alignedBuf(BlockSize), alignedBuf(BlockSize)
	err = o.readBatch(p, [][]byte{a, b}, []int64{BlockSize, 5 * BlockSize})
	if errors.Is(err, errNoAIO) {
		t.Skip("no native AIO here")
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a read past the end: %v", err)
	}
	if !bytes.Equal(a, data[:BlockSize]) {
		t.Fatal("the range before the bad one was not read")
	}
}
