package blockstore

import (
	"testing"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// The helpers below are minimal copies of headnode's test helpers, which
// this package's tests cannot import.

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func blockRecord(seq, block uint64, seed byte) *ballastpb.LogRecord {
	return &ballastpb.LogRecord{Seq: seq, Blocks: []*ballastpb.BlockWrite{{Block: block, Data: pattern(blockSize, seed)}}}
}

func openMemStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open("", Options{FS: vfs.NewMem(), CacheBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// checkStoreInvariants fails the test where the store disagrees with
// what it keeps incrementally (CheckInvariants).
func checkStoreInvariants(t *testing.T, s *Store, vol uint64) {
	t.Helper()
	if err := s.CheckInvariants(vol); err != nil {
		t.Fatal(err)
	}
}

// writerTables returns the store's tables of named writes of a volume
// (writers.go), encoded, by client.
func writerTables(t *testing.T, s *Store, vol uint64) map[uint64]string {
	t.Helper()
	out, err := s.WriterTable(vol)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
