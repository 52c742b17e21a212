// Package replwire owns the framed encoding of replication between a
// volume's primary head node and its secondary: the connection preamble,
// the frames that carry the replication messages (ballastpb's
// ReplicateRequest and ReplicateReply, protobuf-encoded, as opaque
// payloads here) and the keepalive, their bounds, and the reading and
// writing of frames on a byte stream. Connections, sessions and what a
// message means belong to the head node (headnode/replication_wire.go).
//
// It may import only the standard library.
//
// # Why not gRPC
//
// A replication session is one long stream of batches each way. Over
// gRPC every batch also crossed HTTP/2 framing and flow control, gRPC's
// buffer pool and its transport's goroutines (a writer that yields the
// processor between frames): at 4 KiB writes, queue depth 1, the gRPC
// transport was the largest single item of the head node's CPU profile.
// Here a message is a 16-byte header and its payload, written with one
// writev and read straight from the socket.
//
// # Connection
//
// The primary opens a TCP connection to the secondary's head node port
// and sends the 8-byte preamble
//
//	offset  size  field
//	0       6     magic "BLSTRP"
//	6       2     version, little-endian (1)
//
// The server answers with the preamble of the version it speaks. If that
// is the client's, frames follow in both directions until either side
// closes; otherwise the server closes after its preamble and the client
// speaks gRPC instead. A server that does not know the protocol closes
// the connection without answering (the head node's port tells it from
// the framed block protocol and from HTTP/2 by these first bytes).
//
// # Frames, version 1
//
// Every frame is a 16-byte header, then its payload. Integers are
// little-endian.
//
//	offset  size  field
//	0       1     kind: 1 message, 2 ping, 3 pong
//	1       3     reserved, 0
//	4       4     payload length: at most MaxPayloadBytes, 0 in pings
//	              and pongs
//	8       8     id: a ping's, echoed by its pong; 0 in messages
//
// The client's messages are ReplicateRequests, the server's
// ReplicateReplies, in the order of the session (a reply per request).
// A ping is answered with a pong at once; the client pings when the
// connection has been quiet, and either side closes a connection from
// which nothing comes for too long.
//
// There is no checksum: TCP's covers the transport, and the reserved
// bytes and bounds catch a reader that lost its place.
//
// Errors: a header that does not decode exactly so wraps ErrMalformed
// (the stream is then unusable: close it); a stream that ends inside a
// frame returns io.ErrUnexpectedEOF, and one that ends between frames
// io.EOF. Nothing panics on any input.
//
// Compatibility: a change a version-1 peer cannot read bumps Version.
package replwire
