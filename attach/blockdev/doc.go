// Package blockdev defines the block device that the agent's protocol
// servers (NBD in attach/nbd, NVMe/TCP in attach/nvmetcp) serve, and the
// classes of error it returns. Each protocol maps a class to its own status
// code, so a device says once what went wrong and every protocol tells its
// client the same thing in its own words.
//
// It may import only the standard library.
package blockdev
