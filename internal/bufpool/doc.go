// Package bufpool recycles the payload buffers of the protocol servers
// (NBD, NVMe/TCP) by power-of-two size class, so that a busy connection
// does not allocate a buffer per request. It imports only the standard
// library.
package bufpool
