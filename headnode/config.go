package headnode

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/volume"
)

// Peer is one head node of the rack: its id and one address per network.
type Peer struct {
	ID        string
	Addresses []string
}

// The choices of Config.ReplicationWire.
const (
	ReplicationFramed = "framed"
	ReplicationGRPC   = "grpc"
)

// Config configures one head node.
type Config struct {
	// ID names this head node in the rack; it must appear in Peers.
	ID string
	// ListenAddresses are this node's addresses, one per network (A, B).
	ListenAddresses []string
	// DataDir holds the node's block store and consensus state.
	DataDir string
	// Join starts this node's members of every group without founding the
	// groups: the node is joining a running rack, and waits for
	// AddHeadNode to make it a member.
	Join bool
	// Peers lists the head nodes of the rack, this one included: those it
	// was founded with (head nodes added later are recorded in the
	// directory group). A joining node lists the rack as it is.
	Peers []Peer
	// ReplicationTimeout bounds how long a write waits for its secondary
	// before it fails with an I/O error.
	ReplicationTimeout time.Duration
	// Lease times the primaries' leases and so failover (default
	// volume.DefaultLeaseConfig).
	Lease volume.LeaseConfig
	// LeaseClock times every lease decision: the primary's own lease,
	// its renewals, and the group leader's wait before a promotion
	// (default clock.Boot(), which counts time the machine was
	// suspended). Tests pass a clock.Manual.
	LeaseClock clock.Clock
	// VolumeGroups is the number of volume groups (default 16) besides
	// the directory group; every head node is a member of each.
	VolumeGroups int
	// LeaderWaitTimeout bounds how long an admin call waits for the
	// directory group to have a leader.
	LeaderWaitTimeout time.Duration
	// BlockCacheBytes sizes the block store's metadata cache (0: 256 MiB).
	BlockCacheBytes int64
	// IO bounds the block I/O held for agents' streams.
	IO IOConfig
	// ReplicationWire is how this node replicates to secondaries and is
	// replicated to: ReplicationFramed (the default: framed connections,
	// gRPC with a node that does not speak them) or ReplicationGRPC (gRPC
	// only, neither asking for framed connections nor serving them: as a
	// node of a build before them).
	ReplicationWire string
	// Storage configures segments on the sleds: erasure coding, flush,
	// compaction, rebuild.
	Storage StorageConfig
	// Disk sets how much of the data disk is kept free: below that,
	// client writes are refused (diskspace.go).
	Disk   DiskConfig
	Logger *slog.Logger
}

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.ReplicationTimeout == 0 {
		// Long enough for a lost secondary to be replaced and mirrored:
		// writes wait through that rather than fail.
		c.ReplicationTimeout = 20 * time.Second
	}
	if c.Lease == (volume.LeaseConfig{}) {
		c.Lease = volume.DefaultLeaseConfig
	}
	if c.LeaseClock == nil {
		c.LeaseClock = clock.Boot()
	}
	if c.VolumeGroups == 0 {
		c.VolumeGroups = DefaultVolumeGroups
	}
	if c.LeaderWaitTimeout == 0 {
		c.LeaderWaitTimeout = 10 * time.Second
	}
	if c.ReplicationWire == "" {
		c.ReplicationWire = ReplicationFramed
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Storage.EnsureDefaults()
	c.IO.EnsureDefaults()
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.ID == "" {
		return errors.New("headnode config: ID is required")
	}
	if len(c.ListenAddresses) == 0 {
		return errors.New("headnode config: at least one listen address is required")
	}
	if c.DataDir == "" {
		return errors.New("headnode config: DataDir is required")
	}
	seen := map[string]bool{}
	for _, p := range c.Peers {
		if p.ID == "" || len(p.Addresses) == 0 {
			return fmt.Errorf("headnode config: peer %q needs an id and addresses", p.ID)
		}
		if seen[p.ID] {
			return fmt.Errorf("headnode config: peer %q listed twice", p.ID)
		}
		seen[p.ID] = true
	}
	if !seen[c.ID] {
		return fmt.Errorf("headnode config: this node %q is not among the peers", c.ID)
	}
	if c.Disk.MinFreeBytes < 0 || c.Disk.ResumeFreeBytes < 0 {
		return errors.New("headnode config: Disk.MinFreeBytes and Disk.ResumeFreeBytes may not be negative")
	}
	if c.ReplicationWire != "" && c.ReplicationWire != ReplicationFramed && c.ReplicationWire != ReplicationGRPC {
		return fmt.Errorf("headnode config: ReplicationWire %q: want %q or %q", c.ReplicationWire, ReplicationFramed, ReplicationGRPC)
	}
	if err := c.Lease.Validate(); err != nil {
		return err
	}
	if err := c.IO.Validate(); err != nil {
		return err
	}
	return c.Storage.Validate()
}
