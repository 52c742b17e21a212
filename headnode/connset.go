package headnode

import (
	"log/slog"
	"net"
	"sync"

	"github.com/ballast-storage/ballast/internal/rpc"
)

// connSet is a framed server's open connections (block I/O, replication):
// closing it closes them all and refuses new ones.
type connSet struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// add registers a connection about to be served; false (and nc closed)
// once the set is closed. The caller calls done(nc) when it ends.
func (s *connSet) add(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[nc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *connSet) done(nc net.Conn) {
	s.mu.Lock()
	delete(s.conns, nc)
	s.mu.Unlock()
	s.wg.Done()
}

// close closes every connection and refuses new ones.
func (s *connSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

// wait waits until every connection's server has ended.
func (s *connSet) wait() { s.wg.Wait() }

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// acceptFramed answers a framed connection's preamble with this server's
// (preamble, of version ours) and says whether the client's version is
// ours: a client of another learns it from the answer and goes elsewhere
// (to gRPC). An accepted connection gets the TCP user timeout of every
// Ballast connection.
func acceptFramed(nc net.Conn, preamble []byte, version, ours uint16, log *slog.Logger, what string) bool {
	if _, err := nc.Write(preamble); err != nil {
		return false
	}
	if version != ours {
		log.Info("closing a "+what+" connection of an unknown version", "remote", nc.RemoteAddr(), "version", version)
		return false
	}
	if err := rpc.SetTCPUserTimeout(nc, rpc.KeepaliveTimeout); err != nil {
		log.Debug(what+" connection", "remote", nc.RemoteAddr(), "err", err)
	}
	return true
}
