package headnode

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerGone says whether the peer of c has closed its end or reset it,
// without reading: the kernel's TCP state says so even while unread data
// waits ahead of the end. (A framed connection that waits for room does
// not read, and so would not otherwise see its client leave.)
func peerGone(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var state uint8
	if err := raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	}); err != nil {
		return false
	}
	return state == unix.BPF_TCP_CLOSE_WAIT || state == unix.BPF_TCP_CLOSE
}
