package rpc

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// MaxMessageBytes bounds one gRPC message. A block request carries at most
// 32 MiB of data (the NBD maximum we advertise) plus its header.
const MaxMessageBytes = 40 << 20

// Keepalive timing: a peer that stops answering (a cut network, a frozen
// process) is noticed within KeepaliveTime+KeepaliveTimeout even when no
// request is waiting, so the next request goes to another path at once.
const (
	KeepaliveTime    = 5 * time.Second
	KeepaliveTimeout = 3 * time.Second
)

// reconnectBackoff replaces gRPC's default (growing to two minutes): a head
// node that restarts must be reached again within seconds.
var reconnectBackoff = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  50 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   time.Second,
	},
	MinConnectTimeout: 3 * time.Second,
}

// NewServer returns a gRPC server with the options every Ballast server is
// built with and the standard health service, which clients probe on each
// network path.
func NewServer() *grpc.Server {
	s := grpc.NewServer(ServerOptions()...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	return s
}

// ServerOptions are the options every Ballast gRPC server is built with.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		experimental.BufferPool(bufferPool),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		// Accept the clients' keepalive pings (the default policy answers
		// pings more often than every 5 minutes with GOAWAY).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveTime / 2,
			PermitWithoutStream: true,
		}),
		// Streams from a client whose network was cut end within seconds
		// instead of lingering for TCP's timeouts.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    KeepaliveTime,
			Timeout: KeepaliveTimeout,
		}),
	}
}

// SplitAddresses parses a node address list "hostA:port,hostB:port" (one
// entry per network) into its parts.
func SplitAddresses(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

var schemeSeq atomic.Uint64

// Dial returns a client connection to one node that holds every network
// address of that node. gRPC's pick_first policy uses the first address
// that connects and moves to the next when it breaks, so losing one network
// does not lose the node.
func Dial(addresses []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addresses) == 0 {
		return nil, fmt.Errorf("dial: no addresses")
	}
	// A resolver per connection: its scheme must be unique in the process.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("ballast%d", schemeSeq.Add(1)))
	state := resolver.State{}
	for _, a := range addresses {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	all := append([]grpc.DialOption{
		grpc.WithResolvers(r),
		experimental.WithBufferPool(bufferPool),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(reconnectBackoff),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
		),
	}, opts...)
	conn, err := grpc.NewClient(r.Scheme()+":///node", all...)
	if err != nil {
		return nil, fmt.Errorf("dial %v: %w", addresses, err)
	}
	return conn, nil
}

// Pool caches one multipath connection per node address list.
type Pool struct {
	mu    sync.Mutex
	conns map[string]*Conn
}

// Get returns the cached connection to the node with these addresses,
// dialing it on first use.
func (p *Pool) Get(addresses []string) (*Conn, error) {
	key := strings.Join(addresses, ",")
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	c, err := DialPaths(addresses)
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = make(map[string]*Conn)
	}
	p.conns[key] = c
	return c, nil
}

// Paths reports the network paths of every node the pool has dialed, by
// the node's address list.
func (p *Pool) Paths() map[string][]PathStatus {
	p.mu.Lock()
	conns := make(map[string]*Conn, len(p.conns))
	for k, c := range p.conns {
		conns[k] = c
	}
	p.mu.Unlock()
	out := make(map[string][]PathStatus, len(conns))
	for k, c := range conns {
		out[k] = c.Paths()
	}
	return out
}

// Close closes every cached connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		c.Close()
		delete(p.conns, k)
	}
}
