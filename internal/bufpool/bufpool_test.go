package bufpool

import "testing"

func TestGetSizesAndRecycles(t *testing.T) {
	for _, c := range []struct{ n, want int }{{1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}, {64 << 20, 64 << 20}, {64<<20 + 1, 64<<20 + 1}} {
		p := Get(c.n)
		if len(*p) != c.want || cap(*p) != c.want {
			t.Errorf("Get(%d): len %d cap %d, want %d", c.n, len(*p), cap(*p), c.want)
		}
		*p = (*p)[:1]
		Put(p)
	}
	Put(nil)
	Put(&[]byte{}) // of no size class: ignored
	odd := make([]byte, 5000)
	Put(&odd) // not a size class: dropped, not handed out as 8 KiB
	if p := Get(8192); cap(*p) != 8192 {
		t.Errorf("Get(8192) after Put of a 5000-byte buffer: cap %d", cap(*p))
	}
}
