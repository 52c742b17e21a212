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

// Node is one process's share of every consensus group it belongs to.
type Node struct {
	cfg        Config
	logs       *logstore.Store
	transports *transport.Manager

	mu     sync.Mutex
	groups map[uint64]*raft.Raft
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
		groups:     map[uint64]*raft.Raft{},
	}, nil
}

// Register serves the raft transport on s.
func (n *Node) Register(s *grpc.Server) { n.transports.Register(s) }

// StartGroup starts this node's member of a group. On the first start of
// the group on this node it bootstraps the group with voters; every voter
// bootstraps with the same configuration, which raft allows.
func (n *Node) StartGroup(groupID uint64, fsm raft.FSM, voters []raft.Server) (*raft.Raft, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.groups[groupID]; ok {
		return nil, fmt.Errorf("consensus: group %d already started", groupID)
	}
	var rc raft.Config
	if n.cfg.Raft != nil {
		rc = *n.cfg.Raft
	} else {
		rc = *raft.DefaultConfig()
		// Directory changes are rare and small: snapshot often enough that
		// a restart replays little.
		rc.SnapshotThreshold = 1024
		rc.SnapshotInterval = 30 * time.Second
	}
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = newHCLogger(n.cfg.Logger.With("group", groupID))
	store := n.logs.Group(groupID)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(
		filepath.Join(n.cfg.Dir, "snapshots", fmt.Sprintf("group-%d", groupID)), 2, rc.Logger)
	if err != nil {
		return nil, fmt.Errorf("consensus: snapshot store of group %d: %w", groupID, err)
	}
	trans := n.transports.Transport(groupID, n.cfg.Address)
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("consensus: state of group %d: %w", groupID, err)
	}
	if !has {
		if err := raft.BootstrapCluster(&rc, store, store, snaps, trans, raft.Configuration{Servers: voters}); err != nil {
			return nil, fmt.Errorf("consensus: bootstrap group %d: %w", groupID, err)
		}
	}
	r, err := raft.NewRaft(&rc, fsm, store, store, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("consensus: start group %d: %w", groupID, err)
	}
	n.groups[groupID] = r
	return r, nil
}

// Close shuts every group down, then the transport and the log store.
func (n *Node) Close() error {
	n.mu.Lock()
	groups := n.groups
	n.groups = map[uint64]*raft.Raft{}
	n.mu.Unlock()
	var errs []error
	for id, r := range groups {
		if err := r.Shutdown().Error(); err != nil {
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
