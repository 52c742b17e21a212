package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/attach/nvmetcp"
	"github.com/ballast-storage/ballast/internal/nbdclient"
)

// startNVMeDemo runs `ballast demo` serving volume demo over NBD and
// NVMe/TCP (an I/O port and a discovery port on loopback), and waits
// until both answer. It returns the NVMe/TCP I/O and discovery addresses.
func (r *rack) startNVMeDemo(size string) (nvmeAddr, discAddr string) {
	r.t.Helper()
	nvmeAddr, discAddr = freeLoopbackAddr(r.t), freeLoopbackAddr(r.t)
	r.demo = startProc(r.t, "demo", "demo", "--data", r.dataDir, "--size", size,
		"--nbd", r.nbdAddr, "--port", fmt.Sprint(r.port), "--nvme", nvmeAddr, "--nvme-discovery", discAddr)
	r.waitServed("demo", r.demo)
	waitNVMe(r.t, nvmeAddr, attach.VolumeNQN("demo"))
	if !strings.Contains(r.demo.out.String(), "nvme connect -t tcp -a 127.0.0.1 -s ") {
		r.t.Fatalf("the demo does not print the NVMe/TCP connect line:\n%s", tail(r.demo.out.String(), 3000))
	}
	return nvmeAddr, discAddr
}

// waitNVMe waits until subsystem nqn accepts a controller at addr.
func waitNVMe(t testing.TB, addr, nqn string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h, err := nvmetcp.Connect(ctx, addr, nqn, nvmetcp.HostOptions{})
		cancel()
		if err == nil {
			h.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("NVMe/TCP subsystem %s at %s not served within 60s: %v", nqn, addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// vmDir locates the shared VM harness: $BALLAST_VM_DIR, or ../shared/vm
// next to the repository; a relative path is taken from the repository
// root.
func vmDir(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("BALLAST_VM_DIR")
	if dir == "" {
		dir = filepath.Join("..", "shared", "vm")
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, dir)
	}
	return dir
}

// vmScript returns the path of one of the VM harness's scripts, or skips
// the test when the harness is not there; it fails in CI when QEMU is
// missing and cannot be installed.
func vmScript(t testing.TB, name string) string {
	t.Helper()
	dir := vmDir(t)
	script := filepath.Join(dir, name)
	if _, err := os.Stat(script); err != nil {
		t.Skipf("the VM harness is not at %s (set BALLAST_VM_DIR to the directory of %s): %v", dir, name, err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Geteuid() != 0 {
		skipOrFail(t, "qemu-system-x86_64 is not installed and the harness cannot install it without root (Debian package qemu-system-x86; `make test` installs it)")
	}
	return script
}

// TestNVMeLinuxInitiator boots a Linux guest (the shared VM harness,
// under QEMU) whose kernel initiator discovers and connects to the agent
// of a `ballast demo` over NVMe/TCP, writes a random MiB to the namespace
// and reads it back; the harness's NBD paths (QEMU's client and the
// guest's nbd.ko) use the same volume through the same agent. The test
// then reads the MiB the guest wrote over NVMe back over NBD from the
// host.
func TestNVMeLinuxInitiator(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; skipped in -short mode")
	}
	script := vmScript(t, "vm-attach-demo.sh")
	needTools(t, "qemu-img", "nbdcopy")
	r := newRack(t)
	nvmeAddr, _ := r.startNVMeDemo("64MiB")
	_, port, _ := net.SplitHostPort(nvmeAddr)
	nqn := attach.VolumeNQN("demo")

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "NBD_URI="+r.uri("demo"), "NVME_PORT="+port, "NVME_NQN="+nqn)
	out, err := cmd.CombinedOutput()
	t.Logf("vm-attach-demo.sh took %v", time.Since(start).Round(time.Second))
	output := string(out)
	if err != nil {
		t.Fatalf("vm-attach-demo.sh: %v\n%s", err, tail(output, 8000))
	}
	for _, want := range []string{
		`a\) QEMU userspace NBD .*: PASS`,
		`b\) guest kernel nbd.ko .*: PASS`,
		`c\) guest nvme-tcp \(real target.*: PASS`,
		`\[c\] GUEST: +subnqn: +` + regexp.QuoteMeta(nqn),
		`\[c\] GUEST: RESULT /dev/nvme\S+ pattern OK`,
	} {
		if !regexp.MustCompile(want).MatchString(output) {
			t.Fatalf("vm-attach-demo.sh output lacks %q:\n%s", want, tail(output, 8000))
		}
	}
	m := regexp.MustCompile(`\[c\] GUEST: PATTERN dev=/dev/nvme\S+ size=(\d+)sectors written_md5=([0-9a-f]{32}) readback_md5=([0-9a-f]{32})`).FindStringSubmatch(output)
	if m == nil {
		t.Fatalf("no PATTERN line from the NVMe/TCP guest:\n%s", tail(output, 8000))
	}
	if m[1] != fmt.Sprint(64<<20/512) {
		t.Errorf("the guest sees %s sectors, want %d", m[1], 64<<20/512)
	}
	written := m[2]

	// The guest wrote [1 MiB, 2 MiB) over NVMe/TCP; read it from the
	// host over NBD, with qemu-img and with our NBD client.
	host, nbdPort, _ := net.SplitHostPort(r.nbdAddr)
	region := filepath.Join(t.TempDir(), "region.raw")
	src := fmt.Sprintf(`json:{"file.driver":"nbd","file.server.type":"inet","file.server.host":%q,"file.server.port":%q,"file.export":"demo","driver":"raw","offset":%d,"size":%d}`,
		host, nbdPort, 1<<20, 1<<20)
	mustRun(t, 2*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", src, region)
	data, err := os.ReadFile(region)
	if err != nil {
		t.Fatal(err)
	}
	if got := md5hex(data); got != written {
		t.Fatalf("NBD reads md5 %s over [1MiB,2MiB), the guest wrote %s over NVMe/TCP", got, written)
	}
	c, err := nbdclient.Dial(r.nbdAddr, "demo", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	if err := c.ReadAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if got := md5hex(buf); got != written {
		t.Fatalf("nbdclient reads md5 %s, the guest wrote %s", got, written)
	}
	if !strings.Contains(r.demo.out.String(), `reason="admin queue closed"`) {
		t.Errorf("the agent did not log the guest's controller ending")
	}
}

func md5hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// TestNVMeAndNBDShareVolumes writes over NVMe/TCP and reads over NBD, and
// the reverse, through the demo's agent and through a separate `ballast
// agent` process; it checks discovery on both the I/O and the discovery
// port and a volume created while the agent runs.
func TestNVMeAndNBDShareVolumes(t *testing.T) {
	r := newRack(t)
	nvmeAddr, discAddr := r.startNVMeDemo("256MiB")
	nqn := attach.VolumeNQN("demo")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	h, err := nvmetcp.Connect(ctx, nvmeAddr, nqn, nvmetcp.HostOptions{IOQueues: 3, HeaderDigest: true, DataDigest: true, KATO: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Blocks*uint64(h.BlockSize) != 256<<20 {
		t.Fatalf("namespace of %d blocks of %d bytes, want 256 MiB", h.Blocks, h.BlockSize)
	}
	nb, err := nbdclient.Dial(r.nbdAddr, "demo", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()

	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	t.Run("NVMe write, NBD read", func(t *testing.T) {
		for i, c := range []struct {
			off  uint64
			size int
			fua  bool
		}{{0, 4096, false}, {8 << 20, 1 << 20, true}, {100<<20 + 4096, 3<<20 + 8192, false}} {
			data := random(c.size)
			if err := h.WriteAt(ctx, data, c.off, c.fua); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			got := make([]byte, c.size)
			if err := nb.ReadAt(got, c.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("write %d: NBD reads other bytes than NVMe/TCP wrote at %d", i, c.off)
			}
		}
	})
	t.Run("NBD write, NVMe read", func(t *testing.T) {
		data := random(2<<20 + 4096)
		if err := nb.WriteAt(data, 50<<20, false); err != nil {
			t.Fatal(err)
		}
		for _, q := range h.IO {
			got := make([]byte, len(data))
			if err := h.ReadAtQueue(ctx, q, got, 50<<20); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("queue %d: NVMe/TCP reads other bytes than NBD wrote", q.QID)
			}
		}
	})
	t.Run("write zeroes and deallocate", func(t *testing.T) {
		if err := h.WriteZeroes(ctx, (8<<20)/4096, 16, false); err != nil {
			t.Fatal(err)
		}
		if err := h.Deallocate(ctx, []nvmetcp.Range{{SLBA: (8<<20)/4096 + 16, NLB: 16}}); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 128<<10)
		if err := nb.ReadAt(got, 8<<20); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, 128<<10)) {
			t.Fatal("zeroed and deallocated blocks do not read as zeroes over NBD")
		}
		if err := h.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("out of range", func(t *testing.T) {
		err := h.ReadAt(ctx, make([]byte, 8192), 256<<20-4096)
		var st nvmetcp.Status
		if !errors.As(err, &st) || st.SC() != 0x80 || st.SCT() != 0 {
			t.Fatalf("read past the end: %v, want LBA Out of Range", err)
		}
		if err := h.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
			t.Fatalf("queue unusable after the error: %v", err)
		}
	})
	t.Run("unknown volume", func(t *testing.T) {
		_, err := nvmetcp.Connect(ctx, nvmeAddr, attach.VolumeNQN("nosuch"), nvmetcp.HostOptions{})
		if err == nil || !strings.Contains(err.Error(), "Connect Invalid Parameters") {
			t.Fatalf("connect to an unknown volume: %v", err)
		}
	})

	// A volume created now is a subsystem at once, on the demo's agent
	// and on a separate agent process.
	if out, err := r.cli("volume", "create", "vol2", "--size", "64MiB", "--attach", agentHost); err != nil {
		t.Fatalf("volume create: %v\n%s", err, out)
	}
	agentNBD, agentNVMe, agentDisc := freeLoopbackAddr(t), freeLoopbackAddr(t), freeLoopbackAddr(t)
	args := []string{"agent", "--host", agentHost, "--nbd", agentNBD, "--nvme", agentNVMe, "--nvme-discovery", agentDisc}
	for _, hn := range r.headNodes {
		args = append(args, "--headnode", hn)
	}
	agent := startProc(t, "agent", args...)
	waitNVMe(t, agentNVMe, attach.VolumeNQN("vol2"))

	t.Run("discovery", func(t *testing.T) {
		for _, c := range []struct{ via, ioPort string }{{nvmeAddr, nvmeAddr}, {discAddr, nvmeAddr}, {agentDisc, agentNVMe}} {
			entries, err := nvmetcp.Discover(ctx, c.via, nvmetcp.HostOptions{})
			if err != nil {
				t.Fatalf("discover via %s: %v", c.via, err)
			}
			_, ioPort, _ := net.SplitHostPort(c.ioPort)
			found := map[string]bool{}
			for _, e := range entries {
				if e.SubType == 2 && e.TrAddr == "127.0.0.1" && e.TrSvcID == ioPort {
					found[e.SubNQN] = true
				}
			}
			if !found[nqn] || !found[attach.VolumeNQN("vol2")] {
				t.Fatalf("discovery via %s lists %+v, want demo and vol2 on port %s", c.via, entries, ioPort)
			}
		}
	})
	t.Run("agent process", func(t *testing.T) {
		h2, err := nvmetcp.Connect(ctx, agentNVMe, attach.VolumeNQN("vol2"), nvmetcp.HostOptions{IOQueues: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer h2.Close()
		data := random(512 << 10)
		if err := h2.WriteAt(ctx, data, 4<<20, false); err != nil {
			t.Fatal(err)
		}
		nb2, err := nbdclient.Dial(r.nbdAddr, "vol2", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nb2.Close()
		got := make([]byte, len(data))
		if err := nb2.ReadAt(got, 4<<20); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("the demo's NBD reads other bytes than the agent process's NVMe/TCP wrote")
		}
		if out := agent.out.String(); !strings.Contains(out, "serving NVMe/TCP on "+agentNVMe) || !strings.Contains(out, "serving NVMe/TCP discovery on "+agentDisc) {
			t.Fatalf("agent output:\n%s", tail(out, 3000))
		}
	})
	agent.stop(t)
}

// TestNVMeVsNBDPerformance measures IOPS and latency of NVMe/TCP and NBD
// on the same volume of one `ballast demo`, in the same run: 4k random
// reads and writes at QD1 (one queue or connection) and QD32 (four
// queues or connections, eight commands in flight on each). Both sides
// are Go clients with a goroutine per command in flight: nvmetcp's host
// for NVMe/TCP, a pipelined NBD client below for NBD. Not part of `make
// test`: run it with
//
//	BALLAST_NVME_BENCH=1 go test -run TestNVMeVsNBDPerformance -v -timeout 30m ./e2e/
//
// BALLAST_BENCH_SECONDS sets each cell's duration (default 10).
func TestNVMeVsNBDPerformance(t *testing.T) {
	if os.Getenv("BALLAST_NVME_BENCH") != "1" {
		t.Skip("a benchmark: set BALLAST_NVME_BENCH=1 to run it")
	}
	seconds := 10
	if s := os.Getenv("BALLAST_BENCH_SECONDS"); s != "" {
		fmt.Sscan(s, &seconds)
	}
	const region = 256 << 20
	r := newRack(t)
	nvmeAddr, _ := r.startNVMeDemo("1GiB")
	nqn := attach.VolumeNQN("demo")
	ctx := context.Background()
	h, err := nvmetcp.Connect(ctx, nvmeAddr, nqn, nvmetcp.HostOptions{IOQueues: 4, QueueSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Fill the region, so that reads find data.
	fill := make([]byte, 1<<20)
	rand.Read(fill)
	for off := uint64(0); off < region; off += uint64(len(fill)) {
		if err := h.WriteAt(ctx, fill, off, false); err != nil {
			t.Fatal(err)
		}
	}
	var nbdConns []*nbdPipe
	for range 4 {
		c, err := dialNBDPipe(r.nbdAddr, "demo")
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		nbdConns = append(nbdConns, c)
	}
	type cell struct {
		iops          float64
		p50, p99, avg time.Duration
	}
	run := func(qd int, op func(q int, off uint64, buf []byte) error) cell {
		queues, perQueue := 1, 1
		if qd > 1 {
			queues, perQueue = 4, qd/4
		}
		deadline := time.Now().Add(time.Duration(seconds) * time.Second)
		lat := make([][]time.Duration, queues*perQueue)
		done := make(chan error, queues*perQueue)
		start := time.Now()
		for w := range queues * perQueue {
			go func() {
				buf := make([]byte, 4096)
				rand.Read(buf)
				seed := uint64(w)*0x9E3779B97F4A7C15 + 1
				for time.Now().Before(deadline) {
					seed ^= seed << 13
					seed ^= seed >> 7
					seed ^= seed << 17
					off := seed % (region / 4096) * 4096
					t0 := time.Now()
					if err := op(w%queues, off, buf); err != nil {
						done <- err
						return
					}
					lat[w] = append(lat[w], time.Since(t0))
				}
				done <- nil
			}()
		}
		for range queues * perQueue {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		var all []time.Duration
		for _, l := range lat {
			all = append(all, l...)
		}
		slices.Sort(all)
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		return cell{iops: float64(len(all)) / elapsed.Seconds(), p50: all[len(all)/2], p99: all[len(all)*99/100], avg: sum / time.Duration(len(all))}
	}
	nvmeOp := func(write bool) func(q int, off uint64, buf []byte) error {
		return func(q int, off uint64, buf []byte) error {
			if write {
				return h.WriteAtQueue(ctx, h.IO[q], buf, off, false)
			}
			return h.ReadAtQueue(ctx, h.IO[q], buf, off)
		}
	}
	nbdOp := func(write bool) func(q int, off uint64, buf []byte) error {
		return func(q int, off uint64, buf []byte) error {
			if write {
				return nbdConns[q].do(1, off, buf)
			}
			return nbdConns[q].do(0, off, buf)
		}
	}
	var table strings.Builder
	fmt.Fprintf(&table, "| workload | NVMe/TCP IOPS | NBD IOPS | NVMe/NBD | NVMe/TCP p50 / p99 µs | NBD p50 / p99 µs |\n")
	fmt.Fprintf(&table, "| --- | ---: | ---: | ---: | ---: | ---: |\n")
	us := func(d time.Duration) int64 { return d.Microseconds() }
	for _, w := range []struct {
		name  string
		write bool
		qd    int
	}{{"4k randread QD1", false, 1}, {"4k randwrite QD1", true, 1}, {"4k randread QD32", false, 32}, {"4k randwrite QD32", true, 32}} {
		n := run(w.qd, nvmeOp(w.write))
		b := run(w.qd, nbdOp(w.write))
		fmt.Fprintf(&table, "| %s | %.0f | %.0f | %.2f× | %d / %d | %d / %d |\n",
			w.name, n.iops, b.iops, n.iops/b.iops, us(n.p50), us(n.p99), us(b.p50), us(b.p99))
		t.Logf("%s: NVMe/TCP %.0f IOPS (mean %v), NBD %.0f IOPS (mean %v)", w.name, n.iops, n.avg, b.iops, b.avg)
	}
	t.Logf("%d s per cell, QD32 = 4 queues/connections x 8:\n%s", seconds, table.String())
}

// nbdPipe is an NBD connection with many requests in flight (simple
// replies), for the benchmark: a goroutine per request, one reader.
type nbdPipe struct {
	c       net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	cookie  uint64
	waiting map[uint64]chan error
	bufs    map[uint64][]byte
	err     error
}

func dialNBDPipe(addr, export string) (*nbdPipe, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	var greet [18]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		return nil, err
	}
	opt := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0)
	opt = binary.BigEndian.AppendUint64(opt, 0x49484156454F5054)
	opt = binary.BigEndian.AppendUint32(opt, 7) // OPT_GO
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(data)))
	if _, err := c.Write(append(opt, data...)); err != nil {
		return nil, err
	}
	for {
		var rh [20]byte
		if _, err := io.ReadFull(br, rh[:]); err != nil {
			return nil, err
		}
		typ, n := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if _, err := br.Discard(int(n)); err != nil {
			return nil, err
		}
		if typ&(1<<31) != 0 {
			return nil, fmt.Errorf("NBD option error %#x", typ)
		}
		if typ == 1 { // ACK
			break
		}
	}
	p := &nbdPipe{c: c, waiting: map[uint64]chan error{}, bufs: map[uint64][]byte{}}
	go p.read(br)
	return p, nil
}

func (p *nbdPipe) read(br *bufio.Reader) {
	var err error
	for {
		var rep [16]byte
		if _, err = io.ReadFull(br, rep[:]); err != nil {
			break
		}
		cookie := binary.BigEndian.Uint64(rep[8:])
		p.mu.Lock()
		ch, buf := p.waiting[cookie], p.bufs[cookie]
		delete(p.waiting, cookie)
		delete(p.bufs, cookie)
		p.mu.Unlock()
		if ch == nil {
			err = fmt.Errorf("NBD reply to unknown cookie %d", cookie)
			break
		}
		if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
			ch <- fmt.Errorf("NBD error %d", e)
			continue
		}
		if buf != nil {
			if _, err = io.ReadFull(br, buf); err != nil {
				ch <- err
				break
			}
		}
		ch <- nil
	}
	p.mu.Lock()
	p.err = err
	for c, ch := range p.waiting {
		ch <- err
		delete(p.waiting, c)
	}
	p.mu.Unlock()
}

// do sends one READ (0) or WRITE (1) of len(buf) at off and waits.
func (p *nbdPipe) do(cmd uint16, off uint64, buf []byte) error {
	ch := make(chan error, 1)
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return p.err
	}
	p.cookie++
	cookie := p.cookie
	p.waiting[cookie] = ch
	if cmd == 0 {
		p.bufs[cookie] = buf
	}
	p.mu.Unlock()
	req := make([]byte, 28, 28+len(buf))
	binary.BigEndian.PutUint32(req, 0x25609513)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], cookie)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], uint32(len(buf)))
	if cmd == 1 {
		req = append(req, buf...)
	}
	p.wmu.Lock()
	_, err := p.c.Write(req)
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return <-ch
}

func (p *nbdPipe) close() { p.c.Close() }
