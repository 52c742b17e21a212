package transport

// Conversions between hashicorp/raft's RPC structs and their protobuf
// messages (proto/raftpb). Encoding never fails on what raft produces;
// decoding checks what the network sent and fails with ErrInvalidMessage,
// never panics. Empty byte strings decode as nil, an empty Entries list as
// nil, and a zero AppendedAt as the zero time.

import (
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
}

// orNil returns b, or nil if b is empty.
func orNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func toInt(v int64, what string) (int, error) {
	if v < math.MinInt || v > math.MaxInt {
		return 0, invalid("%s %d out of range", what, v)
	}
	return int(v), nil
}

func encodeHeader(h raft.RPCHeader) *raftpb.RPCHeader {
	return &raftpb.RPCHeader{
		ProtocolVersion: int64(h.ProtocolVersion),
		Id:              h.ID,
		Addr:            h.Addr,
	}
}

func decodeHeader(h *raftpb.RPCHeader) (raft.RPCHeader, error) {
	v, err := toInt(h.GetProtocolVersion(), "protocol version")
	if err != nil {
		return raft.RPCHeader{}, err
	}
	return raft.RPCHeader{
		ProtocolVersion: raft.ProtocolVersion(v),
		ID:              orNil(h.GetId()),
		Addr:            orNil(h.GetAddr()),
	}, nil
}

func encodeLog(l *raft.Log) *raftpb.Log {
	if l == nil {
		return &raftpb.Log{}
	}
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	return &raftpb.Log{
		Index:               l.Index,
		Term:                l.Term,
		Type:                uint32(l.Type),
		Data:                l.Data,
		Extensions:          l.Extensions,
		AppendedAtUnixNanos: at,
	}
}

func decodeLog(l *raftpb.Log) (*raft.Log, error) {
	if l == nil {
		return nil, invalid("nil log entry")
	}
	if l.GetType() > math.MaxUint8 {
		return nil, invalid("log type %d out of range", l.GetType())
	}
	var at time.Time
	if n := l.GetAppendedAtUnixNanos(); n != 0 {
		at = time.Unix(0, n)
	}
	return &raft.Log{
		Index:      l.GetIndex(),
		Term:       l.GetTerm(),
		Type:       raft.LogType(l.GetType()),
		Data:       orNil(l.GetData()),
		Extensions: orNil(l.GetExtensions()),
		AppendedAt: at,
	}, nil
}

func encodeAppendEntriesRequest(r *raft.AppendEntriesRequest) *raftpb.AppendEntriesRequest {
	var entries []*raftpb.Log
	if len(r.Entries) > 0 {
		entries = make([]*raftpb.Log, len(r.Entries))
		for i, e := range r.Entries {
			entries[i] = encodeLog(e)
		}
	}
	return &raftpb.AppendEntriesRequest{
		Header:            encodeHeader(r.RPCHeader),
		Term:              r.Term,
		Leader:            r.Leader,
		PrevLogEntry:      r.PrevLogEntry,
		PrevLogTerm:       r.PrevLogTerm,
		Entries:           entries,
		LeaderCommitIndex: r.LeaderCommitIndex,
	}
}

func decodeAppendEntriesRequest(r *raftpb.AppendEntriesRequest) (*raft.AppendEntriesRequest, error) {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return nil, err
	}
	var entries []*raft.Log
	if n := len(r.GetEntries()); n > 0 {
		entries = make([]*raft.Log, n)
		for i, e := range r.GetEntries() {
			if entries[i], err = decodeLog(e); err != nil {
				return nil, err
			}
		}
	}
	return &raft.AppendEntriesRequest{
		RPCHeader:         h,
		Term:              r.GetTerm(),
		Leader:            orNil(r.GetLeader()),
		PrevLogEntry:      r.GetPrevLogEntry(),
		PrevLogTerm:       r.GetPrevLogTerm(),
		Entries:           entries,
		LeaderCommitIndex: r.GetLeaderCommitIndex(),
	}, nil
}

func encodeAppendEntriesResponse(r *raft.AppendEntriesResponse) *raftpb.AppendEntriesResponse {
	return &raftpb.AppendEntriesResponse{
		Header:         encodeHeader(r.RPCHeader),
		Term:           r.Term,
		LastLog:        r.LastLog,
		Success:        r.Success,
		NoRetryBackoff: r.NoRetryBackoff,
	}
}

func decodeAppendEntriesResponse(r *raftpb.AppendEntriesResponse, out *raft.AppendEntriesResponse) error {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return err
	}
	*out = raft.AppendEntriesResponse{
		RPCHeader:      h,
		Term:           r.GetTerm(),
		LastLog:        r.GetLastLog(),
		Success:        r.GetSuccess(),
		NoRetryBackoff: r.GetNoRetryBackoff(),
	}
	return nil
}

func encodeRequestVoteRequest(r *raft.RequestVoteRequest) *raftpb.RequestVoteRequest {
	return &raftpb.RequestVoteRequest{
		Header:             encodeHeader(r.RPCHeader),
		Term:               r.Term,
		Candidate:          r.Candidate,
		LastLogIndex:       r.LastLogIndex,
		LastLogTerm:        r.LastLogTerm,
		LeadershipTransfer: r.LeadershipTransfer,
	}
}

func decodeRequestVoteRequest(r *raftpb.RequestVoteRequest) (*raft.RequestVoteRequest, error) {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return nil, err
	}
	return &raft.RequestVoteRequest{
		RPCHeader:          h,
		Term:               r.GetTerm(),
		Candidate:          orNil(r.GetCandidate()),
		LastLogIndex:       r.GetLastLogIndex(),
		LastLogTerm:        r.GetLastLogTerm(),
		LeadershipTransfer: r.GetLeadershipTransfer(),
	}, nil
}

func encodeRequestVoteResponse(r *raft.RequestVoteResponse) *raftpb.RequestVoteResponse {
	return &raftpb.RequestVoteResponse{
		Header:  encodeHeader(r.RPCHeader),
		Term:    r.Term,
		Peers:   r.Peers,
		Granted: r.Granted,
	}
}

func decodeRequestVoteResponse(r *raftpb.RequestVoteResponse, out *raft.RequestVoteResponse) error {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return err
	}
	*out = raft.RequestVoteResponse{
		RPCHeader: h,
		Term:      r.GetTerm(),
		Peers:     orNil(r.GetPeers()),
		Granted:   r.GetGranted(),
	}
	return nil
}

func encodeRequestPreVoteRequest(r *raft.RequestPreVoteRequest) *raftpb.RequestPreVoteRequest {
	return &raftpb.RequestPreVoteRequest{
		Header:       encodeHeader(r.RPCHeader),
		Term:         r.Term,
		LastLogIndex: r.LastLogIndex,
		LastLogTerm:  r.LastLogTerm,
	}
}

func decodeRequestPreVoteRequest(r *raftpb.RequestPreVoteRequest) (*raft.RequestPreVoteRequest, error) {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return nil, err
	}
	return &raft.RequestPreVoteRequest{
		RPCHeader:    h,
		Term:         r.GetTerm(),
		LastLogIndex: r.GetLastLogIndex(),
		LastLogTerm:  r.GetLastLogTerm(),
	}, nil
}

func encodeRequestPreVoteResponse(r *raft.RequestPreVoteResponse) *raftpb.RequestPreVoteResponse {
	return &raftpb.RequestPreVoteResponse{
		Header:  encodeHeader(r.RPCHeader),
		Term:    r.Term,
		Granted: r.Granted,
	}
}

func decodeRequestPreVoteResponse(r *raftpb.RequestPreVoteResponse, out *raft.RequestPreVoteResponse) error {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return err
	}
	*out = raft.RequestPreVoteResponse{
		RPCHeader: h,
		Term:      r.GetTerm(),
		Granted:   r.GetGranted(),
	}
	return nil
}

func encodeInstallSnapshotRequest(r *raft.InstallSnapshotRequest) *raftpb.InstallSnapshotRequest {
	return &raftpb.InstallSnapshotRequest{
		Header:             encodeHeader(r.RPCHeader),
		SnapshotVersion:    int64(r.SnapshotVersion),
		Term:               r.Term,
		Leader:             r.Leader,
		LastLogIndex:       r.LastLogIndex,
		LastLogTerm:        r.LastLogTerm,
		Peers:              r.Peers,
		Configuration:      r.Configuration,
		ConfigurationIndex: r.ConfigurationIndex,
		Size:               r.Size,
	}
}

func decodeInstallSnapshotRequest(r *raftpb.InstallSnapshotRequest) (*raft.InstallSnapshotRequest, error) {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return nil, err
	}
	v, err := toInt(r.GetSnapshotVersion(), "snapshot version")
	if err != nil {
		return nil, err
	}
	if r.GetSize() < 0 {
		return nil, invalid("negative snapshot size %d", r.GetSize())
	}
	return &raft.InstallSnapshotRequest{
		RPCHeader:          h,
		SnapshotVersion:    raft.SnapshotVersion(v),
		Term:               r.GetTerm(),
		Leader:             orNil(r.GetLeader()),
		LastLogIndex:       r.GetLastLogIndex(),
		LastLogTerm:        r.GetLastLogTerm(),
		Peers:              orNil(r.GetPeers()),
		Configuration:      orNil(r.GetConfiguration()),
		ConfigurationIndex: r.GetConfigurationIndex(),
		Size:               r.GetSize(),
	}, nil
}

func encodeInstallSnapshotResponse(r *raft.InstallSnapshotResponse) *raftpb.InstallSnapshotResponse {
	return &raftpb.InstallSnapshotResponse{
		Header:  encodeHeader(r.RPCHeader),
		Term:    r.Term,
		Success: r.Success,
	}
}

func decodeInstallSnapshotResponse(r *raftpb.InstallSnapshotResponse, out *raft.InstallSnapshotResponse) error {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return err
	}
	*out = raft.InstallSnapshotResponse{
		RPCHeader: h,
		Term:      r.GetTerm(),
		Success:   r.GetSuccess(),
	}
	return nil
}

func encodeTimeoutNowRequest(r *raft.TimeoutNowRequest) *raftpb.TimeoutNowRequest {
	return &raftpb.TimeoutNowRequest{Header: encodeHeader(r.RPCHeader)}
}

func decodeTimeoutNowRequest(r *raftpb.TimeoutNowRequest) (*raft.TimeoutNowRequest, error) {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return nil, err
	}
	return &raft.TimeoutNowRequest{RPCHeader: h}, nil
}

func encodeTimeoutNowResponse(r *raft.TimeoutNowResponse) *raftpb.TimeoutNowResponse {
	return &raftpb.TimeoutNowResponse{Header: encodeHeader(r.RPCHeader)}
}

func decodeTimeoutNowResponse(r *raftpb.TimeoutNowResponse, out *raft.TimeoutNowResponse) error {
	h, err := decodeHeader(r.GetHeader())
	if err != nil {
		return err
	}
	*out = raft.TimeoutNowResponse{RPCHeader: h}
	return nil
}

// encodeRequest wraps a raft request for the multiplexed stream. It
// accepts every request kind but InstallSnapshot, which has its own RPC.
func encodeRequest(group uint64, cmd any) (*raftpb.Request, error) {
	req := &raftpb.Request{Group: group}
	switch c := cmd.(type) {
	case *raft.AppendEntriesRequest:
		req.Body = &raftpb.Request_AppendEntries{AppendEntries: encodeAppendEntriesRequest(c)}
	case *raft.RequestVoteRequest:
		req.Body = &raftpb.Request_RequestVote{RequestVote: encodeRequestVoteRequest(c)}
	case *raft.RequestPreVoteRequest:
		req.Body = &raftpb.Request_RequestPreVote{RequestPreVote: encodeRequestPreVoteRequest(c)}
	case *raft.TimeoutNowRequest:
		req.Body = &raftpb.Request_TimeoutNow{TimeoutNow: encodeTimeoutNowRequest(c)}
	default:
		return nil, fmt.Errorf("transport: cannot encode request of type %T", cmd)
	}
	return req, nil
}

// decodeRequest returns the raft request a Request carries: one of
// *raft.AppendEntriesRequest, *raft.RequestVoteRequest,
// *raft.RequestPreVoteRequest or *raft.TimeoutNowRequest.
func decodeRequest(req *raftpb.Request) (any, error) {
	switch b := req.GetBody().(type) {
	case *raftpb.Request_AppendEntries:
		return decodeAppendEntriesRequest(b.AppendEntries)
	case *raftpb.Request_RequestVote:
		return decodeRequestVoteRequest(b.RequestVote)
	case *raftpb.Request_RequestPreVote:
		return decodeRequestPreVoteRequest(b.RequestPreVote)
	case *raftpb.Request_TimeoutNow:
		return decodeTimeoutNowRequest(b.TimeoutNow)
	case nil:
		return nil, invalid("request without a body (unknown kind?)")
	default:
		return nil, invalid("unknown request kind %T", b)
	}
}

// encodeResponse wraps a raft response (or nil) and raft's error (or nil).
func encodeResponse(resp any, rpcErr error) *raftpb.Response {
	out := &raftpb.Response{}
	switch r := resp.(type) {
	case nil:
	case *raft.AppendEntriesResponse:
		out.Body = &raftpb.Response_AppendEntries{AppendEntries: encodeAppendEntriesResponse(r)}
	case *raft.RequestVoteResponse:
		out.Body = &raftpb.Response_RequestVote{RequestVote: encodeRequestVoteResponse(r)}
	case *raft.RequestPreVoteResponse:
		out.Body = &raftpb.Response_RequestPreVote{RequestPreVote: encodeRequestPreVoteResponse(r)}
	case *raft.InstallSnapshotResponse:
		out.Body = &raftpb.Response_InstallSnapshot{InstallSnapshot: encodeInstallSnapshotResponse(r)}
	case *raft.TimeoutNowResponse:
		out.Body = &raftpb.Response_TimeoutNow{TimeoutNow: encodeTimeoutNowResponse(r)}
	default:
		if rpcErr == nil {
			rpcErr = fmt.Errorf("raft answered with a response of type %T", resp)
		}
	}
	if rpcErr != nil {
		out.Code = raftpb.ErrorCode_ERROR_CODE_REMOTE
		out.Error = rpcErr.Error()
	}
	return out
}

// errorResponse is the Response for a transport error on the serving side.
func errorResponse(id uint64, err error) *raftpb.Response {
	return &raftpb.Response{Id: id, Code: errorCode(err), Error: err.Error()}
}

// decodeResponse stores the response body of resp in out (a pointer to
// the raft response struct of the request's kind) and returns the error
// resp carries. A body of another kind is ErrInvalidMessage; a missing
// body is fine only alongside an error.
func decodeResponse(resp *raftpb.Response, out any) error {
	rpcErr := responseError(resp)
	var err error
	switch b := resp.GetBody().(type) {
	case nil:
		if rpcErr == nil {
			return invalid("response %d has neither a body nor an error", resp.GetId())
		}
		return rpcErr
	case *raftpb.Response_AppendEntries:
		o, ok := out.(*raft.AppendEntriesResponse)
		if !ok {
			return invalid("got an AppendEntries response, want %T", out)
		}
		err = decodeAppendEntriesResponse(b.AppendEntries, o)
	case *raftpb.Response_RequestVote:
		o, ok := out.(*raft.RequestVoteResponse)
		if !ok {
			return invalid("got a RequestVote response, want %T", out)
		}
		err = decodeRequestVoteResponse(b.RequestVote, o)
	case *raftpb.Response_RequestPreVote:
		o, ok := out.(*raft.RequestPreVoteResponse)
		if !ok {
			return invalid("got a RequestPreVote response, want %T", out)
		}
		err = decodeRequestPreVoteResponse(b.RequestPreVote, o)
	case *raftpb.Response_InstallSnapshot:
		o, ok := out.(*raft.InstallSnapshotResponse)
		if !ok {
			return invalid("got an InstallSnapshot response, want %T", out)
		}
		err = decodeInstallSnapshotResponse(b.InstallSnapshot, o)
	case *raftpb.Response_TimeoutNow:
		o, ok := out.(*raft.TimeoutNowResponse)
		if !ok {
			return invalid("got a TimeoutNow response, want %T", out)
		}
		err = decodeTimeoutNowResponse(b.TimeoutNow, o)
	default:
		return invalid("unknown response kind %T", b)
	}
	if err != nil {
		return err
	}
	return rpcErr
}

// isHeartbeat reports whether an AppendEntries request is a heartbeat, by
// the same test as raft's NetworkTransport: only the term and the leader
// are set.
func isHeartbeat(a *raft.AppendEntriesRequest) bool {
	leader := a.Addr
	if len(leader) == 0 {
		leader = a.Leader
	}
	return a.Term != 0 && len(leader) != 0 &&
		a.PrevLogEntry == 0 && a.PrevLogTerm == 0 &&
		len(a.Entries) == 0 && a.LeaderCommitIndex == 0
}
