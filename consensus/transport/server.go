package transport

// The serving side: the Stream handler (one per peer that dials this
// node) and the dispatch of its requests to the groups' queues.

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

// service implements raftpb.RaftTransportServer for a Manager.
type service struct {
	raftpb.UnimplementedRaftTransportServer
	m *Manager
}

var errServiceClosed = status.Error(codes.Unavailable, "raft transport closed")

// inStream is one inbound Stream. Its handler goroutine (gRPC's) writes
// the responses; its reader goroutine, owned by the Manager, reads and
// dispatches the requests. Both end when either ends.
type inStream struct {
	from  string
	respq chan *raftpb.Response // to the handler; bounded
	done  chan struct{}         // closed by close
	once  sync.Once
	err   error // why the stream ended; set before done is closed
}

func (in *inStream) close(err error) {
	in.once.Do(func() {
		in.err = err
		close(in.done)
	})
}

// send queues a response for the handler to write; if the queue is full
// it waits until deadline, the stream's end or abort.
func (in *inStream) send(resp *raftpb.Response, deadline time.Time, abort <-chan struct{}) {
	select {
	case in.respq <- resp:
		return
	case <-in.done:
		return
	default:
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case in.respq <- resp:
	case <-in.done:
	case <-timer.C:
	case <-abort:
	}
}

func remoteNode(st grpc.ServerStream) string {
	if md, ok := metadata.FromIncomingContext(st.Context()); ok {
		if v := md.Get(nodeMetadataKey); len(v) > 0 && v[0] != "" {
			return v[0][:min(len(v[0]), 128)] // from the network: bounded
		}
	}
	return "unknown"
}

// Stream implements raftpb.RaftTransportServer.
func (s *service) Stream(st grpc.BidiStreamingServer[raftpb.Request, raftpb.Response]) error {
	m := s.m
	in := &inStream{
		from:  remoteNode(st),
		respq: make(chan *raftpb.Response, m.cfg.StreamQueueLen),
		done:  make(chan struct{}),
	}
	if !m.goFunc(func() { m.readInbound(in, st) }) {
		return errServiceClosed
	}
	// Returning ends the gRPC stream, which ends the reader's Recv.
	defer in.close(nil)
	m.addInbound(in.from, 1)
	defer m.addInbound(in.from, -1)
	m.log.Debug("raft stream accepted", "from", in.from)
	for {
		select {
		case r := <-in.respq:
			if err := st.Send(r); err != nil {
				m.log.Debug("raft stream: send failed", "from", in.from, "error", err)
				return err
			}
		case <-in.done:
			return in.err
		case <-m.closed:
			return errServiceClosed
		case <-st.Context().Done():
			return st.Context().Err()
		}
	}
}

// readInbound reads an inbound stream's requests until it ends.
func (m *Manager) readInbound(in *inStream, st grpc.BidiStreamingServer[raftpb.Request, raftpb.Response]) {
	for {
		req, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			in.close(err)
			return
		}
		m.dispatch(in, req)
	}
}

// dispatch queues one inbound request for its group, or answers it with
// an error at once. It never waits for a group.
func (m *Manager) dispatch(in *inStream, req *raftpb.Request) {
	timeout := time.Duration(req.GetTimeoutMillis()) * time.Millisecond
	if timeout <= 0 {
		timeout = m.cfg.RPCTimeout
	}
	if timeout > maxRequestTimeout {
		timeout = maxRequestTimeout
	}
	// Answer a little before the client gives up, so that it hears why.
	deadline := time.Now().Add(timeout - timeout/10)
	cmd, err := decodeRequest(req)
	if err != nil {
		in.send(errorResponse(req.GetId(), err), deadline, m.closed)
		return
	}
	t := m.group(req.GetGroup())
	if t == nil {
		err := fmt.Errorf("%w: group %d is not running on node %s", ErrUnknownGroup, req.GetGroup(), m.cfg.NodeID)
		in.send(errorResponse(req.GetId(), err), deadline, m.closed)
		return
	}
	ae, _ := cmd.(*raft.AppendEntriesRequest)
	heartbeat := ae != nil && isHeartbeat(ae)
	r := &inbound{in: in, id: req.GetId(), deadline: deadline, cmd: cmd}
	if err := t.enqueue(r, heartbeat); err != nil {
		r.fail(err, m.closed)
	}
}
