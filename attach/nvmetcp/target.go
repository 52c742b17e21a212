package nvmetcp

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/bits"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/internal/inflight"
)

// Defaults for a Target's zero fields.
const (
	DefaultBlockSize          = 4096
	DefaultMaxIOQueues        = 16
	DefaultMaxQueueSize       = 128
	DefaultInCapsuleDataBytes = 8192
	DefaultMaxTransferBytes   = 1 << 20
	DefaultMaxBytesInFlight   = 64 << 20
	DefaultConnectTimeout     = 30 * time.Second
	DefaultMaxConnections     = 128
	adminInCapsuleBytes       = 8192 // Linux sends fabrics and admin data up to 8 KiB in the capsule
	minQueueSize              = 32   // the admin queue of Linux has 32 entries
	maxQueueSize              = 1024
	maxPendingEvents          = 16
	aerLimit                  = 4 // AERL + 1
)

const (
	// maxRefusing bounds the connections being refused at once (each
	// gets an IC exchange and a Connect that says busy); beyond it, the
	// excess is closed at once.
	maxRefusing = 16
	// refuseTimeout bounds a refused connection's IC exchange and Connect.
	refuseTimeout = 5 * time.Second
)

// Namespace is the namespace behind one subsystem: a block device and its
// identity.
type Namespace struct {
	// Device serves the namespace's blocks. The target closes it when the
	// controller that opened it is gone.
	Device blockdev.Device
	// ID identifies the namespace for good (its NGUID; its UUID is derived
	// from it). It must differ between subsystems and stay the same across
	// restarts: the Linux host refuses two namespaces with the same ID.
	ID [16]byte
}

// Subsystems resolves subsystem NQNs to namespaces: the consumer's view of
// what it exports (the agent maps every volume to one).
type Subsystems interface {
	// List names every subsystem, for the discovery log.
	List(ctx context.Context) ([]string, error)
	// Open opens the namespace of a subsystem for one controller. ctx
	// bounds the call only. An error wrapping ErrUnknownSubsystem tells
	// the host that no such subsystem exists; any other error is reported
	// as the controller being busy, and the host may try again.
	Open(ctx context.Context, nqn string) (Namespace, error)
}

// ErrUnknownSubsystem is wrapped by Subsystems.Open for an unknown NQN.
var ErrUnknownSubsystem = errors.New("nvmetcp: unknown subsystem")

// ErrTargetClosed is returned by Serve after Close.
var ErrTargetClosed = errors.New("nvmetcp: target closed")

// Target serves subsystems over NVMe/TCP: every listener it serves
// answers both I/O controllers and the discovery controller. Set its
// fields before the first Serve and do not change them after. The zero
// value of every field but Subsystems means its default.
type Target struct {
	// Subsystems resolves NQNs. Required.
	Subsystems Subsystems
	// Logger receives connection and controller events; nil means
	// slog.Default().
	Logger *slog.Logger
	// AllowHost, if set, says whether hostNQN may connect to subNQN (the
	// discovery subsystem included) and see it in the discovery log.
	AllowHost func(subNQN, hostNQN string) bool
	// BlockSize is the namespaces' logical block size: 512 or 4096
	// (DefaultBlockSize).
	BlockSize int
	// MaxIOQueues bounds the I/O queues of one controller
	// (DefaultMaxIOQueues).
	MaxIOQueues int
	// MaxQueueSize bounds the entries of one queue, 32 to 1024
	// (DefaultMaxQueueSize); it is CAP.MQES + 1 and MAXCMD.
	MaxQueueSize int
	// InCapsuleDataBytes is the in-capsule data an I/O command may carry
	// (DefaultInCapsuleDataBytes, a multiple of 16); larger writes use R2T.
	InCapsuleDataBytes int
	// MaxTransferBytes is the largest data transfer of one command (MDTS,
	// and MAXH2CDATA): a power of two from 4 KiB to 32 MiB
	// (DefaultMaxTransferBytes).
	MaxTransferBytes int
	// MaxBytesInFlight bounds the data buffers of one connection's
	// commands in flight (DefaultMaxBytesInFlight).
	MaxBytesInFlight int
	// ConnectTimeout bounds the time from accepting a connection to its
	// Connect command being answered (DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// MaxConnections bounds the connections (queues: admin, I/O and
	// discovery) open at once over every port (DefaultMaxConnections).
	// One more gets its ICResp, then its Connect is refused with
	// Controller Busy and the connection closed; it is counted in Stats.
	MaxConnections int
	// Shared, if set, bounds the data buffers in flight of every
	// connection together (and whatever else shares it: the agent shares
	// one with its NBD server). Its byte bound must be at least
	// MaxTransferBytes.
	Shared *inflight.Limit

	refused  atomic.Uint64
	lastWarn atomic.Int64 // unix nanoseconds of the last refusal logged

	mu struct {
		sync.Mutex
		closed     bool
		ports      []*port
		conns      map[*conn]struct{}
		ctrls      map[uint16]*controller
		nextCntlid uint16
		genctr     uint64
		lastLog    uint64 // hash of the last discovery log's records
		admitted   int    // connections served
		refusing   int    // connections being refused
	}
	wg sync.WaitGroup
}

// port is one listener: an I/O port, listed in the discovery log, or a
// discovery port.
type port struct {
	id        uint16
	l         net.Listener
	discovery bool
}

// config is a Target's fields with defaults applied.
type config struct {
	log            *slog.Logger
	lbads          uint8
	maxIOQueues    int
	maxQueueSize   int
	inCapsule      int
	maxTransfer    int
	mdts           uint8
	maxBytes       int
	maxConns       int
	connectTimeout time.Duration
}

func (t *Target) config() (config, error) {
	c := config{
		log:            t.Logger,
		maxIOQueues:    orDefault(t.MaxIOQueues, DefaultMaxIOQueues),
		maxQueueSize:   orDefault(t.MaxQueueSize, DefaultMaxQueueSize),
		inCapsule:      orDefault(t.InCapsuleDataBytes, DefaultInCapsuleDataBytes),
		maxTransfer:    orDefault(t.MaxTransferBytes, DefaultMaxTransferBytes),
		maxBytes:       orDefault(t.MaxBytesInFlight, DefaultMaxBytesInFlight),
		maxConns:       orDefault(t.MaxConnections, DefaultMaxConnections),
		connectTimeout: t.ConnectTimeout,
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.connectTimeout == 0 {
		c.connectTimeout = DefaultConnectTimeout
	}
	switch orDefault(t.BlockSize, DefaultBlockSize) {
	case 512:
		c.lbads = 9
	case 4096:
		c.lbads = 12
	default:
		return c, fmt.Errorf("nvmetcp: Target.BlockSize %d: want 512 or 4096", t.BlockSize)
	}
	switch {
	case t.Subsystems == nil:
		return c, errors.New("nvmetcp: Target.Subsystems is nil")
	case c.maxIOQueues < 1 || c.maxIOQueues > 0xFFFE:
		return c, fmt.Errorf("nvmetcp: Target.MaxIOQueues %d out of range", c.maxIOQueues)
	case c.maxQueueSize < minQueueSize || c.maxQueueSize > maxQueueSize:
		return c, fmt.Errorf("nvmetcp: Target.MaxQueueSize %d: want %d to %d", c.maxQueueSize, minQueueSize, maxQueueSize)
	case c.inCapsule < 0 || c.inCapsule%16 != 0 || c.inCapsule > 1<<20:
		return c, fmt.Errorf("nvmetcp: Target.InCapsuleDataBytes %d: want a multiple of 16 up to 1 MiB", c.inCapsule)
	case c.maxTransfer < 4096 || c.maxTransfer > 32<<20 || c.maxTransfer&(c.maxTransfer-1) != 0:
		return c, fmt.Errorf("nvmetcp: Target.MaxTransferBytes %d: want a power of two from 4 KiB to 32 MiB", c.maxTransfer)
	case c.maxBytes < 0 || c.connectTimeout < 0 || c.maxConns < 0:
		return c, errors.New("nvmetcp: negative Target limit")
	case t.Shared != nil && t.Shared.Stats().MaxBytes > 0 && t.Shared.Stats().MaxBytes < int64(c.maxTransfer):
		return c, fmt.Errorf("nvmetcp: Target.Shared bounds %d bytes, below one transfer of %d", t.Shared.Stats().MaxBytes, c.maxTransfer)
	}
	c.mdts = uint8(bits.Len(uint(c.maxTransfer/4096)) - 1)
	return c, nil
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Serve accepts connections on l, an I/O port that the discovery log
// lists, and serves them until ctx is done or Close is called; it closes
// l. When it returns, every connection it accepted is closed. It returns
// nil when ctx ended it, ErrTargetClosed after Close, or the error that
// stopped accepting.
func (t *Target) Serve(ctx context.Context, l net.Listener) error {
	return t.serve(ctx, l, false)
}

// ServeDiscovery is Serve for a discovery port (8009 by convention): it
// answers the same commands, but the discovery log does not list it as a
// port of the subsystems.
func (t *Target) ServeDiscovery(ctx context.Context, l net.Listener) error {
	return t.serve(ctx, l, true)
}

func (t *Target) serve(ctx context.Context, l net.Listener, discovery bool) error {
	cfg, err := t.config()
	if err != nil {
		_ = l.Close()
		return err
	}
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		_ = l.Close()
		return ErrTargetClosed
	}
	if t.mu.conns == nil {
		t.mu.conns = make(map[*conn]struct{})
		t.mu.ctrls = make(map[uint16]*controller)
	}
	p := &port{id: uint16(len(t.mu.ports) + 1), l: l, discovery: discovery}
	t.mu.ports = append(t.mu.ports, p)
	t.wg.Add(1)
	t.mu.Unlock()
	defer t.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	var conns sync.WaitGroup
	defer func() {
		stop()
		cancel() // ends this Serve's connections
		_ = l.Close()
		t.mu.Lock()
		t.mu.ports = slices.DeleteFunc(t.mu.ports, func(q *port) bool { return q == p })
		t.mu.Unlock()
		conns.Wait()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if t.closed() {
				return ErrTargetClosed
			}
			var te interface{ Temporary() bool }
			if !errors.As(err, &te) || !te.Temporary() {
				return fmt.Errorf("nvmetcp: accept: %w", err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			cfg.log.Warn("NVMe/TCP accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		delay = 0
		if !t.startConn(ctx, nc, p, cfg, &conns) {
			_ = nc.Close()
			return ErrTargetClosed
		}
	}
}

func (t *Target) closed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.closed
}

// startConn starts a connection's goroutine, unless the target is closed:
// one that serves it, or, past MaxConnections, one that refuses it.
func (t *Target) startConn(ctx context.Context, nc net.Conn, p *port, cfg config, conns *sync.WaitGroup) bool {
	c := newConn(t, nc, p, cfg)
	ctx, cancel := context.WithCancel(ctx)
	c.ctx, c.cancel = ctx, cancel
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		cancel()
		return false
	}
	refuse := t.mu.admitted >= cfg.maxConns
	if refuse && t.mu.refusing >= maxRefusing {
		// A flood: no IC exchange for this one.
		t.mu.Unlock()
		cancel()
		t.noteRefused(cfg, nc, "closed before the IC exchange")
		_ = nc.Close()
		return true
	}
	if refuse {
		t.mu.refusing++
		c.refuse = fmt.Sprintf("too many NVMe/TCP connections to this target (limit %d)", cfg.maxConns)
	} else {
		t.mu.admitted++
	}
	t.mu.conns[c] = struct{}{}
	t.wg.Add(1)
	conns.Add(1)
	t.mu.Unlock()
	go func() {
		defer func() {
			cancel()
			t.mu.Lock()
			delete(t.mu.conns, c)
			if refuse {
				t.mu.refusing--
			} else {
				t.mu.admitted--
			}
			t.mu.Unlock()
			conns.Done()
			t.wg.Done()
		}()
		if refuse {
			t.noteRefused(cfg, nc, "Connect refused with Controller Busy")
		}
		c.serve()
	}()
	return true
}

// noteRefused counts a refused connection and logs it, at most once a
// second so that a host retrying in a loop does not flood the log.
func (t *Target) noteRefused(cfg config, nc net.Conn, how string) {
	total := t.refused.Add(1)
	now := time.Now().UnixNano()
	last := t.lastWarn.Load()
	if now-last < int64(time.Second) || !t.lastWarn.CompareAndSwap(last, now) {
		return
	}
	remote := ""
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	cfg.log.Warn("NVMe/TCP connection refused: too many connections", "remote", remote,
		"limit", cfg.maxConns, "how", how, "refused_total", total)
}

// Stats are a target's counters.
type Stats struct {
	// Connections is how many connections (queues) are being served now.
	Connections int
	// Refused counts the connections refused for MaxConnections.
	Refused uint64
}

// Stats returns the target's counters.
func (t *Target) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Stats{Connections: t.mu.admitted, Refused: t.refused.Load()}
}

// Close stops every Serve, closes every connection and controller, and
// waits for every goroutine the target started.
func (t *Target) Close() error {
	t.mu.Lock()
	t.mu.closed = true
	for _, p := range t.mu.ports {
		_ = p.l.Close()
	}
	for c := range t.mu.conns {
		c.abort()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

// NamespaceChanged tells every controller of subsystem nqn that its
// namespace changed (say, it was resized): they report a Namespace
// Attribute Changed event to hosts that enabled it, and Identify reads
// the device's size again.
func (t *Target) NamespaceChanged(nqn string) {
	t.mu.Lock()
	var ctrls []*controller
	for _, c := range t.mu.ctrls {
		if c.subNQN == nqn {
			ctrls = append(ctrls, c)
		}
	}
	t.mu.Unlock()
	for _, c := range ctrls {
		c.namespaceChanged()
	}
}

// register allocates a controller ID (1 to 0xFFEF) for c.
func (t *Target) register(c *controller) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return false
	}
	for range 0xFFEF {
		t.mu.nextCntlid = t.mu.nextCntlid%0xFFEF + 1
		if _, used := t.mu.ctrls[t.mu.nextCntlid]; !used {
			c.cntlid = t.mu.nextCntlid
			t.mu.ctrls[c.cntlid] = c
			return true
		}
	}
	return false
}

func (t *Target) unregister(c *controller) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.ctrls[c.cntlid] == c {
		delete(t.mu.ctrls, c.cntlid)
	}
}

func (t *Target) lookup(cntlid uint16) *controller {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.ctrls[cntlid]
}

func (t *Target) allowed(subNQN, hostNQN string) bool {
	return t.AllowHost == nil || t.AllowHost(subNQN, hostNQN)
}

// discoveryLog builds the discovery log a host sees on the port of c: one
// record per subsystem it may reach and I/O port, and one for the
// discovery subsystem on this port.
func (t *Target) discoveryLog(ctx context.Context, c *conn, hostNQN string) ([]byte, error) {
	nqns, err := t.Subsystems.List(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(nqns)
	t.mu.Lock()
	ports := slices.Clone(t.mu.ports)
	t.mu.Unlock()
	var local net.Addr
	if c.nc != nil {
		local = c.nc.LocalAddr()
	}
	var entries []DiscoveryEntry
	for _, nqn := range nqns {
		if nqn == DiscoveryNQN || !t.allowed(nqn, hostNQN) {
			continue
		}
		for _, p := range ports {
			if p.discovery {
				continue
			}
			if e, ok := portEntry(p, local, nqn, subTypeNVMe); ok {
				entries = append(entries, e)
			}
		}
	}
	if c.port != nil {
		if e, ok := portEntry(c.port, local, DiscoveryNQN, subTypeCurrentDisc); ok {
			entries = append(entries, e)
		}
	}
	h := fnv.New64a()
	for _, e := range entries {
		fmt.Fprintf(h, "%+v\n", e)
	}
	sum := h.Sum64()
	t.mu.Lock()
	if sum != t.mu.lastLog || t.mu.genctr == 0 {
		t.mu.genctr++
		t.mu.lastLog = sum
	}
	gen := t.mu.genctr
	t.mu.Unlock()
	return discoveryLog(gen, entries), nil
}

// portEntry is the discovery record of nqn on port p; a wildcard listen
// address is replaced by the local address the host reached.
func portEntry(p *port, local net.Addr, nqn string, subType uint8) (DiscoveryEntry, bool) {
	host, portStr, err := net.SplitHostPort(p.l.Addr().String())
	if err != nil {
		return DiscoveryEntry{}, false
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		if ta, ok := local.(*net.TCPAddr); ok {
			ip = ta.IP
		}
	}
	if ip == nil {
		return DiscoveryEntry{}, false
	}
	fam := uint8(adrFamIPv6)
	if ip4 := ip.To4(); ip4 != nil {
		fam, ip = adrFamIPv4, ip4
	}
	if _, err := strconv.Atoi(portStr); err != nil {
		return DiscoveryEntry{}, false
	}
	return DiscoveryEntry{
		TrType: trTypeTCP, AdrFam: fam, SubType: subType, PortID: p.id,
		Cntlid: dynamicCntlid, ASQSZ: minQueueSize, TrSvcID: portStr, SubNQN: nqn, TrAddr: ip.String(),
	}, true
}

// namespaceUUID derives a stable UUID (version 8, RFC 9562) from an ID.
func namespaceUUID(id [16]byte) [16]byte {
	sum := sha256.Sum256(append([]byte("ballast-nvme-uuid:"), id[:]...))
	var u [16]byte
	copy(u[:], sum[:16])
	u[6] = u[6]&0x0f | 0x80
	u[8] = u[8]&0x3f | 0x80
	return u
}
