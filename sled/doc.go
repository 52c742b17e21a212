// Package sled owns the sled controller: a sled's devices (one directory
// per mass-storage device), the shard files on them with their checksums,
// the metadata that fences writers (the highest epoch seen per volume,
// kept in pebble), the scrubber, and the gRPC shard API of sled.proto.
//
// # Shards
//
// Each shard is one file, d<N>/shards/<volume hex>/<segment hex>.<index>,
// in the format of format.go: a checksummed header that names the shard
// and the epoch it was written at, the data, and a CRC32C per 4 KiB chunk
// with a checksum over that table. Shards of format version 1 (no epoch)
// are still read, as written at epoch 0. A shard's file is checked when
// it is opened (its header, its size and its chunk table) and kept open
// with its table (files.go), so a range read is one pread and a check of
// every chunk it returns; a shard that fails is moved to d<N>/quarantine
// and reported as corrupt, and its data never leaves the sled. The head
// node that owns the segment rebuilds it.
//
// # Scrubbing
//
// The scrubber checks every shard, pass after pass, as it is on the disk
// (header, table and every chunk), a MiB at a time within a budget of
// bytes per second (Config.ScrubBytesPerSecond, 16 MiB/s by default); a
// piece after which clients read or wrote is paced at the busy rate
// instead (a sixteenth of that by default), so it yields to clients but
// its passes still end. It does not cache the files it opens.
//
// # Crash safety
//
// A shard is written to a file in d<N>/tmp, synced, renamed into place,
// and the directory synced before Put returns; a crash leaves either the
// old shard (or none) or the new one, and any temp file is deleted at the
// next start, which rebuilds the in-memory index from the shard files. A
// volume's new directory is synced into d<N>/shards before a shard in it
// is acknowledged. The file is written from the header, the data and the
// chunk table in place, with one pwritev; the table's checksums give the
// request's CRC32C too, so a put reads its data once. A newer epoch is
// recorded (synced) before the write that carries it is acknowledged, so
// a deposed primary stays fenced across restarts. Once synced, a shard's
// pages are dropped from the page cache: shards are written once and read
// seldom, and kept pages would push out what is read often.
//
// A delete keeps its shard's file, emptied, in d<N>/tmp (a bounded few
// per device) for a later put to write into: on ext4, allocating and
// freeing an inode was most of a put's CPU time. A file a reader still
// holds open is deleted instead. Should a crash keep a reused file under
// the name of the shard it was deleted from, its header names the shard
// written into it, and the next start quarantines it. crash_test.go runs
// puts, replaces and deletes with a power loss at every file operation.
//
// # Fencing
//
// Each volume's writes (puts and deletes) are serialized on the sled: the
// epoch check, the record of a newer epoch and the change of the shard
// file are one step under the volume's lock, so a write that passed the
// check at an older epoch can never land after a write at a newer one.
// Every shard keeps the epoch it was written at in its header; a shard is
// never replaced or deleted by an older epoch, and at start the sled
// fences each volume at no less than the newest epoch among its shards,
// even if its metadata lost that record. A read reports the header's
// identity and epoch, which the head node checks against what it asked
// for.
//
// # Identity and offline reads
//
// A sled records its id in its metadata at first start and refuses to
// start under another id on the same data directory. OpenOffline
// (offline.go) reads a stopped sled's shards from its data directory with
// every check a running sled makes, changing nothing, so tools can check
// what the rack holds while it is down.
//
// # Devices
//
// A device whose I/O fails (other than a full disk, a missing file, a
// checksum, or the process out of file descriptors or memory) is marked
// failed durably and never used again; its shards vanish from the sled,
// which keeps serving from its other devices. A full device is skipped;
// when none has room, Put says so. Free space is measured again at every
// Stat, so a sled whose disks fill with anything reports itself full, and
// takes shards again once space is freed.
//
// It may import the standard library, pebble, grpc, prometheus,
// go-humanize, golang.org/x/sys/unix, internal/clock, internal/durable,
// internal/rpc and proto/sledpb.
package sled
