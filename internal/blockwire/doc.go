// Package blockwire owns the framed binary encoding of block I/O between an
// agent and a volume's primary head node: the connection preamble, the
// frames that carry requests and replies (the fields of
// ballastpb.IORequest and IOReply, nothing more), their bounds, and the
// reading and writing of frames on a byte stream. It does not own
// connections, goroutines, admission or what a request means: the head
// node's server (headnode/io_wire.go) and the agent's client
// (attach/client.go) do.
//
// It may import only the standard library.
//
// # Why not gRPC
//
// The same messages over a gRPC stream cost, per request, a protobuf
// marshal and unmarshal, HTTP/2 framing and flow-control bookkeeping, a
// copy through gRPC's buffer pool (which clears large buffers) and
// goroutine hand-offs in gRPC's transport. Here a frame is a fixed header
// and the payload: a reader fills the caller's buffer straight from the
// socket, and a writer hands large payloads to the kernel in place
// (writev) and batches small frames into one write.
//
// # Connection
//
// The client opens a TCP connection and sends the 8-byte preamble
//
//	offset  size  field
//	0       6     magic "BLSTIO"
//	6       2     version, little-endian (4)
//
// The server answers with the preamble of the version it speaks. If that
// is the client's, frames follow in both directions until either side
// closes; otherwise the server closes after its preamble, and the client
// must speak something else (the agent falls back to gRPC). A server that
// does not speak this protocol at all answers with other bytes (a gRPC
// server sends an HTTP/2 SETTINGS frame): ParsePreamble reports
// ErrNotBlockwire. The head node tells this protocol from HTTP/2 on one
// port by the first bytes a client sends.
//
// # Frames, version 4
//
// Every frame is a fixed 80-byte header, then TextLen bytes of text, then
// DataLen bytes of data. All integers are little-endian.
//
//	offset  size  field
//	0       1     kind: 1 request, 2 reply, 3 ping, 4 pong
//	1       1     code: a request's op (1 read, 2 write, 3 flush, 4 trim,
//	              5 write zeroes, 6 block status); a reply's status (0 OK .. 7 fenced,
//	              the numbers of ballastpb.IOStatus); 0 in pings and pongs
//	2       1     flags: a request's 0x01 FUA, 0x02 no hole, 0x04 resend
//	              (a named write sent again, see ballastpb.IORequest;
//	              only with a client and write op); other bits, and any
//	              bit of other kinds, must be 0
//	3       1     reserved, 0
//	4       2     text length: a request's host, a reply's error text
//	6       2     reserved, 0
//	8       4     data length: a write request's data, a read reply's
//	              or a block status reply's (its extents, extents.go)
//	12      4     reserved, 0
//	16      8     id: chosen by the client, echoed by the reply (or pong)
//	24      8     volume id      (requests; 0 in other kinds)
//	32      8     offset         (requests; 0 in other kinds)
//	40      8     length         (requests: of a read, trim, zeroes or
//	              block status;
//	              a write's is its data length; 0 in other kinds)
//	48      8     generation     (requests; 0 in other kinds)
//	56      8     client         (requests: the write's identity, 0 for
//	64      8     write op        none; see ballastpb.IORequest; 0 in
//	72      8     oldest op       other kinds)
//
// Version 3 was the same without op 6, version 2 also without the resend
// flag, version 1 also without the write's identity (a 56-byte header). A
// server speaks one version: an agent of another falls back to gRPC.
//
// Bounds: data at most MaxDataBytes (the head node's largest request), and
// only in a write request or an OK reply; a host at most MaxHostBytes and
// an error text at most MaxErrorBytes, both valid UTF-8, an error text
// only in a reply that is not OK. A ping carries only its id; the server
// answers it with a pong of the same id at once, whatever else is in
// flight, so that the client can tell a live server from a dead one.
// Replies come in any order.
//
// There is no checksum: TCP's covers the transport, and the header's
// reserved bytes and range checks catch a reader that lost its place.
//
// Errors: anything that does not decode exactly so wraps ErrMalformed
// (and leaves the stream unusable: close it); a stream that ends inside a
// frame returns io.ErrUnexpectedEOF, and one that ends between frames
// io.EOF. Nothing panics on any input.
//
// Compatibility: a change to the header, the kinds or the bounds that a
// peer of this version cannot read bumps Version.
//
// # Use
//
//	// client
//	conn.Write(blockwire.AppendPreamble(nil))
//	... read PreambleBytes, blockwire.ParsePreamble
//	s := blockwire.NewSender(conn)
//	s.Send(&blockwire.Frame{Kind: blockwire.KindRequest, ...}, data)
//	r := blockwire.NewReader(conn, 64<<10)
//	for { var f blockwire.Frame; r.Next(&f); buf := ...; r.ReadData(buf[:f.DataLen]) }
package blockwire
