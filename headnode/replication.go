package headnode

import (
	"context"
	"errors"
	"fmt"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// ErrReplication is returned when a secondary could not confirm a write in
// time: the write may or may not be durable on it (the outcome is unknown),
// and it was not acknowledged.
var ErrReplication = errors.New("headnode: replication failed")

// ErrSeqGap and ErrCorrupt are the block store's (headnode/blockstore),
// under the names they had when the store was part of this package:
// records that do not follow a replica's log, which must reconcile
// first, and a stored value that does not decode (this replica's copy is
// bad).
var (
	ErrSeqGap  = blockstore.ErrSeqGap
	ErrCorrupt = blockstore.ErrCorrupt
)

// errVolumeGone is returned when a replica reports that the volume was
// deleted while a write was on its way.
var errVolumeGone = errors.New("headnode: volume was deleted")

// replicaLink is the primary's session with one secondary for one volume.
// A session starts with Hello and then carries batches in seq order. Any
// error ends the session; the primary opens a new one and reconciles.
type replicaLink interface {
	// Hello tells the secondary the primary's last durable seq and learns
	// the secondary's, plus any records it holds beyond the primary's.
	Hello(ctx context.Context, hello *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error)
	// Send delivers records and waits for the secondary to make them
	// durable; it returns the secondary's last durable seq.
	Send(ctx context.Context, req *ballastpb.ReplicateRequest) (uint64, error)
	// Start delivers records without waiting: batches stream, the
	// secondary journals the next while the last one syncs. Wait returns
	// what Send does, for the oldest batch started and not yet waited
	// for. Send is Start and Wait.
	Start(ctx context.Context, req *ballastpb.ReplicateRequest) error
	Wait(ctx context.Context) (uint64, error)
	// DiskFull says whether the secondary's last reply said its data
	// disk is nearly full.
	DiskFull() bool
	// JournalPressure says whether the secondary's last reply asked for
	// a flush to free its journal.
	JournalPressure() bool
	// JournalFull says whether it said its journal is at its high-water
	// mark: client writes wait.
	JournalFull() bool
	Close()
}

// linkDialer opens a replication session to a volume's secondary.
type linkDialer func(ctx context.Context, vol *ballastpb.Volume, secondary string) (replicaLink, error)

// secondaryVolume is the secondary's side of one volume's replication: it
// applies records in seq order to its own store.
type secondaryVolume struct {
	store *blockstore.Store
	id    uint64
}

// recordFeatures are the kinds of record this build applies beyond those
// every head node does, which a secondary's hello reply names.
const featureSegmentWrite = "segment-write"

var recordFeatures = []string{featureSegmentWrite}

// hello answers a primary that opens a session.
func (s *secondaryVolume) hello(req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	reply, err := s.answerHello(req)
	if reply != nil {
		reply.Features = recordFeatures
	}
	return reply, err
}

func (s *secondaryVolume) answerHello(req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	if req.SyncBegin {
		if err := s.store.BeginSync(s.id); err != nil {
			return nil, err
		}
		return &ballastpb.ReplicateReply{}, nil
	}
	if syncing, err := s.store.Syncing(s.id); err != nil || syncing {
		return &ballastpb.ReplicateReply{NeedsSync: true}, err
	}
	last, err := s.store.LastSeq(s.id)
	if err != nil {
		return nil, err
	}
	reply := &ballastpb.ReplicateReply{LastSeq: last}
	if last > req.PrimaryLastSeq {
		// The primary crashed or failed its own append after sending us a
		// batch: hand back what it lacks so both logs agree again.
		// At most one batch: the primary reconciles before every new one.
		ahead, err := s.store.LogFrom(s.id, req.PrimaryLastSeq+1, int(last-req.PrimaryLastSeq), 0)
		if errors.Is(err, ErrSeqGap) {
			// Our log is of another history than the primary's: only a
			// full copy brings us back.
			return &ballastpb.ReplicateReply{NeedsSync: true}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("records ahead of primary: %w", err)
		}
		reply.RecordsAhead = ahead
	}
	return reply, nil
}

// begin puts a batch of records in the journal (see
// blockstore.Store.BeginAppend); finish makes it durable and answers it.
func (s *secondaryVolume) begin(req *ballastpb.ReplicateRequest) (*blockstore.PendingAppend, error) {
	syncing, err := s.store.Syncing(s.id)
	if err == nil && syncing {
		err = fmt.Errorf("volume %d: records sent while a full sync is unfinished", s.id)
	}
	if err != nil {
		return nil, err
	}
	return s.store.BeginAppend(s.id, req.Records, req.ReplicatedThrough)
}

func (s *secondaryVolume) finish(pa *blockstore.PendingAppend) (*ballastpb.ReplicateReply, error) {
	if err := pa.Finish(); err != nil {
		return nil, err
	}
	last, err := s.store.LastSeq(s.id)
	if err != nil {
		return nil, err
	}
	return &ballastpb.ReplicateReply{LastSeq: last}, nil
}

// apply makes a batch durable and trims what every replica holds, or
// takes the next step of a full sync.
func (s *secondaryVolume) apply(req *ballastpb.ReplicateRequest) (*ballastpb.ReplicateReply, error) {
	var err error
	switch {
	case req.SyncBegin:
		err = s.store.BeginSync(s.id)
	case req.SyncState != nil:
		err = s.store.ApplySyncState(s.id, req.SyncState)
	case req.SyncEnd:
		err = s.store.EndSync(s.id, req.SyncEndSeq, req.SyncNextSegmentId)
	default:
		var syncing bool
		if syncing, err = s.store.Syncing(s.id); err == nil && syncing {
			err = fmt.Errorf("volume %d: records sent while a full sync is unfinished", s.id)
		}
		if err == nil {
			err = s.store.Append(s.id, req.Records, req.ReplicatedThrough)
		}
	}
	if err != nil {
		return nil, err
	}
	last, err := s.store.LastSeq(s.id)
	if err != nil {
		return nil, err
	}
	return &ballastpb.ReplicateReply{LastSeq: last}, nil
}
