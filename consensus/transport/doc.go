// Package transport is Ballast's multiplexed hashicorp/raft transport: the
// raft traffic of every consensus group a node belongs to travels over one
// gRPC stream per ordered pair of nodes, instead of a connection pool per
// group.
//
// It owns the wire protocol of raft RPCs (proto/raftpb), the outbound
// streams, the serving side of the RaftTransport gRPC service, and the
// raft.Transport of each group. It may import only the standard library,
// google.golang.org/grpc, google.golang.org/protobuf, hashicorp/raft and
// proto/raftpb. The gRPC server and the client connections are the
// caller's: Register adds the service to the caller's server, and
// Config.Dial returns connections from the caller's pool, which the
// transport never closes.
//
// # Use
//
//	m := transport.NewManager(nodeID, dial)
//	m.Register(grpcServer)
//	t := m.Transport(groupID, localAddr) // a raft.Transport; pass it to raft.NewRaft
//	...
//	m.Close()
//
// A Transport implements raft.Transport, raft.WithPreVote and
// raft.WithClose (raft closes it on Shutdown, which unregisters the group
// without touching the streams the other groups use).
//
// # Stream protocol
//
// Node A opens RaftTransport.Stream on its connection to node B the first
// time any of A's groups sends B a request; A names itself in the gRPC
// metadata key "ballast-raft-node". The stream carries A's requests to B
// and B's responses to them; B's requests to A travel on B's own stream to
// A. Each gRPC message is one protobuf Request or Response (gRPC frames
// them; a message never exceeds Config.MaxMessageBytes, or it fails alone
// with ErrMessageTooLarge before it is sent).
//
//   - A Request carries a request id (chosen by A: a counter per stream,
//     never 0), the group id, the client's timeout in milliseconds, and one
//     raft request: AppendEntries, RequestVote, RequestPreVote or
//     TimeoutNow (the oneof case is the request's kind).
//   - B answers every request exactly once, in any order, with a Response
//     carrying the same id, an error code and text (empty on success), and
//     raft's response. Responses to different groups, or to requests of
//     one group that raft answered out of order, may overtake each other.
//   - B routes a request by its group id to that group's Transport. A
//     group with no open Transport on B gets ERROR_CODE_UNKNOWN_GROUP at
//     once. Heartbeats (AppendEntries with only the term and leader set,
//     raft's own test) go to the group's heartbeat queue and raft's
//     heartbeat handler; the rest go to the group's request queue and
//     raft's Consumer, one at a time, in arrival order. Both queues are
//     bounded; a full one answers ERROR_CODE_BUSY at once, so one group
//     never stalls the stream for the others. B gives up on a request at
//     90% of its timeout and answers ERROR_CODE_TIMEOUT.
//   - InstallSnapshot uses its own client-streaming call on the same
//     connection: a first SnapshotChunk with the group and the request,
//     then the snapshot bytes in chunks of Config.SnapshotChunkBytes; B
//     hands raft a reader over the chunks and answers once with a
//     Response. Its deadline is SnapshotTimeout plus
//     Size/SnapshotMinBytesPerSecond.
//
// The stream is shared at the byte level too: one large AppendEntries is
// written whole before the messages queued behind it, so
// Config.MaxMessageBytes also bounds how long one group's batch can delay
// another group's heartbeat.
//
// Every RPC is bounded by Config.RPCTimeout, including opening the stream
// (an unreachable peer fails fast: gRPC refuses the stream while the
// connection is in transient failure). When a stream breaks (B stops, the
// connection fails, a send or receive errors, or a request times out with
// nothing at all received on the stream since it was sent), every request
// in flight on it fails at once with ErrStreamBroken, A forgets the stream,
// and the next request of any group opens a new one; raft retries with
// back-off. Re-connecting the gRPC connection itself is the pool's job
// (its back-off decides how soon a restarted peer is reached again).
//
// # Goroutines
//
//   - Per outbound stream (owned by the Manager, counted in its WaitGroup):
//     a reader that matches responses to calls by id, and a writer that
//     drains the bounded send queue. Both end when the stream fails or
//     the Manager closes.
//   - Per inbound stream: gRPC's handler goroutine writes responses from
//     the bounded response queue; a reader goroutine (owned by the
//     Manager) decodes requests and queues them for their groups without
//     blocking on any group. The handler returns when the reader ends, the
//     client goes away or the Manager closes; the reader's Recv then
//     returns.
//   - Per group (owned by its Transport, ended by Transport.Close): one
//     dispatch goroutine for the request queue and one for the heartbeat
//     queue.
//   - Per pipeline (owned by the pipeline, ended by its Close, which raft
//     or Transport.Close calls): a decoder that delivers the futures in
//     request order.
//   - Per InstallSnapshot call on the sending side: a watcher that cancels
//     the call when the Transport or Manager closes; it ends with the call.
//     On the receiving side the snapshot is read by raft's goroutine
//     inside gRPC's handler goroutine's call.
//
// Callers' goroutines (raft's) block in RPCs only up to their deadline.
// Close (Manager or Transport) fails every RPC in flight with ErrClosed.
package transport
