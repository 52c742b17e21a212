package sled

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"google.golang.org/grpc"

	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// Config configures one sled controller.
type Config struct {
	// ID names the sled in the rack.
	ID string
	// DataDir holds the sled's metadata and, unless DevicePaths is set,
	// its devices d0 ... d<Devices-1>.
	DataDir string
	// Devices is the number of device directories to use under DataDir.
	Devices int
	// DevicePaths, if set, are the device directories (Devices is ignored).
	DevicePaths []string
	// ListenAddresses are the sled's addresses, one per network (A, B).
	ListenAddresses []string
	// DeviceCapacityBytes caps what each device may hold (0: the free
	// space of its filesystem plus what it holds).
	DeviceCapacityBytes uint64
	// ScrubBytesPerSecond bounds the scrubber (0: DefaultScrubBytesPerSecond;
	// negative: no scrubbing).
	ScrubBytesPerSecond int64
	// ScrubBusyBytesPerSecond bounds the scrubber while clients read or
	// write (0: a sixteenth of ScrubBytesPerSecond; negative: it waits
	// for them to be quiet).
	ScrubBusyBytesPerSecond int64
	// OpenShardFiles bounds the shard files kept open for reads (0:
	// DefaultOpenShardFiles, or a sixteenth of the process's limit on
	// open files if that is less).
	OpenShardFiles int
	Logger         *slog.Logger

	// fs, a test knob, replaces the devices' filesystem.
	fs deviceFS
}

// defaultOpenShardFiles is DefaultOpenShardFiles, or a sixteenth of the
// process's limit on open files if that is less (a demo runs seven sleds
// in one process, beside its head nodes' files and connections).
func defaultOpenShardFiles() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == 0 {
		return DefaultOpenShardFiles
	}
	return int(max(16, min(DefaultOpenShardFiles, lim.Cur/16)))
}

// DefaultScrubBytesPerSecond is the scrubber's default rate.
const DefaultScrubBytesPerSecond = 16 << 20

func (c *Config) ensureDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(c.DevicePaths) == 0 {
		for i := range c.Devices {
			c.DevicePaths = append(c.DevicePaths, filepath.Join(c.DataDir, fmt.Sprintf("d%d", i)))
		}
	}
	if c.ScrubBytesPerSecond == 0 {
		c.ScrubBytesPerSecond = DefaultScrubBytesPerSecond
	}
	if c.OpenShardFiles == 0 {
		c.OpenShardFiles = defaultOpenShardFiles()
	}
}

func (c *Config) validate() error {
	switch {
	case c.ID == "":
		return errors.New("sled config: ID is required")
	case c.DataDir == "":
		return errors.New("sled config: DataDir is required")
	case len(c.DevicePaths) == 0:
		return errors.New("sled config: at least one device is required")
	case len(c.ListenAddresses) == 0:
		return errors.New("sled config: at least one listen address is required")
	case c.OpenShardFiles < 1:
		return fmt.Errorf("sled config: %d open shard files: want at least 1", c.OpenShardFiles)
	}
	return nil
}

// Sled is a running sled controller: its store, its gRPC server and the
// framed shard protocol's (wire.go) on every listen address, and its
// scrubber.
type Sled struct {
	cfg       Config
	store     *Store
	scrub     *scrubber
	server    *grpc.Server
	wire      *wireServer
	listeners []net.Listener
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	log       *slog.Logger
}

// Start opens the sled's store and serves it.
func Start(cfg Config) (_ *Sled, err error) {
	cfg.ensureDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("sled %s: %w", cfg.ID, err)
	}
	s := &Sled{cfg: cfg, log: cfg.Logger.With("sled", cfg.ID)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.store, err = openStore(storeOptions{
		id: cfg.ID, dataDir: cfg.DataDir, devicePaths: cfg.DevicePaths, capacityBytes: cfg.DeviceCapacityBytes,
		fs: cfg.fs, logger: s.log, metrics: processMetrics(), maxOpenFiles: cfg.OpenShardFiles,
	})
	if err != nil {
		return nil, err
	}
	for _, a := range cfg.ListenAddresses {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("sled %s: listen: %w", cfg.ID, err)
		}
		s.listeners = append(s.listeners, l)
	}
	s.server = rpc.NewServer()
	sledpb.RegisterSledServer(s.server, &server{sled: s})
	s.wire = newWireServer(s.store)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.scrub = newScrubber(s.store, uint64(max(cfg.ScrubBytesPerSecond, 0)), cfg.ScrubBusyBytesPerSecond)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.scrub.run(ctx)
	}()
	for _, l := range s.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			mux := rpc.NewSniffListener(l, s.wire.route, "the framed shard protocol", s.log)
			if err := s.server.Serve(mux); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				s.log.Error("serve", "addr", l.Addr(), "err", err)
			}
		}()
	}
	var devs []string
	for _, d := range s.store.Devices() {
		devs = append(devs, d.ID+"="+d.Path)
	}
	s.log.Info("sled started", "addresses", cfg.ListenAddresses, "devices", devs, "shards", len(s.store.List(0, true)))
	return s, nil
}

// ID is the sled's id.
func (s *Sled) ID() string { return s.cfg.ID }

// Addresses are the addresses the sled listens on.
func (s *Sled) Addresses() []string {
	var out []string
	for _, l := range s.listeners {
		out = append(out, l.Addr().String())
	}
	return out
}

// Store is the sled's shard store.
func (s *Sled) Store() *Store { return s.store }

// Close stops serving and closes the store.
func (s *Sled) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	if s.server != nil {
		s.server.Stop()
	}
	if s.wire != nil {
		s.wire.close()
	}
	for _, l := range s.listeners {
		l.Close()
	}
	s.wg.Wait()
	if s.store != nil {
		return s.store.Close()
	}
	return nil
}
