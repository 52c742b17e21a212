package sled

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/dustin/go-humanize"

	"github.com/ballast-storage/ballast/internal/durable"

	pvfs "github.com/cockroachdb/pebble/vfs"
)

// The classes of error a Store returns; test with errors.Is.
var (
	ErrNotFound   = errors.New("sled: no such shard")
	ErrStaleEpoch = errors.New("sled: stale epoch")
	ErrNoSpace    = errors.New("sled: no device has room")
	ErrInvalid    = errors.New("sled: invalid request")
	ErrClosed     = errors.New("sled: closed")
)

// Keys of the sled's metadata database.
const (
	metaEpoch   = 'E' // 'E' | volume u64 -> highest epoch seen, u64
	metaFailure = 'F' // 'F' | device id -> why it was marked failed
	metaID      = 'I' // 'I' -> the sled's id
)

// pebbleLogger routes pebble's log lines into slog; its routine lines
// (WAL replay at every start) are debug-level for a sled's operator.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any)  { p.l.Debug(fmt.Sprintf(format, args...)) }
func (p pebbleLogger) Errorf(format string, args ...any) { p.l.Error(fmt.Sprintf(format, args...)) }
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

// shardEntry is where a shard lives.
type shardEntry struct {
	dev       int
	epoch     uint64 // it was written at
	length    uint64 // of the data
	fileBytes uint64
	modified  time.Time

	// open is the shard's file, kept open (files.go); lru is its place in
	// Store.files. Both guarded by Store.mu.
	open *openShard
	lru  *list.Element
}

// Store is a sled's shards over its devices, with the metadata that fences
// writers. It is safe for concurrent use.
type Store struct {
	id  string
	log *slog.Logger
	m   *metrics

	meta *pebble.DB

	mu          sync.Mutex
	closed      bool
	devs        []*device
	index       map[ShardID]*shardEntry
	epochs      map[uint64]uint64
	quarantined uint64
	// volLocks fence each volume's writes (puts, deletes) by epoch:
	// writes at the volume's current epoch hold its lock shared and run
	// at once; recording a newer epoch holds it alone, so every write
	// that passed the check at an older epoch has landed before, and none
	// can land after. Reads take no volume lock.
	volLocks map[uint64]*sync.RWMutex
	// shardLocks serialize the writes of one shard (puts, deletes,
	// quarantine), so changing its file and its entry are one step;
	// striped by shard id.
	shardLocks [64]sync.Mutex
	// files lists the entries whose file is open (files.go), most
	// recently read first; there are at most maxOpenFiles.
	files        *list.List
	maxOpenFiles int
	// freeSeq numbers the emptied files kept for reuse (discardFileLocked).
	freeSeq uint64
	// clientIO counts client reads and writes, for the scrubber to see
	// whether clients are busy.
	clientIO atomic.Uint64
}

// storeOptions configures openStore.
type storeOptions struct {
	id            string
	dataDir       string
	devicePaths   []string
	capacityBytes uint64 // per device; 0: the filesystem's free space plus what is stored
	fs            deviceFS
	logger        *slog.Logger
	metrics       *metrics
	maxOpenFiles  int // 0: DefaultOpenShardFiles
	// metaFS, a test knob, holds the metadata (nil: the real filesystem).
	metaFS pvfs.FS
}

// openStore opens (creating if needed) a sled's metadata and devices, and
// indexes the shards on every device that has not failed.
func openStore(o storeOptions) (*Store, error) {
	if o.fs == nil {
		o.fs = osFS{}
	}
	if o.metaFS == nil {
		o.metaFS = pvfs.Default
	}
	if err := durable.MkdirAll(o.metaFS, filepath.Join(o.dataDir, "meta")); err != nil {
		return nil, fmt.Errorf("sled %s: %w", o.id, err)
	}
	meta, err := pebble.Open(filepath.Join(o.dataDir, "meta"), &pebble.Options{
		FS:                 o.metaFS,
		FormatMajorVersion: pebble.FormatVirtualSSTables,
		Logger:             pebbleLogger{o.logger},
	})
	if err != nil {
		return nil, fmt.Errorf("sled %s: open metadata: %w", o.id, err)
	}
	if o.maxOpenFiles <= 0 {
		o.maxOpenFiles = DefaultOpenShardFiles
	}
	s := &Store{
		id: o.id, log: o.logger, m: o.metrics, meta: meta,
		index: map[ShardID]*shardEntry{}, epochs: map[uint64]uint64{}, volLocks: map[uint64]*sync.RWMutex{},
		files: list.New(), maxOpenFiles: o.maxOpenFiles,
	}
	if err := s.loadMeta(); err != nil {
		meta.Close()
		return nil, err
	}
	if err := s.recordID(); err != nil {
		meta.Close()
		return nil, err
	}
	failures, err := s.loadFailures()
	if err != nil {
		meta.Close()
		return nil, err
	}
	for i, p := range o.devicePaths {
		d := &device{id: fmt.Sprintf("d%d", i), path: p, fs: o.fs}
		if why, ok := failures[d.id]; ok {
			d.failed, d.failure = true, why
		} else if err := s.openDevice(d, o.capacityBytes); err != nil {
			s.log.Error("device failed at start", "sled", s.id, "device", d.id, "err", err)
			d.failed, d.failure = true, err.Error()
		}
		s.devs = append(s.devs, d)
	}
	s.updateGauges()
	return s, nil
}

func (s *Store) loadMeta() error {
	it, err := s.meta.NewIter(&pebble.IterOptions{LowerBound: []byte{metaEpoch}, UpperBound: []byte{metaEpoch + 1}})
	if err != nil {
		return fmt.Errorf("sled %s: read epochs: %w", s.id, err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) != 9 || len(it.Value()) != 8 {
			return fmt.Errorf("sled %s: %w: epoch record of %d/%d bytes", s.id, ErrCorrupt, len(it.Key()), len(it.Value()))
		}
		s.epochs[binary.BigEndian.Uint64(it.Key()[1:])] = binary.BigEndian.Uint64(it.Value())
	}
	return it.Error()
}

// recordID records the sled's id in its metadata, so that its data
// directory says whose shards it holds (offline readers rely on it), and
// refuses a data directory that another sled's id recorded: the rack would
// take that sled's shards for this one's.
func (s *Store) recordID() error {
	v, closer, err := s.meta.Get([]byte{metaID})
	switch {
	case err == nil:
		recorded := string(v)
		closer.Close()
		if recorded != s.id {
			return fmt.Errorf("sled %s: its data directory belongs to sled %s", s.id, recorded)
		}
		return nil
	case errors.Is(err, pebble.ErrNotFound):
		if err := s.meta.Set([]byte{metaID}, []byte(s.id), pebble.Sync); err != nil {
			return fmt.Errorf("sled %s: record its id: %w", s.id, err)
		}
		return nil
	default:
		return fmt.Errorf("sled %s: read its id: %w", s.id, err)
	}
}

func (s *Store) loadFailures() (map[string]string, error) { return loadFailures(s.meta, s.id) }

// loadFailures reads which devices were marked failed, and why.
func loadFailures(meta *pebble.DB, sled string) (map[string]string, error) {
	out := map[string]string{}
	it, err := meta.NewIter(&pebble.IterOptions{LowerBound: []byte{metaFailure}, UpperBound: []byte{metaFailure + 1}})
	if err != nil {
		return nil, fmt.Errorf("sled %s: read device failures: %w", sled, err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		out[string(it.Key()[1:])] = string(it.Value())
	}
	return out, it.Error()
}

// openDevice prepares a device's directories, clears what a crash left
// half written, and indexes its shards.
func (s *Store) openDevice(d *device, capacity uint64) error {
	for _, dir := range []string{d.shardDir(), d.tmpDir(), d.quarantineDir()} {
		if err := d.fs.MkdirAll(dir); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	tmps, err := d.fs.ReadDir(d.tmpDir())
	if err != nil {
		return fmt.Errorf("read %s: %w", d.tmpDir(), err)
	}
	for _, e := range tmps {
		d.fs.Remove(filepath.Join(d.tmpDir(), e.Name()))
	}
	vols, err := d.fs.ReadDir(d.shardDir())
	if err != nil {
		return fmt.Errorf("read %s: %w", d.shardDir(), err)
	}
	// The volume directories a previous run made may not be durable yet
	// if it stopped before it synced the shards directory: sync it, then
	// puts need not look for them (ensureVolumeDir).
	if err := d.fs.SyncDir(d.shardDir()); err != nil {
		return fmt.Errorf("sync %s: %w", d.shardDir(), err)
	}
	d.volumeDirs = map[uint64]bool{}
	for _, v := range vols {
		if vol, ok := parseVolumeDir(v.Name()); ok {
			d.volumeDirs[vol] = true
		}
		files, err := d.fs.ReadDir(filepath.Join(d.shardDir(), v.Name()))
		if err != nil {
			return fmt.Errorf("read %s: %w", v.Name(), err)
		}
		for _, f := range files {
			id, ok := parseShardPath(v.Name(), f.Name())
			path := filepath.Join(d.shardDir(), v.Name(), f.Name())
			if !ok {
				s.log.Warn("ignoring unexpected file", "sled", s.id, "device", d.id, "path", path)
				continue
			}
			var h header
			fi, err := d.fs.Stat(path)
			if err == nil {
				h, err = checkShardFile(d, id, path, fi)
			}
			if err != nil {
				if isDeviceFault(err) {
					return err
				}
				s.quarantineFile(d, id, path, err)
				continue
			}
			if old, ok := s.index[id]; ok {
				// Two devices hold it (a crash during a move): keep the one
				// of the newer epoch, else the newer file.
				if h.epoch < old.epoch || (h.epoch == old.epoch && !modTime(fi).After(old.modified)) {
					d.fs.Remove(path)
					continue
				}
				s.dropEntryLocked(id, old, true)
			}
			// A shard's epoch is one the sled has seen, even if its
			// metadata lost it: never fence below it.
			s.epochs[id.Volume] = max(s.epochs[id.Volume], h.epoch)
			s.index[id] = &shardEntry{dev: len(s.devs), epoch: h.epoch, length: h.length, fileBytes: h.fileBytes(), modified: modTime(fi)}
			d.used += h.fileBytes()
			d.shards++
		}
	}
	d.capacity, d.configured = capacity, capacity
	if capacity == 0 {
		free, err := d.fs.FreeBytes(d.path)
		if err != nil {
			return fmt.Errorf("free space of %s: %w", d.path, err)
		}
		d.capacity = free + d.used
	}
	return nil
}

// fullRoomBytes: a sled none of whose working devices has this much room
// reports itself full; it is a shard of the default segment (4 MiB over
// 4 data shards) with its checksums.
const fullRoomBytes = 1<<20 + 64<<10

// RefreshSpace measures again what each working device may hold: the
// filesystem's free space plus what the device holds, no more than its
// configured capacity. A disk filled by anything else, or emptied, is
// seen as such, and a device found full by a write gets room back once
// space is freed.
func (s *Store) RefreshSpace() {
	s.mu.Lock()
	devs := slices.Clone(s.devs)
	s.mu.Unlock()
	for _, d := range devs {
		s.mu.Lock()
		failed := d.failed
		s.mu.Unlock()
		if failed {
			continue
		}
		free, err := d.fs.FreeBytes(d.path)
		if err != nil {
			s.log.Warn("free space of device", "sled", s.id, "device", d.id, "err", err)
			continue
		}
		s.mu.Lock()
		d.capacity = free + d.used
		if d.configured > 0 {
			d.capacity = min(d.capacity, d.configured)
		}
		s.mu.Unlock()
	}
}

// Full says whether no working device has room for a shard of the
// default segment (a sled whose every device failed is not full, but
// failed).
func (s *Store) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	working := false
	for _, d := range s.devs {
		if d.failed {
			continue
		}
		working = true
		if d.capacity > d.used && d.capacity-d.used >= fullRoomBytes {
			return false
		}
	}
	return working
}

// Close closes the metadata database and the open shard files (those
// in-flight reads hold are closed when they finish). In-flight calls may
// fail.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for s.files.Len() > 0 {
		s.closeFileLocked(s.files.Front().Value.(*shardEntry))
	}
	s.mu.Unlock()
	return s.meta.Close()
}

// lockForWrite admits a write of shard id at epoch: it fails if the
// volume has seen a newer epoch, records a newer epoch first (fenceLocked)
// if this is one, and returns holding the volume's fence shared and the
// shard's lock, released by the returned function.
func (s *Store) lockForWrite(id ShardID, epoch uint64) (unlock func(), err error) {
	s.mu.Lock()
	fence := s.volLocks[id.Volume]
	if fence == nil {
		fence = &sync.RWMutex{}
		s.volLocks[id.Volume] = fence
	}
	s.mu.Unlock()
	for {
		fence.RLock()
		s.mu.Lock()
		closed, seen := s.closed, s.epochs[id.Volume]
		s.mu.Unlock()
		switch {
		case closed:
			fence.RUnlock()
			return nil, ErrClosed
		case epoch < seen:
			fence.RUnlock()
			return nil, fmt.Errorf("%w: volume %d: epoch %d is older than %d", ErrStaleEpoch, id.Volume, epoch, seen)
		case epoch == seen:
			shard := s.lockShard(id)
			return func() { shard.Unlock(); fence.RUnlock() }, nil
		}
		// A newer epoch: record it alone, once the writes in flight at
		// the older one have landed, then write under the fence shared.
		fence.RUnlock()
		fence.Lock()
		err := s.fenceLocked(id.Volume, epoch)
		fence.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// lockShard takes the lock of shard id's stripe.
func (s *Store) lockShard(id ShardID) *sync.Mutex {
	h := id.Volume*0x9e3779b97f4a7c15 ^ id.Segment*0xbf58476d1ce4e5b9 ^ uint64(id.Index)*0x94d049bb133111eb
	l := &s.shardLocks[(h^h>>29)%uint64(len(s.shardLocks))]
	l.Lock()
	return l
}

// fenceLocked checks a writer's epoch for a volume and records a newer one
// durably before the write that carries it changes anything. The caller
// holds the volume's fence alone (lockForWrite), so no write at an older
// epoch is in flight, and none can pass the check after it.
func (s *Store) fenceLocked(volume, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	seen := s.epochs[volume]
	if epoch < seen {
		return fmt.Errorf("%w: volume %d: epoch %d is older than %d", ErrStaleEpoch, volume, epoch, seen)
	}
	if epoch == seen {
		return nil
	}
	key := make([]byte, 9)
	key[0] = metaEpoch
	binary.BigEndian.PutUint64(key[1:], volume)
	val := binary.BigEndian.AppendUint64(nil, epoch)
	// Under mu, so Close cannot close the database under the write.
	if err := s.meta.Set(key, val, pebble.Sync); err != nil {
		return fmt.Errorf("sled %s: record epoch: %w", s.id, err)
	}
	s.epochs[volume] = epoch
	return nil
}

// Put stores a shard, replacing any shard with the same id written at the
// same or an older epoch, on the least full device that has room; a device
// that fails the write is marked failed and the next one is tried. The
// epoch check, the epoch's record and the write are one step for the
// volume.
func (s *Store) Put(id ShardID, epoch uint64, data []byte) (string, error) {
	return s.put(id, epoch, data, nil)
}

// putChecked is Put of data that came with its CRC32C (a PutShard
// request): data that does not match it was damaged in transit, and is
// refused (ErrInvalid) before anything is written. The data is read once,
// for its chunk table, which gives its whole checksum too.
func (s *Store) putChecked(id ShardID, epoch uint64, data []byte, crc uint32) (string, error) {
	return s.put(id, epoch, data, &crc)
}

func (s *Store) put(id ShardID, epoch uint64, data []byte, crc *uint32) (string, error) {
	if len(data) > maxShardBytes {
		return "", fmt.Errorf("%w: shard of %d bytes is over the %d maximum", ErrInvalid, len(data), maxShardBytes)
	}
	s.clientIO.Add(1)
	// The checksums before the volume's lock: they need nothing of it.
	trailer, sum := encodeTrailer(data)
	if crc != nil && sum != *crc {
		return "", fmt.Errorf("%w: %s: data checksum %08x does not match %08x: damaged in transit", ErrInvalid, id, sum, *crc)
	}
	hdr := encodeHeader(formatVersion, id, epoch, uint64(len(data)))
	size := uint64(len(hdr) + len(data) + len(trailer))

	unlock, err := s.lockForWrite(id, epoch)
	if err != nil {
		return "", err
	}
	defer unlock()
	s.mu.Lock()
	existing, ok := s.index[id]
	s.mu.Unlock()
	if ok && existing.epoch > epoch {
		// The volume's fence covers this unless the sled lost its
		// metadata; an older writer's shard must never replace a newer one.
		return "", fmt.Errorf("%w: %s was written at epoch %d, after %d", ErrStaleEpoch, id, existing.epoch, epoch)
	}
	var why []string
	for _, di := range s.devicesByFullness() {
		s.mu.Lock()
		d := s.devs[di]
		room := d.capacity > d.used && d.capacity-d.used >= size
		failed, used, capacity := d.failed, d.used, d.capacity
		s.mu.Unlock()
		if failed {
			continue
		}
		if !room {
			why = append(why, fmt.Sprintf("%s full (%s of %s used)", d.id, humanize.IBytes(used), humanize.IBytes(capacity)))
			continue
		}
		err := s.writeFile(d, id, hdr, data, trailer)
		if err == nil {
			s.mu.Lock()
			if old, ok := s.index[id]; ok {
				s.dropEntryLocked(id, old, old.dev != di)
			}
			s.index[id] = &shardEntry{dev: di, epoch: epoch, length: uint64(len(data)), fileBytes: size, modified: time.Now()}
			d.used += size
			d.shards++
			s.mu.Unlock()
			s.m.puts.WithLabelValues(s.id).Inc()
			s.updateGauges()
			return d.id, nil
		}
		if isResourceShortage(err) {
			// Every device would say the same; the writer tries another
			// sled.
			return "", fmt.Errorf("sled %s: put %s on %s: %w", s.id, id, d.id, err)
		}
		if isNoSpace(err) {
			// Full before its capacity (the filesystem is shared, or
			// smaller than configured): it takes nothing more until
			// RefreshSpace finds room on it.
			s.mu.Lock()
			d.capacity = d.used
			s.mu.Unlock()
			why = append(why, fmt.Sprintf("%s: %v", d.id, err))
			continue
		}
		s.markFailed(d, err)
		why = append(why, fmt.Sprintf("%s failed: %v", d.id, err))
	}
	if len(why) == 0 {
		why = []string{"every device has failed"}
	}
	return "", fmt.Errorf("%w: sled %s: no device has room for %s: %s", ErrNoSpace, s.id, humanize.IBytes(size), strings.Join(why, "; "))
}

// writeFile makes a shard's file, bufs one after the other, durable at
// its path on d. The content goes to a file in d's tmp directory (an
// emptied one a delete left for reuse, or a new one) and is synced; the
// file is renamed into place and the directory synced; only then is the
// put acknowledged. A crash before the rename leaves the shard as it was
// (or absent) and a file in tmp, which the next start deletes; a crash
// after it leaves either name in place, each naming a whole, synced file.
// A reused file is written over from its start and cut to length before
// it is synced, and a file of another shard's that a crash left at a shard's
// path (a delete that gave its file up for reuse, then lost its rename)
// names that other shard in its header: the start quarantines it, never
// serves it.
func (s *Store) writeFile(d *device, id ShardID, bufs ...[]byte) error {
	dst := d.shardPath(id)
	if err := s.ensureVolumeDir(d, id.Volume); err != nil {
		return err
	}
	stage, reuse := s.takeFreeFile(d, id, uint64(totalLen(bufs)))
	err := d.fs.WriteFileSync(stage, reuse, bufs...)
	if reuse && errors.Is(err, os.ErrNotExist) {
		// Someone removed the emptied file; make a new one.
		stage, reuse = tmpName(d, id), false
		err = d.fs.WriteFileSync(stage, reuse, bufs...)
	}
	if err != nil {
		d.fs.Remove(stage)
		return err
	}
	if err := d.fs.Rename(stage, dst); err != nil {
		d.fs.Remove(stage)
		return err
	}
	return d.fs.SyncDir(filepath.Dir(dst))
}

func tmpName(d *device, id ShardID) string {
	return filepath.Join(d.tmpDir(), fmt.Sprintf("%016x.%016x.%d.%d", id.Volume, id.Segment, id.Index, time.Now().UnixNano()))
}

// maxFreeFiles and maxFreeBytes bound the deleted shards' files a device
// keeps for reuse.
const (
	maxFreeFiles = 64
	maxFreeBytes = 64 << 20
)

// takeFreeFile returns a file to write a shard of size bytes into before
// it is renamed into place: a deleted shard's file kept for reuse (reuse
// true), one of that size if there is one (so its length changes no
// metadata), or the name of a new one.
func (s *Store) takeFreeFile(d *device, id ShardID, size uint64) (path string, reuse bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(d.free)
	if n == 0 {
		return tmpName(d, id), false
	}
	i := n - 1
	for j := n - 1; j >= 0; j-- {
		if d.free[j].bytes == size {
			i = j
			break
		}
	}
	path = d.free[i].path
	d.free = slices.Delete(d.free, i, i+1)
	return path, true
}

// discardFileLocked deletes a shard's file of size bytes or, if it may,
// keeps it in d's tmp directory for a later put to write over: creating a
// file and deleting one (allocating and freeing its inode and blocks) are
// most of the cost of a put. A file a reader may still hold open is
// deleted: it must never come back under that reader with another
// shard's data. The tmp directory is emptied at every start, so a kept
// file is deleted then if no put took it.
func (s *Store) discardFileLocked(d *device, path string, size uint64, readers bool) {
	var kept uint64
	for _, f := range d.free {
		kept += f.bytes
	}
	if readers || d.failed || len(d.free) >= maxFreeFiles || kept+size > maxFreeBytes {
		d.fs.Remove(path)
		return
	}
	free := filepath.Join(d.tmpDir(), fmt.Sprintf("free.%d", s.freeSeq))
	s.freeSeq++
	if err := d.fs.Rename(path, free); err != nil {
		d.fs.Remove(path)
		return
	}
	d.free = append(d.free, freeFile{path: free, bytes: size})
}

// ensureVolumeDir makes sure d has the directory of a volume's shards,
// durably: a new one's entry in the shards directory is synced before a
// shard in it can be acknowledged. The directories known to exist are
// remembered, so a put costs no mkdir.
func (s *Store) ensureVolumeDir(d *device, volume uint64) error {
	s.mu.Lock()
	known := d.volumeDirs[volume]
	s.mu.Unlock()
	if known {
		return nil
	}
	if err := d.fs.MkdirAll(d.volumeDir(volume)); err != nil {
		return err
	}
	if err := d.fs.SyncDir(d.shardDir()); err != nil {
		return err
	}
	s.mu.Lock()
	if d.volumeDirs == nil {
		d.volumeDirs = map[uint64]bool{}
	}
	d.volumeDirs[volume] = true
	s.mu.Unlock()
	return nil
}

// devicesByFullness returns the indexes of devices, least full first.
func (s *Store) devicesByFullness() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := make([]int, len(s.devs))
	for i := range idx {
		idx[i] = i
	}
	full := func(d *device) float64 {
		if d.capacity == 0 {
			return 1
		}
		return float64(d.used) / float64(d.capacity)
	}
	sort.SliceStable(idx, func(a, b int) bool { return full(s.devs[idx[a]]) < full(s.devs[idx[b]]) })
	return idx
}

// dropEntryLocked forgets a shard's entry, closing its open file; with
// remove, its file goes too.
func (s *Store) dropEntryLocked(id ShardID, e *shardEntry, remove bool) {
	readers := e.open != nil && e.open.refs > 0
	s.closeFileLocked(e)
	d := s.devs[e.dev]
	d.used -= min(d.used, e.fileBytes)
	d.shards -= min(d.shards, 1)
	delete(s.index, id)
	if remove {
		s.discardFileLocked(d, d.shardPath(id), e.fileBytes, readers)
	}
}

// markFailed marks a device failed, durably, and forgets its shards: the
// sled keeps serving from the others, and head nodes rebuild what it held.
func (s *Store) markFailed(d *device, cause error) {
	s.mu.Lock()
	if d.failed {
		s.mu.Unlock()
		return
	}
	d.failed, d.failure = true, cause.Error()
	di := -1
	for i, x := range s.devs {
		if x == d {
			di = i
		}
	}
	for id, e := range s.index {
		if e.dev == di {
			s.closeFileLocked(e)
			delete(s.index, id)
		}
	}
	d.used, d.shards = 0, 0
	closed := s.closed
	s.mu.Unlock()
	s.log.Error("device failed; serving from the others", "sled", s.id, "device", d.id, "path", d.path, "err", cause)
	s.m.deviceFailures.WithLabelValues(s.id).Inc()
	if !closed {
		if err := s.meta.Set(append([]byte{metaFailure}, d.id...), []byte(cause.Error()), pebble.Sync); err != nil {
			s.log.Error("record device failure", "sled", s.id, "device", d.id, "err", err)
		}
	}
	s.updateGauges()
}

// Get reads bytes [off, off+length) of a shard (length 0: to its end),
// checking every chunk it touches. A shard that fails a check is
// quarantined and ErrCorrupt returned: its data is never returned.
func (s *Store) Get(id ShardID, off, length uint64) ([]byte, uint64, error) {
	data, h, err := s.get(id, off, length)
	return data, h.length, err
}

// get is Get, returning the shard's header: the identity and epoch the
// sled reports to the reader, which checks them against what it asked for.
func (s *Store) get(id ShardID, off, length uint64) ([]byte, header, error) {
	s.clientIO.Add(1)
	// A shard that changes while it is read is looked up again; a few
	// changes in a row are a writer's retries, more a bug.
	for range 8 {
		data, h, err := s.readOnce(id, off, length)
		if !errors.Is(err, errShardChanged) {
			if err == nil {
				s.m.gets.WithLabelValues(s.id).Inc()
			}
			return data, h, err
		}
	}
	return nil, header{}, fmt.Errorf("sled %s: %s: %w eight times in a row", s.id, id, errShardChanged)
}

// readOnce reads a range of a shard through its open file, opening it if
// it is not.
func (s *Store) readOnce(id ShardID, off, length uint64) ([]byte, header, error) {
	e, d, o, err := s.lookup(id)
	if err != nil {
		return nil, header{}, err
	}
	if length == 0 && off <= e.length {
		length = e.length - off
	}
	if off > e.length || length > e.length-off {
		if o != nil {
			s.release(o)
		}
		return nil, header{}, fmt.Errorf("%w: range [%d, +%d) is past the end of %s (%d bytes)", ErrInvalid, off, length, id, e.length)
	}
	if o == nil {
		if o, err = s.openFile(id, e, d); err != nil {
			return nil, header{}, s.readFailed(d, id, e, err)
		}
	}
	data, err := o.read(off, length)
	s.release(o)
	if err != nil {
		return nil, header{}, s.readFailed(d, id, e, err)
	}
	return data, o.h, nil
}

// readFailed classifies a failed read of entry e: corruption quarantines
// the shard, a device fault fails the device; either way the shard is
// gone from this sled. If e is no longer the shard's entry, the failure
// may be the change's doing (a file renamed over the one being opened):
// errShardChanged, and the reader looks again.
func (s *Store) readFailed(d *device, id ShardID, e *shardEntry, err error) error {
	switch {
	case errors.Is(err, errShardChanged), errors.Is(err, ErrClosed):
		return err
	case errors.Is(err, ErrCorrupt):
		if !s.quarantine(d, id, e, err) {
			return errShardChanged
		}
		return fmt.Errorf("sled %s: %s: %w", s.id, id, err)
	case errors.Is(err, os.ErrNotExist):
		s.mu.Lock()
		current := s.index[id] == e
		if current {
			s.dropEntryLocked(id, e, false)
		}
		s.mu.Unlock()
		if !current {
			return errShardChanged
		}
		s.updateGauges()
		return fmt.Errorf("%w: %s (its file vanished)", ErrNotFound, id)
	case isDeviceFault(err):
		s.markFailed(d, err)
		return fmt.Errorf("%w: %s: device %s failed: %v", ErrNotFound, id, d.id, err)
	}
	return err
}

// quarantine moves a corrupt shard's file aside and forgets the shard, if
// e is still its entry: under the shard's lock, where no put or delete
// is between changing the file and changing the entry, so the file at
// the shard's path is e's. It says whether it did.
func (s *Store) quarantine(d *device, id ShardID, e *shardEntry, cause error) bool {
	defer s.lockShard(id).Unlock()
	s.mu.Lock()
	if s.index[id] != e {
		s.mu.Unlock()
		return false
	}
	s.dropEntryLocked(id, e, false)
	s.mu.Unlock()
	s.quarantineFile(d, id, d.shardPath(id), cause)
	return true
}

func (s *Store) quarantineFile(d *device, id ShardID, path string, cause error) {
	dst := filepath.Join(d.quarantineDir(), fmt.Sprintf("%016x.%016x.%d.%d", id.Volume, id.Segment, id.Index, time.Now().UnixNano()))
	if err := d.fs.Rename(path, dst); err != nil {
		d.fs.Remove(path)
	}
	s.mu.Lock()
	s.quarantined++
	s.mu.Unlock()
	s.m.corrupt.WithLabelValues(s.id).Inc()
	s.log.Error("shard failed its checksum; quarantined", "sled", s.id, "device", d.id, "shard", id.String(), "err", cause)
	s.updateGauges()
}

// Delete removes a shard; the writer's epoch is fenced as for Put, in one
// step with the removal.
func (s *Store) Delete(id ShardID, epoch uint64) error {
	s.clientIO.Add(1)
	unlock, err := s.lockForWrite(id, epoch)
	if err != nil {
		return err
	}
	defer unlock()
	s.mu.Lock()
	e, ok := s.index[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if e.epoch > epoch {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s was written at epoch %d, after %d", ErrStaleEpoch, id, e.epoch, epoch)
	}
	s.dropEntryLocked(id, e, true)
	s.mu.Unlock()
	s.updateGauges()
	return nil
}

// ShardInfo is a shard as List reports it.
type ShardInfo struct {
	ID       ShardID
	Length   uint64
	Device   string
	Modified time.Time
}

// List returns the shards of one volume, or of all with all set, sorted.
func (s *Store) List(volume uint64, all bool) []ShardInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ShardInfo
	for id, e := range s.index {
		if all || id.Volume == volume {
			out = append(out, ShardInfo{ID: id, Length: e.length, Device: s.devs[e.dev].id, Modified: e.modified})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].ID, out[j].ID
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Segment != b.Segment {
			return a.Segment < b.Segment
		}
		return a.Index < b.Index
	})
	return out
}

// DeviceInfo is a device as Stat reports it.
type DeviceInfo struct {
	ID, Path      string
	CapacityBytes uint64
	UsedBytes     uint64
	Shards        uint64
	Failed        bool
	Failure       string
}

// Devices reports every device.
func (s *Store) Devices() []DeviceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DeviceInfo, len(s.devs))
	for i, d := range s.devs {
		out[i] = DeviceInfo{ID: d.id, Path: d.path, CapacityBytes: d.capacity, UsedBytes: d.used, Shards: d.shards, Failed: d.failed, Failure: d.failure}
	}
	return out
}

// Quarantined counts shards found corrupt since the sled started.
func (s *Store) Quarantined() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quarantined
}

func (s *Store) updateGauges() {
	s.mu.Lock()
	var shards, used uint64
	failed := 0
	for _, d := range s.devs {
		shards += d.shards
		used += d.used
		if d.failed {
			failed++
		}
	}
	s.mu.Unlock()
	s.m.shards.WithLabelValues(s.id).Set(float64(shards))
	s.m.usedBytes.WithLabelValues(s.id).Set(float64(used))
	s.m.failedDevices.WithLabelValues(s.id).Set(float64(failed))
}
