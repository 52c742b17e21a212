package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ballast-storage/ballast/internal/chaos"
	"github.com/ballast-storage/ballast/internal/nbdclient"
)

// chaosOpTimeout bounds one request: past it the call is recorded Failed
// (its effect unknown) and the connection is dialled again. It is longer
// than a failover (a 3 s lease) and shorter than the head node's
// replication timeout plus a failover, so a request held by a partition
// gives up.
const chaosOpTimeout = 20 * time.Second

// chaosClient is one client of the workload: its own NBD connection to
// one volume, following the volume to the host it is attached to.
type chaosClient struct {
	id  int
	cr  *chaosRack
	vol *chaosVolume
	rec *chaos.Recorder
	rng *rand.Rand

	conn *nbdclient.Conn
	host string
	ops  uint64
	seq  map[uint64]uint64 // block → this client's writes of it
}

// runWorkload runs clientsPerVolume clients on every volume until ctx
// ends, then waits for the requests in flight (each bounded by
// chaosOpTimeout).
func runWorkload(ctx context.Context, cr *chaosRack, rec *chaos.Recorder, seed int64, clientsPerVolume int) (wait func()) {
	var wg sync.WaitGroup
	id := 0
	for _, v := range cr.volumes {
		for i := 0; i < clientsPerVolume; i++ {
			id++
			c := &chaosClient{id: id, cr: cr, vol: v, rec: rec, seq: map[uint64]uint64{},
				rng: rand.New(rand.NewPCG(uint64(seed), uint64(id)))}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.run(ctx)
			}()
		}
	}
	return wg.Wait
}

func (c *chaosClient) run(ctx context.Context) {
	defer func() {
		if c.conn != nil {
			closeChaosConn(c.conn)
		}
	}()
	buf := make([]byte, 4*chaos.BlockSize)
	for ctx.Err() == nil {
		if c.conn == nil && !c.dial(ctx) {
			continue
		}
		c.one(buf)
		// A little think time keeps histories checkable and leaves the
		// rack's CPU to the rack.
		time.Sleep(time.Duration(1+c.rng.IntN(8)) * time.Millisecond)
	}
}

// dial connects to the volume's host, or to the other host when the known
// one refuses (a handoff the harness has not seen yet).
func (c *chaosClient) dial(ctx context.Context) bool {
	hosts := []string{c.vol.attachedHost()}
	for _, h := range chaosHosts {
		if h != hosts[0] {
			hosts = append(hosts, h)
		}
	}
	for _, h := range hosts {
		conn, err := c.cr.dialVolume(h, c.vol.name, 5*time.Second)
		if err == nil {
			c.conn, c.host = conn, h
			return true
		}
	}
	select {
	case <-ctx.Done():
	case <-time.After(200 * time.Millisecond):
	}
	return false
}

// one issues one random request and records it.
func (c *chaosClient) one(buf []byte) {
	count := 1 + c.rng.IntN(4)
	block := uint64(c.rng.IntN(chaosBlocks - count + 1))
	off, length := block*chaos.BlockSize, uint32(count*chaos.BlockSize)
	op := chaos.Op{Client: c.id, Volume: c.vol.name, Block: block, Count: count}
	var err error
	deadline := time.Now().Add(chaosOpTimeout)
	switch p := c.rng.IntN(100); {
	case p < 50:
		op.Kind = chaos.Write
		c.ops++
		opID := uint64(c.id)<<40 | c.ops
		for i := 0; i < count; i++ {
			b := block + uint64(i)
			c.seq[b]++
			t := chaos.Tag{Client: uint32(c.id), Op: opID, Volume: uint32(c.vol.index), Block: b, Seq: c.seq[b]}
			op.Wrote = append(op.Wrote, t)
			chaos.EncodeBlock(t, buf[i*chaos.BlockSize:])
		}
		id := c.rec.Begin(op)
		c.conn.SetDeadline(deadline)
		err = c.conn.WriteAt(buf[:length], off, false)
		c.end(id, nil, err)
	case p < 80:
		op.Kind = chaos.Read
		id := c.rec.Begin(op)
		c.conn.SetDeadline(deadline)
		err = c.conn.ReadAt(buf[:length], off)
		var saw []chaos.Observed
		if err == nil {
			saw = observe(buf[:length])
		}
		c.end(id, saw, err)
	case p < 90:
		op.Kind = chaos.Trim
		id := c.rec.Begin(op)
		c.conn.SetDeadline(deadline)
		err = c.conn.Trim(off, length)
		c.end(id, nil, err)
	default:
		op.Kind, op.Block, op.Count = chaos.Flush, 0, 0
		id := c.rec.Begin(op)
		c.conn.SetDeadline(deadline)
		err = c.conn.Flush()
		c.end(id, nil, err)
	}
	if err != nil {
		// Unknown state on the wire, or the server refused (fenced after a
		// handoff, or failing): start over on a new connection.
		closeChaosConn(c.conn)
		c.conn = nil
	}
}

func (c *chaosClient) end(id int, saw []chaos.Observed, err error) {
	if err != nil {
		c.rec.End(id, chaos.Failed, nil, fmt.Errorf("%s: %w", c.host, err))
		return
	}
	c.rec.End(id, chaos.OK, saw, nil)
}

// observe decodes every block of buf.
func observe(buf []byte) []chaos.Observed {
	var saw []chaos.Observed
	for off := 0; off+chaos.BlockSize <= len(buf); off += chaos.BlockSize {
		t, content := chaos.DecodeBlock(buf[off : off+chaos.BlockSize])
		saw = append(saw, chaos.Observed{Content: content, Tag: t})
	}
	return saw
}

// readBack reads every volume whole after the faults
// healed, retrying each volume (on either host) for up to timeout.
func readBack(cr *chaosRack, timeout time.Duration) ([]chaos.FinalImage, error) {
	var images []chaos.FinalImage
	for _, v := range cr.volumes {
		deadline := time.Now().Add(timeout)
		var last error
		for {
			img, err := readVolume(cr, v)
			if err == nil {
				images = append(images, img)
				break
			}
			last = err
			if time.Now().After(deadline) {
				return images, fmt.Errorf("read back %s: %w", v.name, last)
			}
			time.Sleep(time.Second)
		}
	}
	return images, nil
}

func readVolume(cr *chaosRack, v *chaosVolume) (chaos.FinalImage, error) {
	hosts := []string{v.attachedHost()}
	for _, h := range chaosHosts {
		if h != hosts[0] {
			hosts = append(hosts, h)
		}
	}
	var conn *nbdclient.Conn
	var err error
	for _, h := range hosts {
		if conn, err = cr.dialVolume(h, v.name, 5*time.Second); err == nil {
			break
		}
	}
	if conn == nil {
		return chaos.FinalImage{}, err
	}
	defer closeChaosConn(conn)
	img := chaos.FinalImage{Volume: v.name}
	// The whole volume: the blocks past the workload's range must read
	// back zero.
	const chunk = 256
	buf := make([]byte, chunk*chaos.BlockSize)
	for b := 0; b < chaosVolumeBytes/chaos.BlockSize; b += chunk {
		conn.SetDeadline(time.Now().Add(chaosOpTimeout))
		if err := conn.ReadAt(buf, uint64(b)*chaos.BlockSize); err != nil {
			return chaos.FinalImage{}, err
		}
		img.Blocks = append(img.Blocks, observe(buf)...)
	}
	return img, nil
}

// closeChaosConn ends a workload connection without waiting long on a
// server that a fault keeps from reading.
func closeChaosConn(c *nbdclient.Conn) {
	c.SetDeadline(time.Now().Add(time.Second))
	c.Close()
}
