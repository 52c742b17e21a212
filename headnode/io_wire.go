package headnode

// The framed block protocol (internal/blockwire) beside gRPC.
//
// Agents send their block I/O over the framed protocol, which costs a
// fraction of gRPC's CPU per request; gRPC still serves everything else,
// and block I/O from agents that ask for it (or predate the protocol). Both
// share each of the head node's listening addresses, so nothing about the
// node's addresses, networks or health checks changes:
//
//   - wireListener accepts, and each connection's own goroutine reads its
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
	"bytes"
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
	// sniffTimeout bounds the wait for a new connection's first bytes.
	// Both gRPC and blockwire clients send theirs at once.
	sniffTimeout = 10 * time.Second
	// wireReadBufferBytes is a framed connection's read buffer: many
	// small requests arrive in one read.
	wireReadBufferBytes = 64 << 10
	// wireIdleTicks is how many keepalive periods a framed connection
	// may stay silent (a live client pings at least once a period).
	wireIdleTicks = 3
)

// http2Preface is the beginning of the first bytes every HTTP/2 (gRPC)
// client sends.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")[:blockwire.PreambleBytes]

// wireListener is one of the head node's listeners, shared by gRPC and the
// framed protocol. gRPC serves it as its listener and gets only HTTP/2
// connections.
type wireListener struct {
	net.Listener
	wire *wireServer
	repl *replWireServer // nil: framed replication is not served
	log  *slog.Logger

	grpcConns  chan net.Conn
	done       chan struct{} // closed by Close
	acceptDone chan struct{} // closed when the accept loop ends, acceptErr set
	acceptErr  error
	closeOnce  sync.Once
	closeErr   error
	wg         sync.WaitGroup // the accept loop and the sniffing goroutines

	mu struct {
		sync.Mutex
		sniffing map[net.Conn]struct{}
		closed   bool
	}
}

func newWireListener(l net.Listener, wire *wireServer, repl *replWireServer, log *slog.Logger) *wireListener {
	w := &wireListener{
		Listener:   l,
		wire:       wire,
		repl:       repl,
		log:        log,
		grpcConns:  make(chan net.Conn),
		done:       make(chan struct{}),
		acceptDone: make(chan struct{}),
	}
	w.mu.sniffing = map[net.Conn]struct{}{}
	w.wg.Add(1)
	go w.acceptLoop()
	return w
}

// Accept returns the next connection that speaks HTTP/2, or the error that
// ended the listener.
func (w *wireListener) Accept() (net.Conn, error) {
	select {
	case c := <-w.grpcConns:
		return c, nil
	case <-w.acceptDone:
		return nil, w.acceptErr
	}
}

// Close closes the listener and the connections not yet sniffed, and waits
// for its goroutines. Connections already handed over are their owners'.
func (w *wireListener) Close() error {
	w.closeOnce.Do(func() {
		close(w.done)
		w.closeErr = w.Listener.Close()
		w.mu.Lock()
		w.mu.closed = true
		for c := range w.mu.sniffing {
			c.Close()
		}
		w.mu.Unlock()
		w.wg.Wait()
	})
	return w.closeErr
}

func (w *wireListener) acceptLoop() {
	defer w.wg.Done()
	var backoff time.Duration
	for {
		c, err := w.Listener.Accept()
		if err != nil {
			// As grpc.Server.Serve does: wait out a temporary error (out
			// of file descriptors), end on any other.
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				w.log.Warn("accept", "addr", w.Addr(), "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-w.done:
				}
			}
			w.acceptErr = err
			close(w.acceptDone)
			return
		}
		backoff = 0
		w.mu.Lock()
		if w.mu.closed {
			w.mu.Unlock()
			c.Close()
			continue
		}
		w.mu.sniffing[c] = struct{}{}
		w.wg.Add(1)
		w.mu.Unlock()
		go w.sniff(c)
	}
}

// sniff reads a connection's first bytes and hands it to whoever speaks
// them.
func (w *wireListener) sniff(c net.Conn) {
	var first [blockwire.PreambleBytes]byte
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	_, err := io.ReadFull(c, first[:])
	c.SetReadDeadline(time.Time{})
	w.mu.Lock()
	delete(w.mu.sniffing, c)
	closed := w.mu.closed
	w.mu.Unlock()
	if err != nil || closed {
		w.wg.Done()
		c.Close()
		return
	}
	if version, err := blockwire.ParsePreamble(first[:]); err == nil {
		// The wire server owns it from here (and waits for it on close).
		w.wg.Done()
		w.wire.serveConn(c, version)
		return
	}
	if version, err := replwire.ParsePreamble(first[:]); err == nil && w.repl != nil {
		// A primary's replication session (replication_wire.go).
		w.wg.Done()
		w.repl.serveConn(c, version)
		return
	}
	defer w.wg.Done()
	if !bytes.Equal(first[:], http2Preface) {
		w.log.Debug("closing a connection that speaks neither gRPC nor the framed block protocol", "remote", c.RemoteAddr(), "first_bytes", fmt.Sprintf("%q", first[:]))
		c.Close()
		return
	}
	// gRPC sets this on the connections it accepts itself, but only on a
	// *net.TCPConn, which the wrapper is not.
	if err := rpc.SetTCPUserTimeout(c, rpc.KeepaliveTimeout); err != nil {
		w.log.Debug("gRPC connection", "remote", c.RemoteAddr(), "err", err)
	}
	select {
	case w.grpcConns <- &prefixConn{Conn: c, prefix: first[:]}:
	case <-w.done:
		c.Close()
	}
}

// prefixConn is a connection whose first bytes were read already: it
// returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
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
