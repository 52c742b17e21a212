package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/internal/inflight"
)

// Defaults for a Server's zero fields.
const (
	DefaultHandshakeTimeout    = 30 * time.Second
	DefaultMaxOptions          = 1024
	DefaultMaxOptionBytes      = 64 << 10
	DefaultMaxRequestsInFlight = 128
	DefaultMaxBytesInFlight    = 64 << 20
	DefaultMaxConnections      = 256

	// maxRefusing bounds the connections being refused at once (each
	// gets a short handshake that says why); beyond it, the excess is
	// closed at once.
	maxRefusing = 16
	// refuseTimeout bounds the handshake of a refused connection.
	refuseTimeout = 5 * time.Second
)

// Server serves exports over NBD. Set its fields before calling Serve and
// do not change them after. The zero value of every field but Exports
// means its default.
type Server struct {
	// Exports resolves export names. Required.
	Exports Exports
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout bounds a connection's whole negotiation, from
	// accept to the start of transmission (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// MaxOptions bounds the options one connection may send
	// (DefaultMaxOptions); one more drops the connection.
	MaxOptions int
	// MaxOptionBytes bounds one option's data (DefaultMaxOptionBytes, at
	// most 16 MiB). Longer data is skipped and answered ERR_TOO_BIG.
	MaxOptionBytes int
	// MaxRequestsInFlight bounds the requests of one connection between
	// being read and their reply being written (DefaultMaxRequestsInFlight).
	MaxRequestsInFlight int
	// MaxBytesInFlight bounds the READ and WRITE payload bytes of those
	// requests (DefaultMaxBytesInFlight). A single larger request is
	// admitted alone.
	MaxBytesInFlight int
	// MaxConnections bounds the connections open at once, in handshake or
	// transmission (DefaultMaxConnections). One more is refused during
	// its handshake with NBD_REP_ERR_POLICY and a message, and counted
	// in Stats.
	MaxConnections int
	// Shared, if set, bounds the requests and payload bytes in flight of
	// every connection together (and whatever else shares it: the agent
	// shares one with its NVMe/TCP target). Its byte bound must be at
	// least MaxBlockSize.
	Shared *inflight.Limit

	refused  atomic.Uint64
	lastWarn atomic.Int64 // unix nanoseconds of the last refusal logged

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*serverConn]struct{}
		admitted  int // connections served (in handshake or transmission)
		refusing  int // connections being refused
	}
	// wg counts every goroutine the server starts: Serve loops and
	// connections (each of which waits for its own workers and writer).
	wg sync.WaitGroup
}

// serverConn is a live connection, as Close sees it.
type serverConn struct {
	cancel context.CancelFunc // closes the socket and cancels backend calls
}

// config is a Server's fields with defaults applied.
type config struct {
	log              *slog.Logger
	handshakeTimeout time.Duration
	maxOptions       int
	maxOptionBytes   int
	maxRequests      int
	maxBytes         int
	maxConns         int
}

func (s *Server) config() (config, error) {
	c := config{
		log:              s.Logger,
		handshakeTimeout: s.HandshakeTimeout,
		maxOptions:       s.MaxOptions,
		maxOptionBytes:   s.MaxOptionBytes,
		maxRequests:      s.MaxRequestsInFlight,
		maxBytes:         s.MaxBytesInFlight,
		maxConns:         s.MaxConnections,
	}
	switch {
	case s.Exports == nil:
		return c, errors.New("nbd: Server.Exports is nil")
	case c.handshakeTimeout < 0, c.maxOptions < 0, c.maxOptionBytes < 0, c.maxRequests < 0, c.maxBytes < 0, c.maxConns < 0:
		return c, errors.New("nbd: negative Server limit")
	case c.maxOptionBytes > maxDiscardOptionBytes:
		return c, fmt.Errorf("nbd: Server.MaxOptionBytes %d above %d", c.maxOptionBytes, maxDiscardOptionBytes)
	case s.Shared != nil && s.Shared.Stats().MaxBytes > 0 && s.Shared.Stats().MaxBytes < MaxBlockSize:
		return c, fmt.Errorf("nbd: Server.Shared bounds %d bytes, below one request of %d", s.Shared.Stats().MaxBytes, MaxBlockSize)
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.handshakeTimeout == 0 {
		c.handshakeTimeout = DefaultHandshakeTimeout
	}
	if c.maxOptions == 0 {
		c.maxOptions = DefaultMaxOptions
	}
	if c.maxOptionBytes == 0 {
		c.maxOptionBytes = DefaultMaxOptionBytes
	}
	if c.maxRequests == 0 {
		c.maxRequests = DefaultMaxRequestsInFlight
	}
	if c.maxBytes == 0 {
		c.maxBytes = DefaultMaxBytesInFlight
	}
	if c.maxConns == 0 {
		c.maxConns = DefaultMaxConnections
	}
	return c, nil
}

// Serve accepts connections on l and serves them until ctx is done or
// Close is called; it closes l. When it returns, every connection it
// accepted is closed and its goroutines have ended. It returns nil when
// ctx ended it, ErrServerClosed after Close, or the error that stopped
// accepting.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	cfg, err := s.config()
	if err != nil {
		_ = l.Close()
		return err
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	if s.mu.listeners == nil {
		s.mu.listeners = make(map[net.Listener]struct{})
		s.mu.conns = make(map[*serverConn]struct{})
	}
	s.mu.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	var conns sync.WaitGroup
	defer func() {
		stop()
		cancel() // closes this Serve's connections
		_ = l.Close()
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
		conns.Wait()
	}()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if s.closed() {
				return ErrServerClosed
			}
			if !temporary(err) {
				return fmt.Errorf("nbd: accept: %w", err)
			}
			// Out of file descriptors, say: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			cfg.log.Warn("NBD accept failed; retrying", "err", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		delay = 0
		if !s.startConn(ctx, nc, cfg, &conns) {
			_ = nc.Close()
			return ErrServerClosed
		}
	}
}

func temporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closed
}

// startConn starts a connection's goroutine, unless the server is closed:
// one that serves it, or, past MaxConnections, one that refuses it.
func (s *Server) startConn(ctx context.Context, nc net.Conn, cfg config, conns *sync.WaitGroup) bool {
	ctx, cancel := context.WithCancel(ctx)
	sc := &serverConn{cancel: cancel}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		cancel()
		return false
	}
	refuse := s.mu.admitted >= cfg.maxConns
	if refuse && s.mu.refusing >= maxRefusing {
		// A flood: no handshake for this one.
		s.mu.Unlock()
		cancel()
		s.noteRefused(cfg, nc, "closed without a handshake")
		_ = nc.Close()
		return true
	}
	if refuse {
		s.mu.refusing++
	} else {
		s.mu.admitted++
	}
	s.mu.conns[sc] = struct{}{}
	s.wg.Add(1)
	conns.Add(1)
	s.mu.Unlock()
	go func() {
		defer func() {
			cancel()
			s.mu.Lock()
			delete(s.mu.conns, sc)
			if refuse {
				s.mu.refusing--
			} else {
				s.mu.admitted--
			}
			s.mu.Unlock()
			conns.Done()
			s.wg.Done()
		}()
		if refuse {
			s.noteRefused(cfg, nc, "refused in the handshake")
			s.refuseConn(ctx, nc, cfg)
			return
		}
		s.serveConn(ctx, cancel, nc, cfg)
	}()
	return true
}

// noteRefused counts a refused connection and logs it, at most once a
// second so that a client retrying in a loop does not flood the log.
func (s *Server) noteRefused(cfg config, nc net.Conn, how string) {
	total := s.refused.Add(1)
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	if now-last < int64(time.Second) || !s.lastWarn.CompareAndSwap(last, now) {
		return
	}
	remote := ""
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	cfg.log.Warn("NBD connection refused: too many connections", "remote", remote,
		"limit", cfg.maxConns, "how", how, "refused_total", total)
}

// refuseConn answers a connection over MaxConnections: a handshake in
// which every option is refused with the reason, under a short deadline.
func (s *Server) refuseConn(ctx context.Context, nc net.Conn, cfg config) {
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	defer nc.Close()
	deadline := time.Now().Add(min(cfg.handshakeTimeout, refuseTimeout))
	_ = nc.SetDeadline(deadline)
	br := bufio.NewReaderSize(nc, 4096)
	bw := bufio.NewWriterSize(nc, 4096)
	reason := fmt.Sprintf("too many NBD connections to this server (limit %d); try again later", cfg.maxConns)
	hctx, hcancel := context.WithDeadline(ctx, deadline)
	defer hcancel()
	_, err := negotiate(hctx, br, bw, s.Exports, cfg, cfg.log, reason)
	cfg.log.Debug("NBD refused connection closed", "err", err)
}

// Stats are a server's counters.
type Stats struct {
	// Connections is how many connections are being served now.
	Connections int
	// Refused counts the connections refused for MaxConnections.
	Refused uint64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Connections: s.mu.admitted, Refused: s.refused.Load()}
}

// Close stops every Serve, closes every connection (requests in flight
// get no reply) and waits for every goroutine the server started. Serve
// called after Close returns ErrServerClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	s.mu.closed = true
	for l := range s.mu.listeners {
		_ = l.Close()
	}
	for c := range s.mu.conns {
		c.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// serveConn runs one connection: the handshake under its deadline, then
// transmission. Canceling ctx (cancel is its CancelFunc) closes nc.
func (s *Server) serveConn(ctx context.Context, cancel context.CancelFunc, nc net.Conn, cfg config) {
	log := cfg.log
	if a := nc.RemoteAddr(); a != nil {
		log = log.With("remote", a.String())
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}

	br := bufio.NewReaderSize(nc, readBufferSize)
	bw := bufio.NewWriterSize(nc, 4096)
	deadline := time.Now().Add(cfg.handshakeTimeout)
	_ = nc.SetDeadline(deadline)
	hctx, hcancel := context.WithDeadline(ctx, deadline)
	sess, err := negotiate(hctx, br, bw, s.Exports, cfg, log, "")
	hcancel()
	if err != nil {
		logHandshakeError(ctx, log, err)
		return
	}
	defer closeBackend(sess.backend, log)
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return
	}
	log = log.With("export", sess.name)
	log.Debug("NBD transmission started", "size", sess.state.Size,
		"structured", sess.state.Structured, "block_status", sess.state.MetaContext)
	c := &conn{
		nc:      nc,
		br:      br,
		log:     log,
		backend: sess.backend,
		st:      sess.state,
		ctx:     ctx,
		cancel:  cancel,
		budget:  inflight.New(cfg.maxRequests, int64(cfg.maxBytes)),
		shared:  s.Shared,
	}
	c.serve()
}

func logHandshakeError(ctx context.Context, log *slog.Logger, err error) {
	switch {
	case errors.Is(err, errAborted):
		log.Debug("NBD client ended the negotiation")
	case ctx.Err() != nil:
		log.Debug("NBD handshake ended by the server", "err", err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		log.Info("NBD handshake timed out", "err", err)
	case isEOF(err):
		log.Debug("NBD client left during the handshake", "err", err)
	default:
		log.Warn("NBD handshake failed; connection dropped", "reason", err)
	}
}
