package nvmetcp

// The data structures the controller returns: Identify data and log
// pages, built by pure functions from plain values.

import (
	"encoding/binary"
	"fmt"
	"strings"
)

const (
	identifyLen = 4096
	smartLogLen = 512
	fwLogLen    = 512
	errEntryLen = 64
	changedLen  = 4096
	effectsLen  = 4096
	discHdrLen  = 1024
	discEntLen  = 1024
)

// Identify CNS values.
const (
	cnsNamespace        = 0x00
	cnsController       = 0x01
	cnsActiveNSList     = 0x02
	cnsNSDescriptors    = 0x03
	cnsCSNamespace      = 0x05
	cnsCSController     = 0x06
	cnsCSActiveNSList   = 0x07
	cnsIndependentNS    = 0x08
	nsidAll             = 0xFFFFFFFF
	controllerTypeIO    = 1
	controllerTypeDisc  = 2
	nvmeVersion         = 0x00010300 // 1.3.0
	logError            = 0x01
	logSMART            = 0x02
	logFirmware         = 0x03
	logChangedNS        = 0x04
	logEffects          = 0x05
	logDiscovery        = 0x70
	nidtEUI64           = 0x01
	nidtNGUID           = 0x02
	nidtUUID            = 0x03
	nidtCSI             = 0x04
	aenNamespaceChanged = 0x00 // async event information of a Notice
	aenTypeNotice       = 0x02
	oaesNamespaceAttr   = 1 << 8
)

// ctrlIdentity is what Identify Controller reports.
type ctrlIdentity struct {
	cntlid    uint16
	subNQN    string
	serial    string
	model     string
	firmware  string
	discovery bool
	mdts      uint8  // max transfer = 2^mdts * 4 KiB
	maxCmd    uint16 // commands outstanding per queue
	ioccsz    uint32 // I/O command capsule size in 16-byte units
	vwc       bool
	aerl      uint8 // AER commands outstanding, 0-based
	kas       uint16
	multiPort bool
}

// putString writes s into a fixed ASCII field padded with spaces.
func putString(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

func identifyController(id ctrlIdentity) []byte {
	b := make([]byte, identifyLen)
	le := binary.LittleEndian
	putString(b[4:24], id.serial)
	putString(b[24:64], id.model)
	putString(b[64:72], id.firmware)
	b[72] = 0             // RAB
	cmic := uint8(1 << 1) // may have two or more controllers
	if id.multiPort {
		cmic |= 1 << 0
	}
	if !id.discovery {
		b[76] = cmic
	}
	b[77] = id.mdts
	le.PutUint16(b[78:], id.cntlid)
	le.PutUint32(b[80:], nvmeVersion)
	if !id.discovery {
		le.PutUint32(b[92:], oaesNamespaceAttr)
		b[111] = controllerTypeIO
	} else {
		b[111] = controllerTypeDisc
	}
	b[259] = id.aerl
	if !id.discovery {
		b[260] = 0x03 // FRMW: one slot, read-only
	}
	b[261] = 1<<1 | 1<<2 // LPA: commands supported and effects log, extended data for Get Log Page
	b[262] = 0           // ELPE: one error log entry
	le.PutUint16(b[320:], id.kas)
	b[512] = 0x66 // SQES
	b[513] = 0x44 // CQES
	le.PutUint16(b[514:], id.maxCmd)
	if !id.discovery {
		le.PutUint32(b[516:], 1)         // NN
		le.PutUint16(b[520:], 1<<2|1<<3) // ONCS: DSM, Write Zeroes
		if id.vwc {
			b[525] = 1
		}
	}
	le.PutUint32(b[536:], 1<<0|1<<20) // SGLS: SGLs supported; offsets in in-capsule data
	copy(b[768:768+nqnFieldLen-1], id.subNQN)
	// Fabrics fields.
	le.PutUint32(b[1792:], id.ioccsz)
	le.PutUint32(b[1796:], cqeLen/16) // IORCSZ
	le.PutUint16(b[1800:], 0)         // ICDOFF
	b[1802] = 0                       // FCATT: dynamic controller model
	b[1803] = 1                       // MSDBD
	return b
}

// nsIdentity is what Identify Namespace reports.
type nsIdentity struct {
	blocks   uint64
	lbads    uint8 // log2 of the block size
	nguid    [16]byte
	uuid     [16]byte
	readOnly bool
}

func identifyNamespace(ns nsIdentity) []byte {
	b := make([]byte, identifyLen)
	le := binary.LittleEndian
	le.PutUint64(b[0:], ns.blocks)  // NSZE
	le.PutUint64(b[8:], ns.blocks)  // NCAP
	le.PutUint64(b[16:], ns.blocks) // NUSE
	b[24] = 1 << 4                  // NSFEAT: NPWG, NPWA, NPDG, NPDA and NOWS are valid
	b[25] = 0                       // NLBAF: one format
	b[26] = 0                       // FLBAS: format 0
	b[30] = 1                       // NMIC: may be attached to several controllers
	b[33] = 1<<3 | 0x1              // DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate
	per4k := uint16(0)
	if ns.lbads < 12 {
		per4k = 1<<(12-ns.lbads) - 1
	}
	for _, off := range []int{64, 66, 68, 70, 72} { // NPWG NPWA NPDG NPDA NOWS
		le.PutUint16(b[off:], per4k)
	}
	if ns.readOnly {
		b[99] = 1 // NSATTR: write protected
	}
	copy(b[104:120], ns.nguid[:])
	b[128+2] = ns.lbads // LBAF0: no metadata, LBADS, best performance
	return b
}

// nsDescriptors is the Namespace Identification Descriptor list.
func nsDescriptors(ns nsIdentity) []byte {
	b := make([]byte, 0, identifyLen)
	b = append(b, nidtNGUID, 16, 0, 0)
	b = append(b, ns.nguid[:]...)
	b = append(b, nidtUUID, 16, 0, 0)
	b = append(b, ns.uuid[:]...)
	b = append(b, nidtCSI, 1, 0, 0, 0) // NVM command set
	return append(b, make([]byte, identifyLen-len(b))...)
}

// activeNSList lists the active namespace IDs above after: only 1 here.
func activeNSList(after uint32) []byte {
	b := make([]byte, identifyLen)
	if after < 1 {
		binary.LittleEndian.PutUint32(b, 1)
	}
	return b
}

// independentNamespace is the I/O command set independent Identify
// Namespace data structure (CNS 8).
func independentNamespace(ns nsIdentity) []byte {
	b := make([]byte, identifyLen)
	b[1] = 1 // NMIC
	if ns.readOnly {
		b[8] = 1
	}
	b[14] = 1 // NSTAT: ready
	return b
}

// smartStats are the counters the SMART / Health log reports.
type smartStats struct {
	unitsRead, unitsWritten uint64 // thousands of 512-byte units, rounded up
	readCmds, writeCmds     uint64
	powerOnHours            uint64
}

func smartLog(s smartStats) []byte {
	b := make([]byte, smartLogLen)
	le := binary.LittleEndian
	le.PutUint16(b[1:], 273+30) // composite temperature, kelvin
	b[3] = 100                  // available spare
	b[4] = 10                   // spare threshold
	le.PutUint64(b[32:], s.unitsRead)
	le.PutUint64(b[48:], s.unitsWritten)
	le.PutUint64(b[64:], s.readCmds)
	le.PutUint64(b[80:], s.writeCmds)
	le.PutUint64(b[112:], 1) // power cycles
	le.PutUint64(b[128:], s.powerOnHours)
	return b
}

func firmwareLog(fr string) []byte {
	b := make([]byte, fwLogLen)
	b[0] = 1 // active slot 1
	putString(b[8:16], fr)
	return b
}

func changedNSLog(changed bool) []byte {
	b := make([]byte, changedLen)
	if changed {
		binary.LittleEndian.PutUint32(b, 1)
	}
	return b
}

// effectsLog is the Commands Supported and Effects log.
func effectsLog(discovery bool) []byte {
	b := make([]byte, effectsLen)
	le := binary.LittleEndian
	const csupp, lbcc = 1 << 0, 1 << 1
	admin := []uint8{adminGetLogPage, adminIdentify, adminAbort, adminSetFeatures, adminGetFeatures, adminAER, adminKeepAlive}
	for _, op := range admin {
		le.PutUint32(b[4*int(op):], csupp)
	}
	if discovery {
		return b
	}
	for op, e := range map[uint8]uint32{ioFlush: csupp, ioRead: csupp, ioWrite: csupp | lbcc, ioWriteZeroes: csupp | lbcc, ioDSM: csupp | lbcc} {
		le.PutUint32(b[1024+4*int(op):], e)
	}
	return b
}

// DiscoveryEntry is one record of the discovery log page.
type DiscoveryEntry struct {
	TrType  uint8 // 3: TCP
	AdrFam  uint8 // 1: IPv4, 2: IPv6
	SubType uint8 // 2: NVMe subsystem, 3: the current discovery subsystem
	TReq    uint8
	PortID  uint16
	Cntlid  uint16
	ASQSZ   uint16
	TrSvcID string
	SubNQN  string
	TrAddr  string
}

// Discovery log values.
const (
	trTypeTCP          = 3
	adrFamIPv4         = 1
	adrFamIPv6         = 2
	subTypeNVMe        = 2
	subTypeCurrentDisc = 3
)

// discoveryLog is the discovery log page: a header and one entry per
// record.
func discoveryLog(genctr uint64, entries []DiscoveryEntry) []byte {
	b := make([]byte, discHdrLen+discEntLen*len(entries))
	le := binary.LittleEndian
	le.PutUint64(b[0:], genctr)
	le.PutUint64(b[8:], uint64(len(entries)))
	le.PutUint16(b[16:], 0) // RECFMT
	for i, e := range entries {
		r := b[discHdrLen+i*discEntLen:][:discEntLen]
		r[0], r[1], r[2], r[3] = e.TrType, e.AdrFam, e.SubType, e.TReq
		le.PutUint16(r[4:], e.PortID)
		le.PutUint16(r[6:], e.Cntlid)
		le.PutUint16(r[8:], e.ASQSZ)
		copy(r[32:64], e.TrSvcID)
		copy(r[256:256+nqnFieldLen-1], e.SubNQN)
		copy(r[512:767], e.TrAddr)
		r[768] = 0 // TSAS for TCP: SECTYPE none
	}
	return b
}

// ParseDiscoveryLog decodes a discovery log page. It fails if b is
// shorter than its header says.
func ParseDiscoveryLog(b []byte) (genctr uint64, entries []DiscoveryEntry, err error) {
	if len(b) < discHdrLen {
		return 0, nil, fmt.Errorf("nvmetcp: discovery log of %d bytes", len(b))
	}
	le := binary.LittleEndian
	genctr = le.Uint64(b)
	n := le.Uint64(b[8:])
	if n > uint64(len(b)-discHdrLen)/discEntLen {
		return genctr, nil, fmt.Errorf("nvmetcp: discovery log says %d records in %d bytes", n, len(b))
	}
	cstr := func(f []byte) string {
		if i := strings.IndexByte(string(f), 0); i >= 0 {
			f = f[:i]
		}
		return strings.TrimRight(string(f), " ")
	}
	for i := 0; i < int(n); i++ {
		r := b[discHdrLen+i*discEntLen:][:discEntLen]
		entries = append(entries, DiscoveryEntry{
			TrType: r[0], AdrFam: r[1], SubType: r[2], TReq: r[3],
			PortID: le.Uint16(r[4:]), Cntlid: le.Uint16(r[6:]), ASQSZ: le.Uint16(r[8:]),
			TrSvcID: cstr(r[32:64]), SubNQN: cstr(r[256:512]), TrAddr: cstr(r[512:768]),
		})
	}
	return genctr, entries, nil
}

// sliceLog returns length bytes of log from offset, zero-filled past its
// end; ok is false if offset lies past the end.
func sliceLog(log []byte, offset uint64, length int) ([]byte, bool) {
	if offset > uint64(len(log)) {
		return nil, false
	}
	out := make([]byte, length)
	copy(out, log[offset:])
	return out, true
}
