package headnode

// Copies of volumes this node no longer holds a role in: the old primary
// of a failover that came back, a secondary that was replaced, a volume
// deleted while the node was down. Their blocks would otherwise stay on
// the node's disk for good.

import (
	"context"
	"slices"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// staleSweepInterval is how often a node looks for copies to drop.
const staleSweepInterval = 30 * time.Second

// replicaOf says whether node holds a role in volume v: primary, mirrored
// secondary or one catching up.
func replicaOf(v *ballastpb.Volume, node string) bool {
	return v.Primary == node || slices.Contains(v.Secondaries, node) || slices.Contains(v.CatchingUp, node)
}

// staleCopies returns the volumes of local that the rack's volumes (a
// linearizable listing) do not name node a replica of, deleted ones
// included.
func staleCopies(local []uint64, rack []*ballastpb.Volume, node string) []uint64 {
	byID := make(map[uint64]*ballastpb.Volume, len(rack))
	for _, v := range rack {
		byID[v.Id] = v
	}
	var stale []uint64
	for _, id := range local {
		if v, ok := byID[id]; !ok || !replicaOf(v, node) {
			stale = append(stale, id)
		}
	}
	return stale
}

func (n *Node) sweepLoop(ctx context.Context) {
	every(ctx, staleSweepInterval, func() {
		if err := n.sweepStaleCopies(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("look for stale volume copies", "err", err)
		}
	})
}

// sweepStaleCopies drops every local copy of a volume this node is no
// longer a replica of. The decision needs the directory as it is now, not
// as this node has applied it so far (a node that just restarted may not
// yet know a volume created since its last snapshot): it asks the leader
// for a linearizable listing, and drops a copy only if its own directory
// agrees too.
func (n *Node) sweepStaleCopies(ctx context.Context) error {
	local, err := n.blocks.Volumes()
	if err != nil || len(local) == 0 {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := n.admin.ListVolumes(lctx, &ballastpb.ListVolumesRequest{})
	if err != nil {
		return err
	}
	for _, id := range staleCopies(local, list.Volumes, n.cfg.ID) {
		n.mu.Lock()
		_, serving := n.primaries[id]
		n.mu.Unlock()
		if serving {
			continue // stopStalePrimaries ends it first
		}
		stillStale := func() bool {
			v, ok := n.volumeByID(id)
			return !ok || !replicaOf(v, n.cfg.ID)
		}
		dropped, err := n.repl.dropUnlessReplica(id, stillStale, func() error { return n.blocks.DropVolume(id) })
		switch {
		case err != nil:
			n.log.Error("drop stale volume copy", "volume_id", id, "err", err)
		case dropped:
			n.log.Info("dropped the copy of a volume this node is no longer a replica of", "volume_id", id)
		}
	}
	return nil
}
