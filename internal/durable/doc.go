// Package durable holds the small filesystem steps that make state survive
// a crash and that pebble leaves to its caller: creating a store's
// directory so that its entry in the parent is synced too, and replacing
// a small file whole, and an fdatasync that the journals and the sleds
// share.
//
// It may import the standard library, pebble's vfs and golang.org/x/sys/unix.
package durable
