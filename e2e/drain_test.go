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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
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
	// Drain a rack that has settled: a group still electing when the
	// drain runs may elect the drained node a moment later (the leader
	// spreading moves it off again, within seconds, but not at once).
	var leader string
	for {
		st := rackStatus()
		groups, led := map[uint64]bool{}, map[uint64]bool{}
		for _, g := range st.Groups {
			groups[g.Group] = true
			if g.State == "Leader" {
				led[g.Group] = true
			}
		}
		if st.Leader != "" && len(groups) > 0 && len(led) == len(groups) {
			leader = st.Leader
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("groups without a leader: %d of %d", len(groups)-len(led), len(groups))
		}
		time.Sleep(50 * time.Millisecond)
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
	leads := func(st *ballastpb.RackStatusResponse, node string) []uint64 {
		var led []uint64
		for _, g := range st.Groups {
			if g.HeadNode == node && g.State == "Leader" {
				led = append(led, g.Group)
			}
		}
		return led
	}
	st := rackStatus()
	if led := leads(st, leader); len(led) > 0 {
		t.Fatalf("%s still leads groups %v after the drain", leader, led)
	}
	if st.Leader == leader || st.Leader == "" {
		t.Fatalf("directory leader after draining %s: %q", leader, st.Leader)
	}
	// The rack still takes commands under its new leaders.
	createVolume(t, c, "after-drain", 1<<20)
	// The other nodes hand volume groups to their preferred node every
	// 5 s: none may go back to the drained node.
	time.Sleep(12 * time.Second)
	if led := leads(rackStatus(), leader); len(led) > 0 {
		t.Fatalf("drained %s was handed groups %v", leader, led)
	}
	if err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		_, err := a.DrainHeadNode(ctx, &ballastpb.DrainHeadNodeRequest{HeadNode: leader, Undo: true})
		return err
	}); err != nil {
		t.Fatalf("undo the drain: %v", err)
	}
	// Undrained, it gets back the volume groups that prefer it.
	for len(leads(rackStatus(), leader)) == 0 {
		if ctx.Err() != nil {
			t.Fatalf("%s leads nothing after the drain ended", leader)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("drained %s (%s led the directory after), then it led %v again", leader, st.Leader, leads(rackStatus(), leader))
}
