package headnode

// Shard puts and reads over the framed shard protocol (internal/sledwire;
// the sled's side is sled/wire.go).
//
// A head node keeps one framed connection per sled, opened on first use
// over the network path gRPC would take to that sled (rpc.Conn's
// PreferredPath) and closed when that path is found down, so the two
// networks and their health checks work as for gRPC. Many requests share
// a connection, each under an id, answered in any order. A request whose
// connection breaks is sent once more on a new one (a put of the same
// bytes is idempotent, as the gRPC put is marked, and so is a read). A
// sled that does not speak the protocol (an older build: it closes the
// connection or answers another version) is sent its requests over gRPC,
// and asked again after noBatchRetry; a connection that cannot be opened
// at all sends that request, and the sled's others for sledWireRedial,
// over gRPC, whose own paths and errors then decide. Errors come back as gRPC's would, for classifySledError.

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/internal/sledwire"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// sledWireReadBufferBytes is a connection's read buffer: replies are small.
const sledWireReadBufferBytes = 16 << 10

// errNoSledWire: the sled does not speak this version of the protocol.
var errNoSledWire = errors.New("sled does not speak the framed shard protocol")

// sledWire is the head node's side of the framed shard protocol: a
// connection per sled.
type sledWire struct {
	// period and timeout are the keepalive's (rpc's; tests shorten them).
	period, timeout time.Duration

	mu     sync.Mutex
	conns  map[string]*sledWireConn // by sled id
	noWire map[string]time.Time     // sleds that refused it, and when
	// dialFailed holds when a connection to each sled last failed to
	// open: its requests take gRPC for sledWireRedial rather than each
	// pay a dial to a sled that is down.
	dialFailed map[string]time.Time
	closed     bool
}

// sledWireRedial is how long after a failed dial a sled's requests go over
// gRPC before the framed connection is tried again.
const sledWireRedial = time.Second

func newSledWire() *sledWire {
	return &sledWire{period: rpc.KeepaliveTime, timeout: rpc.KeepaliveTimeout,
		conns: map[string]*sledWireConn{}, noWire: map[string]time.Time{}, dialFailed: map[string]time.Time{}}
}

// close ends every connection.
func (w *sledWire) close() {
	w.mu.Lock()
	w.closed = true
	conns := w.conns
	w.conns = map[string]*sledWireConn{}
	w.mu.Unlock()
	for _, c := range conns {
		c.close(errors.New("head node stopping"))
		<-c.ended
	}
}

// put puts a shard on sled over the framed protocol; sent is false if it
// was not sent that way (the caller uses gRPC). conn is the sled's gRPC
// connection, whose preferred path the framed one follows.
func (w *sledWire) put(ctx context.Context, sled string, conn *rpc.Conn, id shardID, epoch uint64, data []byte) (sent bool, err error) {
	meta, err := proto.Marshal(&sledpb.PutShardRequest{
		Id:     &sledpb.ShardID{VolumeId: id.volume, SegmentId: id.segment, Index: id.index},
		Epoch:  epoch,
		Crc32C: crc32.Checksum(data, castagnoli),
	})
	if err != nil {
		return true, fmt.Errorf("encode put of %s: %w", id, err)
	}
	sent, _, err = w.do(ctx, sled, conn, sledwire.Frame{Kind: sledwire.KindRequest, Op: sledwire.OpPutShard, Meta: meta, Data: data})
	return sent, classifySledError(sled, "put "+id.String(), err)
}

// getRanges reads the ranges of one GetShardRanges request (within its
// bounds) over the framed protocol; sent is false if it was not sent that
// way. The results hold their data as gRPC's would.
func (w *sledWire) getRanges(ctx context.Context, sled string, conn *rpc.Conn, req *sledpb.GetShardRangesRequest) (sent bool, resp *sledpb.GetShardRangesResponse, err error) {
	meta, err := proto.Marshal(req)
	if err != nil {
		return true, nil, fmt.Errorf("encode read of %d ranges: %w", len(req.Ranges), err)
	}
	op := fmt.Sprintf("get %d ranges", len(req.Ranges))
	sent, reply, err := w.do(ctx, sled, conn, sledwire.Frame{Kind: sledwire.KindRequest, Op: sledwire.OpGetShardRanges, Meta: meta})
	if !sent || err != nil {
		return sent, nil, classifySledError(sled, op, err)
	}
	resp = &sledpb.GetShardRangesResponse{}
	if err := proto.Unmarshal(reply.Meta, resp); err != nil {
		return true, nil, fmt.Errorf("%w: sled %s: %s: a reply that does not decode: %v", errSledDown, sled, op, err)
	}
	if len(resp.Results) != len(req.Ranges) {
		return true, nil, fmt.Errorf("%w: sled %s answered %d ranges of %d", errSledDown, sled, len(resp.Results), len(req.Ranges))
	}
	data := reply.Data
	for i, res := range resp.Results {
		if codes.Code(res.Code) != codes.OK {
			continue
		}
		n := req.Ranges[i].Length
		if uint64(len(data)) < n {
			return true, nil, fmt.Errorf("%w: sled %s: %s: %d bytes of data for range %d of %d bytes", errSledDown, sled, op, len(data), i, n)
		}
		res.Data, data = data[:n:n], data[n:]
	}
	if len(data) != 0 {
		return true, nil, fmt.Errorf("%w: sled %s: %s: %d bytes of data past the ranges", errSledDown, sled, op, len(data))
	}
	return true, resp, nil
}

// do sends a request and returns its reply; sent is false if it was not
// sent (the caller uses gRPC). A reply with a status comes back as a gRPC
// status error, for classifySledError.
func (w *sledWire) do(ctx context.Context, sled string, conn *rpc.Conn, req sledwire.Frame) (sent bool, reply sledwire.Frame, err error) {
	for attempt := 0; ; attempt++ {
		c, err := w.conn(ctx, sled, conn)
		if err != nil {
			return false, sledwire.Frame{}, nil
		}
		reply, err := c.call(ctx, req)
		switch {
		case err == nil && reply.Status == sledwire.StatusUnimplemented:
			// A sled that speaks the protocol but not this op: gRPC
			// until it is asked again.
			w.refused(sled)
			return false, sledwire.Frame{}, nil
		case err == nil && reply.Status != 0:
			return true, reply, status.Error(codes.Code(reply.Status), string(reply.Meta))
		case err == nil:
			return true, reply, nil
		case ctx.Err() == nil && attempt == 0:
			continue // the connection broke: once more, on a new one
		}
		return true, sledwire.Frame{}, err
	}
}

// refused notes a sled that does not speak the protocol.
func (w *sledWire) refused(sled string) {
	w.mu.Lock()
	w.noWire[sled] = time.Now()
	w.mu.Unlock()
}

// conn returns the open connection to sled, opening one if there is none.
func (w *sledWire) conn(ctx context.Context, sled string, grpcConn *rpc.Conn) (*sledWireConn, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, errors.New("head node stopping")
	}
	if c := w.conns[sled]; c != nil && !c.isClosed() {
		w.mu.Unlock()
		return c, nil
	}
	if at, ok := w.noWire[sled]; ok && time.Since(at) < noBatchRetry {
		w.mu.Unlock()
		return nil, errNoSledWire
	}
	if at, ok := w.dialFailed[sled]; ok && time.Since(at) < sledWireRedial {
		w.mu.Unlock()
		return nil, errors.New("framed shard connection failed to open just now")
	}
	w.mu.Unlock()
	c, err := w.dial(ctx, grpcConn)
	if errors.Is(err, errNoSledWire) {
		w.refused(sled)
	} else if err != nil && ctx.Err() == nil {
		w.mu.Lock()
		w.dialFailed[sled] = time.Now()
		w.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old := w.conns[sled]; old != nil && !old.isClosed() || w.closed {
		// Another put opened one meanwhile, or the node is stopping.
		c.close(nil)
		if w.closed {
			return nil, errors.New("head node stopping")
		}
		return old, nil
	}
	delete(w.noWire, sled)
	delete(w.dialFailed, sled)
	w.conns[sled] = c
	return c, nil
}

// dial opens a connection over the sled's preferred path and exchanges
// preambles.
func (w *sledWire) dial(ctx context.Context, grpcConn *rpc.Conn) (*sledWireConn, error) {
	addr, bound, release := grpcConn.PreferredPath(context.Background())
	nc, answer, err := rpc.DialPreamble(ctx, addr, sledwire.AppendPreamble(nil), sledwire.PreambleBytes)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w: it closed the connection", errNoSledWire)
	}
	if err == nil {
		var version uint16
		version, err = sledwire.ParsePreamble(answer)
		switch {
		case err != nil:
			err = fmt.Errorf("%w: %w", errNoSledWire, err)
		case version != sledwire.Version:
			err = fmt.Errorf("%w: it speaks version %d, this node %d", errNoSledWire, version, sledwire.Version)
		}
		if err != nil {
			nc.Close()
		}
	}
	if err != nil {
		release()
		return nil, fmt.Errorf("framed shard connection to %s: %w", addr, err)
	}
	c := &sledWireConn{nc: nc, addr: addr, writer: sledwire.NewWriter(nc, w.period+w.timeout), release: release,
		pending: map[uint64]chan sledwire.Frame{}, done: make(chan struct{}), kaDone: make(chan struct{}), ended: make(chan struct{})}
	// The path found down ends the connection.
	context.AfterFunc(bound, func() { c.close(context.Cause(bound)) })
	go c.readReplies()
	go c.keepalive(w.period, w.timeout)
	return c, nil
}

// sledWireConn is one framed connection to a sled.
type sledWireConn struct {
	nc      net.Conn
	addr    string
	writer  *sledwire.Writer
	release func() // of the path's binding

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan sledwire.Frame

	sent, received atomic.Uint64 // frames, for the keepalive

	closeOnce sync.Once
	cause     error         // why it closed, set before done closes
	done      chan struct{} // closed by close
	kaDone    chan struct{} // closed when the keepalive is done
	ended     chan struct{} // closed when both goroutines are done
}

func (c *sledWireConn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// call sends a request and waits for its reply.
func (c *sledWireConn) call(ctx context.Context, req sledwire.Frame) (sledwire.Frame, error) {
	ch := make(chan sledwire.Frame, 1)
	c.mu.Lock()
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}()
	// A request whose caller has gone already is not sent. One that is
	// sent is written whole even if its caller gives up meanwhile (the
	// caller's buffer is in the write): the connection is shared, and
	// only the writer's own timeout, a sled that reads nothing for that
	// long, ends it.
	if err := ctx.Err(); err != nil {
		return sledwire.Frame{}, status.FromContextError(err).Err()
	}
	if err := c.writer.Write(req); err != nil {
		c.close(err)
		return sledwire.Frame{}, c.closedErr(err)
	}
	c.sent.Add(1)
	select {
	case r := <-ch:
		return r, nil
	case <-c.done:
		return sledwire.Frame{}, c.closedErr(nil)
	case <-ctx.Done():
		// As gRPC answers a call whose context ended (its cause may be
		// another sled's failure, which must not be taken for this one's).
		return sledwire.Frame{}, status.FromContextError(ctx.Err()).Err()
	}
}

// readReplies hands each reply to its request's waiter until the
// connection ends.
func (c *sledWireConn) readReplies() {
	defer close(c.ended)
	defer func() { <-c.kaDone }()
	rd := sledwire.NewReader(c.nc, sledWireReadBufferBytes, nil)
	for {
		f, err := rd.Next()
		if err != nil {
			c.close(err)
			return
		}
		c.received.Add(1)
		switch f.Kind {
		case sledwire.KindPong:
			continue
		case sledwire.KindReply:
		default:
			c.close(fmt.Errorf("%w: a %v from a sled", sledwire.ErrMalformed, f.Kind))
			return
		}
		c.mu.Lock()
		ch := c.pending[f.ID]
		delete(c.pending, f.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- f // buffered: never blocks
		}
		// No waiter: the request's caller gave up on it.
	}
}

// keepalive pings the sled when nothing was sent for a period (the sled
// closes a connection quiet for longer), and closes the connection if
// nothing comes back within timeout of a ping.
func (c *sledWireConn) keepalive(period, timeout time.Duration) {
	defer close(c.kaDone)
	timer := time.NewTimer(period)
	defer timer.Stop()
	lastSent, lastRecv := c.sent.Load(), c.received.Load()
	pinged := false
	for seq := uint64(1); ; {
		select {
		case <-c.done:
			return
		case <-timer.C:
		}
		sent, recv := c.sent.Load(), c.received.Load()
		switch {
		case pinged && recv == lastRecv:
			c.close(fmt.Errorf("sled %s did not answer a ping within %v", c.addr, timeout))
			return
		case !pinged && sent == lastSent:
			if err := c.writer.Write(sledwire.Frame{Kind: sledwire.KindPing, ID: seq}); err != nil {
				c.close(err)
				return
			}
			seq++
			pinged = true
			lastRecv = recv
			timer.Reset(timeout)
		default:
			pinged = false
			lastSent, lastRecv = sent, recv
			timer.Reset(period)
		}
	}
}

// closedErr returns why the connection was closed, if it was, instead of
// what closing did to a read or write.
func (c *sledWireConn) closedErr(err error) error {
	select {
	case <-c.done:
		if c.cause != nil {
			return c.cause
		}
	default:
	}
	if err == nil {
		err = errors.New("framed shard connection closed")
	}
	return err
}

func (c *sledWireConn) close(err error) {
	c.closeOnce.Do(func() {
		if err == nil {
			err = errors.New("closed")
		}
		c.cause = fmt.Errorf("framed shard connection to %s: %w", c.addr, err)
		close(c.done)
		c.nc.Close()
		c.release()
	})
}
