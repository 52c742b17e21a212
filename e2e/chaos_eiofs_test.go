package e2e

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// eioFS is a FUSE loopback over a node's real data directory that, while
// armed, fails what changes the disk with EIO: writes, syncs,
// allocations, creations, renames and links. Reads go on. It is the
// chaos rack's failing disk: the kernel here has no device-mapper, so the
// error comes from a filesystem the test serves itself.
type eioFS struct {
	armed  atomic.Bool
	server *fuse.Server
}

// mountEIOFS mounts a loopback of backing at mnt; the caller unmounts it.
func mountEIOFS(backing, mnt string) (*eioFS, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("no FUSE: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, err
	}
	e := &eioFS{}
	root := &fs.LoopbackRoot{Path: backing, Dev: uint64(st.Dev)}
	root.NewNode = func(rd *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &eioNode{LoopbackNode: fs.LoopbackNode{RootData: rd}, fs: e}
	}
	rootNode := root.NewNode(root, nil, "", &st)
	root.RootNode = rootNode
	server, err := fs.Mount(mnt, rootNode, &fs.Options{MountOptions: fuse.MountOptions{
		AllowOther:  true, // the ballast processes run in namespaces of their own
		DirectMount: true, // as root, without fusermount (package fuse), which may not be installed
		FsName:      "ballast-chaos-eio",
		Name:        "ballast-chaos",
	}})
	if err != nil {
		return nil, err
	}
	e.server = server
	return e, nil
}

func (e *eioFS) unmount() error { return e.server.Unmount() }

// eioNode is a loopback node whose changes fail while its filesystem is
// armed, and whose open files are eioFiles.
type eioNode struct {
	fs.LoopbackNode
	fs *eioFS
}

var (
	_ fs.NodeOpener  = (*eioNode)(nil)
	_ fs.NodeCreater = (*eioNode)(nil)
	_ fs.NodeRenamer = (*eioNode)(nil)
	_ fs.NodeMkdirer = (*eioNode)(nil)
	_ fs.NodeLinker  = (*eioNode)(nil)
)

func (n *eioNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return fh, fl, errno
	}
	return n.wrap(fh), fl, 0
}

func (n *eioNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.fs.armed.Load() {
		return nil, nil, 0, syscall.EIO
	}
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return in, fh, fl, errno
	}
	return in, n.wrap(fh), fl, 0
}

func (n *eioNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.fs.armed.Load() {
		return syscall.EIO
	}
	// The loopback finds the new parent's path through its embedded
	// LoopbackNode.
	if p, ok := newParent.(*eioNode); ok {
		newParent = &p.LoopbackNode
	}
	return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
}

func (n *eioNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.fs.armed.Load() {
		return nil, syscall.EIO
	}
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

func (n *eioNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.fs.armed.Load() {
		return nil, syscall.EIO
	}
	if p, ok := target.(*eioNode); ok {
		target = &p.LoopbackNode
	}
	return n.LoopbackNode.Link(ctx, target, name, out)
}

func (n *eioNode) wrap(fh fs.FileHandle) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return &eioFile{LoopbackFile: lf, fs: n.fs}
	}
	return fh
}

// eioFile fails writes, syncs and allocations while armed.
type eioFile struct {
	*fs.LoopbackFile
	fs *eioFS
}

func (f *eioFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.fs.armed.Load() {
		return 0, syscall.EIO
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

func (f *eioFile) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if f.fs.armed.Load() {
		return 0, syscall.EIO
	}
	return f.LoopbackFile.Writev(ctx, data, off)
}

func (f *eioFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if f.fs.armed.Load() {
		return syscall.EIO
	}
	return f.LoopbackFile.Fsync(ctx, flags)
}

func (f *eioFile) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if f.fs.armed.Load() {
		return syscall.EIO
	}
	return f.LoopbackFile.Allocate(ctx, off, size, mode)
}

// PassthroughFd keeps the kernel from bypassing the filesystem (and so
// the injected errors) for this file's reads and writes.
func (f *eioFile) PassthroughFd() (int, bool) { return 0, false }
