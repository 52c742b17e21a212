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
	return nbdVolume{v}, nil
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

// nbdVolume adapts a Volume to the NBD server's backend.
type nbdVolume struct{ v *Volume }

// NewDevice returns a volume as a block device with NBD's error classes:
// the agent's NBD exports are built from it, and tests drive it directly.
func NewDevice(v *Volume) nbd.Backend { return nbdVolume{v} }

func (b nbdVolume) Size() uint64 { return b.v.Size() }
func (b nbdVolume) Close() error { return b.v.Close() }

func (b nbdVolume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	r, err := b.v.do(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_READ, Offset: off, Length: uint64(len(p))})
	if err != nil {
		return err
	}
	if err := replyError(r, false); err != nil {
		return err
	}
	if len(r.Data) != len(p) {
		return fmt.Errorf("read %d bytes at %d: head node returned %d", len(p), off, len(r.Data))
	}
	copy(p, r.Data)
	return nil
}

func (b nbdVolume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return b.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE, Offset: off, Data: p, Fua: fua}, true)
}

func (b nbdVolume) Flush(ctx context.Context) error {
	return b.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_FLUSH}, false)
}

func (b nbdVolume) Trim(ctx context.Context, off, length uint64) error {
	return b.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_TRIM, Offset: off, Length: length}, false)
}

func (b nbdVolume) WriteZeroes(ctx context.Context, off, length uint64, noHole bool) error {
	return b.run(ctx, &ballastpb.IORequest{Op: ballastpb.IOOp_IO_OP_WRITE_ZEROES, Offset: off, Length: length, NoHole: noHole}, true)
}

func (b nbdVolume) run(ctx context.Context, req *ballastpb.IORequest, isWrite bool) error {
	r, err := b.v.do(ctx, req)
	if err != nil {
		return err
	}
	return replyError(r, isWrite)
}

// replyError maps a head node's status onto the NBD error the client sees.
func replyError(r *ballastpb.IOReply, isWrite bool) error {
	switch r.Status {
	case ballastpb.IOStatus_IO_STATUS_OK:
		return nil
	case ballastpb.IOStatus_IO_STATUS_OUT_OF_RANGE:
		if isWrite {
			return fmt.Errorf("%w: %s", nbd.ENOSPC, r.Error)
		}
		return fmt.Errorf("%w: %s", nbd.EINVAL, r.Error)
	case ballastpb.IOStatus_IO_STATUS_INVALID:
		return fmt.Errorf("%w: %s", nbd.EINVAL, r.Error)
	case ballastpb.IOStatus_IO_STATUS_NO_SPACE:
		return fmt.Errorf("%w: %s", nbd.ENOSPC, r.Error)
	default:
		return fmt.Errorf("%w: %s", nbd.EIO, r.Error)
	}
}
