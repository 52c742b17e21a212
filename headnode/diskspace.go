package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// ErrNoSpace is returned for a client write refused because the head
// node's data disk is (nearly) full. Nothing of the write was sequenced.
// Reads go on, and writes are admitted again by themselves once space is
// freed.
var ErrNoSpace = errors.New("headnode: no space left on the data disk")

// DiskConfig keeps the data disk from filling under pebble. Pebble treats
// a failed WAL or MANIFEST write as fatal (it ends the process), and a
// store that cannot write cannot open either, so a head node must never
// let its disk fill: it refuses client writes while free space is short,
// keeps serving reads, and lets its own background work (flushes to the
// sleds, which free space, and the raft logs) carry on in the headroom
// left, plus an emergency reserve file it deletes when even that runs
// out, or at start to open its stores on a full disk.
type DiskConfig struct {
	// MinFreeBytes: client writes are refused while the disk's free space,
	// less the part of the reserve not on disk, is below it. It must
	// cover what pebble writes on its own meanwhile (memtable flushes of
	// 64 MiB, compactions, raft logs). 0: 2% of the filesystem, at least
	// 256 MiB and at most 4 GiB, but never more than an eighth of it.
	MinFreeBytes int64
	// ResumeFreeBytes: refused writes are admitted again once that free
	// space is back at or above it, so the node does not flap at the
	// threshold. 0 or less than MinFreeBytes: 1.5 × MinFreeBytes.
	ResumeFreeBytes int64
	// ReserveBytes sizes the emergency reserve file in the data
	// directory: room for pebble to open and replay its logs (a 64 MiB
	// memtable or more) on a disk that filled. 0: 256 MiB, but never
	// more than a sixteenth of the filesystem; negative: none.
	ReserveBytes int64
	// CheckInterval is how often free space is measured (0: 1s). Writes
	// also measure it after every MinFreeBytes/16 bytes they admit.
	CheckInterval time.Duration
}

// reserveFile is the emergency reserve's name in the data directory.
const reserveFile = "EMERGENCY_RESERVE"

// diskSpace is what statfs says of a filesystem.
type diskSpace struct {
	freeBytes, totalBytes uint64
}

func statfs(dir string) (diskSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return diskSpace{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return diskSpace{freeBytes: st.Bavail * uint64(st.Bsize), totalBytes: st.Blocks * uint64(st.Bsize)}, nil
}

// diskGuard admits client writes by the data disk's free space.
type diskGuard struct {
	dir     string
	cfg     DiskConfig // defaults resolved against the filesystem's size
	measure func(dir string) (diskSpace, error)
	log     *slog.Logger
	recheck int64 // bytes admitted between two measures

	mu struct {
		sync.Mutex
		space    diskSpace
		err      error // of the last measure
		refused  bool
		admitted int64 // bytes admitted since the last measure
		reserve  int64 // bytes of the reserve file on disk
	}
}

// openDiskGuard measures the disk of dir and, if it is almost full,
// deletes the reserve so that the stores can open and replay their logs;
// it must run before they open.
func openDiskGuard(dir string, cfg DiskConfig, measure func(string) (diskSpace, error), log *slog.Logger) (*diskGuard, error) {
	if measure == nil {
		measure = statfs
	}
	sp, err := measure(dir)
	if err != nil {
		return nil, err
	}
	cfg = resolveDiskConfig(cfg, sp.totalBytes)
	g := &diskGuard{dir: dir, cfg: cfg, measure: measure, log: log, recheck: max(cfg.MinFreeBytes/16, 1)}
	if fi, err := os.Stat(g.reservePath()); err == nil {
		g.mu.reserve = allocatedBytes(fi)
	}
	g.mu.space = sp
	if g.criticalLocked() {
		g.log.Warn("data disk is nearly full at start: emergency reserve deleted so the stores can open; client writes are refused until space is freed",
			"free_bytes", sp.freeBytes, "reserve_bytes", g.mu.reserve)
		if err := g.releaseReserve(); err != nil {
			return nil, err
		}
		if sp, err = measure(dir); err != nil {
			return nil, err
		}
		g.mu.space = sp
	}
	g.mu.refused = g.effectiveFreeLocked() < cfg.MinFreeBytes
	if g.mu.refused {
		g.log.Warn("data disk is nearly full: client writes are refused", "free_bytes", sp.freeBytes, "min_free_bytes", cfg.MinFreeBytes)
	} else if g.mu.reserve < cfg.ReserveBytes {
		if err := g.createReserve(); err != nil {
			g.log.Warn("emergency reserve", "err", err)
		}
		if sp, err = measure(dir); err != nil {
			return nil, err
		}
		g.updateLocked(sp, nil)
	}
	return g, nil
}

func resolveDiskConfig(cfg DiskConfig, total uint64) DiskConfig {
	t := int64(min(total, 1<<62))
	if cfg.MinFreeBytes == 0 {
		cfg.MinFreeBytes = min(max(t/50, 256<<20), 4<<30, t/8)
	}
	if cfg.ResumeFreeBytes < cfg.MinFreeBytes {
		cfg.ResumeFreeBytes = cfg.MinFreeBytes + cfg.MinFreeBytes/2
	}
	switch {
	case cfg.ReserveBytes == 0:
		cfg.ReserveBytes = min(256<<20, t/16)
	case cfg.ReserveBytes < 0:
		cfg.ReserveBytes = 0
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = time.Second
	}
	return cfg
}

func (g *diskGuard) reservePath() string { return filepath.Join(g.dir, reserveFile) }

// effectiveFreeLocked is the free space less the part of the reserve that
// is not on disk: the space writes may use while the reserve is owed.
func (g *diskGuard) effectiveFreeLocked() int64 {
	free := int64(min(g.mu.space.freeBytes, 1<<62))
	return free - (g.cfg.ReserveBytes - min(g.mu.reserve, g.cfg.ReserveBytes))
}

// criticalLocked says whether the reserve must go: it is on disk and the
// disk is almost full in spite of refused writes (half the minimum left).
func (g *diskGuard) criticalLocked() bool {
	return g.mu.reserve > 0 && int64(min(g.mu.space.freeBytes, 1<<62)) < g.cfg.MinFreeBytes/2
}

// admit says whether a client write of n bytes may go on; once refused,
// writes wait for the periodic measure to find space again.
func (g *diskGuard) admit(n int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.mu.refused {
		g.mu.admitted += n
		if g.mu.admitted < g.recheck {
			return nil
		}
		// Measured between ticks too: a burst of writes could otherwise
		// eat the whole margin in one interval.
		sp, err := g.measure(g.dir)
		g.updateLocked(sp, err)
		if !g.mu.refused {
			return nil
		}
	}
	return fmt.Errorf("%w: %s free on the disk of %s, writes resume at %s",
		ErrNoSpace, ibytes(g.effectiveFreeLocked()), g.dir, ibytes(g.cfg.ResumeFreeBytes))
}

// refusing says whether client writes are refused now (false for nil).
func (g *diskGuard) refusing() bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.refused
}

// updateLocked applies a measure, with hysteresis.
func (g *diskGuard) updateLocked(sp diskSpace, err error) {
	g.mu.admitted = 0
	g.mu.err = err
	if err != nil {
		// Keep the last state: a failing statfs says nothing of space.
		return
	}
	g.mu.space = sp
	free := g.effectiveFreeLocked()
	switch {
	case !g.mu.refused && free < g.cfg.MinFreeBytes:
		g.mu.refused = true
		g.log.Warn("data disk is nearly full: client writes are refused until space is freed",
			"free_bytes", free, "min_free_bytes", g.cfg.MinFreeBytes, "resume_free_bytes", g.cfg.ResumeFreeBytes)
	case g.mu.refused && free >= g.cfg.ResumeFreeBytes:
		g.mu.refused = false
		g.log.Info("data disk has room again: client writes resume", "free_bytes", free)
	}
}

// run measures the disk every CheckInterval until ctx ends.
func (g *diskGuard) run(ctx context.Context) {
	t := time.NewTicker(g.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.check()
		}
	}
}

// check measures the disk, and deletes or recreates the reserve: deleted
// when the disk is about to fill in spite of refused writes (pebble's own
// work needs the headroom), recreated once writes have room again.
func (g *diskGuard) check() {
	sp, err := g.measure(g.dir)
	g.mu.Lock()
	g.updateLocked(sp, err)
	critical := err == nil && g.criticalLocked()
	topUp := err == nil && !g.mu.refused && g.mu.reserve < g.cfg.ReserveBytes
	g.mu.Unlock()
	switch {
	case critical:
		g.log.Warn("data disk is almost full: emergency reserve deleted", "free_bytes", sp.freeBytes)
		err = g.releaseReserve()
	case topUp:
		err = g.createReserve()
	default:
		return
	}
	if err != nil {
		g.log.Warn("emergency reserve", "err", err)
	}
	sp, err = g.measure(g.dir)
	g.mu.Lock()
	g.updateLocked(sp, err)
	g.mu.Unlock()
}

func (g *diskGuard) releaseReserve() error {
	if err := os.Remove(g.reservePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete emergency reserve: %w", err)
	}
	g.mu.Lock()
	g.mu.reserve = 0
	g.mu.Unlock()
	return nil
}

// allocatedBytes is what a file takes on disk, which for a sparse or
// partly allocated file is less than its apparent size.
func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// createReserve allocates the reserve file to its full size (blocks
// allocated, not a sparse file: the point is that deleting it frees
// them). A reserve cut short by a full disk is kept as far as it got.
func (g *diskGuard) createReserve() error {
	f, err := os.OpenFile(g.reservePath(), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create emergency reserve: %w", err)
	}
	defer f.Close()
	size := g.cfg.ReserveBytes
	err = syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		err = writeZeroes(f, size)
	}
	if err == nil {
		err = f.Sync()
	}
	have := int64(0)
	if fi, serr := f.Stat(); serr == nil {
		have = allocatedBytes(fi)
	}
	g.mu.Lock()
	g.mu.reserve = min(have, size)
	g.mu.Unlock()
	if err != nil {
		return fmt.Errorf("allocate emergency reserve of %d bytes: %w", size, err)
	}
	return nil
}

func writeZeroes(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off)
		off += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// status reports the disk for rack status.
func (g *diskGuard) status() *ballastpb.DiskStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	ds := &ballastpb.DiskStatus{
		FreeBytes:     g.mu.space.freeBytes,
		TotalBytes:    g.mu.space.totalBytes,
		ReserveBytes:  uint64(max(g.mu.reserve, 0)),
		WritesRefused: g.mu.refused,
		MinFreeBytes:  uint64(g.cfg.MinFreeBytes),
	}
	if g.mu.err != nil {
		ds.Error = g.mu.err.Error()
	}
	return ds
}

func ibytes(n int64) string {
	if n < 0 {
		return "-" + humanize.IBytes(uint64(-n))
	}
	return humanize.IBytes(uint64(n))
}
