package headnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// replicationServer serves the secondary's side of replication: one stream
// per (volume, primary session). A new session for a volume ends the old
// one, so a volume is never applied from two streams at once.
type replicationServer struct {
	ballastpb.UnimplementedReplicationServer
	node *Node

	mu     sync.Mutex
	active map[uint64]*replSession
	// dropping holds the volumes whose copy is being dropped: no session
	// may start on them until it is gone.
	dropping map[uint64]bool
}

type replSession struct {
	mu     sync.Mutex // held while a batch is applied
	cancel context.CancelFunc
}

// refusal is a typed reply that ends a session.
func refusal(st ballastpb.ReplicateStatus, format string, args ...any) *ballastpb.ReplicateReply {
	return &ballastpb.ReplicateReply{Status: st, Error: fmt.Sprintf(format, args...)}
}

// checkReplica says whether this node may apply writes of epoch to the
// volume now. It is asked at the hello and again before every batch, since
// the volume may be deleted, or its placement change, mid-session.
func (s *replicationServer) checkReplica(volumeID, epoch uint64) *ballastpb.ReplicateReply {
	vol, ok := s.node.volumeByID(volumeID)
	switch {
	case !ok:
		return refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_NO_SUCH_VOLUME, "volume id %d does not exist", volumeID)
	case !slices.Contains(vol.Secondaries, s.node.cfg.ID):
		return refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_NOT_SECONDARY, "head node %s is not a secondary of volume %s", s.node.cfg.ID, vol.Name)
	case epoch != vol.Epoch:
		// Fencing: a primary of another epoch may not write here.
		return refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_STALE_EPOCH, "stale epoch %d: volume %s is at epoch %d", epoch, vol.Name, vol.Epoch)
	}
	return nil
}

func (s *replicationServer) Replicate(stream ballastpb.Replication_ReplicateServer) error {
	hello, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("replicate: read hello: %w", err)
	}
	if r := s.checkReplica(hello.VolumeId, hello.Epoch); r != nil {
		return stream.Send(r)
	}
	volID := hello.VolumeId

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	sess := &replSession{cancel: cancel}
	s.mu.Lock()
	if s.dropping[volID] {
		s.mu.Unlock()
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "the copy of volume %d on head node %s is being dropped; retry", volID, s.node.cfg.ID))
	}
	if s.active == nil {
		s.active = map[uint64]*replSession{}
	}
	prev := s.active[volID]
	s.active[volID] = sess
	s.mu.Unlock()
	if prev != nil {
		prev.cancel()
		prev.mu.Lock() // wait for its batch in progress, if any
		prev.mu.Unlock()
	}
	defer func() {
		s.mu.Lock()
		if s.active[volID] == sess {
			delete(s.active, volID)
		}
		s.mu.Unlock()
	}()

	sv := &secondaryVolume{store: s.node.blocks, id: volID}
	sess.mu.Lock()
	reply, err := sv.hello(hello)
	sess.mu.Unlock()
	if err != nil {
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err))
	}
	if err := stream.Send(reply); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		sess.mu.Lock()
		// The replica check comes first: a session ended because the volume
		// was deleted must say so, not merely that it ended.
		if r := s.checkReplica(volID, hello.Epoch); r != nil {
			sess.mu.Unlock()
			return stream.Send(r)
		}
		if ctx.Err() != nil {
			sess.mu.Unlock()
			return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "replication session of volume %d was superseded or ended", volID))
		}
		reply, err := sv.apply(req)
		sess.mu.Unlock()
		if err != nil {
			s.node.log.Warn("replicate: apply", "volume_id", volID, "err", err)
			return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err))
		}
		if err := stream.Send(reply); err != nil {
			return err
		}
	}
}

// endSessions ends the volume's replication session, if any, and waits for
// its batch in progress: after it returns, nothing of the session writes to
// the store. New sessions are refused by checkReplica once the directory no
// longer names this node.
func (s *replicationServer) endSessions(volumeID uint64) {
	s.mu.Lock()
	sess := s.active[volumeID]
	s.mu.Unlock()
	if sess != nil {
		sess.cancel()
		sess.mu.Lock()
		sess.mu.Unlock()
	}
}

// dropUnlessReplica drops a volume's local copy if stale() still holds
// once no session can write to it: new sessions are refused from before
// stale is asked until drop returns, and a session already running is
// ended (and its batch waited for) first. A sync cut by the drop would
// otherwise leave a half-deleted copy that a later batch could mark whole.
func (s *replicationServer) dropUnlessReplica(volumeID uint64, stale func() bool, drop func() error) (bool, error) {
	s.mu.Lock()
	if s.dropping == nil {
		s.dropping = map[uint64]bool{}
	}
	s.dropping[volumeID] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.dropping, volumeID)
		s.mu.Unlock()
	}()
	s.endSessions(volumeID)
	if !stale() {
		return false, nil
	}
	return true, drop()
}

// grpcLink is a replicaLink over the Replication stream.
type grpcLink struct {
	cancel  context.CancelFunc
	stream  ballastpb.Replication_ReplicateClient
	replies chan replyOrErr
}

type replyOrErr struct {
	reply *ballastpb.ReplicateReply
	err   error
}

func (n *Node) dialLink(ctx context.Context, vol *ballastpb.Volume, secondary string) (replicaLink, error) {
	p, ok := n.peer(secondary)
	addrs := p.Addresses
	if !ok {
		return nil, fmt.Errorf("unknown head node %q", secondary)
	}
	conn, err := n.pool.Get(addrs)
	if err != nil {
		return nil, err
	}
	// The stream outlives ctx (it carries many batches), but opening it must
	// not: a secondary that cannot be reached ends the attempt at ctx's end.
	sctx, cancel := context.WithCancel(context.Background())
	stopOpen := context.AfterFunc(ctx, cancel)
	stream, err := ballastpb.NewReplicationClient(conn).Replicate(sctx)
	stopOpen()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open replication stream: %w", err)
	}
	l := &grpcLink{cancel: cancel, stream: stream, replies: make(chan replyOrErr, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err == nil && (r.Error != "" || r.Status != ballastpb.ReplicateStatus_REPLICATE_STATUS_OK) {
				err = replicateError(r)
			}
			select {
			case l.replies <- replyOrErr{r, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return l, nil
}

func (l *grpcLink) roundTrip(ctx context.Context, req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	// Send can block on flow control when the secondary stops reading;
	// ending the stream at the deadline unblocks it.
	stop := context.AfterFunc(ctx, l.cancel)
	defer stop()
	if err := l.stream.Send(req); err != nil {
		return nil, fmt.Errorf("send to secondary: %w", err)
	}
	select {
	case r := <-l.replies:
		if r.err != nil {
			return nil, fmt.Errorf("secondary: %w", r.err)
		}
		return r.reply, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for secondary: %w", ctx.Err())
	}
}

func (l *grpcLink) Hello(ctx context.Context, hello *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	return l.roundTrip(ctx, hello)
}

func (l *grpcLink) Send(ctx context.Context, req *ballastpb.ReplicateRequest) (uint64, error) {
	r, err := l.roundTrip(ctx, req)
	if err != nil {
		return 0, err
	}
	return r.LastSeq, nil
}

func (l *grpcLink) Close() { l.cancel() }

// replicateError turns a secondary's refusal into an error of the class
// its status names.
func replicateError(r *ballastpb.ReplicateReply) error {
	switch r.Status {
	case ballastpb.ReplicateStatus_REPLICATE_STATUS_NO_SUCH_VOLUME:
		return fmt.Errorf("%w: secondary says: %s", errVolumeGone, r.Error)
	default:
		return fmt.Errorf("secondary refused (%v): %s", r.Status, r.Error)
	}
}
