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
// Every other method is the embedded Transport's, except those a member
// that rejoins after lost state needs to abstain from elections
// (rejoin.go): Consumer, RequestVote, RequestPreVote and Close.
type trackingTransport struct {
	*transport.Transport
	// abst, if set, keeps a member that rejoined after lost state out of
	// elections (rejoin.go); set before raft starts, never changed.
	abst *abstention

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

// abstain keeps the member out of elections until lifted; call it before
// raft takes the consumer channel.
func (t *trackingTransport) abstain(localID string) {
	t.abst = newAbstention(localID, t.Transport.Consumer())
}

func (t *trackingTransport) abstaining() bool { return t.abst != nil && !t.abst.lifted.Load() }

// Consumer implements raft.Transport: an abstaining member's requests go
// through its relay.
func (t *trackingTransport) Consumer() <-chan raft.RPC {
	if t.abst != nil {
		return t.abst.out
	}
	return t.Transport.Consumer()
}

// RequestVote implements raft.Transport: an abstaining member asks for no
// vote; its candidacy sees a refusal in its own term (an error would be
// logged at every election timeout).
func (t *trackingTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.abstaining() {
		*resp = raft.RequestVoteResponse{Term: args.Term}
		return nil
	}
	return t.Transport.RequestVote(id, target, args, resp)
}

// RequestPreVote implements raft.WithPreVote, as RequestVote.
func (t *trackingTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.abstaining() {
		*resp = raft.RequestPreVoteResponse{Term: args.Term}
		return nil
	}
	return t.Transport.RequestPreVote(id, target, args, resp)
}

// Close implements raft.WithClose, ending the relay too.
func (t *trackingTransport) Close() error {
	if t.abst != nil {
		t.abst.close()
	}
	return t.Transport.Close()
}

var _ raft.WithPreVote = (*trackingTransport)(nil)
var _ raft.WithClose = (*trackingTransport)(nil)
