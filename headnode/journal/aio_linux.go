//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package journal

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Scattered reads through Linux native AIO
//
// A flush reads the blocks of a segment in block order, and after random
// writes they lie all over the journal: one 4 KiB O_DIRECT pread each. On
// the 2-core VM of the README a pread of 4 KiB cost about 20 µs of CPU
// (fio, psync) and the flush's reads were 14% of the CPU of 4 KiB random
// writes at QD32; submitted together with io_submit the same reads cost
// about 3 µs each (fio, libaio, 64 at a time), and they run in parallel
// on the device. The layouts below are the kernel's (linux/aio_abi.h) on
// 64-bit little-endian machines; elsewhere aio_other.go reads one range at
// a time.

const (
	iocbCmdPread = 0
	// aioBatch bounds the reads of one io_submit, and the events of a
	// context.
	aioBatch = 128
	// aioKeep bounds the idle contexts kept for later reads.
	aioKeep = 4
)

// iocb is struct iocb (little-endian: aio_key before aio_rw_flags).
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   uint32
	opcode    uint16
	reqprio   int16
	fildes    uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is struct io_event.
type ioEvent struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

type aioContext uintptr

// aioPool keeps AIO contexts between reads: io_destroy waits for an RCU
// grace period (milliseconds), far too slow for every read. Contexts are
// made on demand, one per concurrent reader.
type aioPool struct {
	submits  atomic.Uint64 // io_submit calls that took reads (tests)
	mu       sync.Mutex
	free     []aioContext
	closed   bool
	disabled bool // io_setup failed once: AIO is not available here
}

func newAIOPool() *aioPool { return &aioPool{} }

func (p *aioPool) get() (aioContext, bool) {
	p.mu.Lock()
	if p.closed || p.disabled {
		p.mu.Unlock()
		return 0, false
	}
	if n := len(p.free); n > 0 {
		c := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return c, true
	}
	p.mu.Unlock()
	var c aioContext
	if _, _, errno := unix.Syscall(unix.SYS_IO_SETUP, aioBatch, uintptr(unsafe.Pointer(&c)), 0); errno != 0 {
		p.mu.Lock()
		p.disabled = true
		p.mu.Unlock()
		return 0, false
	}
	return c, true
}

func (p *aioPool) put(c aioContext) {
	p.mu.Lock()
	if !p.closed && len(p.free) < aioKeep {
		p.free = append(p.free, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	destroyAIO(c)
}

// close destroys the idle contexts; those in use are destroyed when put.
func (p *aioPool) close() {
	p.mu.Lock()
	free := p.free
	p.free, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range free {
		destroyAIO(c)
	}
}

func destroyAIO(c aioContext) { unix.Syscall(unix.SYS_IO_DESTROY, uintptr(c), 0, 0) }

// errNoAIO says the reads were not made: the caller reads one at a time.
var errNoAIO = errors.New("journal: native AIO unavailable")

// readBatch reads bufs[i] whole at offs[i] of o, all submitted together.
// It returns errNoAIO, having read nothing, where AIO is unavailable.
func (o *osFile) readBatch(p *aioPool, bufs [][]byte, offs []int64) error {
	ctx, ok := p.get()
	if !ok {
		return errNoAIO
	}
	defer p.put(ctx)
	rc, err := o.f.SyscallConn()
	if err != nil {
		return err
	}
	var rerr error
	// Control holds the descriptor open until the reads are reaped: a
	// Close meanwhile waits, so no read can land in a reused descriptor.
	if err := rc.Control(func(fd uintptr) {
		for start := 0; start < len(bufs) && rerr == nil; start += aioBatch {
			end := min(len(bufs), start+aioBatch)
			rerr = readChunk(p, ctx, int(fd), bufs[start:end], offs[start:end])
		}
	}); err != nil {
		return err
	}
	return rerr
}

// readChunk reads at most aioBatch ranges. What io_submit does not take
// is read with pread.
func readChunk(p *aioPool, ctx aioContext, fd int, bufs [][]byte, offs []int64) error {
	n := len(bufs)
	cbs := make([]iocb, n)
	ptrs := make([]*iocb, n)
	for i := range cbs {
		if len(bufs[i]) == 0 {
			return fmt.Errorf("journal: AIO read of 0 bytes at %d", offs[i])
		}
		cbs[i] = iocb{data: uint64(i), opcode: iocbCmdPread, fildes: uint32(fd),
			buf: uint64(uintptr(unsafe.Pointer(&bufs[i][0]))), nbytes: uint64(len(bufs[i])), offset: offs[i]}
		ptrs[i] = &cbs[i]
	}
	submitted := 0
	for submitted < n {
		r, _, errno := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(ctx), uintptr(n-submitted), uintptr(unsafe.Pointer(&ptrs[submitted])))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || r == 0 {
			break // EAGAIN and the like: the rest by pread
		}
		submitted += int(r)
		p.submits.Add(1)
	}
	events := make([]ioEvent, max(submitted, 1))
	for got := 0; got < submitted; {
		r, _, errno := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(ctx), uintptr(submitted-got), uintptr(submitted-got),
			uintptr(unsafe.Pointer(&events[got])), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			// Reads may still land in the buffers: they must never be
			// reused. Keep them, and the requests, for good.
			leakForever(bufs, cbs)
			return fmt.Errorf("journal: io_getevents: %w", errno)
		}
		got += int(r)
	}
	var firstErr error
	for _, ev := range events[:submitted] {
		i := int(ev.data)
		switch {
		case i < 0 || i >= n:
			firstErr = cmpErr(firstErr, fmt.Errorf("journal: AIO event for request %d of %d", i, n))
		case ev.res < 0:
			firstErr = cmpErr(firstErr, fmt.Errorf("read %d bytes at %d: %w", len(bufs[i]), offs[i], unix.Errno(-ev.res)))
		case ev.res != int64(len(bufs[i])):
			firstErr = cmpErr(firstErr, fmt.Errorf("read %d bytes at %d: got %d: %w", len(bufs[i]), offs[i], ev.res, io.ErrUnexpectedEOF))
		}
	}
	runtime.KeepAlive(cbs)
	runtime.KeepAlive(ptrs)
	runtime.KeepAlive(bufs)
	if firstErr != nil {
		return firstErr
	}
	for i := submitted; i < n; i++ {
		if err := preadFull(fd, bufs[i], offs[i]); err != nil {
			return err
		}
	}
	return nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func preadFull(fd int, buf []byte, off int64) error {
	for done := 0; done < len(buf); {
		n, err := unix.Pread(fd, buf[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %d bytes at %d: %w", len(buf), off, err)
		}
		if n == 0 {
			return fmt.Errorf("read %d bytes at %d: %w", len(buf), off, io.ErrUnexpectedEOF)
		}
		done += n
	}
	return nil
}

var leaked struct {
	sync.Mutex
	refs []any
}

func leakForever(refs ...any) {
	leaked.Lock()
	leaked.refs = append(leaked.refs, refs...)
	leaked.Unlock()
}
