package transport

// InstallSnapshot travels on its own client-streaming call: a first chunk
// with the group and the request, then the snapshot's bytes in chunks of
// Config.SnapshotChunkBytes. Neither side holds more than a chunk or two.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

func (t *Transport) installSnapshot(target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	m := t.m
	select {
	case <-t.closed:
		return ErrClosed
	default:
	}
	if m.cfg.Dial == nil {
		return fmt.Errorf("%w: no Dial function configured", ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.snapshotTimeout(args.Size))
	defer cancel()
	// Closing the transport or the Manager cancels the call. The watcher
	// goroutine belongs to this call and ends with it.
	callDone := make(chan struct{})
	defer close(callDone)
	go func() {
		select {
		case <-t.closed:
			cancel()
		case <-m.closed:
			cancel()
		case <-callDone:
		}
	}()
	ctx = metadata.AppendToOutgoingContext(ctx, nodeMetadataKey, m.cfg.NodeID)

	conn, err := m.cfg.Dial(ctx, target)
	if err != nil {
		return t.snapshotError(ctx, "dial", err)
	}
	st, err := raftpb.NewRaftTransportClient(conn).InstallSnapshot(ctx)
	if err != nil {
		return t.snapshotError(ctx, "open", err)
	}
	if err := t.sendSnapshot(st, args, data); err != nil {
		if !errors.Is(err, io.EOF) {
			return t.snapshotError(ctx, "send", err)
		}
		// The peer answered early (io.EOF); CloseAndRecv returns why.
	}
	out, err := st.CloseAndRecv()
	if err != nil {
		return t.snapshotError(ctx, "receive", err)
	}
	return decodeResponse(out, resp)
}

// sendSnapshot sends the request and up to args.Size bytes of data.
func (t *Transport) sendSnapshot(st grpc.ClientStreamingClient[raftpb.SnapshotChunk, raftpb.Response], args *raft.InstallSnapshotRequest, data io.Reader) error {
	first := &raftpb.SnapshotChunk{Group: t.group, Request: encodeInstallSnapshotRequest(args)}
	if err := st.Send(first); err != nil {
		return err
	}
	chunk := int64(t.m.cfg.SnapshotChunkBytes)
	for left := args.Size; left > 0; {
		// A fresh buffer per chunk: gRPC may hold on to a sent message.
		buf := make([]byte, min(chunk, left))
		n, err := io.ReadFull(data, buf)
		if n > 0 {
			if serr := st.Send(&raftpb.SnapshotChunk{Data: buf[:n]}); serr != nil {
				return serr
			}
			left -= int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil // short: the peer's raft reports it
		}
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
	}
	return nil
}

// snapshotError classifies an InstallSnapshot failure.
func (t *Transport) snapshotError(ctx context.Context, step string, err error) error {
	select {
	case <-t.closed:
		return fmt.Errorf("%w: %s: %w", ErrClosed, step, err)
	case <-t.m.closed:
		return fmt.Errorf("%w: %s: %w", ErrClosed, step, err)
	default:
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return fmt.Errorf("%w: %s: %w", ErrTimeout, step, err)
	}
	if status.Code(err) == codes.Unavailable || step == "dial" || step == "open" {
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, step, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrStreamBroken, step, err)
}

// InstallSnapshot implements raftpb.RaftTransportServer: it hands the
// request to the group with a reader over the following chunks, and
// answers with raft's response.
func (s *service) InstallSnapshot(st grpc.ClientStreamingServer[raftpb.SnapshotChunk, raftpb.Response]) error {
	m := s.m
	first, err := st.Recv()
	if err != nil {
		return err
	}
	if first.GetRequest() == nil {
		return st.SendAndClose(errorResponse(0, invalid("first snapshot chunk carries no request")))
	}
	req, err := decodeInstallSnapshotRequest(first.GetRequest())
	if err != nil {
		return st.SendAndClose(errorResponse(0, err))
	}
	t := m.group(first.GetGroup())
	if t == nil {
		err := fmt.Errorf("%w: group %d is not running on node %s", ErrUnknownGroup, first.GetGroup(), m.cfg.NodeID)
		return st.SendAndClose(errorResponse(0, err))
	}
	r := &snapshotReader{st: st, buf: first.GetData(), left: req.Size}
	defer r.stop()
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: req, Reader: r, RespChan: respCh}
	timer := time.NewTimer(m.cfg.snapshotTimeout(req.Size))
	defer timer.Stop()
	ctx := st.Context()
	select {
	case t.consumer <- rpc:
	case <-timer.C:
		return st.SendAndClose(errorResponse(0, fmt.Errorf("%w: group %d did not take the snapshot", ErrTimeout, t.group)))
	case <-t.closed:
		return st.SendAndClose(errorResponse(0, fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group)))
	case <-m.closed:
		return errServiceClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case res := <-respCh:
		return st.SendAndClose(encodeResponse(res.Response, res.Error))
	case <-timer.C:
		return st.SendAndClose(errorResponse(0, fmt.Errorf("%w: group %d did not install the snapshot", ErrTimeout, t.group)))
	case <-t.closed:
		return st.SendAndClose(errorResponse(0, fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group)))
	case <-m.closed:
		return errServiceClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// snapshotReader reads the data chunks of an InstallSnapshot call, up to
// the request's size. Only raft's goroutine reads it.
type snapshotReader struct {
	st      grpc.ClientStreamingServer[raftpb.SnapshotChunk, raftpb.Response]
	buf     []byte
	left    int64 // bytes the request announced that Read has not returned
	err     error
	stopped atomic.Bool // the handler has returned: no more Recv
}

func (r *snapshotReader) stop() { r.stopped.Store(true) }

func (r *snapshotReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.stopped.Load() {
			r.err = fmt.Errorf("%w: snapshot call ended", ErrStreamBroken)
			return 0, r.err
		}
		c, err := r.st.Recv()
		switch {
		case errors.Is(err, io.EOF):
			r.err = fmt.Errorf("snapshot stream ended %d bytes short: %w", r.left, io.ErrUnexpectedEOF)
		case err != nil:
			r.err = fmt.Errorf("%w: receive snapshot: %w", ErrStreamBroken, err)
		case c.GetRequest() != nil || c.GetGroup() != 0:
			r.err = invalid("snapshot data chunk carries a request")
		default:
			r.buf = c.GetData()
		}
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.left -= int64(n)
	return n, nil
}
