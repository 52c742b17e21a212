//go:build !(linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le))

package journal

import "errors"

// aioPool is Linux native AIO (aio_linux.go); here there is none, and
// scattered reads are made one at a time.
type aioPool struct{}

func newAIOPool() *aioPool { return nil }

func (p *aioPool) close() {}

var errNoAIO = errors.New("journal: native AIO unavailable")

func (o *osFile) readBatch(*aioPool, [][]byte, []int64) error { return errNoAIO }
