package logstore

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"
)

// The byte layouts below are documented in doc.go; change both together, and
// bump formatVersion or logValueVersion when a change is not backward
// compatible.

// Key kinds: the first byte of every key.
const (
	kindMeta   byte = 0x00 // store-wide metadata
	kindLog    byte = 0x01 // a raft log entry: kind, group, index
	kindStable byte = 0x02 // a raft stable-store key: kind, group, key bytes
)

const (
	// formatVersion is the store-wide format, recorded under metaFormatKey
	// when the store is created.
	formatVersion uint64 = 1
	// logValueVersion is the first byte of every log value.
	logValueVersion byte = 1

	groupPrefixLen = 1 + 8
	logKeyLen      = groupPrefixLen + 8
	// logHeaderLen is the fixed part of a log value: version, type, flags.
	logHeaderLen = 3
)

// metaFormatKey holds the store-wide format version as a uvarint.
var metaFormatKey = []byte{kindMeta, 'f', 'o', 'r', 'm', 'a', 't'}

// Flags of a log value (its third byte).
const (
	flagAppendedAt byte = 1 << 0 // AppendedAt is not the zero time
	flagData       byte = 1 << 1 // Data is not nil
	flagExtensions byte = 1 << 2 // Extensions is not nil
	knownFlags          = flagAppendedAt | flagData | flagExtensions
)

// groupPrefix returns kind + group: the prefix of every key of that kind of
// the group.
func groupPrefix(kind byte, group uint64) []byte {
	k := make([]byte, groupPrefixLen, logKeyLen+1)
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], group)
	return k
}

// groupSpan returns the key span [start, end) holding every key of that kind
// of the group.
func groupSpan(kind byte, group uint64) (start, end []byte) {
	start = groupPrefix(kind, group)
	if group == math.MaxUint64 {
		return start, []byte{kind + 1}
	}
	return start, groupPrefix(kind, group+1)
}

// logKey returns the key of a group's log entry.
func logKey(group, index uint64) []byte {
	k := groupPrefix(kindLog, group)
	return binary.BigEndian.AppendUint64(k, index)
}

// logSpan returns the key span [start, end) holding the group's log entries
// min through max inclusive.
func logSpan(group, min, max uint64) (start, end []byte) {
	// Log keys are all logKeyLen long, so the key of max followed by a zero
	// byte is the least key greater than it: the span's exclusive end.
	return logKey(group, min), append(logKey(group, max), 0)
}

// stableKey returns the key of a group's stable-store key.
func stableKey(group uint64, key []byte) []byte {
	k := groupPrefix(kindStable, group)
	return append(k, key...)
}

// parseGroupKey returns the group of a key of any kind but meta.
func parseGroupKey(k []byte) (group uint64, ok bool) {
	if len(k) < groupPrefixLen || k[0] == kindMeta {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[1:groupPrefixLen]), true
}

// parseLogKey returns the group and index of a log key.
func parseLogKey(k []byte) (group, index uint64, ok bool) {
	if len(k) != logKeyLen || k[0] != kindLog {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[9:]), true
}

// appendLogValue appends the value encoding of l to dst.
func appendLogValue(dst []byte, l *raft.Log) []byte {
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= flagAppendedAt
	}
	if l.Data != nil {
		flags |= flagData
	}
	if l.Extensions != nil {
		flags |= flagExtensions
	}
	dst = append(dst, logValueVersion, byte(l.Type), flags)
	dst = binary.AppendUvarint(dst, l.Term)
	if flags&flagAppendedAt != 0 {
		dst = binary.AppendVarint(dst, l.AppendedAt.Unix())
		dst = binary.AppendUvarint(dst, uint64(l.AppendedAt.Nanosecond()))
	}
	if flags&flagData != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
		dst = append(dst, l.Data...)
	}
	if flags&flagExtensions != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
		dst = append(dst, l.Extensions...)
	}
	return dst
}

// decodeLogValue decodes the value of the log entry at index into l. It
// copies what it keeps, so v may be reused once it returns. The error, if
// any, describes the damage; callers wrap it with ErrCorrupt.
func decodeLogValue(index uint64, v []byte, l *raft.Log) error {
	if len(v) < logHeaderLen {
		return fmt.Errorf("value of %d bytes is shorter than the %d-byte header", len(v), logHeaderLen)
	}
	if v[0] != logValueVersion {
		return fmt.Errorf("unknown value version %d", v[0])
	}
	typ, flags := raft.LogType(v[1]), v[2]
	if flags&^knownFlags != 0 {
		return fmt.Errorf("unknown flags %#02x", flags&^knownFlags)
	}
	d := decoder{b: v[logHeaderLen:]}
	term := d.uvarint("term")
	var appendedAt time.Time
	if flags&flagAppendedAt != 0 {
		sec := d.varint("appended-at seconds")
		nsec := d.uvarint("appended-at nanoseconds")
		if d.err == nil && nsec >= uint64(time.Second) {
			d.err = fmt.Errorf("appended-at nanoseconds %d out of range", nsec)
		}
		appendedAt = time.Unix(sec, int64(nsec)).UTC()
	}
	var data, ext []byte
	if flags&flagData != 0 {
		data = d.bytes("data")
	}
	if flags&flagExtensions != 0 {
		ext = d.bytes("extensions")
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return d.err
	}
	// One allocation holds both byte strings; each keeps its own capacity so
	// an append to one cannot overwrite the other.
	// (A non-nil empty Data or Extensions stays non-nil: buf is non-nil.)
	var buf []byte
	if data != nil || ext != nil {
		buf = make([]byte, 0, len(data)+len(ext))
	}
	*l = raft.Log{Index: index, Term: term, Type: typ, AppendedAt: appendedAt}
	if data != nil {
		buf = append(buf, data...)
		l.Data = buf[:len(data):len(data)]
	}
	if ext != nil {
		buf = append(buf, ext...)
		l.Extensions = buf[len(data):len(buf):len(buf)]
	}
	return nil
}

// decoder reads varints and length-prefixed byte strings, remembering the
// first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("bad uvarint for %s", what)
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("bad varint for %s", what)
		return 0
	}
	d.b = d.b[n:]
	return x
}

// bytes returns a length-prefixed byte string, aliasing the input.
func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%s length %d exceeds the %d remaining bytes", what, n, len(d.b))
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}
