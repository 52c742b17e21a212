package e2e

import (
	"context"
	"fmt"
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

func adminDo[T any](t *testing.T, c *attach.Client, fn func(context.Context, ballastpb.AdminClient) (T, error)) (T, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out T
	err := c.Admin(ctx, func(ctx context.Context, a ballastpb.AdminClient) error {
		var err error
		out, err = fn(ctx, a)
		return err
	})
	return out, err
}

// TestVolumeGroups: volumes spread over the volume groups, each record in
// its group and the name in the directory; a name freed by a delete can be
// taken again (with a new id); two creates racing on one name leave one
// volume; and the groups' leaders spread over the head nodes.
func TestVolumeGroups(t *testing.T) {
	r, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	groups := map[uint64]int{}
	ids := map[uint64]bool{}
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("v%02d", i)
		createVolume(t, c, name, 1<<20)
		resp, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
			return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: name})
		})
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		v := resp.Volume
		if v.Group < 1 || v.Group > headnode.DefaultVolumeGroups || ids[v.Id] {
			t.Fatalf("volume %s: group %d, id %d (ids so far %v)", name, v.Group, v.Id, ids)
		}
		groups[v.Group]++
		ids[v.Id] = true
	}
	if len(groups) != headnode.DefaultVolumeGroups {
		t.Fatalf("20 volumes landed in %d groups (%v), want all %d", len(groups), groups, headnode.DefaultVolumeGroups)
	}

	list, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.ListVolumesResponse, error) {
		return a.ListVolumes(ctx, &ballastpb.ListVolumesRequest{})
	})
	if err != nil || len(list.Volumes) != 20 {
		t.Fatalf("list: %v volumes, err %v", len(list.GetVolumes()), err)
	}

	// Delete, then take the name again: a new id, the old one is spent.
	old, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "v03"})
	})
	if err != nil {
		t.Fatalf("get v03: %v", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.DeleteVolumeResponse, error) {
		return a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: "v03"})
	}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "v03"})
	}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v, want NotFound", err)
	}
	createVolume(t, c, "v03", 1<<20)
	again, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "v03"})
	})
	if err != nil {
		t.Fatalf("get re-created v03: %v", err)
	}
	if again.GetVolume().GetId() == 0 || again.Volume.Id == old.Volume.Id {
		t.Fatalf("re-created v03 has id %d (old %d)", again.GetVolume().GetId(), old.Volume.Id)
	}

	// Creates racing on one name through two head nodes, each the
	// proposer of its own transaction: one wins, the other is told the
	// name exists.
	raceName(t, r, "race")
	for i := range 5 {
		raceName(t, r, fmt.Sprintf("race%d", i))
	}

	// Every head node reports every group; the volume groups' leaders
	// spread over the three nodes.
	deadline := time.Now().Add(45 * time.Second)
	for {
		st, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.RackStatusResponse, error) {
			return a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
		})
		if err != nil {
			t.Fatal(err)
		}
		leads := map[string]int{}
		members := map[uint64]int{}
		for _, g := range st.Groups {
			members[g.Group]++
			if g.State == "Leader" && g.Group > 0 {
				leads[g.HeadNode]++
			}
		}
		spread := len(leads) == 3
		for _, n := range leads {
			spread = spread && n >= headnode.DefaultVolumeGroups/3
		}
		if len(members) == headnode.DefaultVolumeGroups+1 && spread {
			t.Logf("volume groups led: %v", leads)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("groups %v members, volume groups led %v: not spread", members, leads)
		}
		time.Sleep(time.Second)
	}
}

// TestFiveHeadNodes: in a rack of five, each group has three voters and
// two non-voting members, voters and leaders rotate over the five, every
// node applies every group, and a volume is written and read through a
// failover of its primary.
func TestFiveHeadNodes(t *testing.T) {
	r, c := startInProcessRackOf(t, 5, volume.DefaultLeaseConfig)
	createVolume(t, c, "five", 1<<20)
	var st *ballastpb.RackStatusResponse
	deadline := time.Now().Add(45 * time.Second)
	for {
		var err error
		st, err = adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.RackStatusResponse, error) {
			return a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
		})
		if err != nil {
			t.Fatal(err)
		}
		members := map[uint64]int{}
		leaders := map[uint64]string{}
		votersOf := map[uint64][]string{}
		for _, g := range st.Groups {
			members[g.Group]++
			votersOf[g.Group] = g.Voters
			if g.State == "Leader" {
				leaders[g.Group] = g.HeadNode
			}
		}
		ok := len(members) == 1+headnode.DefaultVolumeGroups
		leadersPerNode := map[string]int{}
		for g, m := range members {
			ok = ok && m == 5 && len(votersOf[g]) == 3 && leaders[g] != ""
			if g > 0 {
				// Volume group g prefers (and is handed to) hn((g-1)%5+1),
				// one of its voters.
				preferred := fmt.Sprintf("hn%d", (g-1)%5+1)
				ok = ok && leaders[g] == preferred && slices.Contains(votersOf[g], preferred)
				leadersPerNode[leaders[g]]++
			}
		}
		if ok {
			t.Logf("volume groups led per head node: %v", leadersPerNode)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("groups not settled: members %v, leaders %v, voters %v", members, leaders, votersOf)
		}
		time.Sleep(time.Second)
	}

	v, err := c.OpenVolume(context.Background(), "five")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dev := attach.NewDevice(v)
	data := make([]byte, 8192)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := dev.WriteAt(ctx, data, 4096, false); err != nil {
		t.Fatal(err)
	}
	info, _ := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "five"})
	})
	r.stop(info.Volume.Primary)
	got := make([]byte, len(data))
	if err := dev.ReadAt(ctx, got, 4096); err != nil {
		t.Fatalf("read after stopping primary %s: %v", info.Volume.Primary, err)
	}
	if string(got) != string(data) {
		t.Fatal("read back different data after the failover")
	}
	after, _ := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: "five"})
	})
	t.Logf("volume in group %d failed over from %s to %s (epoch %d)", info.Volume.Group, info.Volume.Primary, after.GetVolume().GetPrimary(), after.GetVolume().GetEpoch())
}

// raceName creates name through the first two head nodes at once and
// checks that exactly one create succeeded and the other was told the
// name exists.
func raceName(t *testing.T, r *inProcessRack, name string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		c := &attach.Client{HeadNodes: [][]string{r.peers[i].Addresses}, Logger: r.logger, RequestTimeout: 60 * time.Second}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateVolumeResponse, error) {
				return a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: 1 << 20})
			})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case status.Code(err) != codes.AlreadyExists:
			t.Fatalf("racing create of %s: %v", name, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d racing creates of %s succeeded, want 1 (%v)", won, name, errs)
	}
}
