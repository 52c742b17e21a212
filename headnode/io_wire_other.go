//go:build !linux

package headnode

import "net"

// peerGone cannot tell without Linux's TCP_INFO: a framed connection that
// waits for room learns of its client's leaving once it reads again.
func peerGone(c net.Conn) bool { return false }
