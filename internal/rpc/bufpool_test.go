package rpc

import "testing"

func TestGRPCBuffers(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 4097, 1 << 20} {
		b := bufferPool.Get(n)
		if len(*b) != n {
			t.Errorf("Get(%d): len %d", n, len(*b))
		}
		bufferPool.Put(b)
	}
	// A buffer comes back with its length set, whatever it was put with.
	b := bufferPool.Get(5000)
	*b = (*b)[:10]
	bufferPool.Put(b)
	if got := bufferPool.Get(7000); len(*got) != 7000 || cap(*got) != 8192 {
		t.Fatalf("reused buffer: len %d cap %d", len(*got), cap(*got))
	}
}
