package logstore

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/vfs"
)

// quietLogger drops pebble's informational messages.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}

func (quietLogger) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// walFS wraps a filesystem to watch pebble's WAL files (named *.log): it
// counts their syncs and can replace one write with a hook, to simulate a
// torn write.
type walFS struct {
	vfs.FS
	syncs atomic.Int64

	mu sync.Mutex
	// hook, if set, performs the next write to a WAL file instead of it,
	// and is then cleared.
	hook func(f vfs.File, p []byte) (int, error)
}

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

func (fs *walFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !isWAL(name) {
		return f, err
	}
	return &walFile{File: f, fs: fs}, nil
}

func (fs *walFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	return fs.wrap(name, f, err)
}

func (fs *walFS) ReuseForWrite(oldname, newname string) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname)
	return fs.wrap(newname, f, err)
}

func (fs *walFS) setHook(h func(f vfs.File, p []byte) (int, error)) {
	fs.mu.Lock()
	fs.hook = h
	fs.mu.Unlock()
}

func (fs *walFS) takeHook() func(f vfs.File, p []byte) (int, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	h := fs.hook
	fs.hook = nil
	return h
}

type walFile struct {
	vfs.File
	fs *walFS
}

func (f *walFile) Write(p []byte) (int, error) {
	if h := f.fs.takeHook(); h != nil {
		return h(f.File, p)
	}
	return f.File.Write(p)
}

func (f *walFile) Sync() error {
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func (f *walFile) SyncData() error {
	f.fs.syncs.Add(1)
	return f.File.SyncData()
}
