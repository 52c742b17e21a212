package nbd

import (
	"context"
	"errors"
	"strconv"
)

// Backend is the block device behind one connection to an export.
//
// Every method may be called from many goroutines at once. Offsets and
// lengths are always within [0, Size()) when the server calls them: the
// server checks every request against Size first. A method returns nil
// only once the operation has taken effect; an error wrapping an Errno
// is sent to the client as that errno, any other error as EIO.
//
// Durability: the server advertises CAN_MULTI_CONN, so once WriteAt,
// Trim or WriteZeroes has returned nil (and Flush after them) the effect
// must be durable and visible to every other Backend of the same export.
type Backend interface {
	// Size is the export's size in bytes. It is read once per connection.
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
	// Trim discards [off, off+length). It may be larger than MaxBlockSize.
	Trim(ctx context.Context, off, length uint64) error
	// WriteZeroes makes [off, off+length) read as zeroes. noHole asks for
	// the range to stay allocated. It may be larger than MaxBlockSize.
	WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error
	// Close releases the backend. The server calls it once, after every
	// other call on it has returned.
	Close() error
}

// Exports resolves export names to backends.
type Exports interface {
	// Open opens the named export for one connection. ctx bounds the call
	// only (it ends with the handshake); the Backend must not keep it.
	// An error wrapping ErrUnknownExport tells the client the export does
	// not exist; any other error is reported as the export being
	// unavailable, and the client may try again.
	Open(ctx context.Context, name string) (Backend, error)
	// List names the exports for NBD_OPT_LIST.
	List(ctx context.Context) ([]string, error)
}

// ErrUnknownExport is wrapped by Exports.Open when no export has the name.
var ErrUnknownExport = errors.New("nbd: unknown export")

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Errno is an NBD error value, sent to the client in a reply. A Backend
// returns one (wrapped with %w or bare) to choose what the client sees.
type Errno uint32

// The error values NBD defines. Any other value a Backend returns is sent
// as EIO.
const (
	EPERM     Errno = 1   // operation not permitted (e.g. a read-only export)
	EIO       Errno = 5   // input/output error
	ENOMEM    Errno = 12  // cannot allocate memory (NBD says avoid it)
	EINVAL    Errno = 22  // invalid argument: bad range, command or flag
	ENOSPC    Errno = 28  // no space left: a write past the end
	EOVERFLOW Errno = 75  // value too large (a DF read too big to send whole)
	ENOTSUP   Errno = 95  // not supported (only for FAST_ZERO)
	ESHUTDOWN Errno = 108 // the server is shutting down
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: EPERM: operation not permitted"
	case EIO:
		return "nbd: EIO: input/output error"
	case ENOMEM:
		return "nbd: ENOMEM: cannot allocate memory"
	case EINVAL:
		return "nbd: EINVAL: invalid argument"
	case ENOSPC:
		return "nbd: ENOSPC: no space left on device"
	case EOVERFLOW:
		return "nbd: EOVERFLOW: value too large"
	case ENOTSUP:
		return "nbd: ENOTSUP: operation not supported"
	case ESHUTDOWN:
		return "nbd: ESHUTDOWN: server is shutting down"
	}
	return "nbd: error " + strconv.FormatUint(uint64(e), 10)
}

// valid reports whether e is one of the values NBD defines.
func (e Errno) valid() bool {
	switch e {
	case EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN:
		return true
	}
	return false
}

// errnoOf maps a backend error to the value sent on the wire.
func errnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var e Errno
	if errors.As(err, &e) && e.valid() {
		return e
	}
	return EIO
}
