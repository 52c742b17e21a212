package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// inProcessRack is head nodes in this process (so the race detector
// sees them), which a test may stop and start again over their data
// directories.
type inProcessRack struct {
	t      *testing.T
	peers  []headnode.Peer
	dir    string
	port   int
	logger *slog.Logger
	lease  volume.LeaseConfig
	disk   headnode.DiskConfig
	// replWire is each head node's Config.ReplicationWire, by id (unset:
	// the default).
	replWire map[string]string

	mu    sync.Mutex
	nodes map[string]*headnode.Node
}

// startInProcessRack starts a rack of three head nodes (a zero lease: the
// default) and returns a client of it.
func startInProcessRack(t *testing.T, lease volume.LeaseConfig) (*inProcessRack, *attach.Client) {
	t.Helper()
	return startInProcessRackOf(t, 3, lease)
}

// startInProcessRackOf starts a rack of size head nodes.
func startInProcessRackOf(t *testing.T, size int, lease volume.LeaseConfig) (*inProcessRack, *attach.Client) {
	t.Helper()
	return startInProcessRackWith(t, size, lease, nil)
}

// startInProcessRackWith starts a rack of size head nodes after setup
// (if any) has seen it, the data directory of each head node p being
// filepath.Join(r.dir, p.ID).
func startInProcessRackWith(t *testing.T, size int, lease volume.LeaseConfig, setup func(r *inProcessRack)) (*inProcessRack, *attach.Client) {
	t.Helper()
	var ips []string
	for n := 1; n <= 2; n++ {
		for i := 1; i <= size; i++ {
			ips = append(ips, fmt.Sprintf("127.0.%d.%d", n, i))
		}
	}
	port := freePortOnAll(t, ips)
	r := &inProcessRack{t: t, dir: t.TempDir(), port: port, lease: lease, nodes: map[string]*headnode.Node{},
		logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var hns [][]string
	for i := 1; i <= size; i++ {
		p := headnode.Peer{ID: fmt.Sprintf("hn%d", i), Addresses: []string{
			fmt.Sprintf("127.0.1.%d:%d", i, port), fmt.Sprintf("127.0.2.%d:%d", i, port)}}
		r.peers = append(r.peers, p)
		hns = append(hns, p.Addresses)
	}
	if setup != nil {
		setup(r)
	}
	for _, p := range r.peers {
		r.start(p.ID)
	}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, n := range r.nodes {
			n.Close()
		}
	})
	c := &attach.Client{HeadNodes: hns, Logger: r.logger, RequestTimeout: 60 * time.Second}
	t.Cleanup(c.Close)
	return r, c
}

func (r *inProcessRack) start(id string) {
	r.t.Helper()
	for _, p := range r.peers {
		if p.ID != id {
			continue
		}
		n, err := headnode.Start(headnode.Config{ID: p.ID, ListenAddresses: p.Addresses,
			DataDir: filepath.Join(r.dir, p.ID), Peers: r.peers, Logger: r.logger, Lease: r.lease, Disk: r.disk,
			ReplicationWire: r.replWire[p.ID]})
		if err != nil {
			r.t.Fatal(err)
		}
		r.mu.Lock()
		r.nodes[id] = n
		r.mu.Unlock()
	}
}

// join starts head node p, not yet in the rack, to join it (it waits for
// AddHeadNode).
func (r *inProcessRack) join(p headnode.Peer) {
	r.t.Helper()
	n, err := headnode.Start(headnode.Config{ID: p.ID, ListenAddresses: p.Addresses, Join: true,
		DataDir: filepath.Join(r.dir, p.ID), Peers: append(slices.Clone(r.peers), p), Logger: r.logger, Lease: r.lease})
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.nodes[p.ID] = n
	r.mu.Unlock()
}

func (r *inProcessRack) stop(id string) {
	r.mu.Lock()
	n := r.nodes[id]
	delete(r.nodes, id)
	r.mu.Unlock()
	if n != nil {
		n.Close()
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func createVolume(t *testing.T, c *attach.Client, name string, size uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			_, err := a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: size})
			return err
		})
		if err == nil || status.Code(err) == codes.AlreadyExists {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestInProcessReplicatedIO writes and reads through the agent's client
// from many goroutines against three in-process head nodes.
func TestInProcessReplicatedIO(t *testing.T) {
	_, c := startInProcessRack(t, volume.LeaseConfig{})
	createVolume(t, c, "v", 16<<20)
	ctx := context.Background()
	vol, err := c.OpenVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)

	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := uint64(w) << 20
			for i := 0; i < 20; i++ {
				off := base + uint64(i*10007)
				data := bytes.Repeat([]byte{byte(w*20 + i + 1)}, 5000)
				if err := dev.WriteAt(ctx, data, off, false); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, len(data))
				if err := dev.ReadAt(ctx, got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, data) {
					t.Errorf("writer %d: read back differs at %d", w, off)
					return
				}
			}
		}()
	}
	wg.Wait()

	// Bounds: the head node refuses ranges past the end.
	err = dev.ReadAt(ctx, make([]byte, 8192), 16<<20-4096)
	if err == nil {
		t.Fatal("read past the end succeeded")
	}
	if err := dev.Trim(ctx, 0, 16<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := dev.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatalf("after trim of the whole volume, data remains (err %v)", err)
	}

	// Deleting the volume ends I/O to it with a clear error.
	if err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		_, err := a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: "v"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The primary may apply the deletion a moment after the leader did.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := dev.WriteAt(ctx, make([]byte, 4096), 0, false)
		if errors.Is(err, attach.ErrVolumeGone) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("write to a deleted volume: %v, want ErrVolumeGone", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
