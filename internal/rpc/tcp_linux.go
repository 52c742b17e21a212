package rpc

import (
	"fmt"
	"net"
	"syscall"
	"time"
)

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT socket option (linux/tcp.h),
// which the standard library's syscall package does not name.
const tcpUserTimeout = 0x12

// SetTCPUserTimeout bounds how long data sent on c may stay unacknowledged
// before the kernel drops the connection, as gRPC does for its own
// connections when keepalive is on (to KeepaliveTimeout): a peer that
// vanished while data was in flight is noticed in seconds, not after
// TCP's retransmissions (minutes). Connections that are not TCP are left
// alone.
func SetTCPUserTimeout(c net.Conn, d time.Duration) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("set TCP user timeout: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d/time.Millisecond))
	}); err != nil {
		return fmt.Errorf("set TCP user timeout: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set TCP user timeout: %w", serr)
	}
	return nil
}
