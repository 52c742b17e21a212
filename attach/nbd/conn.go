package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/ballast-storage/ballast/attach/blockdev"
	"github.com/ballast-storage/ballast/internal/bufpool"
	"github.com/ballast-storage/ballast/internal/inflight"
)

// The transmission phase of one connection.
//
//   - The reader (the connection's own goroutine) parses requests,
//     validates them, charges them to the budget, reads WRITE payloads and
//     starts a worker per request. It alone reads from the socket.
//   - A worker (at most MaxRequestsInFlight at once) calls the Backend,
//     or nothing for a refused request, and queues the reply.
//   - Whichever worker queues a reply while no one is writing becomes the
//     writer: it takes the whole queue, encodes it, writes it with one
//     writev, and repeats until the queue is empty. The others just queue
//     and leave. So replies are batched under load, and at low queue
//     depth a reply goes out without another goroutine hand-off.
//
// A request's budget and buffer are released once its reply is written
// (or dropped after a write error).
//
// BLOCK_STATUS, when the Backend implements blockdev.Allocator, asks it
// in the worker, like a READ, and encodes the descriptors into a pooled
// 4 KiB buffer (maxBlockStatusDescriptors of 8 bytes) that the writer
// copies into the batch. That buffer is not charged to the byte budget:
// MaxRequestsInFlight already bounds it to 4 KiB a request.

const (
	readBufferSize  = 128 << 10 // socket read buffer (handshake and requests)
	writeBufferSize = 256 << 10 // headers and small payloads of one batch
	inlineDataMax   = 8 << 10   // READ data up to this size is copied into the batch
)

// op is one request, from being read until its reply is written.
type op struct {
	req   request
	buf   *[]byte // pooled buffer (READ data, WRITE payload, BLOCK_STATUS descriptors) or nil
	data  []byte  // (*buf)[:req.Length], or the encoded descriptors
	cost  int     // payload bytes charged to the budget
	errno Errno   // 0 on success
	msg   string  // error message for a structured error chunk
}

var opPool = sync.Pool{New: func() any { return new(op) }}

// conn serves one connection's transmission phase.
type conn struct {
	nc      net.Conn
	br      *bufio.Reader
	log     *slog.Logger
	backend Backend
	alloc   blockdev.Allocator // the backend's, if base:allocation was selected; else nil
	st      exportState

	ctx    context.Context // canceled when the connection is torn down
	cancel context.CancelFunc

	budget  *inflight.Limit // this connection's requests in flight
	shared  *inflight.Limit // every connection's, or nil
	workers sync.WaitGroup

	wmu     sync.Mutex
	queue   []*op // replies waiting to be written
	spare   []*op // the writer's previous batch, to reuse
	writing bool  // a worker is writing and will take the queue
	rw      replyWriter
}

// errDisconnect is the reader's way of saying the client sent DISC.
var errDisconnect = errors.New("nbd: client sent DISC")

// protocolError marks a violation after which the byte stream cannot be
// trusted: the connection is closed at once.
type protocolError struct{ err error }

func (e protocolError) Error() string { return e.err.Error() }
func (e protocolError) Unwrap() error { return e.err }

// serve runs the transmission phase until the client disconnects, breaks
// the protocol, or ctx ends. It returns once every worker has finished
// and every reply is written or dropped; the caller closes the socket and
// the backend.
func (c *conn) serve() {
	c.rw = replyWriter{w: c.nc, structured: c.st.Structured, small: make([]byte, 0, writeBufferSize)}
	if a, ok := c.backend.(blockdev.Allocator); ok && c.st.MetaContext {
		c.alloc = a
	}
	err := c.readLoop()
	var perr protocolError
	switch {
	case errors.As(err, &perr):
		// Framing is lost: drop in-flight replies too.
		c.log.Warn("NBD connection closed: protocol violation", "reason", err)
		c.abort()
	case errors.Is(err, errDisconnect):
		c.log.Debug("NBD client disconnected")
	case c.ctx.Err() != nil:
		c.log.Debug("NBD connection closed by the server")
	case isEOF(err):
		c.log.Debug("NBD client closed the connection without DISC")
	default:
		c.log.Info("NBD connection read failed", "err", err)
	}
	// DISC, EOF or a read error: finish the requests in flight and send
	// their replies (if the socket still takes them), then close.
	c.workers.Wait()
}

// abort tears the connection down: backend calls are canceled and the
// socket is closed, so the reader and the writer fail fast.
func (c *conn) abort() {
	c.cancel()
	_ = c.nc.Close()
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// readLoop reads requests until DISC, an error, or a protocol violation.
func (c *conn) readLoop() error {
	var hb [requestHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return err
		}
		req, err := parseRequest(hb[:])
		if err != nil {
			return protocolError{err}
		}
		if req.Type == cmdDisc {
			return errDisconnect
		}
		if req.Type == cmdWrite && req.Length > MaxBlockSize {
			return protocolError{fmt.Errorf("nbd: WRITE of %d bytes exceeds the maximum block size %d", req.Length, MaxBlockSize)}
		}
		errno, msg := validateRequest(req, c.st)
		if errno != 0 {
			c.log.Debug("NBD request refused", "cmd", commandName(req.Type), "offset", req.Offset, "length", req.Length, "flags", req.Flags, "errno", uint32(errno), "reason", msg)
			if req.Type == cmdWrite {
				// Keep the stream in step: the payload follows anyway.
				if _, err := c.br.Discard(int(req.Length)); err != nil {
					return err
				}
			}
		}
		n := 0
		if errno == 0 && (req.Type == cmdRead || req.Type == cmdWrite) {
			n = int(req.Length) // ≤ MaxBlockSize, checked above
		}
		// Nothing more is read from the socket until the request fits:
		// its payload is not read, nor allocated, before then.
		if err := c.budget.Acquire(c.ctx, int64(n)); err != nil {
			return err
		}
		if c.shared != nil {
			if err := c.shared.Acquire(c.ctx, int64(n)); err != nil {
				c.budget.Release(int64(n))
				return err
			}
		}
		o := opPool.Get().(*op)
		o.req, o.cost, o.errno, o.msg = req, n, errno, msg
		if n > 0 {
			o.buf = bufpool.Get(n)
			o.data = (*o.buf)[:n]
			if req.Type == cmdWrite {
				if _, err := io.ReadFull(c.br, o.data); err != nil {
					c.release(o)
					return err
				}
			}
		}
		c.workers.Add(1)
		go c.execute(o)
	}
}

// execute runs one request against the backend (unless it was refused)
// and replies.
func (c *conn) execute(o *op) {
	defer c.workers.Done()
	if o.errno == 0 {
		c.run(o)
	}
	c.reply(o)
}

func (c *conn) run(o *op) {
	r := o.req
	fua := r.Flags&cmdFlagFUA != 0
	var err error
	switch r.Type {
	case cmdRead:
		if r.Length > 0 {
			err = c.backend.ReadAt(c.ctx, o.data, r.Offset)
		}
	case cmdWrite:
		if r.Length > 0 {
			err = c.backend.WriteAt(c.ctx, o.data, r.Offset, fua)
		}
	case cmdFlush:
		err = c.backend.Flush(c.ctx)
	case cmdTrim:
		if r.Length > 0 {
			err = c.backend.Trim(c.ctx, r.Offset, uint64(r.Length))
		}
		if err == nil && fua {
			err = c.backend.Flush(c.ctx) // Trim has no FUA of its own
		}
	case cmdWriteZeroes:
		if r.Length > 0 {
			err = c.backend.WriteZeroes(c.ctx, r.Offset, uint64(r.Length), r.Flags&cmdFlagNoHole != 0)
		}
		if err == nil && fua {
			err = c.backend.Flush(c.ctx) // WriteZeroes has no FUA of its own
		}
	case cmdBlockStatus:
		if c.alloc != nil {
			err = c.blockStatus(o)
		}
		// Otherwise every extent is reported allocated (status 0), which
		// is always true enough: the reply encodes it.
	}
	if err != nil {
		o.errno = errnoOf(err)
		if c.ctx.Err() != nil {
			o.errno = ESHUTDOWN
		}
		o.msg = err.Error()
		level := slog.LevelDebug
		if o.errno == EIO {
			level = slog.LevelWarn
		}
		c.log.Log(context.Background(), level, "NBD request failed", "cmd", commandName(r.Type), "offset", r.Offset, "length", r.Length, "errno", uint32(o.errno), "err", err)
	}
}

// blockStatus asks the backend for the allocation of o's range and
// encodes the descriptors into o.data. A result that cannot be encoded
// is an error (EIO), never an invalid reply.
func (c *conn) blockStatus(o *op) error {
	r := o.req
	exts, err := c.alloc.Allocation(c.ctx, r.Offset, uint64(r.Length))
	if err != nil {
		return err
	}
	o.buf = bufpool.Get(maxBlockStatusDescriptors * descriptorLen)
	o.data, err = appendAllocation((*o.buf)[:0], r.Offset, r.Length, r.Flags&cmdFlagReqOne != 0, exts)
	if err != nil {
		o.data = nil
	}
	return err
}

// reply queues o's reply. If no one is writing, the caller becomes the
// writer and writes batches until the queue is empty.
func (c *conn) reply(o *op) {
	c.wmu.Lock()
	c.queue = append(c.queue, o)
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare
		c.wmu.Unlock()

		for _, o := range batch {
			c.rw.add(o)
		}
		if err := c.rw.flush(); err != nil && !c.rw.reported {
			c.rw.reported = true
			if c.ctx.Err() == nil {
				c.log.Info("NBD connection write failed", "err", err)
			}
			c.abort()
		}
		for i, o := range batch {
			c.release(o)
			batch[i] = nil
		}

		c.wmu.Lock()
		c.spare = batch[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// release returns a request's budget and buffer once its reply is
// written (or dropped).
func (c *conn) release(o *op) {
	c.budget.Release(int64(o.cost))
	if c.shared != nil {
		c.shared.Release(int64(o.cost))
	}
	bufpool.Put(o.buf)
	*o = op{}
	opPool.Put(o)
}

// replyWriter gathers encoded replies into one batch: headers and small
// payloads are copied into small, large payloads are referenced in place,
// and the batch goes out in one writev.
type replyWriter struct {
	w          io.Writer
	structured bool
	err        error // the first write error; later batches are dropped
	reported   bool  // err was logged

	small []byte      // never grows past its capacity
	mark  int         // small[:mark] is already referenced by bufs
	bufs  net.Buffers // the batch, in order
	iov   net.Buffers // bufs as WriteTo consumes it
}

// add encodes o's reply into the batch.
func (w *replyWriter) add(o *op) {
	r := o.req
	need := chunkHeaderLen + 16 + min(len(o.msg), maxErrorMessageLen)
	if r.Type == cmdBlockStatus {
		need += len(o.data) // descriptors: at most 4 KiB
	}
	if len(w.small)+need > cap(w.small) {
		w.cut()
	}
	var data []byte
	switch {
	case !w.structured:
		w.small = appendSimpleReply(w.small, o.errno, r.Cookie)
		if r.Type == cmdRead && o.errno == 0 {
			data = o.data
		}
	case o.errno != 0:
		w.small = appendErrorChunk(w.small, r.Cookie, o.errno, o.msg)
	case r.Type == cmdRead && len(o.data) == 0:
		w.small = appendChunkHeader(w.small, replyFlagDone, replyTypeNone, r.Cookie, 0)
	case r.Type == cmdRead:
		// One chunk for the whole read: that honours DF as well.
		w.small = appendOffsetDataHeader(w.small, replyFlagDone, r.Cookie, r.Offset, uint32(len(o.data)))
		data = o.data
	case r.Type == cmdBlockStatus && len(o.data) > 0:
		// The backend's allocation, encoded by the worker.
		w.small = appendBlockStatusHeader(w.small, r.Cookie, baseAllocationID, len(o.data))
		w.small = append(w.small, o.data...)
	case r.Type == cmdBlockStatus:
		w.small = appendBlockStatusChunk(w.small, r.Cookie, baseAllocationID, r.Length, 0)
	default:
		// A simple reply is allowed for anything but READ, and is shorter.
		w.small = appendSimpleReply(w.small, 0, r.Cookie)
	}
	if len(data) > 0 {
		if len(data) <= inlineDataMax && len(w.small)+len(data) <= cap(w.small) {
			w.small = append(w.small, data...)
		} else {
			w.cut()
			w.bufs = append(w.bufs, data)
		}
	}
}

// cut ends the current run of small and starts a new one, so that a
// referenced payload can follow it in the batch. If small is full, the
// batch is written first.
func (w *replyWriter) cut() {
	if w.mark < len(w.small) {
		w.bufs = append(w.bufs, w.small[w.mark:len(w.small):len(w.small)])
		w.mark = len(w.small)
	}
	if cap(w.small)-len(w.small) < chunkHeaderLen+16+maxErrorMessageLen+inlineDataMax {
		w.send()
	}
}

// flush writes the batch. Its requests may be released after.
func (w *replyWriter) flush() error {
	w.cut()
	w.send()
	return w.err
}

func (w *replyWriter) send() {
	if w.err == nil && len(w.bufs) > 0 {
		w.iov = w.bufs // WriteTo consumes its receiver
		_, w.err = w.iov.WriteTo(w.w)
	}
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.small = w.small[:0]
	w.mark = 0
}
