// Package blockcache owns a primary head node's read cache of 4 KiB
// volume blocks: a fixed number of slots in a slab per shard,
// bounded by bytes, split into shards that each run their own S3-FIFO
// eviction, and the fill protocol that keeps reads that race with writes
// from installing stale data.
//
// It imports only the standard library and nothing of the module: the
// head node's read and write paths call it, never the other way round.
// It knows nothing of where a block lives; the caller fetches a missed
// block and hands it back.
//
// # Use
//
//	c := blockcache.New(blockcache.DefaultCapacity(total))
//
//	// read path
//	if c.Get(vol, b, buf) {
//		return buf // hit
//	}
//	f := c.StartFill(vol, b, n) // before looking up where the blocks live
//	... locate and fetch blocks b .. b+n-1, no lock held ...
//	f.Put(b+i, data) // for each block fetched
//	f.Done()
//
//	// write path, once the new data is readable where reads look it up
//	c.Put(vol, b, data) // or c.Invalidate, c.InvalidateRange, c.DropVolume
//
// # Contract
//
//  1. Every entry holds the newest data of its block, provided writers
//     update the cache (Put or an invalidation) only after the new data is
//     readable from where fills fetch it, and readers call StartFill
//     before they look up where the blocks live.
//  2. Fill.Put installs a block only if no Put, Invalidate,
//     InvalidateRange or DropVolume touched that block of that volume
//     since StartFill, and never replaces an entry that is present (which
//     by 1 is already current). So a write between the lookup and the
//     fill wins: its data stays, or the block stays absent.
//  3. A fill covers at most MaxFillBlocks blocks and must end with Done;
//     an active fill costs every write to its volume a check.
//  4. Never more than the capacity (rounded down to whole blocks) is
//     held. A capacity of 0 gives a cache that holds nothing, counts
//     nothing, and whose methods return at once.
//  5. All methods are safe for concurrent use.
//
// # Why S3-FIFO and not LRU
//
// A sequential scan of a volume larger than the cache (a backup, a
// rebuild, a dd, a filesystem check) would push every hot block out of an
// LRU: each scanned block is "most recent" once and never again. S3-FIFO
// (Yang et al., "FIFO queues are all you need for cache eviction", SOSP
// 2023) puts a new block into a small FIFO (10% of a shard's slots); a
// block leaves it for the main FIFO (90%) only if it was hit while there,
// otherwise it is dropped and its key remembered in a ghost FIFO of as
// many keys as the main queue holds blocks, so that a block that comes
// back soon goes straight to main. Scanned blocks are read once, so they
// pass through the small queue and never reach main; blocks that are hit
// stay in main, which is evicted only when the small queue is below its
// share, re-inserting blocks hit since their last pass with their 2-bit
// counter decremented. TestScanResistance shows the hot set keeping its
// hits across scans four times the cache's size, where an LRU keeps none.
//
// # Memory
//
// The block data lives in one []byte slab per shard, allocated at the
// shard's first insert (a node that caches nothing costs nothing; the
// kernel backs a slab lazily); a slot's number is its place in its slab. The per-slot metadata, the key-to-slot maps and the ghost queues
// hold no pointers, so the garbage collector never scans them, and Get,
// Put and eviction allocate nothing (but for a rare rehash of a map as
// keys churn: well under a byte per Put). The bookkeeping costs about 100
// bytes per 4 KiB slot (2.5%). The slab counts as live heap, so the
// collector runs less often in a process that has a big cache.
//
// DefaultCapacity sizes the cache at 1/32 of the machine's memory
// (MemoryTotal), at least 64 MiB and at most 4 GiB: the head node's page
// cache, pebble's block cache and the journal's buffers need the rest,
// and beyond a few GiB the hot set of a primary's volumes is better
// served by the sleds' own caches than by more of the head node's memory.
package blockcache
