package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// CopyWorkload times copying a sparse volume whole with nbdcopy against
// copying its data alone: issue 17's goal that a copy skips the holes
// NBD's base:allocation reports. It creates two volumes of its own
// through the admin API (so the rack's volume, filled and used by the
// other workloads, is left alone), attached to the host of the agent
// that serves the target's export:
//   - the sparse volume, ExportBytes, holding DataBytes of random data in
//     runs of RunBytes spread evenly over it (spreadRuns), holes between;
//   - the data volume, DataBytes, holding the same runs back to back and
//     nothing else: the copy of "the data alone".
//
// Then it copies each Repeats times, alternating which goes first, with
// `nbdcopy nbd://… null:` through the agent's NBD server, and reports the
// median of each (Result.Copy). The volumes are deleted afterwards.
type CopyWorkload struct {
	ID   string
	Desc string
	// ExportBytes is the sparse volume's size; DataBytes the data written
	// into it, in runs of RunBytes, and the data volume's size.
	ExportBytes uint64
	DataBytes   uint64
	RunBytes    uint64
	// Repeats is how many times each volume is copied (default 3).
	Repeats int
	// WaitFlushed waits, after the writes and before the copies, until
	// the head nodes have flushed them to the sleds (steady.go), so the
	// copies read from where data lives in the steady state, as the other
	// workloads do after the fill.
	WaitFlushed bool
}

// copyRequestBytes is the size of the writes that lay the data down.
const copyRequestBytes = 1 << 20

// copyWriters is the number of writes in flight while laying the data
// down.
const copyWriters = 8

// copyAllocationChunk bounds one block-status request of the check that
// the sparse volume reports its holes.
const copyAllocationChunk = 256 << 20

func (w *CopyWorkload) Name() string        { return w.ID }
func (w *CopyWorkload) Description() string { return w.Desc }

func (w *CopyWorkload) Params() map[string]any {
	return map[string]any{
		"tool": "nbdcopy", "destination": "null:",
		"export_bytes": w.ExportBytes, "data_bytes": w.DataBytes, "run_bytes": w.RunBytes,
		"runs": w.DataBytes / max(w.RunBytes, 1), "repeats": w.repeats(), "wait_flushed": w.WaitFlushed,
	}
}

func (w *CopyWorkload) repeats() int { return max(w.Repeats, 1) }

func (w *CopyWorkload) Supports(t *Target) error {
	if len(t.HeadNodes) == 0 {
		return fmt.Errorf("%w: creating its %s and %s volumes needs the rack's head nodes (the goal compares Ballast's two copies with each other)",
			ErrNotSupported, humanBytes(w.ExportBytes), humanBytes(w.DataBytes))
	}
	return nil
}

// Planned assumes writes at 100 MB/s, the flush wait's estimate, and
// copies of the data at 200 MB/s.
func (w *CopyWorkload) Planned(s *Suite) time.Duration {
	data := 2 * w.DataBytes
	d := 2*time.Second + time.Duration(float64(data)/100e6*float64(time.Second))
	if w.WaitFlushed {
		d += flushEstimate(data)
	}
	return d + w.copiesEstimate()
}

func (w *CopyWorkload) copiesEstimate() time.Duration {
	return time.Duration(float64(2*uint64(w.repeats())*w.DataBytes) / 200e6 * float64(time.Second))
}

// CopyResult is what a CopyWorkload measured.
type CopyResult struct {
	// Tool is the copying program's version ("nbdcopy 1.14.2"), and
	// Destination where it copied to.
	Tool        string `json:"tool"`
	Destination string `json:"destination"`
	// ExportBytes is the sparse volume's size, DataBytes the data it
	// holds (and the data volume's size), in Runs runs of RunBytes.
	ExportBytes uint64 `json:"export_bytes"`
	DataBytes   uint64 `json:"data_bytes"`
	Runs        int    `json:"runs"`
	RunBytes    uint64 `json:"run_bytes"`
	// AllocatedBytes is how much of the sparse volume its block status
	// (what NBD's base:allocation passes on) reported as data rather than
	// holes, before the copies; nil when it could not be read
	// (AllocationNote says why).
	AllocatedBytes *uint64 `json:"allocated_bytes,omitempty"`
	AllocationNote string  `json:"allocation_note,omitempty"`
	// SparseS and DataS are the seconds each copy of the sparse volume
	// and of the data volume took, in the order they were made; the
	// medians are what the goal compares.
	SparseS       []float64 `json:"sparse_s"`
	DataS         []float64 `json:"data_s"`
	SparseMedianS float64   `json:"sparse_median_s"`
	DataMedianS   float64   `json:"data_median_s"`
	// Flush is how the wait for the writes to reach the sleds went (nil:
	// not waited for).
	Flush *FlushWait `json:"flush_wait,omitempty"`
}

// spreadRuns places dataBytes in runs of runBytes spread evenly over
// exportBytes: run i starts at i × stride, the stride being exportBytes
// over the number of runs, rounded down to a multiple of runBytes, so
// every run starts on a multiple of its own size and holes of stride −
// runBytes lie between them (and after the last). It returns the runs'
// offsets.
func spreadRuns(exportBytes, dataBytes, runBytes uint64) ([]uint64, error) {
	switch {
	case runBytes == 0 || dataBytes == 0:
		return nil, fmt.Errorf("copy layout: runs of %d bytes, %d bytes of data: want both above zero", runBytes, dataBytes)
	case dataBytes%runBytes != 0:
		return nil, fmt.Errorf("copy layout: %d bytes of data is not a whole number of %d-byte runs", dataBytes, runBytes)
	case dataBytes > exportBytes:
		return nil, fmt.Errorf("copy layout: %d bytes of data do not fit a %d-byte volume", dataBytes, exportBytes)
	}
	n := dataBytes / runBytes
	stride := exportBytes / n / runBytes * runBytes
	offsets := make([]uint64, n)
	for i := range offsets {
		offsets[i] = uint64(i) * stride
	}
	return offsets, nil
}

// runData is run i's contents: random bytes, the same for a seed and i
// on every call, so the two volumes hold the same data and no layer can
// shortcut zeroes or compress.
func runData(i int, n uint64) []byte {
	return randomBlock(rand.New(rand.NewPCG(0x73706172736563, uint64(i))), int(n))
}

// median is the middle value (the mean of the two middle ones for an
// even count); 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// copyOrder says whether round i copies the sparse volume first: the
// rounds alternate, so neither copy always follows the other.
func copyOrder(i int) (sparseFirst bool) { return i%2 == 0 }

func (w *CopyWorkload) Run(ctx context.Context, env *runEnv, t *Target) (*Result, error) {
	r := &Result{Workload: w.ID, Target: t.Name, Engine: "nbdcopy", Path: "nbd"}
	offsets, err := spreadRuns(w.ExportBytes, w.DataBytes, w.RunBytes)
	if err != nil {
		return r, err
	}
	bin := env.cfg.NBDCopyBinary
	if _, err := exec.LookPath(bin); err != nil {
		return r, fmt.Errorf("nbdcopy is needed (Debian package libnbd-bin): %w", err)
	}
	cr := &CopyResult{Tool: toolVersion(ctx, bin), Destination: "null:",
		ExportBytes: w.ExportBytes, DataBytes: w.DataBytes, Runs: len(offsets), RunBytes: w.RunBytes}
	r.Copy = cr
	addr, _, err := parseNBDURI(t.URI)
	if err != nil {
		return r, err
	}

	c := &attach.Client{HeadNodes: t.HeadNodes, Logger: env.log}
	defer c.Close()
	sparse, data := "bench-"+w.ID, "bench-"+w.ID+"-data"
	// The agent serving the target's export serves the volumes attached
	// to its host: the two volumes are attached to the same.
	resp, err := c.Lookup(ctx, t.Export)
	if err != nil {
		return r, fmt.Errorf("look up volume %s: %w", t.Export, err)
	}
	host := resp.Volume.AttachedHost
	defer func() {
		// Deleted even after a failure or an interrupt.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, name := range []string{sparse, data} {
			if err := deleteVolume(ctx, c, name); err != nil {
				env.log.Warn("deleting the copy workload's volume", "volume", name, "err", err)
			}
		}
	}()
	for _, v := range []struct {
		name string
		size uint64
	}{{sparse, w.ExportBytes}, {data, w.DataBytes}} {
		if err := createVolume(ctx, c, v.name, v.size, host); err != nil {
			return r, err
		}
	}

	began := time.Now()
	if err := w.writeData(ctx, c, host, sparse, data, offsets, cr); err != nil {
		return r, err
	}
	env.log.Info("copy workload: data written", "bytes", humanBytes(2*w.DataBytes), "took", time.Since(began).Round(time.Millisecond))
	if w.WaitFlushed {
		fw := waitFlushed(ctx, t.HeadNodes, flushTimeout(env.cfg, 2*w.DataBytes), env.log)
		cr.Flush = &fw
		if fw.Status == FlushTimedOut {
			env.log.Warn("the copy workload's data was not flushed to the sleds in time; copying anyway", "why", fw.Note)
		}
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}

	uri := func(name string) string { return fmt.Sprintf("nbd://%s/%s", addr, name) }
	m := env.measure(ctx, t, w.ID, w.copiesEstimate())
	copyStart := time.Now()
	for i := range w.repeats() {
		order := []string{sparse, data}
		if !copyOrder(i) {
			order = []string{data, sparse}
		}
		for _, name := range order {
			s, err := nbdcopy(ctx, bin, uri(name))
			if err != nil {
				m.finish(r)
				return r, err
			}
			if name == sparse {
				cr.SparseS = append(cr.SparseS, s)
			} else {
				cr.DataS = append(cr.DataS, s)
			}
		}
	}
	r.DurationS = time.Since(copyStart).Seconds()
	cr.SparseMedianS, cr.DataMedianS = median(cr.SparseS), median(cr.DataS)
	// Ops counts the copies and Bytes the data they read: DataBytes
	// each, the holes not counted.
	r.Ops = float64(2 * w.repeats())
	r.Bytes = float64(2*uint64(w.repeats())) * float64(w.DataBytes)
	if cr.SparseMedianS > 0 {
		// The sparse copy's pace over the data it holds.
		r.MBps = float64(w.DataBytes) / cr.SparseMedianS / 1e6
	}
	m.finish(r)
	return r, nil
}

// writeData writes run i of the data at offsets[i] of the sparse volume
// and at i × RunBytes of the data volume, then reads back the sparse
// volume's block status into cr.
func (w *CopyWorkload) writeData(ctx context.Context, c *attach.Client, host, sparse, data string, offsets []uint64, cr *CopyResult) error {
	var devs []blockdev.Device
	defer func() {
		for _, d := range devs {
			d.Close()
		}
	}()
	for _, name := range []string{sparse, data} {
		v, err := c.OpenVolumeAs(ctx, name, host)
		if err != nil {
			return fmt.Errorf("open volume %s: %w", name, err)
		}
		devs = append(devs, attach.NewDevice(v))
	}
	type write struct {
		dev blockdev.Device
		off uint64
		p   []byte
	}
	writes := make(chan write)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range copyWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range writes {
				if err := wr.dev.WriteAt(ctx, wr.p, wr.off, false); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("write %d bytes at %d: %w", len(wr.p), wr.off, err)
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
feed:
	for i, off := range offsets {
		p := runData(i, w.RunBytes)
		for j := uint64(0); j < w.RunBytes; j += copyRequestBytes {
			chunk := p[j:min(j+copyRequestBytes, w.RunBytes)]
			for _, wr := range []write{{devs[0], off + j, chunk}, {devs[1], uint64(i)*w.RunBytes + j, chunk}} {
				select {
				case writes <- wr:
				case <-ctx.Done():
					break feed
				}
			}
		}
	}
	close(writes)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, d := range devs {
		if err := d.Flush(ctx); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
	}
	// A block status that reports no holes makes the sparse copy read
	// every byte: the check that says why, should the goal be missed.
	a, ok := devs[0].(blockdev.Allocator)
	if !ok {
		cr.AllocationNote = errNoAllocator.Error()
		return nil
	}
	n, err := allocated(ctx, a, w.ExportBytes)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		cr.AllocationNote = err.Error()
		return nil
	}
	cr.AllocatedBytes = &n
	return nil
}

// allocated sums what dev's block status reports as data over [0, size).
func allocated(ctx context.Context, dev blockdev.Allocator, size uint64) (uint64, error) {
	var data uint64
	for off := uint64(0); off < size; {
		ext, err := dev.Allocation(ctx, off, min(size-off, copyAllocationChunk))
		if err != nil {
			return 0, fmt.Errorf("block status at %d: %w", off, err)
		}
		var n uint64
		for _, e := range ext {
			n += e.Length
			if !e.Hole {
				data += e.Length
			}
		}
		if n == 0 {
			return 0, fmt.Errorf("block status at %d described nothing", off)
		}
		off += n
	}
	return data, nil
}

// nbdcopy copies uri to null: and returns how long it took, in seconds.
func nbdcopy(ctx context.Context, bin, uri string) (float64, error) {
	cmd := exec.CommandContext(ctx, bin, uri, "null:")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	began := time.Now()
	err := cmd.Run()
	took := time.Since(began).Seconds()
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("nbdcopy %s null:: %w: %s", uri, err, truncate(out.String(), 1500))
	}
	return took, nil
}

// toolVersion is the first line of `bin --version`, or bin's name.
func toolVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); err == nil && line != "" {
		return line
	}
	return bin
}

// createVolume creates a volume of the harness's own; one of that name
// left by an earlier run that was killed is deleted first, since it may
// hold other data.
func createVolume(ctx context.Context, c *attach.Client, name string, size uint64, host string) error {
	for attempt := 0; ; attempt++ {
		err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			_, err := a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: size, AttachHost: host})
			return err
		})
		if status.Code(err) != codes.AlreadyExists || attempt > 0 {
			if err != nil {
				return fmt.Errorf("create volume %s: %w", name, err)
			}
			return nil
		}
		if err := deleteVolume(ctx, c, name); err != nil {
			return err
		}
	}
}

func deleteVolume(ctx context.Context, c *attach.Client, name string) error {
	err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		_, err := a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: name})
		return err
	})
	if status.Code(err) == codes.NotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	return nil
}

// errNoAllocator: the attach device does not report its allocation.
var errNoAllocator = errors.New("the attach device does not report its allocation")
