package rpc

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// PreambleDialTimeout bounds connecting and the preamble's answer on a
// framed connection, as gRPC's minimum connect timeout does for its own.
const PreambleDialTimeout = 3 * time.Second

// DialPreamble opens a framed protocol's TCP connection to addr: it
// connects (with the TCP user timeout of every Ballast connection), sends
// preamble and reads the peer's answer of answerBytes, within
// PreambleDialTimeout or ctx's deadline if sooner. The caller judges the
// answer. A peer that closes the connection unanswered returns an error
// wrapping io.EOF or io.ErrUnexpectedEOF.
func DialPreamble(ctx context.Context, addr string, preamble []byte, answerBytes int) (net.Conn, []byte, error) {
	d := net.Dialer{Timeout: PreambleDialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (net.Conn, []byte, error) {
		nc.Close()
		return nil, nil, err
	}
	if err := SetTCPUserTimeout(nc, KeepaliveTimeout); err != nil {
		return fail(err)
	}
	deadline := time.Now().Add(PreambleDialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc.SetDeadline(deadline)
	if _, err := nc.Write(preamble); err != nil {
		return fail(fmt.Errorf("send preamble: %w", err))
	}
	answer := make([]byte, answerBytes)
	if _, err := io.ReadFull(nc, answer); err != nil {
		return fail(fmt.Errorf("read the preamble's answer: %w", err))
	}
	nc.SetDeadline(time.Time{})
	return nc, answer, nil
}
