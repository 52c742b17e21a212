package nbd

import (
	"context"
	"errors"
	"strconv"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// Backend is the block device behind one connection to an export: the
// agent's protocol-neutral device (see blockdev.Device for the contract).
// The server advertises CAN_MULTI_CONN, which that contract allows. An
// error wrapping an Errno is sent as that errno; otherwise the blockdev
// class decides (see errnoOf), and anything else is sent as EIO.
type Backend = blockdev.Device

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

// ErrExportRefused is wrapped by Exports.Open when the export exists but
// this server may not serve it (NBD_REP_ERR_POLICY).
var ErrExportRefused = errors.New("nbd: export refused by policy")

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

// errnoOf maps a backend error to the value sent on the wire. A request
// past the end is EINVAL here; the server checks writes itself and answers
// ENOSPC, as the spec asks, before the backend sees them.
func errnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var e Errno
	switch {
	case errors.As(err, &e) && e.valid():
		return e
	case errors.Is(err, blockdev.ErrNoSpace):
		return ENOSPC
	case errors.Is(err, blockdev.ErrOutOfRange), errors.Is(err, blockdev.ErrInvalid):
		return EINVAL
	case errors.Is(err, blockdev.ErrNotPermitted):
		return EPERM
	}
	return EIO
}
