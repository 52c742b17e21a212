package sled

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// shardFile returns the path of the file that holds a shard on s.
func shardFile(t *testing.T, s *Store, id ShardID) string {
	t.Helper()
	for _, d := range s.Devices() {
		p := filepath.Join(d.Path, "shards", fmt.Sprintf("%016x", id.Volume), fmt.Sprintf("%016x.%d", id.Segment, id.Index))
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("no file for %s", id)
	return ""
}

// dirListing lists a directory's files with their sizes.
func dirListing(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out string
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out += fmt.Sprintf("%s %d\n", e.Name(), fi.Size())
	}
	return out
}

// TestOfflineReadsChecksAndChangesNothing: a stopped sled's shards read
// offline come back as the running sled stored them, with their stamp; a
// flipped byte and a shard file at another shard's path are corrupt; and
// none of it moves or changes a file, as a running sled's quarantine would.
func TestOfflineReadsChecksAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 2, 0, nil)
	a := ShardID{Volume: 3, Segment: 5<<32 | 1, Index: 2}
	b := ShardID{Volume: 3, Segment: 5<<32 | 1, Index: 4}
	c := ShardID{Volume: 3, Segment: 5<<32 | 2, Index: 0}
	da, db, dc := randomData(1, 5*4096+10), randomData(2, 3*4096), randomData(3, 4096)
	for _, p := range []struct {
		id   ShardID
		data []byte
	}{{a, da}, {b, db}, {c, dc}} {
		if _, err := s.Put(p.id, 5, p.data); err != nil {
			t.Fatal(err)
		}
	}
	pathB, pathC := shardFile(t, s, b), shardFile(t, s, c)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	metaBefore := dirListing(t, filepath.Join(dir, "meta"))
	o, err := OpenOffline(dir)
	if err != nil {
		t.Fatal(err)
	}
	if after := dirListing(t, filepath.Join(dir, "meta")); after != metaBefore {
		t.Fatalf("opening offline changed the metadata:\n%s\nbecame\n%s", metaBefore, after)
	}
	if o.ID() != "t" {
		t.Fatalf("offline sled id %q, want the id it ran as, t", o.ID())
	}
	got, stamp, err := o.Get(a, 0, 0)
	if err != nil || !bytes.Equal(got, da) {
		t.Fatalf("whole shard: %v (%d bytes of %d)", err, len(got), len(da))
	}
	if stamp != (ShardStamp{ID: a, Epoch: 5}) {
		t.Fatalf("stamp %+v", stamp)
	}
	if got, _, err := o.Get(a, 4096+7, 4096); err != nil || !bytes.Equal(got, da[4096+7:2*4096+7]) {
		t.Fatalf("range: %v", err)
	}
	if _, _, err := o.Get(a, 4096, uint64(len(da))); !errors.Is(err, ErrInvalid) {
		t.Fatalf("range past the end: %v, want ErrInvalid", err)
	}
	if _, _, err := o.Get(ShardID{Volume: 3, Segment: 9}, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent shard: %v, want ErrNotFound", err)
	}

	// A flipped byte in the data is caught by the chunk it is in, and
	// only there.
	corruptShardFile(t, s, b, headerBytes+2*4096+100)
	if _, _, err := o.Get(b, 0, 4096); err != nil {
		t.Fatalf("intact chunk of a corrupt shard: %v", err)
	}
	if _, _, err := o.Get(b, 0, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: %v, want ErrCorrupt", err)
	}
	// A flipped byte in the header is caught before anything is read.
	corruptShardFile(t, s, a, 20)
	if _, _, err := o.Get(a, 0, 4096); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped header byte: %v, want ErrCorrupt", err)
	}

	// A shard at another shard's path passes its own checksums; its
	// header names the shard it is.
	before, err := os.ReadFile(pathC)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := o.Get(c, 0, 0); err != nil || !bytes.Equal(got, dc) {
		t.Fatalf("intact shard: %v", err)
	}
	misplaced := ShardID{Volume: 3, Segment: 5<<32 | 1, Index: 0}
	dst := filepath.Join(filepath.Dir(pathB), fmt.Sprintf("%016x.%d", misplaced.Segment, misplaced.Index))
	if err := os.WriteFile(dst, before, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Get(misplaced, 0, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("misplaced shard: %v, want ErrCorrupt", err)
	}

	// Nothing was quarantined, moved or rewritten.
	if after, err := os.ReadFile(pathC); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("an offline read changed a shard file: %v", err)
	}
	if _, err := os.Stat(pathB); err != nil {
		t.Fatalf("a corrupt shard's file was moved: %v", err)
	}
	for _, d := range []string{"d0", "d1"} {
		q, err := os.ReadDir(filepath.Join(dir, d, "quarantine"))
		if err != nil || len(q) != 0 {
			t.Fatalf("quarantine of %s: %d files, %v", d, len(q), err)
		}
	}
}

// TestSledRefusesAnotherSledsDataDirectory: the id a sled records is what
// offline readers trust, so a sled started under another id on the same
// data directory must not start.
func TestSledRefusesAnotherSledsDataDirectory(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 1, 0, nil)
	s.Close()
	_, err := openStore(storeOptions{id: "other", dataDir: dir, devicePaths: []string{filepath.Join(dir, "d0")},
		logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())})
	if err == nil {
		t.Fatal("a sled started on another sled's data directory")
	}
}

func TestOpenOfflineRefusesADirectoryThatIsNoSled(t *testing.T) {
	if _, err := OpenOffline(t.TempDir()); err == nil {
		t.Fatal("opened an empty directory as a sled")
	}
}
