package headnode

// The framed block protocol (internal/blockwire) beside gRPC.
//
// Agents send their block I/O over the framed protocol, which costs a
// fraction of gRPC's CPU per request; gRPC still serves everything else,
// and block I/O from agents that ask for it (or predate the protocol). Both
// share each of the head node's listening addresses, so nothing about the
// node's addresses, networks or health checks changes:
//
//   - The listener (rpc.SniffListener) accepts, and each connection's own goroutine reads its
//     first 8 bytes (with a deadline, so that a client that sends nothing
//     holds up no one else): the blockwire preamble hands the connection
//     to wireServer in that goroutine; the start of HTTP/2's client preface
//     hands it to gRPC, through Accept, with the bytes put back; anything
//     else is closed.
//   - wireServer serves a connection as blockIOServer.IO serves a stream:
//     the same bounds (the connection's, and the node's shared with every
//     gRPC stream), the same handler (Node.serveIO), and so the same
//     fencing, statuses and errors. A request is admitted before its data
//     is read, so a full bound leaves the data in the socket and TCP's
//     flow control holds the agent back. An admitted request goes to an
//     idle worker of the connection, or to a new one when none is idle:
//     the workers are never more than the requests the connection had in
//     flight at once (so at most its bound), there is no queue in which a
//     request could wait behind a slow one, and a busy connection stops
//     starting goroutines, whose stacks would grow again on every request.
//     Measured with BenchmarkBlockIOTransport's server and client, that
//     cost 11-13% less CPU per 4 KiB write than a goroutine per request
//     (QD1 34 vs 38 µs, QD32 17.1 vs 19.8 µs, the whole loopback round
//     trip); a fixed pool of 128 workers a connection cost no less, and
//     holds their memory on every connection. A reply is written when its
//     request is done, in any order, by the Sender that never interleaves
//     frames.
//   - Liveness: the client pings when the connection is quiet either way
//     (attach/wire.go) and the server answers at once; a connection from
//     which nothing at all arrives for wireIdleTicks keepalive periods,
//     while the server is waiting to read, is closed, and one whose client
//     left while it waited for room (not reading) is ended too, as a gRPC
//     stream's context ends with its client. TCP_USER_TIMEOUT drops a peer
//     that stops acknowledging, as gRPC's connections do.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/bufpool"
	"github.com/ballast-storage/ballast/internal/inflight"
	"github.com/ballast-storage/ballast/internal/replwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The framed protocol's bound on data is the head node's largest request
// (this does not compile if they differ).
const _ = uint(blockwire.MaxDataBytes-maxRequestBytes) + uint(maxRequestBytes-blockwire.MaxDataBytes)

const (
	// wireReadBufferBytes is a framed connection's read buffer: many
	// small requests arrive in one read.
	wireReadBufferBytes = 64 << 10
	// wireIdleTicks is how many keepalive periods a framed connection
	// may stay silent (a live client pings at least once a period).
	wireIdleTicks = 3
)

// The head node's listeners are shared by gRPC and the framed protocols,
// which all open with a preamble of the same length.
const _ = uint(blockwire.PreambleBytes-rpc.PreambleBytes) + uint(rpc.PreambleBytes-blockwire.PreambleBytes) +
	uint(replwire.PreambleBytes-rpc.PreambleBytes) + uint(rpc.PreambleBytes-replwire.PreambleBytes)

// newWireListener serves one of the head node's listeners: the framed
// block protocol's connections go to wire, framed replication's to repl
// (nil: not served), HTTP/2's to gRPC through Accept.
func newWireListener(l net.Listener, wire *wireServer, repl *replWireServer, log *slog.Logger) *rpc.SniffListener {
	route := func(first []byte) func(net.Conn) {
		if version, err := blockwire.ParsePreamble(first); err == nil {
			return func(c net.Conn) { wire.serveConn(c, version) }
		}
		if version, err := replwire.ParsePreamble(first); err == nil && repl != nil {
			// A primary's replication session (replication_wire.go).
			return func(c net.Conn) { repl.serveConn(c, version) }
		}
		return nil
	}
	return rpc.NewSniffListener(l, route, "the framed protocols", log)
}

// wireServer serves the framed protocol's connections.
type wireServer struct {
	io     *blockIOServer // the bounds, counters and handler gRPC's IO uses
	log    *slog.Logger
	ctx    context.Context // every connection's requests' contexts derive from it
	cancel context.CancelFunc
	// tick is the watchdog's period (rpc.KeepaliveTime; tests shorten it).
	tick  time.Duration
	conns connSet // a connection's server waits for its requests
}

func newWireServer(io *blockIOServer, log *slog.Logger) *wireServer {
	w := &wireServer{io: io, log: log, tick: rpc.KeepaliveTime}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	return w
}

// close closes every connection and ends their requests' contexts, and
// refuses new connections; wait waits for their goroutines.
func (w *wireServer) close() {
	w.cancel()
	w.conns.close()
}

func (w *wireServer) wait() { w.conns.wait() }

// connections returns how many connections are open.
func (w *wireServer) connections() int { return w.conns.len() }

// serveConn serves one connection whose preamble (of version) was read,
// until it ends.
func (w *wireServer) serveConn(nc net.Conn, version uint16) {
	if !w.conns.add(nc) {
		return
	}
	defer w.conns.done(nc)
	defer nc.Close()
	if !acceptFramed(nc, blockwire.AppendPreamble(nil), version, blockwire.Version, w.log, "framed block") {
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	c := &wireConn{srv: w, nc: nc, ctx: ctx, cancel: cancel, send: blockwire.NewSender(nc), own: w.io.newStreamLimit(), work: make(chan wireJob)}
	stopWatch := make(chan struct{})
	go c.watch(stopWatch)
	err := c.readLoop()
	// As a gRPC stream's context ends with the stream: requests in flight
	// stop waiting, and their replies have nowhere to go.
	cancel()
	nc.Close()
	close(stopWatch)
	c.requests.Wait()
	close(c.work) // the idle workers end
	c.workers.Wait()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		w.log.Debug("framed block connection ended", "remote", nc.RemoteAddr(), "err", err)
	}
}

// wireConn is one framed connection being served.
type wireConn struct {
	srv      *wireServer
	nc       net.Conn
	ctx      context.Context // ends with the connection
	cancel   context.CancelFunc
	send     *blockwire.Sender
	own      *inflight.Limit // the connection's bound, as a gRPC stream's
	requests sync.WaitGroup  // admitted and not yet replied to
	workers  sync.WaitGroup

	// work hands admitted requests to idle workers (unbuffered: a send
	// succeeds only if one is waiting).
	work      chan wireJob
	frames    atomic.Uint64 // frames read, for the watchdog
	admitting atomic.Bool   // waiting for room, not for the client
}

// readLoop reads requests and starts each once admitted, until the client
// leaves or breaks the protocol.
func (c *wireConn) readLoop() error {
	rd := blockwire.NewReader(c.nc, wireReadBufferBytes)
	var f blockwire.Frame
	for {
		if err := rd.Next(&f); err != nil {
			return err
		}
		c.frames.Add(1)
		switch f.Kind {
		case blockwire.KindRequest:
		case blockwire.KindPing:
			if err := c.send.Send(&blockwire.Frame{Kind: blockwire.KindPong, ID: f.ID}, nil); err != nil {
				return err
			}
			continue
		default:
			return fmt.Errorf("%w: a %v from a client", blockwire.ErrMalformed, f.Kind)
		}
		req := &ballastpb.IORequest{
			Id:         f.ID,
			VolumeId:   f.VolumeID,
			Op:         ballastpb.IOOp(f.Op),
			Offset:     f.Offset,
			Length:     f.Length,
			Fua:        f.FUA,
			NoHole:     f.NoHole,
			Host:       f.Host,
			Generation: f.Generation,
			Client:     f.Client,
			WriteOp:    f.WriteOp,
			OldestOp:   f.OldestOp,
			Resend:     f.Resend,
		}
		cost := requestCost(req.Op, f.DataLen, req.Length)
		c.admitting.Store(true)
		err := c.srv.io.acquire(c.ctx, c.own, cost)
		c.admitting.Store(false)
		if err != nil {
			return err
		}
		var buf *[]byte
		if f.DataLen > 0 {
			buf = bufpool.Get(f.DataLen)
			req.Data = (*buf)[:f.DataLen]
			if err := rd.ReadData(req.Data); err != nil {
				bufpool.Put(buf)
				c.srv.io.release(c.own, cost)
				return err
			}
		}
		// To a worker that is idle, or to a new one if none is.
		c.requests.Add(1)
		j := wireJob{req, buf, cost}
		select {
		case c.work <- j:
		default:
			c.workers.Add(1)
			go c.worker(j)
		}
	}
}

// wireJob is an admitted request: its buffer (nil without data) and cost.
type wireJob struct {
	req  *ballastpb.IORequest
	buf  *[]byte
	cost int64
}

// worker serves j, then whatever requests it is handed, until the
// connection's work channel closes.
func (c *wireConn) worker(j wireJob) {
	defer c.workers.Done()
	for ok := true; ok; j, ok = <-c.work {
		c.serve(j.req, j.buf, j.cost)
	}
}

// serve runs one request and sends its reply.
func (c *wireConn) serve(req *ballastpb.IORequest, buf *[]byte, cost int64) {
	defer c.requests.Done()
	reply := c.srv.io.handle(c.ctx, req)
	bufpool.Put(buf) // serveIO has copied what it keeps of req.Data
	f := replyFrame(reply)
	err := c.send.Send(&f.Frame, f.data)
	// The reply is written, or copied to be, or lost with the connection.
	c.srv.io.release(c.own, cost)
	if err != nil {
		// The connection is broken: end it, so that the client retries.
		c.nc.Close()
	}
}

// wireReply is a reply frame and its data.
type wireReply struct {
	blockwire.Frame
	data []byte
}

// replyFrame encodes a reply of serveIO's. A status the wire does not know
// (the protobuf enum grew and blockwire did not) is sent as an I/O error
// rather than dropped.
func replyFrame(r *ballastpb.IOReply) wireReply {
	f := wireReply{Frame: blockwire.Frame{Kind: blockwire.KindReply, ID: r.Id}}
	switch {
	case r.Status == ballastpb.IOStatus_IO_STATUS_OK:
		f.DataLen, f.data = len(r.Data), r.Data
	case r.Status > 0 && r.Status <= ballastpb.IOStatus(blockwire.StatusFenced):
		f.Status, f.Error = blockwire.Status(r.Status), r.Error
	default:
		f.Status, f.Error = blockwire.StatusIOError, fmt.Sprintf("status %v: %s", r.Status, r.Error)
	}
	return f
}

// watch closes the connection when the client has sent nothing for
// wireIdleTicks periods while the server waited to read: a live client
// pings at least once a period (attach/client.go). Time spent waiting for
// room is the server's, not the client's silence; but a client that left
// meanwhile would go unnoticed by the reader, which is not reading, so
// the watchdog looks (as a gRPC stream's context ends when its client
// leaves, here within a period).
func (c *wireConn) watch(stop <-chan struct{}) {
	t := time.NewTicker(c.srv.tick)
	defer t.Stop()
	last, idle := c.frames.Load(), 0
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		n := c.frames.Load()
		if c.admitting.Load() {
			if peerGone(c.nc) {
				c.srv.log.Debug("the client of a framed block connection left while it waited for room", "remote", c.nc.RemoteAddr())
				c.cancel()
				c.nc.Close()
				return
			}
			last, idle = n, 0
			continue
		}
		if n != last {
			last, idle = n, 0
			continue
		}
		if idle++; idle >= wireIdleTicks {
			c.srv.log.Info("closing a silent framed block connection", "remote", c.nc.RemoteAddr(), "silent_for", time.Duration(idle)*c.srv.tick)
			c.nc.Close()
			return
		}
	}
}
