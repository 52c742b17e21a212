// Package nbdclient is a minimal NBD client (fixed newstyle, OPT_GO,
// simple replies, one request at a time) for tests and load generators
// that must know exactly which requests the server acknowledged. Real
// clients (qemu, libnbd, the kernel) are what Ballast is tested against;
// this one exists for the checks they cannot make.
//
// It may import only the standard library.
package nbdclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

const (
	nbdMagic        = 0x4e42444d41474943
	optMagic        = 0x49484156454F5054
	optReplyMagic   = 0x3e889045565a9
	requestMagic    = 0x25609513
	simpleReplyMag  = 0x67446698
	optGo           = 7
	repAck          = 1
	repInfo         = 3
	infoExport      = 0
	cmdRead         = 0
	cmdWrite        = 1
	cmdDisc         = 2
	cmdFlush        = 3
	cmdTrim         = 4
	flagFixedNew    = 1
	flagNoZeroes    = 2
	cmdFlagFUA      = 1
	repErrBit       = 1 << 31
	maxOptReplySize = 1 << 20
)

// Errno is an error the server returned for a request.
type Errno uint32

func (e Errno) Error() string { return fmt.Sprintf("nbd server error %d", uint32(e)) }

// Conn is one NBD connection in transmission phase.
type Conn struct {
	c      net.Conn
	Size   uint64
	Flags  uint16
	cookie uint64
}

// Dial connects to addr and opens export name with OPT_GO.
func Dial(addr, name string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return open(c, name, time.Time{})
}

// Open does the handshake over a connection the caller made (one dialed
// inside a network namespace, say), within timeout, and opens export name
// with OPT_GO. On error it closes c.
func Open(c net.Conn, name string, timeout time.Duration) (*Conn, error) {
	return open(c, name, time.Now().Add(timeout))
}

// open does the handshake, bounded by deadline unless it is zero.
func open(c net.Conn, name string, deadline time.Time) (*Conn, error) {
	conn := &Conn{c: c}
	c.SetDeadline(deadline)
	if err := conn.handshake(name); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

func (c *Conn) handshake(name string) error {
	var hdr [18]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hdr[0:]) != nbdMagic || binary.BigEndian.Uint64(hdr[8:]) != optMagic {
		return errors.New("bad server greeting")
	}
	if err := binary.Write(c.c, binary.BigEndian, uint32(flagFixedNew|flagNoZeroes)); err != nil {
		return err
	}
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	opt := binary.BigEndian.AppendUint64(nil, optMagic)
	opt = binary.BigEndian.AppendUint32(opt, optGo)
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(data)))
	if _, err := c.c.Write(append(opt, data...)); err != nil {
		return err
	}
	for {
		var rh [20]byte
		if _, err := io.ReadFull(c.c, rh[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(rh[0:]) != optReplyMagic {
			return errors.New("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(rh[12:])
		n := binary.BigEndian.Uint32(rh[16:])
		if n > maxOptReplySize {
			return fmt.Errorf("option reply of %d bytes", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c.c, body); err != nil {
			return err
		}
		switch {
		case typ&repErrBit != 0:
			return fmt.Errorf("server refused export %q: reply type %#x: %s", name, typ, body)
		case typ == repInfo && len(body) >= 12 && binary.BigEndian.Uint16(body) == infoExport:
			c.Size = binary.BigEndian.Uint64(body[2:])
			c.Flags = binary.BigEndian.Uint16(body[10:])
		case typ == repAck:
			return nil
		}
	}
}

func (c *Conn) request(cmd, flags uint16, off uint64, length uint32, payload []byte, readInto []byte) error {
	c.cookie++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req[0:], requestMagic)
	binary.BigEndian.PutUint16(req[4:], flags)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], c.cookie)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], length)
	if _, err := c.c.Write(append(req, payload...)); err != nil {
		return err
	}
	if cmd == cmdDisc {
		return nil
	}
	var rep [16]byte
	if _, err := io.ReadFull(c.c, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[0:]) != simpleReplyMag {
		return errors.New("bad reply magic")
	}
	if binary.BigEndian.Uint64(rep[8:]) != c.cookie {
		return errors.New("reply to another request")
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return Errno(e)
	}
	if readInto != nil {
		if _, err := io.ReadFull(c.c, readInto); err != nil {
			return err
		}
	}
	return nil
}

// WriteAt writes p at off and waits for the server's reply.
func (c *Conn) WriteAt(p []byte, off uint64, fua bool) error {
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	return c.request(cmdWrite, flags, off, uint32(len(p)), p, nil)
}

// ReadAt reads len(p) bytes at off.
func (c *Conn) ReadAt(p []byte, off uint64) error {
	return c.request(cmdRead, 0, off, uint32(len(p)), nil, p)
}

// Trim tells the server length bytes at off are no longer needed: they
// read back as zeroes (Ballast's promise; NBD allows any content).
func (c *Conn) Trim(off uint64, length uint32) error {
	return c.request(cmdTrim, 0, off, length, nil, nil)
}

// Flush asks the server to make every acknowledged write durable.
func (c *Conn) Flush() error { return c.request(cmdFlush, 0, 0, 0, nil, nil) }

// SetDeadline bounds the next requests.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Conn) Close() error {
	c.request(cmdDisc, 0, 0, 0, nil, nil)
	return c.c.Close()
}
