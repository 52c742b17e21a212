package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
)

// DialFunc returns a client connection to the node with the given raft
// address (the comma-joined list of its network addresses). The connection
// belongs to the caller's pool: the transport never closes it.
type DialFunc func(ctx context.Context, addr raft.ServerAddress) (grpc.ClientConnInterface, error)

// Defaults of Config.
const (
	DefaultRPCTimeout                = 10 * time.Second
	DefaultSnapshotTimeout           = time.Minute
	DefaultSnapshotMinBytesPerSecond = 1 << 20
	DefaultSnapshotChunkBytes        = 1 << 20
	DefaultMaxMessageBytes           = 4 << 20
	DefaultMaxPipelineInFlight       = 2
	DefaultGroupQueueLen             = 64
	DefaultHeartbeatQueueLen         = 8
	DefaultStreamQueueLen            = 256
	DefaultMaxInFlightPerStream      = 4096
)

// maxRequestTimeout bounds the timeout a request from the network may ask
// the serving node to spend on it.
const maxRequestTimeout = 5 * time.Minute

// Config configures a Manager. Zero fields take their defaults.
type Config struct {
	// NodeID is this node's raft server id; it names the node to the
	// peers it opens streams to. Required.
	NodeID string
	// Dial connects to a node by its raft address. Required.
	Dial DialFunc
	// Logger receives stream breaks (warn) and stream set-up (debug).
	Logger *slog.Logger

	// RPCTimeout bounds every raft RPC except InstallSnapshot, from the
	// call until its response, including opening the stream.
	RPCTimeout time.Duration
	// SnapshotTimeout plus Size/SnapshotMinBytesPerSecond bounds one
	// InstallSnapshot.
	SnapshotTimeout           time.Duration
	SnapshotMinBytesPerSecond int64
	// SnapshotChunkBytes is the size of one snapshot data message.
	SnapshotChunkBytes int
	// MaxMessageBytes bounds one request on the multiplexed stream. A
	// larger request fails alone with ErrMessageTooLarge instead of
	// breaking the stream for every group. It must not exceed the peers'
	// gRPC receive limit (gRPC's default is 4 MiB).
	MaxMessageBytes int
	// MaxPipelineInFlight bounds the AppendEntries requests one pipeline
	// has outstanding; below 2 disables pipelining.
	MaxPipelineInFlight int
	// GroupQueueLen bounds the requests queued for one group on the
	// serving side; beyond it requests are refused with ErrBusy.
	GroupQueueLen int
	// HeartbeatQueueLen bounds the heartbeats queued for one group.
	HeartbeatQueueLen int
	// StreamQueueLen bounds the messages queued for sending on one stream
	// (requests on the dialing side, responses on the serving side).
	StreamQueueLen int
	// MaxInFlightPerStream bounds the requests awaiting a response on one
	// outbound stream.
	MaxInFlightPerStream int
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = DefaultRPCTimeout
	}
	if c.SnapshotTimeout == 0 {
		c.SnapshotTimeout = DefaultSnapshotTimeout
	}
	if c.SnapshotMinBytesPerSecond == 0 {
		c.SnapshotMinBytesPerSecond = DefaultSnapshotMinBytesPerSecond
	}
	if c.SnapshotChunkBytes == 0 {
		c.SnapshotChunkBytes = DefaultSnapshotChunkBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxPipelineInFlight == 0 {
		c.MaxPipelineInFlight = DefaultMaxPipelineInFlight
	}
	if c.GroupQueueLen == 0 {
		c.GroupQueueLen = DefaultGroupQueueLen
	}
	if c.HeartbeatQueueLen == 0 {
		c.HeartbeatQueueLen = DefaultHeartbeatQueueLen
	}
	if c.StreamQueueLen == 0 {
		c.StreamQueueLen = DefaultStreamQueueLen
	}
	if c.MaxInFlightPerStream == 0 {
		c.MaxInFlightPerStream = DefaultMaxInFlightPerStream
	}
	return c
}

// validate reports the first invalid field of a defaulted config.
func (c Config) validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("transport: Config.NodeID is required")
	case c.Dial == nil:
		return errors.New("transport: Config.Dial is required")
	case c.RPCTimeout < 0 || c.SnapshotTimeout < 0:
		return errors.New("transport: timeouts must not be negative")
	case c.SnapshotMinBytesPerSecond < 0:
		return errors.New("transport: SnapshotMinBytesPerSecond must not be negative")
	case c.MaxMessageBytes < 1024:
		return fmt.Errorf("transport: MaxMessageBytes %d is below 1 KiB", c.MaxMessageBytes)
	case c.SnapshotChunkBytes < 1 || c.SnapshotChunkBytes > c.MaxMessageBytes-512:
		return fmt.Errorf("transport: SnapshotChunkBytes %d must be in [1, MaxMessageBytes-512]", c.SnapshotChunkBytes)
	case c.GroupQueueLen < 1 || c.HeartbeatQueueLen < 1 || c.StreamQueueLen < 1 || c.MaxInFlightPerStream < 1:
		return errors.New("transport: queue lengths must be positive")
	}
	return nil
}

// snapshotTimeout bounds an InstallSnapshot of size bytes.
func (c Config) snapshotTimeout(size int64) time.Duration {
	d := c.SnapshotTimeout
	if size > 0 && c.SnapshotMinBytesPerSecond > 0 {
		d += time.Duration(float64(size) / float64(c.SnapshotMinBytesPerSecond) * float64(time.Second))
	}
	return d
}
