package e2e

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
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
	// The primary replicates over a framed session too.
	sessions := 0
	r.mu.Lock()
	for _, n := range r.nodes {
		sessions += n.IOStats().FramedReplicationSessions
	}
	r.mu.Unlock()
	if sessions != 1 {
		t.Errorf("%d framed replication sessions in the rack, want 1 (volume v's)", sessions)
	}
}

// TestInProcessMixedReplicationWires: head nodes that replicate over gRPC
// only (as nodes of a build before framed replication) beside one that
// speaks it: every pairing replicates, the framed node falling back to
// gRPC with the others, and nothing is served framed.
func TestInProcessMixedReplicationWires(t *testing.T) {
	r, c := startInProcessRackWith(t, 3, volume.LeaseConfig{}, func(r *inProcessRack) {
		r.replWire = map[string]string{"hn2": headnode.ReplicationGRPC, "hn3": headnode.ReplicationGRPC}
	})
	ctx := context.Background()
	primaries := map[string]bool{}
	for i := 0; i < 9 && !(primaries["hn1"] && len(primaries) >= 2); i++ {
		name := fmt.Sprintf("v%d", i)
		createVolume(t, c, name, 4<<20)
		v, err := c.OpenVolume(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		dev := attach.NewDevice(v)
		data := bytes.Repeat([]byte{byte(i + 1)}, 16384)
		if err := dev.WriteAt(ctx, data, 4096, false); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		got := make([]byte, len(data))
		if err := dev.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %s back: %v, or not the bytes written", name, err)
		}
		v.Close()
		resp, err := c.Lookup(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		primaries[resp.Volume.Primary] = true
	}
	if !primaries["hn1"] {
		t.Fatalf("no volume has the framed node hn1 as its primary (primaries %v): the fallback went untested", primaries)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, n := range r.nodes {
		if s := n.IOStats().FramedReplicationSessions; s != 0 {
			t.Errorf("%s serves %d framed replication sessions; no primary may open one here", id, s)
		}
	}
}
