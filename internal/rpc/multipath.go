package rpc

// A connection to one node over every network it is on. Each path is its
// own gRPC connection, probed with the standard health service; calls go
// to the first path that is up. When a path fails while another is up, the
// calls and streams still on it are cut at once (they would otherwise hang
// until TCP or keepalive noticed), and come back to their callers as
// codes.Unavailable, which every caller already retries.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Health checking of a path: a probe every ProbeInterval, each allowed
// ProbeTimeout; FailuresToDown failed probes in a row mark the path down,
// one success marks it up. A cut network is thus noticed in about
// FailuresToDown*ProbeTimeout+ProbeInterval (2.5 s), well inside an
// agent's or a replication's patience.
const (
	ProbeInterval  = 500 * time.Millisecond
	ProbeTimeout   = time.Second
	FailuresToDown = 2
)

// PathStatus is what a connection knows of one network path.
type PathStatus struct {
	Address string
	Up      bool
	// Since is when the path last changed state (or was first dialed).
	Since time.Time
	// LastError is the last failed probe's error while the path is down.
	LastError string
}

// Conn is a client connection to one node over each of its network
// addresses. It implements grpc.ClientConnInterface, so generated clients
// take it as they take a *grpc.ClientConn.
type Conn struct {
	paths []*path
	// closing ends the probes, including one in flight: a probe of a node
	// that is already gone would otherwise hold Close for its timeout.
	closing   context.Context
	stopProbe context.CancelFunc
	probes    sync.WaitGroup
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

type path struct {
	addr string
	cc   *grpc.ClientConn
	// bound counts the calls and streams bound to the path, for tests.
	bound atomic.Int64

	mu struct {
		sync.Mutex
		up       bool
		failures int
		since    time.Time
		lastUp   time.Time
		lastErr  error
		// gen ends when the path is declared down; calls bound to it end
		// with it. A new one starts when the path comes back.
		gen    context.Context
		cutGen context.CancelCauseFunc
	}
}

// errPathDown is the cause given to calls cut off with their path.
type errPathDown struct{ addr string }

func (e errPathDown) Error() string { return fmt.Sprintf("network path %s is down", e.addr) }

// DialPaths connects to a node over each of its addresses. Paths start up
// (optimistically: a probe corrects it within a second) and are probed
// until Close.
func DialPaths(addresses []string, opts ...grpc.DialOption) (*Conn, error) {
	if len(addresses) == 0 {
		return nil, fmt.Errorf("dial: no addresses")
	}
	c := &Conn{}
	c.closing, c.stopProbe = context.WithCancel(context.Background())
	now := time.Now()
	for _, a := range addresses {
		cc, err := Dial([]string{a}, opts...)
		if err != nil {
			c.stopProbe()
			c.closePaths()
			return nil, err
		}
		p := &path{addr: a, cc: cc}
		p.mu.up, p.mu.since, p.mu.lastUp = true, now, now
		p.mu.gen, p.mu.cutGen = context.WithCancelCause(context.Background())
		c.paths = append(c.paths, p)
	}
	if len(c.paths) > 1 {
		for _, p := range c.paths {
			c.probes.Add(1)
			go c.probeLoop(p)
		}
	}
	return c, nil
}

// Close stops probing and closes every path.
func (c *Conn) Close() error {
	c.stopProbe()
	c.probes.Wait()
	return c.closePaths()
}

func (c *Conn) closePaths() error {
	var errs []error
	for _, p := range c.paths {
		p.mu.Lock()
		p.mu.cutGen(errors.New("connection closed"))
		p.mu.Unlock()
		errs = append(errs, p.cc.Close())
	}
	return errors.Join(errs...)
}

// Paths reports each path's state, in address order.
func (c *Conn) Paths() []PathStatus {
	out := make([]PathStatus, 0, len(c.paths))
	for _, p := range c.paths {
		p.mu.Lock()
		ps := PathStatus{Address: p.addr, Up: p.mu.up, Since: p.mu.since}
		if !p.mu.up && p.mu.lastErr != nil {
			ps.LastError = p.mu.lastErr.Error()
		}
		p.mu.Unlock()
		out = append(out, ps)
	}
	return out
}

func (c *Conn) probeLoop(p *path) {
	defer c.probes.Done()
	client := healthpb.NewHealthClient(p.cc)
	t := time.NewTicker(ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-c.closing.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.closing, ProbeTimeout)
		// WaitForReady: a path that is reconnecting gets the whole timeout
		// to do so rather than failing at once.
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if c.closing.Err() != nil {
			return
		}
		c.record(p, err)
	}
}

// record applies one probe's result, and cuts the calls on a path that has
// just gone down if another path can take them.
func (c *Conn) record(p *path, err error) {
	p.mu.Lock()
	now := time.Now()
	if err == nil {
		p.mu.failures, p.mu.lastErr, p.mu.lastUp = 0, nil, now
		if !p.mu.up {
			p.mu.up, p.mu.since = true, now
			p.mu.gen, p.mu.cutGen = context.WithCancelCause(context.Background())
		}
		p.mu.Unlock()
		return
	}
	p.mu.failures++
	p.mu.lastErr = err
	wentDown := p.mu.up && p.mu.failures >= FailuresToDown
	if wentDown {
		p.mu.up, p.mu.since = false, now
	}
	p.mu.Unlock()
	// With no other path up the node itself is gone or the machine is
	// overloaded; cutting calls would only add retries to either.
	if wentDown && c.otherUp(p) {
		p.mu.Lock()
		if !p.mu.up {
			p.mu.cutGen(errPathDown{p.addr})
		}
		p.mu.Unlock()
	}
}

func (c *Conn) otherUp(self *path) bool {
	for _, p := range c.paths {
		if p == self {
			continue
		}
		p.mu.Lock()
		up := p.mu.up
		p.mu.Unlock()
		if up {
			return true
		}
	}
	return false
}

// pick returns the first path that is up, or, with none up, the one seen
// up most recently.
func (c *Conn) pick() *path {
	var best *path
	var bestSeen time.Time
	for _, p := range c.paths {
		p.mu.Lock()
		up, seen := p.mu.up, p.mu.lastUp
		p.mu.Unlock()
		if up {
			return p
		}
		if best == nil || seen.After(bestSeen) {
			best, bestSeen = p, seen
		}
	}
	return best
}

// bind returns a context for a call on p that ends when ctx does or when p
// is declared down, and the function that releases it.
func (p *path) bind(ctx context.Context) (context.Context, func()) {
	p.mu.Lock()
	gen := p.mu.gen
	p.mu.Unlock()
	cctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(gen, func() { cancel(context.Cause(gen)) })
	p.bound.Add(1)
	var once sync.Once
	return cctx, func() {
		once.Do(func() {
			stop()
			cancel(nil)
			p.bound.Add(-1)
		})
	}
}

// translate turns the error of a call cut off with its path into
// Unavailable, the code callers retry on.
func translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var down errPathDown
	if errors.As(context.Cause(ctx), &down) {
		return status.Errorf(codes.Unavailable, "%v: %v", down, err)
	}
	return err
}

// Idempotent marks a unary call that may be sent again: if its path is
// declared down while it is in flight, Invoke resends it on the path now
// preferred instead of failing it.
var Idempotent grpc.CallOption = idempotent{}

type idempotent struct{ grpc.EmptyCallOption }

// Invoke sends a unary call on the preferred path.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	retry := false
	for _, o := range opts {
		if _, ok := o.(idempotent); ok {
			retry = true
		}
	}
	for attempt := 0; ; attempt++ {
		p := c.pick()
		cctx, release := p.bind(ctx)
		err := p.cc.Invoke(cctx, method, args, reply, opts...)
		var down errPathDown
		cut := err != nil && errors.As(context.Cause(cctx), &down)
		err = translate(cctx, err)
		release()
		// Each retry follows a path going down while another was up, so
		// a few suffice; more would mean paths flapping.
		if !cut || !retry || ctx.Err() != nil || attempt >= 2*len(c.paths) {
			return err
		}
	}
}

// NewStream opens a stream on the preferred path; the stream ends if that
// path goes down while another is up.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	p := c.pick()
	sctx, release := p.bind(ctx)
	s, err := p.cc.NewStream(sctx, desc, method, opts...)
	if err != nil {
		release()
		return nil, translate(sctx, err)
	}
	// A caller that cancels its context instead of reading to the end
	// releases the binding too.
	context.AfterFunc(sctx, release)
	return &pathStream{ClientStream: s, ctx: sctx, release: release}, nil
}

type pathStream struct {
	grpc.ClientStream
	ctx     context.Context
	release func()
}

func (s *pathStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		// The stream is over (io.EOF included): let go of the path.
		err = translate(s.ctx, err)
		s.release()
	}
	return err
}

// SendMsg is not translated: gRPC reports a broken stream to the sender
// as io.EOF, and the reason comes from RecvMsg.
