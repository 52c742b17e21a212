package headnode

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	// The agent's real client, so that both ends of the transport are
	// measured. Only this test imports attach: the package never does.
	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/internal/rpc"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BenchmarkBlockIOTransport measures the agent → primary transport alone,
// gRPC's BlockIO stream and the framed protocol side by side: the agent's
// client (attach) writing to this package's servers over loopback TCP, on
// one shared port as a head node serves them, with a handler that answers
// at once. It reports the wall time and allocations per request and the
// CPU time of the whole process (client and server) per request.
//
//	go test -run '^$' -bench BlockIOTransport -benchtime 20000x ./headnode/
func BenchmarkBlockIOTransport(b *testing.B) {
	for _, w := range []struct {
		name     string
		size, qd int
	}{
		{"write=4KiB/qd=1", 4 << 10, 1},
		{"write=4KiB/qd=32", 4 << 10, 32},
		{"write=1MiB/qd=8", 1 << 20, 8},
	} {
		for _, wire := range []attach.IOWire{attach.IOWireGRPC, attach.IOWireFramed} {
			b.Run(fmt.Sprintf("%s/wire=%s", w.name, wire), func(b *testing.B) {
				benchTransport(b, wire, w.size, w.qd)
			})
		}
	}
}

func benchTransport(b *testing.B, wire attach.IOWire, size, qd int) {
	addr := startBenchServer(b)
	c := &attach.Client{HeadNodes: [][]string{{addr}}, IOWire: wire, Logger: slog.New(slog.DiscardHandler)}
	defer c.Close()
	ctx := context.Background()
	v, err := c.OpenVolume(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	dev := attach.NewDevice(v)
	data := make([]byte, size)
	if err := dev.WriteAt(ctx, data, 0, false); err != nil { // connect first
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for next.Add(1) <= int64(b.N) {
				if err := dev.WriteAt(ctx, buf, 0, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}

// benchAdmin answers the one admin call a client opens a volume with.
type benchAdmin struct {
	ballastpb.UnimplementedAdminServer
	addr string
}

func (a benchAdmin) GetVolume(ctx context.Context, req *ballastpb.GetVolumeRequest) (*ballastpb.GetVolumeResponse, error) {
	return &ballastpb.GetVolumeResponse{
		Volume:   &ballastpb.Volume{Id: 1, Name: req.Name, SizeBytes: 1 << 40, Primary: "hn1"},
		Replicas: []*ballastpb.HeadNode{{Id: "hn1", Addresses: []string{a.addr}}},
	}, nil
}

// startBenchServer serves BlockIO (gRPC and framed, on one port, with the
// default bounds) over a handler that answers at once.
func startBenchServer(b *testing.B) string {
	b.Helper()
	var cfg IOConfig
	cfg.EnsureDefaults()
	s := newBlockIOServer(cfg, slog.New(slog.DiscardHandler), func(ctx context.Context, req *ballastpb.IORequest) *ballastpb.IOReply {
		return &ballastpb.IOReply{Id: req.Id}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := rpc.NewServer()
	ballastpb.RegisterBlockIOServer(srv, s)
	ballastpb.RegisterAdminServer(srv, benchAdmin{addr: l.Addr().String()})
	wire := newWireServer(s, slog.New(slog.DiscardHandler))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(newWireListener(l, wire, nil, slog.New(slog.DiscardHandler)))
	}()
	b.Cleanup(func() {
		srv.Stop()
		wire.close()
		<-served
		wire.wait()
	})
	return l.Addr().String()
}

// processCPU is the process's CPU time so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
