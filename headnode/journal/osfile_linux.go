package journal

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirectFlag asks OpenFile for direct I/O (O_DIRECT on Linux).
const DirectFlag = unix.O_DIRECT

// osOpenFile is os.OpenFile; tests replace it to refuse O_DIRECT as
// tmpfs before Linux 6.6 does.
var osOpenFile = os.OpenFile

func openOS(name string, flag int, perm os.FileMode) (File, error) {
	if flag&DirectFlag != 0 {
		f, err := osOpenFile(name, flag, perm)
		if err == nil {
			return &osFile{f: f, direct: true}, nil
		}
		// tmpfs and some others refuse O_DIRECT with EINVAL: fall back
		// to the page cache, which fdatasync still makes durable.
		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
		flag &^= DirectFlag
	}
	f, err := osOpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f}, nil
}

func fallocate(f *os.File, size int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), 0, 0, size)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EOPNOTSUPP, unix.ENOSYS:
			return errNoFallocate
		default:
			return err
		}
	}
}

// FIEMAP, from linux/fiemap.h and linux/fs.h.
const (
	fsIocFiemap           = 0xC020660B
	fiemapExtentLast      = 0x1
	fiemapExtentUnwritten = 0x800
	fiemapBatch           = 64
)

type fiemapExtent struct {
	logical, physical, length uint64
	_                         [2]uint64
	flags                     uint32
	_                         [3]uint32
}

type fiemap struct {
	start, length                           uint64
	flags, mappedExtents, extentCount, _pad uint32
	extents                                 [fiemapBatch]fiemapExtent
}

// Unwritten lists the ranges of [off, end) that hold nothing written: the
// extents the filesystem marks unwritten (fallocated) and the holes, from
// its extent map (FIEMAP). It fails where the filesystem has no extent
// map.
func (o *osFile) Unwritten(off, end int64) ([][2]int64, error) {
	var out [][2]int64
	add := func(a, b int64) {
		a, b = max(a, off), min(b, end)
		if a >= b {
			return
		}
		if n := len(out); n > 0 && out[n-1][1] == a {
			out[n-1][1] = b
			return
		}
		out = append(out, [2]int64{a, b})
	}
	rc, err := o.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	cur := off
	for cur < end {
		m := fiemap{start: uint64(cur), length: uint64(end - cur), extentCount: fiemapBatch}
		var errno unix.Errno
		if err := rc.Control(func(fd uintptr) {
			_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(&m)))
		}); err != nil {
			return nil, err
		}
		if errno != 0 {
			return nil, fmt.Errorf("fiemap: %w", errno)
		}
		if m.mappedExtents == 0 {
			break // nothing mapped from cur on: a hole to the end
		}
		last := false
		for _, e := range m.extents[:m.mappedExtents] {
			lo, hi := int64(e.logical), int64(e.logical+e.length)
			add(cur, lo) // a hole before the extent
			if e.flags&fiemapExtentUnwritten != 0 {
				add(lo, hi)
			}
			cur = max(cur, hi)
			last = last || e.flags&fiemapExtentLast != 0
		}
		if last || m.mappedExtents < fiemapBatch {
			break
		}
	}
	add(cur, end)
	return out, nil
}
