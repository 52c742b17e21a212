//go:build !linux

package durable

import "os"

// Fdatasync makes f's data durable; without fdatasync, with an fsync.
func Fdatasync(f *os.File) error { return f.Sync() }
