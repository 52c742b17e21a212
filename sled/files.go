package sled

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Open shard files.
//
// A sled keeps the files of the shards it read last open, each with its
// header and chunk table read and checked once, when it was opened: a
// range read is then one pread of the chunks the range touches and a check
// of those chunks only, with no open, close or table read per request.
//
// An open file belongs to the index entry of the shard it was opened for
// (shardEntry.open). Every change of a shard (a put that replaces it, a
// delete, a quarantine, its device failing) makes a new entry or drops the
// old one under Store.mu, and takes the old entry's file out of the cache
// then; the file is closed at once, or by the last reader still using it.
// So a reader that finds a shard after a change gets the new file or
// nothing, never the old one; a reader that found it before may finish on
// the old file, which is a read concurrent with the change.
//
// A file is opened without Store.mu held; it is installed only if its
// entry is still the shard's entry once it is checked (else the reader
// looks the shard up again), so a file that replaced the shard while it
// was being opened is never cached under the entry of the one it
// replaced.
//
// The cache holds at most storeOptions.maxOpenFiles files (each with its
// table: 4 bytes per 4 KiB of shard); the least recently read goes first.

// DefaultOpenShardFiles bounds the shard files a sled keeps open.
const DefaultOpenShardFiles = 1024

// openShard is an open shard file with its checked header and chunk table.
type openShard struct {
	f     readFile
	h     header
	table []byte // checked against its crc when the file was opened

	// Guarded by Store.mu.
	refs    int  // readers using f
	evicted bool // out of the cache: the last reader closes f
}

// errShardChanged: the shard was replaced, deleted or quarantined while a
// reader opened or read it; the reader looks it up again.
var errShardChanged = errors.New("sled: shard changed while being read")

// openShardFile opens a shard's file and checks it (loadShard).
func openShardFile(fs deviceFS, path string, id ShardID, length uint64) (*openShard, error) {
	f, err := fs.Open(path)
	if err != nil {
		return nil, err
	}
	o, err := loadShard(f, id, length)
	if err != nil {
		f.Close()
		return nil, err
	}
	return o, nil
}

// loadShard checks an open shard file as a read needs it: its header (its
// checksum, that it names the shard id with length bytes of data), that
// the file is exactly the size the header gives, and its chunk table
// against the table's crc. The data is checked chunk by chunk as it is
// read.
func loadShard(f readFile, id ShardID, length uint64) (*openShard, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := uint64(fi.Size())
	// A version 1 file may be shorter than a header now is.
	hb := make([]byte, min(headerBytes, size))
	if err := readFull(f, hb, 0); err != nil {
		return nil, err
	}
	h, err := decodeHeader(hb)
	if err != nil {
		return nil, err
	}
	if h.id != id || h.length != length {
		return nil, fmt.Errorf("%w: file of %s holds %s of %d bytes", ErrCorrupt, id, h.id, h.length)
	}
	if size != h.fileBytes() {
		return nil, fmt.Errorf("%w: %s is %d bytes, want %d", ErrCorrupt, id, size, h.fileBytes())
	}
	tb := make([]byte, chunksFor(h.length)*crcBytes+crcBytes)
	if err := readFull(f, tb, int64(h.bytes()+h.length)); err != nil {
		return nil, err
	}
	table, err := checkTable(tb, h.length)
	if err != nil {
		return nil, err
	}
	return &openShard{f: f, h: h, table: table}, nil
}

// read returns bytes [off, off+length) of the shard, which the caller has
// checked are within it: one pread of the chunks the range touches (the
// range itself when it is chunk-aligned), each checked against the table.
func (o *openShard) read(off, length uint64) ([]byte, error) {
	if length == 0 {
		return []byte{}, nil
	}
	first := off / chunkBytes
	end := min((off+length+chunkBytes-1)/chunkBytes*chunkBytes, o.h.length)
	buf := make([]byte, end-first*chunkBytes)
	if err := readFull(o.f, buf, int64(o.h.bytes()+first*chunkBytes)); err != nil {
		return nil, err
	}
	if err := checkChunks(buf, first, o.table); err != nil {
		return nil, err
	}
	start := off - first*chunkBytes
	return buf[start : start+length : start+length], nil
}

// readFull reads len(buf) bytes at off; a file that ends first is corrupt
// (the checks that opened it said it was long enough).
func readFull(f io.ReaderAt, buf []byte, off int64) error {
	n, err := f.ReadAt(buf, off)
	if n == len(buf) {
		return nil // io.ReaderAt may say io.EOF with the last byte
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: the file ends before byte %d", ErrCorrupt, off+int64(len(buf)))
	}
	return err
}

// lookup returns a shard's entry and device and, if its file is open, the
// file with a reference for the caller to release.
func (s *Store) lookup(id ShardID) (*shardEntry, *device, *openShard, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, nil, ErrClosed
	}
	e, ok := s.index[id]
	if !ok {
		return nil, nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	o := e.open
	if o != nil {
		o.refs++
		s.files.MoveToFront(e.lru)
	}
	return e, s.devs[e.dev], o, nil
}

// openFile opens and checks the file of entry e and caches it, returning
// it with a reference for the caller to release. errShardChanged: e is no
// longer the shard's entry.
func (s *Store) openFile(id ShardID, e *shardEntry, d *device) (*openShard, error) {
	o, err := openShardFile(d.fs, d.shardPath(id), id, e.length)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.index[id] != e {
		if o != nil {
			o.f.Close()
		}
		return nil, errShardChanged
	}
	if err != nil {
		return nil, err
	}
	if s.closed {
		o.f.Close()
		return nil, ErrClosed
	}
	if e.open != nil {
		// Another reader opened it first.
		o.f.Close()
		o = e.open
		s.files.MoveToFront(e.lru)
	} else {
		e.open = o
		e.lru = s.files.PushFront(e)
		for s.files.Len() > s.maxOpenFiles {
			s.closeFileLocked(s.files.Back().Value.(*shardEntry))
		}
	}
	o.refs++
	return o, nil
}

// release gives back a reference that lookup or openFile returned.
func (s *Store) release(o *openShard) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o.refs--
	if o.refs == 0 && o.evicted {
		o.f.Close()
	}
}

// closeFileLocked takes an entry's file out of the cache and closes it,
// or leaves it to the last reader that holds it.
func (s *Store) closeFileLocked(e *shardEntry) {
	o := e.open
	if o == nil {
		return
	}
	s.files.Remove(e.lru)
	e.open, e.lru = nil, nil
	o.evicted = true
	if o.refs == 0 {
		o.f.Close()
	}
}

// OpenShardFiles is the number of shard files the sled holds open.
func (s *Store) OpenShardFiles() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files.Len()
}

// checkOnDisk reads the header and the chunk table again from the file
// and checks them, and that they are still those the file was opened
// with: the scrubber's check of what is on the disk now, not of the copy
// a read uses.
func (o *openShard) checkOnDisk() error {
	hb := make([]byte, o.h.bytes())
	if err := readFull(o.f, hb, 0); err != nil {
		return err
	}
	h, err := decodeHeader(hb)
	if err != nil {
		return err
	}
	if h != o.h {
		return fmt.Errorf("%w: header of %s changed on disk (now %s of %d bytes at epoch %d)", ErrCorrupt, o.h.id, h.id, h.length, h.epoch)
	}
	tb := make([]byte, len(o.table)+crcBytes)
	if err := readFull(o.f, tb, int64(o.h.bytes()+o.h.length)); err != nil {
		return err
	}
	table, err := checkTable(tb, o.h.length)
	if err != nil {
		return err
	}
	if !bytes.Equal(table, o.table) {
		return fmt.Errorf("%w: chunk table of %s changed on disk", ErrCorrupt, o.h.id)
	}
	return nil
}

// checkInto reads len(buf) bytes of the shard at off, a chunk boundary,
// into buf and checks them chunk by chunk.
func (o *openShard) checkInto(buf []byte, off uint64) error {
	if err := readFull(o.f, buf, int64(o.h.bytes()+off)); err != nil {
		return err
	}
	return checkChunks(buf, off/chunkBytes, o.table)
}

// scrubShard checks a whole shard as it is on disk: its header and chunk
// table, then its data len(buf) bytes at a time (buf is a whole number of
// chunks), calling pace with the bytes checked after each piece; pace's
// error stops it. A shard that fails is quarantined, as a read does. It
// returns the data bytes it checked.
//
// A shard whose file is not open is opened for the scrub alone, not
// cached: the scrubber walks every shard, and must not push out the files
// clients read. Such a file is not one a delete waits for (discardFile);
// should the shard go and its file be reused while the scrub reads it, the
// entry is no longer current when the check fails, and nothing is
// quarantined.
func (s *Store) scrubShard(id ShardID, buf []byte, pace func(n int) error) (uint64, error) {
	e, d, o, err := s.lookup(id)
	if err != nil {
		return 0, err
	}
	if o != nil {
		defer s.release(o)
	} else {
		if o, err = openShardFile(d.fs, d.shardPath(id), id, e.length); err != nil {
			return 0, s.readFailed(d, id, e, err)
		}
		defer o.f.Close()
	}
	if err := o.checkOnDisk(); err != nil {
		return 0, s.readFailed(d, id, e, err)
	}
	var done uint64
	for done < o.h.length {
		n := min(uint64(len(buf)), o.h.length-done)
		if err := o.checkInto(buf[:n], done); err != nil {
			return done, s.readFailed(d, id, e, err)
		}
		done += n
		if err := pace(int(n)); err != nil {
			return done, err
		}
	}
	return done, nil
}
