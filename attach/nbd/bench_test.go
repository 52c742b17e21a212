package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

var noDeadline time.Time

// BenchmarkServer measures the server over loopback TCP with the
// in-memory backend: a pipelined client keeps qd requests in flight on one
// connection. ns/op is per request; MB/s counts payload bytes.
//
//	go test -run='^$' -bench=BenchmarkServer -benchtime=3s ./attach/nbd/
func BenchmarkServer(b *testing.B) {
	for _, bc := range []struct {
		cmd        uint16
		bs, qd     int
		structured bool
	}{
		{cmdRead, 4 << 10, 1, false},
		{cmdWrite, 4 << 10, 1, false},
		{cmdRead, 4 << 10, 32, false},
		{cmdWrite, 4 << 10, 32, false},
		{cmdRead, 4 << 10, 32, true},
		{cmdRead, 4 << 10, 128, false},
		{cmdRead, 256 << 10, 8, false},
		{cmdWrite, 256 << 10, 8, false},
		{cmdRead, 1 << 20, 16, true},
		{cmdWrite, 1 << 20, 16, false},
	} {
		name := fmt.Sprintf("%s-%dk-qd%d", map[uint16]string{cmdRead: "read", cmdWrite: "write"}[bc.cmd], bc.bs>>10, bc.qd)
		if bc.structured {
			name += "-structured"
		}
		b.Run(name, func(b *testing.B) {
			benchPipelined(b, bc.cmd, bc.bs, bc.qd, bc.structured)
		})
	}
}

func benchPipelined(b *testing.B, cmd uint16, bs, qd int, structured bool) {
	ts := startServer(b, nil)
	c := connect(b, ts.addr, "disk", structured, false)
	_ = c.c.SetDeadline(noDeadline)
	size := int(ts.disk.size())
	blocks := uint64(size / bs)

	payload := pattern(1, bs)
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()

	tokens := make(chan struct{}, qd)
	sendErr := make(chan error, 1)
	go func() {
		hdr := make([]byte, 28)
		w := net.Buffers{}
		rnd := uint64(12345)
		for i := 0; i < b.N; i++ {
			tokens <- struct{}{}
			rnd = rnd*6364136223846793005 + 1442695040888963407
			binary.BigEndian.PutUint32(hdr, 0x25609513)
			binary.BigEndian.PutUint16(hdr[4:], 0)
			binary.BigEndian.PutUint16(hdr[6:], cmd)
			binary.BigEndian.PutUint64(hdr[8:], uint64(i))
			binary.BigEndian.PutUint64(hdr[16:], (rnd>>20)%blocks*uint64(bs))
			binary.BigEndian.PutUint32(hdr[24:], uint32(bs))
			w = append(w[:0], hdr)
			if cmd == cmdWrite {
				w = append(w, payload)
			}
			if _, err := w.WriteTo(c.c); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()

	r := bufio.NewReaderSize(c.c, 1<<20)
	var h [32]byte
	for i := 0; i < b.N; i++ {
		if structured && cmd == cmdRead {
			if _, err := io.ReadFull(r, h[:28]); err != nil {
				b.Fatal(err)
			}
			if binary.BigEndian.Uint16(h[6:]) != replyTypeOffsetData {
				b.Fatalf("chunk type %d", binary.BigEndian.Uint16(h[6:]))
			}
			if _, err := r.Discard(bs); err != nil {
				b.Fatal(err)
			}
		} else {
			if _, err := io.ReadFull(r, h[:16]); err != nil {
				b.Fatal(err)
			}
			if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
				b.Fatalf("errno %d", e)
			}
			if cmd == cmdRead {
				if _, err := r.Discard(bs); err != nil {
					b.Fatal(err)
				}
			}
		}
		<-tokens
	}
	b.StopTimer()
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}
