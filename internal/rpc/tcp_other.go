//go:build !linux

package rpc

import (
	"net"
	"time"
)

// SetTCPUserTimeout does nothing where TCP_USER_TIMEOUT does not exist;
// the keepalive pings still notice a vanished peer.
func SetTCPUserTimeout(c net.Conn, d time.Duration) error { return nil }
