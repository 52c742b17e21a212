package nvmetcp

// NVMe commands, completions and status codes (NVM Express Base
// Specification 2.x, NVM Command Set Specification 1.x), as a pure codec.

import (
	"encoding/binary"
	"fmt"
)

// Admin command opcodes.
const (
	adminGetLogPage  uint8 = 0x02
	adminIdentify    uint8 = 0x06
	adminAbort       uint8 = 0x08
	adminSetFeatures uint8 = 0x09
	adminGetFeatures uint8 = 0x0A
	adminAER         uint8 = 0x0C
	adminKeepAlive   uint8 = 0x18
	opFabrics        uint8 = 0x7F
)

// NVM command set I/O opcodes.
const (
	ioFlush       uint8 = 0x00
	ioWrite       uint8 = 0x01
	ioRead        uint8 = 0x02
	ioWriteZeroes uint8 = 0x08
	ioDSM         uint8 = 0x09
)

// Fabrics command types (the FCTYPE of opcode 0x7F).
const (
	fctPropertySet uint8 = 0x00
	fctConnect     uint8 = 0x01
	fctPropertyGet uint8 = 0x04
	fctDisconnect  uint8 = 0x08
)

// Controller properties (register offsets).
const (
	propCAP  uint32 = 0x00
	propVS   uint32 = 0x08
	propCC   uint32 = 0x14
	propCSTS uint32 = 0x1C
)

// Status is the 15-bit status field of a completion: SC in bits 7:0, SCT
// in bits 10:8, CRD in 12:11, More in 13, DNR in 14 (the CQE carries it
// shifted left by one, above the phase bit).
type Status uint16

// Status code types.
const (
	sctGeneric         = 0
	sctCommandSpecific = 1
	sctMedia           = 2
)

func mkStatus(sct, sc uint8, dnr bool) Status {
	s := Status(sc) | Status(sct&7)<<8
	if dnr {
		s |= 1 << 14
	}
	return s
}

// The status values the target returns.
var (
	statusSuccess               Status = 0
	statusInvalidOpcode                = mkStatus(sctGeneric, 0x01, true)
	statusInvalidField                 = mkStatus(sctGeneric, 0x02, true)
	statusDataXferError                = mkStatus(sctGeneric, 0x04, false)
	statusInternalError                = mkStatus(sctGeneric, 0x06, false)
	statusAbortSQDeleted               = mkStatus(sctGeneric, 0x08, false)
	statusInvalidNamespace             = mkStatus(sctGeneric, 0x0B, true)
	statusCmdSeqError                  = mkStatus(sctGeneric, 0x0C, true)
	statusSGLLengthInvalid             = mkStatus(sctGeneric, 0x0F, true)
	statusSGLTypeInvalid               = mkStatus(sctGeneric, 0x11, true)
	statusSGLOffsetInvalid             = mkStatus(sctGeneric, 0x16, true)
	statusLBAOutOfRange                = mkStatus(sctGeneric, 0x80, true)
	statusCapacityExceeded             = mkStatus(sctGeneric, 0x81, true)
	statusAERLimitExceeded             = mkStatus(sctCommandSpecific, 0x05, true)
	statusInvalidLogPage               = mkStatus(sctCommandSpecific, 0x09, true)
	statusFeatureNotSaveable           = mkStatus(sctCommandSpecific, 0x0D, true)
	statusConnectIncompatFormat        = mkStatus(sctCommandSpecific, 0x80, true)
	statusConnectControllerBusy        = mkStatus(sctCommandSpecific, 0x81, false)
	statusConnectInvalidParam          = mkStatus(sctCommandSpecific, 0x82, true)
	statusConnectInvalidHost           = mkStatus(sctCommandSpecific, 0x84, true)
	statusAccessDenied                 = mkStatus(sctMedia, 0x86, true)
)

// SCT is the status code type.
func (s Status) SCT() uint8 { return uint8(s>>8) & 7 }

// SC is the status code.
func (s Status) SC() uint8 { return uint8(s) }

// DNR reports whether the command should not be retried.
func (s Status) DNR() bool { return s&(1<<14) != 0 }

// OK reports success.
func (s Status) OK() bool { return s&0x7FF == 0 }

// statusNames names the status values by SCT<<8 | SC.
var statusNames = map[uint16]string{
	0x001: "Invalid Command Opcode",
	0x002: "Invalid Field in Command",
	0x004: "Data Transfer Error",
	0x006: "Internal Error",
	0x008: "Command Aborted due to SQ Deletion",
	0x00B: "Invalid Namespace or Format",
	0x00C: "Command Sequence Error",
	0x00F: "Data SGL Length Invalid",
	0x011: "SGL Descriptor Type Invalid",
	0x016: "SGL Offset Invalid",
	0x080: "LBA Out of Range",
	0x081: "Capacity Exceeded",
	0x105: "Asynchronous Event Request Limit Exceeded",
	0x109: "Invalid Log Page",
	0x10D: "Feature Identifier Not Saveable",
	0x10E: "Feature Not Changeable",
	0x180: "Incompatible Format",
	0x182: "Connect Invalid Parameters",
	0x184: "Connect Invalid Host",
	0x286: "Access Denied",
}

func (s Status) String() string {
	n, ok := statusNames[uint16(s)&0x7FF]
	if !ok {
		n = "unknown status"
	}
	dnr := ""
	if s.DNR() {
		dnr = ", DNR"
	}
	return fmt.Sprintf("SCT %#x SC %#02x (%s%s)", s.SCT(), s.SC(), n, dnr)
}

// Error makes a non-success Status an error (as the initiator returns it).
func (s Status) Error() string { return "nvme: " + s.String() }

// SGL descriptor types (type in bits 7:4, subtype in 3:0).
const (
	sglDataBlockOffset     uint8 = 0x01 // Data Block, Offset: in-capsule data
	sglTransportDataBlockA uint8 = 0x5A // Transport Data Block, transport-specific: data by R2T/C2HData
)

// SGL is the data pointer of a fabrics command: one SGL descriptor.
type SGL struct {
	Addr   uint64
	Length uint32
	Type   uint8
}

// Command is a submission queue entry (64 bytes).
type Command struct {
	Opcode uint8
	Flags  uint8 // FUSE in bits 1:0, PSDT in bits 7:6
	CID    uint16
	NSID   uint32 // for fabrics commands, FCTYPE is its low byte
	CDW2   uint32
	CDW3   uint32
	MPTR   uint64
	SGL    SGL
	CDW10  uint32
	CDW11  uint32
	CDW12  uint32
	CDW13  uint32
	CDW14  uint32
	CDW15  uint32
}

// cmdFlagSGL is PSDT = 01b: an SGL for data, metadata contiguous. Fabrics
// require it.
const cmdFlagSGL uint8 = 0x40

func parseCommand(b []byte) Command {
	var c Command
	if len(b) < sqeLen {
		return c
	}
	le := binary.LittleEndian
	c.Opcode = b[0]
	c.Flags = b[1]
	c.CID = le.Uint16(b[2:])
	c.NSID = le.Uint32(b[4:])
	c.CDW2 = le.Uint32(b[8:])
	c.CDW3 = le.Uint32(b[12:])
	c.MPTR = le.Uint64(b[16:])
	c.SGL = SGL{Addr: le.Uint64(b[24:]), Length: le.Uint32(b[32:]), Type: b[39]}
	c.CDW10 = le.Uint32(b[40:])
	c.CDW11 = le.Uint32(b[44:])
	c.CDW12 = le.Uint32(b[48:])
	c.CDW13 = le.Uint32(b[52:])
	c.CDW14 = le.Uint32(b[56:])
	c.CDW15 = le.Uint32(b[60:])
	return c
}

func (c *Command) encode(b *[sqeLen]byte) {
	le := binary.LittleEndian
	*b = [sqeLen]byte{}
	b[0] = c.Opcode
	b[1] = c.Flags
	le.PutUint16(b[2:], c.CID)
	le.PutUint32(b[4:], c.NSID)
	le.PutUint32(b[8:], c.CDW2)
	le.PutUint32(b[12:], c.CDW3)
	le.PutUint64(b[16:], c.MPTR)
	le.PutUint64(b[24:], c.SGL.Addr)
	le.PutUint32(b[32:], c.SGL.Length)
	b[39] = c.SGL.Type
	le.PutUint32(b[40:], c.CDW10)
	le.PutUint32(b[44:], c.CDW11)
	le.PutUint32(b[48:], c.CDW12)
	le.PutUint32(b[52:], c.CDW13)
	le.PutUint32(b[56:], c.CDW14)
	le.PutUint32(b[60:], c.CDW15)
}

func (c *Command) fctype() uint8 { return uint8(c.NSID) }

// Data transfer direction of an opcode (bits 1:0).
func hostToController(opcode uint8) bool { return opcode&1 != 0 }
func controllerToHost(opcode uint8) bool { return opcode&2 != 0 }

// Completion is a completion queue entry (16 bytes).
type Completion struct {
	DW0    uint32
	DW1    uint32
	SQHD   uint16
	SQID   uint16
	CID    uint16
	Status Status
}

func (c *Completion) append(dst []byte) []byte {
	le := binary.LittleEndian
	dst = le.AppendUint32(dst, c.DW0)
	dst = le.AppendUint32(dst, c.DW1)
	dst = le.AppendUint16(dst, c.SQHD)
	dst = le.AppendUint16(dst, c.SQID)
	dst = le.AppendUint16(dst, c.CID)
	return le.AppendUint16(dst, uint16(c.Status)<<1) // phase bit 0: unused on fabrics
}

func parseCompletion(b []byte) Completion {
	if len(b) < cqeLen {
		return Completion{}
	}
	le := binary.LittleEndian
	return Completion{
		DW0:    le.Uint32(b[0:]),
		DW1:    le.Uint32(b[4:]),
		SQHD:   le.Uint16(b[8:]),
		SQID:   le.Uint16(b[10:]),
		CID:    le.Uint16(b[12:]),
		Status: Status(le.Uint16(b[14:]) >> 1),
	}
}

// ---- Fabrics Connect ----

// Connect data layout (1024 bytes, in-capsule).
const (
	connectDataLen     = 1024
	connectHostIDOff   = 0
	connectCntlidOff   = 16
	connectSubNQNOff   = 256
	connectHostNQNOff  = 512
	nqnFieldLen        = 256
	maxNQNLen          = 223 // NVMe: an NQN is at most 223 bytes
	dynamicCntlid      = 0xFFFF
	connectQIDOff      = 42 // byte offsets in the SQE, for IPO
	connectSQSizeOff   = 44
	connectCattrDisSQF = 1 << 2 // CATTR: disable SQ flow control
)

// DiscoveryNQN is the well-known NQN of discovery controllers.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// connectCmd is a Connect command's fields.
type connectCmd struct {
	RecFmt uint16
	QID    uint16
	SQSize uint16 // 0-based
	CAttr  uint8
	KATO   uint32 // milliseconds
}

func parseConnectCmd(c *Command) connectCmd {
	return connectCmd{
		RecFmt: uint16(c.CDW10),
		QID:    uint16(c.CDW10 >> 16),
		SQSize: uint16(c.CDW11),
		CAttr:  uint8(c.CDW11 >> 16),
		KATO:   c.CDW12,
	}
}

// connectData is a Connect command's data.
type connectData struct {
	HostID  [16]byte
	Cntlid  uint16
	SubNQN  string
	HostNQN string
}

// parseConnectData decodes connect data; bad is the byte offset of a
// malformed NQN field, or -1.
func parseConnectData(b []byte) (d connectData, bad int) {
	if len(b) < connectDataLen {
		return d, 0
	}
	copy(d.HostID[:], b[connectHostIDOff:])
	d.Cntlid = binary.LittleEndian.Uint16(b[connectCntlidOff:])
	var ok bool
	if d.SubNQN, ok = nqnField(b[connectSubNQNOff : connectSubNQNOff+nqnFieldLen]); !ok {
		return d, connectSubNQNOff
	}
	if d.HostNQN, ok = nqnField(b[connectHostNQNOff : connectHostNQNOff+nqnFieldLen]); !ok {
		return d, connectHostNQNOff
	}
	return d, -1
}

// nqnField decodes a NUL-terminated NQN of 1..223 printable bytes.
func nqnField(b []byte) (string, bool) {
	n := 0
	for n < len(b) && b[n] != 0 {
		if b[n] < 0x20 || b[n] > 0x7e {
			return "", false
		}
		n++
	}
	if n == 0 || n > maxNQNLen {
		return "", false
	}
	return string(b[:n]), true
}

func appendConnectData(dst []byte, d connectData) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, connectDataLen)...)
	b := dst[start:]
	copy(b[connectHostIDOff:], d.HostID[:])
	binary.LittleEndian.PutUint16(b[connectCntlidOff:], d.Cntlid)
	copy(b[connectSubNQNOff:connectSubNQNOff+nqnFieldLen-1], d.SubNQN)
	copy(b[connectHostNQNOff:connectHostNQNOff+nqnFieldLen-1], d.HostNQN)
	return dst
}

// ipoConnectData is the DW0 of Connect Invalid Parameters that points at
// a field of the connect data (IATTR = 1) ...
func ipoConnectData(off int) uint32 { return 1<<16 | uint32(off) }

// ... and ipoConnectSQE points at a field of the SQE (IATTR = 0).
func ipoConnectSQE(off int) uint32 { return uint32(off) }
