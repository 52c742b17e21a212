package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// qemuNBD is a baseline: qemu-nbd serving a raw file in the work
// directory, on the same disk as the rack's data, with one cache mode.
// writethrough flushes every write before acknowledging it (one durable
// copy: the single-node limit); writeback acknowledges from the page
// cache; none opens the file with O_DIRECT, so every write reaches the
// device before it is acknowledged and reads come from the device: the
// device's own limit through NBD.
type qemuNBD struct {
	target string
	cache  string // qemu's --cache
	// aio are the --aio modes to try, in order: the first with which
	// qemu-nbd starts and serves is kept (io_uring may be missing from
	// the kernel or refused by a sandbox; native needs O_DIRECT).
	aio       []string
	bin       string
	dir       string
	sizeBytes uint64
	proc      *child
}

// cacheNoneAIO are the --aio modes tried for --cache=none, best first.
var cacheNoneAIO = []string{"io_uring", "native", "threads"}

// newQemuNBD returns the baseline of that name.
func newQemuNBD(target, bin, dir string, sizeBytes uint64) *qemuNBD {
	q := &qemuNBD{target: target, bin: bin, dir: dir, sizeBytes: sizeBytes, aio: []string{"threads"}}
	switch target {
	case BaselineWritethrough:
		q.cache = "writethrough"
	case BaselineWriteback:
		q.cache = "writeback"
	case BaselineCacheNone:
		q.cache, q.aio = "none", cacheNoneAIO
	default:
		panic("bench: no baseline " + target)
	}
	return q
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
	// Each --aio mode that fails to start is recorded and the next one
	// tried; the description says which one ran and why the others did
	// not.
	var failed []string
	for _, aio := range q.aio {
		t, err := q.startWith(ctx, aio)
		if err == nil {
			if len(failed) > 0 {
				t.Description += fmt.Sprintf(" (--aio=%s because %s)", aio, strings.Join(failed, "; "))
			}
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		failed = append(failed, fmt.Sprintf("--aio=%s failed: %s", aio, truncate(strings.Join(strings.Fields(err.Error()), " "), 300)))
	}
	return nil, fmt.Errorf("baseline %s: qemu-nbd did not start with any of --aio=%s: %s",
		q.target, strings.Join(q.aio, ", "), strings.Join(failed, "; "))
}

// startWith starts qemu-nbd with one --aio mode and waits until it
// serves; a port taken between the check and the bind is tried again.
func (q *qemuNBD) startWith(ctx context.Context, aio string) (*Target, error) {
	const export = "bench"
	for attempt := 0; ; attempt++ {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		q.proc, err = startChild(q.target, filepath.Join(q.dir, q.target+"-"+aio+".log"), q.bin,
			"--cache="+q.cache, "--format=raw", "--aio="+aio,
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
			return nil, err
		}
		proc := q.proc
		return &Target{
			Name: q.target,
			Role: RoleBaseline,
			Description: fmt.Sprintf("qemu-nbd --cache=%s --aio=%s serving a raw file on the same disk; %s",
				q.cache, aio, q.durability()),
			URI:       fmt.Sprintf("nbd://%s/%s", addr, export),
			Export:    export,
			SizeBytes: size,
			Copies:    q.copies(),
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

// durability says what an acknowledged write is, for the description.
func (q *qemuNBD) durability() string {
	switch q.cache {
	case "writethrough":
		return "every write flushed before it is acknowledged: one durable copy, the single-node limit"
	case "none":
		return "O_DIRECT: every write has reached the device when it is acknowledged (one copy) and reads come from the device, " +
			"so this is the device's limit through NBD; a device with a volatile write cache makes a write durable only at the next flush, " +
			"which qemu-nbd passes on as fdatasync"
	default:
		return "acknowledged from the page cache: no durable copy until a flush"
	}
}

// copies is the number of copies a write has when acknowledged: one for
// writethrough and for none (on the device, if perhaps in its volatile
// cache; see durability), none for writeback.
func (q *qemuNBD) copies() int {
	if q.cache == "writeback" {
		return 0
	}
	return 1
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
