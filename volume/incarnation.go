package volume

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// Incarnations
//
// A head node's data directory carries an incarnation, a random id written
// when the directory is first used. A node restarted over an empty or
// replaced directory (a lost disk) has a new one, and holds none of the
// data its id was trusted with. Every group records each head node's
// incarnation (RegisterIncarnationCommand, sent by the node at every
// start), and each volume record names the incarnation that holds each of
// its copies (Volume.copies). A replica is a copy only while the two
// agree:
//
//   - a secondary whose copy is void is not promoted, as if it were
//     catching up, and the primary mirrors the volume to it in full and
//     reports it in sync under its new incarnation;
//   - a primary whose copy is void cannot renew its lease, so the volume
//     fails over to a mirrored secondary;
//   - an in-sync report for an incarnation the node no longer has is
//     refused.
//
// Registering changes no volume record (a command may write only one txn
// key): the records are read against the registry at each decision.

// registerIncarnationLocked records a head node's incarnation.
func (d *Directory) registerIncarnationLocked(c *ballastpb.RegisterIncarnationCommand) ApplyResult {
	if c.HeadNode == "" || c.Incarnation == "" {
		return ApplyResult{Err: fmt.Errorf("%w: an incarnation needs a head node and an id", ErrInvalid)}
	}
	old, ok := d.incarnations[c.HeadNode]
	switch {
	case !ok:
		d.incarnations[c.HeadNode] = &ballastpb.HeadNodeIncarnation{HeadNode: c.HeadNode, Incarnation: c.Incarnation}
	case old.Incarnation != c.Incarnation:
		d.incarnations[c.HeadNode] = &ballastpb.HeadNodeIncarnation{HeadNode: c.HeadNode, Incarnation: c.Incarnation, Replaced: true}
	}
	return ApplyResult{}
}

// Incarnation returns the incarnation a head node last registered in
// this group.
func (d *Directory) Incarnation(node string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	r, ok := d.incarnations[node]
	if !ok {
		return "", false
	}
	return r.Incarnation, true
}

// HoldsCopy says whether node's current incarnation holds the copy of v
// its record credits it with (whether it holds one at all is for the
// caller: primary, secondary, catching up).
func (d *Directory) HoldsCopy(v *ballastpb.Volume, node string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.holdsCopyLocked(v, node)
}

func (d *Directory) holdsCopyLocked(v *ballastpb.Volume, node string) bool {
	return HoldsCopy(v, node, d.incarnations[node])
}

// HoldsCopy says whether reg, a group's record of node's incarnation (nil
// if it never registered), holds the copy of v credited to node.
func HoldsCopy(v *ballastpb.Volume, node string, reg *ballastpb.HeadNodeIncarnation) bool {
	if reg == nil {
		// Never registered here: trusted, as before incarnations.
		return true
	}
	if inc, ok := CopyIncarnation(v, node); ok {
		return inc == reg.Incarnation
	}
	// Certified before the node first registered: its first incarnation
	// holds it.
	return !reg.Replaced
}

// CopyIncarnation returns the incarnation v's record credits with node's
// copy, if it names one.
func CopyIncarnation(v *ballastpb.Volume, node string) (string, bool) {
	for _, c := range v.Copies {
		if c.HeadNode == node {
			return c.Incarnation, true
		}
	}
	return "", false
}

// setCopy credits node's copy of v (a record the caller owns) to inc.
func setCopy(v *ballastpb.Volume, node, inc string) {
	v.Copies = slices.DeleteFunc(v.Copies, func(c *ballastpb.ReplicaCopy) bool { return c.HeadNode == node })
	v.Copies = append(v.Copies, &ballastpb.ReplicaCopy{HeadNode: node, Incarnation: inc})
	sort.Slice(v.Copies, func(i, j int) bool { return v.Copies[i].HeadNode < v.Copies[j].HeadNode })
}

// keepCopies drops the copies of v (a record the caller owns) credited to
// nodes not in keep.
func keepCopies(v *ballastpb.Volume, keep []string) {
	v.Copies = slices.DeleteFunc(v.Copies, func(c *ballastpb.ReplicaCopy) bool { return !slices.Contains(keep, c.HeadNode) })
}

// CopiesAt returns the copies to record for a new volume placed on nodes,
// as a group's registry (incarnation) knows them now.
func CopiesAt(nodes []string, incarnation func(node string) (string, bool)) []*ballastpb.ReplicaCopy {
	var out []*ballastpb.ReplicaCopy
	for _, n := range nodes {
		if inc, ok := incarnation(n); ok {
			out = append(out, &ballastpb.ReplicaCopy{HeadNode: n, Incarnation: inc})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].HeadNode < out[j].HeadNode })
	return slices.CompactFunc(out, func(a, b *ballastpb.ReplicaCopy) bool { return a.HeadNode == b.HeadNode })
}

func (d *Directory) incarnationsSnapshotLocked() []*ballastpb.HeadNodeIncarnation {
	out := make([]*ballastpb.HeadNodeIncarnation, 0, len(d.incarnations))
	for _, r := range d.incarnations {
		out = append(out, proto.Clone(r).(*ballastpb.HeadNodeIncarnation))
	}
	sort.Slice(out, func(i, j int) bool { return strings.Compare(out[i].HeadNode, out[j].HeadNode) < 0 })
	return out
}
