package transport

// The dialing side of the multiplexed stream: one peer per remote address,
// at most one open clientStream per peer, and the calls in flight on it.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// nodeMetadataKey names the dialing node in a Stream's gRPC metadata.
const nodeMetadataKey = "ballast-raft-node"

// peer is the outbound state of one remote address.
type peer struct {
	m    *Manager
	addr raft.ServerAddress
	// dialSem lets one caller at a time open the stream; the others wait
	// for it, each until its own deadline.
	dialSem chan struct{}

	mu struct {
		sync.Mutex
		cur      *clientStream // nil while no stream is open
		closed   bool
		closeErr error
	}
}

func newPeer(m *Manager, addr raft.ServerAddress) *peer {
	return &peer{m: m, addr: addr, dialSem: make(chan struct{}, 1)}
}

func (p *peer) open() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.cur != nil
}

func (p *peer) current() (*clientStream, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return nil, p.mu.closeErr
	}
	return p.mu.cur, nil
}

// stream returns the open stream to the peer, opening one if there is
// none, by deadline.
func (p *peer) stream(deadline time.Time, abort <-chan struct{}) (*clientStream, error) {
	if s, err := p.current(); s != nil || err != nil {
		return s, err
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case p.dialSem <- struct{}{}:
	case <-timer.C:
		return nil, fmt.Errorf("%w: waiting for the stream to %s to open", ErrTimeout, p.addr)
	case <-abort:
		return nil, ErrClosed
	case <-p.m.closed:
		return nil, ErrClosed
	}
	defer func() { <-p.dialSem }()
	if s, err := p.current(); s != nil || err != nil {
		return s, err
	}
	return p.openStream(deadline)
}

// openStream opens a new stream; the caller holds dialSem.
func (p *peer) openStream(deadline time.Time) (*clientStream, error) {
	m := p.m
	if m.cfg.Dial == nil {
		return nil, fmt.Errorf("%w: no Dial function configured", ErrUnavailable)
	}
	// The stream lives until it breaks or is closed; only its opening is
	// bounded by the caller's deadline.
	ctx, cancel := context.WithCancel(context.Background())
	ctx = metadata.AppendToOutgoingContext(ctx, nodeMetadataKey, m.cfg.NodeID)
	timer := time.AfterFunc(time.Until(deadline), cancel)
	var st grpc.BidiStreamingClient[raftpb.Request, raftpb.Response]
	conn, err := m.cfg.Dial(ctx, p.addr)
	if err == nil {
		st, err = raftpb.NewRaftTransportClient(conn).Stream(ctx)
	}
	if !timer.Stop() {
		cancel()
		return nil, fmt.Errorf("%w: opening a stream to %s", ErrTimeout, p.addr)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: open stream to %s: %w", ErrUnavailable, p.addr, err)
	}
	s := &clientStream{
		p:      p,
		st:     st,
		cancel: cancel,
		sendq:  make(chan *raftpb.Request, m.cfg.StreamQueueLen),
		done:   make(chan struct{}),
	}
	s.mu.pending = map[uint64]*call{}
	s.lastRecv.Store(time.Now().UnixNano())

	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		cancel()
		return nil, p.mu.closeErr
	}
	p.mu.cur = s
	p.mu.Unlock()
	if !m.goFunc(s.readLoop) || !m.goFunc(s.writeLoop) {
		s.fail(ErrClosed)
		return nil, ErrClosed
	}
	m.streamsOpened.Add(1)
	m.log.Debug("raft stream opened", "peer", p.addr)
	return s, nil
}

// drop forgets s if it is the current stream.
func (p *peer) drop(s *clientStream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cur == s {
		p.mu.cur = nil
	}
}

// close fails the current stream with err and refuses new ones.
func (p *peer) close(err error) {
	p.mu.Lock()
	p.mu.closed = true
	p.mu.closeErr = err
	s := p.mu.cur
	p.mu.cur = nil
	p.mu.Unlock()
	if s != nil {
		s.fail(err)
	}
}

// clientStream is one open Stream call to a peer. Its reader and writer
// goroutines are owned by the Manager (counted in Manager.wg); both end
// when the stream fails.
type clientStream struct {
	p      *peer
	st     grpc.BidiStreamingClient[raftpb.Request, raftpb.Response]
	cancel context.CancelFunc
	sendq  chan *raftpb.Request // to the writer; bounded
	done   chan struct{}        // closed by fail

	lastRecv atomic.Int64 // unix nanos of the last response (or the opening)

	mu struct {
		sync.Mutex
		err     error // set once, by fail
		nextID  uint64
		pending map[uint64]*call
	}
}

// call is one request awaiting its response.
type call struct {
	s        *clientStream
	id       uint64
	sent     time.Time
	deadline time.Time
	done     chan callResult // buffered 1; written once by whoever removes the call from pending
}

type callResult struct {
	resp *raftpb.Response
	err  error
}

// start registers req (assigning its id) and queues it for sending.
func (s *clientStream) start(req *raftpb.Request, deadline time.Time, abort <-chan struct{}) (*call, error) {
	c := &call{s: s, sent: time.Now(), deadline: deadline, done: make(chan callResult, 1)}
	s.mu.Lock()
	if s.mu.err != nil {
		err := s.mu.err
		s.mu.Unlock()
		return nil, err
	}
	if len(s.mu.pending) >= s.p.m.cfg.MaxInFlightPerStream {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %d requests in flight to %s", ErrBusy, s.p.m.cfg.MaxInFlightPerStream, s.p.addr)
	}
	s.mu.nextID++
	c.id = s.mu.nextID
	req.Id = c.id
	s.mu.pending[c.id] = c
	s.mu.Unlock()

	select {
	case s.sendq <- req:
		return c, nil
	default:
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case s.sendq <- req:
		return c, nil
	case <-s.done:
		// fail has answered the call.
		return c, nil
	case <-timer.C:
		s.abandon(c)
		return nil, fmt.Errorf("%w: send queue to %s full", ErrTimeout, s.p.addr)
	case <-abort:
		s.abandon(c)
		return nil, ErrClosed
	}
}

// wait returns the call's response, or fails at its deadline or on abort.
func (c *call) wait(abort <-chan struct{}) (*raftpb.Response, error) {
	select {
	case r := <-c.done:
		return r.resp, r.err
	default:
	}
	timer := time.NewTimer(time.Until(c.deadline))
	defer timer.Stop()
	select {
	case r := <-c.done:
		return r.resp, r.err
	case <-timer.C:
		c.s.abandon(c)
		c.s.checkSilent(c)
		return nil, fmt.Errorf("%w: no response from %s", ErrTimeout, c.s.p.addr)
	case <-abort:
		c.s.abandon(c)
		return nil, ErrClosed
	}
}

// abandon forgets a call; a late response to it is dropped.
func (s *clientStream) abandon(c *call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.pending[c.id] == c {
		delete(s.mu.pending, c.id)
	}
}

func (s *clientStream) isPending(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.mu.pending[id]
	return ok
}

// checkSilent breaks the stream if nothing at all arrived on it since c
// was sent: the serving side answers every request (with an error if need
// be) before the client's deadline, so a silent stream is a dead one.
func (s *clientStream) checkSilent(c *call) {
	if s.lastRecv.Load() < c.sent.UnixNano() {
		s.fail(fmt.Errorf("%w: no message from %s since %v", ErrStreamBroken, s.p.addr, c.sent.Format(time.RFC3339Nano)))
	}
}

func (s *clientStream) readLoop() {
	for {
		resp, err := s.st.Recv()
		if err != nil {
			s.fail(fmt.Errorf("%w: receive from %s: %w", ErrStreamBroken, s.p.addr, err))
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		s.mu.Lock()
		c := s.mu.pending[resp.GetId()]
		delete(s.mu.pending, resp.GetId())
		s.mu.Unlock()
		if c != nil {
			c.done <- callResult{resp: resp}
		}
	}
}

func (s *clientStream) writeLoop() {
	for {
		select {
		case req := <-s.sendq:
			if !s.isPending(req.GetId()) {
				continue // abandoned while queued
			}
			if err := s.st.Send(req); err != nil {
				s.fail(fmt.Errorf("%w: send to %s: %w", ErrStreamBroken, s.p.addr, err))
				return
			}
		case <-s.done:
			return
		}
	}
}

// fail ends the stream: every call in flight gets err, the peer forgets
// the stream, and the next request opens a new one.
func (s *clientStream) fail(err error) {
	s.mu.Lock()
	if s.mu.err != nil {
		s.mu.Unlock()
		return
	}
	s.mu.err = err
	pending := s.mu.pending
	s.mu.pending = nil
	s.mu.Unlock()

	close(s.done)
	s.cancel()
	s.p.drop(s)
	for _, c := range pending {
		c.done <- callResult{err: err}
	}
	if errors.Is(err, ErrClosed) {
		s.p.m.log.Debug("raft stream closed", "peer", s.p.addr, "in_flight", len(pending))
	} else {
		s.p.m.log.Warn("raft stream broken", "peer", s.p.addr, "in_flight", len(pending), "error", err)
	}
}
