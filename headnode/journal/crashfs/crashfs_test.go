package crashfs

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

func mustOpen(t *testing.T, f *FS, name string, flag int) *File {
	t.Helper()
	h, err := f.OpenFile(name, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func content(t *testing.T, f *FS, name string) []byte {
	t.Helper()
	h := mustOpen(t, f, name, os.O_RDONLY)
	defer h.Close()
	size, _ := h.Size()
	b := make([]byte, size)
	if _, err := h.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

// A crash keeps what was synced and, of what was not, a state a power
// loss could leave: each 512-byte sector is its synced content or the
// content of one of the unsynced writes that covered it. Over many seeds
// every outcome happens: nothing kept, everything kept, torn writes.
func TestCrashKeepsSyncedAndSectorsOfUnsynced(t *testing.T) {
	base := bytes.Repeat([]byte{'b'}, 8*SectorSize)
	writes := []struct {
		off  int64
		fill byte
		n    int
	}{{0, '1', 3 * SectorSize}, {2 * SectorSize, '2', 4 * SectorSize}, {5*SectorSize + 100, '3', 1000}}
	full := append([]byte(nil), base...)
	for _, w := range writes {
		full = writeAt(full, bytes.Repeat([]byte{w.fill}, w.n), w.off)
	}
	var noneKept, allKept, torn int
	for seed := range uint64(300) {
		f := New(seed)
		h := mustOpen(t, f, "/d/file", os.O_RDWR|os.O_CREATE)
		h.WriteAt(base, 0)
		if err := h.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.SyncDir("/d"); err != nil {
			t.Fatal(err)
		}
		for _, w := range writes {
			h.WriteAt(bytes.Repeat([]byte{w.fill}, w.n), w.off)
		}
		f.Crash()
		if _, err := h.WriteAt([]byte{1}, 0); !errors.Is(err, ErrCrashed) {
			t.Fatalf("write on a handle from before the crash: %v", err)
		}
		if err := h.Close(); err != nil {
			t.Fatalf("Close of a dead handle: %v", err)
		}
		got := content(t, f, "/d/file")
		if len(got) < len(base) {
			t.Fatalf("seed %d: %d bytes after the crash", seed, len(got))
		}
		kept := map[byte]int{}
		for s := 0; s < len(got); s += SectorSize {
			sector := got[s:min(s+SectorSize, len(got))]
			// A sector may mix the base and the write that covers part
			// of it (the third write starts mid-sector), but each byte
			// is one or the other.
			for i, c := range sector {
				off := int64(s + i)
				valid := off < int64(len(base)) && c == base[off]
				for _, w := range writes {
					if off >= w.off && off < w.off+int64(w.n) && c == w.fill {
						valid = true
						kept[w.fill]++
					}
				}
				if !valid {
					t.Fatalf("seed %d: byte %d is %q", seed, off, c)
				}
			}
		}
		switch {
		case len(kept) == 0:
			noneKept++
		case bytes.Equal(got, full):
			allKept++
		}
		for _, w := range writes {
			if n := kept[w.fill]; n > 0 && n < w.n/2 {
				torn++
			}
		}
	}
	if noneKept == 0 || allKept == 0 || torn == 0 {
		t.Fatalf("over 300 seeds: %d crashes kept nothing, %d everything, %d tore a write", noneKept, allKept, torn)
	}
}

// Synced content survives every crash whole.
func TestSyncIsDurable(t *testing.T) {
	f := New(1)
	h := mustOpen(t, f, "/file", os.O_RDWR|os.O_CREATE)
	f.SyncDir("/")
	want := bytes.Repeat([]byte("durable"), 1000)
	h.WriteAt(want, 0)
	h.Allocate(1 << 16)
	if err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		f.Crash()
		got := content(t, f, "/file")
		if len(got) != 1<<16 || !bytes.Equal(got[:len(want)], want) {
			t.Fatalf("after a crash: %d bytes", len(got))
		}
	}
}

// A file's name survives a crash only once its directory was synced.
func TestNamespace(t *testing.T) {
	f := New(1)
	h := mustOpen(t, f, "/d/a", os.O_RDWR|os.O_CREATE)
	h.WriteAt([]byte("x"), 0)
	h.Sync()
	f.Crash()
	if _, err := f.OpenFile("/d/a", os.O_RDWR, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a file created without SyncDir survived the crash: %v", err)
	}

	h = mustOpen(t, f, "/d/a", os.O_RDWR|os.O_CREATE)
	h.WriteAt([]byte("x"), 0)
	h.Sync()
	f.SyncDir("/d")
	if err := f.Rename("/d/a", "/d/b"); err != nil {
		t.Fatal(err)
	}
	f.Crash()
	if got := content(t, f, "/d/a"); string(got) != "x" {
		t.Fatalf("after an unsynced rename, /d/a holds %q", got)
	}
	if err := f.Rename("/d/a", "/d/b"); err != nil {
		t.Fatal(err)
	}
	f.SyncDir("/d")
	if err := f.Remove("/d/b"); err != nil {
		t.Fatal(err)
	}
	f.Crash()
	if got := content(t, f, "/d/b"); string(got) != "x" {
		t.Fatalf("after a synced rename and an unsynced remove, /d/b holds %q", got)
	}
	if _, err := f.OpenFile("/d/b", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("O_EXCL on an existing file: %v", err)
	}
}

// A hook fails an operation without effect, or crashes during it.
func TestHook(t *testing.T) {
	f := New(1)
	h := mustOpen(t, f, "/file", os.O_RDWR|os.O_CREATE)
	f.SyncDir("/")
	f.SetHook(func(op Op) Fault {
		if op.Kind == OpWrite && op.Off == 10 {
			return Fault{Err: syscall.EIO}
		}
		return Fault{}
	})
	if _, err := h.WriteAt([]byte("a"), 10); !errors.Is(err, syscall.EIO) {
		t.Fatalf("failed write: %v", err)
	}
	if size, _ := h.Size(); size != 0 {
		t.Fatalf("a failed write changed the file: %d bytes", size)
	}

	// A crash during a write: the write may survive, torn or whole.
	outcomes := map[int]bool{}
	for seed := range uint64(100) {
		f := New(seed)
		h := mustOpen(t, f, "/file", os.O_RDWR|os.O_CREATE)
		f.SyncDir("/")
		f.SetHook(func(op Op) Fault { return Fault{Crash: op.Kind == OpWrite} })
		if _, err := h.WriteAt(bytes.Repeat([]byte{'w'}, 4*SectorSize), 0); !errors.Is(err, ErrCrashed) {
			t.Fatalf("write during a crash: %v", err)
		}
		if f.Crashes() != 1 {
			t.Fatalf("%d crashes", f.Crashes())
		}
		f.SetHook(nil)
		n := len(content(t, f, "/file"))
		if n%SectorSize != 0 {
			t.Fatalf("torn write kept %d bytes", n)
		}
		outcomes[n] = true
	}
	if !outcomes[0] || !outcomes[4*SectorSize] || len(outcomes) < 3 {
		t.Fatalf("outcomes of a crash during a write: %v", outcomes)
	}

	// A crash at a sync: the sync does not happen.
	f = New(1)
	h = mustOpen(t, f, "/file", os.O_RDWR|os.O_CREATE)
	f.SyncDir("/")
	h.WriteAt([]byte("synced"), 0)
	h.Sync()
	h.WriteAt([]byte("SYNCED"), 0)
	f.SetHook(func(op Op) Fault { return Fault{Crash: op.Kind == OpSync} })
	if err := h.Sync(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("sync during a crash: %v", err)
	}
	if got := string(content(t, f, "/file")); got != "synced" && got != "SYNCED" {
		t.Fatalf("after a crash at sync: %q", got)
	}
}

func TestReadAtEOF(t *testing.T) {
	f := New(1)
	h := mustOpen(t, f, "/file", os.O_RDWR|os.O_CREATE)
	h.WriteAt([]byte("abc"), 0)
	b := make([]byte, 5)
	if n, err := h.ReadAt(b, 1); n != 2 || err != io.EOF {
		t.Fatalf("short read: %d, %v", n, err)
	}
	if n, err := h.ReadAt(b, 10); n != 0 || err != io.EOF {
		t.Fatalf("read past the end: %d, %v", n, err)
	}
	h.Close()
	if _, err := h.ReadAt(b, 0); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	r := mustOpen(t, f, "/file", os.O_RDONLY)
	if _, err := r.WriteAt(b, 0); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("write to a read-only handle: %v", err)
	}
}
