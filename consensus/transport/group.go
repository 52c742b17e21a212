package transport

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// Transport is one consensus group's raft.Transport on this node. Its
// outbound RPCs share the Manager's streams with every other group; the
// requests peers send for the group arrive on its bounded queues and are
// handed to raft on Consumer by the group's two dispatch goroutines.
type Transport struct {
	m        *Manager
	group    uint64
	local    raft.ServerAddress
	consumer chan raft.RPC

	// queue holds the group's inbound requests but heartbeats; hbQueue
	// holds heartbeats while raft has a heartbeat handler. Each has one
	// dispatch goroutine, owned by the Transport.
	queue   chan *inbound
	hbQueue chan *inbound
	wg      sync.WaitGroup

	heartbeatFn atomic.Pointer[func(raft.RPC)]

	closed    chan struct{}
	closeOnce sync.Once

	mu struct {
		sync.Mutex
		closed    bool
		pipelines map[*pipeline]struct{}
	}
}

var (
	_ raft.Transport   = (*Transport)(nil)
	_ raft.WithPreVote = (*Transport)(nil)
	_ raft.WithClose   = (*Transport)(nil)
)

func newTransport(m *Manager, group uint64, local raft.ServerAddress) *Transport {
	t := &Transport{
		m:        m,
		group:    group,
		local:    local,
		consumer: make(chan raft.RPC),
		queue:    make(chan *inbound, m.cfg.GroupQueueLen),
		hbQueue:  make(chan *inbound, m.cfg.HeartbeatQueueLen),
		closed:   make(chan struct{}),
	}
	t.mu.pipelines = map[*pipeline]struct{}{}
	return t
}

// start runs the dispatch goroutines.
func (t *Transport) start() {
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		t.dispatchLoop(t.queue, false)
	}()
	go func() {
		defer t.wg.Done()
		t.dispatchLoop(t.hbQueue, true)
	}()
}

// Group returns the transport's group id.
func (t *Transport) Group() uint64 { return t.group }

// Consumer implements raft.Transport.
func (t *Transport) Consumer() <-chan raft.RPC { return t.consumer }

// LocalAddr implements raft.Transport.
func (t *Transport) LocalAddr() raft.ServerAddress { return t.local }

// EncodePeer implements raft.Transport.
func (t *Transport) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer implements raft.Transport.
func (t *Transport) DecodePeer(buf []byte) raft.ServerAddress {
	return raft.ServerAddress(buf)
}

// SetHeartbeatHandler implements raft.Transport: heartbeats of the group
// are handed to cb by the group's heartbeat goroutine, never queued behind
// other requests.
func (t *Transport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	if cb == nil {
		t.heartbeatFn.Store(nil)
		return
	}
	t.heartbeatFn.Store(&cb)
}

func (t *Transport) heartbeatHandler() func(raft.RPC) {
	if p := t.heartbeatFn.Load(); p != nil {
		return *p
	}
	return nil
}

// AppendEntries implements raft.Transport.
func (t *Transport) AppendEntries(_ raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.roundTrip("AppendEntries", target, args, resp)
}

// RequestVote implements raft.Transport.
func (t *Transport) RequestVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.roundTrip("RequestVote", target, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *Transport) RequestPreVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.roundTrip("RequestPreVote", target, args, resp)
}

// TimeoutNow implements raft.Transport.
func (t *Transport) TimeoutNow(_ raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.roundTrip("TimeoutNow", target, args, resp)
}

// InstallSnapshot implements raft.Transport: the snapshot's bytes go in
// chunks over a dedicated InstallSnapshot call, never all in memory.
func (t *Transport) InstallSnapshot(_ raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if err := t.installSnapshot(target, args, resp, data); err != nil {
		return fmt.Errorf("group %d InstallSnapshot to %s: %w", t.group, target, err)
	}
	return nil
}

// roundTrip sends one request on the multiplexed stream to target and
// decodes its response into out.
func (t *Transport) roundTrip(kind string, target raft.ServerAddress, cmd, out any) error {
	deadline := time.Now().Add(t.m.cfg.RPCTimeout)
	c, err := t.send(target, cmd, deadline, t.closed)
	if err == nil {
		var resp *raftpb.Response
		if resp, err = c.wait(t.closed); err == nil {
			err = decodeResponse(resp, out)
		}
	}
	if err != nil {
		return fmt.Errorf("group %d %s to %s: %w", t.group, kind, target, err)
	}
	return nil
}

// send encodes cmd and starts it on the stream to target.
func (t *Transport) send(target raft.ServerAddress, cmd any, deadline time.Time, abort <-chan struct{}) (*call, error) {
	select {
	case <-t.closed:
		return nil, ErrClosed
	default:
	}
	req, err := encodeRequest(t.group, cmd)
	if err != nil {
		return nil, err
	}
	ms := time.Until(deadline).Milliseconds()
	req.TimeoutMillis = uint32(min(max(ms, 1), math.MaxUint32))
	// The id, set later, adds at most 11 bytes.
	if n := proto.Size(req) + 11; n > t.m.cfg.MaxMessageBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, n, t.m.cfg.MaxMessageBytes)
	}
	p, err := t.m.peer(target)
	if err != nil {
		return nil, err
	}
	s, err := p.stream(deadline, abort)
	if err != nil {
		return nil, err
	}
	return s.start(req, deadline, abort)
}

// Close implements raft.WithClose; raft calls it when it shuts down. It
// unregisters the group (peers' requests for it then get
// ErrUnknownGroup), answers its queued requests with an error, closes its
// pipelines, fails its RPCs in flight with ErrClosed and waits for its
// goroutines. The Manager's streams stay open for the other groups.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.m.unregister(t)
		t.mu.Lock()
		t.mu.closed = true
		pipelines := make([]*pipeline, 0, len(t.mu.pipelines))
		for p := range t.mu.pipelines {
			pipelines = append(pipelines, p)
		}
		t.mu.Unlock()
		close(t.closed)
		for _, p := range pipelines {
			_ = p.Close()
		}
		t.wg.Wait()
	})
	return nil
}

// ---------------------------------------------------------------- inbound

// inbound is one request of a peer for the group.
type inbound struct {
	in       *inStream
	id       uint64
	deadline time.Time
	cmd      any
}

// respond sends raft's answer; it gives up at the request's deadline, or
// at once if abort is closed and the stream's queue is full.
func (r *inbound) respond(resp *raftpb.Response, abort <-chan struct{}) {
	resp.Id = r.id
	r.in.send(resp, r.deadline, abort)
}

func (r *inbound) fail(err error, abort <-chan struct{}) {
	r.in.send(errorResponse(r.id, err), r.deadline, abort)
}

// enqueue queues r for the group's dispatch goroutines without blocking.
func (t *Transport) enqueue(r *inbound, heartbeat bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group)
	}
	q := t.queue
	if heartbeat && t.heartbeatHandler() != nil {
		q = t.hbQueue
	}
	select {
	case q <- r:
		return nil
	default:
		return fmt.Errorf("%w: queue of group %d is full (%d)", ErrBusy, t.group, cap(q))
	}
}

// dispatchLoop hands the requests of q to raft one at a time, in order.
// On Close it answers what is left with an error and returns.
func (t *Transport) dispatchLoop(q chan *inbound, heartbeats bool) {
	for {
		select {
		case r := <-q:
			t.serve(r, heartbeats)
		case <-t.closed:
			for {
				select {
				case r := <-q:
					r.fail(fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group), t.closed)
				default:
					return
				}
			}
		}
	}
}

// serve hands one request to raft (the heartbeat handler, or Consumer)
// and forwards raft's answer, all by the request's deadline.
func (t *Transport) serve(r *inbound, heartbeat bool) {
	select {
	case <-r.in.done:
		return // the stream the answer would go to is gone
	default:
	}
	if time.Now().After(r.deadline) {
		r.fail(fmt.Errorf("%w: request expired in the queue of group %d", ErrTimeout, t.group), t.closed)
		return
	}
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: r.cmd, RespChan: respCh}
	timer := time.NewTimer(time.Until(r.deadline))
	defer timer.Stop()
	if fn := t.heartbeatHandler(); heartbeat && fn != nil {
		fn(rpc)
	} else {
		select {
		case t.consumer <- rpc:
		case <-timer.C:
			r.fail(fmt.Errorf("%w: group %d did not take the request", ErrTimeout, t.group), t.closed)
			return
		case <-r.in.done:
			return
		case <-t.closed:
			r.fail(fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group), t.closed)
			return
		}
	}
	select {
	case res := <-respCh:
		r.respond(encodeResponse(res.Response, res.Error), t.closed)
	case <-timer.C:
		r.fail(fmt.Errorf("%w: group %d did not answer", ErrTimeout, t.group), t.closed)
	case <-r.in.done:
	case <-t.closed:
		r.fail(fmt.Errorf("%w: group %d is shutting down", ErrUnknownGroup, t.group), t.closed)
	}
}

// ---------------------------------------------------------------- pipeline

// AppendEntriesPipeline implements raft.Transport. The pipeline's requests
// go on the shared stream to target; its futures are delivered on
// Consumer in the order of the requests.
func (t *Transport) AppendEntriesPipeline(_ raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	n := t.m.cfg.MaxPipelineInFlight
	if n < 2 {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	p := &pipeline{
		t:        t,
		target:   target,
		sem:      make(chan struct{}, n),
		inflight: make(chan *appendFuture, n),
		doneCh:   make(chan raft.AppendFuture, n),
		closed:   make(chan struct{}),
	}
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("group %d pipeline to %s: %w", t.group, target, ErrClosed)
	}
	t.mu.pipelines[p] = struct{}{}
	p.wg.Add(1)
	t.mu.Unlock()
	t.m.pipelinesOpened.Add(1)
	go func() {
		defer p.wg.Done()
		p.decodeLoop()
	}()
	return p, nil
}

// pipeline implements raft.AppendPipeline. Its decode goroutine is owned
// by the pipeline and ends on Close (raft's or the Transport's).
type pipeline struct {
	t        *Transport
	target   raft.ServerAddress
	sem      chan struct{}          // bounds the requests awaiting an answer
	inflight chan *appendFuture     // sent, in order, to the decode goroutine
	doneCh   chan raft.AppendFuture // answered, in order, to raft
	closed   chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// AppendEntries implements raft.AppendPipeline. It blocks while
// MaxPipelineInFlight requests await their answers.
func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	select {
	case <-p.closed:
		return nil, raft.ErrPipelineShutdown
	default:
	}
	select {
	case p.sem <- struct{}{}:
	case <-p.closed:
		return nil, raft.ErrPipelineShutdown
	}
	f := &appendFuture{start: time.Now(), args: args, resp: resp, done: make(chan struct{}), closed: p.closed}
	c, err := p.t.send(p.target, args, f.start.Add(p.t.m.cfg.RPCTimeout), p.closed)
	if err != nil {
		<-p.sem
		return nil, fmt.Errorf("group %d pipelined AppendEntries to %s: %w", p.t.group, p.target, err)
	}
	f.call = c
	p.inflight <- f // never blocks: sem bounds it
	return f, nil
}

// Consumer implements raft.AppendPipeline.
func (p *pipeline) Consumer() <-chan raft.AppendFuture { return p.doneCh }

// Close implements raft.AppendPipeline: the decode goroutine ends and the
// requests still in flight are abandoned.
func (p *pipeline) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.wg.Wait()
		p.t.mu.Lock()
		delete(p.t.mu.pipelines, p)
		p.t.mu.Unlock()
	})
	return nil
}

func (p *pipeline) decodeLoop() {
	defer func() {
		for {
			select {
			case f := <-p.inflight:
				f.call.s.abandon(f.call)
				f.err = raft.ErrPipelineShutdown
				close(f.done)
			default:
				return
			}
		}
	}()
	for {
		select {
		case f := <-p.inflight:
			resp, err := f.call.wait(p.closed)
			if err == nil {
				err = decodeResponse(resp, f.resp)
			}
			if err != nil {
				err = fmt.Errorf("group %d pipelined AppendEntries to %s: %w", p.t.group, p.target, err)
			}
			f.err = err
			close(f.done)
			<-p.sem
			select {
			case p.doneCh <- f:
			case <-p.closed:
				return
			}
		case <-p.closed:
			return
		}
	}
}

// appendFuture implements raft.AppendFuture.
type appendFuture struct {
	start  time.Time
	args   *raft.AppendEntriesRequest
	resp   *raft.AppendEntriesResponse
	call   *call
	err    error         // set before done is closed
	done   chan struct{} // closed when answered
	closed chan struct{} // the pipeline's
}

func (f *appendFuture) Error() error {
	select {
	case <-f.done:
		return f.err
	case <-f.closed:
		select {
		case <-f.done:
			return f.err
		default:
			return raft.ErrPipelineShutdown
		}
	}
}

func (f *appendFuture) Start() time.Time                      { return f.start }
func (f *appendFuture) Request() *raft.AppendEntriesRequest   { return f.args }
func (f *appendFuture) Response() *raft.AppendEntriesResponse { return f.resp }
