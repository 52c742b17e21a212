package attach

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/attach/nbd"
	"github.com/ballast-storage/ballast/attach/nvmetcp"
	"github.com/ballast-storage/ballast/internal/blockwire"
	"github.com/ballast-storage/ballast/internal/inflight"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// AgentConfig configures an agent.
type AgentConfig struct {
	// HeadNodes lists every head node's addresses (one per network).
	HeadNodes [][]string
	// NBDListen is the NBD server's address, e.g. 127.0.0.1:10809.
	NBDListen string
	// NVMeListen lists the NVMe/TCP target's I/O ports, e.g.
	// 127.0.0.1:4420 (one per network); none disables NVMe/TCP. Each
	// also answers the discovery controller.
	NVMeListen []string
	// NVMeDiscoveryListen lists discovery-only ports (8009 by
	// convention); they need NVMeListen.
	NVMeDiscoveryListen []string
	// Host is the host this agent serves: it serves a volume only while
	// the volume is attached (or migrating) to it, and carries the
	// attachment's generation on every request. "" serves only volumes
	// attached to no host, as a client that names no host.
	Host string
	// MaxNBDConnections bounds the NBD connections served at once
	// (DefaultMaxNBDConnections); one more is refused in its handshake.
	MaxNBDConnections int
	// MaxNVMeConnections bounds the NVMe/TCP connections (queues: admin,
	// I/O and discovery) served at once (DefaultMaxNVMeConnections); one
	// more has its Connect refused.
	MaxNVMeConnections int
	// ConnBytesInFlight bounds the request data one connection holds
	// (DefaultConnBytesInFlight); past it, the connection stops reading
	// until replies return memory.
	ConnBytesInFlight int
	// AgentBytesInFlight bounds the request data every NBD and NVMe/TCP
	// connection holds together (DefaultAgentBytesInFlight).
	AgentBytesInFlight int64
	// IOWire is the protocol of block I/O to the head nodes: IOWireFramed
	// (the default, "") or IOWireGRPC.
	IOWire IOWire
	Logger *slog.Logger
}

// Defaults of AgentConfig's limits.
const (
	DefaultMaxNBDConnections  = 256
	DefaultMaxNVMeConnections = 128
	DefaultConnBytesInFlight  = 64 << 20
	DefaultAgentBytesInFlight = 512 << 20
	// maxRequestBytes is the largest request either protocol admits
	// (NBD's maximum block size; NVMe/TCP's MDTS is smaller).
	maxRequestBytes = nbd.MaxBlockSize
)

// EnsureDefaults fills zero fields with their defaults.
func (c *AgentConfig) EnsureDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxNBDConnections == 0 {
		c.MaxNBDConnections = DefaultMaxNBDConnections
	}
	if c.MaxNVMeConnections == 0 {
		c.MaxNVMeConnections = DefaultMaxNVMeConnections
	}
	if c.ConnBytesInFlight == 0 {
		c.ConnBytesInFlight = DefaultConnBytesInFlight
	}
	if c.AgentBytesInFlight == 0 {
		c.AgentBytesInFlight = DefaultAgentBytesInFlight
	}
	if c.IOWire == "" {
		c.IOWire = IOWireFramed
	}
}

// Validate reports the first problem with the configuration.
func (c *AgentConfig) Validate() error {
	switch {
	case len(c.HeadNodes) == 0:
		return errors.New("agent: at least one head node is required")
	case len(c.NVMeListen) == 0 && len(c.NVMeDiscoveryListen) > 0:
		return errors.New("agent: an NVMe/TCP discovery port needs an NVMe/TCP I/O port")
	case c.MaxNBDConnections < 1 || c.MaxNVMeConnections < 1:
		return fmt.Errorf("agent: connection limits %d (NBD) and %d (NVMe/TCP) must be at least 1", c.MaxNBDConnections, c.MaxNVMeConnections)
	case c.ConnBytesInFlight < maxRequestBytes || c.AgentBytesInFlight < int64(c.ConnBytesInFlight):
		return fmt.Errorf("agent: bytes in flight %d a connection, %d in all: want %d <= connection <= all", c.ConnBytesInFlight, c.AgentBytesInFlight, maxRequestBytes)
	}
	if _, err := ParseIOWire(string(c.IOWire)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// NQNPrefix is the prefix of the subsystem NQN of every volume:
// NQNPrefix + volume name.
const NQNPrefix = "nqn.2026-11.io.ballast:"

// VolumeNQN is the NVMe subsystem NQN that serves a volume.
func VolumeNQN(volume string) string { return NQNPrefix + volume }

// Agent serves the rack's volumes to the local hypervisor.
type Agent struct {
	client   *Client
	nbd      *nbd.Server
	nvme     *nvmetcp.Target
	listener net.Listener
	nvmeL    []net.Listener
	discL    []net.Listener
	log      *slog.Logger
	cancel   context.CancelFunc
	done     sync.WaitGroup
}

// StartAgent starts serving NBD, and NVMe/TCP if configured.
func StartAgent(cfg AgentConfig) (*Agent, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		client: &Client{HeadNodes: cfg.HeadNodes, IOWire: cfg.IOWire, Logger: cfg.Logger},
		log:    cfg.Logger.With("role", "agent"),
	}
	// Listen on everything first, so that a taken port fails the start
	// before anything is served.
	var err error
	closeAll := func() {
		for _, l := range append(append([]net.Listener{a.listener}, a.nvmeL...), a.discL...) {
			if l != nil {
				l.Close()
			}
		}
	}
	if a.listener, err = net.Listen("tcp", cfg.NBDListen); err != nil {
		return nil, fmt.Errorf("agent: listen for NBD: %w", err)
	}
	for _, addr := range cfg.NVMeListen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("agent: listen for NVMe/TCP: %w", err)
		}
		a.nvmeL = append(a.nvmeL, l)
	}
	for _, addr := range cfg.NVMeDiscoveryListen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("agent: listen for NVMe/TCP discovery: %w", err)
		}
		a.discL = append(a.discL, l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	// One bound on request data for both protocols: what the host's
	// memory can spare does not depend on how the hypervisor attaches.
	shared := inflight.New(0, cfg.AgentBytesInFlight)
	a.nbd = &nbd.Server{
		Exports:          exports{a.client, cfg.Host},
		Logger:           a.log,
		MaxConnections:   cfg.MaxNBDConnections,
		MaxBytesInFlight: cfg.ConnBytesInFlight,
		Shared:           shared,
	}
	a.serve("NBD server", func() error { return a.nbd.Serve(ctx, a.listener) })
	a.log.Info("serving NBD", "addr", a.listener.Addr().String())
	if len(a.nvmeL) > 0 {
		a.nvme = &nvmetcp.Target{
			Subsystems:       subsystems{a.client, cfg.Host},
			Logger:           a.log,
			MaxConnections:   cfg.MaxNVMeConnections,
			MaxBytesInFlight: cfg.ConnBytesInFlight,
			Shared:           shared,
		}
		for _, l := range a.nvmeL {
			a.serve("NVMe/TCP target", func() error { return a.nvme.Serve(ctx, l) })
			a.log.Info("serving NVMe/TCP", "addr", l.Addr().String())
		}
		for _, l := range a.discL {
			a.serve("NVMe/TCP discovery", func() error { return a.nvme.ServeDiscovery(ctx, l) })
			a.log.Info("serving NVMe/TCP discovery", "addr", l.Addr().String())
		}
	}
	return a, nil
}

// serve runs a server loop until the agent closes.
func (a *Agent) serve(what string, run func() error) {
	a.done.Add(1)
	go func() {
		defer a.done.Done()
		if err := run(); err != nil && !errors.Is(err, nvmetcp.ErrTargetClosed) && !errors.Is(err, nbd.ErrServerClosed) {
			a.log.Error(what+" stopped", "err", err)
		}
	}()
}

// NBDAddr is the address the NBD server listens on.
func (a *Agent) NBDAddr() net.Addr { return a.listener.Addr() }

// NVMeAddrs are the addresses of the NVMe/TCP I/O ports.
func (a *Agent) NVMeAddrs() []net.Addr { return listenAddrs(a.nvmeL) }

// NVMeDiscoveryAddrs are the addresses of the NVMe/TCP discovery ports.
func (a *Agent) NVMeDiscoveryAddrs() []net.Addr { return listenAddrs(a.discL) }

func listenAddrs(ls []net.Listener) []net.Addr {
	var out []net.Addr
	for _, l := range ls {
		out = append(out, l.Addr())
	}
	return out
}

// NBDStats are the NBD server's counters (connections, refusals).
func (a *Agent) NBDStats() nbd.Stats { return a.nbd.Stats() }

// NVMeStats are the NVMe/TCP target's counters; zero without NVMe/TCP.
func (a *Agent) NVMeStats() nvmetcp.Stats {
	if a.nvme == nil {
		return nvmetcp.Stats{}
	}
	return a.nvme.Stats()
}

// Client is the agent's client of the head nodes.
func (a *Agent) Client() *Client { return a.client }

// Close stops serving and closes every connection.
func (a *Agent) Close() error {
	a.cancel()
	a.nbd.Close()
	if a.nvme != nil {
		a.nvme.Close()
	}
	a.done.Wait()
	a.client.Close()
	return nil
}

// exports resolves NBD export names to the volumes attached (or
// migrating) to the agent's host.
type exports struct {
	client *Client
	host   string
}

func (e exports) Open(ctx context.Context, name string) (nbd.Backend, error) {
	v, err := e.client.OpenVolumeAs(ctx, name, e.host)
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("%w: %s", nbd.ErrUnknownExport, name)
	}
	if errors.Is(err, ErrNotAttached) {
		return nil, fmt.Errorf("%w: %w", nbd.ErrExportRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return device{v}, nil
}

func (e exports) List(ctx context.Context) ([]string, error) {
	return e.client.volumeNames(ctx, e.host)
}

// volumeNames lists the volumes a host may open: those attached or
// migrating to it (for host "", those attached to no host).
func (c *Client) volumeNames(ctx context.Context, host string) ([]string, error) {
	var names []string
	err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		resp, err := a.ListVolumes(ctx, &ballastpb.ListVolumesRequest{})
		if err != nil {
			return err
		}
		names = names[:0]
		for _, v := range resp.Volumes {
			att := volume.AttachmentOf(v)
			if _, ok := att.SessionFor(host); ok || host == "" && att.Host == "" {
				names = append(names, v.Name)
			}
		}
		return nil
	})
	return names, err
}

// subsystems resolves NVMe subsystem NQNs to the volumes attached (or
// migrating) to the agent's host.
type subsystems struct {
	client *Client
	host   string
}

func (s subsystems) List(ctx context.Context) ([]string, error) {
	names, err := s.client.volumeNames(ctx, s.host)
	if err != nil {
		return nil, err
	}
	nqns := make([]string, len(names))
	for i, n := range names {
		nqns[i] = VolumeNQN(n)
	}
	return nqns, nil
}

func (s subsystems) Open(ctx context.Context, nqn string) (nvmetcp.Namespace, error) {
	name, ok := strings.CutPrefix(nqn, NQNPrefix)
	if !ok || volume.ValidateName(name) != nil {
		return nvmetcp.Namespace{}, fmt.Errorf("%w: %s", nvmetcp.ErrUnknownSubsystem, nqn)
	}
	v, err := s.client.OpenVolumeAs(ctx, name, s.host)
	if status.Code(err) == codes.NotFound || errors.Is(err, ErrNotAttached) {
		// Not offered to this host: discovery does not list it either.
		return nvmetcp.Namespace{}, fmt.Errorf("%w: %s: %w", nvmetcp.ErrUnknownSubsystem, nqn, err)
	}
	if err != nil {
		return nvmetcp.Namespace{}, err
	}
	return nvmetcp.Namespace{Device: newSpreadDevice(v, nvmeStreams), ID: namespaceID(v)}, nil
}

// nvmeStreams is how many I/O streams to the primary one NVMe/TCP
// controller spreads its commands over.
const nvmeStreams = 4

// spreadDevice is a volume opened over several I/O streams. All the
// queues of an NVMe/TCP controller share one device; over one gRPC
// stream, that stream's flow-control window would bound them all (NBD
// gets a stream per connection). Commands in flight have no order among
// them, so any stream may carry any of them.
type spreadDevice struct {
	vols []*Volume
	next atomic.Uint32
}

func newSpreadDevice(v *Volume, n int) *spreadDevice {
	d := &spreadDevice{vols: []*Volume{v}}
	v.mu.Lock()
	primary := v.primary
	v.mu.Unlock()
	for range n - 1 {
		d.vols = append(d.vols, &Volume{client: v.client, name: v.name, size: v.size, id: v.id, session: v.session, primary: primary, writer: newWriter()})
	}
	return d
}

func (d *spreadDevice) pick() device { return device{d.vols[int(d.next.Add(1))%len(d.vols)]} }

func (d *spreadDevice) Size() uint64 { return d.vols[0].Size() }

func (d *spreadDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	return d.pick().ReadAt(ctx, p, off)
}

func (d *spreadDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return d.pick().WriteAt(ctx, p, off, fua)
}

// Flush on any stream: every write that returned is durable already.
func (d *spreadDevice) Flush(ctx context.Context) error { return d.pick().Flush(ctx) }

func (d *spreadDevice) Trim(ctx context.Context, off, length uint64) error {
	return d.pick().Trim(ctx, off, length)
}

func (d *spreadDevice) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	return d.pick().WriteZeroes(ctx, off, length, noHole)
}

func (d *spreadDevice) Close() error {
	for _, v := range d.vols {
		v.Close()
	}
	return nil
}

// namespaceID identifies a volume for good: a volume deleted and created
// again under the same name gets a new ID, as its data is new.
func namespaceID(v *Volume) [16]byte {
	b := binary.BigEndian.AppendUint64([]byte("ballast-volume:"), v.id)
	sum := sha256.Sum256(append(b, v.name...))
	var id [16]byte
	copy(id[:], sum[:])
	return id
}

// device is an open volume as the protocol servers see it.
type device struct{ v *Volume }

// NewDevice returns a volume as a block device: the agent's NBD (and
// NVMe/TCP) exports are built from it, and tests drive it directly.
func NewDevice(v *Volume) blockdev.Device { return device{v} }

func (d device) Size() uint64 { return d.v.Size() }
func (d device) Close() error { return d.v.Close() }

func (d device) ReadAt(ctx context.Context, p []byte, off uint64) error {
	r, err := d.v.do(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_READ, Offset: off, Length: uint64(len(p))})
	if err != nil {
		return fmt.Errorf("%w: %w", blockdev.ErrIO, err)
	}
	if err := replyError(r); err != nil {
		return err
	}
	if len(r.Data) != len(p) {
		return fmt.Errorf("%w: read %d bytes at %d: head node returned %d", blockdev.ErrIO, len(p), off, len(r.Data))
	}
	copy(p, r.Data)
	return nil
}

// Allocation asks the primary which parts of the range hold data
// (blockdev.Allocator), so that NBD's base:allocation reports holes. A
// head node that does not know the request (older than it) refuses it as
// invalid: then the whole range is reported as data, which is always true
// enough.
func (d device) Allocation(ctx context.Context, off, length uint64) ([]blockdev.Extent, error) {
	r, err := d.v.do(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_BLOCK_STATUS, Offset: off, Length: length})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", blockdev.ErrIO, err)
	}
	if r.Status == ballastpb.IOStatus_IO_STATUS_INVALID {
		return []blockdev.Extent{{Length: length}}, nil
	}
	if err := replyError(r); err != nil {
		return nil, err
	}
	ext, err := blockwire.ParseExtents(r.Data, length)
	if err != nil {
		return nil, fmt.Errorf("%w: block status of [%d, +%d): %w", blockdev.ErrIO, off, length, err)
	}
	out := make([]blockdev.Extent, len(ext))
	for i, e := range ext {
		out[i] = blockdev.Extent{Length: e.Length, Hole: e.Hole}
	}
	return out, nil
}

func (d device) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return d.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE, Offset: off, Data: p, Fua: fua})
}

// Flush is answered at once once a head node has acknowledged a write of
// this session: a head node acknowledges a write only when it is durable
// on both replicas, so every write that returned before the flush is
// durable already, and the round trip would cost the guest's fsync its
// time for nothing. Until then the flush goes to the head node, where the
// first flush of a host taking a volume over moves the attachment to it.
func (d device) Flush(ctx context.Context) error {
	if d.v.wrote.Load() {
		return nil
	}
	return d.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_FLUSH})
}

func (d device) Trim(ctx context.Context, off, length uint64) error {
	return d.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_TRIM, Offset: off, Length: length})
}

func (d device) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	return d.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE_ZEROES, Offset: off, Length: length, NoHole: noHole})
}

func (d device) run(ctx context.Context, req *ballastpb.IORequest) error {
	r, err := d.v.do(ctx, req)
	if err != nil {
		return fmt.Errorf("%w: %w", blockdev.ErrIO, err)
	}
	if err := replyError(r); err != nil {
		return err
	}
	if req.Op != ballastpb.IOOp_IO_OP_FLUSH {
		d.v.wrote.Store(true)
	}
	return nil
}

// replyError maps a head node's status onto the device's error classes.
func replyError(r *ballastpb.IOReply) error {
	switch r.Status {
	case ballastpb.IOStatus_IO_STATUS_OK:
		return nil
	case ballastpb.IOStatus_IO_STATUS_OUT_OF_RANGE:
		return fmt.Errorf("%w: %s", blockdev.ErrOutOfRange, r.Error)
	case ballastpb.IOStatus_IO_STATUS_INVALID:
		return fmt.Errorf("%w: %s", blockdev.ErrInvalid, r.Error)
	case ballastpb.IOStatus_IO_STATUS_NO_SPACE:
		return fmt.Errorf("%w: %s", blockdev.ErrNoSpace, r.Error)
	case ballastpb.IOStatus_IO_STATUS_FENCED:
		return fmt.Errorf("%w: %s", blockdev.ErrNotPermitted, r.Error)
	default:
		return fmt.Errorf("%w: %s", blockdev.ErrIO, r.Error)
	}
}
