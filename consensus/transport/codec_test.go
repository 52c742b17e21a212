package transport

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/raftpb"
)

func testHeader() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("node-1"), Addr: []byte("127.0.1.1:7400,127.0.2.1:7400")}
}

// wire sends a message through its binary encoding, as the network does.
func wire[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	out := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	return out
}

func checkEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s round trip:\n got  %#v\n want %#v", what, got, want)
	}
}

func TestCodecRequestsRoundTrip(t *testing.T) {
	now := time.Now().Round(0) // no monotonic reading: it does not travel
	requests := []any{
		&raft.AppendEntriesRequest{
			RPCHeader:         testHeader(),
			Term:              7,
			Leader:            []byte("127.0.1.1:7400"),
			PrevLogEntry:      41,
			PrevLogTerm:       6,
			LeaderCommitIndex: 40,
			Entries: []*raft.Log{
				{Index: 42, Term: 7, Type: raft.LogCommand, Data: []byte("set x=1"), Extensions: []byte{1, 2, 3}, AppendedAt: now},
				{Index: 43, Term: 7, Type: raft.LogNoop},
				{Index: 44, Term: 7, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{Servers: []raft.Server{
					{Suffrage: raft.Voter, ID: "a", Address: "127.0.1.1:1,127.0.2.1:1"},
					{Suffrage: raft.Nonvoter, ID: "b", Address: "127.0.1.2:1"},
				}}), AppendedAt: time.Unix(0, 1)},
				{Index: 45, Term: 7, Type: raft.LogBarrier},
				{Index: 46, Term: 7, Type: raft.LogType(200)},
			},
		},
		// A heartbeat, as raft sends it.
		&raft.AppendEntriesRequest{RPCHeader: testHeader(), Term: 9, Leader: []byte("127.0.1.1:7400")},
		&raft.AppendEntriesRequest{},
		&raft.RequestVoteRequest{RPCHeader: testHeader(), Term: 3, Candidate: []byte("c"), LastLogIndex: 10, LastLogTerm: 2, LeadershipTransfer: true},
		&raft.RequestVoteRequest{Term: 1},
		&raft.RequestPreVoteRequest{RPCHeader: testHeader(), Term: 4, LastLogIndex: 99, LastLogTerm: 3},
		&raft.TimeoutNowRequest{RPCHeader: testHeader()},
		&raft.TimeoutNowRequest{},
	}
	for _, want := range requests {
		req, err := encodeRequest(5, want)
		if err != nil {
			t.Fatalf("encode %T: %v", want, err)
		}
		req.Id = 77
		got := wire(t, req)
		if got.GetGroup() != 5 || got.GetId() != 77 {
			t.Errorf("%T: group %d id %d, want 5 and 77", want, got.GetGroup(), got.GetId())
		}
		cmd, err := decodeRequest(got)
		if err != nil {
			t.Fatalf("decode %T: %v", want, err)
		}
		checkEqual(t, reflect.TypeOf(want).String(), cmd, want)
	}
}

func TestCodecInstallSnapshotRequestRoundTrip(t *testing.T) {
	conf := raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "a", Address: "127.0.1.1:1,127.0.2.1:1"},
		{Suffrage: raft.Voter, ID: "b", Address: "127.0.1.2:1,127.0.2.2:1"},
		{Suffrage: raft.Staging, ID: "c", Address: "127.0.1.3:1,127.0.2.3:1"},
	}}
	for _, want := range []*raft.InstallSnapshotRequest{
		{
			RPCHeader:          testHeader(),
			SnapshotVersion:    raft.SnapshotVersionMax,
			Term:               12,
			Leader:             []byte("127.0.1.1:1"),
			LastLogIndex:       1000,
			LastLogTerm:        11,
			Peers:              []byte("legacy"),
			Configuration:      raft.EncodeConfiguration(conf),
			ConfigurationIndex: 900,
			Size:               1 << 40,
		},
		{},
	} {
		got, err := decodeInstallSnapshotRequest(wire(t, encodeInstallSnapshotRequest(want)))
		if err != nil {
			t.Fatal(err)
		}
		checkEqual(t, "InstallSnapshotRequest", got, want)
		if want.Configuration != nil {
			checkEqual(t, "configuration", raft.DecodeConfiguration(got.Configuration), conf)
		}
	}
}

func TestCodecResponsesRoundTrip(t *testing.T) {
	cases := []struct {
		resp any
		out  func() any
	}{
		{&raft.AppendEntriesResponse{RPCHeader: testHeader(), Term: 3, LastLog: 99, Success: true, NoRetryBackoff: true}, func() any { return new(raft.AppendEntriesResponse) }},
		{&raft.AppendEntriesResponse{}, func() any { return new(raft.AppendEntriesResponse) }},
		{&raft.RequestVoteResponse{RPCHeader: testHeader(), Term: 4, Peers: []byte("p"), Granted: true}, func() any { return new(raft.RequestVoteResponse) }},
		{&raft.RequestPreVoteResponse{RPCHeader: testHeader(), Term: 5, Granted: true}, func() any { return new(raft.RequestPreVoteResponse) }},
		{&raft.InstallSnapshotResponse{RPCHeader: testHeader(), Term: 6, Success: true}, func() any { return new(raft.InstallSnapshotResponse) }},
		{&raft.TimeoutNowResponse{RPCHeader: testHeader()}, func() any { return new(raft.TimeoutNowResponse) }},
	}
	for _, c := range cases {
		out := c.out()
		if err := decodeResponse(wire(t, encodeResponse(c.resp, nil)), out); err != nil {
			t.Fatalf("%T: %v", c.resp, err)
		}
		checkEqual(t, reflect.TypeOf(c.resp).String(), out, c.resp)
	}
}

func TestCodecErrors(t *testing.T) {
	// raft's error travels with its response.
	var out raft.AppendEntriesResponse
	err := decodeResponse(wire(t, encodeResponse(&raft.AppendEntriesResponse{Term: 8}, errors.New("disk on fire"))), &out)
	if !errors.Is(err, ErrRemote) || out.Term != 8 {
		t.Errorf("got %v, term %d; want ErrRemote and term 8", err, out.Term)
	}
	// Transport errors keep their class across the wire.
	for _, class := range []error{ErrUnknownGroup, ErrBusy, ErrTimeout, ErrInvalidMessage} {
		err := decodeResponse(wire(t, errorResponse(1, class)), &out)
		if !errors.Is(err, class) {
			t.Errorf("error response for %v decoded as %v", class, err)
		}
	}
	if err := decodeResponse(wire(t, errorResponse(1, ErrClosed)), &out); !errors.Is(err, ErrUnavailable) {
		t.Errorf("closed peer decoded as %v, want ErrUnavailable", err)
	}
	// A response of the wrong kind, or with neither body nor error.
	if err := decodeResponse(encodeResponse(&raft.RequestVoteResponse{}, nil), &out); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("wrong kind: %v", err)
	}
	if err := decodeResponse(&raftpb.Response{Id: 3}, &out); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("empty response: %v", err)
	}
	// Requests raft could not have sent.
	bad := []*raftpb.Request{
		{Id: 1},
		{Id: 1, Body: &raftpb.Request_AppendEntries{AppendEntries: &raftpb.AppendEntriesRequest{
			Entries: []*raftpb.Log{{Type: 256}},
		}}},
		{Id: 1, Body: &raftpb.Request_AppendEntries{AppendEntries: &raftpb.AppendEntriesRequest{
			Entries: []*raftpb.Log{nil},
		}}},
	}
	for _, req := range bad {
		if _, err := decodeRequest(req); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("decodeRequest(%v) = %v, want ErrInvalidMessage", req, err)
		}
	}
	if _, err := decodeInstallSnapshotRequest(&raftpb.InstallSnapshotRequest{Size: -1}); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("negative size: %v", err)
	}
	if _, err := encodeRequest(1, &raft.InstallSnapshotRequest{}); err == nil {
		t.Error("InstallSnapshot encoded for the multiplexed stream")
	}
}

func TestIsHeartbeat(t *testing.T) {
	hb := &raft.AppendEntriesRequest{RPCHeader: testHeader(), Term: 2, Leader: []byte("x")}
	if !isHeartbeat(hb) {
		t.Error("heartbeat not recognised")
	}
	for _, a := range []*raft.AppendEntriesRequest{
		{Term: 2},
		{RPCHeader: testHeader(), Term: 2, LeaderCommitIndex: 1},
		{RPCHeader: testHeader(), Term: 2, PrevLogEntry: 1},
		{RPCHeader: testHeader(), Term: 2, Entries: []*raft.Log{{}}},
	} {
		if isHeartbeat(a) {
			t.Errorf("%+v taken for a heartbeat", a)
		}
	}
}

// FuzzDecodeRequest checks that no byte string from the network makes
// the decoder panic.
func FuzzDecodeRequest(f *testing.F) {
	for _, cmd := range []any{
		&raft.AppendEntriesRequest{RPCHeader: testHeader(), Term: 1, Entries: []*raft.Log{{Index: 1, Data: []byte("x")}}},
		&raft.RequestVoteRequest{Term: 1},
		&raft.TimeoutNowRequest{},
	} {
		req, _ := encodeRequest(1, cmd)
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req raftpb.Request
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		_, _ = decodeRequest(&req)
		var out raft.AppendEntriesResponse
		var resp raftpb.Response
		if proto.Unmarshal(b, &resp) == nil {
			_ = decodeResponse(&resp, &out)
		}
	})
}
