//go:build linux

package sled

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestPutLeavesNoShardInThePageCache checks that a put's pages leave the
// page cache once synced (device.go, dropCache): a sled's shards would
// otherwise fill it with data read seldom.
func TestPutLeavesNoShardInThePageCache(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Skip("tmpfs keeps every file in the page cache")
	}
	s := openTestStore(t, dir, 1, 0, nil)
	id := ShardID{Volume: 1, Segment: 2, Index: 3}
	if _, err := s.Put(id, 1, randomData(1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	path := s.devs[0].shardPath(id)
	if n := residentPages(t, path); n > 0 {
		t.Fatalf("%d pages of the shard's file are in the page cache after its put", n)
	}
	// The check itself can tell: a read brings pages back.
	if _, _, err := s.Get(id, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, path); n == 0 {
		t.Fatal("no page in the cache after a read: the residency check sees nothing")
	}
}

func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
