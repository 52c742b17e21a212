package crashfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// ErrCrashed is returned by every call on a handle opened before a crash.
var ErrCrashed = errors.New("crashfs: the machine crashed")

// SectorSize is the unit a torn write keeps whole.
const SectorSize = 512

// OpKind names an operation, for hooks.
type OpKind int

const (
	OpOpen OpKind = iota
	OpRead
	OpWrite
	OpSync
	OpAllocate
	OpTruncate
	OpSyncDir
	OpRename
	OpRemove
)

func (k OpKind) String() string {
	return [...]string{"open", "read", "write", "sync", "allocate", "truncate", "syncdir", "rename", "remove"}[k]
}

// Op describes an operation about to happen.
type Op struct {
	Kind OpKind
	Name string // the file (for OpRename, the old name; for OpSyncDir, the directory)
	Off  int64  // OpRead, OpWrite: the offset; OpAllocate, OpTruncate: the size
	Len  int    // OpRead, OpWrite: the length
}

// Fault is what a Hook makes of an operation. The zero Fault lets it run.
type Fault struct {
	// Err fails the operation with Err, without effect.
	Err error
	// Crash loses power during the operation: a write (or allocate,
	// truncate) is issued and may survive, torn or not, like any other
	// unsynced change; a sync does not happen; other operations do not
	// happen. The operation returns ErrCrashed.
	Crash bool
}

// Hook is called with the FS locked before every operation; it must not
// call the FS.
type Hook func(Op) Fault

// FS is the filesystem. Its methods are safe for concurrent use.
type FS struct {
	mu      sync.Mutex
	rng     *rand.Rand
	names   map[string]*inode // the namespace now
	durable map[string]*inode // the namespace as of each directory's last SyncDir
	epoch   int               // crashes so far; handles of older epochs are dead
	hook    Hook
	crashes int
}

type inode struct {
	data    []byte   // the content now
	synced  []byte   // the durable content
	pending []change // changes since the last sync, in order
}

// change is an unsynced WriteAt (data set) or resize (Allocate, Truncate).
type change struct {
	off  int64
	data []byte
	size int64 // resize: the new size
}

// New returns an empty filesystem whose crashes draw on seed.
func New(seed uint64) *FS {
	return &FS{
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		names:   map[string]*inode{},
		durable: map[string]*inode{},
	}
}

// SetHook installs h (nil removes it).
func (f *FS) SetHook(h Hook) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

// Crashes is the number of crashes so far.
func (f *FS) Crashes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashes
}

// fault runs the hook; the caller holds f.mu.
func (f *FS) fault(op Op) Fault {
	if f.hook == nil {
		return Fault{}
	}
	return f.hook(op)
}

// Crash loses power now.
func (f *FS) Crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashLocked()
}

func (f *FS) crashLocked() {
	f.crashes++
	f.epoch++
	f.names = map[string]*inode{}
	for _, name := range sortedNames(f.durable) {
		f.names[name] = f.durable[name]
	}
	seen := map[*inode]bool{}
	var all []*inode
	for _, name := range sortedNames(f.durable) {
		// Files not in the durable namespace are gone with their
		// content; the others get a post-crash content.
		if ino := f.durable[name]; !seen[ino] {
			seen[ino] = true
			all = append(all, ino)
		}
	}
	for _, ino := range all {
		ino.data = f.survivorLocked(ino)
		ino.synced = append([]byte(nil), ino.data...)
		ino.pending = nil
	}
}

// survivorLocked returns what a power loss leaves of ino.
func (f *FS) survivorLocked(ino *inode) []byte {
	out := append([]byte(nil), ino.synced...)
	n := len(ino.pending)
	if n == 0 {
		return out
	}
	switch f.rng.IntN(3) {
	case 0: // nothing unsynced reached the disk
	case 1: // a prefix, in order, the last torn
		k := f.rng.IntN(n + 1)
		for i, c := range ino.pending[:k] {
			out = f.applyLocked(out, c, i == k-1)
		}
	case 2: // any subset, any of them torn
		for _, c := range ino.pending {
			if f.rng.IntN(2) == 0 {
				out = f.applyLocked(out, c, f.rng.IntN(4) == 0)
			}
		}
	}
	return out
}

// applyLocked applies c to data; a torn write keeps only its bytes before
// a random sector boundary inside it (possibly none).
func (f *FS) applyLocked(data []byte, c change, torn bool) []byte {
	if c.data == nil {
		return resize(data, c.size)
	}
	w := c.data
	if torn {
		var cuts []int64
		for b := (c.off/SectorSize + 1) * SectorSize; b < c.off+int64(len(w)); b += SectorSize {
			cuts = append(cuts, b-c.off)
		}
		cuts = append(cuts, 0)
		w = w[:cuts[f.rng.IntN(len(cuts))]]
	}
	return writeAt(data, w, c.off)
}

func resize(data []byte, size int64) []byte {
	if size <= int64(len(data)) {
		return data[:size]
	}
	return append(data, make([]byte, size-int64(len(data)))...)
}

func writeAt(data, p []byte, off int64) []byte {
	if end := off + int64(len(p)); end > int64(len(data)) {
		data = resize(data, end)
	}
	copy(data[off:], p)
	return data
}

func sortedNames(m map[string]*inode) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// OpenFile opens name. O_CREATE, O_EXCL, O_TRUNC and the access mode are
// honoured; other flags (O_DIRECT, O_SYNC...) are ignored.
func (f *FS) OpenFile(name string, flag int, perm os.FileMode) (*File, error) {
	name = filepath.Clean(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft := f.fault(Op{Kind: OpOpen, Name: name}); ft.Crash || ft.Err != nil {
		if ft.Crash {
			f.crashLocked()
			return nil, ErrCrashed
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: ft.Err}
	}
	ino, ok := f.names[name]
	switch {
	case ok && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case !ok && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case !ok:
		ino = &inode{}
		f.names[name] = ino
	}
	h := &File{fs: f, name: name, ino: ino, epoch: f.epoch, readOnly: flag&(os.O_WRONLY|os.O_RDWR) == 0}
	if flag&os.O_TRUNC != 0 && len(ino.data) > 0 {
		if h.readOnly {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
		}
		ino.data = ino.data[:0]
		ino.pending = append(ino.pending, change{size: 0})
	}
	return h, nil
}

// SyncDir makes the entries of dir (creations, renames, removals) durable.
func (f *FS) SyncDir(dir string) error {
	dir = filepath.Clean(dir)
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft := f.fault(Op{Kind: OpSyncDir, Name: dir}); ft.Crash || ft.Err != nil {
		if ft.Crash {
			f.crashLocked()
			return ErrCrashed
		}
		return &fs.PathError{Op: "syncdir", Path: dir, Err: ft.Err}
	}
	for name := range f.durable {
		if filepath.Dir(name) == dir {
			delete(f.durable, name)
		}
	}
	for name, ino := range f.names {
		if filepath.Dir(name) == dir {
			f.durable[name] = ino
		}
	}
	return nil
}

// Rename renames a file (not durable until SyncDir of both directories).
func (f *FS) Rename(oldName, newName string) error {
	oldName, newName = filepath.Clean(oldName), filepath.Clean(newName)
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft := f.fault(Op{Kind: OpRename, Name: oldName}); ft.Crash || ft.Err != nil {
		if ft.Crash {
			f.crashLocked()
			return ErrCrashed
		}
		return &os.LinkError{Op: "rename", Old: oldName, New: newName, Err: ft.Err}
	}
	ino, ok := f.names[oldName]
	if !ok {
		return &os.LinkError{Op: "rename", Old: oldName, New: newName, Err: fs.ErrNotExist}
	}
	delete(f.names, oldName)
	f.names[newName] = ino
	return nil
}

// Remove removes a file (not durable until SyncDir).
func (f *FS) Remove(name string) error {
	name = filepath.Clean(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft := f.fault(Op{Kind: OpRemove, Name: name}); ft.Crash || ft.Err != nil {
		if ft.Crash {
			f.crashLocked()
			return ErrCrashed
		}
		return &fs.PathError{Op: "remove", Path: name, Err: ft.Err}
	}
	if _, ok := f.names[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(f.names, name)
	return nil
}

// File is an open file.
type File struct {
	fs       *FS
	name     string
	ino      *inode
	epoch    int
	readOnly bool
	closed   bool // under fs.mu
}

// Name returns the name the file was opened with.
func (h *File) Name() string { return h.name }

// begin checks the handle and runs the hook. With done false the caller
// goes on with the operation; with done true it returns err.
func (h *File) begin(op Op, write bool) (done bool, crash bool, err error) {
	switch {
	case h.epoch != h.fs.epoch:
		return true, false, ErrCrashed
	case h.closed:
		return true, false, &fs.PathError{Op: op.Kind.String(), Path: h.name, Err: fs.ErrClosed}
	case write && h.readOnly:
		return true, false, &fs.PathError{Op: op.Kind.String(), Path: h.name, Err: fs.ErrPermission}
	}
	ft := h.fs.fault(op)
	if ft.Err != nil && !ft.Crash {
		return true, false, &fs.PathError{Op: op.Kind.String(), Path: h.name, Err: ft.Err}
	}
	return false, ft.Crash, nil
}

// ReadAt reads as os.File.ReadAt does: io.EOF when it reads short.
func (h *File) ReadAt(p []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("crashfs: read at %d: negative offset", off)
	}
	done, crash, err := h.begin(Op{Kind: OpRead, Name: h.name, Off: off, Len: len(p)}, false)
	if done {
		return 0, err
	}
	if crash {
		h.fs.crashLocked()
		return 0, ErrCrashed
	}
	if off >= int64(len(h.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, h.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off, extending the file if needed.
func (h *File) WriteAt(p []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("crashfs: write at %d: negative offset", off)
	}
	done, crash, err := h.begin(Op{Kind: OpWrite, Name: h.name, Off: off, Len: len(p)}, true)
	if done {
		return 0, err
	}
	h.ino.data = writeAt(h.ino.data, p, off)
	h.ino.pending = append(h.ino.pending, change{off: off, data: append([]byte(nil), p...)})
	if crash {
		h.fs.crashLocked()
		return 0, ErrCrashed
	}
	return len(p), nil
}

// Sync makes the file's content durable.
func (h *File) Sync() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	done, crash, err := h.begin(Op{Kind: OpSync, Name: h.name}, false)
	if done {
		return err
	}
	if crash {
		h.fs.crashLocked()
		return ErrCrashed
	}
	for _, c := range h.ino.pending {
		h.ino.synced = h.fs.applyLocked(h.ino.synced, c, false)
	}
	h.ino.pending = nil
	return nil
}

// Allocate extends the file with zeros to at least size bytes.
func (h *File) Allocate(size int64) error {
	return h.resize(OpAllocate, size, true)
}

// Truncate sets the file's size.
func (h *File) Truncate(size int64) error {
	return h.resize(OpTruncate, size, false)
}

func (h *File) resize(kind OpKind, size int64, growOnly bool) error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if size < 0 {
		return fmt.Errorf("crashfs: %s to %d bytes", kind, size)
	}
	done, crash, err := h.begin(Op{Kind: kind, Name: h.name, Off: size}, true)
	if done {
		return err
	}
	if !growOnly || size > int64(len(h.ino.data)) {
		h.ino.data = resize(h.ino.data, size)
		h.ino.pending = append(h.ino.pending, change{size: size})
	}
	if crash {
		h.fs.crashLocked()
		return ErrCrashed
	}
	return nil
}

// Size returns the file's size.
func (h *File) Size() (int64, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.epoch != h.fs.epoch {
		return 0, ErrCrashed
	}
	return int64(len(h.ino.data)), nil
}

// Close closes the handle. It returns nil on a handle the crash killed.
func (h *File) Close() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.epoch != h.fs.epoch {
		return nil
	}
	if h.closed {
		return &fs.PathError{Op: "close", Path: h.name, Err: fs.ErrClosed}
	}
	h.closed = true
	return nil
}
