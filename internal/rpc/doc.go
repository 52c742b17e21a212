// Package rpc holds the gRPC plumbing every role shares: a connection to a
// node over each of its network addresses, with every path health-checked
// and traffic moved off a failed one (Conn, Pool); the server options and
// health service every Ballast server runs; the message-size limits of
// the block I/O path; and what a connection of another protocol to the
// same node needs to behave as the gRPC ones do (the path to take and when
// to leave it, the TCP user timeout); gRPC's buffers come from
// internal/bufpool.
//
// It may import the standard library, google.golang.org/grpc and
// internal/bufpool.
package rpc
