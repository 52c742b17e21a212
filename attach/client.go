package attach

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// Client reaches the head nodes of a rack. It is safe for concurrent use.
type Client struct {
	// HeadNodes lists every head node's addresses (one per network).
	HeadNodes [][]string
	// RequestTimeout bounds one block request, retries included.
	RequestTimeout time.Duration
	// IOWire is the protocol of block I/O to primaries ("" is
	// IOWireFramed). Admin calls are gRPC whatever it says.
	IOWire IOWire
	Logger *slog.Logger

	pool rpc.Pool
	next atomic.Uint32 // spreads admin calls over head nodes
	// grpcOnly remembers, by address list, the head nodes found not to
	// speak the framed protocol, and when (wire.go).
	grpcOnly struct {
		sync.Mutex
		since map[string]time.Time
	}
	wireKeepalive wireTiming // zero: rpc's timing (tests shorten it)
}

// Close closes the client's connections.
func (c *Client) Close() { c.pool.Close() }

func (c *Client) requestTimeout() time.Duration {
	if c.RequestTimeout == 0 {
		return 30 * time.Second
	}
	return c.RequestTimeout
}

func (c *Client) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

// Admin calls fn against head nodes in turn until one answers with
// something other than Unavailable; any head node forwards to the leader.
// When none answers it tries again, with backoff, until ctx ends: a rack
// that is starting or electing a leader answers within seconds.
func (c *Client) Admin(ctx context.Context, fn func(context.Context, ballastpb.AdminClient) error) error {
	if len(c.HeadNodes) == 0 {
		return errors.New("no head nodes configured")
	}
	backoff := 50 * time.Millisecond
	for {
		err := c.adminRound(ctx, fn)
		if !errors.Is(err, errNoHeadNodeAnswered) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

var errNoHeadNodeAnswered = errors.New("no head node answered")

// adminRound tries each head node once.
func (c *Client) adminRound(ctx context.Context, fn func(context.Context, ballastpb.AdminClient) error) error {
	start := int(c.next.Add(1))
	var last error
	for i := range c.HeadNodes {
		addrs := c.HeadNodes[(start+i)%len(c.HeadNodes)]
		conn, err := c.pool.Get(addrs)
		if err != nil {
			last = err
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = fn(cctx, ballastpb.NewAdminClient(conn))
		cancel()
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			return err
		}
		last = fmt.Errorf("head node %v: %w", addrs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("%w: %w", errNoHeadNodeAnswered, last)
}

// Lookup returns a volume's record and the addresses of its replicas.
func (c *Client) Lookup(ctx context.Context, name string) (*ballastpb.GetVolumeResponse, error) {
	var resp *ballastpb.GetVolumeResponse
	err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		var err error
		resp, err = a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: name})
		return err
	})
	return resp, err
}

// ErrVolumeGone is returned for I/O to a volume that no longer exists.
var ErrVolumeGone = errors.New("attach: volume no longer exists")

// Volume is an open volume: block I/O to its primary over one stream, with
// many requests in flight. It is safe for concurrent use.
type Volume struct {
	client *Client
	name   string
	size   uint64
	id     uint64
	// session is carried on every request: the host and the attachment
	// generation the volume was opened under (none for a tool writing a
	// detached volume). A head node refuses its writes once the volume
	// is attached elsewhere; the session never changes.
	session migrate.Session
	// writer names this open of the volume in its writes, trims and
	// write-zeroes, and ops numbers them: a write sent again (its outcome
	// lost with a stream or a primary) carries the same name, and the head
	// nodes apply it once (0: unnamed).
	writer uint64
	ops    opTracker

	// wrote is set once a head node acknowledged a write, trim or
	// write-zeroes of this session: from then on a flush is answered at
	// once (device.Flush).
	wrote atomic.Bool

	mu      sync.Mutex
	primary []string // addresses of the primary as last looked up
	stream  *ioStream
	closed  bool
}

// OpenVolume looks up a volume and prepares I/O to its primary, as a
// client that names no host: it may write the volume only while it is
// attached to no host.
func (c *Client) OpenVolume(ctx context.Context, name string) (*Volume, error) {
	return c.OpenVolumeAs(ctx, name, "")
}

// ErrNotAttached is returned by OpenVolumeAs for a volume that is neither
// attached nor migrating to the host.
var ErrNotAttached = errors.New("attach: volume not attached to this host")

// OpenVolumeAs opens a volume for host, under the generation of its
// attachment (or of the prepared migration to it). host "" opens it as
// OpenVolume does.
func (c *Client) OpenVolumeAs(ctx context.Context, name, host string) (*Volume, error) {
	resp, err := c.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	v := &Volume{client: c, name: name, size: resp.Volume.SizeBytes, id: resp.Volume.Id, writer: newWriter()}
	if host != "" {
		att := volume.AttachmentOf(resp.Volume)
		s, ok := att.SessionFor(host)
		if !ok {
			return nil, fmt.Errorf("%w: volume %s is %s, not on host %s", ErrNotAttached, name, att, host)
		}
		v.session = s
	}
	v.setPrimary(resp)
	return v, nil
}

func (v *Volume) setPrimary(resp *ballastpb.GetVolumeResponse) {
	for _, r := range resp.Replicas {
		if r.Id == resp.Volume.Primary {
			v.primary = r.Addresses
		}
	}
}

// Size is the volume's size when it was opened.
func (v *Volume) Size() uint64 { return v.size }

// Name is the volume's name.
func (v *Volume) Name() string { return v.name }

// Close ends the volume's stream; requests in flight fail.
func (v *Volume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	if v.stream != nil {
		v.stream.close(errors.New("volume closed"))
		v.stream = nil
	}
	return nil
}

// ioStream is one stream of block requests to a primary with its
// requests in flight, over either protocol (ioTransport): the requests
// waiting for their replies, and the stream's end, are the same code.
type ioStream struct {
	t ioTransport

	mu      sync.Mutex
	waiting map[uint64]chan *ballastpb.IOReply
	err     error
	done    chan struct{}
}

// ioTransport is one protocol's stream of block requests and replies.
type ioTransport interface {
	// send sends one request; it may be called concurrently. The
	// request's data is the caller's again when it returns.
	send(req *ballastpb.IORequest) error
	// recv returns the next reply; one goroutine calls it.
	recv() (*ballastpb.IOReply, error)
	// close ends the stream: send and recv fail from then on.
	close(err error)
}

var requestIDs atomic.Uint64

func newIOStream(t ioTransport) *ioStream {
	s := &ioStream{t: t, waiting: map[uint64]chan *ballastpb.IOReply{}, done: make(chan struct{})}
	go s.receive()
	return s
}

func (v *Volume) currentStream(ctx context.Context) (*ioStream, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, errors.New("volume closed")
	}
	if v.stream != nil {
		return v.stream, nil
	}
	if len(v.primary) == 0 {
		return nil, errors.New("volume has no known primary")
	}
	conn, err := v.client.pool.Get(v.primary)
	if err != nil {
		return nil, err
	}
	t, err := v.client.openTransport(ctx, conn, v.primary)
	if err != nil {
		return nil, err
	}
	v.stream = newIOStream(t)
	return v.stream, nil
}

// grpcTransport is a BlockIO gRPC stream.
type grpcTransport struct {
	cancel context.CancelFunc
	stream ballastpb.BlockIO_IOClient
	sendMu sync.Mutex // a gRPC stream takes one Send at a time
}

func openGRPC(conn *rpc.Conn) (*grpcTransport, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := ballastpb.NewBlockIOClient(conn).IO(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open I/O stream: %w", err)
	}
	return &grpcTransport{cancel: cancel, stream: st}, nil
}

func (t *grpcTransport) send(req *ballastpb.IORequest) error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	return t.stream.Send(req)
}

func (t *grpcTransport) recv() (*ballastpb.IOReply, error) { return t.stream.Recv() }

func (t *grpcTransport) close(error) { t.cancel() }

func (s *ioStream) receive() {
	for {
		r, err := s.t.recv()
		if err != nil {
			s.close(err)
			return
		}
		s.mu.Lock()
		ch := s.waiting[r.Id]
		delete(s.waiting, r.Id)
		s.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

func (s *ioStream) close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	s.t.close(err)
	close(s.done)
}

// roundTrip sends one request on the stream and waits for its reply.
func (s *ioStream) roundTrip(ctx context.Context, req *ballastpb.IORequest) (*ballastpb.IOReply, error) {
	ch := make(chan *ballastpb.IOReply, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, s.err
	}
	s.waiting[req.Id] = ch
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.waiting, req.Id)
		s.mu.Unlock()
	}
	err := s.t.send(req)
	if errors.Is(err, blockwire.ErrMalformed) {
		// The request cannot be framed (the stream is unharmed): as the
		// head node answers a request it cannot serve.
		forget()
		return &ballastpb.IOReply{Id: req.Id, Status: ballastpb.IOStatus_IO_STATUS_INVALID, Error: err.Error()}, nil
	}
	if err != nil {
		forget()
		s.close(err)
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-s.done:
		forget()
		return nil, s.err
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

// do runs one request, retrying on a broken stream or a moved primary
// until the request timeout. A reply with an error status is final.
func (v *Volume) do(ctx context.Context, req *ballastpb.IORequest) (*ballastpb.IOReply, error) {
	ctx, cancel := context.WithTimeout(ctx, v.client.requestTimeout())
	defer cancel()
	req.VolumeId = v.id
	req.Host, req.Generation = v.session.Host, v.session.Generation
	if v.writer != 0 && writes(req.Op) {
		op, oldest := v.ops.start()
		defer v.ops.finish(op)
		req.Client, req.WriteOp, req.OldestOp = v.writer, op, oldest
	}
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		req.Id = requestIDs.Add(1)
		// Only a write sent again can have been applied already: the
		// head node looks for it then alone.
		req.Resend = attempt > 0 && req.Client != 0
		s, err := v.currentStream(ctx)
		var reply *ballastpb.IOReply
		if err == nil {
			reply, err = s.roundTrip(ctx, req)
		}
		if err == nil {
			switch reply.Status {
			case ballastpb.IOStatus_IO_STATUS_NOT_PRIMARY, ballastpb.IOStatus_IO_STATUS_NO_SUCH_VOLUME:
				err = errors.New(reply.Error)
			default:
				return reply, nil
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("volume %s: %w (last error: %v)", v.name, ctx.Err(), err)
		}
		v.client.logger().Debug("retrying block request", "volume", v.name, "err", err)
		v.mu.Lock()
		if v.stream == s && s != nil {
			v.stream = nil
			s.close(err)
		}
		v.mu.Unlock()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("volume %s: %w (last error: %v)", v.name, ctx.Err(), err)
		}
		backoff = min(backoff*2, time.Second)
		resp, lerr := v.client.Lookup(ctx, v.name)
		if status.Code(lerr) == codes.NotFound {
			return nil, fmt.Errorf("%w: %s", ErrVolumeGone, v.name)
		}
		if lerr == nil {
			if resp.Volume.Id != v.id {
				return nil, fmt.Errorf("%w: %s was deleted and created again", ErrVolumeGone, v.name)
			}
			v.mu.Lock()
			v.setPrimary(resp)
			v.mu.Unlock()
		}
	}
}

// writes says whether an operation changes the volume.
func writes(op ballastpb.IOOp) bool {
	switch op {
	case ballastpb.IOOp_IO_OP_WRITE, ballastpb.IOOp_IO_OP_TRIM, ballastpb.IOOp_IO_OP_WRITE_ZEROES:
		return true
	}
	return false
}

// newWriter returns a random name for one open of a volume, never 0.
func newWriter() uint64 {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
		}
		if w := binary.LittleEndian.Uint64(b[:]); w != 0 {
			return w
		}
	}
}

// opTracker numbers a volume's writes and knows the oldest without an
// answer.
type opTracker struct {
	mu      sync.Mutex
	last    uint64
	low     uint64 // every op below low has its answer
	pending map[uint64]struct{}
}

// start numbers a new write; oldest is the oldest op still without an
// answer (perhaps op itself).
func (t *opTracker) start() (op, oldest uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		t.pending, t.low = map[uint64]struct{}{}, 1
	}
	t.last++
	t.pending[t.last] = struct{}{}
	t.advance()
	return t.last, t.low
}

// finish notes that op has its final answer: it is never sent again.
func (t *opTracker) finish(op uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, op)
	t.advance()
}

func (t *opTracker) advance() {
	for t.low <= t.last {
		if _, ok := t.pending[t.low]; ok {
			return
		}
		t.low++
	}
}
