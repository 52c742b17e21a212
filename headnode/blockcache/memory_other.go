//go:build !linux

package blockcache

// MemoryTotal returns ErrMemoryUnknown: only Linux is supported.
func MemoryTotal() (uint64, error) { return 0, ErrMemoryUnknown }
