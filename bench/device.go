package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/internal/nbdclient"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// device is what the load generator drives: a block device that many
// goroutines use at once.
type device interface {
	ReadAt(ctx context.Context, p []byte, off uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	Close() error
}

// deviceSet is the devices of one run and how to give them back.
type deviceSet struct {
	devs  []device
	size  uint64 // of each device
	path  string // "attach" or "nbd"
	close func() error
}

// openDevices opens the devices a load-generator run drives on t:
// volumes > 0 creates that many volumes through the admin API (the
// target must have head nodes); otherwise one device, the target's
// export. Through the attach client when the target's head nodes are
// known (Ballast's own path from the agent to the head nodes), else over
// NBD with up to conns connections.
func openDevices(ctx context.Context, t *Target, volumes int, volumeBytes uint64, conns int, prefix string) (*deviceSet, error) {
	if len(t.HeadNodes) == 0 {
		if volumes > 0 {
			return nil, fmt.Errorf("%w: creating volumes needs the rack's head nodes", ErrNotSupported)
		}
		addr, export, err := parseNBDURI(t.URI)
		if err != nil {
			return nil, err
		}
		p := &nbdPool{addr: addr, export: export, slots: make(chan struct{}, conns)}
		for range conns {
			p.slots <- struct{}{}
		}
		return &deviceSet{devs: []device{p}, size: t.SizeBytes, path: "nbd", close: p.Close}, nil
	}
	c := &attach.Client{HeadNodes: t.HeadNodes}
	set := &deviceSet{path: "attach"}
	var created []string
	set.close = func() error {
		var errs []error
		for _, d := range set.devs {
			errs = append(errs, d.Close())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, name := range created {
			errs = append(errs, c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
				_, err := a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: name})
				return err
			}))
		}
		c.Close()
		return errors.Join(errs...)
	}
	names := []string{t.Export}
	if volumes > 0 {
		names = nil
		for i := range volumes {
			name := fmt.Sprintf("%s-%d", prefix, i)
			err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
				_, err := a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: volumeBytes})
				return err
			})
			if status.Code(err) == codes.AlreadyExists {
				err = nil // left by an earlier run that was killed; reuse it
			}
			if err != nil {
				set.close()
				return nil, fmt.Errorf("create volume %s: %w", name, err)
			}
			created = append(created, name)
			names = append(names, name)
		}
	}
	for _, name := range names {
		v, err := c.OpenVolume(ctx, name)
		if err != nil {
			set.close()
			return nil, fmt.Errorf("open volume %s: %w", name, err)
		}
		set.devs = append(set.devs, attach.NewDevice(v))
		set.size = v.Size()
	}
	return set, nil
}

// nbdPool is an NBD export as a device: a pool of connections of the
// one-request-at-a-time test client, dialled when first needed. A
// request waits for a free connection; that wait is part of its latency.
type nbdPool struct {
	addr, export string
	slots        chan struct{} // one token per connection that may exist

	mu     sync.Mutex
	idle   []*nbdclient.Conn
	closed bool
}

func (p *nbdPool) get(ctx context.Context) (*nbdclient.Conn, error) {
	select {
	case <-p.slots:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := nbdclient.Dial(p.addr, p.export, 5*time.Second)
	if err != nil {
		p.slots <- struct{}{}
		return nil, err
	}
	return c, nil
}

// put returns a connection; a broken one is closed and dialled again
// when next needed.
func (p *nbdPool) put(c *nbdclient.Conn, broken bool) {
	p.mu.Lock()
	if broken || p.closed {
		c.Close()
	} else {
		p.idle = append(p.idle, c)
	}
	p.mu.Unlock()
	p.slots <- struct{}{}
}

func (p *nbdPool) do(ctx context.Context, fn func(*nbdclient.Conn) error) error {
	c, err := p.get(ctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	err = fn(c)
	var errno nbdclient.Errno
	p.put(c, err != nil && !errors.As(err, &errno))
	return err
}

func (p *nbdPool) ReadAt(ctx context.Context, b []byte, off uint64) error {
	return p.do(ctx, func(c *nbdclient.Conn) error { return c.ReadAt(b, off) })
}

func (p *nbdPool) WriteAt(ctx context.Context, b []byte, off uint64, fua bool) error {
	return p.do(ctx, func(c *nbdclient.Conn) error { return c.WriteAt(b, off, fua) })
}

func (p *nbdPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.Close()
	}
	p.idle = nil
	return nil
}
