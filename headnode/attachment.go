package headnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/migrate"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/txn"
	"github.com/ballast-storage/ballast/volume"
)

// The attachment at the primary (the decisions are migrate.Gate's; this is
// their I/O). Every primaryVolume has an attachGate: serveIO admits each
// request through it, and admin changes of the attachment run through it
// on the primary, so that no write of a session the record no longer
// names is acknowledged after the change commits.

// attachGate drives a volume's migrate.Gate.
type attachGate struct {
	node  *Node
	volID uint64
	name  string
	epoch uint64
	log   *slog.Logger

	ctx  context.Context // ends with the primary
	stop context.CancelFunc

	mu      sync.Mutex
	gate    *migrate.Gate
	nextID  uint64
	waiting map[uint64]chan migrate.Verdict
	// changed is closed and replaced whenever the gate learns the record
	// or ends a change.
	changed chan struct{}
	stopped bool
	// finished counts the changes ended; changes run one at a time, so
	// the one begun when finished was n is the (n+1)th to end. awaiting
	// holds the admin callers waiting for theirs.
	finished uint64
	awaiting map[uint64]chan changeOutcome
}

type changeOutcome struct {
	rec   migrate.Attachment
	known bool
}

func newAttachGate(n *Node, vol *ballastpb.Volume, log *slog.Logger) *attachGate {
	ctx, stop := context.WithCancel(context.Background())
	return &attachGate{
		node: n, volID: vol.Id, name: vol.Name, epoch: vol.Epoch, log: log,
		ctx: ctx, stop: stop,
		gate:     migrate.NewGate(),
		waiting:  map[uint64]chan migrate.Verdict{},
		changed:  make(chan struct{}),
		awaiting: map[uint64]chan changeOutcome{},
	}
}

// errFenced is a request of a session that may not write the volume.
var errFenced = errors.New("the volume is attached to another host or generation")

// errLostTrack: the gate lost the record; the client should retry.
var errLostTrack = fmt.Errorf("%w: the attachment is being reloaded", ErrStopped)

func gateOp(op ballastpb.IOOp) migrate.Op {
	switch op {
	case ballastpb.IOOp_IO_OP_READ, ballastpb.IOOp_IO_OP_BLOCK_STATUS:
		return migrate.Read
	case ballastpb.IOOp_IO_OP_FLUSH:
		return migrate.Flush
	}
	return migrate.Write
}

// admit waits for the gate's verdict on one request. done, non-nil for an
// admitted write, must be called once the write has completed.
func (a *attachGate) admit(ctx context.Context, s migrate.Session, op migrate.Op) (done func(), err error) {
	if op == migrate.Read {
		return nil, nil // reads change nothing: no lock on the hot path
	}
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return nil, ErrStopped
	}
	a.nextID++
	id := a.nextID
	v, acts := a.gate.Admit(migrate.Request{ID: id, Session: s, Op: op})
	var ch chan migrate.Verdict
	if v == migrate.Hold {
		ch = make(chan migrate.Verdict, 1)
		a.waiting[id] = ch
	}
	a.mu.Unlock()
	a.run(acts)
	if v == migrate.Hold {
		a.log.Debug("attachment: request held", "host", s.Host, "generation", s.Generation, "op", op, "load", acts.Load, "commit", acts.Commit != nil)
		select {
		case v = <-ch:
		case <-ctx.Done():
			a.mu.Lock()
			a.gate.Cancel(id)
			delete(a.waiting, id)
			a.mu.Unlock()
			select {
			case v = <-ch: // decided as it was cancelled
				if v == migrate.Proceed && op == migrate.Write {
					a.done()
				}
			default:
			}
			return nil, ctx.Err()
		}
	}
	switch v {
	case migrate.Proceed:
		if op == migrate.Write {
			return a.done, nil
		}
		return nil, nil
	case migrate.Refuse:
		return nil, fmt.Errorf("%w: session %s/%d", errFenced, s.Host, s.Generation)
	default:
		return nil, errLostTrack
	}
}

func (a *attachGate) done() {
	a.mu.Lock()
	acts := a.gate.Done()
	a.mu.Unlock()
	a.run(acts)
}

// run carries out the gate's actions; call without mu.
func (a *attachGate) run(acts migrate.Actions) {
	if len(acts.Release) > 0 {
		a.mu.Lock()
		for _, r := range acts.Release {
			if ch, ok := a.waiting[r.ID]; ok {
				ch <- r.Verdict
				delete(a.waiting, r.ID)
			}
		}
		a.mu.Unlock()
	}
	if acts.Load {
		go a.load()
	}
	if acts.Commit != nil {
		go a.commit(*acts.Commit)
	}
}

// signal wakes whoever waits for the gate to learn something; call with mu.
func (a *attachGate) signal() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// readRecord reads the volume's record linearizably, with its version.
func (a *attachGate) readRecord(ctx context.Context) (*ballastpb.Volume, txn.Version, error) {
	return a.node.readVolumeRecord(ctx, a.volID, a.name)
}

// readVolumeRecord reads a volume's transactional record linearizably,
// with its version, from the group that holds it now. It returns nil for
// a volume without one (of the directory group itself, from before
// volume groups).
func (n *Node) readVolumeRecord(ctx context.Context, volID uint64, name string) (*ballastpb.Volume, txn.Version, error) {
	vol, ok := n.volumeByID(volID)
	if !ok {
		return nil, 0, fmt.Errorf("%w: volume %d", errVolumeGone, volID)
	}
	group := vol.Group
	if vol.MovedTo != 0 {
		group = vol.MovedTo
	}
	var rec ballastpb.Volume
	version, found, err := n.readProto(ctx, txnGroupOf(group), volume.VolumeKey(name), &rec)
	if err != nil {
		return nil, 0, err
	}
	if !found || rec.Id != volID {
		return nil, 0, nil
	}
	if rec.MovedTo != 0 {
		return nil, 0, fmt.Errorf("volume %s is moving to group %d: %w", name, rec.MovedTo, errRetryRead)
	}
	return &rec, version, nil
}

// writeVolumeRecord writes rec over the version read: false if the
// record changed since; an error leaves the outcome unknown.
func (n *Node) writeVolumeRecord(ctx context.Context, rec *ballastpb.Volume, version txn.Version) (bool, error) {
	vals, err := marshalAll(rec)
	if err != nil {
		return false, err
	}
	g := txnGroupOf(rec.Group)
	return n.commit(ctx, txn.Spec{
		Conditions: []txn.GroupCondition{{Group: g, Condition: txn.Condition{Key: volume.VolumeKey(rec.Name), Version: version}}},
		Writes:     []txn.GroupWrite{{Group: g, Write: txn.Write{Key: volume.VolumeKey(rec.Name), Value: vals[0]}}},
	})
}

var errRetryRead = errors.New("read again")

// retry runs fn until it succeeds or the primary stops, backing off.
func (a *attachGate) retry(what string, fn func(ctx context.Context) error) bool {
	return retryUntil(a.ctx, a.log, "attachment: "+what, fn)
}

// retryUntil runs fn, each attempt bounded by applyTimeout, until it
// succeeds (true) or ctx ends (false), backing off between attempts.
func retryUntil(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) error) bool {
	backoff := 20 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, applyTimeout)
		err := fn(actx)
		cancel()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		log.Debug(what+" failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// load reads the record for the gate.
func (a *attachGate) load() {
	var att migrate.Attachment
	ok := a.retry("load", func(ctx context.Context) error {
		rec, _, err := a.readRecord(ctx)
		if err != nil {
			return err
		}
		if rec != nil {
			att = volume.AttachmentOf(rec)
		}
		return nil
	})
	if !ok {
		return
	}
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	acts := a.gate.Loaded(att)
	a.signal()
	a.mu.Unlock()
	a.run(acts)
}

// commit writes target into the record, conditioned on the version read
// just before, until the record shows the outcome: target (committed, now
// or by an earlier attempt whose outcome was unknown), or a record that
// changed otherwise. It gives up only when this node no longer serves the
// volume: a primary at a later epoch or elsewhere conditions on a newer
// version, so no attempt of this one can land after that.
func (a *attachGate) commit(target migrate.Attachment) {
	start := time.Now()
	a.mu.Lock()
	from, _ := a.gate.Known()
	a.mu.Unlock()
	var outcome migrate.Attachment
	deposed := false
	ok := a.retry("commit", func(ctx context.Context) error {
		rec, version, err := a.readRecord(ctx)
		if err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("volume %s has no transactional record to attach", a.name)
		}
		if rec.Primary != a.node.cfg.ID || rec.Epoch != a.epoch {
			deposed = true
			return nil
		}
		cur := volume.AttachmentOf(rec)
		if cur != from {
			outcome = cur // landed already, or changed by another primary
			return nil
		}
		done, err := a.node.writeVolumeRecord(ctx, volume.WithAttachment(rec, target), version)
		if err != nil {
			return err // unknown: the next read decides
		}
		if !done {
			return fmt.Errorf("the record changed under the commit: %w", errRetryRead)
		}
		outcome = target
		return nil
	})
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	var acts migrate.Actions
	result := changeOutcome{rec: outcome, known: ok && !deposed}
	if !result.known {
		acts = a.gate.Failed()
	} else {
		if outcome == target {
			a.log.Info("attachment changed", "from", from.String(), "to", target.String(), "took", time.Since(start))
		}
		acts = a.gate.Finished(outcome)
	}
	a.endChangeLocked(result)
	a.signal()
	a.mu.Unlock()
	a.run(acts)
}

// endChangeLocked counts a change as ended and tells its admin caller.
func (a *attachGate) endChangeLocked(r changeOutcome) {
	a.finished++
	if ch, ok := a.awaiting[a.finished]; ok {
		ch <- r
		delete(a.awaiting, a.finished)
	}
}

// change runs an administrative change of the attachment through the
// gate and waits for its outcome.
func (a *attachGate) change(ctx context.Context, c migrate.Change) error {
	for {
		a.mu.Lock()
		if a.stopped {
			a.mu.Unlock()
			return status.Errorf(codes.Unavailable, "volume %s: this head node no longer serves it", a.name)
		}
		noop, acts, err := a.gate.Begin(c)
		if errors.Is(err, migrate.ErrUnknown) {
			acts = a.gate.RequestLoad()
		}
		changed := a.changed
		var outcome chan changeOutcome
		var target migrate.Attachment
		if err == nil && !noop {
			target, _ = a.gate.Changing()
			outcome = make(chan changeOutcome, 1)
			a.awaiting[a.finished+1] = outcome
		}
		a.mu.Unlock()
		a.run(acts)
		switch {
		case errors.Is(err, migrate.ErrRefused):
			return status.Error(codes.FailedPrecondition, err.Error())
		case err == nil && noop:
			return nil
		case err == nil:
			select {
			case r := <-outcome:
				switch {
				case !r.known:
					return status.Errorf(codes.Unavailable, "volume %s: the change's outcome is unknown (this head node stopped serving the volume); look again", a.name)
				case r.rec != target:
					return status.Errorf(codes.Aborted, "volume %s: the attachment changed otherwise: %s", a.name, r.rec)
				}
				return nil
			case <-ctx.Done():
				return status.Errorf(codes.DeadlineExceeded, "volume %s: the change is still under way: %v", a.name, ctx.Err())
			}
		}
		// Unknown or busy: wait for the gate to learn or finish.
		select {
		case <-changed:
		case <-ctx.Done():
			return status.Errorf(codes.DeadlineExceeded, "volume %s: %v", a.name, ctx.Err())
		}
	}
}

// close ends the gate with its primary: held requests are sent back to
// be retried at whichever node serves the volume next.
func (a *attachGate) close() {
	a.stop()
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	a.stopped = true
	acts := a.gate.Failed()
	for seq, ch := range a.awaiting {
		ch <- changeOutcome{}
		delete(a.awaiting, seq)
	}
	a.signal()
	a.mu.Unlock()
	a.run(acts) // releases only: Failed asks for no load or commit
}
