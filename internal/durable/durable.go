package durable

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/vfs"
)

// MkdirAll creates dir and its missing parents, and syncs the parent of
// each, and always dir's own parent. Pebble syncs the files it creates in
// dir and dir itself, but not dir's entry in its parent: without this a
// crash soon after the first Open could lose the whole store, synced
// writes and all (consensus/logstore's crash tests catch it on pebble's strict memory filesystem).
func MkdirAll(fs vfs.FS, dir string) error {
	parents := []string{fs.PathDir(dir)}
	for d := dir; ; {
		if _, err := fs.Stat(d); err == nil {
			break // exists; MkdirAll reports any other trouble
		}
		p := fs.PathDir(d)
		if p == d {
			break
		}
		parents = append(parents, p)
		d = p
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	slices.Sort(parents)
	for _, p := range slices.Compact(parents) {
		f, err := fs.OpenDir(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sync directory %s: %w", p, err)
		}
	}
	return nil
}

// WriteFile writes data to path so that after a crash path holds either
// all of data or whatever it held before: it writes a temporary file
// beside it, syncs it, renames it over path and syncs the directory.
func WriteFile(fs vfs.FS, path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	dir := fs.PathDir(path)
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
