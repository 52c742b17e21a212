package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// qemuNBD is a baseline: qemu-nbd serving a raw file in the work
// directory, on the same disk as the rack's data, with one cache mode.
// writethrough flushes every write before acknowledging it (one durable
// copy: the single-node limit); writeback acknowledges from the page
// cache.
type qemuNBD struct {
	target    string
	cache     string // qemu's --cache
	bin       string
	dir       string
	sizeBytes uint64
	proc      *child
}

func (q *qemuNBD) name() string                   { return q.target }
func (q *qemuNBD) role() Role                     { return RoleBaseline }
func (q *qemuNBD) startupEstimate() time.Duration { return time.Second }

func (q *qemuNBD) file() string { return filepath.Join(q.dir, q.target+".img") }

func (q *qemuNBD) start(ctx context.Context) (*Target, error) {
	if err := os.MkdirAll(q.dir, 0o755); err != nil {
		return nil, fmt.Errorf("baseline %s: %w", q.target, err)
	}
	f, err := os.Create(q.file())
	if err != nil {
		return nil, fmt.Errorf("baseline %s: %w", q.target, err)
	}
	err = f.Truncate(int64(q.sizeBytes))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("baseline %s: %w", q.target, err)
	}
	const export = "bench"
	for attempt := 0; ; attempt++ {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		q.proc, err = startChild(q.target, filepath.Join(q.dir, q.target+".log"), q.bin,
			"--cache="+q.cache, "--format=raw", "--aio=threads",
			"--export-name="+export, "--bind=127.0.0.1", fmt.Sprintf("--port=%d", port),
			"--persistent", "--shared=256", q.file())
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		size, err := waitNBD(ctx, addr, export, 15*time.Second, q.proc)
		if err != nil {
			q.proc.stop(5 * time.Second)
			if isAddrInUse(err.Error()) && attempt < 2 {
				continue
			}
			return nil, fmt.Errorf("baseline %s: %w", q.target, err)
		}
		proc := q.proc
		desc, copies := "acknowledged from the page cache: no durable copy until a flush", 0
		if q.cache == "writethrough" {
			desc, copies = "every write flushed before it is acknowledged: one durable copy, the single-node limit", 1
		}
		return &Target{
			Name:        q.target,
			Role:        RoleBaseline,
			Description: fmt.Sprintf("qemu-nbd --cache=%s serving a raw file on the same disk; %s", q.cache, desc),
			URI:         fmt.Sprintf("nbd://%s/%s", addr, export),
			Export:      export,
			SizeBytes:   size,
			Copies:      copies,
			PIDs: func() []int {
				if pid := proc.pid(); pid != 0 {
					return []int{pid}
				}
				return nil
			},
			Owned: true,
		}, nil
	}
}

// stop ends qemu-nbd and deletes its file (and with it any dirty pages
// still waiting in the page cache, so they do not land in the next
// target's numbers).
func (q *qemuNBD) stop() error {
	err := q.proc.stop(10 * time.Second)
	if rerr := os.Remove(q.file()); rerr != nil && !os.IsNotExist(rerr) && err == nil {
		err = rerr
	}
	return err
}
