package e2e

import (
	"bytes"
	"context"
	"testing"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/volume"
)

// TestInProcessBothWires: an agent's client on the framed protocol (the
// default) and one on gRPC write and read one volume side by side and see
// each other's writes; the primary serves the first over a framed
// connection.
func TestInProcessBothWires(t *testing.T) {
	r, framed := startInProcessRack(t, volume.LeaseConfig{})
	grpc := &attach.Client{HeadNodes: framed.HeadNodes, IOWire: attach.IOWireGRPC, Logger: r.logger}
	defer grpc.Close()
	createVolume(t, framed, "v", 16<<20)
	ctx := context.Background()
	devs := map[string]*attach.Volume{}
	for name, c := range map[string]*attach.Client{"framed": framed, "grpc": grpc} {
		v, err := c.OpenVolume(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		devs[name] = v
	}
	write := func(via string, off uint64, b byte) {
		if err := attach.NewDevice(devs[via]).WriteAt(ctx, bytes.Repeat([]byte{b}, 8192), off, false); err != nil {
			t.Fatalf("write via %s: %v", via, err)
		}
	}
	check := func(via string, off uint64, b byte) {
		got := make([]byte, 8192)
		if err := attach.NewDevice(devs[via]).ReadAt(ctx, got, off); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{b}, 8192)) {
			t.Fatalf("read via %s at %d: %v, or not the bytes written", via, off, err)
		}
	}
	write("framed", 0, 1)
	write("grpc", 1<<20, 2)
	check("grpc", 0, 1)
	check("framed", 1<<20, 2)

	resp, err := framed.Lookup(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	primary := r.nodes[resp.Volume.Primary]
	r.mu.Unlock()
	if n := primary.IOStats().FramedConnections; n != 1 {
		t.Errorf("the primary has %d framed connections open, want 1 (the framed client's)", n)
	}
}
