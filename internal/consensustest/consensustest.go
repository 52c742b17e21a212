package consensustest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/consensus"
)

// RaftConfig is a raft configuration quick enough for tests: elections
// within about a second.
func RaftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 400 * time.Millisecond
	rc.CommitTimeout = 10 * time.Millisecond
	return rc
}

// Node is a consensus.Node in this process serving its raft transport on
// a loopback port of its own.
type Node struct {
	ID   string
	Addr raft.ServerAddress
	*consensus.Node
	srv  *grpc.Server
	pool *Pool
}

// NodeConfig says how to start a Node.
type NodeConfig struct {
	// Dir holds the node's state, under Dir/ID.
	Dir, ID string
	// Addr is the address to listen on; "" picks a free loopback port (a
	// restart passes the address it had).
	Addr raft.ServerAddress
	Raft *raft.Config
	// Faults, if set, is the network the node's connections cross.
	Faults *Faults
	Logger *slog.Logger
	// Register, if set, registers more services of the node on its
	// server.
	Register func(grpc.ServiceRegistrar, *consensus.Node)
}

// StartNode opens a node and serves it.
func StartNode(cfg NodeConfig) (*Node, error) {
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", string(addr))
	if err != nil {
		return nil, fmt.Errorf("listen for %s: %w", cfg.ID, err)
	}
	n := &Node{ID: cfg.ID, Addr: raft.ServerAddress(lis.Addr().String()), pool: NewPool(cfg.ID, cfg.Faults)}
	if cfg.Faults != nil {
		cfg.Faults.Name(n.Addr, cfg.ID)
	}
	n.Node, err = consensus.Open(consensus.Config{
		NodeID:  cfg.ID,
		Address: n.Addr,
		Dir:     filepath.Join(cfg.Dir, cfg.ID),
		Dial:    n.pool.DialRaft,
		Logger:  cfg.Logger,
		Raft:    cfg.Raft,
	})
	if err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("open %s: %w", cfg.ID, err)
	}
	n.srv = grpc.NewServer()
	n.Register(n.srv)
	if cfg.Register != nil {
		cfg.Register(n.srv, n.Node)
	}
	go func() { _ = n.srv.Serve(lis) }()
	return n, nil
}

// Voter is the node as a voter of a group.
func (n *Node) Voter() raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.ID), Address: n.Addr}
}

// Close shuts the node down, then its server and connections.
func (n *Node) Close() error {
	err := n.Node.Close()
	n.srv.Stop()
	n.pool.Close()
	if err != nil {
		return fmt.Errorf("close %s: %w", n.ID, err)
	}
	return nil
}

// Faults is the network between test nodes: a test cuts and heals the
// links between them, by node id. A cut link fails new calls and ends
// the streams open on it, in both directions.
type Faults struct {
	mu      sync.Mutex
	cut     map[[2]string]bool
	streams map[[2]string]map[*context.CancelFunc]struct{}
	names   map[raft.ServerAddress]string
}

// NewFaults returns a network with every link up.
func NewFaults() *Faults {
	return &Faults{cut: map[[2]string]bool{}, streams: map[[2]string]map[*context.CancelFunc]struct{}{}}
}

// Cut cuts the link between a and b.
func (f *Faults) Cut(a, b string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range [][2]string{{a, b}, {b, a}} {
		f.cut[l] = true
		for cancel := range f.streams[l] {
			(*cancel)()
		}
		delete(f.streams, l)
	}
}

// Isolate cuts every link between id and the others.
func (f *Faults) Isolate(id string, others ...string) {
	for _, o := range others {
		if o != id {
			f.Cut(id, o)
		}
	}
}

// Heal restores every link.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.cut)
}

func (f *Faults) isCut(from, to string) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cut[[2]string{from, to}]
}

// track registers a stream's cancel on a link, or reports the link cut.
func (f *Faults) track(from, to string, cancel *context.CancelFunc) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := [2]string{from, to}
	if f.cut[l] {
		return false
	}
	if f.streams[l] == nil {
		f.streams[l] = map[*context.CancelFunc]struct{}{}
	}
	f.streams[l][cancel] = struct{}{}
	return true
}

func (f *Faults) untrack(from, to string, cancel *context.CancelFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.streams[[2]string{from, to}], cancel)
}

// Pool is a node's client connections, one per peer address, across
// its Faults if it has some.
type Pool struct {
	from   string
	faults *Faults

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// NewPool returns the pool of the node named from; faults may be nil.
func NewPool(from string, faults *Faults) *Pool { return &Pool{from: from, faults: faults} }

// DialRaft has consensus.Config.Dial's type.
func (p *Pool) DialRaft(ctx context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error) {
	return p.Dial(ctx, string(addr))
}

// Dial returns the connection to addr (the first of a comma-separated
// list: a test node has one address).
func (p *Pool) Dial(_ context.Context, addr string) (grpc.ClientConnInterface, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("connection pool closed")
	}
	c, ok := p.conns[addr]
	if !ok {
		target := strings.Split(addr, ",")[0]
		var err error
		c, err = grpc.NewClient("passthrough:///"+target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
				MinConnectTimeout: 2 * time.Second,
			}))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", target, err)
		}
		if p.conns == nil {
			p.conns = map[string]*grpc.ClientConn{}
		}
		p.conns[addr] = c
	}
	if p.faults == nil {
		return c, nil
	}
	return &faultyConn{inner: c, from: p.from, addr: raft.ServerAddress(addr), faults: p.faults}, nil
}

// Close closes every connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// faultyConn fails what crosses a cut link. Links are named by node id;
// a peer's id is learnt from the address book the Faults keep.
type faultyConn struct {
	inner  grpc.ClientConnInterface
	from   string
	addr   raft.ServerAddress
	faults *Faults
}

func (c *faultyConn) to() string { return c.faults.idOf(c.addr) }

func (c *faultyConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if c.faults.isCut(c.from, c.to()) {
		return status.Errorf(codes.Unavailable, "test network: link %s-%s cut", c.from, c.to())
	}
	return c.inner.Invoke(ctx, method, args, reply, opts...)
}

func (c *faultyConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	to := c.to()
	sctx, cancel := context.WithCancel(ctx)
	if !c.faults.track(c.from, to, &cancel) {
		cancel()
		return nil, status.Errorf(codes.Unavailable, "test network: link %s-%s cut", c.from, to)
	}
	s, err := c.inner.NewStream(sctx, desc, method, opts...)
	if err != nil {
		c.faults.untrack(c.from, to, &cancel)
		cancel()
		return nil, err
	}
	context.AfterFunc(sctx, func() { c.faults.untrack(c.from, to, &cancel) })
	return s, nil
}

// Name tells the network which node listens at addr, so that links can
// be cut by node id; StartNode's caller names every node it starts.
func (f *Faults) Name(addr raft.ServerAddress, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.names == nil {
		f.names = map[raft.ServerAddress]string{}
	}
	f.names[addr] = id
}

func (f *Faults) idOf(addr raft.ServerAddress) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.names[addr]; ok {
		return id
	}
	return string(addr)
}
