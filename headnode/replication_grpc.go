package headnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// replicationServer serves the secondary's side of replication: one stream
// per (volume, primary session). A new session for a volume ends the old
// one, so a volume is never applied from two streams at once.
//
// Sessions are fenced by epoch twice over: by the directory as this node
// has applied it (the epoch, and this node a secondary), and by the
// volume's durable epoch fence in the block store (EpochFence), raised by
// every session accepted and by this node taking the volume over as its
// primary (takeOver). The fence is what a node restarted with a directory
// from before a promotion still knows, and raising it before ending the
// sessions of older epochs is what keeps a deposed primary's batch from
// landing beside the new primary's commits.
type replicationServer struct {
	ballastpb.UnimplementedReplicationServer
	node *Node

	mu     sync.Mutex
	active map[uint64]*replSession
	// dropping holds the volumes whose copy is being dropped: no session
	// may start on them until it is gone.
	dropping map[uint64]bool

	// testBeforeApply, if set, runs in a session after a batch passed
	// the checks and before it is applied (tests only).
	testBeforeApply func(volumeID uint64)
}

type replSession struct {
	// mu is held while a batch is begun (or, for a sync step, applied),
	// and from the session's start until its hello is answered: whoever
	// waits for it also waits for the session it superseded, whose
	// batches in progress the hello waits for.
	mu     sync.Mutex
	cancel context.CancelFunc
	// pending counts the batches begun and not yet finished: after the
	// session is cancelled and mu taken, waiting for it ends its writes.
	pending sync.WaitGroup
}

// stop ends the session and waits until nothing of it writes to the
// store any more.
func (sess *replSession) stop() {
	sess.cancel()
	sess.mu.Lock()
	sess.mu.Unlock()
	sess.pending.Wait()
}

// secondaryWindow bounds the batches a session has begun and not yet
// answered: the primary's window (primary.go) fits in it.
const secondaryWindow = 8

// refusal is a typed reply that ends a session.
func refusal(st ballastpb.ReplicateStatus, format string, args ...any) *ballastpb.ReplicateReply {
	return &ballastpb.ReplicateReply{Status: st, Error: fmt.Sprintf(format, args...)}
}

// checkReplica says whether this node may apply writes of epoch to the
// volume now. It is asked at the hello and again before every batch, under
// the session's lock, since the volume may be deleted, or its placement or
// epoch change, mid-session.
func (s *replicationServer) checkReplica(volumeID, epoch uint64) *ballastpb.ReplicateReply {
	vol, ok := s.node.volumeByID(volumeID)
	fence, err := s.node.blocks.EpochFence(volumeID)
	switch {
	case err != nil:
		return refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err)
	case epoch < fence:
		// Checked first: a node whose directory has not yet applied the
		// promotion it served (after a restart) must still refuse.
		return refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_STALE_EPOCH,
			"stale epoch %d: head node %s has served or replicated volume %d at epoch %d", epoch, s.node.cfg.ID, volumeID, fence)
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

// replStream is one replication session's stream as the secondary sees
// it: gRPC's, or a framed connection's (replication_wire.go).
type replStream interface {
	Context() context.Context
	Recv() (*ballastpb.ReplicateRequest, error)
	Send(*ballastpb.ReplicateReply) error
}

// Replicate serves a session over gRPC.
func (s *replicationServer) Replicate(stream ballastpb.Replication_ReplicateServer) error {
	return s.replicate(stream)
}

// replicate serves one session: its hello, then its batches.
func (s *replicationServer) replicate(stream replStream) error {
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
	sess.mu.Lock()
	s.mu.Lock()
	if s.dropping[volID] {
		s.mu.Unlock()
		sess.mu.Unlock()
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "the copy of volume %d on head node %s is being dropped; retry", volID, s.node.cfg.ID))
	}
	if s.active == nil {
		s.active = map[uint64]*replSession{}
	}
	prev := s.active[volID]
	s.active[volID] = sess
	s.mu.Unlock()
	if prev != nil {
		prev.stop() // waits for its batches in progress, if any
	}
	defer func() {
		s.mu.Lock()
		if s.active[volID] == sess {
			delete(s.active, volID)
		}
		s.mu.Unlock()
	}()

	sv := &secondaryVolume{store: s.node.blocks, id: volID}
	// Asked again now that no earlier session can write: the volume may
	// have been promoted, or taken over here, while this one waited.
	if r := s.checkReplica(volID, hello.Epoch); r != nil {
		sess.mu.Unlock()
		return stream.Send(r)
	}
	if ctx.Err() != nil {
		sess.mu.Unlock()
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "replication session of volume %d was superseded or ended", volID))
	}
	// From here on no session of an older epoch is accepted, even after
	// a restart that forgets the directory's newer state for a while.
	if err := s.node.blocks.RaiseEpochFence(volID, hello.Epoch); err != nil {
		sess.mu.Unlock()
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err))
	}
	reply, err := sv.hello(hello)
	sess.mu.Unlock()
	if err != nil {
		return stream.Send(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err))
	}
	reply.DiskFull = s.node.disk.refusing()
	reply.JournalPressure = s.node.blocks.JournalPressure()
	reply.JournalFull = s.node.blocks.JournalHigh()
	reply.Incarnation = s.node.incarnation
	if err := stream.Send(reply); err != nil {
		return err
	}
	return s.serveBatches(ctx, stream, sess, sv, hello.Epoch)
}

// serveBatches applies the session's batches in order and answers each.
// Batches of records stream: each is begun (put in the journal) as it
// arrives, and finished (synced, applied) and answered in order by a
// second goroutine, so the next batch's journal write overlaps the last
// one's sync. A full sync's steps, rare, run alone, once every batch
// before them is finished.
func (s *replicationServer) serveBatches(ctx context.Context, stream replStream,
	sess *replSession, sv *secondaryVolume, epoch uint64) error {
	volID := sv.id
	type step struct {
		finish func() (*ballastpb.ReplicateReply, error)
	}
	steps := make(chan step, secondaryWindow)
	answered := make(chan error, 1)
	go func() {
		var failed error
		for st := range steps {
			// Every step runs, even after a failure: a begun batch must be
			// finished (it fails at once then) before the session ends.
			reply, err := st.finish()
			sess.pending.Done()
			if failed != nil {
				continue
			}
			if err != nil {
				s.node.log.Warn("replicate: apply", "volume_id", volID, "err", err)
				reply, failed = refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "%v", err), err
			} else {
				reply.DiskFull = s.node.disk.refusing()
				reply.JournalPressure = s.node.blocks.JournalPressure()
				reply.JournalFull = s.node.blocks.JournalHigh()
			}
			if err := stream.Send(reply); err != nil && failed == nil {
				failed = err
			}
			if failed != nil {
				sess.cancel()
			}
		}
		answered <- failed
	}()
	// end stops taking batches: it waits until every step taken is
	// finished and answered.
	end := func(err error) error {
		close(steps)
		if ferr := <-answered; ferr != nil && err == nil {
			err = ferr
		}
		return err
	}
	// refuse answers with a refusal once every step before it is answered.
	refuse := func(r *ballastpb.ReplicateReply) error {
		close(steps)
		if ferr := <-answered; ferr != nil {
			return ferr
		}
		return stream.Send(r)
	}
	lastWasStep := false
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return end(nil)
		}
		if err != nil {
			return end(err)
		}
		records := !req.SyncBegin && req.SyncState == nil && !req.SyncEnd
		if !records || lastWasStep {
			// A sync step runs after every batch before it, and the next
			// batch begins after it.
			sess.pending.Wait()
		}
		lastWasStep = !records
		sess.mu.Lock()
		// The replica check comes first: a session ended because the volume
		// was deleted must say so, not merely that it ended.
		if r := s.checkReplica(volID, epoch); r != nil {
			sess.mu.Unlock()
			return refuse(r)
		}
		if ctx.Err() != nil {
			sess.mu.Unlock()
			return refuse(refusal(ballastpb.ReplicateStatus_REPLICATE_STATUS_ERROR, "replication session of volume %d was superseded or ended", volID))
		}
		if s.testBeforeApply != nil {
			s.testBeforeApply(volID)
		}
		var st step
		if records {
			pa, err := sv.begin(req)
			if err != nil {
				st.finish = func() (*ballastpb.ReplicateReply, error) { return nil, err }
			} else {
				st.finish = func() (*ballastpb.ReplicateReply, error) { return sv.finish(pa) }
			}
		} else {
			reply, err := sv.apply(req)
			st.finish = func() (*ballastpb.ReplicateReply, error) { return reply, err }
		}
		sess.pending.Add(1)
		sess.mu.Unlock()
		select {
		case steps <- st:
		case ferr := <-answered:
			// The answering goroutine ended on a failure: finish the
			// step here, then end.
			st.finish()
			sess.pending.Done()
			close(steps)
			return ferr
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
		sess.stop()
	}
}

// takeOver readies this node to commit to a volume as its primary at
// epoch: it raises the volume's epoch fence, so that no session of an
// older epoch starts or applies another batch, now or after a restart,
// then ends the session running, if any, and waits for its batch in
// progress. After it returns, nothing the old primary sends lands beside
// this node's own commits.
func (s *replicationServer) takeOver(volumeID, epoch uint64) error {
	if err := s.node.blocks.RaiseEpochFence(volumeID, epoch); err != nil {
		return err
	}
	s.endSessions(volumeID)
	return nil
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
	replyQueue
	cancel context.CancelFunc
	stream ballastpb.Replication_ReplicateClient
}

type replyOrErr struct {
	reply *ballastpb.ReplicateReply
	err   error
}

// replyQueue is a link's side of the secondary's replies: its reader
// goroutine puts them in order, Wait takes them, and the last one's
// pressure flags are kept. Once the session fails, every Wait after the
// replies read before fails at once with why: the batches in flight
// behind a broken session do not each wait out their deadline.
type replyQueue struct {
	replies         chan replyOrErr
	failed          chan struct{} // closed by fail
	failErr         error
	failOnce        sync.Once
	diskFull        atomic.Bool // of the last reply
	journalPressure atomic.Bool // of the last reply
	journalFull     atomic.Bool // of the last reply
}

func newReplyQueue() replyQueue {
	return replyQueue{replies: make(chan replyOrErr, 1), failed: make(chan struct{})}
}

// fail ends the session's replies with err.
func (q *replyQueue) fail(err error) {
	q.failOnce.Do(func() {
		q.failErr = err
		close(q.failed)
	})
}

func (q *replyQueue) wait(ctx context.Context) (*ballastpb.ReplicateReply, error) {
	var r replyOrErr
	select {
	case r = <-q.replies:
	default:
		select {
		case r = <-q.replies:
		case <-q.failed:
			return nil, fmt.Errorf("secondary: %w", q.failErr)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for secondary: %w", ctx.Err())
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("secondary: %w", r.err)
	}
	q.diskFull.Store(r.reply.DiskFull)
	q.journalPressure.Store(r.reply.JournalPressure)
	q.journalFull.Store(r.reply.JournalFull)
	return r.reply, nil
}

func (q *replyQueue) DiskFull() bool        { return q.diskFull.Load() }
func (q *replyQueue) JournalPressure() bool { return q.journalPressure.Load() }
func (q *replyQueue) JournalFull() bool     { return q.journalFull.Load() }

// checkedReply turns a reply that refuses or failed into its error.
func checkedReply(r *ballastpb.ReplicateReply) error {
	if r.Error != "" || r.Status != ballastpb.ReplicateStatus_REPLICATE_STATUS_OK {
		return replicateError(r)
	}
	return nil
}

// replWireWith says whether a session with secondary is to be tried over a
// framed connection: this node speaks it, and the secondary was not found
// not to within noReplWireRetry.
func (n *Node) replWireWith(secondary string) bool {
	if n.cfg.ReplicationWire != ReplicationFramed {
		return false
	}
	if since, ok := n.noReplWire.Load(secondary); ok && time.Since(since.(time.Time)) < noReplWireRetry {
		return false
	}
	return true
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
	if n.replWireWith(secondary) {
		l, err := dialFramedLink(ctx, conn)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, errNoReplWire) {
			return nil, err
		}
		n.noReplWire.Store(secondary, time.Now())
		n.log.Warn("head node does not speak framed replication (an older version?): its sessions use gRPC", "secondary", secondary, "err", err)
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
	l := &grpcLink{replyQueue: newReplyQueue(), cancel: cancel, stream: stream}
	go func() {
		for {
			r, err := stream.Recv()
			if err == nil {
				err = checkedReply(r)
			}
			if err != nil {
				l.fail(err)
				return
			}
			select {
			case l.replies <- replyOrErr{r, nil}:
			case <-sctx.Done():
				l.fail(context.Cause(sctx))
				return
			}
		}
	}()
	return l, nil
}

func (l *grpcLink) roundTrip(ctx context.Context, req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	if err := l.start(ctx, req); err != nil {
		return nil, err
	}
	return l.replyQueue.wait(ctx)
}

func (l *grpcLink) start(ctx context.Context, req *ballastpb.ReplicateRequest) error {
	// Send can block on flow control when the secondary stops reading;
	// ending the stream at the deadline unblocks it.
	stop := context.AfterFunc(ctx, l.cancel)
	defer stop()
	if err := l.stream.Send(req); err != nil {
		return fmt.Errorf("send to secondary: %w", err)
	}
	return nil
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

func (l *grpcLink) Start(ctx context.Context, req *ballastpb.ReplicateRequest) error {
	return l.start(ctx, req)
}

func (l *grpcLink) Wait(ctx context.Context) (uint64, error) {
	r, err := l.replyQueue.wait(ctx)
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
