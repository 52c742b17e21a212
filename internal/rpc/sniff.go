package rpc

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// PreambleBytes is how many first bytes of a connection SniffListener
// reads to tell its protocols apart: the length of every framed
// protocol's preamble.
const PreambleBytes = 8

// sniffTimeout bounds the wait for a new connection's first bytes. gRPC
// and the framed protocols' clients send theirs at once.
const sniffTimeout = 10 * time.Second

// http2Preface is the beginning of the first bytes every HTTP/2 (gRPC)
// client sends.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")[:PreambleBytes]

// SniffListener is a listener shared by gRPC and framed protocols, told
// apart by a connection's first PreambleBytes bytes: route hands a framed
// protocol's connection to its server; gRPC serves the SniffListener as
// its listener and gets only the HTTP/2 connections.
type SniffListener struct {
	net.Listener
	route func(first []byte) func(net.Conn)
	what  string // the protocols, for the log
	log   *slog.Logger

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

// NewSniffListener serves l. route returns the function that serves a
// connection whose first bytes (its preamble, already read) are first, or
// nil if they are no framed protocol's; the function owns the connection.
// what names the protocols for the log.
func NewSniffListener(l net.Listener, route func(first []byte) func(net.Conn), what string, log *slog.Logger) *SniffListener {
	w := &SniffListener{
		Listener:   l,
		route:      route,
		what:       what,
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
func (w *SniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-w.grpcConns:
		return c, nil
	case <-w.acceptDone:
		return nil, w.acceptErr
	}
}

// Close closes the listener and the connections not yet sniffed, and waits
// for its goroutines. Connections already handed over are their owners'.
func (w *SniffListener) Close() error {
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

func (w *SniffListener) acceptLoop() {
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
func (w *SniffListener) sniff(c net.Conn) {
	var first [PreambleBytes]byte
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
	if serve := w.route(first[:]); serve != nil {
		// The protocol's server owns it from here (and waits for it on
		// close).
		w.wg.Done()
		serve(c)
		return
	}
	defer w.wg.Done()
	if !bytes.Equal(first[:], http2Preface) {
		w.log.Debug("closing a connection that speaks neither gRPC nor "+w.what, "remote", c.RemoteAddr(), "first_bytes", fmt.Sprintf("%q", first[:]))
		c.Close()
		return
	}
	// gRPC sets this on the connections it accepts itself, but only on a
	// *net.TCPConn, which the wrapper is not.
	if err := SetTCPUserTimeout(c, KeepaliveTimeout); err != nil {
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
