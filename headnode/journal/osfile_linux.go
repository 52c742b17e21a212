package journal

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// DirectFlag asks OpenFile for direct I/O (O_DIRECT on Linux).
const DirectFlag = unix.O_DIRECT

// osOpenFile is os.OpenFile; tests replace it to refuse O_DIRECT as
// tmpfs before Linux 6.6 does.
var osOpenFile = os.OpenFile

func openOS(name string, flag int, perm os.FileMode) (File, error) {
	if flag&DirectFlag != 0 {
		f, err := osOpenFile(name, flag, perm)
		if err == nil {
			return &osFile{f: f, direct: true}, nil
		}
		// tmpfs and some others refuse O_DIRECT with EINVAL: fall back
		// to the page cache, which fdatasync still makes durable.
		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
		flag &^= DirectFlag
	}
	f, err := osOpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f}, nil
}

func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

func fallocate(f *os.File, size int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), 0, 0, size)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EOPNOTSUPP, unix.ENOSYS:
			return errNoFallocate
		default:
			return err
		}
	}
}
