package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// FS is the filesystem the journal runs on. The default is the operating
// system's (OSFS); tests pass an in-memory one that can simulate power
// loss or inject errors (see the crashfs package).
type FS interface {
	// OpenFile opens name as os.OpenFile does. The journal asks for
	// os.O_RDWR|os.O_CREATE, with DirectFlag added: an FS that cannot do
	// direct I/O ignores that bit.
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	// SyncDir makes the directory's entries (a file just created) durable.
	SyncDir(dir string) error
}

// File is an open journal file. Offsets and lengths the journal uses are
// multiples of 4096 and its buffers are 4096-aligned, so a File may use
// direct I/O.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed WriteAt and Allocate durable (fdatasync).
	Sync() error
	// Allocate makes the file at least size bytes long with its blocks
	// reserved, reading as zeros where nothing was written.
	Allocate(size int64) error
	// Size returns the file's length.
	Size() (int64, error)
	Close() error
}

// OSFS is the operating system's filesystem. Files are opened with
// O_DIRECT where the platform and the filesystem accept it (tmpfs does not),
// else with ordinary buffered I/O; Sync is fdatasync either way.
type OSFS struct{}

// OpenFile implements FS.
func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	return openOS(name, flag, perm)
}

// SyncDir implements FS.
func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// directReporter is implemented by files that can say whether they bypass
// the page cache; Stats reports it.
type directReporter interface{ Direct() bool }

// readFull reads len(p) bytes at off, as io.ReadFull would: a short read is
// an error (io.ErrUnexpectedEOF), never a partially filled buffer taken as
// data.
func readFull(f File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// writeFull writes p at off; a short write without an error is an error.
func writeFull(f File, p []byte, off int64) error {
	n, err := f.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

func dirOf(path string) string { return filepath.Dir(path) }
