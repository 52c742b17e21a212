package sled

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/cockroachdb/pebble"
)

// Offline reads the shards of a stopped sled from its data directory, for
// tools that check what the rack holds without running it. It never
// changes a file: a shard that fails a check is reported, not quarantined,
// and the metadata is opened read-only and closed before OpenOffline
// returns. Its devices are the directories d0, d1, ... under the data
// directory, as `ballast sled` lays them out; devices the sled marked
// failed are skipped, as the sled itself would.
type Offline struct {
	id   string
	devs []*device
}

// ShardStamp is what a shard's header says it is: the identity a reader
// checks against the shard it asked for, and the epoch it was written at.
type ShardStamp struct {
	ID    ShardID
	Epoch uint64
}

// OpenOffline opens a stopped sled's data directory read-only. The sled
// must not be running: its files would change under the reader.
func OpenOffline(dataDir string) (*Offline, error) {
	metaDir := filepath.Join(dataDir, "meta")
	if _, err := os.Stat(metaDir); err != nil {
		return nil, fmt.Errorf("%s is not a sled's data directory: %w", dataDir, err)
	}
	meta, err := pebble.Open(metaDir, &pebble.Options{ReadOnly: true, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		return nil, fmt.Errorf("open sled metadata %s read-only (is the sled stopped?): %w", metaDir, err)
	}
	defer meta.Close()
	o := &Offline{}
	v, closer, err := meta.Get([]byte{metaID})
	switch {
	case err == nil:
		o.id = string(v)
		closer.Close()
	case errors.Is(err, pebble.ErrNotFound):
		// The sled last ran before sleds recorded their id; the caller
		// must name it.
	default:
		return nil, fmt.Errorf("sled data %s: read its id: %w", dataDir, err)
	}
	failed, err := loadFailures(meta, o.id)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return nil, fmt.Errorf("sled data %s: %w", dataDir, err)
	}
	var nums []int
	for _, e := range entries {
		if n, ok := deviceNumber(e.Name()); ok && e.IsDir() {
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	for _, n := range nums {
		d := &device{id: "d" + strconv.Itoa(n), path: filepath.Join(dataDir, "d"+strconv.Itoa(n)), fs: osFS{}}
		if _, ok := failed[d.id]; ok {
			continue
		}
		o.devs = append(o.devs, d)
	}
	return o, nil
}

// deviceNumber parses a device directory's name, d<N>.
func deviceNumber(name string) (int, bool) {
	if len(name) < 2 || name[0] != 'd' {
		return 0, false
	}
	n, err := strconv.Atoi(name[1:])
	if err != nil || n < 0 || "d"+strconv.Itoa(n) != name {
		return 0, false
	}
	return n, true
}

// ID is the sled's id as its metadata records it; "" if the sled last ran
// before sleds recorded their id.
func (o *Offline) ID() string { return o.id }

// Get reads bytes [off, off+length) of a shard (length 0: to its end),
// with every check a running sled makes: the header's checksum and
// identity, the file's size, the chunk table and every chunk the range
// touches. A shard that fails is ErrCorrupt, one that no working device
// holds ErrNotFound.
func (o *Offline) Get(id ShardID, off, length uint64) ([]byte, ShardStamp, error) {
	type found struct {
		d *device
		h header
		e *shardEntry
	}
	var best *found
	var problems []error
	for _, d := range o.devs {
		path := d.shardPath(id)
		fi, err := d.fs.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("device %s: %w", d.id, err))
			continue
		}
		h, err := checkShardFile(d, id, path, fi)
		if err != nil {
			problems = append(problems, fmt.Errorf("device %s: %w", d.id, err))
			continue
		}
		// Two devices hold it (a crash during a move): a sled keeps the
		// one of the newer epoch, else the newer file.
		f := &found{d: d, h: h, e: &shardEntry{epoch: h.epoch, length: h.length, fileBytes: uint64(fi.Size()), modified: modTime(fi)}}
		if best == nil || h.epoch > best.h.epoch || (h.epoch == best.h.epoch && f.e.modified.After(best.e.modified)) {
			best = f
		}
	}
	if best == nil {
		if len(problems) > 0 {
			return nil, ShardStamp{}, fmt.Errorf("sled %s: %s: %w", o.id, id, errors.Join(problems...))
		}
		return nil, ShardStamp{}, fmt.Errorf("%w: sled %s: %s", ErrNotFound, o.id, id)
	}
	e := best.e
	if length == 0 && off <= e.length {
		length = e.length - off
	}
	if off > e.length || length > e.length-off {
		return nil, ShardStamp{}, fmt.Errorf("%w: range [%d, +%d) is past the end of %s (%d bytes)", ErrInvalid, off, length, id, e.length)
	}
	// The same checks a running sled makes when it opens a shard file and
	// reads from it (files.go).
	sh, err := openShardFile(best.d.fs, best.d.shardPath(id), id, e.length)
	if err != nil {
		return nil, ShardStamp{}, fmt.Errorf("sled %s: device %s: %s: %w", o.id, best.d.id, id, err)
	}
	defer sh.f.Close()
	data, err := sh.read(off, length)
	if err != nil {
		return nil, ShardStamp{}, fmt.Errorf("sled %s: device %s: %s: %w", o.id, best.d.id, id, err)
	}
	return data, ShardStamp{ID: sh.h.id, Epoch: sh.h.epoch}, nil
}

// checkShardFile checks a shard file's header and size as a sled does
// when it indexes its devices at start.
func checkShardFile(d *device, id ShardID, path string, fi os.FileInfo) (header, error) {
	// A version 1 file may be shorter than a header now is.
	hb, err := d.fs.ReadAt(path, 0, int(min(headerBytes, fi.Size())))
	if err != nil {
		return header{}, err
	}
	h, err := decodeHeader(hb)
	if err != nil {
		return header{}, err
	}
	if h.id != id {
		return header{}, fmt.Errorf("%w: file of %s holds %s", ErrCorrupt, id, h.id)
	}
	if uint64(fi.Size()) != h.fileBytes() {
		return header{}, fmt.Errorf("%w: %s is %d bytes, want %d", ErrCorrupt, id, fi.Size(), h.fileBytes())
	}
	return h, nil
}
