package consensus

import (
	"sync"

	"github.com/hashicorp/raft"

	"github.com/ballast-storage/ballast/consensus/transport"
)

// trackingTransport is a group's transport that remembers the last log
// index each peer reported in a response to a plain AppendEntries.
//
// raft gives the leader no public view of a follower's progress, and
// MoveVoter must not remove the old voter before the new one has the log.
// raft sends heartbeats with AppendEntries (never through the pipeline)
// every HeartbeatTimeout/10, and every response carries the follower's
// last log index, so a reachable follower reports its progress a few times
// per heartbeat timeout. The pipeline, which carries the bulk of the log,
// is left alone: observing it would put a relay on the hot path.
//
// Every other method, including Close and RequestPreVote (which raft finds
// by type assertion), is the embedded Transport's.
type trackingTransport struct {
	*transport.Transport

	mu      sync.Mutex
	lastLog map[raft.ServerID]uint64
}

func newTrackingTransport(t *transport.Transport) *trackingTransport {
	return &trackingTransport{Transport: t, lastLog: map[raft.ServerID]uint64{}}
}

func (t *trackingTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := t.Transport.AppendEntries(id, target, args, resp)
	if err == nil {
		t.mu.Lock()
		t.lastLog[id] = resp.LastLog
		t.mu.Unlock()
	}
	return err
}

// peerLastLog returns the last log index id reported since it was last
// forgotten, and whether it reported one.
func (t *trackingTransport) peerLastLog(id raft.ServerID) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.lastLog[id]
	return i, ok
}

// forget drops what id reported, so that only later reports count: a
// follower's log can be truncated, and a report from an earlier term says
// nothing about its log now.
func (t *trackingTransport) forget(id raft.ServerID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.lastLog, id)
}

var _ raft.WithPreVote = (*trackingTransport)(nil)
var _ raft.WithClose = (*trackingTransport)(nil)
