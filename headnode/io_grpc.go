package headnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/inflight"
	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

const (
	// maxRequestBytes bounds a read or write (the NBD maximum we advertise).
	maxRequestBytes = 32 << 20
	// removeChunkBytes splits trims and zeroes so that no single record or
	// overlay grows with the size of the request.
	removeChunkBytes = 256 << 20
)

// IOConfig bounds the block I/O the head node holds for agents' streams
// (gRPC streams and framed connections alike: a framed connection is one
// stream, io_wire.go). A request counts from the moment it is received
// until its reply is sent: a write for its data, a read for the data it
// returns. When a bound is reached the stream stops receiving, and gRPC's
// flow control (or TCP's) stops the agent from sending; nothing is
// buffered beyond the bounds but one received request per gRPC stream,
// waiting for room (a framed connection reads a request's data only once
// it is admitted). A message larger than rpc.MaxMessageBytes is refused by
// gRPC before it is read.
type IOConfig struct {
	// StreamMaxRequests bounds one stream's requests in flight (128).
	StreamMaxRequests int
	// StreamMaxBytes bounds one stream's bytes in flight (64 MiB).
	StreamMaxBytes int64
	// NodeMaxRequests bounds every stream's requests in flight together
	// (4096).
	NodeMaxRequests int
	// NodeMaxBytes bounds every stream's bytes in flight together (1 GiB).
	NodeMaxBytes int64
}

// Defaults of IOConfig.
const (
	DefaultIOStreamMaxRequests = 128
	DefaultIOStreamMaxBytes    = 64 << 20
	DefaultIONodeMaxRequests   = 4096
	DefaultIONodeMaxBytes      = 1 << 30
)

// EnsureDefaults fills zero fields with their defaults.
func (c *IOConfig) EnsureDefaults() {
	if c.StreamMaxRequests == 0 {
		c.StreamMaxRequests = DefaultIOStreamMaxRequests
	}
	if c.StreamMaxBytes == 0 {
		c.StreamMaxBytes = DefaultIOStreamMaxBytes
	}
	if c.NodeMaxRequests == 0 {
		c.NodeMaxRequests = DefaultIONodeMaxRequests
	}
	if c.NodeMaxBytes == 0 {
		c.NodeMaxBytes = DefaultIONodeMaxBytes
	}
}

// Validate reports the first problem: every bound must admit at least one
// request of the largest size.
func (c *IOConfig) Validate() error {
	switch {
	case c.StreamMaxRequests < 1 || c.NodeMaxRequests < c.StreamMaxRequests:
		return fmt.Errorf("headnode config: I/O requests in flight: %d a stream, %d a node: want 1 <= stream <= node", c.StreamMaxRequests, c.NodeMaxRequests)
	case c.StreamMaxBytes < maxRequestBytes || c.NodeMaxBytes < c.StreamMaxBytes:
		return fmt.Errorf("headnode config: I/O bytes in flight: %d a stream, %d a node: want %d <= stream <= node", c.StreamMaxBytes, c.NodeMaxBytes, maxRequestBytes)
	}
	return nil
}

// IOStats are the counters of the head node's block I/O from agents.
type IOStats struct {
	// Node is every stream's requests in flight together.
	Node inflight.Stats
	// WaitingBytes is the data of requests received but not yet admitted
	// (at most one a stream), which the bounds do not count.
	WaitingBytes int64
	// PeakHeldBytes is the most ever held at once: admitted and waiting.
	PeakHeldBytes int64
	// FramedConnections is the framed protocol's connections open now
	// (gRPC streams are not counted).
	FramedConnections int
	// FramedReplicationSessions is the replication sessions this node
	// serves as a secondary over framed connections now (gRPC ones are
	// not counted).
	FramedReplicationSessions int
	// ResentWrites counts the writes received again that this node
	// found applied already, whole or in part, and did not apply twice.
	ResentWrites uint64
}

// blockIOServer serves BlockIO for the volumes this head node is primary of.
type blockIOServer struct {
	ballastpb.UnimplementedBlockIOServer
	cfg    IOConfig
	log    *slog.Logger
	handle func(context.Context, *ballastpb.IORequest) *ballastpb.IOReply
	node   *inflight.Limit // every stream's requests together

	mu struct {
		sync.Mutex
		waiting  int64
		peakHeld int64
	}
}

func newBlockIOServer(cfg IOConfig, log *slog.Logger, handle func(context.Context, *ballastpb.IORequest) *ballastpb.IOReply) *blockIOServer {
	return &blockIOServer{cfg: cfg, log: log, handle: handle, node: inflight.New(cfg.NodeMaxRequests, cfg.NodeMaxBytes)}
}

// IOStats returns the counters of the block I/O from agents.
func (n *Node) IOStats() IOStats {
	s := n.io.stats()
	if n.wire != nil {
		s.FramedConnections = n.wire.connections()
	}
	if n.replWire != nil {
		s.FramedReplicationSessions = n.replWire.sessions()
	}
	s.ResentWrites = n.resentWrites.Load()
	return s
}

func (s *blockIOServer) stats() IOStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return IOStats{Node: s.node.Stats(), WaitingBytes: s.mu.waiting, PeakHeldBytes: s.mu.peakHeld}
}

// wait notes n bytes received and waiting for admission (or, negative,
// no longer waiting).
func (s *blockIOServer) wait(n int64) {
	s.mu.Lock()
	s.mu.waiting += n
	if n > 0 {
		s.mu.peakHeld = max(s.mu.peakHeld, s.mu.waiting+s.node.Stats().Bytes)
	}
	s.mu.Unlock()
}

// ioCost is the data a request holds while in flight: a write's payload,
// or the buffer a read returns (none for a read refused as too large).
func ioCost(req *ballastpb.IORequest) int64 {
	return requestCost(req.Op, len(req.Data), req.Length)
}

// requestCost is ioCost from a request's op, data length and length, as
// the framed protocol knows them before it reads the data.
func requestCost(op ballastpb.IOOp, dataLen int, length uint64) int64 {
	switch op {
	case ballastpb.IOOp_IO_OP_WRITE:
		return int64(dataLen)
	case ballastpb.IOOp_IO_OP_READ:
		if length <= maxRequestBytes {
			return int64(length)
		}
	}
	return 0
}

// newStreamLimit returns the bound of one stream (gRPC) or connection
// (framed protocol).
func (s *blockIOServer) newStreamLimit() *inflight.Limit {
	return inflight.New(s.cfg.StreamMaxRequests, s.cfg.StreamMaxBytes)
}

// acquire waits until a request of cost bytes fits its stream's bound
// (own) and the node's, and counts it in both; it counts nothing if ctx
// ends first.
func (s *blockIOServer) acquire(ctx context.Context, own *inflight.Limit, cost int64) error {
	if err := own.Acquire(ctx, cost); err != nil {
		return err
	}
	if err := s.node.Acquire(ctx, cost); err != nil {
		own.Release(cost)
		return err
	}
	return nil
}

// release returns what acquire counted, once the request's reply is sent
// (or dropped).
func (s *blockIOServer) release(own *inflight.Limit, cost int64) {
	s.node.Release(cost)
	own.Release(cost)
}

// IO serves one agent's stream. It receives a request only once the one
// before is admitted under the stream's and the node's bounds; while it
// waits, gRPC's flow control holds the agent back.
func (s *blockIOServer) IO(stream ballastpb.BlockIO_IOServer) error {
	ctx := stream.Context()
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	own := s.newStreamLimit()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		cost := ioCost(req)
		s.wait(cost)
		err = s.acquire(ctx, own, cost)
		s.wait(-cost)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := s.handle(ctx, req)
			sendMu.Lock()
			err := stream.Send(reply)
			sendMu.Unlock()
			// The reply's data is gRPC's now, or dropped.
			s.release(own, cost)
			if err != nil {
				s.log.Debug("io: send reply", "err", err)
			}
		}()
	}
}

// serveIO runs one request against the volume's primary state. req.Data
// is the caller's again once serveIO returns (the framed server recycles
// the buffer): what serveIO keeps of it, it copies.
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
	case ballastpb.IOOp_IO_OP_BLOCK_STATUS:
		var ext []blockwire.Extent
		if ext, err = pv.allocation(ctx, req.Offset, length); err == nil {
			reply.Data = blockwire.AppendExtents(nil, ext)
		}
	case ballastpb.IOOp_IO_OP_FLUSH:
		// Every acknowledged write is already durable on every replica.
	case ballastpb.IOOp_IO_OP_WRITE, ballastpb.IOOp_IO_OP_TRIM, ballastpb.IOOp_IO_OP_WRITE_ZEROES:
		err = n.serveWrite(ctx, pv, req, length)
	default:
		return fail(ballastpb.IOStatus_IO_STATUS_INVALID, fmt.Errorf("unknown operation %v", req.Op))
	}
	if err != nil {
		reply.Data = nil
		switch {
		case errors.Is(err, ErrNoSpace):
			return fail(ballastpb.IOStatus_IO_STATUS_NO_SPACE, err)
		case errors.Is(err, errVolumeGone):
			return fail(ballastpb.IOStatus_IO_STATUS_NO_SUCH_VOLUME, err)
		case errors.Is(err, ErrStopped):
			// The volume stopped here: the client sends the request to
			// whichever head node now serves it. A named write is applied
			// once whatever became of this send (writeops.go).
			return fail(ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, err)
		}
		return fail(ballastpb.IOStatus_IO_STATUS_IO_ERROR, err)
	}
	return reply
}

// serveWrite runs a write, trim or write-zeroes of length bytes. A named
// one (writeops.go) runs once its earlier send, if this node runs it,
// has settled; sent again, it applies only the blocks that no record of
// it applied.
func (n *Node) serveWrite(ctx context.Context, pv *primaryVolume, req *ballastpb.IORequest, length uint64) error {
	id := writeID{client: req.Client, op: req.WriteOp, oldest: req.OldestOp}
	if !id.named() || length == 0 {
		return writeRange(ctx, pv, req, req.Offset, length, id)
	}
	end, err := n.writeOps.begin(ctx, opKey{vol: pv.vol.Id, client: id.client, op: id.op})
	if err != nil {
		return err
	}
	defer end()
	if !req.Resend {
		// A first send: nothing of it can have been applied.
		return writeRange(ctx, pv, req, req.Offset, length, id)
	}
	ws, err := n.blocks.WriterState(pv.vol.Id, id.client)
	if err != nil {
		return err
	}
	applied, _ := appliedSpans(ws, id.op)
	if len(applied) == 0 {
		return writeRange(ctx, pv, req, req.Offset, length, id)
	}
	n.resentWrites.Add(1)
	first := req.Offset / blockSize
	rest := uncoveredSpans(blockSpan{first, (req.Offset+length-1)/blockSize - first + 1}, applied)
	pv.log.Debug("write received again: applying only what it had not", "client", id.client, "op", id.op,
		"applied", len(applied), "rest", len(rest))
	if len(rest) == 0 {
		// Applied whole: answered as its first send would have been, once
		// what it wrote is durable on both replicas.
		return pv.submit(ctx, &ballastpb.LogRecord{})
	}
	for _, s := range rest {
		lo := max(req.Offset, s.first*blockSize)
		hi := min(req.Offset+length, (s.first+s.count)*blockSize)
		if err := writeRange(ctx, pv, req, lo, hi-lo, id); err != nil {
			return err
		}
	}
	return nil
}

// writeRange runs bytes [off, off+length) of a write, trim or
// write-zeroes request.
func writeRange(ctx context.Context, pv *primaryVolume, req *ballastpb.IORequest, off, length uint64, id writeID) error {
	if req.Op == ballastpb.IOOp_IO_OP_WRITE {
		at := off - req.Offset
		return pv.write(ctx, off, length, req.Data[at:at+length], false, false, id)
	}
	removable := req.Op == ballastpb.IOOp_IO_OP_TRIM || !req.NoHole
	for end := off + length; off < end; {
		chunk := min(end-off, removeChunkBytes)
		if err := pv.write(ctx, off, chunk, nil, true, removable, id); err != nil {
			return err
		}
		off += chunk
	}
	return nil
}

// primaryFor returns the running primary state of a volume this node is
// primary of, starting it on first use.
// holdsOwnCopy says whether this node, as the incarnation it is now, holds
// the copy of vol that the record credits to it. The record names the
// incarnation that received the copy where it can; a group that still
// knows another incarnation of this node has not yet applied this one's
// registration, and a node that lost its data holds nothing it had.
func (n *Node) holdsOwnCopy(vol *ballastpb.Volume) bool {
	if inc, ok := volume.CopyIncarnation(vol, n.cfg.ID); ok {
		return inc == n.incarnation
	}
	g, ok := n.groupOfVolume(vol.Id)
	if !ok {
		return false
	}
	if reg, ok := g.fsm.Incarnation(n.cfg.ID); ok {
		return reg == n.incarnation && g.fsm.HoldsCopy(vol, n.cfg.ID)
	}
	return !n.lostData
}

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
	if !n.holdsOwnCopy(vol) {
		// Restarted over an emptied data directory while the record still
		// names this node primary: it holds nothing, and serving, or
		// mirroring its empty log over a secondary that is catching up,
		// would lose acknowledged writes. The lease lapses and the group
		// promotes the secondary; the client goes elsewhere meanwhile.
		return nil, fmt.Errorf("%w: head node %s (incarnation %s) does not hold the copy of volume %s its record credits to it", ErrStopped, n.cfg.ID, n.incarnation, vol.Name)
	}
	// Sessions of the old primary end before this one commits anything.
	// (Under n.mu: this waits for at most one batch, and only when a node
	// takes a volume over.)
	if err := n.repl.takeOver(vol.Id, vol.Epoch); err != nil {
		return nil, fmt.Errorf("take over volume %s at epoch %d: %w", vol.Name, vol.Epoch, err)
	}
	pv := newPrimaryVolume(vol, n.blocks, n.dialLink, n.cfg.ReplicationTimeout, n.log, n.remote, n.leases)
	pv.disk = n.disk
	pv.gate = newAttachGate(n, vol, pv.log)
	if n.cache != nil {
		pv.cache = n.cache
		n.cache.start(vol.Id)
	}
	n.resumeCutHold(pv)
	n.primaries[vol.Id] = pv
	return pv, nil
}
