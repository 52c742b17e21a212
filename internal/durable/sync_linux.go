package durable

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Fdatasync makes f's data durable, and the metadata needed to read it
// back (its size), without the timestamps an fsync would also write.
func Fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}
