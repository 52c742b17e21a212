package consensus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/consensus/logstore"
	"github.com/ballast-storage/ballast/consensus/transport"
	"github.com/ballast-storage/ballast/internal/durable"
)

// DirectoryGroup is the id of the directory group.
const DirectoryGroup uint64 = 0

// Config configures a node's consensus layer.
type Config struct {
	// NodeID is this node's raft server id in every group.
	NodeID string
	// Address is this node's raft address: every network address of the
	// node, comma-separated; Dial understands it.
	Address raft.ServerAddress
	// Dir holds the node's pebble log store and its groups' snapshots.
	Dir string
	// Dial connects to another node by its raft address.
	Dial   func(ctx context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error)
	Logger *slog.Logger
	// Raft, if set, is the template of every group's raft configuration;
	// LocalID and Logger are set per group.
	Raft *raft.Config
}

// ErrClosed is returned by StartGroup, JoinGroup and StopGroup after
// Close.
var ErrClosed = errors.New("node closed")

// ErrNoGroup is returned for a group this node has no running member of.
var ErrNoGroup = errors.New("group not running on this node")

// Node is one process's share of every consensus group it belongs to.
type Node struct {
	cfg        Config
	logs       *logstore.Store
	transports *transport.Manager

	mu     sync.Mutex
	groups map[uint64]*group
	// starting holds the ids of groups being built outside mu, so that a
	// second start of the same id fails while the first one runs.
	starting map[uint64]struct{}
	closed   bool
	// busy counts the starts and stops in progress: Close waits for
	// them, since they use the log store and the transport it is about to
	// close.
	busy sync.WaitGroup
}

// group is this node's running member of one group.
type group struct {
	r     *raft.Raft
	trans *trackingTransport

	// raft queues VerifyLeader requests in a buffered channel that its
	// Shutdown does not drain: a request still queued when the group
	// shuts down is never answered, and whoever waits for it waits
	// forever. So verifies are counted, and shutdown refuses new ones and
	// lets the running main loop answer those queued (it does within a
	// leader lease) before it stops raft.
	verifyMu sync.Mutex
	stopping bool
	verifies sync.WaitGroup
}

// verifyDrainTimeout bounds how long a shutdown waits for the queued
// verifies; past it, raft stops anyway and their waiters stay blocked.
const verifyDrainTimeout = 10 * time.Second

// verifyLeader asks raft to confirm the leadership with a quorum and waits
// for the answer or for ctx to end.
func (g *group) verifyLeader(ctx context.Context) error {
	g.verifyMu.Lock()
	if g.stopping {
		g.verifyMu.Unlock()
		return raft.ErrRaftShutdown
	}
	g.verifies.Add(1)
	g.verifyMu.Unlock()
	f := g.r.VerifyLeader()
	done := make(chan error, 1)
	go func() {
		defer g.verifies.Done()
		done <- f.Error()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// shutdown stops raft once the verifies in flight are answered.
func (g *group) shutdown() error {
	g.verifyMu.Lock()
	g.stopping = true
	g.verifyMu.Unlock()
	drained := make(chan struct{})
	go func() {
		g.verifies.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(verifyDrainTimeout):
	}
	return g.r.Shutdown().Error()
}

// Open opens the node's log store and transport. Register the transport on
// the node's gRPC server before starting groups.
func Open(cfg Config) (*Node, error) {
	if cfg.NodeID == "" || cfg.Address == "" || cfg.Dir == "" || cfg.Dial == nil {
		return nil, errors.New("consensus: NodeID, Address, Dir and Dial are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := durable.MkdirAll(vfs.Default, cfg.Dir); err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	logs, err := logstore.Open(filepath.Join(cfg.Dir, "raftlog"))
	if err != nil {
		return nil, err
	}
	// The transport logs where the node does (stream breaks as warnings).
	transports, err := transport.NewManagerWithConfig(transport.Config{NodeID: cfg.NodeID, Dial: cfg.Dial, Logger: cfg.Logger})
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("consensus: %w", err)
	}
	return &Node{
		cfg:        cfg,
		logs:       logs,
		transports: transports,
		groups:     map[uint64]*group{},
		starting:   map[uint64]struct{}{},
	}, nil
}

// Register serves the raft transport on s.
func (n *Node) Register(s *grpc.Server) { n.transports.Register(s) }

// StartGroup starts this node's member of a group. On the first start of
// the group on this node it bootstraps the group with voters; every voter
// bootstraps with the same configuration, which raft allows. A member with
// state on disk restarts from it and ignores voters.
//
// A server added to a running group must not bootstrap (it would start a
// second history of the group): start it with JoinGroup instead.
func (n *Node) StartGroup(groupID uint64, fsm raft.FSM, voters []raft.Server) (*raft.Raft, error) {
	return n.start(groupID, fsm, &raft.Configuration{Servers: slices.Clone(voters)}, false)
}

// JoinGroup starts this node's member of a group without bootstrapping it.
// A new member has an empty configuration, so it never starts an election:
// it waits for the group's leader to add it (AddVoter or MoveVoter on the
// leader's node) and then catches up from the leader's log or snapshot. A
// member with state on disk restarts from it, as with StartGroup.
func (n *Node) JoinGroup(groupID uint64, fsm raft.FSM) (*raft.Raft, error) {
	return n.start(groupID, fsm, nil, false)
}

// start builds and starts a member of groupID, bootstrapping it with
// bootstrap if it has no state and bootstrap is not nil, abstaining from
// elections if it has no state and rejoin is set (rejoin.go). The group
// id is reserved under n.mu but built outside it, so that groups start in
// parallel.
func (n *Node) start(groupID uint64, fsm raft.FSM, bootstrap *raft.Configuration, rejoin bool) (*raft.Raft, error) {
	if fsm == nil {
		return nil, fmt.Errorf("consensus: start group %d: nil FSM", groupID)
	}
	if err := n.reserve(groupID); err != nil {
		return nil, err
	}
	g, err := n.newGroup(groupID, fsm, bootstrap, rejoin)
	n.mu.Lock()
	delete(n.starting, groupID)
	if err == nil {
		// Close waits for this start before it takes the groups, so a
		// group published here is shut down by a concurrent Close.
		n.groups[groupID] = g
	}
	n.mu.Unlock()
	n.busy.Done()
	if err != nil {
		return nil, err
	}
	return g.r, nil
}

// reserve marks groupID as starting, or fails if the group is already
// running or starting, or the node is closed.
func (n *Node) reserve(groupID uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("consensus: start group %d: %w", groupID, ErrClosed)
	}
	if _, ok := n.groups[groupID]; ok {
		return fmt.Errorf("consensus: group %d already started", groupID)
	}
	if _, ok := n.starting[groupID]; ok {
		return fmt.Errorf("consensus: group %d already starting", groupID)
	}
	n.starting[groupID] = struct{}{}
	n.busy.Add(1)
	return nil
}

// newGroup builds a group's stores and transport and starts its raft.
func (n *Node) newGroup(groupID uint64, fsm raft.FSM, bootstrap *raft.Configuration, rejoin bool) (*group, error) {
	var rc raft.Config
	if n.cfg.Raft != nil {
		rc = *n.cfg.Raft
	} else {
		rc = *raft.DefaultConfig()
		// Directory changes are rare and small: snapshot often enough that
		// a restart replays little.
		rc.SnapshotThreshold = 1024
		rc.SnapshotInterval = 30 * time.Second
		// An idle group's leader sends an empty AppendEntries to every
		// follower each CommitTimeout (default 50 ms); with 17 groups per
		// node that is most of an idle rack's CPU. Followers learn of a
		// commit at the latest this much later.
		rc.CommitTimeout = 250 * time.Millisecond
	}
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = newHCLogger(n.cfg.Logger.With("group", groupID))
	store := n.logs.Group(groupID)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(
		filepath.Join(n.cfg.Dir, "snapshots", fmt.Sprintf("group-%d", groupID)), 2, rc.Logger)
	if err != nil {
		return nil, fmt.Errorf("consensus: snapshot store of group %d: %w", groupID, err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("consensus: state of group %d: %w", groupID, err)
	}
	trans := newTrackingTransport(n.transports.Transport(groupID, n.cfg.Address))
	if !has && rejoin {
		trans.abstain(n.cfg.NodeID)
	}
	if !has && bootstrap != nil {
		if err := raft.BootstrapCluster(&rc, store, store, snaps, trans, *bootstrap); err != nil {
			trans.Close()
			return nil, fmt.Errorf("consensus: bootstrap group %d: %w", groupID, err)
		}
	}
	r, err := raft.NewRaft(&rc, fsm, store, store, snaps, trans)
	if err != nil {
		// raft closes the transport only on Shutdown; close it here so
		// that a retry registers the group afresh.
		trans.Close()
		return nil, fmt.Errorf("consensus: start group %d: %w", groupID, err)
	}
	return &group{r: r, trans: trans}, nil
}

// StopGroup shuts this node's member of a group down, as after it was
// removed from the group. Its state stays on disk: a later StartGroup or
// JoinGroup restarts it from there.
func (n *Node) StopGroup(groupID uint64) error {
	n.mu.Lock()
	if n.closed {
		// Close shuts the group down, if it has not yet.
		n.mu.Unlock()
		return fmt.Errorf("consensus: stop group %d: %w", groupID, ErrClosed)
	}
	g, ok := n.groups[groupID]
	if !ok {
		n.mu.Unlock()
		return fmt.Errorf("consensus: stop group %d: %w", groupID, ErrNoGroup)
	}
	delete(n.groups, groupID)
	n.busy.Add(1)
	n.mu.Unlock()
	defer n.busy.Done()
	if err := g.shutdown(); err != nil {
		return fmt.Errorf("consensus: shut down group %d: %w", groupID, err)
	}
	return nil
}

// group returns this node's running member of groupID, or ErrNoGroup;
// callers add the context.
func (n *Node) group(groupID uint64) (*group, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	g, ok := n.groups[groupID]
	if !ok {
		return nil, ErrNoGroup
	}
	return g, nil
}

// snapshotGroups returns a copy of the running groups, to use without
// holding n.mu.
func (n *Node) snapshotGroups() map[uint64]*group {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.groups)
}

// Close shuts every group down, then the transport and the log store. It
// waits for the starts and stops in progress first; later ones fail with
// ErrClosed. Closing a closed node does nothing.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.busy.Wait()
	n.mu.Lock()
	groups := n.groups
	n.groups = map[uint64]*group{}
	n.mu.Unlock()
	var errs []error
	for id, g := range groups {
		if err := g.shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("shut down group %d: %w", id, err))
		}
	}
	n.transports.Close()
	errs = append(errs, n.logs.Close())
	return errors.Join(errs...)
}

// newHCLogger routes raft's hclog output into slog. hclog writes one JSON
// object per line; slogWriter turns each into a record at the same level,
// with its fields as attributes.
func newHCLogger(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      hclog.Warn,
		JSONFormat: true,
		Output:     slogWriter{l},
	})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	var rec map[string]any
	if err := json.Unmarshal(p, &rec); err != nil {
		w.l.Warn(strings.TrimSpace(string(p)))
		return len(p), nil
	}
	level := slog.LevelInfo
	switch rec["@level"] {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	msg, _ := rec["@message"].(string)
	var attrs []any
	for _, k := range slices.Sorted(maps.Keys(rec)) {
		if !strings.HasPrefix(k, "@") {
			attrs = append(attrs, k, rec[k])
		}
	}
	w.l.Log(context.Background(), level, msg, attrs...)
	return len(p), nil
}

var _ io.Writer = slogWriter{}
