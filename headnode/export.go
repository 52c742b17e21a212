package headnode

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/cockroachdb/pebble"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// ExportReplica writes the first sizeBytes of a volume as the block store
// of the stopped head node in dataDir holds it: its replica, whether the
// node was primary or secondary. It is for operators and tests that must
// check what one copy holds; the node must not be running.
func ExportReplica(dataDir string, volumeID, sizeBytes uint64, w io.Writer) error {
	dir := filepath.Join(dataDir, "blocks")
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open block store %s read-only (is the head node stopped?): %w", dir, err)
	}
	s := &blockStore{db: db, state: map[uint64]*ballastpb.VolumeLogState{}}
	defer s.Close()
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for off := uint64(0); off < sizeBytes; off += chunk {
		n := min(chunk, sizeBytes-off)
		n -= n % blockSize
		if n == 0 {
			break
		}
		lr, err := s.ReadLocal(volumeID, off/blockSize, buf[:n])
		if err != nil {
			return err
		}
		if len(lr.remote) > 0 {
			return fmt.Errorf("export replica: block %d and %d more live on the sleds; this tool reads only the head node's log", off/blockSize+uint64(lr.remote[0].index), len(lr.remote)-1)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return fmt.Errorf("export replica: %w", err)
		}
	}
	return nil
}
