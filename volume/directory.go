package volume

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
)

// Directory is the directory group's state machine: every volume by name.
// raft calls Apply, Snapshot and Restore from its FSM goroutine; readers
// call Get, ByID and List from any goroutine.
type Directory struct {
	// OnDelete, if set, is called (from raft's FSM goroutine, so it must not
	// block) for each volume that leaves the directory, so its data can be
	// reclaimed.
	OnDelete func(*ballastpb.Volume)
	// OnLeasesRenewed, if set, is called (from raft's FSM goroutine; it
	// must not block) when a head node's renewal is applied, with the
	// volumes it renewed: the group leader times leases from it.
	OnLeasesRenewed func(holder string, volumes []uint64)
	// OnVolumeAdded, if set, is called (from raft's FSM goroutine; it
	// must not block) when a volume appears in the group, created or
	// moved in: its primary has had no chance to renew its lease here
	// yet, and the group leader times the lease from now.
	OnVolumeAdded func(id uint64)
	// The hooks run under the directory's lock: a lock a hook takes must
	// never be held by a goroutine that reads the directory, or the two
	// wait for each other and the group applies nothing more.

	mu           sync.RWMutex
	byName       map[string]*ballastpb.Volume
	byID         map[uint64]*ballastpb.Volume
	nextVolumeID uint64
	sleds        map[string]*ballastpb.Sled // replaced, never changed in place
	// placements (directory group only): every volume name taken, with its
	// id and volume group.
	placements map[string]*ballastpb.VolumePlacement
	// draining (directory group only): head nodes being drained, which no
	// group's leadership is handed to.
	draining map[string]bool
	// headNodes and removed (directory group only): head nodes added to
	// the rack after it was founded, and head nodes taken out of it.
	headNodes map[string]*ballastpb.HeadNode
	removed   map[string]bool
	// incarnations (every group): each head node's registered
	// incarnation (incarnation.go).
	incarnations map[string]*ballastpb.HeadNodeIncarnation

	// txn is the group's share of transactions across groups. Its keys
	// (see keys.go) hold what transactions read and write: names and
	// placements here, volume records in volume groups; the maps above
	// are their decoded view, which every write of those keys updates.
	// moved holds, by id, the copies of volumes moved to another group
	// (Volume.moved_to): out of the decoded view, for a head node that
	// has not yet applied the move in the other group to look up.
	moved map[uint64]*ballastpb.Volume

	txn      *txn.Participant
	txnGroup txn.GroupID // never changes
	// index is the log index of the command being applied: a host write
	// of a txn key takes it as the key's version.
	index uint64
}

// NewDirectory returns an empty directory, as txn group 1.
func NewDirectory() *Directory { return NewGroupDirectory(1) }

// NewGroupDirectory returns the empty state of txn group g.
func NewGroupDirectory(g txn.GroupID) *Directory {
	return &Directory{
		moved:        map[uint64]*ballastpb.Volume{},
		txn:          txn.NewParticipant(g),
		txnGroup:     g,
		byName:       map[string]*ballastpb.Volume{},
		byID:         map[uint64]*ballastpb.Volume{},
		nextVolumeID: 1,
		sleds:        map[string]*ballastpb.Sled{},
		placements:   map[string]*ballastpb.VolumePlacement{},
		draining:     map[string]bool{},
		headNodes:    map[string]*ballastpb.HeadNode{},
		removed:      map[string]bool{},
		incarnations: map[string]*ballastpb.HeadNodeIncarnation{},
	}
}

// ApplyResult is what Apply returns for every command: the volume the
// command produced or changed, or the error that refused it.
type ApplyResult struct {
	Volume *ballastpb.Volume
	Sled   *ballastpb.Sled
	Err    error
	// Refused lists the volumes of a RenewLeasesCommand whose renewal
	// was refused (another primary or epoch, or deleted).
	Refused []uint64
	// Moved lists the volumes of a RenewLeasesCommand that moved to
	// another group: a renewal there is needed, but the primary is not
	// deposed.
	Moved     []uint64
	Placement *ballastpb.VolumePlacement
	// Txn is the answer to a txn command.
	Txn *txn.Result
}

// Apply implements raft.FSM.
func (d *Directory) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd ballastpb.DirectoryCommand
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return ApplyResult{Err: fmt.Errorf("directory: decode command at index %d: %w", l.Index, err)}
	}
	return d.ApplyCommand(l.Index, &cmd, l.AppendedAt.UnixNano())
}

// ApplyCommand applies one decoded command, the one at log index index.
// Every refusal is decided here, in log order, so that all replicas agree
// even when two proposals raced.
func (d *Directory) ApplyCommand(index uint64, cmd *ballastpb.DirectoryCommand, nowUnixNanos int64) ApplyResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.index = index
	switch op := cmd.Op.(type) {
	case *ballastpb.DirectoryCommand_Txn:
		return d.applyTxnLocked(index, op.Txn)
	case *ballastpb.DirectoryCommand_CreateVolume:
		v := proto.Clone(op.CreateVolume.Volume).(*ballastpb.Volume)
		if err := ValidateName(v.Name); err != nil {
			return ApplyResult{Err: err}
		}
		if err := ValidateSize(v.SizeBytes); err != nil {
			return ApplyResult{Err: err}
		}
		if _, ok := d.byName[v.Name]; ok {
			return ApplyResult{Err: fmt.Errorf("%w: %q", ErrExists, v.Name)}
		}
		if v.Primary == "" || len(v.Secondaries) == 0 {
			return ApplyResult{Err: fmt.Errorf("%w: volume %q has no placement", ErrInvalid, v.Name)}
		}
		if v.Id == 0 {
			// Created in the directory group itself: it spends the id.
			v.Id = d.nextVolumeID
			d.nextVolumeID++
		} else if _, ok := d.byID[v.Id]; ok {
			// In a volume group the directory spent the id already.
			return ApplyResult{Err: fmt.Errorf("%w: volume id %d", ErrExists, v.Id)}
		}
		v.BlockSizeBytes = BlockSizeBytes
		if v.Epoch == 0 {
			v.Epoch = 1
		}
		v.CreatedUnixNanos = nowUnixNanos
		// A new volume is empty: the incarnations its replicas have now
		// hold all of it.
		v.Copies = CopiesAt(append([]string{v.Primary}, v.Secondaries...), func(n string) (string, bool) {
			r, ok := d.incarnations[n]
			return r.GetIncarnation(), ok
		})
		if err := d.putLocked(v); err != nil {
			return ApplyResult{Err: err}
		}
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
	case *ballastpb.DirectoryCommand_ResizeVolume:
		v, ok := d.byName[op.ResizeVolume.Name]
		if !ok {
			return ApplyResult{Err: fmt.Errorf("%w: %q", ErrNotFound, op.ResizeVolume.Name)}
		}
		if err := ValidateSize(op.ResizeVolume.SizeBytes); err != nil {
			return ApplyResult{Err: err}
		}
		if op.ResizeVolume.SizeBytes < v.SizeBytes {
			return ApplyResult{Err: fmt.Errorf("%w: volume %q is %d bytes; shrinking to %d would lose data", ErrInvalid, v.Name, v.SizeBytes, op.ResizeVolume.SizeBytes)}
		}
		// Records are replaced, never changed in place, so that Shared can
		// hand them out without a copy.
		v = proto.Clone(v).(*ballastpb.Volume)
		v.SizeBytes = op.ResizeVolume.SizeBytes
		if err := d.putLocked(v); err != nil {
			return ApplyResult{Err: err}
		}
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
	case *ballastpb.DirectoryCommand_DeleteVolume:
		v, ok := d.byName[op.DeleteVolume.Name]
		if !ok {
			return ApplyResult{Err: fmt.Errorf("%w: %q", ErrNotFound, op.DeleteVolume.Name)}
		}
		if err := d.hostWriteLocked(txn.Write{Key: VolumeKey(v.Name), Delete: true}); err != nil {
			return ApplyResult{Err: err}
		}
		d.dropVolumeLocked(v)
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
	case *ballastpb.DirectoryCommand_PlaceVolume:
		return d.placeVolumeLocked(op.PlaceVolume)
	case *ballastpb.DirectoryCommand_UnplaceVolume:
		p, ok := d.placements[op.UnplaceVolume.Name]
		if !ok || p.Id != op.UnplaceVolume.Id {
			return ApplyResult{Err: fmt.Errorf("%w: no placement of %q with id %d", ErrNotFound, op.UnplaceVolume.Name, op.UnplaceVolume.Id)}
		}
		if err := d.hostWriteLocked(txn.Write{Key: NameKey(p.Name), Delete: true}); err != nil {
			return ApplyResult{Err: err}
		}
		delete(d.placements, p.Name)
		return ApplyResult{Placement: proto.Clone(p).(*ballastpb.VolumePlacement)}
	case *ballastpb.DirectoryCommand_SetDraining:
		if op.SetDraining.HeadNode == "" {
			return ApplyResult{Err: fmt.Errorf("%w: no head node to drain", ErrInvalid)}
		}
		if op.SetDraining.Draining {
			d.draining[op.SetDraining.HeadNode] = true
		} else {
			delete(d.draining, op.SetDraining.HeadNode)
		}
		return ApplyResult{}
	case *ballastpb.DirectoryCommand_AddHeadNode:
		h := op.AddHeadNode.HeadNode
		switch {
		case h == nil || h.Id == "" || len(h.Addresses) == 0:
			return ApplyResult{Err: fmt.Errorf("%w: a head node needs an id and addresses", ErrInvalid)}
		case d.removed[h.Id]:
			return ApplyResult{Err: fmt.Errorf("%w: head node %s was removed; its id is spent", ErrInvalid, h.Id)}
		}
		d.headNodes[h.Id] = proto.Clone(h).(*ballastpb.HeadNode)
		return ApplyResult{}
	case *ballastpb.DirectoryCommand_RemoveHeadNode:
		id := op.RemoveHeadNode.HeadNode
		if id == "" {
			return ApplyResult{Err: fmt.Errorf("%w: no head node to remove", ErrInvalid)}
		}
		delete(d.headNodes, id)
		d.removed[id] = true
		return ApplyResult{}
	case *ballastpb.DirectoryCommand_RegisterSled:
		return d.registerSledLocked(op.RegisterSled.Sled, nowUnixNanos)
	case *ballastpb.DirectoryCommand_SetSledState:
		return d.setSledStateLocked(op.SetSledState, nowUnixNanos)
	case *ballastpb.DirectoryCommand_RenewLease:
		return d.renewLeaseLocked(op.RenewLease)
	case *ballastpb.DirectoryCommand_PromoteVolume:
		return d.promoteLocked(op.PromoteVolume)
	case *ballastpb.DirectoryCommand_RenewLeases:
		return d.renewLeasesLocked(op.RenewLeases)
	case *ballastpb.DirectoryCommand_ReplaceSecondary:
		return d.replaceSecondaryLocked(op.ReplaceSecondary)
	case *ballastpb.DirectoryCommand_SecondaryInSync:
		return d.secondaryInSyncLocked(op.SecondaryInSync)
	case *ballastpb.DirectoryCommand_RegisterIncarnation:
		return d.registerIncarnationLocked(op.RegisterIncarnation)
	default:
		return ApplyResult{Err: fmt.Errorf("%w: unknown directory command %T", ErrInvalid, cmd.Op)}
	}
}

// placeVolumeLocked takes a name for a new volume in a volume group. A
// name is taken if it has a placement or is a volume of the directory
// group's own (from before volume groups).
func (d *Directory) placeVolumeLocked(c *ballastpb.PlaceVolumeCommand) ApplyResult {
	if err := ValidateName(c.Name); err != nil {
		return ApplyResult{Err: err}
	}
	if c.Groups == 0 {
		return ApplyResult{Err: fmt.Errorf("%w: no volume groups to place %q in", ErrInvalid, c.Name)}
	}
	if _, ok := d.placements[c.Name]; ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrExists, c.Name)}
	}
	if _, ok := d.byName[c.Name]; ok {
		return ApplyResult{Err: fmt.Errorf("%w: %q", ErrExists, c.Name)}
	}
	id := d.nextVolumeID
	p := &ballastpb.VolumePlacement{Name: c.Name, Id: id, Group: 1 + (id-1)%uint64(c.Groups)}
	if err := d.putPlacementLocked(p); err != nil {
		return ApplyResult{Err: err}
	}
	d.nextVolumeID++
	return ApplyResult{Placement: proto.Clone(p).(*ballastpb.VolumePlacement)}
}

// Placement returns a copy of the named volume's placement.
func (d *Directory) Placement(name string) (*ballastpb.VolumePlacement, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	p, ok := d.placements[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(p).(*ballastpb.VolumePlacement), true
}

// HeadNodes returns the head nodes added to the rack after it was founded,
// and the ids of those removed from it.
func (d *Directory) HeadNodes() (added []*ballastpb.HeadNode, removed []string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.headNodesLocked()
}

func (d *Directory) headNodesLocked() (added []*ballastpb.HeadNode, removed []string) {
	for _, h := range d.headNodes {
		added = append(added, proto.Clone(h).(*ballastpb.HeadNode))
	}
	sort.Slice(added, func(i, j int) bool { return added[i].Id < added[j].Id })
	for id := range d.removed {
		removed = append(removed, id)
	}
	sort.Strings(removed)
	return added, removed
}

// Draining says whether a head node is being drained.
func (d *Directory) Draining(node string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.draining[node]
}

// Placements returns copies of every placement, sorted by name.
func (d *Directory) Placements() []*ballastpb.VolumePlacement {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*ballastpb.VolumePlacement, 0, len(d.placements))
	for _, p := range d.placements {
		out = append(out, proto.Clone(p).(*ballastpb.VolumePlacement))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// registerSledLocked adds a sled, or updates the addresses of a known one
// (a sled registers at every start). A sled that was down is up again; a
// removed sled stays removed: its id is spent.
func (d *Directory) registerSledLocked(in *ballastpb.Sled, now int64) ApplyResult {
	if in == nil {
		return ApplyResult{Err: fmt.Errorf("%w: register sled: no sled", ErrInvalid)}
	}
	if err := ValidateSledID(in.Id); err != nil {
		return ApplyResult{Err: err}
	}
	if len(in.Addresses) == 0 {
		return ApplyResult{Err: fmt.Errorf("%w: sled %q has no address", ErrInvalid, in.Id)}
	}
	sl := &ballastpb.Sled{Id: in.Id, Addresses: slices.Clone(in.Addresses), State: ballastpb.SledState_SLED_STATE_UP,
		RegisteredUnixNanos: now, StateChangedUnixNanos: now}
	if old, ok := d.sleds[in.Id]; ok {
		if old.State == ballastpb.SledState_SLED_STATE_REMOVED {
			return ApplyResult{Err: fmt.Errorf("%w: sled %q was removed; a sled that returns needs a new id", ErrInvalid, in.Id)}
		}
		sl.RegisteredUnixNanos = old.RegisteredUnixNanos
		sl.State, sl.StateChangedUnixNanos = old.State, old.StateChangedUnixNanos
		if old.State == ballastpb.SledState_SLED_STATE_DOWN {
			sl.State, sl.StateChangedUnixNanos = ballastpb.SledState_SLED_STATE_UP, now
		}
	}
	d.sleds[sl.Id] = sl
	return ApplyResult{Sled: proto.Clone(sl).(*ballastpb.Sled)}
}

func (d *Directory) setSledStateLocked(c *ballastpb.SetSledStateCommand, now int64) ApplyResult {
	old, ok := d.sleds[c.Id]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: sled %q", ErrNotFound, c.Id)}
	}
	if c.IfState != ballastpb.SledState_SLED_STATE_UNSPECIFIED && old.State != c.IfState {
		return ApplyResult{Err: fmt.Errorf("%w: sled %q is %v, not %v", ErrConflict, c.Id, old.State, c.IfState)}
	}
	switch {
	case c.State == ballastpb.SledState_SLED_STATE_UNSPECIFIED:
		return ApplyResult{Err: fmt.Errorf("%w: no state given for sled %q", ErrInvalid, c.Id)}
	case old.State == ballastpb.SledState_SLED_STATE_REMOVED && c.State != old.State:
		return ApplyResult{Err: fmt.Errorf("%w: sled %q was removed for good", ErrInvalid, c.Id)}
	}
	sl := proto.Clone(old).(*ballastpb.Sled)
	if sl.State != c.State {
		sl.State, sl.StateChangedUnixNanos = c.State, now
	}
	d.sleds[sl.Id] = sl
	return ApplyResult{Sled: proto.Clone(sl).(*ballastpb.Sled)}
}

// Sleds returns the rack's sleds, sorted by id. The records are shared:
// callers must not modify them.
func (d *Directory) Sleds() []*ballastpb.Sled {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*ballastpb.Sled, 0, len(d.sleds))
	for _, s := range d.sleds {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// Sled returns one sled's shared record.
func (d *Directory) Sled(id string) (*ballastpb.Sled, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s, ok := d.sleds[id]
	return s, ok
}

// Get returns a copy of the named volume's record.
func (d *Directory) Get(name string) (*ballastpb.Volume, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	v, ok := d.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return proto.Clone(v).(*ballastpb.Volume), nil
}

// ByID returns a copy of the record of the volume with this id.
func (d *Directory) ByID(id uint64) (*ballastpb.Volume, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	v, ok := d.byID[id]
	if !ok {
		return nil, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	return proto.Clone(v).(*ballastpb.Volume), nil
}

// Shared returns the record of the volume with this id without copying
// it, for the block I/O path, which looks it up on every request. The
// record is shared: callers must not modify it.
func (d *Directory) Shared(id uint64) (*ballastpb.Volume, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	v, ok := d.byID[id]
	return v, ok
}

// List returns copies of every volume's record, sorted by name.
func (d *Directory) List() []*ballastpb.Volume {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*ballastpb.Volume, 0, len(d.byName))
	for _, v := range d.byName {
		out = append(out, proto.Clone(v).(*ballastpb.Volume))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Snapshot implements raft.FSM.
func (d *Directory) Snapshot() (raft.FSMSnapshot, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	snap := &ballastpb.DirectorySnapshot{NextVolumeId: d.nextVolumeID}
	for _, v := range d.byName {
		snap.Volumes = append(snap.Volumes, proto.Clone(v).(*ballastpb.Volume))
	}
	for _, sl := range d.sleds {
		snap.Sleds = append(snap.Sleds, proto.Clone(sl).(*ballastpb.Sled))
	}
	for _, p := range d.placements {
		snap.Placements = append(snap.Placements, proto.Clone(p).(*ballastpb.VolumePlacement))
	}
	sort.Slice(snap.Placements, func(i, j int) bool { return snap.Placements[i].Name < snap.Placements[j].Name })
	for node := range d.draining {
		snap.Draining = append(snap.Draining, node)
	}
	sort.Strings(snap.Draining)
	snap.HeadNodes, snap.RemovedHeadNodes = d.headNodesLocked()
	snap.Incarnations = d.incarnationsSnapshotLocked()
	snap.TxnState = d.txn.MarshalState()
	for _, v := range d.moved {
		snap.Moved = append(snap.Moved, proto.Clone(v).(*ballastpb.Volume))
	}
	sort.Slice(snap.Moved, func(i, j int) bool { return snap.Moved[i].Id < snap.Moved[j].Id })
	sort.Slice(snap.Sleds, func(i, j int) bool { return snap.Sleds[i].Id < snap.Sleds[j].Id })
	sort.Slice(snap.Volumes, func(i, j int) bool { return snap.Volumes[i].Id < snap.Volumes[j].Id })
	data, err := proto.Marshal(snap)
	if err != nil {
		return nil, fmt.Errorf("directory: encode snapshot: %w", err)
	}
	return directorySnapshot(data), nil
}

// Restore implements raft.FSM. Volumes that the snapshot no longer holds,
// and that did not move to another group, are reported to OnDelete, as if
// their deletion had been applied.
func (d *Directory) Restore(r io.ReadCloser) error {
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("directory: read snapshot: %w", err)
	}
	var snap ballastpb.DirectorySnapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("directory: decode snapshot: %w", err)
	}
	participant := txn.NewParticipant(d.txnGroup)
	if len(snap.TxnState) > 0 {
		if participant, err = txn.RestoreParticipant(snap.TxnState); err != nil {
			return fmt.Errorf("directory: restore transactional state: %w", err)
		}
		if participant.Group() != d.txnGroup {
			return fmt.Errorf("directory: snapshot of txn group %d restored into group %d", participant.Group(), d.txnGroup)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txn = participant
	old := d.byID
	d.byName = map[string]*ballastpb.Volume{}
	d.byID = map[uint64]*ballastpb.Volume{}
	for _, v := range snap.Volumes {
		d.byName[v.Name] = v
		d.byID[v.Id] = v
	}
	d.nextVolumeID = max(snap.NextVolumeId, 1)
	d.moved = map[uint64]*ballastpb.Volume{}
	for _, v := range snap.Moved {
		d.moved[v.Id] = v
	}
	d.sleds = map[string]*ballastpb.Sled{}
	for _, sl := range snap.Sleds {
		d.sleds[sl.Id] = sl
	}
	d.placements = map[string]*ballastpb.VolumePlacement{}
	for _, p := range snap.Placements {
		d.placements[p.Name] = p
	}
	d.draining = map[string]bool{}
	for _, node := range snap.Draining {
		d.draining[node] = true
	}
	d.headNodes = map[string]*ballastpb.HeadNode{}
	for _, h := range snap.HeadNodes {
		d.headNodes[h.Id] = h
	}
	d.removed = map[string]bool{}
	for _, id := range snap.RemovedHeadNodes {
		d.removed[id] = true
	}
	d.incarnations = map[string]*ballastpb.HeadNodeIncarnation{}
	for _, r := range snap.Incarnations {
		d.incarnations[r.HeadNode] = r
	}
	if d.OnDelete != nil {
		for id, v := range old {
			_, kept := d.byID[id]
			_, moved := d.moved[id] // left for another group: same volume, data kept
			if !kept && !moved {
				d.OnDelete(v)
			}
		}
	}
	return nil
}

type directorySnapshot []byte

func (s directorySnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("directory: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s directorySnapshot) Release() {}
