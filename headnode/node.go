package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn/driver"
	"github.com/ballast-storage/ballast/volume"
)

// Node is one running head node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	blocks *blockstore.Store
	cache  *readCache // the primaries' read cache
	// dropCacheMetrics takes the cache out of the process's metrics.
	dropCacheMetrics func()
	disk             *diskGuard // admits client writes by the data disk's free space
	directory        *volume.Directory
	cons             *consensus.Node
	raft             *raft.Raft // the directory group's
	// groups are this node's members of the directory group (index 0)
	// and of every volume group (1..VolumeGroups).
	groups    []*vgroup
	server    *grpc.Server
	listeners []net.Listener
	pool      rpc.Pool
	sledWire  *sledWire // the framed connections to the sleds (sledwire.go)
	drops     chan uint64
	// confirmDeleted asks the rack whether a volume reported deleted is
	// gone (nil: deletedInRack); tests answer for it.
	confirmDeleted func(ctx context.Context, id uint64) (bool, error)

	repl *replicationServer
	// replWire serves replication over framed connections; nil when the
	// node replicates over gRPC only (Config.ReplicationWire).
	replWire *replWireServer
	// noReplWire holds when each secondary that did not speak framed
	// replication was found not to (head node id -> time.Time).
	noReplWire sync.Map
	io         *blockIOServer
	wire       *wireServer // block I/O over the framed protocol, beside gRPC
	// writeOps are the named writes this node runs (writeOps.go), and
	// resentWrites counts those found applied already, whole or in part.
	writeOps     opRegistry
	resentWrites atomic.Uint64
	admin        *adminServer
	leases       *leaseKeeper
	remote       *remoteIO
	proposer     *driver.Proposer   // commits transactions across groups
	keeper       *driver.Keeper     // recovers and forgets this node's groups' transactions
	stopBG       context.CancelFunc // ends the sled view and the monitors
	serving      sync.WaitGroup

	// incarnation is the data directory's (incarnation.go); registered
	// is set once every group has it.
	incarnation string
	// lostData: the node started over an emptied data directory that the
	// rack knew; it holds no copy of any volume it had (holdsOwnCopy).
	lostData   bool
	registered atomic.Bool

	mu        sync.Mutex
	primaries map[uint64]*primaryVolume
	closed    bool
}

// Start opens the node's stores, starts serving on every listen address
// and joins the directory group (bootstrapping it on first start).
func Start(cfg Config) (_ *Node, err error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("head node %s: %w", cfg.ID, err)
	}
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("headnode", cfg.ID),
		directory: volume.NewGroupDirectory(txnGroupOf(consensus.DirectoryGroup)),
		primaries: map[uint64]*primaryVolume{},
		drops:     make(chan uint64, 1024),
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	// Before any store opens: on a full disk it frees the reserve, so
	// that pebble can replay its logs rather than fail to start.
	if n.disk, err = openDiskGuard(cfg.DataDir, cfg.Disk, nil, n.log); err != nil {
		return nil, fmt.Errorf("head node %s: %w", cfg.ID, err)
	}
	var fresh bool
	if n.incarnation, fresh, err = loadIncarnation(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("head node %s: %w", cfg.ID, err)
	}
	if fresh {
		n.log.Info("new incarnation of the data directory", "incarnation", n.incarnation)
	}
	if n.blocks, err = blockstore.Open(filepath.Join(cfg.DataDir, "blocks"), blockstore.Options{
		CacheBytes: cfg.BlockCacheBytes, JournalPath: filepath.Join(cfg.DataDir, "journal"), JournalBytes: cfg.Storage.JournalBytes,
	}); err != nil {
		return nil, err
	}
	n.cache = newReadCache(cacheBytes(cfg.Storage.ReadCacheBytes))
	n.blocks.SetBlockHook(n.cache.follow)
	n.dropCacheMetrics = registerCacheMetrics(cfg.ID, n.cache)
	n.blocks.SetJournalPressureFunc(func() { go n.flushAll() })
	n.blocks.SetReleaseErrorFunc(func(err error) { n.log.Error("the journal cannot free what was flushed", "err", err) })
	n.remote = &remoteIO{
		cfg:   cfg.Storage,
		sled:  n.directory.Sled,
		stats: &storageStats{},
		log:   n.log,
	}
	n.sledWire = newSledWire()
	n.remote.shards = &grpcShards{
		addresses: func(id string) ([]string, bool) {
			s, ok := n.directory.Sled(id)
			if !ok {
				return nil, false
			}
			return s.Addresses, true
		},
		pool: &n.pool,
		wire: n.sledWire,
	}
	n.remote.view = newSledView(n.directory.Sleds, n.remote.shards, n.log)
	onDelete := func(v *ballastpb.Volume) {
		select {
		case n.drops <- v.Id:
		default:
			n.log.Warn("drop queue full; volume data left behind", "volume_id", v.Id)
		}
	}
	for id := 0; id <= cfg.VolumeGroups; id++ {
		g := &vgroup{id: uint64(id), fsm: volume.NewGroupDirectory(txnGroupOf(uint64(id)))}
		if id == 0 {
			g.fsm = n.directory
		}
		g.fsm.OnDelete = onDelete
		g.promoter = &promoter{node: n, group: g, cfg: cfg.Lease, clock: cfg.LeaseClock, log: n.log.With("group", id)}
		g.fsm.OnLeasesRenewed = g.promoter.renewed
		g.fsm.OnVolumeAdded = g.promoter.added
		n.groups = append(n.groups, g)
	}
	for _, a := range cfg.ListenAddresses {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("head node %s: listen: %w", cfg.ID, err)
		}
		n.listeners = append(n.listeners, l)
	}
	n.server = rpc.NewServer()
	n.cons, err = consensus.Open(consensus.Config{
		NodeID:  cfg.ID,
		Address: raft.ServerAddress(strings.Join(cfg.ListenAddresses, ",")),
		Dir:     filepath.Join(cfg.DataDir, "consensus"),
		Logger:  n.log,
		Dial: func(ctx context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error) {
			return n.pool.Get(rpc.SplitAddresses(string(addr)))
		},
	})
	if err != nil {
		return nil, err
	}
	n.cons.Register(n.server)
	for _, g := range n.groups {
		g.cons = n.cons
	}
	n.admin = &adminServer{node: n}
	ballastpb.RegisterAdminServer(n.server, n.admin)
	n.leases = newLeaseKeeper(n, cfg.Lease, cfg.LeaseClock)
	n.io = newBlockIOServer(cfg.IO, n.log, n.serveIO)
	n.wire = newWireServer(n.io, n.log)
	ballastpb.RegisterBlockIOServer(n.server, n.io)
	n.repl = &replicationServer{node: n}
	ballastpb.RegisterReplicationServer(n.server, n.repl)
	if cfg.ReplicationWire == ReplicationFramed {
		n.replWire = newReplWireServer(n.repl, n.log)
	}
	// A node that lost its data directory must not vote as before in the
	// groups that still count it (consensus/rejoin.go).
	rejoin := fresh && n.lostState()
	n.lostData = rejoin
	if rejoin {
		n.log.Warn("the rack knew this head node: its data directory was lost; rejoining every group without a vote until readmitted")
	}
	for _, g := range n.groups {
		switch {
		case rejoin:
			g.raft, err = n.cons.RejoinGroup(g.id, g.fsm)
		case cfg.Join:
			g.raft, err = n.cons.JoinGroup(g.id, g.fsm)
		default:
			g.raft, err = n.cons.StartGroup(g.id, g.fsm, groupServers(cfg.Peers, g.id))
		}
		if err != nil {
			return nil, err
		}
	}
	n.raft = n.groups[consensus.DirectoryGroup].raft
	if err := n.startTxn(n.server); err != nil {
		return nil, err
	}
	// Serve only now: every service needs the directory group, and a
	// request must never find it missing. Peers retry until we answer.
	// Each address serves gRPC and the framed block protocol (io_wire.go).
	for _, l := range n.listeners {
		n.serving.Add(1)
		go func() {
			defer n.serving.Done()
			if err := n.server.Serve(newWireListener(l, n.wire, n.replWire, n.log)); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				n.log.Error("serve", "addr", l.Addr(), "err", err)
			}
		}()
	}
	// Connect to every peer now, not at first use: each connection
	// health-checks its network paths from then on, so a cut network is
	// known (and shown in rack status) before traffic needs the path.
	for _, p := range cfg.Peers {
		if p.ID != cfg.ID {
			if _, err := n.pool.Get(p.Addresses); err != nil {
				n.log.Warn("connect to peer", "peer", p.ID, "err", err)
			}
		}
	}
	bg, stopBG := context.WithCancel(context.Background())
	n.stopBG = stopBG
	n.serving.Add(6)
	go func() {
		defer n.serving.Done()
		n.sweepLoop(bg)
	}()
	go func() {
		defer n.serving.Done()
		n.disk.run(bg)
	}()
	go func() {
		defer n.serving.Done()
		n.remote.view.run(bg, cfg.Storage.SledPollInterval, cfg.Storage.ShardTimeout)
	}()
	go func() {
		defer n.serving.Done()
		n.leases.run(bg)
	}()
	go func() {
		defer n.serving.Done()
		n.runPromoters(bg)
	}()
	n.serving.Add(2)
	go func() {
		defer n.serving.Done()
		n.spreadLeaders(bg)
	}()
	go func() {
		defer n.serving.Done()
		n.registerIncarnation(bg)
	}()
	if rejoin {
		n.serving.Add(1)
		go func() {
			defer n.serving.Done()
			n.readmitAll(bg)
		}()
	}
	go func() {
		defer n.serving.Done()
		n.watchSleds(bg)
	}()
	n.serving.Add(1)
	go n.dropLoop(bg)
	n.log.Info("head node started", "addresses", cfg.ListenAddresses)
	return n, nil
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

// ID returns the node's id.
func (n *Node) ID() string { return n.cfg.ID }

// WaitForLeader waits until the directory group has a leader.
func (n *Node) WaitForLeader(ctx context.Context) error {
	for {
		if _, id := n.raft.LeaderWithID(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("head node %s: no directory leader: %w", n.cfg.ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dropLoop reclaims the data of deleted volumes, off raft's FSM goroutine.
// A group's state machine reports a volume as deleted from its own view,
// which is not the rack's: a lagging node that installs a snapshot sees a
// volume that moved to another group leave this one. So a copy is dropped
// only once the directory, read linearizably, no longer knows the volume;
// when it cannot be asked, the copy stays and the stale sweep decides later.
func (n *Node) dropLoop(ctx context.Context) {
	defer n.serving.Done()
	confirm := n.confirmDeleted
	if confirm == nil {
		confirm = n.deletedInRack
	}
	for id := range n.drops {
		gone, err := confirm(ctx, id)
		switch {
		case err != nil:
			n.log.Warn("volume reported deleted, but the directory cannot confirm it; its copy stays for the stale sweep", "volume_id", id, "err", err)
			continue
		case !gone:
			n.log.Warn("volume reported deleted is still in the directory; its copy stays", "volume_id", id)
			continue
		}
		n.mu.Lock()
		pv := n.primaries[id]
		delete(n.primaries, id)
		n.mu.Unlock()
		if pv != nil {
			pv.Close()
		}
		n.repl.endSessions(id)
		if err := n.blocks.DropVolume(id); err != nil {
			n.log.Error("drop deleted volume", "volume_id", id, "err", err)
		}
	}
}

// deletedInRack says whether the directory group, read linearizably, no
// longer holds volume id: neither a placement (volumes in volume groups)
// nor a record of its own (volumes from before there were volume groups).
// A delete removes both in one transaction; a move keeps the placement.
func (n *Node) deletedInRack(ctx context.Context, id uint64) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dir, err := n.readGroup(rctx, consensus.DirectoryGroup)
	if err != nil {
		return false, err
	}
	return !directoryHolds(dir, id), nil
}

// directoryHolds says whether a read of the directory group names volume id.
func directoryHolds(dir *ballastpb.ReadGroupResponse, id uint64) bool {
	for _, p := range dir.Placements {
		if p.Id == id {
			return true
		}
	}
	for _, v := range dir.Volumes {
		if v.Id == id {
			return true
		}
	}
	return false
}

// Close stops serving and closes every store. In-flight writes fail.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	prims := n.primaries
	n.primaries = nil
	n.mu.Unlock()

	var errs []error
	if n.stopBG != nil {
		n.stopBG()
	}
	n.stopTxn()
	if n.server != nil {
		// Stop, not GracefulStop: client streams stay open for as long as
		// the agent lives and would hold shutdown forever.
		n.server.Stop()
	}
	if n.wire != nil {
		n.wire.close()
	}
	if n.replWire != nil {
		n.replWire.close()
	}
	for _, l := range n.listeners {
		l.Close()
	}
	for _, pv := range prims {
		pv.Close()
	}
	if n.dropCacheMetrics != nil {
		n.dropCacheMetrics()
	}
	if n.wire != nil {
		n.wire.wait()
	}
	if n.replWire != nil {
		n.replWire.wait()
	}
	if n.cons != nil {
		errs = append(errs, n.cons.Close())
	}
	if n.raft != nil {
		close(n.drops)
	}
	n.serving.Wait()
	if n.sledWire != nil {
		n.sledWire.close()
	}
	n.pool.Close()
	if n.blocks != nil {
		errs = append(errs, n.blocks.Close())
	}
	return errors.Join(errs...)
}

// flushAll asks every volume this node is primary of to flush soon: the
// journal is filling.
func (n *Node) flushAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, pv := range n.primaries {
		if pv.maint != nil {
			pv.maint.kick()
		}
	}
}
