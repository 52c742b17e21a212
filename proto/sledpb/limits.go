package sledpb

// The bounds of a GetShardRanges request, which sleds enforce and head
// nodes split their batches by. Not generated: sled.proto names them.
const (
	// MaxRangesPerRequest bounds the ranges of one request.
	MaxRangesPerRequest = 256
	// MaxRangeBytesPerRequest bounds the bytes one request reads, so its
	// response fits the 40 MiB message limit of internal/rpc with room
	// to spare, as a PutShard's shard does.
	MaxRangeBytesPerRequest = 16 << 20
)
