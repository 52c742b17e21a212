package blockstore

import (
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/headnode/journal"
)

// journalFS puts the journal on a pebble filesystem, so that a test keeps
// the journal and the store on one in-memory filesystem and crashes both
// at once (vfs.NewStrictMem). Direct I/O does not apply there.
type journalFS struct{ fs vfs.FS }

func (j journalFS) OpenFile(name string, flag int, _ os.FileMode) (journal.File, error) {
	if _, err := j.fs.Stat(name); err != nil {
		if !os.IsNotExist(err) || flag&os.O_CREATE == 0 {
			return nil, err
		}
		f, err := j.fs.Create(name)
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
	}
	f, err := j.fs.OpenReadWrite(name)
	if err != nil {
		return nil, err
	}
	return journalFile{f}, nil
}

func (j journalFS) SyncDir(dir string) error {
	d, err := j.fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type journalFile struct{ f vfs.File }

func (f journalFile) ReadAt(p []byte, off int64) (int, error)  { return f.f.ReadAt(p, off) }
func (f journalFile) WriteAt(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }
func (f journalFile) Sync() error                              { return f.f.Sync() }
func (f journalFile) Close() error                             { return f.f.Close() }

func (f journalFile) Size() (int64, error) {
	st, err := f.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Allocate extends the file with zeros: the in-memory filesystems reserve
// nothing, and reads past the end fail.
func (f journalFile) Allocate(size int64) error {
	cur, err := f.Size()
	if err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for cur < size {
		n := min(int64(len(zeros)), size-cur)
		if _, err := f.f.WriteAt(zeros[:n], cur); err != nil {
			return err
		}
		cur += n
	}
	return nil
}
