package journal

import (
	"errors"
	"fmt"
	"os"
)

// osFile is a File on the operating system's filesystem.
type osFile struct {
	f      *os.File
	direct bool
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return datasync(o.f) }
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
	// Zeros from the last whole block, in aligned chunks, so that this
	// works with O_DIRECT too.
	const chunk = 1 << 20
	zeros := alignedBuf(chunk)
	for off := cur / BlockSize * BlockSize; off < size; off += chunk {
		n := min(int64(chunk), size-off)
		if err := writeFull(o, zeros[:roundUp(n)], off); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
	}
	// A filesystem without fallocate may have written a last block past
	// size when size is not a multiple of 4096; the journal's sizes are.
	return nil
}

var errNoFallocate = errors.New("fallocate not supported")
