// Package bufpool recycles the payload buffers of the protocol servers
// (NBD, NVMe/TCP, the framed block I/O) and of gRPC by power-of-two size
// class, so that a busy connection
// does not allocate a buffer per request. It imports only the standard
// library.
package bufpool
