// Package sledwire owns the framed encoding of shard I/O between head
// nodes and sleds: the connection preamble, the frames that carry a
// request or its reply (a small protobuf-encoded part, opaque here, and the
// shard bytes as they are), the keepalive, their bounds, and the reading
// and writing of frames on a byte stream. Connections, what an operation
// means and its errors belong to the sled (sled/wire.go) and the head node
// (headnode/sledwire.go).
//
// It may import only the standard library.
//
// # Why not gRPC
//
// A segment's shards are the largest messages in the rack (up to a MiB
// each at the default segment size). Over gRPC each crossed protobuf
// encoding (a copy of the data), HTTP/2 frames of 16 KiB and flow control,
// and the transport's goroutines on both ends: writing 1 MiB writes, a
// shard put took 7.7 ms at the head node where the sled spent 1.1 ms on
// it. Here a request is a 24-byte header, its protobuf part and its data,
// written with one writev and read straight into the buffer the sled
// writes from. gRPC keeps every other sled call (deletes, lists, stats,
// the fences) and serves a head node or sled of a build without this
// protocol.
//
// # Connection
//
// The head node opens a TCP connection to the sled's port and sends the
// 8-byte preamble
//
//	offset  size  field
//	0       6     magic "BLSTSW"
//	6       2     version, little-endian (1)
//
// The sled answers with the preamble of the version it speaks. If that is
// the client's, frames follow in both directions until either side
// closes; otherwise the sled closes after its preamble and the client
// uses gRPC. A sled that does not know the protocol closes the connection
// without answering (its port tells this protocol from HTTP/2 by these
// first bytes).
//
// # Frames, version 1
//
// Every frame is a 24-byte header, then its meta part, then its data.
// Integers are little-endian.
//
//	offset  size  field
//	0       1     kind: 1 request, 2 reply, 3 ping, 4 pong
//	1       1     op: the operation of a request and of its reply
//	              (1 put shard, 2 get shard ranges); 0 in pings and
//	              pongs
//	2       2     status of a reply: 0 ok, else a gRPC status code, and
//	              the meta part is the error's message; 0 in requests
//	4       4     meta length: at most MaxMetaBytes
//	8       4     data length: at most MaxDataBytes
//	12      4     reserved, 0
//	16      8     id: chosen by the client for a request, echoed by its
//	              reply; a ping's, echoed by its pong
//
// Pings and pongs have no meta and no data. Requests may be answered in
// any order; the client keeps each id unique among its requests in
// flight.
//
// Operation 1, put shard: the request's meta is a sledpb.PutShardRequest
// without its data field, and its data are the shard's bytes; the reply's
// meta is a sledpb.PutShardResponse.
//
// Operation 2, get shard ranges: the request's meta is a
// sledpb.GetShardRangesRequest (its bounds are sled.proto's), with no data;
// the reply's meta is a sledpb.GetShardRangesResponse whose results carry
// no data, and its data are the bytes of the results that succeeded, one
// after the other in the order of the ranges, each its range's length. A
// request the sled refuses whole has a status instead.
//
// An op the sled does not serve is
// answered with status 12 (unimplemented), so a client may add ops and
// fall back to gRPC for a sled that predates them.
//
// There is no checksum in the frame: TCP's covers the transport, the put
// carries the CRC32C of its data (checked by the sled before it writes),
// and the reserved bytes and bounds catch a reader that lost its place.
//
// Errors: a header that does not decode exactly so wraps ErrMalformed
// (the stream is then unusable: close it); a stream that ends inside a
// frame returns io.ErrUnexpectedEOF, and one that ends between frames
// io.EOF. Nothing panics on any input.
//
// Compatibility: a change a version-1 peer cannot read bumps Version.
package sledwire
