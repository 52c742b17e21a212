package transport

import (
	"errors"
	"fmt"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// Errors returned by the transport's RPCs, tested with errors.Is. Raft
// treats every error alike (it logs, backs off and retries), so the classes
// serve operators, tests and callers other than raft.
var (
	// ErrClosed: this node's transport (the group's or the Manager) is
	// closed. The request was not sent, or its answer was abandoned.
	ErrClosed = errors.New("transport: closed")
	// ErrUnavailable: the peer could not be reached (dial or stream set-up
	// failed, or its transport is shutting down). The request was not
	// processed.
	ErrUnavailable = errors.New("transport: peer unavailable")
	// ErrUnknownGroup: the peer runs no member of the request's group (not
	// started yet, or shut down). The request was not processed.
	ErrUnknownGroup = errors.New("transport: group not running on peer")
	// ErrBusy: a bounded queue was full (the group's queue on the peer, or
	// this stream's in-flight limit). The request was not processed.
	ErrBusy = errors.New("transport: busy")
	// ErrTimeout: no answer in time. The outcome is unknown: the peer may
	// have processed the request.
	ErrTimeout = errors.New("transport: timed out")
	// ErrStreamBroken: the stream broke with the request in flight. The
	// outcome is unknown. The next request opens a new stream.
	ErrStreamBroken = errors.New("transport: stream broken")
	// ErrMessageTooLarge: the encoded request exceeds Config.MaxMessageBytes;
	// it was not sent.
	ErrMessageTooLarge = errors.New("transport: message too large")
	// ErrInvalidMessage: a message could not be decoded, or did not match
	// its request.
	ErrInvalidMessage = errors.New("transport: invalid message")
	// ErrRemote: the peer's raft answered the request with an error (the
	// error's text follows).
	ErrRemote = errors.New("transport: remote raft error")
)

// errorCode is the wire code the server sends for a local error class.
func errorCode(err error) raftpb.ErrorCode {
	switch {
	case errors.Is(err, ErrUnknownGroup):
		return raftpb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP
	case errors.Is(err, ErrBusy):
		return raftpb.ErrorCode_ERROR_CODE_BUSY
	case errors.Is(err, ErrTimeout):
		return raftpb.ErrorCode_ERROR_CODE_TIMEOUT
	case errors.Is(err, ErrClosed):
		return raftpb.ErrorCode_ERROR_CODE_CLOSED
	case errors.Is(err, ErrInvalidMessage):
		return raftpb.ErrorCode_ERROR_CODE_INVALID
	default:
		return raftpb.ErrorCode_ERROR_CODE_REMOTE
	}
}

// responseError is the error a Response carries, in the client's classes,
// or nil.
func responseError(r *raftpb.Response) error {
	msg := r.GetError()
	var class error
	switch r.GetCode() {
	case raftpb.ErrorCode_ERROR_CODE_UNSPECIFIED:
		if msg == "" {
			return nil
		}
		class = ErrRemote
	case raftpb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP:
		class = ErrUnknownGroup
	case raftpb.ErrorCode_ERROR_CODE_BUSY:
		class = ErrBusy
	case raftpb.ErrorCode_ERROR_CODE_TIMEOUT:
		class = ErrTimeout
	case raftpb.ErrorCode_ERROR_CODE_CLOSED:
		class = ErrUnavailable
	case raftpb.ErrorCode_ERROR_CODE_INVALID:
		class = ErrInvalidMessage
	default: // REMOTE, or a code from a newer peer
		class = ErrRemote
	}
	return fmt.Errorf("%w: peer says: %s", class, msg)
}
