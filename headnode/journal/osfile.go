package journal

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ballast-storage/ballast/internal/durable"
)

// osFile is a File on the operating system's filesystem.
type osFile struct {
	f      *os.File
	direct bool
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return durable.Fdatasync(o.f) }
func (o *osFile) Close() error                             { return o.f.Close() }
func (o *osFile) Direct() bool                             { return o.direct }

func (o *osFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Allocate reserves the blocks with fallocate where the filesystem supports
// it, so that a full disk shows at Open and not as a failed append later;
// elsewhere it writes zeros, which reserves them just as well.
func (o *osFile) Allocate(size int64) error {
	cur, err := o.Size()
	if err != nil {
		return err
	}
	if cur >= size {
		return nil
	}
	err = fallocate(o.f, size)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errNoFallocate) {
		return fmt.Errorf("fallocate %d bytes: %w", size, err)
	}
	return o.zeroFill(cur, size)
}

// zeroFill writes zeros from cur up to size, in aligned chunks so that it
// works with O_DIRECT too: a partial last block is read, its tail zeroed
// and written back whole. The journal's sizes are multiples of 4096.
func (o *osFile) zeroFill(cur, size int64) error {
	const chunk = 1 << 20
	zeros := alignedBuf(chunk)
	off := cur / BlockSize * BlockSize
	if off < cur {
		// The file ends at cur: a short read.
		if _, err := o.ReadAt(zeros[:BlockSize], off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("zero-fill: read at %d: %w", off, err)
		}
		clear(zeros[cur-off : BlockSize])
		if err := writeFull(o, zeros[:BlockSize], off); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
		clear(zeros[:BlockSize])
		off += BlockSize
	}
	for ; off < size; off += chunk {
		n := min(int64(chunk), size-off)
		if err := writeFull(o, zeros[:roundUp(n)], off); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
	}
	return nil
}

var errNoFallocate = errors.New("fallocate not supported")
