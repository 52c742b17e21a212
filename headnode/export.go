package headnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ballast-storage/ballast/headnode/blockstore"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/proto/sledpb"
)

// ShardHeader is what a shard's header says it is: the identity a read
// is checked against, and the epoch the shard was written at.
type ShardHeader struct {
	Volume, Segment uint64
	Index           uint32
	Epoch           uint64
}

// ShardReader reads shards from stopped sleds for ExportReplica; cmd/ballast
// fills it from the sleds' data directories. It is called concurrently.
type ShardReader interface {
	// ReadShard returns bytes [off, off+length) of shard `index` of a
	// segment of a volume as the sled named holds it, verified against
	// the shard's checksums as a running sled verifies a read, and the
	// header of the shard it read them from.
	ReadShard(sled string, volume, segment uint64, index uint32, off, length uint64) ([]byte, ShardHeader, error)
}

// ExportReplica writes the first sizeBytes of a volume as the block store
// of the stopped head node in dataDir holds it: its replica, whether the
// node was primary or secondary. Blocks in its log come from the log;
// blocks its index places in segments come from shards, read and checked
// as a primary's reads are (reconstructed from the others and the parity
// when one is missing or bad), or, with no shards, the export fails at
// the first such block. It is for operators and tests that must check
// what one copy holds; the node must not be running.
func ExportReplica(dataDir string, volumeID, sizeBytes uint64, shards ShardReader, w io.Writer) error {
	dir, jpath := filepath.Join(dataDir, "blocks"), filepath.Join(dataDir, "journal")
	// The store opens as the node's restart would open it: the journal's
	// replay applies to pebble what a crash took from it.
	if _, err := os.Stat(jpath); err != nil {
		return fmt.Errorf("export replica: no journal in %s: %w", dataDir, err)
	}
	s, err := blockstore.Open(dir, blockstore.Options{JournalPath: jpath})
	if err != nil {
		return fmt.Errorf("export replica (is the head node stopped?): %w", err)
	}
	defer s.Close()
	return exportVolume(context.Background(), s, volumeID, sizeBytes, shards, w)
}

// exportVolume writes the first sizeBytes of a volume as s holds it.
func exportVolume(ctx context.Context, s *blockstore.Store, volumeID, sizeBytes uint64, shards ShardReader, w io.Writer) error {
	var remote *remoteIO
	if shards != nil {
		remote = offlineRemote(shards)
	}
	vol := &ballastpb.Volume{Id: volumeID}
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
		if len(lr.Remote) > 0 {
			if remote == nil {
				return fmt.Errorf("export replica: block %d and %d more live on the sleds; this tool reads only the head node's log", off/blockSize+uint64(lr.Remote[0].Index), len(lr.Remote)-1)
			}
			// The read path of a primary, so that every shard is checked
			// and reconstructed exactly as a client's read would be.
			if err := remote.fetch(ctx, vol, buf[:n], lr, func(shardRef) {}); err != nil {
				return fmt.Errorf("export replica: blocks %d to %d: %w", off/blockSize, (off+n)/blockSize-1, err)
			}
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return fmt.Errorf("export replica: %w", err)
		}
	}
	return nil
}

// offlineRemote is a primary's read path over stopped sleds: every sled
// counts as up (a sled whose directory was not given fails its reads, and
// is read around), and nothing is ever written or repaired.
func offlineRemote(shards ShardReader) *remoteIO {
	cfg := StorageConfig{}
	cfg.EnsureDefaults()
	log := slog.New(slog.DiscardHandler)
	store := offlineShards{r: shards}
	r := &remoteIO{
		cfg:    cfg,
		shards: store,
		sled: func(id string) (*ballastpb.Sled, bool) {
			return &ballastpb.Sled{Id: id, State: ballastpb.SledState_SLED_STATE_UP}, true
		},
		stats:  &storageStats{},
		log:    log,
		manual: true,
	}
	r.view = newSledView(func() []*ballastpb.Sled { return nil }, store, log)
	return r
}

// errExportReadOnly: an export asked to change a sled; it never should.
var errExportReadOnly = errors.New("headnode: an export reads the sleds, never changes them")

// offlineShards is the shardStore of an export: reads only.
type offlineShards struct{ r ShardReader }

func (o offlineShards) Get(ctx context.Context, sled string, id shardID, off, length uint64) ([]byte, shardStamp, error) {
	data, h, err := o.r.ReadShard(sled, id.volume, id.segment, id.index, off, length)
	if err != nil {
		return nil, shardStamp{}, fmt.Errorf("sled %s: %s: %w", sled, id, err)
	}
	if length != 0 && uint64(len(data)) != length {
		return nil, shardStamp{}, fmt.Errorf("sled %s returned %d bytes of %s for %d", sled, len(data), id, length)
	}
	return data, shardStamp{id: shardID{volume: h.Volume, segment: h.Segment, index: h.Index}, epoch: h.Epoch}, nil
}

func (offlineShards) Put(context.Context, string, shardID, uint64, []byte) error {
	return errExportReadOnly
}

func (offlineShards) Delete(context.Context, string, shardID, uint64) error {
	return errExportReadOnly
}

func (offlineShards) List(context.Context, string, uint64) ([]shardInfo, error) {
	return nil, errExportReadOnly
}

func (offlineShards) Stat(context.Context, string) (*sledpb.StatResponse, error) {
	return nil, errExportReadOnly
}
