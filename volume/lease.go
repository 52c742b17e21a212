package volume

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// Leases and failover
//
// A volume's primary may acknowledge writes only while it holds a lease,
// which it keeps by having the group apply a RenewLeaseCommand. Leases
// are measured in durations on each node's own clock, never in
// timestamps compared across nodes, so only the rate of the clocks
// matters (bounded by LeaseConfig.Margin), not their offset:
//
//   - The primary notes its local time t0 before it proposes a renewal.
//     Once the group applied it, the primary's lease runs until
//     t0 + Duration on its own clock (PrimaryLease).
//   - The group leader notes its local time t1 when it sees the renewal
//     applied; t1 comes after t0 in real time. It may promote another
//     replica only once Duration + Margin has passed since t1 on its own
//     clock (LeaseTable), by which time the primary's lease has run out.
//   - A leader that has just taken office has seen no renewals: it treats
//     every lease as renewed at the moment it took office.
//   - The leader decides on the state it has applied; a renewal that
//     reaches the log after that decision but before the promotion would
//     extend the lease the decision took as over. So every applied
//     renewal bumps the volume's lease_renewals, and a promotion names the
//     count it was decided on and is refused if the count moved.
//   - Promotion bumps the volume's epoch. Secondaries and sleds refuse
//     writes of an older epoch, and the group refuses the deposed
//     primary's next renewal, which tells it to step down for good.
//   - Only a replica whose node still holds its copy counts: a renewal
//     names the primary's incarnation, and a secondary restarted over a
//     lost data directory is not promoted (incarnation.go).
//
// Every time here is an instant of package clock's boot clock, which
// counts the time the machine was suspended: on a clock that stops during
// a suspend (Go's monotonic clock), a primary resumed after its lease ran
// out would count the lease as held while the group, whose clocks ran on,
// has promoted another replica.
//
// These types do no I/O and read no clock: the caller passes the time in,
// so tests drive them with a fake clock.

// LeaseConfig is how long leases last.
type LeaseConfig struct {
	// Duration is how long a renewal keeps a primary's lease, from the
	// moment the primary asked for it.
	Duration time.Duration
	// Margin is how much longer the group waits before it promotes
	// another replica, to cover clocks that run at different rates.
	Margin time.Duration
}

// DefaultLeaseConfig: a primary renews every Duration/3, so one or two
// lost renewals do not cost it the lease; a dead primary is replaced
// within about Duration + Margin.
var DefaultLeaseConfig = LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}

// Validate reports a configuration that cannot work.
func (c LeaseConfig) Validate() error {
	if c.Duration <= 0 || c.Margin < 0 {
		return fmt.Errorf("lease config: duration %v and margin %v: want a positive duration and a margin of zero or more", c.Duration, c.Margin)
	}
	return nil
}

// RenewEvery is how often a primary should renew its lease.
func (c LeaseConfig) RenewEvery() time.Duration { return c.Duration / 3 }

// ErrDeposed means the group has moved the volume to another primary or
// epoch: the node must stop serving it as primary.
var ErrDeposed = errors.New("volume: primary deposed")

// ErrMoved: the volume moved to another group, where its lease is kept
// now.
var ErrMoved = errors.New("volume: moved to another group")

// PrimaryLease is a primary's own view of its lease on one volume.
type PrimaryLease struct {
	cfg        LeaseConfig
	epoch      uint64
	validUntil clock.Instant // zero: no lease yet
	deposed    bool
	nextID     uint64
	inFlight   map[uint64]clock.Instant // renewal -> local time it was asked for
}

// NewPrimaryLease starts a primary's lease at epoch with no time on it:
// the primary acknowledges nothing until its first renewal is applied.
func NewPrimaryLease(cfg LeaseConfig, epoch uint64) *PrimaryLease {
	return &PrimaryLease{cfg: cfg, epoch: epoch, inFlight: map[uint64]clock.Instant{}}
}

// Epoch is the epoch the lease is for.
func (l *PrimaryLease) Epoch() uint64 { return l.epoch }

// StartRenewal records that a renewal is being proposed now and returns
// its id, to pass to Renewed or Failed.
func (l *PrimaryLease) StartRenewal(now clock.Instant) uint64 {
	l.nextID++
	l.inFlight[l.nextID] = now
	return l.nextID
}

// Renewed records that the group applied renewal id: the lease runs until
// Duration after the renewal was asked for (never shorter than before).
func (l *PrimaryLease) Renewed(id uint64) {
	asked, ok := l.inFlight[id]
	if !ok {
		return
	}
	delete(l.inFlight, id)
	if until := asked.Add(l.cfg.Duration); until.After(l.validUntil) {
		l.validUntil = until
	}
}

// Failed records that renewal id did not happen, or its outcome is
// unknown: the lease keeps only the time it had.
func (l *PrimaryLease) Failed(id uint64) { delete(l.inFlight, id) }

// Refused records that the group refused a renewal because the volume has
// another primary or epoch now: the lease is over and never comes back.
func (l *PrimaryLease) Refused(id uint64) {
	delete(l.inFlight, id)
	l.deposed = true
	l.validUntil = clock.Instant{}
}

// Valid says whether the primary may acknowledge a write at now.
func (l *PrimaryLease) Valid(now clock.Instant) bool {
	return !l.deposed && now.Before(l.validUntil)
}

// Deposed says whether the group has moved the volume on.
func (l *PrimaryLease) Deposed() bool { return l.deposed }

// LeaseTable is the group leader's record of when it last saw each
// volume's lease renewed, on its own clock. It lives only in the leader's
// memory: a new leader starts a new table.
type LeaseTable struct {
	cfg     LeaseConfig
	since   clock.Instant // when this leader took office
	renewed map[uint64]clock.Instant
}

// NewLeaseTable starts the table of a leader that took office at now.
func NewLeaseTable(cfg LeaseConfig, now clock.Instant) *LeaseTable {
	return &LeaseTable{cfg: cfg, since: now, renewed: map[uint64]clock.Instant{}}
}

// Renewed records that the leader saw a renewal of vol applied at now.
func (t *LeaseTable) Renewed(vol uint64, now clock.Instant) {
	if now.After(t.renewed[vol]) {
		t.renewed[vol] = now
	}
}

// Forget drops a volume (deleted, or promoted: the new primary's lease
// starts from the promotion).
func (t *LeaseTable) Forget(vol uint64, now clock.Instant) { t.renewed[vol] = now }

// Expired says whether vol's primary's lease has surely run out at now,
// so that another replica may be promoted.
func (t *LeaseTable) Expired(vol uint64, now clock.Instant) bool {
	last := t.since
	if r := t.renewed[vol]; r.After(last) {
		last = r
	}
	return now.Sub(last) > t.cfg.Duration+t.cfg.Margin
}

// PlanPromotion chooses what a volume whose primary's lease expired
// becomes: a live secondary is promoted (every secondary holds every
// acknowledged write, since a write is acknowledged only once all of them
// have it), and a live head node that holds no replica yet takes the
// place of the old primary as a secondary, to be mirrored from the new
// primary. live lists the head nodes the leader can reach, in order of
// preference. A volume with no live secondary cannot fail over: only its
// replicas have its data.
func PlanPromotion(v *ballastpb.Volume, live []string) (*ballastpb.PromoteVolumeCommand, error) {
	return PlanPromotionOf(v, live, nil)
}

// PlanPromotionOf is PlanPromotion where holdsCopy (nil: every replica
// does) says whether a secondary's node still holds the copy its record
// credits it with (Directory.HoldsCopy): one that does not is treated as
// catching up.
func PlanPromotionOf(v *ballastpb.Volume, live []string, holdsCopy func(node string) bool) (*ballastpb.PromoteVolumeCommand, error) {
	var primary string
	var secondaries []string
	for _, s := range v.Secondaries {
		partial := slices.Contains(v.CatchingUp, s) || (holdsCopy != nil && !holdsCopy(s))
		switch {
		case !slices.Contains(live, s):
		case partial && primary == "":
			// A partial copy cannot lead; it stays a secondary, to be
			// mirrored again by the new primary.
			secondaries = append(secondaries, s)
		case primary == "":
			primary = s
		default:
			secondaries = append(secondaries, s)
		}
	}
	if primary == "" {
		return nil, fmt.Errorf("volume %s: no live, mirrored secondary to promote (secondaries %v, catching up %v, live %v)", v.Name, v.Secondaries, v.CatchingUp, live)
	}
	want := len(v.Secondaries)
	for _, n := range live {
		if len(secondaries) >= want {
			break
		}
		if n != v.Primary && !slices.Contains(v.Secondaries, n) {
			secondaries = append(secondaries, n)
		}
	}
	return &ballastpb.PromoteVolumeCommand{VolumeId: v.Id, IfEpoch: v.Epoch, IfLeaseRenewals: v.LeaseRenewals,
		Primary: primary, Secondaries: secondaries}, nil
}

// renewLeaseLocked applies a renewal: it succeeds only for the volume's
// primary at its epoch. A refusal carries the volume as it is now, so the
// caller can tell a deposed primary from a deleted volume.
func (d *Directory) renewLeaseLocked(c *ballastpb.RenewLeaseCommand) ApplyResult {
	v, ok := d.byID[c.VolumeId]
	if !ok {
		if m, moved := d.moved[c.VolumeId]; moved {
			return ApplyResult{Err: fmt.Errorf("%w: volume %s is in group %d now", ErrMoved, m.Name, m.MovedTo)}
		}
		return ApplyResult{Err: fmt.Errorf("%w: volume id %d", ErrNotFound, c.VolumeId)}
	}
	if v.Primary != c.Holder || v.Epoch != c.Epoch {
		return ApplyResult{
			Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: %s at epoch %d asked to renew volume %s, which is at epoch %d with primary %s",
				ErrDeposed, c.Holder, c.Epoch, v.Name, v.Epoch, v.Primary),
		}
	}
	// A primary restarted over a lost data directory must not serve what
	// it no longer holds, even before its new incarnation is registered.
	if reg, ok := d.incarnations[c.Holder]; ok && (c.Incarnation != reg.Incarnation || !d.holdsCopyLocked(v, c.Holder)) {
		return ApplyResult{
			Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: %s (incarnation %q) no longer holds the copy of volume %s it was primary of",
				ErrDeposed, c.Holder, c.Incarnation, v.Name),
		}
	}
	// A renewal changes only the decoded record: the renewal count is
	// volatile, and a renewal must neither wait for a transaction that
	// holds the volume nor move its version under one.
	v = proto.Clone(v).(*ballastpb.Volume)
	v.LeaseRenewals++
	d.setVolumeLocked(v)
	return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
}

// promoteLocked applies a promotion if the volume is still at the epoch
// the proposer saw and the new primary was one of its mirrored secondaries.
func (d *Directory) promoteLocked(c *ballastpb.PromoteVolumeCommand) ApplyResult {
	v, ok := d.byID[c.VolumeId]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: volume id %d", ErrNotFound, c.VolumeId)}
	}
	switch {
	case v.Epoch != c.IfEpoch:
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: promotion of volume %s planned at epoch %d; it is at %d", ErrConflict, v.Name, c.IfEpoch, v.Epoch)}
	case v.LeaseRenewals != c.IfLeaseRenewals:
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: volume %s's primary renewed its lease after the promotion was planned", ErrConflict, v.Name)}
	case !slices.Contains(v.Secondaries, c.Primary):
		return ApplyResult{Err: fmt.Errorf("%w: %s is not a secondary of volume %s and lacks its data", ErrInvalid, c.Primary, v.Name)}
	case slices.Contains(v.CatchingUp, c.Primary):
		return ApplyResult{Err: fmt.Errorf("%w: %s is still catching up on volume %s and lacks part of its data", ErrInvalid, c.Primary, v.Name)}
	case !d.holdsCopyLocked(v, c.Primary):
		return ApplyResult{Err: fmt.Errorf("%w: %s restarted over a lost data directory and holds no copy of volume %s", ErrInvalid, c.Primary, v.Name)}
	case slices.Contains(c.Secondaries, c.Primary) || len(c.Secondaries) == 0:
		return ApplyResult{Err: fmt.Errorf("%w: promotion of volume %s to %s with secondaries %v", ErrInvalid, v.Name, c.Primary, c.Secondaries)}
	}
	// A mirrored secondary of the old epoch got the same stream as the new
	// primary and is reconciled at the next hello; any other node must be
	// mirrored in full before it may be promoted.
	var catching []string
	keep := []string{c.Primary}
	for _, s := range c.Secondaries {
		if !slices.Contains(v.Secondaries, s) || slices.Contains(v.CatchingUp, s) || !d.holdsCopyLocked(v, s) {
			catching = append(catching, s)
		} else {
			keep = append(keep, s)
		}
	}
	v = proto.Clone(v).(*ballastpb.Volume)
	v.Epoch++
	v.Primary = c.Primary
	v.Secondaries = slices.Clone(c.Secondaries)
	v.CatchingUp = catching
	keepCopies(v, keep)
	v.LeaseRenewals = 0
	if err := d.putLocked(v); err != nil {
		return ApplyResult{Err: err}
	}
	return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
}

// renewLeasesLocked applies one head node's renewal of all its leases.
func (d *Directory) renewLeasesLocked(c *ballastpb.RenewLeasesCommand) ApplyResult {
	var res ApplyResult
	var renewed []uint64
	for _, l := range c.Leases {
		l.Holder, l.Incarnation = c.Holder, c.Incarnation
		if r := d.renewLeaseLocked(l); errors.Is(r.Err, ErrMoved) {
			res.Moved = append(res.Moved, l.VolumeId)
		} else if r.Err != nil {
			res.Refused = append(res.Refused, l.VolumeId)
		} else {
			renewed = append(renewed, l.VolumeId)
		}
	}
	if d.OnLeasesRenewed != nil {
		d.OnLeasesRenewed(c.Holder, renewed)
	}
	return res
}

// replaceSecondaryLocked swaps a lost secondary for a new one, which
// starts catching up.
func (d *Directory) replaceSecondaryLocked(c *ballastpb.ReplaceSecondaryCommand) ApplyResult {
	v, ok := d.byID[c.VolumeId]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: volume id %d", ErrNotFound, c.VolumeId)}
	}
	switch {
	case v.Epoch != c.IfEpoch || !slices.Contains(v.Secondaries, c.Remove):
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: replacing %s of volume %s at epoch %d; it is at epoch %d with secondaries %v", ErrConflict, c.Remove, v.Name, c.IfEpoch, v.Epoch, v.Secondaries)}
	case c.Add == "" || c.Add == v.Primary || slices.Contains(v.Secondaries, c.Add):
		return ApplyResult{Err: fmt.Errorf("%w: %q cannot become a secondary of volume %s (primary %s, secondaries %v)", ErrInvalid, c.Add, v.Name, v.Primary, v.Secondaries)}
	}
	v = proto.Clone(v).(*ballastpb.Volume)
	for i, s := range v.Secondaries {
		if s == c.Remove {
			v.Secondaries[i] = c.Add
		}
	}
	v.CatchingUp = slices.DeleteFunc(v.CatchingUp, func(s string) bool { return s == c.Remove })
	v.CatchingUp = append(v.CatchingUp, c.Add)
	keepCopies(v, append(slices.Clone(v.Secondaries), v.Primary))
	if err := d.putLocked(v); err != nil {
		return ApplyResult{Err: err}
	}
	return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
}

// secondaryInSyncLocked marks a secondary mirrored, if the primary that
// says so is still the volume's at that epoch.
func (d *Directory) secondaryInSyncLocked(c *ballastpb.SecondaryInSyncCommand) ApplyResult {
	v, ok := d.byID[c.VolumeId]
	if !ok {
		return ApplyResult{Err: fmt.Errorf("%w: volume id %d", ErrNotFound, c.VolumeId)}
	}
	if v.Epoch != c.Epoch || !slices.Contains(v.Secondaries, c.Node) {
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: %s in sync with volume %s at epoch %d; it is at epoch %d with secondaries %v", ErrConflict, c.Node, v.Name, c.Epoch, v.Epoch, v.Secondaries)}
	}
	if reg, ok := d.incarnations[c.Node]; ok && c.Incarnation != reg.Incarnation {
		// Mirrored to a data directory the node has lost since.
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume),
			Err: fmt.Errorf("%w: %s in sync with volume %s as incarnation %q; it is %q now", ErrConflict, c.Node, v.Name, c.Incarnation, reg.Incarnation)}
	}
	inc, credited := CopyIncarnation(v, c.Node)
	if !slices.Contains(v.CatchingUp, c.Node) && d.holdsCopyLocked(v, c.Node) && (c.Incarnation == "" || credited && inc == c.Incarnation) {
		return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
	}
	v = proto.Clone(v).(*ballastpb.Volume)
	v.CatchingUp = slices.DeleteFunc(v.CatchingUp, func(s string) bool { return s == c.Node })
	if c.Incarnation != "" {
		setCopy(v, c.Node, c.Incarnation)
	}
	if err := d.putLocked(v); err != nil {
		return ApplyResult{Err: err}
	}
	return ApplyResult{Volume: proto.Clone(v).(*ballastpb.Volume)}
}

// PlanReplacement chooses, for a volume whose secondary `lost` is gone, a
// live head node that holds no replica of it to take its place.
func PlanReplacement(v *ballastpb.Volume, lost string, live []string) (*ballastpb.ReplaceSecondaryCommand, error) {
	for _, n := range live {
		if n != v.Primary && !slices.Contains(v.Secondaries, n) {
			return &ballastpb.ReplaceSecondaryCommand{VolumeId: v.Id, IfEpoch: v.Epoch, Remove: lost, Add: n}, nil
		}
	}
	return nil, fmt.Errorf("volume %s: no live head node to replace secondary %s (live %v)", v.Name, lost, live)
}
