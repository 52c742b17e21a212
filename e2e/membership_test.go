package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestAddMoveRemoveHeadNode grows a running rack of three by a fourth head
// node (started with Join, then added: it follows every group), gives it a
// vote in the volume's group in place of another node, takes the vote back
// and removes it, while the volume's data stays readable and writable.
func TestAddMoveRemoveHeadNode(t *testing.T) {
	r, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	createVolume(t, c, "m", 1<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vol, err := c.OpenVolume(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)
	block := func(b byte) []byte { return slices.Repeat([]byte{b}, 4096) }
	if err := dev.WriteAt(ctx, block(1), 0, false); err != nil {
		t.Fatal(err)
	}

	hn4 := headnode.Peer{ID: "hn4", Addresses: []string{fmt.Sprintf("127.0.1.4:%d", r.port), fmt.Sprintf("127.0.2.4:%d", r.port)}}
	r.join(hn4)
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.AddHeadNodeResponse, error) {
		return a.AddHeadNode(ctx, &ballastpb.AddHeadNodeRequest{HeadNode: &ballastpb.HeadNode{Id: hn4.ID, Addresses: hn4.Addresses}})
	}); err != nil {
		t.Fatalf("add hn4: %v", err)
	}
	info, _ := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "m"})
	})
	group := info.Volume.Group

	// waitGroups waits until every group reports as cond says.
	waitGroups := func(what string, cond func(st *ballastpb.RackStatusResponse) bool) *ballastpb.RackStatusResponse {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			st, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.RackStatusResponse, error) {
				return a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
			})
			if err == nil && cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited a minute for %s: %v %v", what, err, st.GetGroups())
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// hn4 follows every group, without a vote, and has applied what its
	// leader has.
	waitGroups("hn4 to follow every group", func(st *ballastpb.RackStatusResponse) bool {
		leaderApplied := map[uint64]uint64{}
		for _, g := range st.Groups {
			if g.State == "Leader" {
				leaderApplied[g.Group] = g.AppliedIndex
			}
		}
		caughtUp := 0
		for _, g := range st.Groups {
			if g.HeadNode == "hn4" && !slices.Contains(g.Voters, "hn4") && g.AppliedIndex >= leaderApplied[g.Group] && g.AppliedIndex > 0 {
				caughtUp++
			}
		}
		return caughtUp == 1+headnode.DefaultVolumeGroups
	})

	// Give hn4 the vote of a node that is not the volume's primary.
	var from string
	for _, g := range waitGroups("a leader in the volume's group", func(st *ballastpb.RackStatusResponse) bool { return true }).Groups {
		if g.Group == group && g.HeadNode != info.Volume.Primary && slices.Contains(g.Voters, g.HeadNode) && g.HeadNode != "hn4" {
			from = g.HeadNode
		}
	}
	moveVoter := func(from, to string) {
		t.Helper()
		if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.MoveVoterResponse, error) {
			return a.MoveVoter(ctx, &ballastpb.MoveVoterRequest{Group: group, From: from, To: to})
		}); err != nil {
			t.Fatalf("move the vote of group %d from %s to %s: %v", group, from, to, err)
		}
		waitGroups(fmt.Sprintf("%s to vote in group %d instead of %s, which follows it", to, group, from), func(st *ballastpb.RackStatusResponse) bool {
			voted, follows := false, false
			for _, g := range st.Groups {
				if g.Group == group && g.HeadNode == to {
					voted = slices.Contains(g.Voters, to) && !slices.Contains(g.Voters, from) && len(g.Voters) == 3
				}
				if g.Group == group && g.HeadNode == from {
					follows = g.Leader != "" && g.State == "Follower"
				}
			}
			return voted && follows
		})
	}
	moveVoter(from, "hn4")
	if err := dev.WriteAt(ctx, block(2), 4096, false); err != nil {
		t.Fatalf("write with hn4 voting: %v", err)
	}
	_, err = adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.RemoveHeadNodeResponse, error) {
		return a.RemoveHeadNode(ctx, &ballastpb.RemoveHeadNodeRequest{HeadNode: "hn4"})
	})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("removing a head node that votes: %v, want FailedPrecondition", err)
	}

	moveVoter("hn4", from)
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.RemoveHeadNodeResponse, error) {
		return a.RemoveHeadNode(ctx, &ballastpb.RemoveHeadNodeRequest{HeadNode: "hn4"})
	}); err != nil {
		t.Fatalf("remove hn4: %v", err)
	}
	st := waitGroups("hn4 gone from every group", func(st *ballastpb.RackStatusResponse) bool {
		for _, g := range st.Groups {
			if g.HeadNode == "hn4" || slices.Contains(g.Voters, "hn4") {
				return false
			}
		}
		return true
	})
	for _, h := range st.HeadNodes {
		if h.Id == "hn4" {
			t.Fatalf("rack status still lists hn4: %v", st.HeadNodes)
		}
	}
	r.stop("hn4")

	got := make([]byte, 8192)
	if err := dev.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[:4096], block(1)) || !slices.Equal(got[4096:], block(2)) {
		t.Fatal("data changed through the membership changes")
	}
	t.Logf("hn4 joined, voted in group %d instead of %s, gave the vote back and left", group, from)
}
