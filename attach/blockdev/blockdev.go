package blockdev

import (
	"context"
	"errors"
)

// Device is the block device behind one connection (NBD) or one namespace
// of one controller (NVMe/TCP).
//
// Every method may be called from many goroutines at once. Offsets and
// lengths are always within [0, Size()) when a server calls them: servers
// check every request against Size first. A method returns nil only once
// the operation has taken effect; an error should wrap one of the classes
// below (anything else is reported as an I/O error).
//
// Durability: once WriteAt, Trim or WriteZeroes has returned nil the effect
// must be durable and visible to every other Device of the same volume, so
// servers may advertise multi-connection consistency and treat Flush as a
// barrier that has nothing left to do.
type Device interface {
	// Size is the device's size in bytes.
	Size() uint64
	// ReadAt fills all of p with the data at off, or returns an error.
	// It must not return nil having filled only part of p: p is a
	// recycled buffer and its old contents would reach the client.
	ReadAt(ctx context.Context, p []byte, off uint64) error
	// WriteAt writes p at off. fua asks for the write to be durable before
	// WriteAt returns. p is only valid until WriteAt returns.
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	// Flush makes every write that has already returned durable.
	Flush(ctx context.Context) error
	// Trim discards [off, off+length). It may be large (a whole device).
	Trim(ctx context.Context, off, length uint64) error
	// WriteZeroes makes [off, off+length) read as zeroes. noHole asks for
	// the range to stay allocated. It may be large.
	WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error
	// Close releases the device. A server calls it once, after every other
	// call on it has returned.
	Close() error
}

// Extent is a run of a device's address space in one allocation state.
type Extent struct {
	// Length is the run's length in bytes; never 0.
	Length uint64
	// Hole: the run is not allocated and reads as zeroes. Otherwise the
	// run is allocated, or its state is not known.
	Hole bool
}

// Allocator is implemented by a Device that knows which parts of its
// address space are allocated. It is optional: a server finds it with a
// type assertion, and reports a Device without it as allocated
// everywhere (which is always true enough: reading a hole returns zeroes
// either way).
//
// Allocation is called like Device's methods: from many goroutines at
// once, within [0, Size()), and it returns an error of the classes below.
// A server checks what it returns, and answers a malformed result with
// an I/O error rather than pass it on.
type Allocator interface {
	// Allocation describes [off, off+length) from off on, as consecutive
	// extents. It may describe less than length (at least one extent, at
	// least one byte) when describing all would cost too much; never more
	// than length. A hole must read as zeroes until it is written;
	// reporting an allocated run is always safe, reporting a hole that
	// holds data is not (a client copying the device skips holes).
	// Extents should end on 512-byte boundaries of the device: NBD
	// reports a block that is part hole, part data as data. The caller
	// neither modifies nor keeps the slice.
	Allocation(ctx context.Context, off, length uint64) ([]Extent, error)
}

// The classes of error a Device returns; test with errors.Is.
var (
	// ErrOutOfRange: the range lies past the end of the device (a device
	// that shrank, or a request a server did not check).
	ErrOutOfRange = errors.New("blockdev: range past the end of the device")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("blockdev: invalid request")
	// ErrNoSpace: the storage behind the device is full.
	ErrNoSpace = errors.New("blockdev: no space left")
	// ErrNotPermitted: this host may not write the volume (it was handed to
	// another host, or the attachment is read-only).
	ErrNotPermitted = errors.New("blockdev: operation not permitted")
	// ErrIO: the outcome is unknown or the storage failed; the client may
	// retry.
	ErrIO = errors.New("blockdev: input/output error")
)
