package blockcache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// ErrMemoryUnknown is returned by MemoryTotal when it cannot tell the
// machine's memory: on systems other than Linux, or when /proc/meminfo
// cannot be read or parsed.
var ErrMemoryUnknown = errors.New("blockcache: machine memory unknown")

// Bounds of DefaultCapacity.
const (
	MinDefaultCapacity = 64 << 20
	MaxDefaultCapacity = 4 << 30
)

// DefaultCapacity is the cache size for a machine with totalMemory bytes:
// 1/32 of it, at least MinDefaultCapacity and at most MaxDefaultCapacity
// (doc.go says why), in whole blocks. Pass 0 when the memory is unknown.
func DefaultCapacity(totalMemory uint64) int64 {
	c := min(max(totalMemory/32, MinDefaultCapacity), MaxDefaultCapacity)
	return int64(c) &^ (BlockSize - 1)
}

// parseMemTotal returns MemTotal of a /proc/meminfo in bytes.
func parseMemTotal(meminfo []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("MemTotal:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("%w: MemTotal line %q", ErrMemoryUnknown, sc.Bytes())
		}
		kb, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil || kb == 0 || kb > 1<<54 {
			return 0, fmt.Errorf("%w: MemTotal %q", ErrMemoryUnknown, f[0])
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrMemoryUnknown, err)
	}
	return 0, fmt.Errorf("%w: no MemTotal in meminfo", ErrMemoryUnknown)
}
