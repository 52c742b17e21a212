package rpc

import (
	"google.golang.org/grpc/experimental"

	"github.com/ballast-storage/ballast/internal/bufpool"
)

// grpcBuffers is the buffer pool of every Ballast gRPC server and client:
// the protocol servers' pool (internal/bufpool). gRPC's own pools clear
// each buffer they hand out again, and allocate (zeroed) every buffer
// above their largest size class: at 1 MiB writes that clearing was a
// tenth of the head nodes' CPU (replication and shard messages). gRPC
// writes a buffer in full before it reads any of it, so buffers are handed
// out as they were returned.
type grpcBuffers struct{}

var bufferPool grpcBuffers

// The proto codec takes its buffers from the default pool alone.
func init() { experimental.SetDefaultBufferPool(bufferPool) }

// Get returns a buffer of length n whose content is whatever it held.
func (grpcBuffers) Get(n int) *[]byte {
	if n == 0 {
		b := []byte{}
		return &b
	}
	b := bufpool.Get(n)
	*b = (*b)[:n]
	return b
}

// Put returns a buffer; bufpool drops one not of its size classes.
func (grpcBuffers) Put(b *[]byte) { bufpool.Put(b) }
