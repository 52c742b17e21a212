// Package durable holds the small filesystem steps that make state survive
// a crash and that pebble leaves to its caller: creating a store's
// directory so that its entry in the parent is synced too, and replacing
// a small file whole.
//
// It may import the standard library and pebble's vfs.
package durable
