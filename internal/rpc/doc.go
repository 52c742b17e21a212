// Package rpc holds the gRPC plumbing every role shares: a connection to a
// node over each of its network addresses, with every path health-checked
// and traffic moved off a failed one (Conn, Pool); the server options and
// health service every Ballast server runs; and the message-size limits of
// the block I/O path.
//
// It may import only the standard library and google.golang.org/grpc.
package rpc
