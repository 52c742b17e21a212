//go:build linux

package blockcache

import (
	"fmt"
	"os"
)

// MemoryTotal returns the machine's memory in bytes, from /proc/meminfo's
// MemTotal. Its errors match ErrMemoryUnknown.
func MemoryTotal() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrMemoryUnknown, err)
	}
	return parseMemTotal(b)
}
