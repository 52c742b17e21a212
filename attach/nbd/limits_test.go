package nbd

import (
	"bytes"
	"context"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/inflight"
)

// Connections past MaxConnections are refused in the handshake with a
// reason, by our raw client and by libnbd's nbdinfo, while the ones
// already open keep working; a slot freed is usable again.
func TestConnectionLimitRefusesExcess(t *testing.T) {
	ts := startServer(t, func(s *Server) { s.MaxConnections = 2 })
	c1 := connect(t, ts.addr, "disk", false, false)
	c2 := connect(t, ts.addr, "disk", false, false)

	c3 := dial(t, ts.addr)
	c3.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c3.sendOption(optGo, exportData("disk"))
	r := c3.expectOptReply(optGo, repErrPolicy)
	if !strings.Contains(string(r.data), "too many NBD connections") {
		t.Errorf("refusal message %q", r.data)
	}
	c3.sendOption(optExportName, []byte("disk")) // no error reply: dropped
	c3.expectClosed()

	// Real clients: each must fail, and say why.
	real := 0
	// qemu-io prints the server's message; libnbd's nbdinfo only says the
	// server refused OPT_GO (its text for the error class, not ours).
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"qemu-io", "-f", "raw", "-c", "read 0 512", "nbd://" + ts.addr + "/disk"}, "too many NBD connections"},
		{[]string{"nbdinfo", "nbd://" + ts.addr + "/disk"}, "server replied with error to opt_go request"},
	} {
		args := c.args
		if _, err := exec.LookPath(args[0]); err != nil {
			t.Logf("%s not installed: its check is skipped", args[0])
			continue
		}
		real++
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), c.says) {
			t.Errorf("%s over the limit: err %v, output:\n%s", args[0], err, out)
		}
		t.Logf("%s over the limit says: %s", args[0], strings.TrimSpace(string(out)))
	}
	if s := ts.s.Stats(); s.Refused != uint64(1+real) || s.Connections != 2 {
		t.Errorf("stats %+v, want 2 connections and %d refused", s, 1+real)
	}
	ts.log.waitFor(t, "NBD connection refused: too many connections", "limit=2")

	// The first two were not disturbed.
	c1.pwrite(0, 4096, pattern(1, 8192))
	if got := c2.pread(4096, 8192); !bytes.Equal(got, pattern(1, 8192)) {
		t.Error("connection 2 reads back something else")
	}

	// A slot freed is a slot to use.
	c1.send(0, cmdDisc, 0, 0, 0, nil)
	c1.expectClosed()
	waitUntil(t, func() bool { return ts.s.Stats().Connections == 1 }, "one connection left")
	c4 := connect(t, ts.addr, "disk", false, false)
	if got := c4.pread(4096, 8192); !bytes.Equal(got, pattern(1, 8192)) {
		t.Error("connection 4 reads back something else")
	}
}

// A Limit shared by several connections bounds their bytes in flight
// together: a flood of writes on two connections against a stalled
// backend holds no more than the bound, and every write completes once
// the backend moves again.
func TestSharedLimitBoundsEveryConnection(t *testing.T) {
	shared := inflight.New(0, 32<<20)
	ts := startServer(t, func(s *Server) { s.Shared = shared })
	release := make(chan struct{})
	ts.disk.setHook(func(ctx context.Context, op string, off, length uint64) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	const perConn, size = 12, 4 << 20 // 48 MiB a connection: more than the bound
	var wg sync.WaitGroup
	for i := range 2 {
		c := connect(t, ts.addr, "disk", false, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := pattern(byte(i), size)
			for j := range perConn {
				c.send(0, cmdWrite, uint64(j), uint64(i)*size, size, payload)
			}
		}()
		t.Cleanup(func() {
			for range perConn {
				if r := c.readReply(); r.errno != 0 {
					t.Errorf("write failed: %+v", r)
				}
			}
		})
	}
	waitUntil(t, func() bool { return ts.disk.inFlight.Load() >= 8 }, "8 writes in the backend")
	time.Sleep(100 * time.Millisecond) // the readers would admit more now, if they could
	if n := ts.disk.maxInFlight.Load(); n != 8 {
		t.Errorf("%d writes of 4 MiB in the backend at once, want 8 (32 MiB shared)", n)
	}
	if s := shared.Stats(); s.PeakBytes > 32<<20 || s.Count != 8 {
		t.Errorf("shared stats %+v: want 8 writes and at most 32 MiB in flight", s)
	}
	close(release)
	wg.Wait()
	if s := shared.Stats(); s.PeakBytes > 32<<20 {
		t.Errorf("peak %d bytes over the bound", s.PeakBytes)
	}
}

// A request header that announces 4 GiB is refused without anything
// allocated for it: a READ gets EINVAL, a WRITE closes its connection.
func TestHugeLengthAllocatesNothing(t *testing.T) {
	ts := startServer(t, nil)
	c := connect(t, ts.addr, "disk", false, false)
	c.pread(0, 512) // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range 8 {
		c.send(0, cmdRead, uint64(i), 0, 0xffffffff, nil)
		c.simple(uint64(i), 22)
	}
	c.send(0, cmdWrite, 9, 0, 0xffffffff, nil)
	c.expectClosed()
	ts.log.waitFor(t, "exceeds the maximum block size")
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
		t.Errorf("%d bytes allocated while refusing 4 GiB requests", d)
	}
}
