package nbd

// The NBD wire format (NetworkBlockDevice/nbd doc/proto.md), as a pure
// codec: appenders that encode into a caller's buffer, parsers that decode
// a caller's bytes, and the validation of a request against an export.
// Nothing here does I/O, allocates based on an unchecked length, or
// panics on any input. Every integer is big-endian.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/ballast-storage/ballast/attach/blockdev"
)

// Block size constraints advertised in NBD_INFO_BLOCK_SIZE.
const (
	MinBlockSize       = 512
	PreferredBlockSize = 4096
	// MaxBlockSize bounds READ and WRITE payloads. A longer READ gets
	// EINVAL; a longer WRITE closes the connection, because its payload
	// (which follows the header) cannot be trusted to be that long.
	MaxBlockSize = 32 << 20
)

// Magic numbers.
const (
	nbdMagic              uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic              uint64 = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic         uint64 = 0x0003e889045565a9
	requestMagic          uint32 = 0x25609513
	simpleReplyMagic      uint32 = 0x67446698
	structuredReplyMagic  uint32 = 0x668e33ef
	extendedRequestMagic  uint32 = 0x21e41c71 // only with EXTENDED_HEADERS, which we refuse
	greetingLen                  = 18
	clientFlagsLen               = 4
	optionHeaderLen              = 16
	optionReplyHeaderLen         = 20
	requestHeaderLen             = 28
	simpleReplyHeaderLen         = 16
	chunkHeaderLen               = 20
	exportNameReplyLen           = 10 // u64 size, u16 flags
	exportNameReplyZeroes        = 124
	maxStringLen                 = 4096 // NBD's limit on names and messages
	maxErrorMessageLen           = 1024 // what we send in an error reply or chunk
	offsetDataHeaderLen          = chunkHeaderLen + 8
	baseAllocationContext        = "base:allocation"
	baseAllocationID      uint32 = 1
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle       uint16 = 1 << 0
	flagNoZeroes            uint16 = 1 << 1
	serverHandshakeFlags           = flagFixedNewstyle | flagNoZeroes
	clientFlagFixedNewstyle uint32 = 1 << 0
	clientFlagNoZeroes      uint32 = 1 << 1
	knownClientFlags               = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	repAck              uint32 = 1
	repServer           uint32 = 2
	repInfo             uint32 = 3
	repMetaContext      uint32 = 4
	repErrBit           uint32 = 1 << 31
	repErrUnsup                = repErrBit | 1
	repErrPolicy               = repErrBit | 2
	repErrInvalid              = repErrBit | 3
	repErrPlatform             = repErrBit | 4
	repErrTLSReqd              = repErrBit | 5
	repErrUnknown              = repErrBit | 6
	repErrShutdown             = repErrBit | 7
	repErrBlockSizeReqd        = repErrBit | 8
	repErrTooBig               = repErrBit | 9
)

// Information types in NBD_REP_INFO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Transmission flags.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagRotational      uint16 = 1 << 4
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagSendDF          uint16 = 1 << 7
	tflagCanMultiConn    uint16 = 1 << 8
	tflagSendResize      uint16 = 1 << 9
	tflagSendCache       uint16 = 1 << 10
	tflagSendFastZero    uint16 = 1 << 11
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags.
const (
	cmdFlagFUA        uint16 = 1 << 0
	cmdFlagNoHole     uint16 = 1 << 1
	cmdFlagDF         uint16 = 1 << 2
	cmdFlagReqOne     uint16 = 1 << 3
	cmdFlagFastZero   uint16 = 1 << 4
	cmdFlagPayloadLen uint16 = 1 << 5
)

// Structured reply flags and chunk types.
const (
	replyFlagDone        uint16 = 1 << 0
	replyTypeNone        uint16 = 0
	replyTypeOffsetData  uint16 = 1
	replyTypeOffsetHole  uint16 = 2
	replyTypeBlockStatus uint16 = 5
	replyTypeError       uint16 = 1<<15 | 1
	replyTypeErrorOffset uint16 = 1<<15 | 2
)

// base:allocation status flags, and the bound on one reply.
const (
	stateHole uint32 = 1 << 0 // NBD_STATE_HOLE: not allocated
	stateZero uint32 = 1 << 1 // NBD_STATE_ZERO: reads as zeroes
	// descriptorLen is one BLOCK_STATUS descriptor: u32 length, u32 flags.
	descriptorLen = 8
	// maxBlockStatusDescriptors bounds the descriptors of one BLOCK_STATUS
	// reply (the spec allows up to 2^20). With 512 the descriptors fill
	// 4 KiB, one pooled buffer, and the chunk stays small; a client
	// whose reply ends early asks again from where it ended.
	maxBlockStatusDescriptors = 512
)

// transmissionFlags are the flags the server advertises. They tell the
// truth: every command they expose is implemented, and CAN_MULTI_CONN
// holds because a Backend makes acknowledged writes visible everywhere.
// SEND_DF is only allowed once structured replies are negotiated.
func transmissionFlags(structured bool) uint16 {
	f := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim |
		tflagSendWriteZeroes | tflagCanMultiConn
	if structured {
		f |= tflagSendDF
	}
	return f
}

// Decoding errors. Callers wrap them with context.
var (
	errShort         = errors.New("nbd: message too short")
	errBadMagic      = errors.New("nbd: bad magic")
	errUnknownFlags  = errors.New("nbd: unknown client flags")
	errBadLength     = errors.New("nbd: inconsistent length")
	errStringTooLong = errors.New("nbd: string longer than 4096 bytes")
	// errBadAllocation: a Backend's Allocation result cannot be encoded
	// (no extent, an empty extent, more than was asked). It is sent as
	// EIO, the class errnoOf gives an error it does not know.
	errBadAllocation = errors.New("nbd: backend returned an invalid allocation map")
)

// ---- Handshake ----

// appendGreeting appends the newstyle greeting: NBDMAGIC, IHAVEOPT and the
// handshake flags.
func appendGreeting(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, nbdMagic)
	b = binary.BigEndian.AppendUint64(b, optMagic)
	return binary.BigEndian.AppendUint16(b, serverHandshakeFlags)
}

// parseClientFlags decodes the client's 32-bit flags. An unknown bit is an
// error: the server must then drop the connection.
func parseClientFlags(b []byte) (uint32, error) {
	if len(b) < clientFlagsLen {
		return 0, errShort
	}
	f := binary.BigEndian.Uint32(b)
	if f&^knownClientFlags != 0 {
		return f, fmt.Errorf("%w: %#x", errUnknownFlags, f)
	}
	return f, nil
}

// optionHeader is the fixed part of a client's option.
type optionHeader struct {
	Option uint32
	Length uint32 // of the data that follows; not yet checked against any bound
}

// parseOptionHeader decodes IHAVEOPT, the option and its data length.
func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < optionHeaderLen {
		return optionHeader{}, errShort
	}
	if m := binary.BigEndian.Uint64(b); m != optMagic {
		return optionHeader{}, fmt.Errorf("%w: option magic %#x", errBadMagic, m)
	}
	return optionHeader{
		Option: binary.BigEndian.Uint32(b[8:]),
		Length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// appendOptionReplyHeader appends an option reply header announcing
// length bytes of data.
func appendOptionReplyHeader(b []byte, opt, typ, length uint32) []byte {
	b = binary.BigEndian.AppendUint64(b, optReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendOptionReply appends a whole option reply.
func appendOptionReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = appendOptionReplyHeader(b, opt, typ, uint32(len(data)))
	return append(b, data...)
}

// appendOptionError appends an error reply whose data is msg, clipped to
// a valid UTF-8 string of at most maxErrorMessageLen bytes.
func appendOptionError(b []byte, opt, typ uint32, msg string) []byte {
	msg = clipMessage(msg)
	b = appendOptionReplyHeader(b, opt, typ, uint32(len(msg)))
	return append(b, msg...)
}

// appendInfoExport appends the data of an NBD_REP_INFO of type
// NBD_INFO_EXPORT.
func appendInfoExport(b []byte, size uint64, flags uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, infoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

// appendInfoBlockSize appends the data of an NBD_INFO_BLOCK_SIZE.
func appendInfoBlockSize(b []byte, min, preferred, max uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, min)
	b = binary.BigEndian.AppendUint32(b, preferred)
	return binary.BigEndian.AppendUint32(b, max)
}

// appendInfoString appends the data of an NBD_INFO_NAME or
// NBD_INFO_DESCRIPTION.
func appendInfoString(b []byte, typ uint16, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, s...)
}

// appendServerData appends the data of an NBD_REP_SERVER.
func appendServerData(b []byte, name string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	return append(b, name...)
}

// appendMetaContextData appends the data of an NBD_REP_META_CONTEXT.
func appendMetaContextData(b []byte, id uint32, name string) []byte {
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, name...)
}

// appendExportNameReply appends the answer to NBD_OPT_EXPORT_NAME: size,
// transmission flags, and 124 zero bytes unless the client set
// NBD_FLAG_C_NO_ZEROES.
func appendExportNameReply(b []byte, size uint64, flags uint16, noZeroes bool) []byte {
	b = binary.BigEndian.AppendUint64(b, size)
	b = binary.BigEndian.AppendUint16(b, flags)
	if !noZeroes {
		var zeroes [exportNameReplyZeroes]byte
		b = append(b, zeroes[:]...)
	}
	return b
}

// exportRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type exportRequest struct {
	Name  string
	Infos []uint16 // information requests, in the client's order
}

// parseExportRequest decodes INFO/GO data: u32 name length, name, u16 n,
// n × u16 information requests. The lengths must add up exactly.
func parseExportRequest(data []byte) (exportRequest, error) {
	var r exportRequest
	if len(data) < 6 {
		return r, errShort
	}
	nameLen := uint64(binary.BigEndian.Uint32(data))
	if nameLen > uint64(len(data)-6) {
		return r, fmt.Errorf("%w: name of %d bytes in %d bytes of option data", errBadLength, nameLen, len(data))
	}
	if nameLen > maxStringLen {
		return r, errStringTooLong
	}
	rest := data[4:]
	r.Name = string(rest[:nameLen])
	rest = rest[nameLen:]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return r, fmt.Errorf("%w: %d information requests in %d bytes", errBadLength, n, len(rest))
	}
	if n > 0 {
		r.Infos = make([]uint16, n) // n ≤ 32767: bounded by the checked length
		for i := range r.Infos {
			r.Infos[i] = binary.BigEndian.Uint16(rest[2*i:])
		}
	}
	return r, nil
}

// metaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaContextRequest struct {
	Export  string
	Queries []string
}

// parseMetaContextRequest decodes u32 export name length, name, u32 number
// of queries, then each query as u32 length and string. The lengths must
// add up exactly.
func parseMetaContextRequest(data []byte) (metaContextRequest, error) {
	var r metaContextRequest
	if len(data) < 8 {
		return r, errShort
	}
	nameLen := uint64(binary.BigEndian.Uint32(data))
	if nameLen > uint64(len(data)-8) {
		return r, fmt.Errorf("%w: name of %d bytes in %d bytes of option data", errBadLength, nameLen, len(data))
	}
	if nameLen > maxStringLen {
		return r, errStringTooLong
	}
	rest := data[4:]
	r.Export = string(rest[:nameLen])
	rest = rest[nameLen:]
	nq := uint64(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	// Each query takes at least 4 bytes: check before allocating.
	if nq > uint64(len(rest)/4) {
		return r, fmt.Errorf("%w: %d queries in %d bytes", errBadLength, nq, len(rest))
	}
	if nq > 0 {
		r.Queries = make([]string, 0, nq)
	}
	for i := uint64(0); i < nq; i++ {
		if len(rest) < 4 {
			return r, errShort
		}
		ql := uint64(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		if ql > uint64(len(rest)) {
			return r, fmt.Errorf("%w: query of %d bytes in %d bytes", errBadLength, ql, len(rest))
		}
		if ql > maxStringLen {
			return r, errStringTooLong
		}
		r.Queries = append(r.Queries, string(rest[:ql]))
		rest = rest[ql:]
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("%w: %d bytes after the last query", errBadLength, len(rest))
	}
	return r, nil
}

// matchMetaContexts returns the contexts the server offers that the
// queries select. list is true for NBD_OPT_LIST_META_CONTEXT, where no
// query means every context and a bare namespace ("base:") is a wildcard.
// Queries in unknown namespaces select nothing, as the spec requires.
func matchMetaContexts(queries []string, list bool) []string {
	if len(queries) == 0 {
		if list {
			return []string{baseAllocationContext}
		}
		return nil
	}
	for _, q := range queries {
		if q == baseAllocationContext || (list && q == "base:") {
			return []string{baseAllocationContext}
		}
	}
	return nil
}

// ---- Transmission ----

// request is a decoded request header.
type request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// parseRequest decodes a 28-byte request header. Only the magic is
// checked; validateRequest checks the rest.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHeaderLen {
		return request{}, errShort
	}
	if m := binary.BigEndian.Uint32(b); m != requestMagic {
		return request{}, fmt.Errorf("%w: request magic %#x", errBadMagic, m)
	}
	return request{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   binary.BigEndian.Uint16(b[6:]),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// appendRequest encodes a request header (used by tests and tools).
func appendRequest(b []byte, r request) []byte {
	b = binary.BigEndian.AppendUint32(b, requestMagic)
	b = binary.BigEndian.AppendUint16(b, r.Flags)
	b = binary.BigEndian.AppendUint16(b, r.Type)
	b = binary.BigEndian.AppendUint64(b, r.Cookie)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	return binary.BigEndian.AppendUint32(b, r.Length)
}

// exportState is what validateRequest needs to know about the connection.
type exportState struct {
	Size        uint64
	Structured  bool // structured replies negotiated
	MetaContext bool // base:allocation selected for this export
}

// allowedFlags are the command flags each command accepts. FUA is valid on
// every command (SEND_FUA is advertised); FAST_ZERO is never advertised,
// so it is always invalid, and so is PAYLOAD_LEN (no extended headers).
func allowedFlags(typ uint16, st exportState) uint16 {
	f := cmdFlagFUA
	switch typ {
	case cmdRead:
		if st.Structured {
			f |= cmdFlagDF
		}
	case cmdWriteZeroes:
		f |= cmdFlagNoHole
	case cmdBlockStatus:
		f |= cmdFlagReqOne
	}
	return f
}

// validateRequest decides whether a request that parsed may run. It
// returns 0 or the errno to answer with. DISC and a WRITE longer than
// MaxBlockSize never get here: they end the connection.
func validateRequest(r request, st exportState) (Errno, string) {
	switch r.Type {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdWriteZeroes:
	case cmdBlockStatus:
		if !st.MetaContext {
			return EINVAL, "BLOCK_STATUS without a negotiated metadata context"
		}
	case cmdCache:
		return EINVAL, "CACHE is not supported"
	default:
		return EINVAL, fmt.Sprintf("unknown command %d", r.Type)
	}
	if bad := r.Flags &^ allowedFlags(r.Type, st); bad != 0 {
		return EINVAL, fmt.Sprintf("command flags %#x not valid for %s", bad, commandName(r.Type))
	}
	if r.Type == cmdFlush {
		return 0, "" // offset and length are reserved: ignore them
	}
	if r.Type == cmdRead && r.Length > MaxBlockSize {
		return EINVAL, fmt.Sprintf("read of %d bytes exceeds the maximum block size %d", r.Length, MaxBlockSize)
	}
	if r.Type == cmdBlockStatus && r.Length == 0 {
		return EINVAL, "BLOCK_STATUS of length 0"
	}
	// off+len ≤ size, written so that it cannot overflow.
	if uint64(r.Length) > st.Size || r.Offset > st.Size-uint64(r.Length) {
		msg := fmt.Sprintf("%s of %d bytes at %d is past the end of the export (%d bytes)",
			commandName(r.Type), r.Length, r.Offset, st.Size)
		if r.Type == cmdWrite || r.Type == cmdWriteZeroes {
			return ENOSPC, msg
		}
		return EINVAL, msg
	}
	return 0, ""
}

// commandName names a command for messages and logs.
func commandName(t uint16) string {
	switch t {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}

// appendSimpleReply appends a simple reply header. For a successful READ
// the data must follow it.
func appendSimpleReply(b []byte, errno Errno, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, simpleReplyMagic)
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	return binary.BigEndian.AppendUint64(b, cookie)
}

// appendChunkHeader appends a structured reply chunk header announcing
// length bytes of payload.
func appendChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, structuredReplyMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendOffsetDataHeader appends an OFFSET_DATA chunk header and the
// offset; dataLen bytes of data (at least 1) must follow.
func appendOffsetDataHeader(b []byte, flags uint16, cookie, offset uint64, dataLen uint32) []byte {
	b = appendChunkHeader(b, flags, replyTypeOffsetData, cookie, 8+dataLen)
	return binary.BigEndian.AppendUint64(b, offset)
}

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk.
func appendErrorChunk(b []byte, cookie uint64, errno Errno, msg string) []byte {
	msg = clipMessage(msg)
	b = appendChunkHeader(b, replyFlagDone, replyTypeError, cookie, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// appendBlockStatusChunk appends a final BLOCK_STATUS chunk for one
// context with one extent of length bytes and the given status flags.
func appendBlockStatusChunk(b []byte, cookie uint64, contextID, length, status uint32) []byte {
	b = appendBlockStatusHeader(b, cookie, contextID, descriptorLen)
	b = binary.BigEndian.AppendUint32(b, length)
	return binary.BigEndian.AppendUint32(b, status)
}

// appendBlockStatusHeader appends the header of a final BLOCK_STATUS
// chunk for one context and its context id; descLen bytes of descriptors
// (a positive multiple of descriptorLen) must follow.
func appendBlockStatusHeader(b []byte, cookie uint64, contextID uint32, descLen int) []byte {
	b = appendChunkHeader(b, replyFlagDone, replyTypeBlockStatus, cookie, uint32(4+descLen))
	return binary.BigEndian.AppendUint32(b, contextID)
}

// appendAllocation appends the base:allocation descriptors (u32 length,
// u32 flags, without the context id) that answer a BLOCK_STATUS of
// length bytes at offset, from exts: a Backend's description of
// [offset, offset+length) from offset on (blockdev.Allocator).
//
//   - exts must hold at least one extent, none empty, and cover at most
//     length bytes; otherwise nothing is appended and the error wraps
//     errBadAllocation.
//   - A hole is reported HOLE|ZERO, anything else 0. Adjacent extents of
//     the same kind become one descriptor.
//   - Every descriptor ends on a MinBlockSize boundary of the export,
//     except one that ends where the request ends (the spec: lengths are
//     multiples of the minimum block size; an unaligned request's first
//     and last are the exceptions). So a hole is reported only over whole
//     blocks: the part of a hole that shares a block with data, or with
//     what exts leave undescribed, is reported as data, which is always
//     allowed. For the same reason a description that ends inside a
//     block is reported to the end of that block (or of the request).
//   - Descriptors never extend past the request, so each length fits in
//     32 bits. There are at most maxBlockStatusDescriptors of them, and
//     exactly one if reqOne: the reply then ends early, at a descriptor
//     boundary, and the client asks again for the rest.
func appendAllocation(b []byte, offset uint64, length uint32, reqOne bool, exts []blockdev.Extent) ([]byte, error) {
	bad := func(format string, args ...any) ([]byte, error) {
		return b, fmt.Errorf("%w for BLOCK_STATUS of %d bytes at %d: %s",
			errBadAllocation, length, offset, fmt.Sprintf(format, args...))
	}
	switch {
	case length == 0:
		return bad("empty request")
	case offset > math.MaxUint64-uint64(length):
		return bad("the range overflows")
	case len(exts) == 0:
		return bad("no extent")
	}
	var total uint64
	for i, e := range exts {
		if e.Length == 0 {
			return bad("extent %d of %d is empty", i, len(exts))
		}
		if e.Length > uint64(length)-total {
			return bad("%d extents describe more than the %d bytes asked for", len(exts), length)
		}
		total += e.Length
	}
	const bs = MinBlockSize
	reqEnd := offset + uint64(length)
	end := offset + total // where the description ends
	if r := end % bs; end != reqEnd && r != 0 {
		end = min(reqEnd-end, bs-r) + end // to the block's end, or reqEnd
	}

	limit := maxBlockStatusDescriptors
	if reqOne {
		limit = 1
	}
	n := 0
	put := func(l uint64, flags uint32) {
		if n < limit {
			b = binary.BigEndian.AppendUint32(b, uint32(l)) // l ≤ length
			b = binary.BigEndian.AppendUint32(b, flags)
			n++
		}
	}
	pos := offset    // start of the next run of exts
	cursor := offset // everything before it is reported
	for i := 0; i < len(exts) && n < limit; {
		// A run: the extents of one kind from exts[i] on.
		hole, start := exts[i].Hole, pos
		for ; i < len(exts) && exts[i].Hole == hole; i++ {
			pos += exts[i].Length
		}
		if !hole {
			continue // data: reported up to the next hole, or to the end
		}
		hs, he := start, pos
		if he != reqEnd {
			he -= he % bs
		}
		if r := hs % bs; hs != offset && r != 0 {
			if he <= hs || he-hs <= bs-r {
				continue // no whole block: data
			}
			hs += bs - r
		}
		if hs >= he {
			continue
		}
		if cursor < hs {
			put(hs-cursor, 0)
		}
		put(he-hs, stateHole|stateZero)
		cursor = he
	}
	if cursor < end {
		put(end-cursor, 0)
	}
	return b, nil
}

// clipMessage makes msg a valid NBD string for an error reply: valid
// UTF-8, no NUL, at most maxErrorMessageLen bytes.
func clipMessage(msg string) string {
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "?")
	}
	if strings.IndexByte(msg, 0) >= 0 {
		msg = strings.ReplaceAll(msg, "\x00", "?")
	}
	if len(msg) > maxErrorMessageLen {
		cut := maxErrorMessageLen
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut-- // do not end inside a multi-byte rune
		}
		msg = msg[:cut]
	}
	return msg
}
