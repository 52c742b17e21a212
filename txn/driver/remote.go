package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/consensus"
	"github.com/ballast-storage/ballast/proto/txnpb"
	"github.com/ballast-storage/ballast/txn"
)

// Service serves TxnGroups for the txn groups a node runs: it proposes
// and reads on the members this node leads, and answers NotLeader, with
// the leader's address when known, for the others.
type Service struct {
	txnpb.UnimplementedTxnGroupsServer
	node *consensus.Node

	mu    sync.RWMutex
	hosts map[txn.GroupID]Host
}

// NewService returns a service for node's members; Add each.
func NewService(node *consensus.Node) *Service {
	return &Service{node: node, hosts: map[txn.GroupID]Host{}}
}

// Add serves h's group.
func (s *Service) Add(h Host) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hosts[h.Group()] = h
}

// Register registers the service on a gRPC server.
func (s *Service) Register(srv grpc.ServiceRegistrar) { txnpb.RegisterTxnGroupsServer(srv, s) }

// member is this node's member of txn group g, if it has one.
func (s *Service) member(g uint64) (Member, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.hosts[txn.GroupID(g)]
	return Member{Node: s.node, Host: h}, ok
}

// notLeader turns the errors that proposed nothing into a NotLeader
// answer; any other error is the call's, with the outcome unknown.
func notLeader(err error) (*txnpb.NotLeader, error) {
	var nl *consensus.NotLeaderError
	switch {
	case errors.As(err, &nl):
		return &txnpb.NotLeader{LeaderAddress: string(nl.LeaderAddress)}, nil
	case proposedNothing(err):
		return &txnpb.NotLeader{}, nil
	}
	return nil, status.Error(codes.Unavailable, err.Error())
}

// Apply implements txnpb.TxnGroupsServer.
func (s *Service) Apply(ctx context.Context, req *txnpb.ApplyRequest) (*txnpb.ApplyResponse, error) {
	// A command that does not decode is refused here rather than written
	// to the log for every replica to refuse.
	if _, err := txn.UnmarshalCommand(req.GetCommand()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "txn command for group %d: %v", req.GetGroup(), err)
	}
	m, ok := s.member(req.GetGroup())
	if !ok {
		return &txnpb.ApplyResponse{NotLeader: &txnpb.NotLeader{}}, nil
	}
	res, err := propose(ctx, m, req.GetCommand())
	if err != nil {
		nl, err := notLeader(err)
		return &txnpb.ApplyResponse{NotLeader: nl}, err
	}
	return &txnpb.ApplyResponse{Result: txn.MarshalResult(res)}, nil
}

// linearized runs read on g's FSM once it reflects every write that
// completed before the call.
func (s *Service) linearized(ctx context.Context, g uint64, read func(Host)) (*txnpb.NotLeader, error) {
	m, ok := s.member(g)
	if !ok {
		return &txnpb.NotLeader{}, nil
	}
	if err := linearize(ctx, m); err != nil {
		return notLeader(err)
	}
	read(m.Host)
	return nil, nil
}

// Read implements txnpb.TxnGroupsServer.
func (s *Service) Read(ctx context.Context, req *txnpb.ReadRequest) (*txnpb.ReadResponse, error) {
	resp := &txnpb.ReadResponse{}
	nl, err := s.linearized(ctx, req.GetGroup(), func(h Host) { resp.Result = txn.MarshalReadResult(h.Read(req.GetKey())) })
	resp.NotLeader = nl
	return resp, err
}

// ReadRecord implements txnpb.TxnGroupsServer.
func (s *Service) ReadRecord(ctx context.Context, req *txnpb.ReadRecordRequest) (*txnpb.ReadRecordResponse, error) {
	t, err := txn.UnmarshalTxnID(req.GetTxn())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "txn id: %v", err)
	}
	resp := &txnpb.ReadRecordResponse{}
	nl, err := s.linearized(ctx, req.GetGroup(), func(h Host) { resp.Record = txn.MarshalRecordInfo(h.ReadRecord(t)) })
	resp.NotLeader = nl
	return resp, err
}

// Remote reaches txn groups through the TxnGroups service of any of a
// rack's nodes: it remembers each group's leader, follows NotLeader
// answers to it, and waits for an election while no node leads.
//
// A node whose call failed is tried last for a while: a node that is
// frozen, or cut off on every path, still accepts connections and fails
// every call, and were it tried first each time, no call would ever
// reach the group's leader elsewhere.
type Remote struct {
	dial  func(ctx context.Context, addr string) (grpc.ClientConnInterface, error)
	addrs []string
	now   func() time.Time

	mu     sync.Mutex
	leader map[txn.GroupID]string
	failed map[string]time.Time // when a call to the address last failed
}

// NewRemote returns a Remote over the nodes at addrs; dial connects to
// one (addresses in NotLeader answers are nodes' raft addresses, which
// dial must understand too).
func NewRemote(dial func(ctx context.Context, addr string) (grpc.ClientConnInterface, error), addrs []string) *Remote {
	return &Remote{dial: dial, addrs: slices.Clone(addrs), now: time.Now,
		leader: map[txn.GroupID]string{}, failed: map[string]time.Time{}}
}

// maxRedirects bounds the NotLeader answers followed in one round.
const maxRedirects = 3

// failedFor is how long a node whose call failed is tried after the others.
const failedFor = 5 * time.Second

// order returns the addresses to try for g: the known leader first, then
// the others, with the nodes that failed lately last.
func (r *Remote) order(g txn.GroupID) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	tries := slices.Clone(r.addrs)
	if l, ok := r.leader[g]; ok {
		tries = append([]string{l}, slices.DeleteFunc(tries, func(a string) bool { return a == l })...)
	}
	now := r.now()
	for a, at := range r.failed {
		if now.Sub(at) > failedFor {
			delete(r.failed, a)
		}
	}
	slices.SortStableFunc(tries, func(a, b string) int {
		_, fa := r.failed[a]
		_, fb := r.failed[b]
		switch {
		case fa == fb:
			return 0
		case fb:
			return -1
		}
		return 1
	})
	return tries
}

// call runs fn against g's leader. fn answers NotLeader when the node it
// asked does not lead; an error of fn is the outcome's (unknown), so it
// is returned, unless the call is a read (safe to repeat), which goes on
// to the next node.
func (r *Remote) call(ctx context.Context, g txn.GroupID, read bool, fn func(txnpb.TxnGroupsClient) (*txnpb.NotLeader, error)) error {
	for {
		tries := r.order(g)
		redirects := 0
		var readErr error
		for len(tries) > 0 {
			addr := tries[0]
			tries = tries[1:]
			cc, err := r.dial(ctx, addr)
			if err != nil {
				continue
			}
			nl, err := fn(txnpb.NewTxnGroupsClient(cc))
			if err != nil {
				err = fmt.Errorf("txn group %d at %s: %w", g, addr, err)
				r.mu.Lock()
				if r.leader[g] == addr {
					delete(r.leader, g)
				}
				r.failed[addr] = r.now()
				r.mu.Unlock()
				if read && ctx.Err() == nil {
					readErr = err
					continue
				}
				return err
			}
			if nl == nil {
				r.mu.Lock()
				r.leader[g] = addr
				delete(r.failed, addr)
				r.mu.Unlock()
				return nil
			}
			if hint := nl.GetLeaderAddress(); hint != "" && hint != addr && redirects < maxRedirects {
				redirects++
				tries = append([]string{hint}, slices.DeleteFunc(tries, func(a string) bool { return a == hint })...)
			}
		}
		if readErr != nil {
			// Every node either failed or does not lead: the caller's
			// retry, with its backoff, decides when to ask again.
			return readErr
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("txn group %d: no leader found: %w", g, context.Cause(ctx))
		case <-time.After(electionPoll):
		}
	}
}

// Apply implements Groups.
func (r *Remote) Apply(ctx context.Context, g txn.GroupID, cmd txn.Command) (txn.Result, error) {
	data, err := txn.MarshalCommand(cmd)
	if err != nil {
		return txn.Result{}, fmt.Errorf("txn group %d: encode %s: %w", g, cmd.Kind(), err)
	}
	var raw []byte
	err = r.call(ctx, g, false, func(c txnpb.TxnGroupsClient) (*txnpb.NotLeader, error) {
		resp, err := c.Apply(ctx, &txnpb.ApplyRequest{Group: uint64(g), Command: data})
		raw = resp.GetResult()
		return resp.GetNotLeader(), err
	})
	if err != nil {
		return txn.Result{}, err
	}
	res, err := txn.UnmarshalResult(raw)
	if err != nil {
		return txn.Result{}, fmt.Errorf("txn group %d: result: %w", g, err)
	}
	return res, nil
}

// Read implements Groups.
func (r *Remote) Read(ctx context.Context, g txn.GroupID, key string) (txn.ReadResult, error) {
	var raw []byte
	err := r.call(ctx, g, true, func(c txnpb.TxnGroupsClient) (*txnpb.NotLeader, error) {
		resp, err := c.Read(ctx, &txnpb.ReadRequest{Group: uint64(g), Key: key})
		raw = resp.GetResult()
		return resp.GetNotLeader(), err
	})
	if err != nil {
		return txn.ReadResult{}, err
	}
	res, err := txn.UnmarshalReadResult(raw)
	if err != nil {
		return txn.ReadResult{}, fmt.Errorf("txn group %d: read result: %w", g, err)
	}
	return res, nil
}

// ReadRecord implements Groups.
func (r *Remote) ReadRecord(ctx context.Context, g txn.GroupID, t txn.TxnID) (txn.RecordInfo, error) {
	var raw []byte
	err := r.call(ctx, g, true, func(c txnpb.TxnGroupsClient) (*txnpb.NotLeader, error) {
		resp, err := c.ReadRecord(ctx, &txnpb.ReadRecordRequest{Group: uint64(g), Txn: txn.MarshalTxnID(t)})
		raw = resp.GetRecord()
		return resp.GetNotLeader(), err
	})
	if err != nil {
		return txn.RecordInfo{}, err
	}
	rec, err := txn.UnmarshalRecordInfo(raw)
	if err != nil {
		return txn.RecordInfo{}, fmt.Errorf("txn group %d: record: %w", g, err)
	}
	return rec, nil
}
