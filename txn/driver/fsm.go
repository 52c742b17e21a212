package driver

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/txn"
)

// Host is a txn group's state as the driver needs it: some raft.FSM
// holds the group's txn.Participant and applies the txn commands its log
// carries. FSM is the FSM of a group that holds nothing else; a richer
// FSM (a head node's directory) carries txn commands among its own.
type Host interface {
	// Group is the txn group.
	Group() txn.GroupID
	// RaftGroup is the consensus group whose log carries its commands.
	RaftGroup() uint64
	// Entry is the log entry that carries an encoded txn command.
	Entry(cmd []byte) ([]byte, error)
	// Result is the txn.Result in the FSM's answer to such an entry.
	Result(resp any) (txn.Result, error)
	// Fence linearizes the reads (consensus.Node.Linearize).
	Fence() *consensus.ReadFence
	// Read, ReadRecord, Records and Holders read the local state: those
	// of the participant.
	Read(key string) txn.ReadResult
	ReadRecord(t txn.TxnID) txn.RecordInfo
	Records() []txn.RecordEntry
	Holders() []txn.Holder
}

// FSM is the raft.FSM of a group whose state is a txn.Participant. Every
// log entry is a command encoded by txn.MarshalCommand; Apply answers
// a txn.Result. It is safe for concurrent use: raft applies while
// readers read.
type FSM struct {
	group txn.GroupID // never changes: Restore checks the snapshot's

	mu sync.RWMutex
	p  *txn.Participant
	// fence makes the reads linearizable (consensus.Node.Linearize).
	fence consensus.ReadFence
}

// NewFSM returns the empty state of group g.
func NewFSM(g txn.GroupID) *FSM { return &FSM{group: g, p: txn.NewParticipant(g)} }

// Group is the group the FSM holds the state of.
func (f *FSM) Group() txn.GroupID { return f.group }

// RaftGroup is the consensus group of the same id.
func (f *FSM) RaftGroup() uint64 { return uint64(f.group) }

// Entry is the command itself: the log holds nothing else.
func (f *FSM) Entry(cmd []byte) ([]byte, error) { return cmd, nil }

// Result is the answer itself.
func (f *FSM) Result(resp any) (txn.Result, error) {
	r, ok := resp.(txn.Result)
	if !ok {
		return txn.Result{}, fmt.Errorf("txn group %d answered %T, not a txn.Result", f.Group(), resp)
	}
	return r, nil
}

// Fence is the FSM's read fence.
func (f *FSM) Fence() *consensus.ReadFence { return &f.fence }

// Apply applies one committed entry. An entry that does not decode is
// refused in its Result (with txn.ErrMalformed), as every replica
// refuses it: one bad entry must not stop the group.
func (f *FSM) Apply(l *raft.Log) any {
	cmd, err := txn.UnmarshalCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		// Apply advances the applied index and refuses the nil command;
		// the decoding error says more.
		r := f.p.Apply(l.Index, nil)
		if r.Err != nil {
			r.Err = err // wraps txn.ErrMalformed
		}
		return r
	}
	return f.p.Apply(l.Index, cmd)
}

// Snapshot captures the participant's state; raft persists it later,
// concurrently with Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return stateSnapshot(f.p.MarshalState()), nil
}

// Restore replaces the state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("txn fsm: read snapshot: %w", err)
	}
	p, err := txn.RestoreParticipant(b)
	if err != nil {
		return fmt.Errorf("txn fsm: restore snapshot: %w", err)
	}
	if p.Group() != f.group {
		return fmt.Errorf("txn fsm: snapshot of group %d restored into group %d", p.Group(), f.group)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.p = p
	return nil
}

// Read reads key from the local state; Local and Service linearize it.
func (f *FSM) Read(key string) txn.ReadResult {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.p.Read(key)
}

// ReadRecord reads t's record from the local state.
func (f *FSM) ReadRecord(t txn.TxnID) txn.RecordInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.p.ReadRecord(t)
}

// Records lists the records the group keeps as a home.
func (f *FSM) Records() []txn.RecordEntry {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.p.Records()
}

// Holders lists the transactions holding locks in the group.
func (f *FSM) Holders() []txn.Holder {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.p.Holders()
}

type stateSnapshot []byte

func (s stateSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("txn fsm: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s stateSnapshot) Release() {}
