package headnode

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const mib = 1 << 20

// fakeDisk is a filesystem whose free space the test sets.
type fakeDisk struct {
	mu   sync.Mutex
	free uint64
}

func (f *fakeDisk) set(free uint64) {
	f.mu.Lock()
	f.free = free
	f.mu.Unlock()
}

func (f *fakeDisk) measure(string) (diskSpace, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return diskSpace{freeBytes: f.free, totalBytes: 1 << 30}, nil
}

var testDiskConfig = DiskConfig{MinFreeBytes: 10 * mib, ResumeFreeBytes: 20 * mib, ReserveBytes: 1 * mib}

func openTestGuard(t *testing.T, dir string, disk *fakeDisk) *diskGuard {
	t.Helper()
	g, err := openDiskGuard(dir, testDiskConfig, disk.measure, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func reserveOnDisk(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, reserveFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestDiskGuard walks the guard through a disk that fills and empties:
// writes refused below the minimum, the reserve given up when even that
// is not enough, writes admitted again only above the resume mark, and
// the reserve recreated then.
func TestDiskGuard(t *testing.T) {
	dir := t.TempDir()
	disk := &fakeDisk{free: 100 * mib}
	g := openTestGuard(t, dir, disk)
	if !reserveOnDisk(t, dir) {
		t.Fatal("no emergency reserve after the first start")
	}
	if err := g.admit(4096); err != nil {
		t.Fatalf("write on an empty disk: %v", err)
	}

	// Writes measure the disk themselves every MinFreeBytes/16 bytes.
	disk.set(5 * mib)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = g.admit(4096)
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("writes on a full disk: %v, want ErrNoSpace", err)
	}

	// Below half the minimum: the reserve goes, writes stay refused (the
	// reserve is owed, so the space it freed does not count).
	disk.set(4 * mib)
	g.check()
	if reserveOnDisk(t, dir) {
		t.Fatal("reserve kept on an almost full disk")
	}
	disk.set(15 * mib)
	g.check()
	if err := g.admit(4096); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write between the minimum and the resume mark: %v, want ErrNoSpace (hysteresis)", err)
	}
	if st := g.status(); !st.WritesRefused || st.FreeBytes != 15*mib || st.ReserveBytes != 0 {
		t.Fatalf("status %v", st)
	}

	// Space freed: writes resume and the reserve comes back.
	disk.set(25 * mib)
	g.check()
	if err := g.admit(4096); err != nil {
		t.Fatalf("write after space was freed: %v", err)
	}
	if !reserveOnDisk(t, dir) {
		t.Fatal("reserve not recreated once space was back")
	}
	if st := g.status(); st.WritesRefused {
		t.Fatalf("status %v", st)
	}
}

// TestDiskGuardReleasesReserveAtStart: a node restarted on a full disk
// deletes its reserve before the stores open, and starts refusing writes.
func TestDiskGuardReleasesReserveAtStart(t *testing.T) {
	dir := t.TempDir()
	disk := &fakeDisk{free: 100 * mib}
	openTestGuard(t, dir, disk)
	if !reserveOnDisk(t, dir) {
		t.Fatal("no emergency reserve after the first start")
	}
	// Short of the minimum, not of room to open: the reserve stays.
	disk.set(7 * mib)
	if err := openTestGuard(t, dir, disk).admit(4096); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write after a start on a nearly full disk: %v, want ErrNoSpace", err)
	}
	if !reserveOnDisk(t, dir) {
		t.Fatal("reserve deleted while there was room to open")
	}
	disk.set(2 * mib)
	g := openTestGuard(t, dir, disk)
	if reserveOnDisk(t, dir) {
		t.Fatal("reserve kept at a start on a full disk")
	}
	if err := g.admit(4096); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write after a start on a full disk: %v, want ErrNoSpace", err)
	}
}

// TestFullDiskRefusesWritesServesReads: a primary on a full disk refuses
// client writes before sequencing them, serves reads, and takes writes
// again once space is freed.
func TestFullDiskRefusesWritesServesReads(t *testing.T) {
	p := newPair(t, 1<<20)
	disk := &fakeDisk{free: 100 * mib}
	p.primary.disk = openTestGuard(t, t.TempDir(), disk)
	data := pattern(8192, 1)
	p.write(t, 4096, data)
	last, _ := p.pStore.LastSeq(p.vol.Id)

	disk.set(5 * mib)
	p.primary.disk.check()
	ctx := context.Background()
	for _, w := range []struct {
		name string
		run  func() error
	}{
		{"write", func() error { return p.primary.write(ctx, 0, 4096, pattern(4096, 2), false, false, writeID{}) }},
		{"zeroes", func() error { return p.primary.write(ctx, 0, 4096, nil, true, false, writeID{}) }},
		{"trim", func() error { return p.primary.write(ctx, 0, 4096, nil, true, true, writeID{}) }},
	} {
		if err := w.run(); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("%s on a full disk: %v, want ErrNoSpace", w.name, err)
		}
	}
	if l, _ := p.pStore.LastSeq(p.vol.Id); l != last {
		t.Fatalf("refused writes reached the log: seq %d, was %d", l, last)
	}
	got := make([]byte, len(data))
	if err := p.primary.read(ctx, 4096, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read on a full disk: %v (data equal: %v)", err, bytes.Equal(got, data))
	}

	disk.set(50 * mib)
	p.primary.disk.check()
	p.write(t, 0, pattern(4096, 3))
	p.checkReplicas(t)
}

// TestSecondaryFullDiskRefusesWrites: a primary whose secondary says its
// disk is nearly full refuses client writes (the secondary still takes
// what it is sent), and finds out by itself when the secondary has room.
func TestSecondaryFullDiskRefusesWrites(t *testing.T) {
	p := newPair(t, 1<<20)
	p.write(t, 0, pattern(4096, 1))
	p.faults.set(func(f *faults) { f.diskFull = true })
	// The next batch brings the news; writes after it are refused.
	p.write(t, 4096, pattern(4096, 2))
	ctx := context.Background()
	if err := p.primary.write(ctx, 0, 4096, pattern(4096, 3), false, false, writeID{}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write while the secondary's disk is full: %v, want ErrNoSpace", err)
	}
	got := make([]byte, 4096)
	if err := p.primary.read(ctx, 4096, got); err != nil || !bytes.Equal(got, pattern(4096, 2)) {
		t.Fatalf("read while the secondary's disk is full: %v", err)
	}
	p.faults.set(func(f *faults) { f.diskFull = false })
	deadline := time.Now().Add(10 * secondaryProbeInterval)
	for {
		err := p.primary.write(ctx, 0, 4096, pattern(4096, 4), false, false, writeID{})
		if err == nil {
			copy(p.model, pattern(4096, 4))
			break
		}
		if !errors.Is(err, ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("write after the secondary's disk has room again: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.checkReplicas(t)
}

func TestDiskConfigDefaults(t *testing.T) {
	for _, c := range []struct {
		total                    uint64
		minFree, resume, reserve int64
	}{
		{64 * mib, 8 * mib, 12 * mib, 4 * mib},
		{100 << 30, 2 << 30, 3 << 30, 256 * mib},
		{1 << 40, 4 << 30, 6 << 30, 256 * mib},
	} {
		got := resolveDiskConfig(DiskConfig{}, c.total)
		if got.MinFreeBytes != c.minFree || got.ResumeFreeBytes != c.resume || got.ReserveBytes != c.reserve {
			t.Errorf("disk of %d bytes: %+v", c.total, got)
		}
	}
	if got := resolveDiskConfig(DiskConfig{ReserveBytes: -1}, 1<<40); got.ReserveBytes != 0 {
		t.Errorf("no reserve asked: %+v", got)
	}
}
