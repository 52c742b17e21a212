package blockcache

import (
	"math/rand/v2"
	"testing"
)

const (
	benchSlots = 16384 // 64 MiB, 64 shards
	// benchKeys fit in every shard, whatever the hash's spread.
	benchKeys = benchSlots / 2
)

func warmCache(b *testing.B) *Cache {
	c := New(benchSlots * BlockSize)
	data := blockData(1, 0, 0)
	for i := range uint64(benchKeys) {
		c.Put(1, i, data)
	}
	return c
}

// BenchmarkGet: hits.
func BenchmarkGet(b *testing.B) {
	c := warmCache(b)
	buf := make([]byte, BlockSize)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if !c.Get(1, uint64(i*7919)%benchKeys, buf) {
			b.Fatal("miss")
		}
	}
}

// BenchmarkPut: replacing the data of cached blocks.
func BenchmarkPut(b *testing.B) {
	c := warmCache(b)
	data := blockData(1, 0, 1)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Put(1, uint64(i*7919)%benchKeys, data)
	}
}

// BenchmarkPutEvict: new blocks into a full cache, each evicting one.
func BenchmarkPutEvict(b *testing.B) {
	c := warmCache(b)
	data := blockData(1, 0, 1)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	for i := uint64(benchKeys); b.Loop(); i++ {
		c.Put(1, i, data)
	}
}

// BenchmarkParallelGetPut: 90% hits, 10% replacing Puts, from
// GOMAXPROCS goroutines.
func BenchmarkParallelGetPut(b *testing.B) {
	c := warmCache(b)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		buf := make([]byte, BlockSize)
		data := blockData(1, 0, 1)
		for pb.Next() {
			k := rng.Uint64N(benchKeys)
			if rng.IntN(10) == 0 {
				c.Put(1, k, data)
			} else if !c.Get(1, k, buf) {
				b.Error("miss")
				return
			}
		}
	})
}
