package journal

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A filesystem that refuses O_DIRECT gets buffered I/O, durable all the
// same through fdatasync.
func TestDirectIOFallback(t *testing.T) {
	orig := osOpenFile
	t.Cleanup(func() { osOpenFile = orig })
	var refused int
	osOpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if flag&unix.O_DIRECT != 0 {
			refused++
			return nil, &os.PathError{Op: "open", Path: name, Err: unix.EINVAL}
		}
		return orig(name, flag, perm)
	}
	path := filepath.Join(t.TempDir(), "journal")
	opts := Options{SizeBytes: superblockArea + 2<<20, ZoneBytes: 1 << 20}
	j, err := Open(path, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if refused != 1 || j.Stats().DirectIO {
		t.Fatalf("O_DIRECT refused %d times, stats say direct %v", refused, j.Stats().DirectIO)
	}
	_, locs := appendWait(t, j, entryOf("buffered", 1))
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var got []replayed
	if j, err = Open(path, opts, collect(&got)); err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(got) != 1 || got[0].locs[0] != locs[0][0] {
		t.Fatalf("replayed %v", got)
	}
	checkRead(t, j, locs[0][0], blockData(1))
}

// A filesystem without fallocate gets its blocks by writing zeros.
func TestAllocateWithoutFallocate(t *testing.T) {
	f, err := openOS(filepath.Join(t.TempDir(), "f"), os.O_RDWR|os.O_CREATE|DirectFlag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	of := f.(*osFile)
	// A partial block of data first, without O_DIRECT's alignment.
	buffered, err := os.OpenFile(of.f.Name(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	if _, err := buffered.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := of.zeroFill(4, 3<<20+BlockSize); err != nil {
		t.Fatal(err)
	}
	size, err := f.Size()
	if err != nil || size != 3<<20+BlockSize {
		t.Fatalf("size %d, %v", size, err)
	}
	b := alignedBuf(BlockSize)
	if err := readFull(f, b, 0); err != nil || string(b[:4]) != "data" {
		t.Fatalf("zero-fill overwrote the data: %q, %v", b[:4], err)
	}
	for _, off := range []int64{0, 3 << 20} {
		if err := readFull(f, b, off); err != nil {
			t.Fatal(err)
		}
		for i, c := range b {
			if c != 0 && (off != 0 || i >= 4) {
				t.Fatalf("zero-filled byte %d is %d", off+int64(i), c)
			}
		}
	}
}
