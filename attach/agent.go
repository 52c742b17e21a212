package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/attach/nbd"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// AgentConfig configures an agent.
type AgentConfig struct {
	// HeadNodes lists every head node's addresses (one per network).
	HeadNodes [][]string
	// NBDListen is the NBD server's address, e.g. 127.0.0.1:10809.
	NBDListen string
	Logger    *slog.Logger
}

// Agent serves the rack's volumes to the local hypervisor.
type Agent struct {
	client   *Client
	nbd      *nbd.Server
	listener net.Listener
	log      *slog.Logger
	cancel   context.CancelFunc
	done     sync.WaitGroup
}

// StartAgent starts serving NBD.
func StartAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.HeadNodes) == 0 {
		return nil, errors.New("agent: at least one head node is required")
	}
	l, err := net.Listen("tcp", cfg.NBDListen)
	if err != nil {
		return nil, fmt.Errorf("agent: listen for NBD: %w", err)
	}
	a := &Agent{
		client:   &Client{HeadNodes: cfg.HeadNodes, Logger: cfg.Logger},
		listener: l,
		log:      cfg.Logger.With("role", "agent"),
	}
	a.nbd = &nbd.Server{Exports: exports{a.client}, Logger: a.log}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.done.Add(1)
	go func() {
		defer a.done.Done()
		if err := a.nbd.Serve(ctx, l); err != nil && ctx.Err() == nil {
			a.log.Error("NBD server stopped", "err", err)
		}
	}()
	a.log.Info("serving NBD", "addr", l.Addr().String())
	return a, nil
}

// NBDAddr is the address the NBD server listens on.
func (a *Agent) NBDAddr() net.Addr { return a.listener.Addr() }

// Client is the agent's client of the head nodes.
func (a *Agent) Client() *Client { return a.client }

// Close stops serving and closes every connection.
func (a *Agent) Close() error {
	a.cancel()
	a.nbd.Close()
	a.done.Wait()
	a.client.Close()
	return nil
}

// exports resolves NBD export names to volumes.
type exports struct{ client *Client }

func (e exports) Open(ctx context.Context, name string) (nbd.Backend, error) {
	v, err := e.client.OpenVolume(ctx, name)
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("%w: %s", nbd.ErrUnknownExport, name)
	}
	if err != nil {
		return nil, err
	}
	return device{v}, nil
}

func (e exports) List(ctx context.Context) ([]string, error) {
	var names []string
	err := e.client.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		resp, err := a.ListVolumes(ctx, &ballastpb.ListVolumesRequest{})
		if err != nil {
			return err
		}
		for _, v := range resp.Volumes {
			names = append(names, v.Name)
		}
		return nil
	})
	return names, err
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

func (d device) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return d.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE, Offset: off, Data: p, Fua: fua})
}

func (d device) Flush(ctx context.Context) error {
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
	return replyError(r)
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
	default:
		return fmt.Errorf("%w: %s", blockdev.ErrIO, r.Error)
	}
}
