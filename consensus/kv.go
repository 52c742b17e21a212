package consensus

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// KV is a replicated key-value map: the raft.FSM of a group whose log
// holds encoded KVCommands. Every key carries a version, the log index of
// the command that last wrote it, so that a client can make a write
// conditional on what it read (KVCompareAndSwap) and a batch of such
// writes all-or-nothing: the groundwork for transactions across groups.
//
// Get and Scan read this member's state, which may lag the group's;
// Node.ReadKV reads linearizably on the leader. The zero KV is an empty
// map, ready to use.
type KV struct {
	mu sync.RWMutex
	m  map[string]kvEntry

	// fence makes ReadKV linearizable (see Node.Linearize).
	fence ReadFence
}

type kvEntry struct {
	// value is never modified once stored, so that reads and snapshots
	// may share it after releasing the lock.
	value   []byte
	version uint64
}

// KVEntry is one key of a Scan, with copies of the key and value.
type KVEntry struct {
	Key     []byte
	Value   []byte
	Version uint64
}

// KVOpKind is what a KVOp does. Its values are written into the log, so
// they never change.
type KVOpKind uint8

const (
	// KVOpPut sets a key's value.
	KVOpPut KVOpKind = 1
	// KVOpDelete removes a key; removing an absent key is not an error.
	KVOpDelete KVOpKind = 2
	// KVOpCompareAndSwap sets a key's value if the key's version is the
	// expected one, 0 meaning the key must be absent.
	KVOpCompareAndSwap KVOpKind = 3
)

func (k KVOpKind) String() string {
	switch k {
	case KVOpPut:
		return "put"
	case KVOpDelete:
		return "delete"
	case KVOpCompareAndSwap:
		return "compare-and-swap"
	}
	return fmt.Sprintf("KVOpKind(%d)", uint8(k))
}

// KVOp is one operation of a KVCommand. Build it with KVPut, KVDelete or
// KVCompareAndSwap.
type KVOp struct {
	Kind KVOpKind
	// Key must not be empty.
	Key []byte
	// Value is the new value of a put or compare-and-swap; a delete has
	// none.
	Value []byte
	// Version is the version a compare-and-swap expects; the other ops
	// have none.
	Version uint64
}

// KVPut sets key to value.
func KVPut(key, value []byte) KVOp { return KVOp{Kind: KVOpPut, Key: key, Value: value} }

// KVDelete removes key.
func KVDelete(key []byte) KVOp { return KVOp{Kind: KVOpDelete, Key: key} }

// KVCompareAndSwap sets key to value if its version is version (0: if key
// is absent).
func KVCompareAndSwap(key []byte, version uint64, value []byte) KVOp {
	return KVOp{Kind: KVOpCompareAndSwap, Key: key, Value: value, Version: version}
}

// KVCommand is what a KV applies: one or more ops, all or none of them.
// They apply in order, each seeing the earlier ones' writes, and if a
// compare-and-swap among them fails none applies. A single op is a batch
// of one. The command refers to the callers' slices until it is encoded.
type KVCommand struct {
	Ops []KVOp
}

// KVBatch is a command of ops.
func KVBatch(ops ...KVOp) KVCommand { return KVCommand{Ops: ops} }

// KVResult is what KV.Apply returns for a command, and ApplyKV with it.
type KVResult struct {
	// Index is the command's log index: the version it gave every key it
	// wrote.
	Index uint64
	// Ops holds each op's result, in order, if the command applied; nil
	// if it was refused.
	Ops []KVOpResult
	// Err, if not nil, says why the command was refused, and nothing in
	// it applied: a *KVConflictError naming the first compare-and-swap
	// that failed, or an error wrapping ErrKVMalformed for a command that
	// does not decode.
	Err error
}

// KVOpResult is the result of one op of an applied command.
type KVOpResult struct {
	// PrevVersion is the key's version before the op, 0 if it was
	// absent: for a delete, whether there was anything to delete.
	PrevVersion uint64
	// Version is the key's version after the op: the command's index, or
	// 0 after a delete.
	Version uint64
}

// ErrKVMalformed is wrapped by the errors for data that does not decode,
// and for commands that cannot be encoded.
var ErrKVMalformed = errors.New("malformed kv data")

// ErrKVConflict is wrapped by *KVConflictError.
var ErrKVConflict = errors.New("kv version conflict")

// KVConflictError refuses a command whose compare-and-swap found another
// version than it expected.
type KVConflictError struct {
	// Op is the index of the compare-and-swap in its command.
	Op       int
	Key      []byte
	Expected uint64
	// Actual is the key's version when the op ran, 0 if it was absent.
	Actual uint64
}

func (e *KVConflictError) Error() string {
	return fmt.Sprintf("kv: op %d: compare-and-swap of key %q expected version %d, found %d", e.Op, e.Key, e.Expected, e.Actual)
}

func (e *KVConflictError) Unwrap() error { return ErrKVConflict }

// NewKV returns an empty KV.
func NewKV() *KV { return &KV{} }

// Apply applies the command in l and returns its KVResult. A command that
// does not decode, or whose compare-and-swap fails, changes nothing: its
// result says why. Apply never panics on its input, since a bad entry in
// the log would otherwise stop every member of the group.
func (kv *KV) Apply(l *raft.Log) any {
	cmd, err := DecodeKVCommand(l.Data)
	if err != nil {
		return KVResult{Index: l.Index, Err: fmt.Errorf("kv: command at index %d: %w", l.Index, err)}
	}
	return kv.apply(l.Index, cmd)
}

// apply applies cmd, which DecodeKVCommand returned: its slices are
// already copies.
func (kv *KV) apply(index uint64, cmd KVCommand) KVResult {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	// The batch writes into staged first, so that a failed
	// compare-and-swap leaves the map untouched; a nil entry is a delete.
	staged := map[string]*kvEntry{}
	current := func(key string) uint64 {
		if e, ok := staged[key]; ok {
			if e == nil {
				return 0
			}
			return e.version
		}
		return kv.m[key].version
	}
	results := make([]KVOpResult, len(cmd.Ops))
	for i, op := range cmd.Ops {
		key := string(op.Key)
		prev := current(key)
		switch op.Kind {
		case KVOpCompareAndSwap:
			if prev != op.Version {
				return KVResult{Index: index, Err: &KVConflictError{Op: i, Key: op.Key, Expected: op.Version, Actual: prev}}
			}
			fallthrough
		case KVOpPut:
			staged[key] = &kvEntry{value: op.Value, version: index}
			results[i] = KVOpResult{PrevVersion: prev, Version: index}
		case KVOpDelete:
			staged[key] = nil
			results[i] = KVOpResult{PrevVersion: prev}
		}
	}
	if kv.m == nil {
		kv.m = map[string]kvEntry{}
	}
	for key, e := range staged {
		if e == nil {
			delete(kv.m, key)
		} else {
			kv.m[key] = *e
		}
	}
	return KVResult{Index: index, Ops: results}
}

// Get returns a copy of key's value and its version, or ok false if key
// is absent, from this member's state.
func (kv *KV) Get(key []byte) (value []byte, version uint64, ok bool) {
	kv.mu.RLock()
	e, ok := kv.m[string(key)]
	kv.mu.RUnlock()
	if !ok {
		return nil, 0, false
	}
	return copyBytes(e.value), e.version, true
}

// Scan returns copies of the keys starting with prefix (every key if
// prefix is empty), in key order, at most limit of them (all if limit <=
// 0), from this member's state.
func (kv *KV) Scan(prefix []byte, limit int) []KVEntry {
	type match struct {
		key string
		e   kvEntry
	}
	var matches []match
	kv.mu.RLock()
	// A map has no order: every scan visits every key. Good enough while
	// a group's keys are few; an ordered tree can replace the map later.
	for k, e := range kv.m {
		if strings.HasPrefix(k, string(prefix)) {
			matches = append(matches, match{k, e})
		}
	}
	kv.mu.RUnlock()
	slices.SortFunc(matches, func(a, b match) int { return strings.Compare(a.key, b.key) })
	if limit > 0 && len(matches) > limit {
		matches = matches[:limit]
	}
	out := make([]KVEntry, len(matches))
	for i, m := range matches {
		out[i] = KVEntry{Key: []byte(m.key), Value: copyBytes(m.e.value), Version: m.e.version}
	}
	return out
}

// copyBytes copies b, keeping an empty value distinct from nil.
func copyBytes(b []byte) []byte {
	out := make([]byte, len(b))
	copy(out, b)
	return out
}

// Snapshot captures the state for raft. The map is copied under the lock;
// the values are shared, since they never change once stored, and Persist
// writes them out while Apply goes on.
func (kv *KV) Snapshot() (raft.FSMSnapshot, error) {
	kv.mu.RLock()
	defer kv.mu.RUnlock()
	return kvStateSnapshot(maps.Clone(kv.m)), nil
}

// Restore replaces the whole state with a snapshot's. A snapshot that does
// not decode leaves the state as it was.
func (kv *KV) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	// The state lives in memory anyway; decoding from memory lets every
	// length be checked against the bytes actually there, so a corrupt
	// length fails instead of allocating.
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	m, err := decodeKVSnapshot(data)
	if err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	kv.mu.Lock()
	kv.m = m
	kv.mu.Unlock()
	return nil
}

// kvStateSnapshot is a KV's state as of a Snapshot.
type kvStateSnapshot map[string]kvEntry

// Persist writes the snapshot, in the format decodeKVSnapshot reads:
//
//	format version (1 byte, 1)
//	entry count (uint64)
//	per entry, in increasing key order:
//	    key length (uint32), key, version (uint64), value length (uint32), value
//
// Integers are big-endian. The keys are sorted so that equal states make
// equal snapshots.
func (s kvStateSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("kv: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("kv: persist snapshot: %w", err)
	}
	return nil
}

func (s kvStateSnapshot) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	// A bufio.Writer's first error sticks and Flush returns it, so the
	// writes are not checked one by one.
	buf := binary.BigEndian.AppendUint64([]byte{kvSnapshotFormat}, uint64(len(s)))
	_, _ = bw.Write(buf)
	for _, key := range slices.Sorted(maps.Keys(s)) {
		e := s[key]
		buf = appendKVBytes(buf[:0], []byte(key))
		buf = binary.BigEndian.AppendUint64(buf, e.version)
		buf = appendKVBytes(buf, e.value)
		_, _ = bw.Write(buf)
	}
	return bw.Flush()
}

func (s kvStateSnapshot) Release() {}

// The first byte of each encoding is its format version, so that a later
// format can be told apart and an older member refuses what it cannot
// read rather than misreading it.
const (
	kvCommandFormat  = 1
	kvSnapshotFormat = 1
)

// minKVOpSize is the fewest bytes an encoded op takes (a delete of a
// one-byte key), and minKVEntrySize those of a snapshot entry (a one-byte
// key, an empty value): a count is checked against them before anything
// is allocated for it.
const (
	minKVOpSize    = 1 + 4 + 1
	minKVEntrySize = 4 + 1 + 8 + 4
)

// MarshalBinary encodes c for the log:
//
//	format version (1 byte, 1)
//	op count (uint32, at least 1)
//	per op:
//	    kind (1 byte)
//	    key length (uint32, at least 1), key
//	    compare-and-swap only: expected version (uint64)
//	    put and compare-and-swap only: value length (uint32), value
//
// Integers are big-endian. Every field has one encoding, so a command has
// exactly one: DecodeKVCommand accepts nothing else. MarshalBinary fails,
// wrapping ErrKVMalformed, on a command DecodeKVCommand would refuse or
// could not return as it was (a version on a put, say).
func (c KVCommand) MarshalBinary() ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	size := 1 + 4
	for _, op := range c.Ops {
		size += 1 + 4 + len(op.Key)
		if op.Kind == KVOpCompareAndSwap {
			size += 8
		}
		if op.Kind != KVOpDelete {
			size += 4 + len(op.Value)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, kvCommandFormat)
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.Ops)))
	for _, op := range c.Ops {
		b = append(b, byte(op.Kind))
		b = appendKVBytes(b, op.Key)
		if op.Kind == KVOpCompareAndSwap {
			b = binary.BigEndian.AppendUint64(b, op.Version)
		}
		if op.Kind != KVOpDelete {
			b = appendKVBytes(b, op.Value)
		}
	}
	return b, nil
}

func (c KVCommand) check() error {
	if len(c.Ops) == 0 {
		return fmt.Errorf("%w: command has no ops", ErrKVMalformed)
	}
	if uint64(len(c.Ops)) > math.MaxUint32 {
		return fmt.Errorf("%w: %d ops", ErrKVMalformed, len(c.Ops))
	}
	for i, op := range c.Ops {
		if err := op.check(); err != nil {
			return fmt.Errorf("%w: op %d: %w", ErrKVMalformed, i, err)
		}
	}
	return nil
}

func (op KVOp) check() error {
	switch op.Kind {
	case KVOpPut:
		if op.Version != 0 {
			return errors.New("a put has no version")
		}
	case KVOpDelete:
		if len(op.Value) != 0 || op.Version != 0 {
			return errors.New("a delete has no value or version")
		}
	case KVOpCompareAndSwap:
	default:
		return fmt.Errorf("unknown op kind %d", uint8(op.Kind))
	}
	if len(op.Key) == 0 {
		return fmt.Errorf("%s of an empty key", op.Kind)
	}
	if uint64(len(op.Key)) > math.MaxUint32 || uint64(len(op.Value)) > math.MaxUint32 {
		return fmt.Errorf("%s: key or value longer than 4 GiB", op.Kind)
	}
	return nil
}

// DecodeKVCommand decodes a command MarshalBinary encoded, into copies of
// data's bytes. It fails, wrapping ErrKVMalformed, on anything else: an
// unknown format or op kind, a truncated field, a length beyond the data,
// trailing bytes, no ops, an empty key.
func DecodeKVCommand(data []byte) (KVCommand, error) {
	r := kvReader{b: data}
	if v := r.uint8("format version"); r.err == nil && v != kvCommandFormat {
		return KVCommand{}, fmt.Errorf("%w: command format version %d, want %d", ErrKVMalformed, v, kvCommandFormat)
	}
	n := r.uint32("op count")
	if r.err != nil {
		return KVCommand{}, fmt.Errorf("%w: %w", ErrKVMalformed, r.err)
	}
	if n == 0 {
		return KVCommand{}, fmt.Errorf("%w: command has no ops", ErrKVMalformed)
	}
	if uint64(n) > uint64(r.left())/minKVOpSize {
		return KVCommand{}, fmt.Errorf("%w: %d ops cannot fit in %d bytes", ErrKVMalformed, n, r.left())
	}
	ops := make([]KVOp, 0, n)
	for i := range n {
		op := KVOp{Kind: KVOpKind(r.uint8("op kind"))}
		if r.err == nil && op.Kind != KVOpPut && op.Kind != KVOpDelete && op.Kind != KVOpCompareAndSwap {
			return KVCommand{}, fmt.Errorf("%w: op %d: unknown op kind %d", ErrKVMalformed, i, uint8(op.Kind))
		}
		op.Key = r.bytes("key")
		if op.Kind == KVOpCompareAndSwap {
			op.Version = r.uint64("version")
		}
		if op.Kind != KVOpDelete {
			op.Value = r.bytes("value")
		}
		if r.err != nil {
			return KVCommand{}, fmt.Errorf("%w: op %d: %w", ErrKVMalformed, i, r.err)
		}
		if err := op.check(); err != nil {
			return KVCommand{}, fmt.Errorf("%w: op %d: %w", ErrKVMalformed, i, err)
		}
		ops = append(ops, op)
	}
	if r.left() != 0 {
		return KVCommand{}, fmt.Errorf("%w: %d trailing bytes after the command", ErrKVMalformed, r.left())
	}
	return KVCommand{Ops: ops}, nil
}

// decodeKVSnapshot decodes what kvStateSnapshot.Persist wrote. Keys must be
// in strictly increasing order (which also rules out duplicates) and
// versions nonzero, as Persist writes them.
func decodeKVSnapshot(data []byte) (map[string]kvEntry, error) {
	r := kvReader{b: data}
	if v := r.uint8("format version"); r.err == nil && v != kvSnapshotFormat {
		return nil, fmt.Errorf("%w: snapshot format version %d, want %d", ErrKVMalformed, v, kvSnapshotFormat)
	}
	n := r.uint64("entry count")
	if r.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKVMalformed, r.err)
	}
	if n > uint64(r.left())/minKVEntrySize {
		return nil, fmt.Errorf("%w: %d entries cannot fit in %d bytes", ErrKVMalformed, n, r.left())
	}
	m := make(map[string]kvEntry, n)
	var prev string
	for i := range n {
		key := r.bytes("key")
		version := r.uint64("version")
		value := r.bytes("value")
		if r.err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrKVMalformed, i, r.err)
		}
		k := string(key)
		switch {
		case k == "":
			return nil, fmt.Errorf("%w: entry %d: empty key", ErrKVMalformed, i)
		case i > 0 && k <= prev:
			return nil, fmt.Errorf("%w: entry %d: key %q not after %q", ErrKVMalformed, i, k, prev)
		case version == 0:
			return nil, fmt.Errorf("%w: entry %d: key %q has version 0", ErrKVMalformed, i, k)
		}
		m[k] = kvEntry{value: value, version: version}
		prev = k
	}
	if r.left() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after the snapshot", ErrKVMalformed, r.left())
	}
	return m, nil
}

// appendKVBytes appends p with its uint32 length in front; the callers
// have checked that the length fits.
func appendKVBytes(b, p []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

// kvReader reads the fields of the encodings above from memory. Its first
// error sticks and later reads return zeros, so that a decoder checks
// once per op or entry rather than after every field; the decoder wraps
// it in ErrKVMalformed.
type kvReader struct {
	b   []byte
	err error
}

func (r *kvReader) left() int { return len(r.b) }

func (r *kvReader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%s needs %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *kvReader) uint8(what string) uint8 {
	if p := r.take(1, what); p != nil {
		return p[0]
	}
	return 0
}

func (r *kvReader) uint32(what string) uint32 {
	if p := r.take(4, what); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *kvReader) uint64(what string) uint64 {
	if p := r.take(8, what); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// bytes reads a uint32 length and that many bytes, and returns a copy:
// the caller keeps them, but not the data they came from.
func (r *kvReader) bytes(what string) []byte {
	n := r.uint32(what + " length")
	p := r.take(uint64(n), what)
	if r.err != nil {
		return nil
	}
	return copyBytes(p)
}

// ApplyKV proposes cmd to a group whose FSM is a KV and returns its result
// once this node has applied it. It must run on the group's leader;
// elsewhere it fails with a *NotLeaderError.
//
// The error is nil only if the command applied. A refused command comes
// back with its result and the result's Err (a *KVConflictError, say). If
// ctx ends or the leadership is lost (raft.ErrLeadershipLost) while the
// command is in flight, it may still apply: a compare-and-swap makes a
// retry safe.
func (n *Node) ApplyKV(ctx context.Context, groupID uint64, cmd KVCommand) (KVResult, error) {
	res, err := n.applyKV(ctx, groupID, cmd)
	if err != nil {
		return res, fmt.Errorf("consensus: apply kv command to group %d: %w", groupID, err)
	}
	return res, nil
}

func (n *Node) applyKV(ctx context.Context, groupID uint64, cmd KVCommand) (KVResult, error) {
	data, err := cmd.MarshalBinary()
	if err != nil {
		return KVResult{}, err
	}
	resp, err := n.Apply(ctx, groupID, data)
	if err != nil {
		return KVResult{}, err
	}
	res, ok := resp.(KVResult)
	if !ok {
		return KVResult{}, fmt.Errorf("the group's FSM answered %T, not a KVResult: it is not a KV", resp)
	}
	return res, res.Err
}

// ReadKV reads key linearizably: the result reflects every command applied
// (ApplyKV returned) before ReadKV was called, on any node. kv must be the
// FSM of this node's member of the group. It must run on the group's
// leader; elsewhere it fails with a *NotLeaderError.
//
// A new leader's state may lack commands its predecessor committed, so
// the first read of each term waits for a Barrier; and since a leader may
// be deposed without knowing it yet, every read confirms the leadership
// with a quorum (VerifyLeader) before it reads the local state.
func (n *Node) ReadKV(ctx context.Context, groupID uint64, kv *KV, key []byte) (value []byte, version uint64, ok bool, err error) {
	if err := n.Linearize(ctx, groupID, &kv.fence); err != nil {
		return nil, 0, false, fmt.Errorf("consensus: read kv of group %d: %w", groupID, err)
	}
	value, version, ok = kv.Get(key)
	return value, version, ok, nil
}
