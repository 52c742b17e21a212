package nvmetcp

// A minimal NVMe/TCP host (initiator): enough to connect to a controller,
// bring it up as Linux does, and do I/O on several queues with many
// commands in flight. Tests, end-to-end tests and load generators use it;
// the Linux kernel's initiator is what the target is built for.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// HostOptions configure a host's connections.
type HostOptions struct {
	// HostNQN and HostID identify the host; empty means a random UUID
	// NQN.
	HostNQN string
	HostID  [16]byte
	// HeaderDigest and DataDigest ask for CRC32C digests.
	HeaderDigest, DataDigest bool
	// KATO is the keep-alive timeout sent in the admin Connect; 0 asks
	// for none.
	KATO time.Duration
	// KeepAliveInterval is how often the host sends Keep Alive: 0 means
	// KATO/2, negative never.
	KeepAliveInterval time.Duration
	// IOQueues is the number of I/O queues to connect (default 1).
	IOQueues int
	// QueueSize is the entries of each I/O queue (default 128, at most
	// the controller's).
	QueueSize int
	// DialTimeout bounds each TCP connect and IC exchange (default 10s).
	DialTimeout time.Duration

	hpda uint8 // for tests: the C2H data alignment to ask for
}

func (o *HostOptions) defaults() {
	if o.HostNQN == "" || o.HostID == ([16]byte{}) {
		var id [16]byte
		_, _ = rand.Read(id[:])
		id[6] = id[6]&0x0f | 0x40
		id[8] = id[8]&0x3f | 0x80
		if o.HostID == ([16]byte{}) {
			o.HostID = id
		}
		if o.HostNQN == "" {
			o.HostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + uuidString(o.HostID)
		}
	}
	if o.IOQueues == 0 {
		o.IOQueues = 1
	}
	if o.QueueSize == 0 {
		o.QueueSize = 128
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 10 * time.Second
	}
}

func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// ErrQueueClosed is returned for commands on a queue whose connection
// ended.
var ErrQueueClosed = errors.New("nvmetcp: queue closed")

// HostQueue is one queue (one TCP connection) of a host. Submit may be
// called from many goroutines at once.
type HostQueue struct {
	nc         net.Conn
	br         *bufio.Reader
	dg         digests
	maxH2CData int
	// InCapsule is the most data a non-fabrics command sends in its
	// capsule; larger writes wait for an R2T.
	InCapsule int
	// QID is the queue's ID once connected.
	QID uint16

	slots chan struct{} // one per command that may be in flight
	wmu   sync.Mutex    // serializes writes to the socket

	mu      sync.Mutex
	pending map[uint16]*hostCmd
	nextCID uint16
	err     error
	done    chan struct{}
}

type hostCmd struct {
	cmd  Command
	out  []byte // data to the controller sent after an R2T
	in   []byte // buffer for data from the controller
	got  int
	cqe  Completion
	done chan struct{}
}

// DialQueue opens a connection to addr and does the IC exchange. The
// queue admits depth commands in flight.
func DialQueue(ctx context.Context, addr string, opts HostOptions, depth int) (*HostQueue, error) {
	opts.defaults()
	d := net.Dialer{Timeout: opts.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	q, err := NewHostQueue(nc, opts, depth)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return q, nil
}

// NewHostQueue does the IC exchange on nc and returns the queue; it owns
// nc from then on.
func NewHostQueue(nc net.Conn, opts HostOptions, depth int) (*HostQueue, error) {
	opts.defaults()
	q := &HostQueue{
		nc: nc, br: bufio.NewReaderSize(nc, 256<<10),
		dg:        digests{header: opts.HeaderDigest, data: opts.DataDigest},
		InCapsule: adminInCapsuleBytes,
		slots:     make(chan struct{}, depth),
		pending:   make(map[uint16]*hostCmd),
		done:      make(chan struct{}),
	}
	var dgst uint8
	if opts.HeaderDigest {
		dgst |= digestHeaderFlag
	}
	if opts.DataDigest {
		dgst |= digestDataFlag
	}
	_ = nc.SetDeadline(time.Now().Add(opts.DialTimeout))
	if _, err := nc.Write(appendICReq(nil, icReq{Digest: dgst, HPDA: opts.hpda})); err != nil {
		return nil, err
	}
	var b [icPDULen]byte
	if _, err := io.ReadFull(q.br, b[:commonHeaderLen]); err != nil {
		return nil, fmt.Errorf("nvmetcp: reading ICResp: %w", err)
	}
	n := icPDULen
	if h, _ := parseHeader(b[:]); h.Type == pduC2HTermReq {
		n = termReqHdrLen // the controller refused: its reason is in the header
	}
	if _, err := io.ReadFull(q.br, b[commonHeaderLen:n]); err != nil {
		return nil, fmt.Errorf("nvmetcp: reading ICResp: %w", err)
	}
	resp, err := parseICResp(b[:], dgst)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	q.maxH2CData = int(resp.MaxH2CData)
	go q.readLoop()
	return q, nil
}

// Close closes the connection; commands in flight fail.
func (q *HostQueue) Close() error {
	err := q.nc.Close()
	<-q.done
	return err
}

// Done is closed once the connection has ended.
func (q *HostQueue) Done() <-chan struct{} { return q.done }

// Err is why the connection ended (nil while it is up).
func (q *HostQueue) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

// Submit sends cmd with data to the controller (out: in the capsule if it
// fits, else after an R2T) or for data from it (in), and waits for the
// completion. It sets the command's CID, flags and SGL. A completion with
// an error status is returned along with that Status as the error.
func (q *HostQueue) Submit(ctx context.Context, cmd Command, out, in []byte) (Completion, error) {
	cmd.Flags = cmd.Flags&^0xC0 | cmdFlagSGL
	limit := q.InCapsule
	if cmd.Opcode == opFabrics {
		limit = adminInCapsuleBytes
	}
	var capsule, r2t []byte
	switch {
	case len(out) > 0 && len(out) <= limit:
		cmd.SGL = SGL{Length: uint32(len(out)), Type: sglDataBlockOffset}
		capsule = out
	case len(out) > 0:
		cmd.SGL = SGL{Length: uint32(len(out)), Type: sglTransportDataBlockA}
		r2t = out
	default:
		cmd.SGL = SGL{Length: uint32(len(in)), Type: sglTransportDataBlockA}
	}
	return q.SubmitRaw(ctx, cmd, capsule, r2t, in)
}

// SubmitRaw sends cmd as it is (CID aside) with capsule as in-capsule
// data; r2t is what it sends when the controller asks with an R2T, in
// receives data from the controller.
func (q *HostQueue) SubmitRaw(ctx context.Context, cmd Command, capsule, r2t, in []byte) (Completion, error) {
	select {
	case q.slots <- struct{}{}:
	case <-ctx.Done():
		return Completion{}, ctx.Err()
	case <-q.done:
		return Completion{}, q.closedErr()
	}
	defer func() { <-q.slots }()
	hc := &hostCmd{cmd: cmd, out: r2t, in: in, done: make(chan struct{})}
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return Completion{}, q.closedErr()
	}
	for {
		q.nextCID++
		if _, used := q.pending[q.nextCID]; !used {
			break
		}
	}
	hc.cmd.CID = q.nextCID
	q.pending[hc.cmd.CID] = hc
	q.mu.Unlock()

	var sqe [sqeLen]byte
	hc.cmd.encode(&sqe)
	pdu := appendCapsuleCmdHeader(make([]byte, 0, capsuleCmdHdrLen+2*digestLen+len(capsule)), &sqe, len(capsule), q.dg)
	pdu = append(pdu, capsule...)
	if len(capsule) > 0 && q.dg.data {
		pdu = binary.LittleEndian.AppendUint32(pdu, crc32c(capsule))
	}
	if err := q.write(pdu); err != nil {
		q.fail(err)
	}
	select {
	case <-hc.done:
	case <-q.done:
		select {
		case <-hc.done:
		default:
			return Completion{}, q.closedErr()
		}
	case <-ctx.Done():
		// The CID stays reserved: the controller may still answer.
		return Completion{}, ctx.Err()
	}
	if !hc.cqe.Status.OK() {
		return hc.cqe, hc.cqe.Status
	}
	if len(in) > 0 && hc.got != len(in) {
		return hc.cqe, fmt.Errorf("nvmetcp: controller returned %d of %d data bytes", hc.got, len(in))
	}
	return hc.cqe, nil
}

// WriteRaw writes bytes to the socket as they are, for tests that break
// the protocol on purpose.
func (q *HostQueue) WriteRaw(b []byte) error { return q.write(b) }

func (q *HostQueue) write(bufs ...[]byte) error {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	nb := net.Buffers(bufs)
	_, err := nb.WriteTo(q.nc)
	return err
}

func (q *HostQueue) closedErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return fmt.Errorf("%w: %w", ErrQueueClosed, q.err)
	}
	return ErrQueueClosed
}

// fail ends the queue with err: every command waiting fails.
func (q *HostQueue) fail(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	_ = q.nc.Close()
}

func (q *HostQueue) readLoop() {
	err := q.receive()
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	_ = q.nc.Close()
	close(q.done)
}

func (q *HostQueue) receive() error {
	limits := rxLimits{dg: q.dg, host: true}
	var hdr [maxPDUHeaderBytes + digestLen]byte
	for {
		if _, err := io.ReadFull(q.br, hdr[:commonHeaderLen]); err != nil {
			return err
		}
		f, fe := limits.frameAfterIC(hdr[:commonHeaderLen])
		if fe != nil {
			return fe
		}
		if _, err := io.ReadFull(q.br, hdr[commonHeaderLen:f.hdrLen]); err != nil {
			return err
		}
		if f.h.Type == pduC2HTermReq {
			return parseTermReqError(hdr[:f.hdrLen])
		}
		hl := int(f.h.HLen)
		if q.dg.header && !verifyHeaderDigest(hdr[:f.hdrLen], hl) {
			return errors.New("nvmetcp: header digest mismatch from the controller")
		}
		if _, err := q.br.Discard(f.pad); err != nil {
			return err
		}
		switch f.h.Type {
		case pduCapsuleResp:
			cqe := parseCompletion(hdr[commonHeaderLen:])
			hc := q.take(cqe.CID)
			if hc == nil {
				return fmt.Errorf("nvmetcp: completion for unknown CID %d", cqe.CID)
			}
			hc.cqe = cqe
			close(hc.done)
		case pduC2HData:
			d := parseDataPDU(hdr[:hl])
			hc := q.lookup(d.CCCID)
			if hc == nil {
				return fmt.Errorf("nvmetcp: C2HData for unknown CID %d", d.CCCID)
			}
			if int(d.DataO) != hc.got || hc.got+f.dataLen > len(hc.in) || int(d.DataL) != f.dataLen {
				return fmt.Errorf("nvmetcp: C2HData %d+%d out of order or past %d bytes", d.DataO, d.DataL, len(hc.in))
			}
			dst := hc.in[hc.got : hc.got+f.dataLen]
			if _, err := io.ReadFull(q.br, dst); err != nil {
				return err
			}
			if f.ddgst {
				var dg [digestLen]byte
				if _, err := io.ReadFull(q.br, dg[:]); err != nil {
					return err
				}
				if crc32c(dst) != binary.LittleEndian.Uint32(dg[:]) {
					return errors.New("nvmetcp: data digest mismatch from the controller")
				}
			}
			hc.got += f.dataLen
			if f.h.Flags&flagDataSuccess != 0 {
				q.take(d.CCCID)
				hc.cqe = Completion{CID: d.CCCID}
				close(hc.done)
			}
		case pduR2T:
			r := parseR2T(hdr[:hl])
			hc := q.lookup(r.CCCID)
			if hc == nil {
				return fmt.Errorf("nvmetcp: R2T for unknown CID %d", r.CCCID)
			}
			if r.R2TL == 0 || uint64(r.R2TO)+uint64(r.R2TL) > uint64(len(hc.out)) {
				return fmt.Errorf("nvmetcp: R2T %d+%d past %d bytes", r.R2TO, r.R2TL, len(hc.out))
			}
			go q.sendH2C(hc, r)
		}
	}
}

// sendH2C answers an R2T with H2CData PDUs of at most MAXH2CDATA.
func (q *HostQueue) sendH2C(hc *hostCmd, r r2tPDU) {
	data := hc.out[r.R2TO : r.R2TO+r.R2TL]
	for off := 0; off < len(data); {
		n := min(len(data)-off, q.maxH2CData)
		var flags uint8
		if off+n == len(data) {
			flags = flagDataLast
		}
		chunk := data[off : off+n]
		h := appendDataHeader(nil, pduH2CData, flags,
			dataPDU{CCCID: r.CCCID, TTag: r.TTag, DataO: r.R2TO + uint32(off), DataL: uint32(n)}, 0, q.dg)
		bufs := [][]byte{h, chunk}
		if q.dg.data {
			bufs = append(bufs, binary.LittleEndian.AppendUint32(nil, crc32c(chunk)))
		}
		if err := q.write(bufs...); err != nil {
			q.fail(err)
			return
		}
		off += n
	}
}

func (q *HostQueue) lookup(cid uint16) *hostCmd {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending[cid]
}

func (q *HostQueue) take(cid uint16) *hostCmd {
	q.mu.Lock()
	defer q.mu.Unlock()
	hc := q.pending[cid]
	delete(q.pending, cid)
	return hc
}

// Connect sends a Fabrics Connect on this queue and returns the
// controller ID.
func (q *HostQueue) Connect(ctx context.Context, qid uint16, sqsize int, kato time.Duration, subNQN string, cntlid uint16, opts HostOptions) (uint16, error) {
	opts.defaults()
	data := appendConnectData(nil, connectData{HostID: opts.HostID, Cntlid: cntlid, SubNQN: subNQN, HostNQN: opts.HostNQN})
	cmd := Command{Opcode: opFabrics, NSID: uint32(fctConnect),
		CDW10: uint32(qid) << 16, CDW11: uint32(sqsize - 1), CDW12: uint32(kato / time.Millisecond)}
	cqe, err := q.Submit(ctx, cmd, data, nil)
	if err != nil {
		return 0, fmt.Errorf("nvmetcp: Connect qid %d to %s: %w (DW0 %#x)", qid, subNQN, err, cqe.DW0)
	}
	q.QID = qid
	return uint16(cqe.DW0), nil
}

// Host is a host's association with one controller: its admin queue and
// I/O queues.
type Host struct {
	Admin  *HostQueue
	IO     []*HostQueue
	Cntlid uint16
	SubNQN string
	// Identify data of the controller and of namespace 1 (I/O
	// controllers).
	IdentifyController []byte
	IdentifyNamespace  []byte
	// BlockSize, Blocks and MaxTransfer describe the namespace.
	BlockSize   int
	Blocks      uint64
	MaxTransfer int

	opts   HostOptions
	next   atomic.Uint32
	kaStop chan struct{}
	kaDone chan struct{}
}

// Connect brings up a controller the way the Linux host does: admin
// Connect, CAP, CC.EN, CSTS.RDY, Identify, Number of Queues, then the I/O
// queues' Connects (none for the discovery subsystem).
func Connect(ctx context.Context, addr, subNQN string, opts HostOptions) (*Host, error) {
	opts.defaults()
	admin, err := DialQueue(ctx, addr, opts, minQueueSize-1)
	if err != nil {
		return nil, err
	}
	h := &Host{Admin: admin, SubNQN: subNQN, opts: opts}
	if err := h.setup(ctx, addr); err != nil {
		h.closeQueues()
		return nil, err
	}
	return h, nil
}

func (h *Host) setup(ctx context.Context, addr string) error {
	opts := h.opts
	cntlid, err := h.Admin.Connect(ctx, 0, minQueueSize, opts.KATO, h.SubNQN, dynamicCntlid, opts)
	if err != nil {
		return err
	}
	h.Cntlid = cntlid
	capv, err := h.PropertyGet(ctx, propCAP, true)
	if err != nil {
		return err
	}
	cc := uint64(ccEN | 6<<16 | 4<<20)
	if err := h.PropertySet(ctx, propCC, cc); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Duration(capv>>24&0xFF+1) * 500 * time.Millisecond)
	for {
		csts, err := h.PropertyGet(ctx, propCSTS, false)
		if err != nil {
			return err
		}
		if csts&cstsCFS != 0 {
			return fmt.Errorf("nvmetcp: controller fatal status after enable (CSTS %#x)", csts)
		}
		if csts&cstsRDY != 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("nvmetcp: controller not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.IdentifyController, err = h.Identify(ctx, cnsController, 0); err != nil {
		return err
	}
	idc := h.IdentifyController
	if got := binary.LittleEndian.Uint16(idc[78:]); got != h.Cntlid {
		return fmt.Errorf("nvmetcp: Identify says cntlid %d, Connect said %d", got, h.Cntlid)
	}
	mqes := int(capv&0xFFFF) + 1
	if opts.KATO > 0 && opts.KeepAliveInterval >= 0 {
		every := opts.KeepAliveInterval
		if every == 0 {
			every = opts.KATO / 2
		}
		h.kaStop, h.kaDone = make(chan struct{}), make(chan struct{})
		go h.keepAlive(every)
	}
	if h.SubNQN == DiscoveryNQN {
		return nil
	}
	h.MaxTransfer = 4096 << idc[77]
	ioccsz := int(binary.LittleEndian.Uint32(idc[1792:]))
	if h.IdentifyNamespace, err = h.Identify(ctx, cnsNamespace, 1); err != nil {
		return err
	}
	ns := h.IdentifyNamespace
	h.Blocks = binary.LittleEndian.Uint64(ns)
	h.BlockSize = 1 << ns[128+4*int(ns[26]&0xF)+2]
	dw0, err := h.SetFeatures(ctx, featNumQueues, uint32(opts.IOQueues-1)|uint32(opts.IOQueues-1)<<16)
	if err != nil {
		return err
	}
	n := int(min(dw0&0xFFFF, dw0>>16)) + 1
	n = min(n, opts.IOQueues)
	size := min(opts.QueueSize, mqes, int(binary.LittleEndian.Uint16(idc[514:])))
	for i := 1; i <= n; i++ {
		q, err := DialQueue(ctx, addr, opts, size-1)
		if err != nil {
			return err
		}
		h.IO = append(h.IO, q)
		if _, err := q.Connect(ctx, uint16(i), size, 0, h.SubNQN, h.Cntlid, opts); err != nil {
			return err
		}
		q.InCapsule = ioccsz*16 - sqeLen
	}
	return nil
}

func (h *Host) keepAlive(every time.Duration) {
	defer close(h.kaDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.kaStop:
			return
		case <-h.Admin.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), h.opts.KATO)
			_, _ = h.Admin.Submit(ctx, Command{Opcode: adminKeepAlive}, nil, nil)
			cancel()
		}
	}
}

// Close shuts the controller down as Linux does (the I/O queues close,
// CC.SHN, wait for CSTS.SHST) and closes the admin queue.
func (h *Host) Close() error {
	for _, q := range h.IO {
		q.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.PropertySet(ctx, propCC, uint64(ccEN|1<<ccShnShift|6<<16|4<<20)); err == nil {
		for ctx.Err() == nil {
			csts, err := h.PropertyGet(ctx, propCSTS, false)
			if err != nil || csts&(3<<2) == cstsShstCpl {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	h.closeQueues()
	return nil
}

func (h *Host) closeQueues() {
	if h.kaStop != nil {
		close(h.kaStop)
		<-h.kaDone
		h.kaStop = nil
	}
	for _, q := range h.IO {
		q.Close()
	}
	h.Admin.Close()
}

// PropertyGet reads a controller property.
func (h *Host) PropertyGet(ctx context.Context, offset uint32, size8 bool) (uint64, error) {
	var attrib uint32
	if size8 {
		attrib = 1
	}
	cqe, err := h.Admin.Submit(ctx, Command{Opcode: opFabrics, NSID: uint32(fctPropertyGet), CDW10: attrib, CDW11: offset}, nil, nil)
	return uint64(cqe.DW0) | uint64(cqe.DW1)<<32, err
}

// PropertySet writes a 4-byte controller property.
func (h *Host) PropertySet(ctx context.Context, offset uint32, v uint64) error {
	_, err := h.Admin.Submit(ctx, Command{Opcode: opFabrics, NSID: uint32(fctPropertySet), CDW11: offset, CDW12: uint32(v), CDW13: uint32(v >> 32)}, nil, nil)
	return err
}

// Identify returns the 4 KiB Identify data of cns.
func (h *Host) Identify(ctx context.Context, cns uint8, nsid uint32) ([]byte, error) {
	b := make([]byte, identifyLen)
	_, err := h.Admin.Submit(ctx, Command{Opcode: adminIdentify, NSID: nsid, CDW10: uint32(cns)}, nil, b)
	return b, err
}

// GetLogPage reads length bytes of log page lid from offset.
func (h *Host) GetLogPage(ctx context.Context, lid uint8, nsid uint32, offset uint64, length int) ([]byte, error) {
	b := make([]byte, length)
	numd := uint32(length/4 - 1)
	cmd := Command{Opcode: adminGetLogPage, NSID: nsid, CDW10: uint32(lid) | numd<<16, CDW11: numd >> 16,
		CDW12: uint32(offset), CDW13: uint32(offset >> 32)}
	_, err := h.Admin.Submit(ctx, cmd, nil, b)
	return b, err
}

// SetFeatures sets feature fid to dw11 and returns the completion's DW0.
func (h *Host) SetFeatures(ctx context.Context, fid uint8, dw11 uint32) (uint32, error) {
	cqe, err := h.Admin.Submit(ctx, Command{Opcode: adminSetFeatures, CDW10: uint32(fid), CDW11: dw11}, nil, nil)
	return cqe.DW0, err
}

// GetFeatures returns the current value of feature fid.
func (h *Host) GetFeatures(ctx context.Context, fid uint8) (uint32, error) {
	cqe, err := h.Admin.Submit(ctx, Command{Opcode: adminGetFeatures, CDW10: uint32(fid)}, nil, nil)
	return cqe.DW0, err
}

// KeepAlive sends one Keep Alive.
func (h *Host) KeepAlive(ctx context.Context) error {
	_, err := h.Admin.Submit(ctx, Command{Opcode: adminKeepAlive}, nil, nil)
	return err
}

// Queue returns I/O queue i modulo their number, or the next one in turn
// for i < 0.
func (h *Host) Queue(i int) *HostQueue {
	if i < 0 {
		i = int(h.next.Add(1))
	}
	return h.IO[i%len(h.IO)]
}

// ReadAt reads len(p) bytes at off (both multiples of the block size) on
// the next queue in turn, one command per MaxTransfer bytes.
func (h *Host) ReadAt(ctx context.Context, p []byte, off uint64) error {
	return h.rw(ctx, h.Queue(-1), ioRead, p, off, false)
}

// WriteAt writes p at off (both multiples of the block size).
func (h *Host) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return h.rw(ctx, h.Queue(-1), ioWrite, p, off, fua)
}

// ReadAtQueue and WriteAtQueue are ReadAt and WriteAt on a given queue.
func (h *Host) ReadAtQueue(ctx context.Context, q *HostQueue, p []byte, off uint64) error {
	return h.rw(ctx, q, ioRead, p, off, false)
}

// WriteAtQueue is WriteAt on queue q.
func (h *Host) WriteAtQueue(ctx context.Context, q *HostQueue, p []byte, off uint64, fua bool) error {
	return h.rw(ctx, q, ioWrite, p, off, fua)
}

func (h *Host) rw(ctx context.Context, q *HostQueue, opcode uint8, p []byte, off uint64, fua bool) error {
	bs := uint64(h.BlockSize)
	if off%bs != 0 || uint64(len(p))%bs != 0 {
		return fmt.Errorf("nvmetcp: I/O of %d bytes at %d not aligned to %d", len(p), off, bs)
	}
	for len(p) > 0 {
		n := min(len(p), h.MaxTransfer)
		cmd := RWCommand(opcode == ioWrite, off/bs, uint32(uint64(n)/bs), fua)
		var err error
		if opcode == ioWrite {
			_, err = q.Submit(ctx, cmd, p[:n], nil)
		} else {
			_, err = q.Submit(ctx, cmd, nil, p[:n])
		}
		if err != nil {
			return err
		}
		p = p[n:]
		off += uint64(n)
	}
	return nil
}

// RWCommand is a Read or Write of nlb blocks (1 to 65536) at slba on
// namespace 1.
func RWCommand(write bool, slba uint64, nlb uint32, fua bool) Command {
	op := ioRead
	if write {
		op = ioWrite
	}
	cmd := Command{Opcode: op, NSID: 1, CDW10: uint32(slba), CDW11: uint32(slba >> 32), CDW12: (nlb - 1) & 0xFFFF}
	if fua {
		cmd.CDW12 |= 1 << 30
	}
	return cmd
}

// Flush sends a Flush.
func (h *Host) Flush(ctx context.Context) error {
	_, err := h.Queue(-1).Submit(ctx, Command{Opcode: ioFlush, NSID: 1}, nil, nil)
	return err
}

// WriteZeroes zeroes nlb blocks at slba; deallocate lets the controller
// deallocate them.
func (h *Host) WriteZeroes(ctx context.Context, slba uint64, nlb uint32, deallocate bool) error {
	cmd := Command{Opcode: ioWriteZeroes, NSID: 1, CDW10: uint32(slba), CDW11: uint32(slba >> 32), CDW12: (nlb - 1) & 0xFFFF}
	if deallocate {
		cmd.CDW12 |= 1 << 25
	}
	_, err := h.Queue(-1).Submit(ctx, cmd, nil, nil)
	return err
}

// Range is a Dataset Management range: NLB blocks from SLBA.
type Range struct {
	SLBA uint64
	NLB  uint32
}

// Deallocate sends a Dataset Management command deallocating ranges.
func (h *Host) Deallocate(ctx context.Context, ranges []Range) error {
	data := make([]byte, 0, dsmRangeLen*len(ranges))
	for _, r := range ranges {
		data = binary.LittleEndian.AppendUint32(data, 0)
		data = binary.LittleEndian.AppendUint32(data, r.NLB)
		data = binary.LittleEndian.AppendUint64(data, r.SLBA)
	}
	cmd := Command{Opcode: ioDSM, NSID: 1, CDW10: uint32(len(ranges) - 1), CDW11: 1 << 2}
	_, err := h.Queue(-1).Submit(ctx, cmd, data, nil)
	return err
}

// Discover connects to the discovery controller at addr and returns its
// log page's records.
func Discover(ctx context.Context, addr string, opts HostOptions) ([]DiscoveryEntry, error) {
	h, err := Connect(ctx, addr, DiscoveryNQN, opts)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	hdr, err := h.GetLogPage(ctx, logDiscovery, 0, 0, discHdrLen)
	if err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint64(hdr[8:])
	if n > 1024 {
		return nil, fmt.Errorf("nvmetcp: discovery log of %d records", n)
	}
	log, err := h.GetLogPage(ctx, logDiscovery, 0, 0, discHdrLen+int(n)*discEntLen)
	if err != nil {
		return nil, err
	}
	_, entries, err := ParseDiscoveryLog(log)
	return entries, err
}
