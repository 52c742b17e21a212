package rpc

import "testing"

func TestPowerOfTwoPool(t *testing.T) {
	p := newPowerOfTwoPool(9, 12)
	for _, c := range []struct{ n, cap int }{{0, 512}, {1, 512}, {512, 512}, {513, 1024}, {4096, 4096}, {4097, 4097}} {
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", c.n, len(*b), cap(*b), c.cap)
		}
		p.Put(b)
	}
	// A buffer comes back with its length set, whatever it was put with.
	b := p.Get(1000)
	*b = (*b)[:10]
	p.Put(b)
	if got := p.Get(700); len(*got) != 700 || cap(*got) != 1024 {
		t.Fatalf("reused buffer: len %d cap %d", len(*got), cap(*got))
	}
	// Foreign capacities are dropped, not pooled in a class they do not fill.
	odd := make([]byte, 10, 700)
	p.Put(&odd)
	if got := p.Get(1000); cap(*got) != 1024 {
		t.Fatalf("a buffer of capacity %d served a Get of 1000", cap(*got))
	}
}
