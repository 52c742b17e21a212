package journal

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkAppend4K appends one 4 KiB block per Append from many
// goroutines, each waiting for its commit, on a 256 MiB journal file in a
// temporary directory (and on tmpfs, if there is one). A goroutine
// releases everything durable when the ring is half full, as the flush to
// sleds would. It reports MB/s, ns per block, CPU microseconds per block
// (the whole process: writer, syncer and appenders), blocks per batch and
// blocks per fdatasync.
func BenchmarkAppend4K(b *testing.B) {
	dirs := map[string]string{"disk": b.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "journal-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	for _, name := range []string{"disk", "tmpfs"} {
		dir, ok := dirs[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) { benchAppend(b, filepath.Join(dir, "journal"), 16) })
	}
}

// BenchmarkAppend4KQD1 appends one block at a time and waits for it: a
// lone write's latency (ns/op), with nothing to batch it with.
func BenchmarkAppend4KQD1(b *testing.B) {
	benchAppend(b, filepath.Join(b.TempDir(), "journal"), 0)
}

// benchAppend appends 4 KiB blocks from 16 appenders per core, or from
// one if parallelism is 0.
func benchAppend(b *testing.B, path string, parallelism int) {
	os.Remove(path)
	j, err := Open(path, Options{SizeBytes: superblockArea + 256<<20, ZoneBytes: 16 << 20}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	stop := make(chan struct{})
	var releaser sync.WaitGroup
	releaser.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if st := j.Stats(); st.UsedBytes > st.TotalBytes/2 {
				if err := j.Release(st.DurableLSN + 1); err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
	defer func() { close(stop); releaser.Wait() }()

	block := blockData(1)
	before := j.Stats()
	cpu0 := cpuTime()
	b.SetBytes(BlockSize)
	ctx := context.Background()
	entries := []Entry{{Meta: make([]byte, 24), Blocks: [][]byte{block}}}
	appendOne := func() bool {
		c, _, err := j.Append(ctx, entries)
		if err == nil {
			err = c.Wait(ctx)
		}
		if err != nil {
			b.Error(err)
			return false
		}
		return true
	}
	b.ResetTimer()
	if parallelism == 0 {
		for i := 0; i < b.N && appendOne(); i++ {
		}
	} else {
		b.SetParallelism(parallelism) // enough appenders to fill batches
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() && appendOne() {
			}
		})
	}
	b.StopTimer()
	after := j.Stats()
	if batches := after.Batches - before.Batches; batches > 0 {
		b.ReportMetric(float64(b.N)/float64(batches), "blocks/batch")
	}
	if syncs := after.Syncs - before.Syncs; syncs > 0 {
		b.ReportMetric(float64(b.N)/float64(syncs), "blocks/sync")
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	if !after.DirectIO {
		b.Log("buffered I/O: the filesystem refused O_DIRECT")
	}
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
