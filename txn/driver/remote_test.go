package driver

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/internal/consensustest"
	"github.com/ballast-storage/ballast/proto/txnpb"
	"github.com/ballast-storage/ballast/txn"
)

// The gRPC service refuses what does not decode before it reaches a
// log, sends a client of a group it does not serve elsewhere, and Remote
// finds the leaders from any node.
func TestServiceAndRemote(t *testing.T) {
	rack := newTestRack(t, 3, 1, 2)
	pool := consensustest.NewPool("client", nil)
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := pool.Dial(ctx, string(rack.nodes[0].addr))
	if err != nil {
		t.Fatal(err)
	}
	c := txnpb.NewTxnGroupsClient(cc)
	if _, err := c.Apply(ctx, &txnpb.ApplyRequest{Group: 1, Command: []byte{1, 99}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("garbage command: %v, want InvalidArgument", err)
	}
	if _, err := c.ReadRecord(ctx, &txnpb.ReadRecordRequest{Group: 1, Txn: []byte{1}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("garbage txn id: %v, want InvalidArgument", err)
	}
	resp, err := c.Read(ctx, &txnpb.ReadRequest{Group: 9, Key: "k"})
	if err != nil || resp.GetNotLeader() == nil {
		t.Fatalf("read of a group the node does not run: %v, %v; want NotLeader", resp, err)
	}

	// Through one node only: Remote follows the NotLeader answers.
	remote := NewRemote(pool.Dial, []string{string(rack.nodes[2].addr)})
	p := newClientProposer(t, remote, 7)
	defer p.Close()
	spec := txn.Spec{Writes: []txn.GroupWrite{
		{Group: 1, Write: txn.Write{Key: "a", Value: []byte("1")}},
		{Group: 2, Write: txn.Write{Key: "b", Value: []byte("2")}},
	}}
	rep, err := p.CommitResolved(ctx, spec)
	if err != nil || rep.Status != txn.StatusCommitted {
		t.Fatalf("commit through Remote: %s, %v", rep.Status, err)
	}
	for g, k := range map[txn.GroupID]string{1: "a", 2: "b"} {
		r, err := p.Read(ctx, g, k)
		if err != nil || !r.Found {
			t.Fatalf("read %d/%s through Remote: %+v, %v", g, k, r, err)
		}
	}
	// A condition on the old version now fails, and the report says which.
	spec.Conditions = []txn.GroupCondition{{Group: 1, Condition: txn.Condition{Key: "a"}}}
	rep, err = p.Commit(ctx, spec)
	if err != nil || rep.Status != txn.StatusAborted || rep.Refusal.Reason != txn.RefusedCondition || rep.Refusal.Condition.Key != "a" {
		t.Fatalf("stale condition: %+v, %v", rep, err)
	}
	p.Close()
	if _, err := p.Commit(ctx, spec); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after Close: %v, want ErrClosed", err)
	}
}

// failingConn is a node that takes connections and fails every call, as
// a frozen process does once its connection breaks.
type failingConn struct{}

func (failingConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unavailable, "connection error: error reading server preface")
}

func (failingConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "connection error: error reading server preface")
}

// A node that fails every call, listed first, does not keep reads or
// commits from the leader: a read goes on to the next node, and a commit
// whose outcome the failure left unknown is sent elsewhere next.
func TestRemoteGoesAroundAFailingNode(t *testing.T) {
	rack := newTestRack(t, 3, 1, 2)
	pool := consensustest.NewPool("client", nil)
	defer pool.Close()
	calls := map[string]int{}
	var mu sync.Mutex
	dial := func(ctx context.Context, addr string) (grpc.ClientConnInterface, error) {
		mu.Lock()
		calls[addr]++
		mu.Unlock()
		if addr == "frozen" {
			return failingConn{}, nil
		}
		return pool.Dial(ctx, addr)
	}
	remote := NewRemote(dial, []string{"frozen", string(rack.nodes[1].addr)})
	p := newClientProposer(t, remote, 8)
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := txn.Spec{Writes: []txn.GroupWrite{
		{Group: 1, Write: txn.Write{Key: "a", Value: []byte("1")}},
		{Group: 2, Write: txn.Write{Key: "b", Value: []byte("2")}},
	}}
	rep, err := p.CommitResolved(ctx, spec)
	if err != nil || rep.Status != txn.StatusCommitted {
		t.Fatalf("commit with a failing node first: %s, %v", rep.Status, err)
	}
	for g, k := range map[txn.GroupID]string{1: "a", 2: "b"} {
		r, err := remote.Read(ctx, g, k)
		if err != nil || !r.Found {
			t.Fatalf("read %d/%s with a failing node first: %+v, %v", g, k, r, err)
		}
	}
	// A fresh Remote reads at once, though the failing node is asked first.
	fresh := NewRemote(dial, []string{"frozen", string(rack.nodes[2].addr)})
	if r, err := fresh.Read(ctx, 1, "a"); err != nil || !r.Found {
		t.Fatalf("first read of a fresh Remote: %+v, %v", r, err)
	}
	// Once the failure is old, the node is tried in its place again.
	node := string(rack.nodes[2].addr)
	if got := fresh.order(2); !slices.Equal(got, []string{node, "frozen"}) {
		t.Fatalf("order after a failure: %v, want the failing node last", got)
	}
	fresh.now = func() time.Time { return time.Now().Add(2 * failedFor) }
	if got := fresh.order(2); !slices.Equal(got, []string{"frozen", node}) {
		t.Fatalf("order once the failure aged: %v, want the configured order", got)
	}
}
