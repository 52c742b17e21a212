package volume

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
)

// The keys of a group's transactional state (package txn), and what they
// hold. Transactions across groups read and write them; the group's own
// commands write them too (as txn host writes), so that a transaction's
// condition on a key sees every change of it.
const (
	// KeyUsage (directory group) holds the rack's RackUsage.
	KeyUsage = "rack/usage"
	// KeyQuota (directory group) holds the rack's RackQuota.
	KeyQuota = "rack/quota"

	// KeyConsistencyGroups (directory group) holds ConsistencyGroupNames.
	KeyConsistencyGroups = "cg-names"

	namePrefix   = "name/"
	volumePrefix = "vol/"
	cgPrefix     = "cg/"
)

// ConsistencyGroupKey (directory group) holds a ConsistencyGroup.
func ConsistencyGroupKey(name string) string { return cgPrefix + name }

// NameKey (directory group) holds the VolumePlacement of a volume name
// taken: its id and volume group.
func NameKey(name string) string { return namePrefix + name }

// VolumeKey (volume group) holds a volume's record. A lease renewal
// changes the record without writing the key: the renewal count is
// volatile.
func VolumeKey(name string) string { return volumePrefix + name }

// ErrBusy: a command met a transaction's lock on what it changes; it
// changed nothing and may be retried once the transaction is resolved
// (within the transaction's lifetime, a few seconds at most).
var ErrBusy = errors.New("busy in a transaction")

// applyTxnLocked applies a txn command to the participant and follows
// the writes it installs in the decoded view.
func (d *Directory) applyTxnLocked(index uint64, data []byte) ApplyResult {
	cmd, err := txn.UnmarshalCommand(data)
	var res txn.Result
	if err != nil {
		// The participant spends the index and refuses; the decoding
		// error says more.
		res = d.txn.Apply(index, nil)
		if res.Err != nil {
			res.Err = err // wraps txn.ErrMalformed
		}
	} else {
		res = d.txn.ApplyObserved(index, cmd, d.installLocked)
	}
	return ApplyResult{Txn: &res}
}

// installLocked updates the decoded view with a write a committed
// transaction installed. A value that does not decode (a proposer's bug)
// is left out of the view; the key keeps it.
func (d *Directory) installLocked(w txn.Write) {
	switch {
	case strings.HasPrefix(w.Key, namePrefix):
		name := strings.TrimPrefix(w.Key, namePrefix)
		if w.Delete {
			delete(d.placements, name)
			return
		}
		p := &ballastpb.VolumePlacement{}
		if proto.Unmarshal(w.Value, p) == nil && p.Name == name {
			d.placements[name] = p
		}
	case strings.HasPrefix(w.Key, volumePrefix):
		name := strings.TrimPrefix(w.Key, volumePrefix)
		if w.Delete {
			if v, ok := d.byName[name]; ok {
				d.dropVolumeLocked(v)
			}
			for id, m := range d.moved {
				if m.Name == name {
					delete(d.moved, id) // a forwarding copy: no data of its own
				}
			}
			return
		}
		v := &ballastpb.Volume{}
		if proto.Unmarshal(w.Value, v) != nil || v.Name != name || v.Id == 0 {
			return
		}
		if old, ok := d.byID[v.Id]; ok && old.Name != name {
			return // an id is one volume's forever
		}
		if v.MovedTo != 0 {
			// Moved away: out of the view, data kept (it is the same
			// volume, served from its new group).
			if old, ok := d.byName[name]; ok && old.Id == v.Id {
				delete(d.byName, name)
				delete(d.byID, v.Id)
			}
			d.moved[v.Id] = v
			return
		}
		delete(d.moved, v.Id)
		if old, ok := d.byID[v.Id]; ok && old.Epoch == v.Epoch && old.LeaseRenewals > v.LeaseRenewals {
			// Renewals count in the view only, so a record written from
			// the key (an attachment change) carries an older count; a
			// count that went back would let a promotion decided on
			// stale renewals through.
			v.LeaseRenewals = old.LeaseRenewals
		}
		d.setVolumeLocked(v)
	}
}

// hostWriteLocked writes a txn key as the group's own command. A key
// under a transaction's lock is refused with ErrBusy.
func (d *Directory) hostWriteLocked(w txn.Write) error {
	err := d.txn.Write(d.index, w)
	if errors.Is(err, txn.ErrLocked) {
		return fmt.Errorf("%w: %w", ErrBusy, err)
	}
	return err
}

// putLocked replaces a volume's record, key and decoded view.
func (d *Directory) putLocked(v *ballastpb.Volume) error {
	data, err := proto.Marshal(v)
	if err != nil {
		return fmt.Errorf("directory: encode volume %q: %w", v.Name, err)
	}
	if err := d.hostWriteLocked(txn.Write{Key: VolumeKey(v.Name), Value: data}); err != nil {
		return err
	}
	d.setVolumeLocked(v)
	return nil
}

// putPlacementLocked takes a name, key and decoded view.
func (d *Directory) putPlacementLocked(p *ballastpb.VolumePlacement) error {
	data, err := proto.Marshal(p)
	if err != nil {
		return fmt.Errorf("directory: encode placement of %q: %w", p.Name, err)
	}
	if err := d.hostWriteLocked(txn.Write{Key: NameKey(p.Name), Value: data}); err != nil {
		return err
	}
	d.placements[p.Name] = p
	return nil
}

// setVolumeLocked replaces a volume's decoded record (records are never
// changed in place, so Shared can hand them out without a copy).
func (d *Directory) setVolumeLocked(v *ballastpb.Volume) {
	if old, ok := d.byName[v.Name]; ok && old.Id != v.Id {
		delete(d.byID, old.Id)
	}
	_, known := d.byID[v.Id]
	d.byName[v.Name] = v
	d.byID[v.Id] = v
	if !known && d.OnVolumeAdded != nil {
		d.OnVolumeAdded(v.Id)
	}
}

// dropVolumeLocked removes a volume from the decoded view and has its
// data reclaimed.
func (d *Directory) dropVolumeLocked(v *ballastpb.Volume) {
	delete(d.byName, v.Name)
	delete(d.byID, v.Id)
	if d.OnDelete != nil {
		d.OnDelete(proto.Clone(v).(*ballastpb.Volume))
	}
}

// TxnRead reads a txn key of the local state (the caller linearizes).
func (d *Directory) TxnRead(key string) txn.ReadResult {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.txn.Read(key)
}

// TxnRecord reads a transaction's record at this group, as its home.
func (d *Directory) TxnRecord(t txn.TxnID) txn.RecordInfo {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.txn.ReadRecord(t)
}

// TxnRecords lists the records this group keeps as a home.
func (d *Directory) TxnRecords() []txn.RecordEntry {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.txn.Records()
}

// TxnHolders lists the transactions holding locks in this group.
func (d *Directory) TxnHolders() []txn.Holder {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.txn.Holders()
}

// NextVolumeID is the id the directory's own placements would spend
// next: transactional creates continue from it.
func (d *Directory) NextVolumeID() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.nextVolumeID
}

// MovedCopy returns the copy this group keeps of a volume moved away.
// The record is shared: callers must not modify it.
func (d *Directory) MovedCopy(id uint64) (*ballastpb.Volume, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	v, ok := d.moved[id]
	return v, ok
}
