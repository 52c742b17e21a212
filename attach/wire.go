package attach

// Block I/O to primaries over the framed protocol (internal/blockwire), or
// over gRPC. Either is an ioTransport under the same ioStream, so requests
// in flight, retries, redirects and reconnection (client.go) do not depend
// on the protocol. A framed connection behaves as the gRPC stream it
// replaces:
//
//   - it goes to the address of the path gRPC would take
//     (rpc.Conn.PreferredPath) and is cut when that path is declared down
//     while another is up, so the next request reconnects over the other;
//   - it pings when it has heard nothing, or said nothing, for
//     rpc.KeepaliveTime, and gives up on a head node that does not answer
//     within rpc.KeepaliveTimeout (gRPC's keepalive; a frozen head node is
//     left within seconds, not at the request timeout), and the pings tell
//     the head node the agent is alive (headnode/io_wire.go). Unlike
//     gRPC's, a ping waits behind requests the head node has not yet
//     read: a connection at the head node's bound (128 requests or 64 MiB
//     in flight) whose requests all take longer than the keepalive (a
//     secondary that stopped answering) is left too, and its requests are
//     sent again on a new one;
//   - TCP_USER_TIMEOUT drops a head node that stops acknowledging.
//
// A head node that answers the preamble with other bytes (it predates the
// framed protocol: a gRPC server sends HTTP/2 settings) or with another
// version gets gRPC instead, with a log line; it is asked again after
// wireReprobeInterval, so an upgraded node is used framed again.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// IOWire is the protocol of block I/O between the agent and primaries.
type IOWire string

// Protocols of block I/O.
const (
	// IOWireFramed is the framed binary protocol (internal/blockwire),
	// the default; a head node that does not speak it gets gRPC.
	IOWireFramed IOWire = "framed"
	// IOWireGRPC is the BlockIO gRPC stream.
	IOWireGRPC IOWire = "grpc"
)

// ParseIOWire parses a protocol's name ("" is IOWireFramed).
func ParseIOWire(s string) (IOWire, error) {
	switch w := IOWire(s); w {
	case "":
		return IOWireFramed, nil
	case IOWireFramed, IOWireGRPC:
		return w, nil
	}
	return "", fmt.Errorf("unknown block I/O protocol %q: want %q or %q", s, IOWireFramed, IOWireGRPC)
}

const (
	// wireReadBufferBytes is a framed connection's read buffer.
	wireReadBufferBytes = 64 << 10
	// wireReprobeInterval is how long a head node found to speak only
	// gRPC is believed to.
	wireReprobeInterval = time.Minute
)

// wireTiming is a framed connection's liveness timing: rpc's for gRPC's
// keepalive, unless a test shortens it.
type wireTiming struct{ time, timeout time.Duration }

func (c *Client) keepaliveTiming() wireTiming {
	if c.wireKeepalive.time == 0 {
		return wireTiming{rpc.KeepaliveTime, rpc.KeepaliveTimeout}
	}
	return c.wireKeepalive
}

// errNoFramedProtocol is returned when a head node does not answer the
// preamble with its own.
var errNoFramedProtocol = errors.New("the head node does not speak the framed block protocol")

// openTransport opens a stream of block requests to the head node behind
// conn (addrs): framed unless the client is told otherwise or the node
// does not speak it.
func (c *Client) openTransport(ctx context.Context, conn *rpc.Conn, addrs []string) (ioTransport, error) {
	if w, _ := ParseIOWire(string(c.IOWire)); w == IOWireFramed && !c.grpcOnlyNow(addrs) {
		t, err := dialFramed(ctx, conn, c.keepaliveTiming())
		if err == nil {
			c.noteFramed(addrs)
			return t, nil
		}
		if !errors.Is(err, errNoFramedProtocol) {
			return nil, err
		}
		c.noteGRPCOnly(addrs, err)
	}
	return openGRPC(conn)
}

// grpcOnlyNow says whether the head node at addrs was found to speak only
// gRPC less than wireReprobeInterval ago.
func (c *Client) grpcOnlyNow(addrs []string) bool {
	c.grpcOnly.Lock()
	defer c.grpcOnly.Unlock()
	since, ok := c.grpcOnly.since[strings.Join(addrs, ",")]
	return ok && time.Since(since) < wireReprobeInterval
}

func (c *Client) noteGRPCOnly(addrs []string, err error) {
	key := strings.Join(addrs, ",")
	c.grpcOnly.Lock()
	defer c.grpcOnly.Unlock()
	if _, known := c.grpcOnly.since[key]; !known {
		c.logger().Warn("head node does not speak the framed block protocol (an older version?): its block I/O falls back to gRPC", "addresses", addrs, "err", err)
	}
	if c.grpcOnly.since == nil {
		c.grpcOnly.since = map[string]time.Time{}
	}
	c.grpcOnly.since[key] = time.Now()
}

func (c *Client) noteFramed(addrs []string) {
	key := strings.Join(addrs, ",")
	c.grpcOnly.Lock()
	defer c.grpcOnly.Unlock()
	if _, known := c.grpcOnly.since[key]; known {
		delete(c.grpcOnly.since, key)
		c.logger().Info("head node speaks the framed block protocol now: its block I/O uses it", "addresses", addrs)
	}
}

// framedTransport is one framed connection to a primary.
type framedTransport struct {
	conn    net.Conn
	addr    string
	sender  *blockwire.Sender
	reader  *blockwire.Reader
	release func() // of the path binding
	timing  wireTiming
	done    chan struct{}
	// Frames sent and received, for the keepalive.
	sent, received atomic.Uint64

	closeOnce sync.Once
	cause     error // why the transport was closed, set before done closes
}

// dialFramed connects to the head node over the path gRPC would take and
// exchanges preambles. It returns an error wrapping errNoFramedProtocol
// if the node answers with anything but this version's preamble.
func dialFramed(ctx context.Context, conn *rpc.Conn, timing wireTiming) (*framedTransport, error) {
	addr, bound, release := conn.PreferredPath(context.Background())
	nc, err := dialPreamble(ctx, addr)
	if err != nil {
		release()
		return nil, err
	}
	t := &framedTransport{
		conn:    nc,
		addr:    addr,
		sender:  blockwire.NewSender(nc),
		reader:  blockwire.NewReader(nc, wireReadBufferBytes),
		release: release,
		timing:  timing,
		done:    make(chan struct{}),
	}
	// Released (by close), the binding ends too: this then does nothing.
	context.AfterFunc(bound, func() { t.close(context.Cause(bound)) })
	go t.keepalive()
	return t, nil
}

// dialPreamble connects to addr and exchanges preambles.
func dialPreamble(ctx context.Context, addr string) (net.Conn, error) {
	nc, answer, err := rpc.DialPreamble(ctx, addr, blockwire.AppendPreamble(nil), blockwire.PreambleBytes)
	if err == nil {
		var version uint16
		version, err = blockwire.ParsePreamble(answer)
		switch {
		case err != nil:
			err = fmt.Errorf("%w: %w", errNoFramedProtocol, err)
		case version != blockwire.Version:
			err = fmt.Errorf("%w: it speaks version %d, this agent %d", errNoFramedProtocol, version, blockwire.Version)
		}
		if err != nil {
			nc.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("framed block connection to %s: %w", addr, err)
	}
	return nc, nil
}

func (t *framedTransport) send(req *ballastpb.IORequest) error {
	f := blockwire.Frame{
		Kind:       blockwire.KindRequest,
		ID:         req.Id,
		Op:         blockwire.Op(req.Op),
		VolumeID:   req.VolumeId,
		Offset:     req.Offset,
		Length:     req.Length,
		FUA:        req.Fua,
		NoHole:     req.NoHole,
		Host:       req.Host,
		Generation: req.Generation,
		Client:     req.Client,
		WriteOp:    req.WriteOp,
		OldestOp:   req.OldestOp,
		Resend:     req.Resend,
	}
	var data []byte
	if req.Op == ballastpb.IOOp_IO_OP_WRITE {
		// Only a write carries data (the head node ignores any other's).
		data = req.Data
		f.DataLen = len(data)
	}
	if req.Op < 0 || req.Op > ballastpb.IOOp(blockwire.OpBlockStatus) {
		f.Op = 0 // refused as malformed, not sent as another op
	}
	if err := t.sender.Send(&f, data); err != nil {
		return t.closedErr(err)
	}
	t.sent.Add(1)
	return nil
}

func (t *framedTransport) recv() (*ballastpb.IOReply, error) {
	var f blockwire.Frame
	for {
		if err := t.reader.Next(&f); err != nil {
			return nil, t.closedErr(err)
		}
		t.received.Add(1)
		switch f.Kind {
		case blockwire.KindReply:
		case blockwire.KindPong:
			continue
		default:
			return nil, fmt.Errorf("%w: a %v from head node %s", blockwire.ErrMalformed, f.Kind, t.addr)
		}
		r := &ballastpb.IOReply{Id: f.ID, Status: ballastpb.IOStatus(f.Status), Error: f.Error}
		if f.DataLen > 0 {
			r.Data = make([]byte, f.DataLen)
			if err := t.reader.ReadData(r.Data); err != nil {
				return nil, t.closedErr(err)
			}
		}
		return r, nil
	}
}

// closedErr returns why the transport was closed, if it was, instead of
// what closing did to a read or write.
func (t *framedTransport) closedErr(err error) error {
	select {
	case <-t.done:
		if t.cause != nil {
			return t.cause
		}
	default:
	}
	return err
}

func (t *framedTransport) close(err error) {
	t.closeOnce.Do(func() {
		if err == nil {
			err = errors.New("framed block connection closed")
		}
		t.cause = fmt.Errorf("framed block connection to %s: %w", t.addr, err)
		close(t.done)
		t.conn.Close()
		t.release()
	})
}

// keepalive pings the head node when the connection has been quiet either
// way for timing.time, and closes the connection if nothing at all comes
// back within timing.timeout.
func (t *framedTransport) keepalive() {
	timer := time.NewTimer(t.timing.time)
	defer timer.Stop()
	lastSent, lastRecv := t.sent.Load(), t.received.Load()
	pinged := false
	for seq := uint64(1); ; {
		select {
		case <-t.done:
			return
		case <-timer.C:
		}
		sent, recv := t.sent.Load(), t.received.Load()
		switch {
		case pinged && recv == lastRecv:
			t.close(fmt.Errorf("head node %s did not answer a ping within %v", t.addr, t.timing.timeout))
			return
		case !pinged && (sent == lastSent || recv == lastRecv):
			if err := t.sender.Send(&blockwire.Frame{Kind: blockwire.KindPing, ID: seq}, nil); err != nil {
				t.close(err)
				return
			}
			seq++
			t.sent.Add(1)
			pinged = true
			lastSent, lastRecv = t.sent.Load(), recv
			timer.Reset(t.timing.timeout)
		default:
			pinged = false
			lastSent, lastRecv = sent, recv
			timer.Reset(t.timing.time)
		}
	}
}
