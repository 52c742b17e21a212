package transport

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// Manager is one node's raft transport: it owns the node's outbound
// streams (one per peer address), serves the inbound ones, and hands out
// one Transport per consensus group.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	closed chan struct{} // closed by Close

	// wg counts the goroutines of outbound streams and the readers of
	// inbound streams.
	wg sync.WaitGroup

	streamsOpened   atomic.Uint64
	pipelinesOpened atomic.Uint64 // read by tests

	mu struct {
		sync.Mutex
		closed  bool
		groups  map[uint64]*Transport
		peers   map[raft.ServerAddress]*peer
		inbound map[string]int // open inbound streams by the remote node's id
	}
}

// NewManager returns the transport of node nodeID with every other setting
// at its default. dial connects to peers; the connections it returns stay
// the caller's.
func NewManager(nodeID string, dial DialFunc) *Manager {
	return newManager(Config{NodeID: nodeID, Dial: dial}.withDefaults())
}

// NewManagerWithConfig returns a node's transport configured by cfg; zero
// fields take their defaults.
func NewManagerWithConfig(cfg Config) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return newManager(cfg), nil
}

func newManager(cfg Config) *Manager {
	m := &Manager{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "raft-transport", "node", cfg.NodeID),
		closed: make(chan struct{}),
	}
	m.mu.groups = map[uint64]*Transport{}
	m.mu.peers = map[raft.ServerAddress]*peer{}
	m.mu.inbound = map[string]int{}
	return m
}

// Register serves the transport on s. Register before starting groups.
func (m *Manager) Register(s grpc.ServiceRegistrar) {
	raftpb.RegisterRaftTransportServer(s, &service{m: m})
}

// Transport returns the transport of group groupID, whose members on this
// node have the raft address local. If the group has an open transport,
// it is returned; otherwise a new one is registered. Closing it (raft does
// when it shuts down) unregisters it: peers' requests for the group then
// get ErrUnknownGroup. After Close, Transport returns a closed transport.
func (m *Manager) Transport(groupID uint64, local raft.ServerAddress) *Transport {
	m.mu.Lock()
	if t, ok := m.mu.groups[groupID]; ok {
		m.mu.Unlock()
		return t
	}
	t := newTransport(m, groupID, local)
	if m.mu.closed {
		m.mu.Unlock()
		t.Close()
		return t
	}
	t.start()
	m.mu.groups[groupID] = t
	m.mu.Unlock()
	return t
}

// group returns the open transport of a group, or nil.
func (m *Manager) group(id uint64) *Transport {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.groups[id]
}

// unregister removes t if it is its group's registered transport.
func (m *Manager) unregister(t *Transport) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.groups[t.group] == t {
		delete(m.mu.groups, t.group)
	}
}

// peer returns the outbound state of a peer address, creating it.
func (m *Manager) peer(addr raft.ServerAddress) (*peer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return nil, ErrClosed
	}
	p, ok := m.mu.peers[addr]
	if !ok {
		p = newPeer(m, addr)
		m.mu.peers[addr] = p
	}
	return p, nil
}

// goFunc runs f on a goroutine counted in m.wg, unless the manager is
// closed.
func (m *Manager) goFunc(f func()) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

func (m *Manager) addInbound(from string, delta int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.inbound[from] += delta
	if m.mu.inbound[from] <= 0 {
		delete(m.mu.inbound, from)
	}
}

// Stats describes a Manager's streams.
type Stats struct {
	// Outbound lists the peer addresses this node has an open stream to,
	// sorted; there is at most one stream per address.
	Outbound []raft.ServerAddress
	// Inbound counts the open streams peers have to this node, by the
	// peer's node id.
	Inbound map[string]int
	// StreamsOpened counts the outbound streams opened since NewManager
	// (more than len(Outbound) means streams broke and were re-opened).
	StreamsOpened uint64
	// Groups counts the groups with an open transport.
	Groups int
}

// Stats returns a snapshot of the Manager's streams.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	peers := make([]*peer, 0, len(m.mu.peers))
	for _, p := range m.mu.peers {
		peers = append(peers, p)
	}
	st := Stats{
		Inbound:       make(map[string]int, len(m.mu.inbound)),
		StreamsOpened: m.streamsOpened.Load(),
		Groups:        len(m.mu.groups),
	}
	for k, v := range m.mu.inbound {
		st.Inbound[k] = v
	}
	m.mu.Unlock()
	for _, p := range peers {
		if p.open() {
			st.Outbound = append(st.Outbound, p.addr)
		}
	}
	sort.Slice(st.Outbound, func(i, j int) bool { return st.Outbound[i] < st.Outbound[j] })
	return st
}

// Close closes every group's transport, ends every stream (failing the
// RPCs in flight with ErrClosed) and waits for the transport's goroutines.
// Handlers of inbound streams return; the gRPC server stays the caller's.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return
	}
	m.mu.closed = true
	close(m.closed)
	groups := make([]*Transport, 0, len(m.mu.groups))
	for _, t := range m.mu.groups {
		groups = append(groups, t)
	}
	peers := make([]*peer, 0, len(m.mu.peers))
	for _, p := range m.mu.peers {
		peers = append(peers, p)
	}
	m.mu.Unlock()

	for _, t := range groups {
		t.Close()
	}
	for _, p := range peers {
		p.close(fmt.Errorf("%w: manager closed", ErrClosed))
	}
	m.wg.Wait()
}
