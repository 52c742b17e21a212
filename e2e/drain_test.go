package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestDrainHeadNode moves the leadership of every group the directory
// leader leads off it, through the admin API of another head node, and
// the rack keeps serving admin requests under the new leaders.
func TestDrainHeadNode(t *testing.T) {
	_, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rackStatus := func() *ballastpb.RackStatusResponse {
		var st *ballastpb.RackStatusResponse
		if err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			var err error
			st, err = a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
			return err
		}); err != nil {
			t.Fatalf("rack status: %v", err)
		}
		return st
	}
	var leader string
	for leader == "" {
		leader = rackStatus().Leader
		if ctx.Err() != nil {
			t.Fatal("no leader")
		}
	}
	var resp *ballastpb.DrainHeadNodeResponse
	if err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		var err error
		resp, err = a.DrainHeadNode(ctx, &ballastpb.DrainHeadNodeRequest{HeadNode: leader})
		return err
	}); err != nil {
		t.Fatalf("drain %s: %v", leader, err)
	}
	if !slices.Contains(resp.Moved, 0) {
		t.Fatalf("drain moved groups %v, want the directory group (0) among them", resp.Moved)
	}
	st := rackStatus()
	for _, g := range st.Groups {
		if g.HeadNode == leader && g.State == "Leader" {
			t.Fatalf("%s still leads group %d after the drain", leader, g.Group)
		}
	}
	if st.Leader == leader || st.Leader == "" {
		t.Fatalf("directory leader after draining %s: %q", leader, st.Leader)
	}
	// The rack still takes commands under its new leader.
	createVolume(t, c, "after-drain", 1<<20)
	t.Logf("drained %s; %s leads", leader, st.Leader)
}
