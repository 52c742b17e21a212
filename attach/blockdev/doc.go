// Package blockdev defines the block device that the agent's protocol
// servers (NBD in attach/nbd, NVMe/TCP in attach/nvmetcp) serve, and the
// classes of error it returns. Each protocol maps a class to its own status
// code, so a device says once what went wrong and every protocol tells its
// client the same thing in its own words. A Device may also implement
// Allocator, to tell clients which ranges are holes (NBD's
// base:allocation), so that they can skip them when copying.
//
// It may import only the standard library.
package blockdev
