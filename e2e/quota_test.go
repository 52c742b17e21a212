package e2e

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestRackQuota: creates and deletes keep the rack's usage in their
// transactions, and a create past the quota is refused while what
// exists stays.
func TestRackQuota(t *testing.T) {
	_, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	usage := func() *ballastpb.RackUsage {
		t.Helper()
		resp, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.GetQuotaResponse, error) {
			return a.GetQuota(ctx, &ballastpb.GetQuotaRequest{})
		})
		if err != nil {
			t.Fatalf("get quota: %v", err)
		}
		return resp.GetUsage()
	}
	for i := range 3 {
		createVolume(t, c, fmt.Sprintf("q%d", i), 1<<20)
	}
	if u := usage(); u.Volumes != 3 || u.Bytes != 3<<20 {
		t.Fatalf("usage after 3 creates: %v", u)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.SetQuotaResponse, error) {
		return a.SetQuota(ctx, &ballastpb.SetQuotaRequest{Quota: &ballastpb.RackQuota{MaxVolumes: 4, MaxBytes: 5 << 20}})
	}); err != nil {
		t.Fatalf("set quota: %v", err)
	}
	create := func(name string, size uint64) error {
		_, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.CreateVolumeResponse, error) {
			return a.CreateVolume(ctx, &ballastpb.CreateVolumeRequest{Name: name, SizeBytes: size})
		})
		return err
	}
	if err := create("big", 3<<20); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("create past the byte quota: %v, want ResourceExhausted", err)
	}
	if err := create("q3", 1<<20); err != nil {
		t.Fatalf("create within the quota: %v", err)
	}
	if err := create("q4", 1<<20); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("create past the volume quota: %v, want ResourceExhausted", err)
	}
	if _, err := adminDo(t, c, func(ctx context.Context, a ballastpb.AdminClient) (*ballastpb.DeleteVolumeResponse, error) {
		return a.DeleteVolume(ctx, &ballastpb.DeleteVolumeRequest{Name: "q0"})
	}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if u := usage(); u.Volumes != 3 || u.Bytes != 3<<20 {
		t.Fatalf("usage after the delete: %v", u)
	}
	if err := create("q4", 1<<20); err != nil {
		t.Fatalf("create after a delete freed room: %v", err)
	}
}
