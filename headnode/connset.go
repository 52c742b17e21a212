package headnode

import (
	"net"
	"sync"
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
