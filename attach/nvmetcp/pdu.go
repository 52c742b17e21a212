package nvmetcp

// The NVMe/TCP transport PDUs (NVM Express TCP Transport Specification
// 1.0, section 3), as a pure codec: appenders that encode into a caller's
// buffer and parsers that decode a caller's bytes. Nothing here does I/O,
// allocates based on an unchecked length, or panics on any input. Every
// integer is little-endian.

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// PDU types.
const (
	pduICReq       uint8 = 0x00
	pduICResp      uint8 = 0x01
	pduH2CTermReq  uint8 = 0x02
	pduC2HTermReq  uint8 = 0x03
	pduCapsuleCmd  uint8 = 0x04
	pduCapsuleResp uint8 = 0x05
	pduH2CData     uint8 = 0x06
	pduC2HData     uint8 = 0x07
	pduR2T         uint8 = 0x09
)

// Flags of the common header.
const (
	flagHDGST       uint8 = 1 << 0 // a header digest follows the header
	flagDDGST       uint8 = 1 << 1 // a data digest follows the data
	flagDataLast    uint8 = 1 << 2 // H2CData/C2HData: last PDU of the transfer
	flagDataSuccess uint8 = 1 << 3 // C2HData: the command succeeded, no CapsuleResp follows
)

// Lengths.
const (
	commonHeaderLen   = 8
	icPDULen          = 128 // ICReq and ICResp
	capsuleCmdHdrLen  = 8 + sqeLen
	capsuleRespLen    = 8 + cqeLen
	dataHdrLen        = 24 // H2CData and C2HData
	r2tLen            = 24
	termReqHdrLen     = 24
	digestLen         = 4
	maxTermReqData    = 128 // the PDU header in error that a TermReq carries
	sqeLen            = 64
	cqeLen            = 16
	minMaxH2CData     = 4096 // Linux refuses a smaller MAXH2CDATA
	maxHPDA           = 31   // ICReq HPDA: alignment (HPDA+1)*4 bytes
	digestHeaderFlag  = 1 << 0
	digestDataFlag    = 1 << 1
	termReqMaxPLen    = termReqHdrLen + maxTermReqData
	maxPDUHeaderBytes = icPDULen // the longest header of any PDU
)

// Fatal error status values of a TermReq.
const (
	fesInvalidHeaderField uint16 = 0x01
	fesPDUSequenceError   uint16 = 0x02
	fesHeaderDigestError  uint16 = 0x03
	fesDataOutOfRange     uint16 = 0x04
	fesDataLimitExceeded  uint16 = 0x05
	fesUnsupportedParam   uint16 = 0x06
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the digest NVMe/TCP uses for headers and data.
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// crc32cUpdate continues a digest over more bytes.
func crc32cUpdate(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// fatalError is a transport error after which the connection ends with a
// TermReq carrying fes and fei (the byte offset of the offending header
// field, or 0).
type fatalError struct {
	fes uint16
	fei uint32
	msg string
}

func (e *fatalError) Error() string {
	return fmt.Sprintf("nvmetcp: fatal transport error (FES %#x, FEI %d): %s", e.fes, e.fei, e.msg)
}

func fatalf(fes uint16, fei uint32, format string, args ...any) *fatalError {
	return &fatalError{fes: fes, fei: fei, msg: fmt.Sprintf(format, args...)}
}

// header is the common header of every PDU.
type header struct {
	Type  uint8
	Flags uint8
	HLen  uint8
	PDO   uint8
	PLen  uint32
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < commonHeaderLen {
		return header{}, false
	}
	return header{Type: b[0], Flags: b[1], HLen: b[2], PDO: b[3], PLen: binary.LittleEndian.Uint32(b[4:])}, true
}

func appendHeader(dst []byte, h header) []byte {
	dst = append(dst, h.Type, h.Flags, h.HLen, h.PDO)
	return binary.LittleEndian.AppendUint32(dst, h.PLen)
}

// digests are the digests negotiated on a connection.
type digests struct{ header, data bool }

func (d digests) hdgstLen() int {
	if d.header {
		return digestLen
	}
	return 0
}

func (d digests) ddgstLen() int {
	if d.data {
		return digestLen
	}
	return 0
}

// frame says where the parts of a received PDU lie once its common header
// has been checked: the specific header (with its digest), padding, the
// data and its digest.
type frame struct {
	h       header
	hdrLen  int // HLEN + header digest: bytes from the PDU start to the end of the header digest
	pad     int // bytes between the header digest and the data (PDO alignment)
	dataLen int
	ddgst   bool // a data digest follows the data
}

// rxLimits bounds what a peer may send on one connection.
type rxLimits struct {
	dg digests
	// maxCapsuleData bounds the in-capsule data of one CapsuleCmd.
	maxCapsuleData int
	// maxH2CData bounds the data of one H2CData PDU (MAXH2CDATA).
	maxH2CData int
	// host is true on the initiator side (it receives C2H PDUs).
	host bool
}

// expectedHLen is the HLEN each PDU type must carry.
func expectedHLen(typ uint8) (int, bool) {
	switch typ {
	case pduICReq, pduICResp:
		return icPDULen, true
	case pduH2CTermReq, pduC2HTermReq:
		return termReqHdrLen, true
	case pduCapsuleCmd:
		return capsuleCmdHdrLen, true
	case pduCapsuleResp:
		return capsuleRespLen, true
	case pduH2CData, pduC2HData:
		return dataHdrLen, true
	case pduR2T:
		return r2tLen, true
	}
	return 0, false
}

// frameAfterIC checks the common header of a PDU received once the
// connection is initialized, and says how it is laid out. The errors are
// fatal: the stream cannot be trusted after them.
func (l rxLimits) frameAfterIC(b []byte) (frame, *fatalError) {
	h, ok := parseHeader(b)
	if !ok {
		return frame{}, fatalf(fesInvalidHeaderField, 0, "short header")
	}
	var allowed bool
	switch h.Type {
	case pduH2CTermReq, pduCapsuleCmd, pduH2CData:
		allowed = !l.host
	case pduC2HTermReq, pduCapsuleResp, pduC2HData, pduR2T:
		allowed = l.host
	case pduICReq, pduICResp:
		return frame{}, fatalf(fesPDUSequenceError, 0, "PDU type %#x after initialization", h.Type)
	}
	if !allowed {
		return frame{}, fatalf(fesInvalidHeaderField, 0, "unexpected PDU type %#x", h.Type)
	}
	want, _ := expectedHLen(h.Type)
	if int(h.HLen) != want {
		return frame{}, fatalf(fesInvalidHeaderField, 2, "PDU type %#x with HLEN %d, want %d", h.Type, h.HLen, want)
	}
	f := frame{h: h}
	if h.Type == pduH2CTermReq || h.Type == pduC2HTermReq {
		// TermReqs never carry digests; their data is the header in error.
		if h.PLen < termReqHdrLen || h.PLen > termReqMaxPLen {
			return frame{}, fatalf(fesInvalidHeaderField, 4, "TermReq PLEN %d", h.PLen)
		}
		f.hdrLen = termReqHdrLen
		f.dataLen = int(h.PLen) - termReqHdrLen
		return f, nil
	}
	if (h.Flags&flagHDGST != 0) != l.dg.header {
		return frame{}, fatalf(fesInvalidHeaderField, 1, "HDGSTF %v, negotiated %v", h.Flags&flagHDGST != 0, l.dg.header)
	}
	f.hdrLen = want + l.dg.hdgstLen()
	var maxData int
	switch h.Type {
	case pduCapsuleCmd:
		maxData = l.maxCapsuleData
	case pduH2CData:
		maxData = l.maxH2CData
	case pduC2HData:
		maxData = maxHostDataPDU
	}
	if h.PLen < uint32(f.hdrLen) {
		return frame{}, fatalf(fesInvalidHeaderField, 4, "PLEN %d shorter than the header", h.PLen)
	}
	if h.PLen == uint32(f.hdrLen) {
		// No data. PDO is reserved then.
		if h.Flags&flagDDGST != 0 || h.Type == pduH2CData || h.Type == pduC2HData {
			return frame{}, fatalf(fesInvalidHeaderField, 1, "PDU type %#x without data", h.Type)
		}
		return f, nil
	}
	if maxData == 0 {
		return frame{}, fatalf(fesInvalidHeaderField, 4, "PDU type %#x cannot carry data (PLEN %d)", h.Type, h.PLen)
	}
	if (h.Flags&flagDDGST != 0) != l.dg.data {
		return frame{}, fatalf(fesInvalidHeaderField, 1, "DDGSTF %v, negotiated %v", h.Flags&flagDDGST != 0, l.dg.data)
	}
	if int(h.PDO) < f.hdrLen || int(h.PDO) > f.hdrLen+maxPDOPadding {
		return frame{}, fatalf(fesInvalidHeaderField, 3, "PDO %d with header of %d bytes", h.PDO, f.hdrLen)
	}
	f.pad = int(h.PDO) - f.hdrLen
	f.ddgst = l.dg.data
	rest := int64(h.PLen) - int64(h.PDO) - int64(l.dg.ddgstLen())
	if rest <= 0 {
		return frame{}, fatalf(fesInvalidHeaderField, 4, "PLEN %d leaves no data after PDO %d", h.PLen, h.PDO)
	}
	if rest > int64(maxData) {
		return frame{}, fatalf(fesDataLimitExceeded, 4, "%d data bytes in PDU type %#x, limit %d", rest, h.Type, maxData)
	}
	f.dataLen = int(rest)
	return f, nil
}

// maxPDOPadding bounds the padding a peer may put before data: the
// largest alignment either side may ask for is 128 bytes.
const maxPDOPadding = 128

// maxHostDataPDU bounds one C2HData PDU the initiator accepts.
const maxHostDataPDU = 64 << 20

// verifyHeaderDigest checks the digest that follows a header of hlen
// bytes in b.
func verifyHeaderDigest(b []byte, hlen int) bool {
	if len(b) < hlen+digestLen {
		return false
	}
	return crc32c(b[:hlen]) == binary.LittleEndian.Uint32(b[hlen:])
}

// ---- Initialize connection ----

// icReq is an ICReq: what the host asks for.
type icReq struct {
	PFV    uint16
	HPDA   uint8
	Digest uint8 // digestHeaderFlag | digestDataFlag
	MaxR2T uint32
}

// parseICReq checks and decodes a whole ICReq PDU (128 bytes).
func parseICReq(b []byte) (icReq, *fatalError) {
	h, ok := parseHeader(b)
	if !ok || len(b) < icPDULen {
		return icReq{}, fatalf(fesInvalidHeaderField, 0, "short ICReq")
	}
	switch {
	case h.Type != pduICReq:
		return icReq{}, fatalf(fesPDUSequenceError, 0, "PDU type %#x before ICReq", h.Type)
	case h.HLen != icPDULen:
		return icReq{}, fatalf(fesInvalidHeaderField, 2, "ICReq HLEN %d", h.HLen)
	case h.PLen != icPDULen:
		return icReq{}, fatalf(fesInvalidHeaderField, 4, "ICReq PLEN %d", h.PLen)
	}
	r := icReq{
		PFV:    binary.LittleEndian.Uint16(b[8:]),
		HPDA:   b[10],
		Digest: b[11],
		MaxR2T: binary.LittleEndian.Uint32(b[12:]),
	}
	switch {
	case r.PFV != 0:
		return r, fatalf(fesInvalidHeaderField, 8, "ICReq PFV %d, only 0 is defined", r.PFV)
	case r.HPDA > maxHPDA:
		return r, fatalf(fesInvalidHeaderField, 10, "ICReq HPDA %d above %d", r.HPDA, maxHPDA)
	case r.Digest&^(digestHeaderFlag|digestDataFlag) != 0:
		return r, fatalf(fesInvalidHeaderField, 11, "ICReq DGST %#x has unknown bits", r.Digest)
	}
	return r, nil
}

func appendICReq(dst []byte, r icReq) []byte {
	dst = appendHeader(dst, header{Type: pduICReq, HLen: icPDULen, PLen: icPDULen})
	dst = binary.LittleEndian.AppendUint16(dst, r.PFV)
	dst = append(dst, r.HPDA, r.Digest)
	dst = binary.LittleEndian.AppendUint32(dst, r.MaxR2T)
	return append(dst, make([]byte, icPDULen-16)...)
}

// icResp is an ICResp: what the controller grants.
type icResp struct {
	PFV        uint16
	CPDA       uint8
	Digest     uint8
	MaxH2CData uint32
}

func appendICResp(dst []byte, r icResp) []byte {
	dst = appendHeader(dst, header{Type: pduICResp, HLen: icPDULen, PLen: icPDULen})
	dst = binary.LittleEndian.AppendUint16(dst, r.PFV)
	dst = append(dst, r.CPDA, r.Digest)
	dst = binary.LittleEndian.AppendUint32(dst, r.MaxH2CData)
	return append(dst, make([]byte, icPDULen-16)...)
}

// parseICResp checks an ICResp as the Linux host does.
func parseICResp(b []byte, want uint8) (icResp, error) {
	h, ok := parseHeader(b)
	if !ok || len(b) < icPDULen {
		return icResp{}, fmt.Errorf("nvmetcp: short ICResp")
	}
	if h.Type == pduC2HTermReq {
		return icResp{}, fmt.Errorf("nvmetcp: controller refused the connection: %w", parseTermReqError(b))
	}
	if h.Type != pduICResp || h.HLen != icPDULen || h.PLen != icPDULen {
		return icResp{}, fmt.Errorf("nvmetcp: bad ICResp header %+v", h)
	}
	r := icResp{
		PFV:        binary.LittleEndian.Uint16(b[8:]),
		CPDA:       b[10],
		Digest:     b[11],
		MaxH2CData: binary.LittleEndian.Uint32(b[12:]),
	}
	switch {
	case r.PFV != 0:
		return r, fmt.Errorf("nvmetcp: ICResp PFV %d", r.PFV)
	case r.Digest != want:
		return r, fmt.Errorf("nvmetcp: ICResp digests %#x, asked for %#x", r.Digest, want)
	case r.CPDA != 0:
		return r, fmt.Errorf("nvmetcp: ICResp CPDA %d unsupported", r.CPDA)
	case r.MaxH2CData%4 != 0 || r.MaxH2CData < minMaxH2CData:
		return r, fmt.Errorf("nvmetcp: ICResp MAXH2CDATA %d invalid", r.MaxH2CData)
	}
	return r, nil
}

// ---- Termination ----

// appendTermReq encodes a TermReq (typ is pduC2HTermReq or pduH2CTermReq)
// carrying up to maxTermReqData bytes of the header in error.
func appendTermReq(dst []byte, typ uint8, fes uint16, fei uint32, errHdr []byte) []byte {
	if len(errHdr) > maxTermReqData {
		errHdr = errHdr[:maxTermReqData]
	}
	dst = appendHeader(dst, header{Type: typ, HLen: termReqHdrLen, PLen: uint32(termReqHdrLen + len(errHdr))})
	dst = binary.LittleEndian.AppendUint16(dst, fes)
	dst = binary.LittleEndian.AppendUint32(dst, fei)
	dst = append(dst, make([]byte, termReqHdrLen-14)...)
	return append(dst, errHdr...)
}

// TermReqError is a TermReq received from the peer.
type TermReqError struct {
	FES uint16
	FEI uint32
}

func (e *TermReqError) Error() string {
	names := map[uint16]string{
		fesInvalidHeaderField: "invalid PDU header field",
		fesPDUSequenceError:   "PDU sequence error",
		fesHeaderDigestError:  "header digest error",
		fesDataOutOfRange:     "data transfer out of range",
		fesDataLimitExceeded:  "data transfer limit exceeded",
		fesUnsupportedParam:   "unsupported parameter",
	}
	n, ok := names[e.FES]
	if !ok {
		n = "unknown"
	}
	return fmt.Sprintf("nvmetcp: connection terminated by peer: FES %#x (%s), FEI %d", e.FES, n, e.FEI)
}

func parseTermReqError(b []byte) *TermReqError {
	if len(b) < 14 {
		return &TermReqError{}
	}
	return &TermReqError{FES: binary.LittleEndian.Uint16(b[8:]), FEI: binary.LittleEndian.Uint32(b[10:])}
}

// ---- Capsules ----

// appendCapsuleCmdHeader encodes a CapsuleCmd's header, SQE and header
// digest; dataLen bytes of in-capsule data (and their digest, if dg.data)
// follow, written by the caller.
func appendCapsuleCmdHeader(dst []byte, sqe *[sqeLen]byte, dataLen int, dg digests) []byte {
	h := header{Type: pduCapsuleCmd, HLen: capsuleCmdHdrLen}
	hl := capsuleCmdHdrLen + dg.hdgstLen()
	plen := hl
	if dg.header {
		h.Flags |= flagHDGST
	}
	if dataLen > 0 {
		h.PDO = uint8(hl)
		plen += dataLen + dg.ddgstLen()
		if dg.data {
			h.Flags |= flagDDGST
		}
	}
	h.PLen = uint32(plen)
	start := len(dst)
	dst = appendHeader(dst, h)
	dst = append(dst, sqe[:]...)
	if dg.header {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	return dst
}

// appendCapsuleResp encodes a CapsuleResp carrying cqe.
func appendCapsuleResp(dst []byte, cqe *Completion, dg digests) []byte {
	h := header{Type: pduCapsuleResp, HLen: capsuleRespLen, PLen: uint32(capsuleRespLen + dg.hdgstLen())}
	if dg.header {
		h.Flags |= flagHDGST
	}
	start := len(dst)
	dst = appendHeader(dst, h)
	dst = cqe.append(dst)
	if dg.header {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	return dst
}

// dataPDU is the specific header of H2CData and C2HData PDUs.
type dataPDU struct {
	CCCID uint16
	TTag  uint16 // H2CData only
	DataO uint32
	DataL uint32
}

func parseDataPDU(b []byte) dataPDU {
	if len(b) < dataHdrLen {
		return dataPDU{}
	}
	return dataPDU{
		CCCID: binary.LittleEndian.Uint16(b[8:]),
		TTag:  binary.LittleEndian.Uint16(b[10:]),
		DataO: binary.LittleEndian.Uint32(b[12:]),
		DataL: binary.LittleEndian.Uint32(b[16:]),
	}
}

// appendDataHeader encodes the header (and header digest) of an H2CData
// or C2HData PDU whose data follows after pad bytes of padding; the
// caller appends padding, data and data digest.
func appendDataHeader(dst []byte, typ uint8, flags uint8, d dataPDU, pad int, dg digests) []byte {
	hl := dataHdrLen + dg.hdgstLen()
	h := header{Type: typ, Flags: flags, HLen: dataHdrLen, PDO: uint8(hl + pad),
		PLen: uint32(hl + pad + int(d.DataL) + dg.ddgstLen())}
	if dg.header {
		h.Flags |= flagHDGST
	}
	if dg.data {
		h.Flags |= flagDDGST
	}
	start := len(dst)
	dst = appendHeader(dst, h)
	dst = binary.LittleEndian.AppendUint16(dst, d.CCCID)
	dst = binary.LittleEndian.AppendUint16(dst, d.TTag)
	dst = binary.LittleEndian.AppendUint32(dst, d.DataO)
	dst = binary.LittleEndian.AppendUint32(dst, d.DataL)
	dst = append(dst, 0, 0, 0, 0)
	if dg.header {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	return append(dst, make([]byte, pad)...)
}

// r2tPDU is the specific header of an R2T.
type r2tPDU struct {
	CCCID uint16
	TTag  uint16
	R2TO  uint32
	R2TL  uint32
}

func parseR2T(b []byte) r2tPDU {
	if len(b) < r2tLen {
		return r2tPDU{}
	}
	return r2tPDU{
		CCCID: binary.LittleEndian.Uint16(b[8:]),
		TTag:  binary.LittleEndian.Uint16(b[10:]),
		R2TO:  binary.LittleEndian.Uint32(b[12:]),
		R2TL:  binary.LittleEndian.Uint32(b[16:]),
	}
}

func appendR2T(dst []byte, r r2tPDU, dg digests) []byte {
	h := header{Type: pduR2T, HLen: r2tLen, PLen: uint32(r2tLen + dg.hdgstLen())}
	if dg.header {
		h.Flags |= flagHDGST
	}
	start := len(dst)
	dst = appendHeader(dst, h)
	dst = binary.LittleEndian.AppendUint16(dst, r.CCCID)
	dst = binary.LittleEndian.AppendUint16(dst, r.TTag)
	dst = binary.LittleEndian.AppendUint32(dst, r.R2TO)
	dst = binary.LittleEndian.AppendUint32(dst, r.R2TL)
	dst = append(dst, 0, 0, 0, 0)
	if dg.header {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	return dst
}
