package nvmetcp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/internal/bufpool"
	"github.com/ballast-storage/ballast/internal/inflight"
)

// One connection: one queue (admin or I/O) of one controller.
//
//   - The reader (the connection's own goroutine) does the IC exchange,
//     then parses PDUs: it reads commands with their in-capsule data and
//     H2CData into the buffer of the command that asked for it with an
//     R2T. It alone reads from the socket. It runs Connect itself (nothing
//     else can happen on a queue before it); then it hands admin commands
//     to the admin worker, in order, and starts a goroutine per I/O
//     command. It never blocks on them, so data for an R2T always gets
//     read; the host's queue size bounds the commands in flight.
//   - The admin worker (admin queue only) runs admin commands one at a
//     time, in submission order.
//   - Whichever goroutine queues a PDU while nobody is writing becomes the
//     writer: it takes the whole queue, encodes it, writes it with one
//     writev, and repeats until the queue is empty.
//
// A command's buffers and budget are released once its response is
// written (or dropped because the connection is going away).

const (
	readBufferSize = 128 << 10
	smallBatchSize = 128 << 10 // headers and small data of one batch
	inlineDataMax  = 8 << 10   // data up to this size is copied into the batch
)

// op is one command, from being read until its response is written.
type op struct {
	c   *conn
	cmd Command

	capBuf  *[]byte // pooled in-capsule data buffer
	capsule []byte  // in-capsule data
	xferBuf *[]byte // pooled data buffer (read data, R2T data)
	cost    int     // bytes charged to the budget

	h2c []byte // data from the host (in-capsule or by R2T), once fetched

	// R2T transfer, filled by the reader.
	ttag  uint16
	need  int
	got   int
	ready chan struct{} // closed when all R2T data is in

	cqe       Completion
	c2h       []byte // data to the host, sent before the response
	c2hDigest uint32
	after     func() // runs once the response is written or dropped
}

// outItem is a PDU the writer is to send.
type outItem struct {
	o   *op
	r2t bool // an R2T for o; otherwise o's response
}

type conn struct {
	t    *Target
	cfg  config
	nc   net.Conn
	br   *bufio.Reader
	port *port
	log  *slog.Logger
	// refuse, if set, is why this connection is over the target's limit:
	// its Connect is answered Controller Busy and it is closed.
	refuse string

	ctx    context.Context // canceled when the connection is torn down
	cancel context.CancelFunc

	dg       digests
	c2hPad   int // padding before C2H data, for the host's HPDA
	limits   rxLimits
	hdr      [maxPDUHeaderBytes + digestLen]byte
	readDone chan struct{} // closed when the reader has stopped reading

	// Set by Connect, on the reader, before any worker starts.
	ctrl    *controller
	qid     uint16
	entries int // queue size
	sqhd    atomic.Uint32
	adminCh chan *op

	budget  *inflight.Limit // this connection's data bytes in flight
	shared  *inflight.Limit // every connection's, or nil
	workers sync.WaitGroup

	mu struct {
		sync.Mutex
		outstanding int
		transfers   map[uint16]*op
		nextTag     uint16
	}

	wmu     sync.Mutex
	queue   []outItem
	spare   []outItem
	writing bool
	wdead   bool       // the connection is ending: drop what is queued
	sendMu  sync.Mutex // held while writing to the socket
	bw      batchWriter
}

func newConn(t *Target, nc net.Conn, p *port, cfg config) *conn {
	c := &conn{
		t: t, cfg: cfg, nc: nc, port: p,
		br:       bufio.NewReaderSize(nc, readBufferSize),
		log:      cfg.log,
		budget:   inflight.New(0, int64(cfg.maxBytes)),
		shared:   t.Shared,
		readDone: make(chan struct{}),
	}
	if a := nc.RemoteAddr(); a != nil {
		c.log = c.log.With("remote", a.String())
	}
	c.mu.transfers = make(map[uint16]*op)
	c.bw = batchWriter{w: nc, small: make([]byte, 0, smallBatchSize)}
	return c
}

// abort tears the connection down: device calls are canceled and the
// socket is closed, so the reader and the writer fail fast.
func (c *conn) abort() {
	c.cancel()
	_ = c.nc.Close()
}

// protocolError is a fatal transport error with the header in error.
type protocolError struct {
	fe  *fatalError
	hdr []byte
}

func (e *protocolError) Error() string { return e.fe.Error() }

var errHostTerminated = errors.New("nvmetcp: host sent H2CTermReq")

// errRefused ends a connection over the target's limit once its Connect
// is answered.
var errRefused = errors.New("nvmetcp: connection refused: too many connections")

// serve runs the connection until the host leaves, breaks the protocol,
// or ctx ends.
func (c *conn) serve() {
	stop := context.AfterFunc(c.ctx, func() { _ = c.nc.Close() })
	defer stop()
	defer c.nc.Close()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	err := c.readLoop()
	var perr *protocolError
	switch {
	case errors.As(err, &perr):
		c.log.Warn("NVMe/TCP connection terminated: protocol violation", "reason", perr.fe.msg, "fes", perr.fe.fes)
		c.terminate(perr)
	case errors.Is(err, errRefused):
		c.log.Debug("NVMe/TCP refused connection closed", "reason", c.refuse)
	case errors.Is(err, errHostTerminated):
		c.log.Warn("NVMe/TCP host terminated the connection", "err", err)
		c.abort()
	case c.ctx.Err() != nil:
		c.log.Debug("NVMe/TCP connection closed by the target")
	case isEOF(err):
		c.log.Debug("NVMe/TCP host closed the connection")
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Info("NVMe/TCP connection timed out before Connect")
	default:
		c.log.Info("NVMe/TCP connection read failed", "err", err)
	}
	close(c.readDone)
	if c.adminCh != nil {
		close(c.adminCh)
	}
	c.workers.Wait()
	if c.ctrl != nil {
		c.ctrl.detach(c)
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// terminate sends a C2HTermReq and ends the connection.
func (c *conn) terminate(perr *protocolError) {
	c.wmu.Lock()
	c.wdead = true
	c.wmu.Unlock()
	// A write in progress to a host that does not read fails by then.
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.sendMu.Lock()
	_, _ = c.nc.Write(appendTermReq(nil, pduC2HTermReq, perr.fe.fes, perr.fe.fei, perr.hdr))
	c.sendMu.Unlock()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	c.abort()
}

// readLoop does the IC exchange and reads PDUs until an error.
func (c *conn) readLoop() error {
	timeout := c.cfg.connectTimeout
	if c.refuse != "" {
		timeout = min(timeout, refuseTimeout)
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	if err := c.initialize(); err != nil {
		return err
	}
	for {
		hdr := c.hdr[:]
		if _, err := io.ReadFull(c.br, hdr[:commonHeaderLen]); err != nil {
			return err
		}
		f, fe := c.limits.frameAfterIC(hdr[:commonHeaderLen])
		if fe != nil {
			return &protocolError{fe, hdr[:commonHeaderLen]}
		}
		if _, err := io.ReadFull(c.br, hdr[commonHeaderLen:f.hdrLen]); err != nil {
			return err
		}
		if f.h.Type == pduH2CTermReq {
			te := parseTermReqError(hdr[:f.hdrLen])
			return fmt.Errorf("%w: %w", errHostTerminated, te)
		}
		hl := int(f.h.HLen)
		if c.dg.header && !verifyHeaderDigest(hdr[:f.hdrLen], hl) {
			return &protocolError{fatalf(fesHeaderDigestError, 0, "header digest mismatch"), hdr[:hl]}
		}
		if f.pad > 0 {
			if _, err := c.br.Discard(f.pad); err != nil {
				return err
			}
		}
		var err error
		switch f.h.Type {
		case pduCapsuleCmd:
			err = c.readCapsule(f, hdr[:hl])
		case pduH2CData:
			err = c.readH2CData(f, hdr[:hl])
		}
		if err != nil {
			return err
		}
	}
}

// initialize answers the host's ICReq.
func (c *conn) initialize() error {
	b := c.hdr[:icPDULen]
	if _, err := io.ReadFull(c.br, b[:commonHeaderLen]); err != nil {
		return err
	}
	h, _ := parseHeader(b)
	if h.Type != pduICReq || h.HLen != icPDULen || h.PLen != icPDULen {
		// Do not wait for bytes that may never come: check the common
		// header alone first.
		_, fe := parseICReq(append(b[:commonHeaderLen:commonHeaderLen], make([]byte, icPDULen-commonHeaderLen)...))
		return &protocolError{fe, b[:commonHeaderLen]}
	}
	if _, err := io.ReadFull(c.br, b[commonHeaderLen:]); err != nil {
		return err
	}
	req, fe := parseICReq(b)
	if fe != nil {
		return &protocolError{fe, b}
	}
	c.dg = digests{header: req.Digest&digestHeaderFlag != 0, data: req.Digest&digestDataFlag != 0}
	c.c2hPad = 0
	if align := (int(req.HPDA) + 1) * 4; req.HPDA > 0 {
		hl := dataHdrLen + c.dg.hdgstLen()
		c.c2hPad = (align - hl%align) % align
	}
	c.limits = rxLimits{
		dg:             c.dg,
		maxCapsuleData: max(c.cfg.inCapsule, adminInCapsuleBytes),
		maxH2CData:     c.cfg.maxTransfer,
	}
	resp := appendICResp(nil, icResp{Digest: req.Digest, MaxH2CData: uint32(c.cfg.maxTransfer)})
	c.sendMu.Lock()
	_, err := c.nc.Write(resp)
	c.sendMu.Unlock()
	return err
}

// readCapsule reads a command's in-capsule data and hands the command on.
func (c *conn) readCapsule(f frame, hdr []byte) error {
	o := &op{c: c, cmd: parseCommand(hdr[commonHeaderLen:])}
	if f.dataLen > 0 {
		o.capBuf = bufpool.Get(f.dataLen)
		o.capsule = (*o.capBuf)[:f.dataLen]
		if err := c.readData(f, o.capsule, hdr); err != nil {
			bufpool.Put(o.capBuf)
			return err
		}
	}
	if c.ctrl != nil {
		c.ctrl.touch()
	}
	c.mu.Lock()
	limit := max(c.entries, 1)
	if n := c.mu.outstanding; n >= limit {
		c.mu.Unlock()
		bufpool.Put(o.capBuf)
		return &protocolError{fatalf(fesPDUSequenceError, 0, "command %d beyond the queue size %d", n+1, limit), hdr}
	}
	c.mu.outstanding++
	c.mu.Unlock()
	if c.ctrl == nil {
		c.connect(o)
		if c.refuse != "" {
			return errRefused
		}
		return nil
	}
	if c.entries > 0 {
		for {
			old := c.sqhd.Load()
			if c.sqhd.CompareAndSwap(old, (old+1)%uint32(c.entries)) {
				break
			}
		}
	}
	if c.qid == 0 {
		c.adminCh <- o // never blocks: it holds a queue's worth
		return nil
	}
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		o.cqe.Status = c.ctrl.execIO(c, o)
		if !o.cqe.Status.OK() {
			c.log.Debug("NVMe I/O command refused", "opcode", o.cmd.Opcode, "status", o.cqe.Status)
		}
		c.respond(o)
	}()
	return nil
}

// readData reads a PDU's data into dst and checks its digest.
func (c *conn) readData(f frame, dst []byte, hdr []byte) error {
	if _, err := io.ReadFull(c.br, dst); err != nil {
		return err
	}
	if f.ddgst {
		var d [digestLen]byte
		if _, err := io.ReadFull(c.br, d[:]); err != nil {
			return err
		}
		if crc32c(dst) != binary.LittleEndian.Uint32(d[:]) {
			// The transport spec lets a controller fail just the command
			// (Transient Transport Error); we end the connection, as a
			// corrupted stream is not worth trusting further.
			return &protocolError{fatalf(fesHeaderDigestError, 0, "data digest mismatch"), hdr}
		}
	}
	return nil
}

// readH2CData reads data the target asked for with an R2T.
func (c *conn) readH2CData(f frame, hdr []byte) error {
	d := parseDataPDU(hdr)
	c.mu.Lock()
	o := c.mu.transfers[d.TTag]
	c.mu.Unlock()
	switch {
	case o == nil:
		return &protocolError{fatalf(fesInvalidHeaderField, 10, "H2CData for unknown TTAG %d", d.TTag), hdr}
	case d.CCCID != o.cmd.CID:
		return &protocolError{fatalf(fesInvalidHeaderField, 8, "H2CData CCCID %d, TTAG %d belongs to %d", d.CCCID, d.TTag, o.cmd.CID), hdr}
	case int(d.DataL) != f.dataLen:
		return &protocolError{fatalf(fesInvalidHeaderField, 16, "H2CData DATAL %d with %d data bytes", d.DataL, f.dataLen), hdr}
	case int(d.DataO) != o.got:
		return &protocolError{fatalf(fesDataOutOfRange, 12, "H2CData DATAO %d, expected %d", d.DataO, o.got), hdr}
	case o.got+f.dataLen > o.need:
		return &protocolError{fatalf(fesDataOutOfRange, 16, "H2CData beyond the R2T: %d+%d of %d", d.DataO, d.DataL, o.need), hdr}
	case f.h.Flags&flagDataLast != 0 && o.got+f.dataLen != o.need:
		return &protocolError{fatalf(fesPDUSequenceError, 1, "H2CData LAST at %d of %d", o.got+f.dataLen, o.need), hdr}
	}
	if err := c.readData(f, o.h2c[o.got:o.got+f.dataLen], hdr); err != nil {
		return err
	}
	o.got += f.dataLen
	if o.got == o.need {
		c.mu.Lock()
		delete(c.mu.transfers, o.ttag)
		c.mu.Unlock()
		close(o.ready)
	}
	return nil
}

// connect runs a Connect (or refuses anything else) on a queue that is
// not connected yet.
func (c *conn) connect(o *op) {
	st := c.checkCommon(o)
	if st.OK() && (o.cmd.Opcode != opFabrics || o.cmd.fctype() != fctConnect) {
		st = statusCmdSeqError
	}
	if st.OK() && c.refuse != "" {
		// Busy, not DNR: the host may try again once a queue is gone.
		c.log.Info("NVMe/TCP Connect refused", "reason", c.refuse)
		st = statusConnectControllerBusy
	}
	if st.OK() {
		st = c.t.connect(c, o)
	}
	o.cqe.Status = st
	c.respond(o)
}

// connect admits a queue: the admin queue creates a controller, an I/O
// queue joins one.
func (t *Target) connect(c *conn, o *op) Status {
	cc := parseConnectCmd(&o.cmd)
	if cc.RecFmt != 0 {
		return statusConnectIncompatFormat
	}
	if o.cmd.SGL.Type != sglDataBlockOffset {
		// Connect data must come in the capsule: the reader, which would
		// receive it after an R2T, is busy running this Connect.
		return statusSGLTypeInvalid
	}
	if st := c.fetchData(o); !st.OK() {
		return st
	}
	if len(o.h2c) != connectDataLen {
		return statusSGLLengthInvalid
	}
	d, bad := parseConnectData(o.h2c)
	invalid := func(dw0 uint32) Status {
		o.cqe.DW0 = dw0
		return statusConnectInvalidParam
	}
	switch {
	case bad >= 0:
		return invalid(ipoConnectData(bad))
	case cc.SQSize == 0 || int(cc.SQSize) >= c.cfg.maxQueueSize:
		return invalid(ipoConnectSQE(connectSQSizeOff))
	}
	log := c.log.With("subnqn", d.SubNQN, "hostnqn", d.HostNQN)
	var ctl *controller
	if cc.QID == 0 {
		if d.Cntlid != dynamicCntlid {
			return invalid(ipoConnectData(connectCntlidOff))
		}
		if !t.allowed(d.SubNQN, d.HostNQN) {
			log.Info("NVMe/TCP host not allowed")
			return statusConnectInvalidHost
		}
		var ns Namespace
		if d.SubNQN != DiscoveryNQN {
			ctx, cancel := context.WithTimeout(c.ctx, c.cfg.connectTimeout)
			var err error
			ns, err = t.Subsystems.Open(ctx, d.SubNQN)
			cancel()
			if errors.Is(err, ErrUnknownSubsystem) {
				log.Info("NVMe/TCP Connect to an unknown subsystem")
				return invalid(ipoConnectData(connectSubNQNOff))
			}
			if err != nil {
				log.Warn("NVMe/TCP Connect: opening the namespace failed", "err", err)
				return mkStatus(sctCommandSpecific, 0x81, false) // Controller Busy: try again
			}
		}
		ctl = newController(t, c.cfg, d.SubNQN, d.HostNQN, d.HostID, ns)
		if !t.register(ctl) {
			if ns.Device != nil {
				_ = ns.Device.Close()
			}
			return mkStatus(sctCommandSpecific, 0x81, false)
		}
		ctl.log = c.log.With("cntlid", ctl.cntlid, "subnqn", d.SubNQN)
		if !ctl.attach(c, 0) {
			return mkStatus(sctCommandSpecific, 0x81, false)
		}
		ctl.mu.Lock()
		ctl.setKATOLocked(time.Duration(cc.KATO) * time.Millisecond)
		ctl.mu.Unlock()
		o.cqe.DW0 = uint32(ctl.cntlid)
		ctl.log.Info("NVMe/TCP controller created", "hostnqn", d.HostNQN, "kato_ms", cc.KATO, "digests", fmt.Sprintf("%+v", c.dg))
	} else {
		ctl = t.lookup(d.Cntlid)
		switch {
		case ctl == nil:
			return invalid(ipoConnectData(connectCntlidOff))
		case ctl.subNQN != d.SubNQN:
			return invalid(ipoConnectData(connectSubNQNOff))
		case ctl.hostNQN != d.HostNQN:
			return invalid(ipoConnectData(connectHostNQNOff))
		case ctl.hostID != d.HostID:
			return invalid(ipoConnectData(connectHostIDOff))
		case ctl.discovery || cc.QID > ctl.maxQID():
			return invalid(ipoConnectSQE(connectQIDOff))
		case ctl.hasQueue(cc.QID):
			return statusCmdSeqError
		}
		if !ctl.attach(c, cc.QID) {
			return invalid(ipoConnectData(connectCntlidOff))
		}
		ctl.touch()
		o.cqe.DW0 = uint32(ctl.cntlid)
		ctl.log.Debug("NVMe/TCP I/O queue connected", "qid", cc.QID, "size", int(cc.SQSize)+1)
	}
	c.ctrl = ctl
	c.qid = cc.QID
	c.entries = int(cc.SQSize) + 1
	c.sqhd.Store(1)
	c.log = c.log.With("cntlid", ctl.cntlid, "qid", c.qid)
	_ = c.nc.SetReadDeadline(time.Time{})
	if c.qid == 0 {
		c.adminCh = make(chan *op, c.entries)
		c.workers.Add(1)
		go func() {
			defer c.workers.Done()
			for o := range c.adminCh {
				if c.ctx.Err() != nil {
					c.drop(o)
					continue
				}
				ctl.execAdmin(c, o)
			}
		}()
	}
	return statusSuccess
}

// checkCommon checks what every fabrics command must have right: no
// fused operation, an SGL, and an SGL descriptor type we know.
func (c *conn) checkCommon(o *op) Status {
	cmd := &o.cmd
	if cmd.Flags&3 != 0 || cmd.Flags&0xC0 != cmdFlagSGL {
		return statusInvalidField
	}
	switch cmd.SGL.Type {
	case sglDataBlockOffset:
		if !hostToController(cmd.Opcode) {
			return statusInvalidField // in-capsule data only goes to the controller
		}
	case sglTransportDataBlockA:
	default:
		if cmd.SGL.Length != 0 {
			return statusSGLTypeInvalid
		}
	}
	return statusSuccess
}

// checkC2H checks a command that returns data.
func (c *conn) checkC2H(o *op) Status {
	sgl := o.cmd.SGL
	switch {
	case sgl.Type != sglTransportDataBlockA:
		return statusSGLTypeInvalid
	case int64(sgl.Length) > int64(c.cfg.maxTransfer):
		return statusInvalidField
	case len(o.capsule) > 0:
		return statusSGLLengthInvalid
	}
	return statusSuccess
}

// allocData gives o a data buffer of n bytes, charged to the budget.
func (c *conn) allocData(o *op, n int) ([]byte, Status) {
	if n == 0 {
		return nil, statusSuccess
	}
	if err := c.budget.Acquire(c.ctx, int64(n)); err != nil {
		return nil, statusAbortSQDeleted
	}
	if c.shared != nil {
		if err := c.shared.Acquire(c.ctx, int64(n)); err != nil {
			c.budget.Release(int64(n))
			return nil, statusAbortSQDeleted
		}
	}
	o.cost = n
	o.xferBuf = bufpool.Get(n)
	return (*o.xferBuf)[:n], statusSuccess
}

// fetchData gets the data a command sends to the controller: from the
// capsule, or by an R2T and the H2CData PDUs that answer it. It sets
// o.h2c.
func (c *conn) fetchData(o *op) Status {
	sgl := o.cmd.SGL
	switch {
	case sgl.Length == 0:
		if len(o.capsule) > 0 {
			return statusSGLLengthInvalid
		}
		return statusSuccess
	case sgl.Type == sglDataBlockOffset:
		if sgl.Addr > uint64(len(o.capsule)) {
			return statusSGLOffsetInvalid
		}
		if uint64(sgl.Length) != uint64(len(o.capsule))-sgl.Addr {
			return statusSGLLengthInvalid
		}
		o.h2c = o.capsule[sgl.Addr:]
		return statusSuccess
	case sgl.Type != sglTransportDataBlockA:
		return statusSGLTypeInvalid
	case len(o.capsule) > 0:
		return statusSGLLengthInvalid
	case int64(sgl.Length) > int64(c.cfg.maxTransfer):
		return statusInvalidField
	}
	data, st := c.allocData(o, int(sgl.Length))
	if !st.OK() {
		return st
	}
	o.h2c = data
	o.need = len(data)
	o.ready = make(chan struct{})
	c.mu.Lock()
	for {
		c.mu.nextTag++
		if _, used := c.mu.transfers[c.mu.nextTag]; !used {
			break
		}
	}
	o.ttag = c.mu.nextTag
	c.mu.transfers[o.ttag] = o
	c.mu.Unlock()
	c.enqueue(outItem{o: o, r2t: true})
	select {
	case <-o.ready:
		return statusSuccess
	case <-c.readDone:
	case <-c.ctx.Done():
	}
	select {
	case <-o.ready:
		return statusSuccess
	default:
	}
	// The reader may be writing into the buffer until it stops.
	c.abort()
	<-c.readDone
	return statusAbortSQDeleted
}

// respond queues o's response.
func (c *conn) respond(o *op) {
	o.cqe.CID = o.cmd.CID
	o.cqe.SQID = c.qid
	if !o.cqe.Status.OK() {
		o.c2h = nil
	}
	if len(o.c2h) > 0 && c.dg.data {
		o.c2hDigest = crc32c(o.c2h)
	}
	c.enqueue(outItem{o: o})
}

// drop releases a command that gets no response.
func (c *conn) drop(o *op) {
	c.finish(o)
}

// finish releases a command once its response is written or dropped.
func (c *conn) finish(o *op) {
	if o.ready != nil {
		c.mu.Lock()
		if c.mu.transfers[o.ttag] == o {
			delete(c.mu.transfers, o.ttag)
		}
		c.mu.Unlock()
	}
	if o.cost > 0 {
		c.budget.Release(int64(o.cost))
		if c.shared != nil {
			c.shared.Release(int64(o.cost))
		}
	}
	bufpool.Put(o.capBuf)
	bufpool.Put(o.xferBuf)
	c.mu.Lock()
	c.mu.outstanding--
	c.mu.Unlock()
	if o.after != nil {
		o.after()
	}
	*o = op{}
}

// enqueue queues a PDU. If no one is writing, the caller becomes the
// writer and writes batches until the queue is empty.
func (c *conn) enqueue(it outItem) {
	c.wmu.Lock()
	if c.wdead {
		c.wmu.Unlock()
		if !it.r2t {
			c.finish(it.o)
		}
		return
	}
	c.queue = append(c.queue, it)
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare
		dead := c.wdead
		c.wmu.Unlock()

		var err error
		if !dead {
			c.sendMu.Lock()
			for _, it := range batch {
				c.encode(it)
			}
			err = c.bw.flush()
			c.sendMu.Unlock()
		}
		if err != nil && c.ctx.Err() == nil {
			c.log.Info("NVMe/TCP connection write failed", "err", err)
			c.abort()
		}
		for i, it := range batch {
			if !it.r2t {
				c.finish(it.o)
			}
			batch[i] = outItem{}
		}

		c.wmu.Lock()
		if err != nil {
			c.wdead = true
		}
		c.spare = batch[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// encode adds one PDU (and its data) to the batch.
func (c *conn) encode(it outItem) {
	o := it.o
	w := &c.bw
	if it.r2t {
		w.ensure(r2tLen + digestLen)
		w.small = appendR2T(w.small, r2tPDU{CCCID: o.cmd.CID, TTag: o.ttag, R2TO: 0, R2TL: uint32(o.need)}, c.dg)
		return
	}
	if len(o.c2h) > 0 {
		w.ensure(dataHdrLen + digestLen + c.c2hPad)
		w.small = appendDataHeader(w.small, pduC2HData, flagDataLast,
			dataPDU{CCCID: o.cmd.CID, DataL: uint32(len(o.c2h))}, c.c2hPad, c.dg)
		w.data(o.c2h)
		if c.dg.data {
			w.ensure(digestLen)
			w.small = binary.LittleEndian.AppendUint32(w.small, o.c2hDigest)
		}
	}
	o.cqe.SQHD = uint16(c.sqhd.Load())
	w.ensure(capsuleRespLen + digestLen)
	w.small = appendCapsuleResp(w.small, &o.cqe, c.dg)
}

// batchWriter gathers encoded PDUs into one writev: headers and small
// data are copied into small, large data is referenced in place.
type batchWriter struct {
	w     io.Writer
	err   error
	small []byte      // never grows past its capacity
	mark  int         // small[:mark] is already referenced by bufs
	bufs  net.Buffers // the batch, in order
	iov   net.Buffers // bufs as WriteTo consumes it
}

// ensure makes room for n more bytes in small, writing what is gathered
// if need be.
func (w *batchWriter) ensure(n int) {
	if len(w.small)+n > cap(w.small) {
		w.cut()
		w.send()
	}
}

// data adds a payload: copied if small, referenced otherwise.
func (w *batchWriter) data(p []byte) {
	if len(p) <= inlineDataMax && len(w.small)+len(p) <= cap(w.small) {
		w.small = append(w.small, p...)
		return
	}
	w.cut()
	w.bufs = append(w.bufs, p)
}

// cut ends the current run of small, so that a referenced payload can
// follow it.
func (w *batchWriter) cut() {
	if w.mark < len(w.small) {
		w.bufs = append(w.bufs, w.small[w.mark:len(w.small):len(w.small)])
		w.mark = len(w.small)
	}
}

func (w *batchWriter) flush() error {
	w.cut()
	w.send()
	return w.err
}

func (w *batchWriter) send() {
	if w.err == nil && len(w.bufs) > 0 {
		w.iov = w.bufs
		_, w.err = w.iov.WriteTo(w.w)
	}
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.small = w.small[:0]
	w.mark = 0
}
