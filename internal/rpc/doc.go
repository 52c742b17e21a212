// Package rpc holds the gRPC plumbing every role shares: dialing a node by
// all of its network addresses, and the message-size limits of the block
// I/O path.
//
// It may import only the standard library and google.golang.org/grpc.
package rpc
