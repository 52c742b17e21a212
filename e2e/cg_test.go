package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/headnode"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestConsistencyGroupCuts takes snapshot cuts of a consistency group of
// three volumes (in three volume groups) while one writer writes them in
// turn, each write issued only after the one before was acknowledged: a
// chain of dependent writes across the volumes. Every cut must take a
// prefix of the chain: if it holds write n, it holds every write before
// n, whichever volume that went to. One cut's coordinator dies after its
// holds: that member's primary lets the writes go on its own, and the
// later cuts go on.
func TestConsistencyGroupCuts(t *testing.T) {
	// A long lease: a head node restarted below stays primary.
	r, c := startInProcessRack(t, volume.LeaseConfig{Duration: 30 * time.Second, Margin: time.Second})
	names := []string{"cga", "cgb", "cgc"}
	for _, n := range names {
		createVolume(t, c, n, 16<<20)
	}
	code := func(err error) codes.Code { return status.Code(err) }

	// The refusals first.
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateConsistencyGroupResponse, error) {
		return a.CreateConsistencyGroup(ctx, &ballastpb.CreateConsistencyGroupRequest{Name: "db", Members: []string{"cga", "nosuch"}})
	}); code(err) != codes.NotFound {
		t.Fatalf("a group with an unknown volume: %v, want NotFound", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateConsistencyGroupResponse, error) {
		return a.CreateConsistencyGroup(ctx, &ballastpb.CreateConsistencyGroupRequest{Name: "db", Members: []string{"cga", "cga"}})
	}); code(err) != codes.InvalidArgument {
		t.Fatalf("a volume named twice: %v, want InvalidArgument", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateConsistencyGroupResponse, error) {
		return a.CreateConsistencyGroup(ctx, &ballastpb.CreateConsistencyGroupRequest{Name: "db", Members: names})
	}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateConsistencyGroupResponse, error) {
		return a.CreateConsistencyGroup(ctx, &ballastpb.CreateConsistencyGroupRequest{Name: "other", Members: []string{"cgb"}})
	}); code(err) != codes.FailedPrecondition {
		t.Fatalf("a volume in two groups: %v, want FailedPrecondition", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.DeleteVolumeResponse, error) {
		return a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: "cga"})
	}); code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of a member: %v, want FailedPrecondition", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.SnapshotConsistencyGroupResponse, error) {
		return a.SnapshotConsistencyGroup(ctx, &ballastpb.SnapshotConsistencyGroupRequest{Name: "nosuch"})
	}); code(err) != codes.NotFound {
		t.Fatalf("snapshot of an unknown group: %v, want NotFound", err)
	}

	ctx := context.Background()
	devs := make([]blockdev.Device, len(names))
	for i, n := range names {
		v, err := c.OpenVolume(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		devs[i] = attach.NewDevice(v)
	}
	// The chains: write n of chain w goes to volume n%3, block
	// w*chainBlocks + n/3, and is issued once write n-1 of the chain is
	// acknowledged. Several chains run at once, so that some write is in
	// flight whenever a cut is taken.
	const chains, chainBlocks = 8, 512
	stop := make(chan struct{})
	var written atomic.Int64
	var writerMu sync.Mutex
	var writerErr error
	var wg sync.WaitGroup
	for w := range chains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for n := 0; n/3 < chainBlocks; n++ {
				select {
				case <-stop:
					return
				default:
				}
				binary.BigEndian.PutUint64(buf, uint64(w)<<32|uint64(n))
				if err := devs[n%3].WriteAt(ctx, buf, uint64(w*chainBlocks+n/3)*4096, false); err != nil {
					writerMu.Lock()
					writerErr = fmt.Errorf("chain %d, write %d: %w", w, n, err)
					writerMu.Unlock()
					return
				}
				written.Add(1)
			}
		}()
	}
	failed := func() error {
		writerMu.Lock()
		defer writerMu.Unlock()
		return writerErr
	}
	snapshot := func() *ballastpb.SnapshotCut {
		t.Helper()
		resp, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.SnapshotConsistencyGroupResponse, error) {
			return a.SnapshotConsistencyGroup(ctx, &ballastpb.SnapshotConsistencyGroupRequest{Name: "db"})
		})
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		return resp.Cut
	}
	waitWrites := func(more int64) {
		t.Helper()
		target := written.Load() + more
		deadline := time.Now().Add(time.Minute)
		for written.Load() < target {
			if time.Now().After(deadline) || failed() != nil {
				t.Fatalf("the writers stalled at %d writes: %v", written.Load(), failed())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	const cuts = 10
	for range cuts / 2 {
		waitWrites(30)
		snapshot()
	}

	// A coordinator that holds a member and dies: the member's primary
	// settles the cut itself, refusing it in the record, and the writes go
	// on.
	vb := getVolume(t, c, "cgb")
	const deadCut = 0xdead
	hold(t, r, vb, deadCut, 300*time.Millisecond)
	for deadline := time.Now().Add(30 * time.Second); getVolume(t, c, "cgb").RefusedCutId != deadCut; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the primary did not refuse the dead coordinator's cut in its record")
		}
	}
	waitWrites(30)
	for range cuts - cuts/2 {
		waitWrites(30)
		snapshot()
	}
	close(stop)
	wg.Wait()
	if err := failed(); err != nil {
		t.Fatal(err)
	}

	cg, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetConsistencyGroupResponse, error) {
		return a.GetConsistencyGroup(ctx, &ballastpb.GetConsistencyGroupRequest{Name: "db"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := cg.Group.Generation; got != cuts || len(cg.Group.Cuts) != cuts {
		t.Fatalf("generation %d with %d cuts, want %d", got, len(cg.Group.Cuts), cuts)
	}
	prev := 0
	for _, cut := range cg.Group.Cuts {
		in := make([][]int, chains) // the writes of each chain the cut holds
		for _, m := range cut.Members {
			idx := slices.Index(names, m.Volume)
			v := getVolume(t, c, m.Volume)
			blocks, err := r.node(v.Primary).BlocksWrittenThrough(m.VolumeId, m.Seq)
			if err != nil {
				t.Fatalf("cut %d, %s: %v", cut.Generation, m.Volume, err)
			}
			for _, b := range blocks {
				w, k := int(b)/chainBlocks, int(b)%chainBlocks
				in[w] = append(in[w], k*3+idx)
			}
		}
		total := 0
		for w := range in {
			slices.Sort(in[w])
			for i, n := range in[w] {
				if n != i {
					t.Fatalf("cut %d holds write %d of chain %d but not write %d: not crash consistent", cut.Generation, n, w, i)
				}
			}
			total += len(in[w])
		}
		if total < prev || total == 0 {
			t.Fatalf("cut %d holds %d writes, after a cut of %d", cut.Generation, total, prev)
		}
		prev = total
		t.Logf("cut %d: %d writes, every chain a prefix", cut.Generation, total)
	}
	for _, n := range names {
		if v := getVolume(t, c, n); v.CutGeneration != cuts || v.ConsistencyGroup != "db" {
			t.Fatalf("%s: in %q with cut %d, want db and %d", n, v.ConsistencyGroup, v.CutGeneration, cuts)
		}
	}

	// A primary that restarts while it holds writes for a cut settles the
	// cut before it lets a write through: the hold is on its disk.
	va := getVolume(t, c, "cga")
	const restartCut = 0xbeef
	hold(t, r, va, restartCut, time.Minute)
	r.stop(va.Primary)
	r.start(va.Primary)
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	err = devs[0].WriteAt(wctx, make([]byte, 4096), 15<<20, false)
	wcancel()
	if err != nil {
		t.Fatalf("a write after the restart: %v", err)
	}
	if v := getVolume(t, c, "cga"); v.Epoch != va.Epoch || v.RefusedCutId != restartCut {
		t.Fatalf("after the restart: epoch %d (was %d), refused cut %d; want the same epoch and cut %d refused", v.Epoch, va.Epoch, v.RefusedCutId, restartCut)
	}

	// Deleted, the group frees its members.
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.DeleteConsistencyGroupResponse, error) {
		return a.DeleteConsistencyGroup(ctx, &ballastpb.DeleteConsistencyGroupRequest{Name: "db"})
	}); err != nil {
		t.Fatalf("delete the group: %v", err)
	}
	list, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.ListConsistencyGroupsResponse, error) {
		return a.ListConsistencyGroups(ctx, &ballastpb.ListConsistencyGroupsRequest{})
	})
	if err != nil || len(list.Groups) != 0 {
		t.Fatalf("groups after the delete: %v, %v", list, err)
	}
	if v := getVolume(t, c, "cga"); v.ConsistencyGroup != "" {
		t.Fatalf("cga is still in %q", v.ConsistencyGroup)
	}
}

// hold asks vol's primary to hold its writes for cut id, as a snapshot's
// coordinator does, for at most holdFor.
func hold(t *testing.T, r *inProcessRack, vol *ballastpb.Volume, id uint64, holdFor time.Duration) {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+r.peer(vol.Primary).Addresses[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ballastpb.NewAdminClient(conn).HoldForCut(ctx, &ballastpb.HoldForCutRequest{
		VolumeId: vol.Id, Epoch: vol.Epoch, CutId: id, HoldMillis: uint64(holdFor / time.Millisecond)}); err != nil {
		t.Fatalf("hold %s for cut %d: %v", vol.Name, id, err)
	}
}

// getVolume reads a volume's record through the admin API.
func getVolume(t *testing.T, c *attach.Client, name string) *ballastpb.Volume {
	t.Helper()
	resp, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetVolumeResponse, error) {
		return a.GetVolume(ctx, &ballastpb.GetVolumeRequest{Name: name})
	})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return resp.Volume
}

// node returns the running head node id.
func (r *inProcessRack) node(id string) *headnode.Node {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.nodes[id]
	if !ok {
		r.t.Fatalf("head node %q is not running", id)
	}
	return n
}

// peer returns head node id's configuration.
func (r *inProcessRack) peer(id string) headnode.Peer {
	r.t.Helper()
	for _, p := range r.peers {
		if p.ID == id {
			return p
		}
	}
	r.t.Fatalf("no head node %q", id)
	return headnode.Peer{}
}
