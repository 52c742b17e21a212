// Package nbd owns the NBD wire protocol and the server's connection loop:
// the agent (package attach) serves volumes to the local hypervisor through
// it, and supplies the block devices behind the exports.
//
// # What it owns
//
//   - protocol.go: a pure codec. Constants, encoding and decoding of the
//     greeting, client flags, option headers and payloads, option replies,
//     request headers, simple replies and structured reply chunks, and the
//     validation of a request against an export. No I/O, no goroutines;
//     every decoder is bounds-checked and returns an error, never panics.
//   - handshake.go: the fixed newstyle negotiation (NOTLS) of one
//     connection, driving the codec over a buffered reader and writer.
//   - conn.go: the transmission phase of one connection: one reader, a
//     bounded set of request workers, and replies batched into one writev
//     by whichever worker finds nobody writing.
//   - server.go: Server, Serve and Close: accepting connections (up to
//     Server.MaxConnections; more are refused during the handshake) and
//     owning every goroutine the package starts.
//
// # What the server promises
//
// Handshake: server flags FIXED_NEWSTYLE|NO_ZEROES; client flags with an
// unknown bit drop the connection. Options: EXPORT_NAME, ABORT, LIST,
// INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT
// (base:allocation, only after structured replies); STARTTLS gets
// ERR_POLICY (no TLS); anything else gets ERR_UNSUP and negotiation goes
// on. INFO and GO always answer INFO_EXPORT and INFO_BLOCK_SIZE (minimum
// 512, preferred 4096, maximum 32 MiB). Option data is bounded
// (Server.MaxOptionBytes), so is the number of options
// (Server.MaxOptions), and the whole negotiation has a deadline
// (Server.HandshakeTimeout).
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES and CAN_MULTI_CONN, plus SEND_DF once structured
// replies are negotiated. CAN_MULTI_CONN is true because a Backend
// promises that every acknowledged write is durable and visible on every
// connection to the same export.
//
// Commands: READ, WRITE (FUA passed on), FLUSH, TRIM, WRITE_ZEROES
// (NO_HOLE passed on), DISC, and BLOCK_STATUS when base:allocation was
// selected (below). Requests on one connection run concurrently
// (Server.MaxRequestsInFlight and Server.MaxBytesInFlight bound them,
// and Server.Shared bounds every connection's together) and are
// answered in any order. When a bound is
// reached the connection stops reading from its socket until a reply
// returns memory: a client that sends faster than the backend drains is
// slowed by TCP, and the server never holds more than the bounds.
// A request the server can answer with an error (out of range, unknown
// command or flag, a READ over 32 MiB) gets the error and the connection
// stays usable. A request whose framing cannot be trusted (bad magic, a
// WRITE longer than 32 MiB) closes that connection, with a log line.
//
// BLOCK_STATUS (base:allocation): if the Backend implements
// blockdev.Allocator, the reply is one chunk whose descriptors follow
// its Allocation: holes HOLE|ZERO (3), the rest 0, adjacent extents of
// one kind merged. A hole is reported only over whole 512-byte blocks
// (a block that is partly data is data), descriptors never go past the
// requested range, and a reply holds at most 512 descriptors (exactly
// one with REQ_ONE): the client asks again for the rest. An Allocation
// error is sent like any backend error; a result that breaks the
// Allocator contract (no extent, an empty one, more than asked) is sent
// as EIO with a message, never as an invalid reply. A Backend without
// Allocator is reported allocated everywhere: one descriptor, flags 0.
//
// Connections: at most Server.MaxConnections at once. One more is
// refused during its handshake: every option but ABORT is answered
// NBD_REP_ERR_POLICY with the reason ("too many NBD connections"),
// EXPORT_NAME (which has no error reply) drops it, and it is counted
// (Server.Stats) and logged. The connections already open are not
// disturbed.
//
// Not implemented: TLS, EXTENDED_HEADERS (answered ERR_UNSUP), CACHE,
// FAST_ZERO, RESIZE, read-only exports. Requests are not required to be
// aligned to the advertised 512-byte minimum (the spec says SHOULD reject):
// a Backend must accept any byte range within the export.
//
// # Concurrency contract for the caller
//
// Exports.Open and Exports.List are called from connection goroutines
// during negotiation, with a context that expires with the handshake.
// A Backend is used by one connection, from up to MaxRequestsInFlight
// goroutines at once, and is closed by that connection once none of its
// calls is running. Its calls (Allocation included, from the same
// request goroutines as reads) get a context that is canceled when the
// connection is torn down; they should return promptly then, because
// Server.Close waits for them.
//
// # Imports
//
// The standard library, attach/blockdev for the device it serves,
// internal/bufpool and internal/inflight.
package nbd
