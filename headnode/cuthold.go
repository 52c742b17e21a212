package headnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// A consistency group's snapshot cut (cg.go) needs every member's primary
// to hold its writes from the moment it reports its log seq until the
// cut's transaction is decided: then a write acknowledged after the cut on
// one member was issued after every member's hold began, so no member's
// cut can hold a write that depends on it.
//
// A primary lets the writes go when the coordinator says the cut is
// decided, or on its own once the hold's time is up. On its own it first
// makes sure the cut cannot commit any more: it reads its record, and
// unless the record already shows the cut, writes refused_cut_id into it,
// which changes the version the cut's transaction is conditioned on.
// Holds are named by the attempt's cut id, unique to it: a generation is
// tried again after an attempt that did not commit. The hold is recorded in the block store, so a primary that restarts
// at the same epoch settles the cut the same way before any write.

// errCutOver: the cut the request names was let go already, or another
// cut holds the volume.
var errCutOver = errors.New("the cut is over or another cut holds the volume")

// cutHold holds a primary's writes for a cut. It does no I/O.
type cutHold struct {
	mu       sync.Mutex
	inflight int           // writes admitted and not yet finished
	held     uint64        // the id of the cut that holds writes (0: none)
	released []uint64      // the ids of the last cuts let go, oldest first
	free     chan struct{} // closed when the hold of held ends
	idle     chan struct{} // closed when inflight drops to 0
	closed   bool
}

func newCutHold() *cutHold { return &cutHold{} }

// enter admits one write, waiting while a cut holds the writes. exit must
// be called once the write has finished.
func (h *cutHold) enter(ctx context.Context) (exit func(), err error) {
	for {
		h.mu.Lock()
		if h.held == 0 || h.closed {
			h.inflight++
			h.mu.Unlock()
			return h.exit, nil
		}
		free := h.free
		h.mu.Unlock()
		select {
		case <-free:
		case <-ctx.Done():
			return nil, fmt.Errorf("held for a consistency group's cut: %w", ctx.Err())
		}
	}
}

func (h *cutHold) exit() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inflight--
	if h.inflight == 0 && h.idle != nil {
		close(h.idle)
		h.idle = nil
	}
}

// keptReleased is how many released cut ids a cutHold remembers, to
// refuse holds that arrive after their cut was let go.
const keptReleased = 32

// hold stops new writes for cut g (an id) and waits until the writes
// admitted before have finished. A repeated hold of g waits again; a
// hold of a cut let go already, or while another holds, fails with
// errCutOver. If ctx ends first, the hold is let go.
func (h *cutHold) hold(ctx context.Context, g uint64) error {
	h.mu.Lock()
	switch {
	case h.closed || g == 0 || slices.Contains(h.released, g):
		h.mu.Unlock()
		return fmt.Errorf("%w: cut %d", errCutOver, g)
	case h.held == g:
	case h.held != 0:
		held := h.held
		h.mu.Unlock()
		return fmt.Errorf("%w: cut %d holds it, not %d", errCutOver, held, g)
	default:
		h.held = g
		h.free = make(chan struct{})
	}
	for h.inflight > 0 {
		if h.idle == nil {
			h.idle = make(chan struct{})
		}
		idle := h.idle
		h.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			h.release(g)
			return fmt.Errorf("drain writes for the cut: %w", ctx.Err())
		}
		h.mu.Lock()
		if h.held != g {
			h.mu.Unlock()
			return fmt.Errorf("%w: cut %d was let go while draining", errCutOver, g)
		}
	}
	h.mu.Unlock()
	return nil
}

// holding reports whether cut g holds the writes.
func (h *cutHold) holding(g uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return g != 0 && h.held == g
}

// release lets the writes go if cut g holds them, and refuses any later
// hold of g.
func (h *cutHold) release(g uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if g == 0 {
		return false
	}
	if !slices.Contains(h.released, g) {
		h.released = append(h.released, g)
		if len(h.released) > keptReleased {
			h.released = h.released[1:]
		}
	}
	if h.held != g {
		return false
	}
	h.held = 0
	close(h.free)
	return true
}

// close lets every write go for good: the primary is stopping, and its
// writes fail on their own.
func (h *cutHold) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.held != 0 {
		h.held = 0
		close(h.free)
	}
}

// holdForCut holds pv's writes for cut g (an id), records the hold, and
// answers the log seq the writes drained to. Past holdFor, the
// primary settles the cut on its own (settleCut).
func (n *Node) holdForCut(ctx context.Context, pv *primaryVolume, g uint64, holdFor time.Duration) (uint64, error) {
	if err := pv.cut.hold(ctx, g); err != nil {
		return 0, err
	}
	seq, err := pv.store.LastSeq(pv.vol.Id)
	if err == nil {
		err = pv.store.SetCutHold(pv.vol.Id, g)
	}
	if err != nil {
		n.letCutGo(pv, g)
		return 0, err
	}
	go func() {
		t := time.NewTimer(holdFor)
		defer t.Stop()
		select {
		case <-t.C:
			n.settleCut(pv, g)
		case <-pv.stop:
		}
	}()
	return seq, nil
}

// letCutGo ends the hold of cut g: the cut is decided, or can no longer
// commit.
func (n *Node) letCutGo(pv *primaryVolume, g uint64) {
	if !pv.cut.release(g) {
		return
	}
	// A stale marker only costs a restarted primary a read of its record.
	if err := pv.store.SetCutHold(pv.vol.Id, 0); err != nil {
		pv.log.Warn("cut released; clearing its marker failed", "cut", g, "err", err)
	}
}

// settleCut ends a hold whose cut was not decided in time: once the
// record shows the cut, or the record says the cut is refused (so its
// transaction, conditioned on an older version, cannot commit), the
// writes go. It gives up only when the primary stops: its writes fail
// then, and the next primary's epoch changed the record.
func (n *Node) settleCut(pv *primaryVolume, g uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-pv.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	settled := retryUntil(ctx, pv.log, "settle cut", func(ctx context.Context) error {
		if !pv.cut.holding(g) {
			return nil // let go meanwhile
		}
		return n.refuseCut(ctx, pv.vol, g)
	})
	if settled && pv.cut.holding(g) {
		pv.log.Info("cut settled without its coordinator", "cut", g)
		n.letCutGo(pv, g)
	}
}

// refuseCut makes sure cut g is decided in vol's record: nil once the
// record shows the cut or its refusal.
func (n *Node) refuseCut(ctx context.Context, vol *ballastpb.Volume, g uint64) error {
	rec, version, err := n.readVolumeRecord(ctx, vol.Id, vol.Name)
	if errors.Is(err, errVolumeGone) {
		return nil // deleted: no cut of it can commit
	}
	if err != nil || rec == nil || rec.CutId == g || rec.RefusedCutId == g {
		return err
	}
	rec.RefusedCutId = g
	done, err := n.writeVolumeRecord(ctx, rec, version)
	if err == nil && !done {
		err = fmt.Errorf("the record changed under the refusal: %w", errRetryRead)
	}
	return err
}

// resumeCutHold is run when pv starts: a hold its store records (left by
// a primary of this node that stopped while holding) holds pv's writes
// until the cut is settled.
func (n *Node) resumeCutHold(pv *primaryVolume) {
	g, err := pv.store.CutHold(pv.vol.Id)
	if err != nil {
		pv.log.Warn("reading the cut hold marker failed", "err", err)
		return
	}
	if g == 0 {
		return
	}
	if err := pv.cut.hold(context.Background(), g); err != nil {
		return
	}
	pv.log.Info("resuming the hold of an unsettled cut", "cut", g)
	go n.settleCut(pv, g)
}
