//go:build !linux

package journal

import "os"

// DirectFlag asks OpenFile for direct I/O; this platform has none.
const DirectFlag = 0

func openOS(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f}, nil
}

func fallocate(*os.File, int64) error { return errNoFallocate }
