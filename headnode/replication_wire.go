package headnode

// Replication over the framed protocol (internal/replwire) beside gRPC.
//
// A primary opens its session to a secondary over a framed connection on
// the network path gRPC would take to that node (rpc.Conn.PreferredPath,
// so the paths' health checks still choose it, and a path found down ends
// the connection). The secondary's listener tells the protocol by its
// first bytes, as it does the agents' (io_wire.go), and serves the session
// with the same code as a gRPC stream (replicationServer.replicate): the
// same fencing, checks and replies. A secondary that answers with
// anything but the protocol's preamble (one of an older build closes the
// connection) gets its sessions over gRPC for a while, then is asked
// again.
//
// Liveness: the primary pings when nothing is outstanding and the
// connection has been quiet for a keepalive period, and closes it when no
// pong comes within the keepalive timeout; while replies are outstanding,
// each batch's own deadline (the replication timeout) bounds the wait.
// The secondary closes a connection on which it waited wireIdleTicks
// periods for a frame. TCP_USER_TIMEOUT drops a peer that stops
// acknowledging, as on every connection of the rack.

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

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/bufpool"
	"github.com/ballast-storage/ballast/internal/replwire"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The framed protocol's bound on a message is gRPC's (this does not
// compile if they differ).
const _ = uint(replwire.MaxPayloadBytes-rpc.MaxMessageBytes) + uint(rpc.MaxMessageBytes-replwire.MaxPayloadBytes)

const (
	// replReadBufferBytes is a framed session's read buffer.
	replReadBufferBytes = 256 << 10
	// noReplWireRetry is how long a secondary that does not speak the
	// framed protocol gets its sessions over gRPC before it is asked
	// again (it may have been upgraded).
	noReplWireRetry = time.Minute
)

// errNoReplWire: the secondary does not speak the framed protocol.
var errNoReplWire = errors.New("the secondary does not speak framed replication")

// replWireServer serves replication sessions over framed connections.
type replWireServer struct {
	repl *replicationServer
	log  *slog.Logger
	// tick is the keepalive period (rpc.KeepaliveTime; tests shorten it).
	tick  time.Duration
	conns connSet
}

func newReplWireServer(repl *replicationServer, log *slog.Logger) *replWireServer {
	return &replWireServer{repl: repl, log: log, tick: rpc.KeepaliveTime}
}

// close closes every connection, ending their sessions, and refuses new
// ones; wait waits for the sessions to end.
func (s *replWireServer) close() { s.conns.close() }

func (s *replWireServer) wait() { s.conns.wait() }

// sessions returns how many framed connections (sessions) are open.
func (s *replWireServer) sessions() int { return s.conns.len() }

// serveConn serves one connection whose preamble (of version) was read:
// one session, until it ends.
func (s *replWireServer) serveConn(nc net.Conn, version uint16) {
	if !s.conns.add(nc) {
		return
	}
	defer s.conns.done(nc)
	defer nc.Close()
	if !acceptFramed(nc, replwire.AppendPreamble(nil), version, replwire.Version, s.log, "framed replication") {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &framedReplStream{
		ctx:    ctx,
		nc:     nc,
		reader: replwire.NewReader(nc, replReadBufferBytes),
		writer: replwire.NewWriter(nc),
		idle:   time.Duration(wireIdleTicks) * s.tick,
	}
	err := s.repl.replicate(st)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("framed replication session ended", "remote", nc.RemoteAddr(), "err", err)
	}
}

// framedReplStream is a framed connection as the secondary's session
// sees it. Its context ends with the connection (when Recv fails).
type framedReplStream struct {
	ctx    context.Context
	nc     net.Conn
	reader *replwire.Reader
	writer *replwire.Writer
	// idle bounds each wait for the next frame: the primary pings a
	// quiet connection once a keepalive period.
	idle time.Duration

	sendMu  sync.Mutex
	sendBuf []byte // a reply's encoding, reused: the writer does not keep it
}

func (s *framedReplStream) Context() context.Context { return s.ctx }

func (s *framedReplStream) Recv() (*ballastpb.ReplicateRequest, error) {
	for {
		s.nc.SetReadDeadline(time.Now().Add(s.idle))
		f, err := s.reader.Next()
		if err != nil {
			s.nc.Close() // Send fails too from now on
			return nil, fmt.Errorf("framed replication: %w", err)
		}
		switch f.Kind {
		case replwire.KindPing:
			if err := s.writer.Pong(f.ID); err != nil {
				s.nc.Close()
				return nil, fmt.Errorf("framed replication: pong: %w", err)
			}
			continue
		case replwire.KindMessage:
		default:
			s.nc.Close()
			return nil, fmt.Errorf("%w: a %v from a primary", replwire.ErrMalformed, f.Kind)
		}
		req := &ballastpb.ReplicateRequest{}
		if err := proto.Unmarshal(f.Payload, req); err != nil {
			s.nc.Close()
			return nil, fmt.Errorf("framed replication: a request that does not decode: %w", err)
		}
		return req, nil
	}
}

func (s *framedReplStream) Send(r *ballastpb.ReplicateReply) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	b, err := proto.MarshalOptions{}.MarshalAppend(s.sendBuf[:0], r)
	if err != nil {
		return fmt.Errorf("framed replication: encode reply: %w", err)
	}
	if cap(b) <= 64<<10 {
		s.sendBuf = b
	}
	if err := s.writer.Message(b); err != nil {
		s.nc.Close()
		return fmt.Errorf("framed replication: send reply: %w", err)
	}
	return nil
}

// framedLink is a primary's session with its secondary over a framed
// connection.
type framedLink struct {
	replyQueue
	nc      net.Conn
	addr    string
	writer  *replwire.Writer
	release func() // of the path binding
	done    chan struct{}
	// outstanding counts requests sent whose replies were not read; sent
	// and received count frames, for the keepalive.
	outstanding    atomic.Int64
	sent, received atomic.Uint64

	closeOnce sync.Once
	cause     error // why the link was closed, set before done closes
}

// dialFramedLink opens a framed connection to the secondary over the path
// gRPC would take to it and exchanges preambles. It fails with an error
// wrapping errNoReplWire if the secondary answers with anything but this
// version's preamble.
func dialFramedLink(ctx context.Context, conn *rpc.Conn) (*framedLink, error) {
	addr, bound, release := conn.PreferredPath(context.Background())
	return dialFramedAddr(ctx, addr, bound, release, rpc.KeepaliveTime, rpc.KeepaliveTimeout)
}

// dialFramedAddr opens a framed link to addr, closed when bound ends;
// release is called once the link is closed. It pings a quiet connection
// every period and gives a pong timeout.
func dialFramedAddr(ctx context.Context, addr string, bound context.Context, release func(), period, timeout time.Duration) (*framedLink, error) {
	nc, err := dialReplPreamble(ctx, addr)
	if err != nil {
		release()
		return nil, err
	}
	l := &framedLink{
		replyQueue: newReplyQueue(),
		nc:         nc,
		addr:       addr,
		writer:     replwire.NewWriter(nc),
		release:    release,
		done:       make(chan struct{}),
	}
	// A path found down ends the connection (then the binding ends too,
	// and this does nothing).
	context.AfterFunc(bound, func() { l.close(context.Cause(bound)) })
	go l.readReplies()
	go l.keepalive(period, timeout)
	return l, nil
}

// dialReplPreamble connects to addr and exchanges preambles.
func dialReplPreamble(ctx context.Context, addr string) (net.Conn, error) {
	nc, answer, err := rpc.DialPreamble(ctx, addr, replwire.AppendPreamble(nil), replwire.PreambleBytes)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// Closed unanswered: a head node that does not know the protocol.
		err = fmt.Errorf("%w: it closed the connection", errNoReplWire)
	}
	if err == nil {
		var version uint16
		version, err = replwire.ParsePreamble(answer)
		switch {
		case err != nil:
			err = fmt.Errorf("%w: %w", errNoReplWire, err)
		case version != replwire.Version:
			err = fmt.Errorf("%w: it speaks version %d, this node %d", errNoReplWire, version, replwire.Version)
		}
		if err != nil {
			nc.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("framed replication connection to %s: %w", addr, err)
	}
	return nc, nil
}

func (l *framedLink) Hello(ctx context.Context, hello *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	if err := l.Start(ctx, hello); err != nil {
		return nil, err
	}
	return l.replyQueue.wait(ctx)
}

func (l *framedLink) Send(ctx context.Context, req *ballastpb.ReplicateRequest) (uint64, error) {
	if err := l.Start(ctx, req); err != nil {
		return 0, err
	}
	return l.Wait(ctx)
}

func (l *framedLink) Start(ctx context.Context, req *ballastpb.ReplicateRequest) error {
	buf := bufpool.Get(max(proto.Size(req), 1))
	defer bufpool.Put(buf)
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*buf)[:0], req)
	if err != nil {
		return fmt.Errorf("encode replication request: %w", err)
	}
	// A write can block when the secondary stops reading; ending the
	// connection at the deadline unblocks it.
	stop := context.AfterFunc(ctx, func() { l.close(fmt.Errorf("sending to the secondary: %w", context.Cause(ctx))) })
	defer stop()
	l.outstanding.Add(1)
	if err := l.writer.Message(b); err != nil {
		l.close(err)
		return fmt.Errorf("send to secondary: %w", l.closedErr(err))
	}
	l.sent.Add(1)
	return nil
}

func (l *framedLink) Wait(ctx context.Context) (uint64, error) {
	r, err := l.replyQueue.wait(ctx)
	if err != nil {
		return 0, err
	}
	return r.LastSeq, nil
}

func (l *framedLink) Close() { l.close(nil) }

// readReplies reads the secondary's frames: pongs for the keepalive,
// replies in order for Wait, until the connection ends; its error is the
// last thing Wait gets.
func (l *framedLink) readReplies() {
	rd := replwire.NewReader(l.nc, replReadBufferBytes)
	for {
		r, err := l.next(rd)
		if err == nil {
			err = checkedReply(r)
		}
		if err != nil {
			l.close(err)
			l.fail(l.closedErr(err))
			return
		}
		select {
		case l.replies <- replyOrErr{r, nil}:
		case <-l.done:
			l.fail(l.closedErr(nil))
			return
		}
	}
}

// next returns the next reply, answering nothing (only the primary pings).
func (l *framedLink) next(rd *replwire.Reader) (*ballastpb.ReplicateReply, error) {
	for {
		f, err := rd.Next()
		if err != nil {
			return nil, err
		}
		l.received.Add(1)
		switch f.Kind {
		case replwire.KindPong:
			continue
		case replwire.KindMessage:
		default:
			return nil, fmt.Errorf("%w: a %v from a secondary", replwire.ErrMalformed, f.Kind)
		}
		l.outstanding.Add(-1)
		r := &ballastpb.ReplicateReply{}
		if err := proto.Unmarshal(f.Payload, r); err != nil {
			return nil, fmt.Errorf("%w: a reply that does not decode: %v", replwire.ErrMalformed, err)
		}
		return r, nil
	}
}

// keepalive pings the secondary when nothing is outstanding and nothing
// came or went for a period, and closes the link if no pong comes within
// timeout.
func (l *framedLink) keepalive(period, timeout time.Duration) {
	timer := time.NewTimer(period)
	defer timer.Stop()
	lastSent, lastRecv := l.sent.Load(), l.received.Load()
	pinged := false
	for seq := uint64(1); ; {
		select {
		case <-l.done:
			return
		case <-timer.C:
		}
		sent, recv := l.sent.Load(), l.received.Load()
		switch {
		case pinged && recv == lastRecv:
			l.close(fmt.Errorf("secondary %s did not answer a ping within %v", l.addr, timeout))
			return
		case !pinged && sent == lastSent && recv == lastRecv && l.outstanding.Load() == 0:
			if err := l.writer.Ping(seq); err != nil {
				l.close(err)
				return
			}
			seq++
			pinged = true
			timer.Reset(timeout)
		default:
			pinged = false
			lastSent, lastRecv = sent, recv
			timer.Reset(period)
		}
	}
}

// closedErr returns why the link was closed, if it was, instead of what
// closing did to a read or write.
func (l *framedLink) closedErr(err error) error {
	select {
	case <-l.done:
		if l.cause != nil {
			return l.cause
		}
	default:
	}
	return err
}

func (l *framedLink) close(err error) {
	l.closeOnce.Do(func() {
		if err == nil {
			err = errors.New("framed replication connection closed")
		}
		l.cause = fmt.Errorf("framed replication connection to %s: %w", l.addr, err)
		close(l.done)
		l.nc.Close()
		l.release()
	})
}
