package rpc

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/experimental"
)

// bufferPool is the buffer pool of every Ballast gRPC server and client.
// gRPC's own pools clear each buffer they hand out again, and allocate
// (zeroed) every buffer above their largest size class: at 1 MiB writes
// that clearing was a tenth of the head nodes' CPU (replication and shard
// messages). gRPC writes a buffer in full before it reads any of it, so
// this pool hands buffers out as they were returned.
var bufferPool = newPowerOfTwoPool(9, 26) // 512 B .. 64 MiB (MaxMessageBytes fits)

// The proto codec takes its buffers from the default pool alone.
func init() { experimental.SetDefaultBufferPool(bufferPool) }

// powerOfTwoPool keeps a sync.Pool per power-of-two capacity.
type powerOfTwoPool struct {
	minShift, maxShift int
	pools              []sync.Pool
}

func newPowerOfTwoPool(minShift, maxShift int) *powerOfTwoPool {
	return &powerOfTwoPool{minShift: minShift, maxShift: maxShift, pools: make([]sync.Pool, maxShift-minShift+1)}
}

// class returns the index of the smallest class holding n bytes, or -1
// when n is beyond the largest.
func (p *powerOfTwoPool) class(n int) int {
	shift := p.minShift
	if n > 1<<p.minShift {
		shift = bits.Len(uint(n - 1))
	}
	if shift > p.maxShift {
		return -1
	}
	return shift - p.minShift
}

// Get returns a buffer of length n whose content is whatever it held.
func (p *powerOfTwoPool) Get(n int) *[]byte {
	c := p.class(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.pools[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+p.minShift))
	return &b
}

// Put returns a buffer; one whose capacity is not a class's is dropped.
func (p *powerOfTwoPool) Put(b *[]byte) {
	c := p.class(cap(*b))
	if c < 0 || cap(*b) != 1<<(c+p.minShift) {
		return
	}
	p.pools[c].Put(b)
}
