package headnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

const (
	// maxInFlightPerStream bounds the requests one client stream may have
	// running at once; the stream stops reading beyond it.
	maxInFlightPerStream = 128
	// maxRequestBytes bounds a read or write (the NBD maximum we advertise).
	maxRequestBytes = 32 << 20
	// removeChunkBytes splits trims and zeroes so that no single record or
	// overlay grows with the size of the request.
	removeChunkBytes = 256 << 20
)

// blockIOServer serves BlockIO for the volumes this head node is primary of.
type blockIOServer struct {
	ballastpb.UnimplementedBlockIOServer
	node *Node
}

func (s *blockIOServer) IO(stream ballastpb.BlockIO_IOServer) error {
	ctx := stream.Context()
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxInFlightPerStream)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			reply := s.node.serveIO(ctx, req)
			sendMu.Lock()
			err := stream.Send(reply)
			sendMu.Unlock()
			if err != nil {
				s.node.log.Debug("io: send reply", "err", err)
			}
		}()
	}
}

// serveIO runs one request against the volume's primary state.
func (n *Node) serveIO(ctx context.Context, req *ballastpb.IORequest) *ballastpb.IOReply {
	reply := &ballastpb.IOReply{Id: req.Id}
	fail := func(st ballastpb.IOStatus, err error) *ballastpb.IOReply {
		reply.Status = st
		reply.Error = err.Error()
		return reply
	}
	vol, ok := n.volumeByID(req.VolumeId)
	if !ok {
		return fail(ballastpb.IOStatus_IO_STATUS_NO_SUCH_VOLUME, fmt.Errorf("%w: id %d", volume.ErrNotFound, req.VolumeId))
	}
	if vol.Primary != n.cfg.ID {
		return fail(ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, fmt.Errorf("head node %s is not primary of volume %s (primary: %s)", n.cfg.ID, vol.Name, vol.Primary))
	}
	length := req.Length
	if req.Op == ballastpb.IOOp_IO_OP_WRITE {
		length = uint64(len(req.Data))
	}
	if req.Op != ballastpb.IOOp_IO_OP_FLUSH {
		if req.Offset > vol.SizeBytes || length > vol.SizeBytes-req.Offset {
			return fail(ballastpb.IOStatus_IO_STATUS_OUT_OF_RANGE, fmt.Errorf("range [%d, +%d) is past the end of volume %s (%d bytes)", req.Offset, length, vol.Name, vol.SizeBytes))
		}
		if (req.Op == ballastpb.IOOp_IO_OP_READ || req.Op == ballastpb.IOOp_IO_OP_WRITE) && length > maxRequestBytes {
			return fail(ballastpb.IOStatus_IO_STATUS_INVALID, fmt.Errorf("request of %d bytes is over the maximum of %d", length, maxRequestBytes))
		}
	}
	pv, err := n.primaryFor(vol)
	if errors.Is(err, ErrStopped) {
		// The node is shutting down: the client sends it elsewhere.
		return fail(ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, err)
	}
	if err != nil {
		return fail(ballastpb.IOStatus_IO_STATUS_IO_ERROR, err)
	}
	if pv.gate != nil {
		done, err := pv.gate.admit(ctx, migrate.Session{Host: req.Host, Generation: req.Generation}, gateOp(req.Op))
		switch {
		case errors.Is(err, errFenced):
			return fail(ballastpb.IOStatus_IO_STATUS_FENCED, err)
		case errors.Is(err, ErrStopped):
			return fail(ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, err)
		case err != nil:
			return fail(ballastpb.IOStatus_IO_STATUS_IO_ERROR, err)
		}
		if done != nil {
			defer done()
		}
	}
	if gateOp(req.Op) == migrate.Write {
		exit, err := pv.cut.enter(ctx)
		if err != nil {
			return fail(ballastpb.IOStatus_IO_STATUS_IO_ERROR, err)
		}
		defer exit()
	}
	switch req.Op {
	case ballastpb.IOOp_IO_OP_READ:
		reply.Data = make([]byte, length)
		if length > 0 {
			err = pv.read(ctx, req.Offset, reply.Data)
		}
	case ballastpb.IOOp_IO_OP_WRITE:
		err = pv.write(ctx, req.Offset, length, req.Data, false, false)
	case ballastpb.IOOp_IO_OP_FLUSH:
		// Every acknowledged write is already durable on every replica.
	case ballastpb.IOOp_IO_OP_TRIM, ballastpb.IOOp_IO_OP_WRITE_ZEROES:
		removable := req.Op == ballastpb.IOOp_IO_OP_TRIM || !req.NoHole
		for off, end := req.Offset, req.Offset+length; off < end && err == nil; {
			chunk := min(end-off, removeChunkBytes)
			err = pv.write(ctx, off, chunk, nil, true, removable)
			off += chunk
		}
	default:
		return fail(ballastpb.IOStatus_IO_STATUS_INVALID, fmt.Errorf("unknown operation %v", req.Op))
	}
	if err != nil {
		reply.Data = nil
		switch {
		case errors.Is(err, errVolumeGone):
			return fail(ballastpb.IOStatus_IO_STATUS_NO_SUCH_VOLUME, err)
		case errors.Is(err, ErrStopped):
			// Never committed: the client may safely send it again, to
			// whichever head node now serves the volume.
			return fail(ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, err)
		}
		return fail(ballastpb.IOStatus_IO_STATUS_IO_ERROR, err)
	}
	return reply
}

// primaryFor returns the running primary state of a volume this node is
// primary of, starting it on first use.
func (n *Node) primaryFor(vol *ballastpb.Volume) (*primaryVolume, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrStopped
	}
	if pv, ok := n.primaries[vol.Id]; ok {
		if pv.vol.Epoch == vol.Epoch {
			return pv, nil
		}
		// Primary again at a later epoch: the old state must not commit.
		delete(n.primaries, vol.Id)
		go pv.Close()
	}
	// Sessions of the old primary end before this one commits anything.
	// (Under n.mu: this waits for at most one batch, and only when a node
	// takes a volume over.)
	if err := n.repl.takeOver(vol.Id, vol.Epoch); err != nil {
		return nil, fmt.Errorf("take over volume %s at epoch %d: %w", vol.Name, vol.Epoch, err)
	}
	pv := newPrimaryVolume(vol, n.blocks, n.dialLink, n.cfg.ReplicationTimeout, n.log, n.remote, n.leases)
	pv.gate = newAttachGate(n, vol, pv.log)
	n.resumeCutHold(pv)
	n.primaries[vol.Id] = pv
	return pv, nil
}
