// Package ec owns the pure logic of erasure-coded segments: their layout
// (which shard and offset hold a slot), their ids (epoch in the high bits,
// so a deposed primary's ids never collide with a newer one's), their
// Reed-Solomon encoding and the rebuild of a shard range from the others,
// the placement of shards on sleds, a segment's health from the sleds
// that can serve it, and the choice of segments worth compacting.
//
// It does no I/O and keeps no state but a cache of encoders: the head
// node's maintainer and segment writer (package headnode) drive it.
//
// It may import the standard library, klauspost/reedsolomon and
// proto/ballastpb.
package ec
