// Package journal owns a head node's write journal for block data: one
// preallocated file to which 4 KiB blocks and their callers' metadata are
// appended in checksummed, chained batches with group commit, read back by
// location, replayed after a crash, and reused zone by zone once the caller
// has persisted their contents elsewhere (Release).
//
// It may import the standard library and golang.org/x/sys/unix, and
// internal/ packages of this module (internal/durable for fdatasync); its crashfs
// subpackage only the standard library. It knows nothing of volumes,
// pebble or replication: the metadata of an entry is opaque bytes.
//
// # Use
//
//	j, err := journal.Open(path, journal.Options{SizeBytes: 8 << 30}, func(lsn uint64, e journal.Entry, locs []journal.Location) error {
//		// rebuild the index from e.Meta and locs (copy what is kept)
//	})
//	c, locs, err := j.Append(ctx, []journal.Entry{{Meta: m, Blocks: [][]byte{b0, b1}}})
//	// locs[0][k] is readable at once (j.ReadBlock); acknowledge once
//	err = c.Wait(ctx)
//	...
//	j.Release(lsn)  // batches below lsn are persisted elsewhere
//	j.Close()
//
// Contract:
//
//  1. Commits complete in LSN order. A nil Commit error means the batch and
//     every batch before it are durable.
//  2. The entries of one Append are in one batch: replay returns all or
//     none of them. Several Appends may share a batch (and its Commit).
//  3. Replay returns the batches from the tail up to the first that does
//     not check out; that includes every batch whose Commit succeeded
//     and that is not below the last Release, and may include batches
//     below it (the tail moves a zone at a time) and batches whose Commit
//     never completed (written whole before the crash).
//  4. A write or sync error breaks the journal: that batch's Commit and
//     every later one fail, as do Append and Release from then on. The
//     caller treats the node as failed. There is no retry (see Journal's
//     failLocked).
//  5. Append never fails for lack of space: it waits for Release. Stats
//     reports the space used, so the caller can flush sooner and slow
//     its writers before that.
//  6. Reads: ReadBlock(loc) works from the moment Append returns loc (from
//     memory until the batch is written, then from the file) until the
//     zone is released; every read is checked against loc.CRC.
//
// # On-disk format, version 1
//
// All integers are little-endian. Sizes and offsets are multiples of 4096.
// CRCs are CRC32C (Castagnoli).
//
//	offset                   size          content
//	0                        4096          superblock copy A
//	4096                     4096          superblock copy B
//	8192 + z*ZoneBytes       ZoneBytes     zone z, z = 0 .. zones-1
//
// The file is preallocated (fallocate, else zeros) at creation and never
// changes size. Where fallocate left the blocks unwritten, a zeroer writes
// zeros into them a window ahead of the batches (zeroer.go), so that a
// batch's sync does not also commit the filesystem's metadata.
//
// A superblock (the first 64 bytes of its block; the rest is zero):
//
//	offset  size  field
//	0       8     magic "BLSTJSB1"
//	8       2     format version: 1
//	10      2     copy: 0 for A, 1 for B (must match where it is)
//	12      4     CRC of these 64 bytes with this field as zero
//	16      8     sequence number: the valid copy with the higher one wins
//	24      8     generation: incremented by every Open
//	32      8     ZoneBytes
//	40      4     number of zones (at least 2)
//	44      4     tail chain CRC: the header CRC of the batch before the tail
//	48      8     tail LSN: the first batch replay reads
//	56      8     tail offset: where that batch is (a zone start)
//
// A batch is a header, its data blocks, and the rest of the header:
//
//	[header block: first 4096 bytes of the header][data blocks][rest of the header, padded to 4096]
//
// so that the offset of every data block is known when it is appended,
// before the header's length is. The header:
//
//	offset  size  field
//	0       8     magic "BLSTJNL1"
//	8       2     format version: 1
//	10      2     kind: 1 batch, 2 zone-end marker
//	12      4     header CRC: of the whole header (fixed part and entry
//	              table, HeaderLen bytes) with this field as zero
//	16      8     LSN: batch number, 1 for the first, +1 for each
//	24      8     generation of the Open that wrote it
//	32      8     offset of this header in the file
//	40      4     chain CRC: the header CRC of batch LSN-1 (0 before batch 1)
//	44      4     HeaderLen: bytes of header, 56 to 4 MiB
//	48      4     number of entries
//	52      4     number of data blocks
//	56            entry table, for each entry:
//	                4  metadata length (at most 64 KiB)
//	                4  number of blocks of the entry
//	                   the metadata
//	                4  per block: CRC of its 4096 bytes
//
// The blocks of the batch are those of its entries, in order. A batch
// never crosses a zone's end. Bytes after HeaderLen in its blocks are zero.
//
// A zone-end marker is a header with kind 2, no entries, no blocks and
// HeaderLen 56, whose LSN and chain CRC are those of the batch it points
// to: that batch is at the start of the next zone in ring order, not at the
// marker. The writer puts one where a batch would have gone when the batch
// does not fit in the rest of the zone (if at least 4 KiB is left; a batch
// that ends exactly at the zone's end needs none).
//
// # Zones and the tail
//
// Zones are used in ring order. The head zone receives batches; the zones
// from the tail zone to the head zone are in use; the others are free. A
// batch that does not fit in the rest of the head zone goes to the start
// of the next zone, which must be free (Append waits for it otherwise).
// Release(lsn) frees the zones, from the tail on, whose batches all have
// LSNs below lsn, never the head zone: it writes a superblock naming the
// first batch of the first zone still in use as the new tail, to the older
// copy, syncs it, and only then lets the writer reuse the freed zones. A
// zone that was the head when a Release covered it is freed once the head
// has moved on, by the next Release or by the Append that needs it.
//
// # Crash safety
//
//  1. A batch's Commit completes only after an fdatasync that began after
//     the batch (and its marker, if any) was written. Batches are written
//     in LSN order, so a durable batch has durable predecessors.
//  2. Replay accepts a batch only if its header decodes, its lengths fit
//     in the zone, its header CRC matches, its LSN is the previous one's
//     plus one, its chain CRC is the previous header's CRC, its generation
//     is not below the previous batch's nor above the superblock's, and
//     every block's CRC matches. A torn batch fails one of these; so does
//     a stale batch from an earlier lap of the ring (lower LSN, other
//     chain) or any garbage.
//  3. Replay follows exactly one path: the next batch is right after the
//     last one, or at the next zone's start when the last one ended the
//     zone or a marker (itself checked by LSN, chain and CRC) says so. It
//     never searches, so it cannot skip a lost batch and continue past it.
//  4. A freed zone is overwritten only after the superblock with the new
//     tail is durable. Superblock writes alternate between the copies, so
//     a torn one leaves the other, which names an older tail whose zones
//     have not been reused.
//  5. After a crash, the batches past the last valid one stay on disk until
//     overwritten. The next Open writes a new generation to the superblock
//     before appending, and the chain CRC covers the generation: if the new
//     batch k+1 happens to end where an old batch k+2 begins, that old batch
//     does not chain to the new k+1, and its generation is lower, so it is
//     never taken as the new k+1's successor.
//  6. A sync error is final (syncs run one at a time; after one fails, all
//     fail), because the kernel may have dropped the pages it could not
//     write: the journal stops and the caller fails the node.
//
// # Recovery (Open)
//
//  1. Read both superblock copies; use the valid one with the higher
//     sequence. If neither is valid and both are all zeros, the file is new
//     (or its creation crashed before the first superblock was durable):
//     allocate it and start empty with tail LSN 1 at zone 0, chain CRC 0.
//     If neither is valid and either is not zero, fail with ErrCorrupt.
//     The zone geometry recorded must match the options.
//  2. From the tail, read batches as the rules above say, calling fn for the
//     entries of each batch only after the whole batch checked out.
//  3. Write the superblock with the generation incremented, sync it (and
//     for a new file sync its directory), then start the writer after the
//     last valid batch, in its zone. That sync also makes durable what
//     replay read from the page cache after a crash of the process alone
//     (written, never synced), before the caller acts on it.
//
// # Goroutines
//
// Open starts two, ended by Close: the writer (pwrite of each sealed batch
// in turn) and the syncer (fdatasync, then completing the commits of the
// batches written before it). A writer with nothing more to write while no
// sync runs syncs its batch itself, one hand-off fewer for a lone write
// (writer.go). Append, ReadBlock, Release and Stats run on the caller's
// goroutine; Release's superblock write and sync too.
//
// # I/O
//
// The file is opened with O_DIRECT where the filesystem accepts it (tmpfs
// does not), and every buffer the journal writes from is 4096-aligned.
// Without it the page cache is used and fdatasync makes writes durable all
// the same. The first lap of the ring writes into preallocated, unwritten
// extents, which costs the filesystem a metadata update per extent that
// fdatasync flushes; later laps overwrite in place. ReadBlocks reads the
// runs of blocks it needs from the file together, through Linux native
// AIO (aio_linux.go), one pread at a time where there is none: a flush
// after random writes reads blocks from all over the journal.
package journal
