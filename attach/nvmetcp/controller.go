package nvmetcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// A controller is the association of one host with one subsystem: an
// admin queue, its I/O queues (each a connection), the controller
// registers and features, and the namespace's device. It lives from the
// admin Connect until its admin connection ends, a keep-alive timeout, a
// Disconnect on the admin queue, or Target.Close.
type controller struct {
	t         *Target
	cfg       config
	log       *slog.Logger
	cntlid    uint16
	subNQN    string
	hostNQN   string
	hostID    [16]byte
	discovery bool
	dev       blockdev.Device // nil for the discovery controller
	nsID      [16]byte
	created   time.Time

	lastSeen atomic.Int64 // monotonic nanoseconds since created of the last command

	// Counters for the SMART / Health log.
	readCmds, writeCmds, bytesRead, bytesWritten atomic.Uint64

	mu struct {
		sync.Mutex
		dead     bool
		cc       uint32
		csts     uint32
		kato     time.Duration
		kaTimer  *time.Timer
		queues   uint16 // I/O queues granted by Set Features, 0 if never set
		aec      uint32
		temp     uint32
		wce      bool
		admin    *conn
		io       map[uint16]*conn
		refs     int   // connections attached
		aers     []*op // Asynchronous Event Requests waiting
		events   []uint32
		changed  bool   // the changed namespace list holds NSID 1
		blocks   uint64 // namespace size in blocks
		sizeRead bool
	}
}

// CC and CSTS fields.
const (
	ccEN        = 1 << 0
	ccShnShift  = 14
	ccShnMask   = 3 << ccShnShift
	cstsRDY     = 1 << 0
	cstsCFS     = 1 << 1
	cstsShstCpl = 2 << 2
)

func newController(t *Target, cfg config, subNQN, hostNQN string, hostID [16]byte, ns Namespace) *controller {
	c := &controller{
		t: t, cfg: cfg, subNQN: subNQN, hostNQN: hostNQN, hostID: hostID,
		discovery: subNQN == DiscoveryNQN, dev: ns.Device, nsID: ns.ID, created: time.Now(),
	}
	if c.nsID == ([16]byte{}) && !c.discovery {
		sum := sha256.Sum256([]byte(subNQN))
		copy(c.nsID[:], sum[:16])
	}
	c.mu.io = make(map[uint16]*conn)
	c.mu.wce = true
	c.mu.temp = 273 + 70
	return c
}

// touch records traffic: any command on any queue counts as a keep-alive.
func (c *controller) touch() { c.lastSeen.Store(int64(time.Since(c.created))) }

// setKATOLocked (re)arms the keep-alive timer; 0 disables it.
func (c *controller) setKATOLocked(kato time.Duration) {
	if kato > 0 {
		// KAS is 100 ms: round up to it.
		kato = (kato + 100*time.Millisecond - 1) / (100 * time.Millisecond) * (100 * time.Millisecond)
	}
	c.mu.kato = kato
	if c.mu.kaTimer != nil {
		c.mu.kaTimer.Stop()
		c.mu.kaTimer = nil
	}
	if kato > 0 && !c.mu.dead {
		c.touch()
		c.mu.kaTimer = time.AfterFunc(kato, c.keepAliveCheck)
	}
}

// keepAliveCheck runs when the keep-alive timer fires: without traffic
// for KATO the controller is torn down, else the timer is rearmed for the
// rest of the period.
func (c *controller) keepAliveCheck() {
	c.mu.Lock()
	kato := c.mu.kato
	if c.mu.dead || kato == 0 {
		c.mu.Unlock()
		return
	}
	idle := time.Since(c.created) - time.Duration(c.lastSeen.Load())
	if idle < kato {
		c.mu.kaTimer = time.AfterFunc(kato-idle, c.keepAliveCheck)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.log.Warn("NVMe/TCP keep-alive timeout: tearing the controller down", "kato", kato, "idle", idle.Round(time.Millisecond))
	c.kill("keep-alive timeout")
}

// attach adds a connection to the controller; false if it is gone.
func (c *controller) attach(conn *conn, qid uint16) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.dead {
		return false
	}
	if qid == 0 {
		c.mu.admin = conn
	} else {
		if c.mu.io[qid] != nil {
			return false
		}
		c.mu.io[qid] = conn
	}
	c.mu.refs++
	return true
}

func (c *controller) hasQueue(qid uint16) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.io[qid] != nil
}

// detach removes a connection whose goroutines have all ended. The admin
// connection's end ends the controller. The last one out closes the
// device.
func (c *controller) detach(conn *conn) {
	c.mu.Lock()
	if c.mu.admin == conn {
		c.mu.admin = nil
		c.mu.Unlock()
		c.kill("admin queue closed")
		c.mu.Lock()
	} else if c.mu.io[conn.qid] == conn {
		delete(c.mu.io, conn.qid)
	}
	c.mu.refs--
	last := c.mu.refs == 0 && c.mu.dead
	c.mu.Unlock()
	if last && c.dev != nil {
		if err := c.dev.Close(); err != nil {
			c.log.Warn("closing the namespace device failed", "err", err)
		}
	}
}

// kill ends the controller: its queues are closed, its waiting AERs
// dropped, its ID freed.
func (c *controller) kill(reason string) {
	c.mu.Lock()
	if c.mu.dead {
		c.mu.Unlock()
		return
	}
	c.mu.dead = true
	if c.mu.kaTimer != nil {
		c.mu.kaTimer.Stop()
		c.mu.kaTimer = nil
	}
	conns := make([]*conn, 0, len(c.mu.io)+1)
	if c.mu.admin != nil {
		conns = append(conns, c.mu.admin)
	}
	for _, q := range c.mu.io {
		conns = append(conns, q)
	}
	aers := c.mu.aers
	c.mu.aers = nil
	refs := c.mu.refs
	c.mu.Unlock()
	c.t.unregister(c)
	c.log.Info("NVMe/TCP controller ended", "reason", reason)
	for _, o := range aers {
		o.c.drop(o)
	}
	for _, q := range conns {
		q.abort()
	}
	if refs == 0 && c.dev != nil {
		_ = c.dev.Close()
	}
}

// ready reports CSTS.RDY.
func (c *controller) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.csts&cstsRDY != 0
}

// maxQID is the highest I/O queue ID a host may connect.
func (c *controller) maxQID() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.queues > 0 {
		return c.mu.queues
	}
	return uint16(c.cfg.maxIOQueues)
}

// blocks is the namespace's size in blocks, read from the device once and
// again after NamespaceChanged.
func (c *controller) blocks() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.mu.sizeRead && c.dev != nil {
		c.mu.blocks = c.dev.Size() >> c.cfg.lbads
		c.mu.sizeRead = true
	}
	return c.mu.blocks
}

func (c *controller) nsIdentity() nsIdentity {
	return nsIdentity{blocks: c.blocks(), lbads: c.cfg.lbads, nguid: c.nsID, uuid: namespaceUUID(c.nsID)}
}

func (c *controller) identity() ctrlIdentity {
	id := ctrlIdentity{
		cntlid: c.cntlid, subNQN: c.subNQN, firmware: "1.0", discovery: c.discovery,
		mdts: c.cfg.mdts, maxCmd: uint16(c.cfg.maxQueueSize), ioccsz: uint32(sqeLen+c.cfg.inCapsule) / 16,
		vwc: true, aerl: aerLimit - 1, kas: 1,
	}
	c.t.mu.Lock()
	ioPorts := 0
	for _, p := range c.t.mu.ports {
		if !p.discovery {
			ioPorts++
		}
	}
	c.t.mu.Unlock()
	id.multiPort = ioPorts > 1
	if c.discovery {
		id.serial, id.model = "ballast-discovery", "Ballast discovery controller"
	} else {
		id.serial = hex.EncodeToString(c.nsID[:10])
		id.model = "Ballast volume"
	}
	return id
}

// namespaceChanged notes a change of the namespace and raises a
// Namespace Attribute Changed event if the host enabled it.
func (c *controller) namespaceChanged() {
	c.mu.Lock()
	c.mu.sizeRead = false
	c.mu.changed = true
	enabled := c.mu.aec&oaesNamespaceAttr != 0
	c.mu.Unlock()
	if enabled {
		c.event(uint32(aenTypeNotice) | uint32(aenNamespaceChanged)<<8 | uint32(logChangedNS)<<16)
	}
}

// event completes a waiting AER with dw0, or keeps the event until one
// arrives.
func (c *controller) event(dw0 uint32) {
	c.mu.Lock()
	if c.mu.dead {
		c.mu.Unlock()
		return
	}
	if len(c.mu.aers) == 0 {
		if len(c.mu.events) < maxPendingEvents {
			c.mu.events = append(c.mu.events, dw0)
		}
		c.mu.Unlock()
		return
	}
	o := c.mu.aers[0]
	c.mu.aers = c.mu.aers[1:]
	c.mu.Unlock()
	o.cqe.DW0 = dw0
	o.c.respond(o)
}

// ---- Admin commands ----

// execAdmin runs one command of the admin queue (the admin worker calls
// it in submission order) and responds, except for an AER it keeps.
func (c *controller) execAdmin(q *conn, o *op) {
	cmd := &o.cmd
	st := q.checkCommon(o)
	if st.OK() && cmd.Opcode == opFabrics {
		st = c.execFabrics(q, o)
	} else if st.OK() {
		if !c.ready() {
			st = statusCmdSeqError
		} else {
			switch cmd.Opcode {
			case adminIdentify:
				st = c.identify(q, o)
			case adminGetLogPage:
				st = c.getLogPage(q, o)
			case adminSetFeatures:
				st = c.setFeatures(q, o)
			case adminGetFeatures:
				st = c.getFeatures(o)
			case adminKeepAlive:
				st = statusSuccess
			case adminAbort:
				o.cqe.DW0 = 1 // the command was not aborted
			case adminAER:
				if c.asyncEventRequest(o) {
					return
				}
				st = statusAERLimitExceeded
			default:
				st = statusInvalidOpcode
			}
		}
	}
	if !st.OK() {
		q.log.Debug("NVMe admin command refused", "opcode", cmd.Opcode, "cdw10", cmd.CDW10, "status", st)
	}
	o.cqe.Status = st
	q.respond(o)
}

// asyncEventRequest keeps an AER, or completes it with a pending event;
// false if too many are waiting.
func (c *controller) asyncEventRequest(o *op) bool {
	c.mu.Lock()
	if len(c.mu.events) > 0 {
		o.cqe.DW0 = c.mu.events[0]
		c.mu.events = c.mu.events[1:]
		c.mu.Unlock()
		o.c.respond(o)
		return true
	}
	if len(c.mu.aers) >= aerLimit || c.mu.dead {
		c.mu.Unlock()
		return false
	}
	c.mu.aers = append(c.mu.aers, o)
	c.mu.Unlock()
	return true
}

func (c *controller) execFabrics(q *conn, o *op) Status {
	cmd := &o.cmd
	switch cmd.fctype() {
	case fctConnect:
		return statusCmdSeqError // this queue is connected already
	case fctPropertyGet:
		return c.propertyGet(o)
	case fctPropertySet:
		return c.propertySet(o)
	case fctDisconnect:
		o.after = func() { c.kill("Disconnect on the admin queue") }
		return statusSuccess
	}
	return statusInvalidOpcode
}

func (c *controller) capValue() uint64 {
	const (
		cqr       = 1 << 16
		timeout   = 15 << 24 // CAP.TO: 7.5 s in 500 ms units
		cssNVM    = 1 << 37
		mpsMinMax = 0 // 4 KiB pages only
	)
	return uint64(c.cfg.maxQueueSize-1) | cqr | timeout | cssNVM | mpsMinMax
}

func (c *controller) propertyGet(o *op) Status {
	size8 := o.cmd.CDW10&7 == 1
	if o.cmd.CDW10&7 > 1 {
		return statusInvalidField
	}
	var v uint64
	c.mu.Lock()
	switch o.cmd.CDW11 {
	case propCAP:
		v = c.capValue()
	case propVS:
		v = nvmeVersion
	case propCC:
		v = uint64(c.mu.cc)
	case propCSTS:
		v = uint64(c.mu.csts)
	default:
		c.mu.Unlock()
		return statusInvalidField
	}
	c.mu.Unlock()
	if !size8 && o.cmd.CDW11 == propCAP {
		v &= 0xFFFFFFFF
	}
	o.cqe.DW0 = uint32(v)
	if size8 {
		o.cqe.DW1 = uint32(v >> 32)
	}
	return statusSuccess
}

func (c *controller) propertySet(o *op) Status {
	if o.cmd.CDW10&7 != 0 || o.cmd.CDW11 != propCC {
		return statusInvalidField
	}
	v := o.cmd.CDW12
	c.mu.Lock()
	old := c.mu.cc
	c.mu.cc = v
	var resetIO []*conn
	shutdown := false
	switch {
	case v&ccEN != 0 && old&ccEN == 0:
		iosqes, iocqes, mps, css := v>>16&0xF, v>>20&0xF, v>>7&0xF, v>>4&7
		if mps != 0 || css != 0 || (!c.discovery && (iosqes != 6 || iocqes != 4)) {
			c.mu.csts = cstsCFS
			c.log.Warn("host enabled the controller with an unsupported configuration", "cc", v)
		} else {
			c.mu.csts = cstsRDY
		}
	case v&ccEN == 0 && old&ccEN != 0:
		// Controller reset: the I/O queues go.
		c.mu.csts = 0
		for _, q := range c.mu.io {
			resetIO = append(resetIO, q)
		}
	}
	if v&ccShnMask != 0 && old&ccShnMask == 0 {
		shutdown = true
	} else if v&ccShnMask == 0 {
		c.mu.csts &^= 3 << 2
	}
	c.mu.Unlock()
	for _, q := range resetIO {
		q.abort()
	}
	if shutdown {
		// Nothing is cached here, but a shutdown is a promise that every
		// write is durable: ask the device.
		if c.dev != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := c.dev.Flush(ctx)
			cancel()
			if err != nil {
				c.log.Warn("flush at controller shutdown failed", "err", err)
			}
		}
		c.mu.Lock()
		c.mu.csts |= cstsShstCpl
		c.mu.Unlock()
	}
	return statusSuccess
}

// sendData sets the data to return: exactly the host's buffer length,
// zero-padded or cut.
func sendData(o *op, data []byte) {
	n := int(o.cmd.SGL.Length)
	if len(data) == n {
		o.c2h = data
		return
	}
	out := make([]byte, n)
	copy(out, data)
	o.c2h = out
}

func (c *controller) identify(q *conn, o *op) Status {
	cmd := &o.cmd
	cns := uint8(cmd.CDW10)
	csi := uint8(cmd.CDW14 >> 24)
	if c.discovery && cns != cnsController {
		return statusInvalidField
	}
	nsOK := func() Status {
		switch {
		case cmd.NSID == 1:
			return statusSuccess
		default:
			return statusInvalidNamespace
		}
	}
	var data []byte
	switch cns {
	case cnsController:
		data = identifyController(c.identity())
	case cnsNamespace:
		if st := nsOK(); !st.OK() {
			return st
		}
		data = identifyNamespace(c.nsIdentity())
	case cnsActiveNSList, cnsCSActiveNSList:
		if cns == cnsCSActiveNSList && csi != 0 {
			return statusInvalidField
		}
		if cmd.NSID >= 0xFFFFFFFE {
			return statusInvalidNamespace
		}
		data = activeNSList(cmd.NSID)
	case cnsNSDescriptors:
		if st := nsOK(); !st.OK() {
			return st
		}
		data = nsDescriptors(c.nsIdentity())
	case cnsCSNamespace:
		if csi != 0 {
			return statusInvalidField
		}
		if st := nsOK(); !st.OK() {
			return st
		}
		data = make([]byte, identifyLen) // NVM command set: nothing beyond CNS 0
	case cnsCSController:
		if csi != 0 {
			return statusInvalidField
		}
		data = make([]byte, identifyLen) // no limits beyond MDTS
	case cnsIndependentNS:
		if st := nsOK(); !st.OK() {
			return st
		}
		data = independentNamespace(c.nsIdentity())
	default:
		return statusInvalidField
	}
	if st := q.checkC2H(o); !st.OK() {
		return st
	}
	sendData(o, data)
	return statusSuccess
}

func (c *controller) getLogPage(q *conn, o *op) Status {
	cmd := &o.cmd
	lid := uint8(cmd.CDW10)
	rae := cmd.CDW10&(1<<15) != 0
	numd := uint64(cmd.CDW10>>16) | uint64(cmd.CDW11&0xFFFF)<<16
	length := (numd + 1) * 4
	offset := uint64(cmd.CDW12) | uint64(cmd.CDW13)<<32
	if offset&3 != 0 || length > uint64(c.cfg.maxTransfer) {
		return statusInvalidField
	}
	if st := q.checkC2H(o); !st.OK() {
		return st
	}
	var log []byte
	switch {
	case lid == logDiscovery && c.discovery:
		ctx, cancel := context.WithTimeout(q.ctx, 15*time.Second)
		var err error
		log, err = c.t.discoveryLog(ctx, q, c.hostNQN)
		cancel()
		if err != nil {
			c.log.Warn("discovery log: listing subsystems failed", "err", err)
			return statusInternalError
		}
	case lid == logEffects:
		log = effectsLog(c.discovery)
	case c.discovery:
		return statusInvalidLogPage
	case lid == logError:
		log = make([]byte, errEntryLen)
	case lid == logSMART:
		log = smartLog(smartStats{
			unitsRead:    (c.bytesRead.Load() + 512000 - 1) / 512000,
			unitsWritten: (c.bytesWritten.Load() + 512000 - 1) / 512000,
			readCmds:     c.readCmds.Load(),
			writeCmds:    c.writeCmds.Load(),
			powerOnHours: uint64(time.Since(c.created).Hours()),
		})
	case lid == logFirmware:
		log = firmwareLog("1.0")
	case lid == logChangedNS:
		c.mu.Lock()
		log = changedNSLog(c.mu.changed)
		if !rae {
			c.mu.changed = false
		}
		c.mu.Unlock()
	default:
		return statusInvalidLogPage
	}
	data, ok := sliceLog(log, offset, int(length))
	if !ok {
		return statusInvalidField
	}
	sendData(o, data)
	return statusSuccess
}

// Feature identifiers.
const (
	featTemperature = 0x04
	featVWC         = 0x06
	featNumQueues   = 0x07
	featAEC         = 0x0B
	featKATO        = 0x0F
)

func (c *controller) setFeatures(q *conn, o *op) Status {
	cmd := &o.cmd
	if cmd.CDW10&(1<<31) != 0 {
		return statusFeatureNotSaveable
	}
	// Feature data, if any, is not used by the features we support, but
	// must be taken off the wire.
	if st := q.fetchData(o); !st.OK() {
		return st
	}
	fid := uint8(cmd.CDW10)
	v := cmd.CDW11
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case fid == featKATO:
		c.setKATOLocked(time.Duration(v) * time.Millisecond)
	case fid == featAEC:
		c.mu.aec = v
	case fid == featNumQueues && !c.discovery:
		nsq, ncq := v&0xFFFF, v>>16
		if nsq == 0xFFFF || ncq == 0xFFFF {
			return statusInvalidField
		}
		n := uint16(min(nsq+1, ncq+1, uint32(c.cfg.maxIOQueues)))
		c.mu.queues = n
		o.cqe.DW0 = uint32(n-1) | uint32(n-1)<<16
	case fid == featVWC && !c.discovery:
		c.mu.wce = v&1 != 0
	case fid == featTemperature && !c.discovery:
		c.mu.temp = v & 0xFFFF
	default:
		return statusInvalidField
	}
	return statusSuccess
}

func (c *controller) getFeatures(o *op) Status {
	cmd := &o.cmd
	fid := uint8(cmd.CDW10)
	sel := cmd.CDW10 >> 8 & 7
	c.mu.Lock()
	defer c.mu.Unlock()
	if sel == 3 { // supported capabilities: changeable, not saveable
		switch fid {
		case featKATO, featAEC, featNumQueues, featVWC, featTemperature:
			o.cqe.DW0 = 1 << 2
			return statusSuccess
		}
		return statusInvalidField
	}
	switch {
	case fid == featKATO:
		o.cqe.DW0 = uint32(c.mu.kato / time.Millisecond)
	case fid == featAEC:
		o.cqe.DW0 = c.mu.aec
	case fid == featNumQueues && !c.discovery:
		n := c.mu.queues
		if n == 0 || sel == 1 {
			n = uint16(c.cfg.maxIOQueues)
		}
		o.cqe.DW0 = uint32(n-1) | uint32(n-1)<<16
	case fid == featVWC && !c.discovery:
		if c.mu.wce {
			o.cqe.DW0 = 1
		}
	case fid == featTemperature && !c.discovery:
		o.cqe.DW0 = c.mu.temp
	default:
		return statusInvalidField
	}
	return statusSuccess
}
