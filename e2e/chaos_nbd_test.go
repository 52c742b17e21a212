package e2e

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// chaosConn is one NBD connection of the chaos workload, one request at a
// time: internal/nbdclient dials for itself (the chaos clients dial inside
// a host's namespace) and sends no TRIM, so this speaks the few requests
// the workload needs over a connection it is given.
type chaosConn struct {
	c      net.Conn
	br     *bufio.Reader
	size   uint64
	cookie uint64
}

// NBD request types and the magic numbers of the handshake and replies.
const (
	nbdCmdRead  = 0
	nbdCmdWrite = 1
	nbdCmdDisc  = 2
	nbdCmdFlush = 3
	nbdCmdTrim  = 4
)

// newChaosConn does the fixed-newstyle handshake on c (OPT_GO for export)
// within deadline.
func newChaosConn(c net.Conn, export string, deadline time.Time) (*chaosConn, error) {
	cc := &chaosConn{c: c, br: bufio.NewReader(c)}
	c.SetDeadline(deadline)
	var greet [18]byte
	if _, err := io.ReadFull(cc.br, greet[:]); err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint64(greet[0:]) != 0x4e42444d41474943 || binary.BigEndian.Uint64(greet[8:]) != 0x49484156454F5054 {
		return nil, errors.New("bad NBD greeting")
	}
	msg := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0)
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 7) // OPT_GO
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	if _, err := c.Write(append(msg, data...)); err != nil {
		return nil, err
	}
	for {
		var rh [20]byte
		if _, err := io.ReadFull(cc.br, rh[:]); err != nil {
			return nil, err
		}
		typ, n := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if n > 1<<20 {
			return nil, fmt.Errorf("NBD option reply of %d bytes", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(cc.br, body); err != nil {
			return nil, err
		}
		switch {
		case typ&(1<<31) != 0:
			return nil, fmt.Errorf("export %q refused: %#x %s", export, typ, body)
		case typ == 3 && len(body) >= 12 && binary.BigEndian.Uint16(body) == 0: // INFO_EXPORT
			cc.size = binary.BigEndian.Uint64(body[2:])
		case typ == 1: // ACK
			c.SetDeadline(time.Time{})
			return cc, nil
		}
	}
}

// do sends one request and waits for its reply until deadline; a read's
// data lands in readInto. Any error but the server's own leaves the
// connection unusable.
func (cc *chaosConn) do(cmd uint16, off uint64, length uint32, payload, readInto []byte, deadline time.Time) error {
	cc.c.SetDeadline(deadline)
	cc.cookie++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req[0:], 0x25609513)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], cc.cookie)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], length)
	if _, err := cc.c.Write(append(req, payload...)); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(cc.br, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[0:]) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != cc.cookie {
		return errors.New("bad NBD reply")
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return fmt.Errorf("NBD error %d", e)
	}
	if readInto != nil {
		if _, err := io.ReadFull(cc.br, readInto); err != nil {
			return err
		}
	}
	return nil
}

func (cc *chaosConn) close() {
	cc.c.SetDeadline(time.Now().Add(time.Second))
	req := make([]byte, 28)
	binary.BigEndian.PutUint32(req[0:], 0x25609513)
	binary.BigEndian.PutUint16(req[6:], nbdCmdDisc)
	cc.c.Write(req)
	cc.c.Close()
}
