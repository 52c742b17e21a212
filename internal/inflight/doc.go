// Package inflight bounds work in flight: a Limit counts requests and
// their bytes from admission to release, and makes the next acquirer wait
// (never fail) while either bound is reached. The protocol servers
// (attach/nbd, attach/nvmetcp) and the head node's I/O stream acquire one
// before they read more from a client, so a client that sends faster than
// the backend drains is slowed by TCP or HTTP/2 flow control instead of
// growing memory. Its counters are exported for status and tests.
//
// It imports only the standard library.
package inflight
