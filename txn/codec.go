package txn

// This file holds the binary encodings of the package's values: commands
// for the raft log, results and reads for the answers that cross the
// network, and a Participant's state for snapshots.
//
// Each encoding but TxnID's starts with a format version byte, so that a
// later format can be told apart and an older node refuses what it cannot
// read rather than misreading it. The fields follow in the struct's
// order, written as AppendState writes them:
//
//   - integers (indexes, ids, times, versions, groups) as unsigned
//     varints (binary.AppendUvarint) in their shortest form;
//   - bools as one byte, 0 or 1; enums (kinds, outcomes, states,
//     reasons) as one byte;
//   - strings as a varint length and the bytes;
//   - byte values as a varint 0 for nil, or the length plus one and the
//     bytes: nil and empty differ, as they do in the state;
//   - TxnIDs as three varints: HLC, node, counter;
//   - lists, in every encoding but the state's, as a varint 0 for nil, or
//     the count plus one and the elements, so that a decoded value is
//     reflect.DeepEqual to the encoded one. The state keeps
//     AppendState's plain counts: its lists are never empty but nil.
//
// Every value has exactly one encoding, and the decoders accept nothing
// else: not a longer varint, a bool other than 0 or 1, a byte after the
// end, an unknown format version or command kind. So decoding and encoding
// again gives back the input's bytes, which is what the fuzz tests check.
// The decoders never panic, and a length or count is checked against the
// bytes left before anything is allocated for it, so a hostile one fails
// instead of allocating: what a decoder allocates is bounded by a small
// multiple of its input's size.
//
// The decoders of commands and results check the format, not the
// meaning: an outcome of 7 or a write of an empty key decodes, and
// Participant.Apply refuses it as it refuses any command (ErrMalformed),
// the same way on every replica. The state's decoder, RestoreParticipant,
// checks the meaning too, since nothing checks a snapshot after it: it
// refuses a state that applying commands cannot produce.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
)

// The format versions, the first byte of each encoding.
const (
	commandFormat    = 1
	resultFormat     = 1
	recordInfoFormat = 1
	readResultFormat = 1
	stateFormat      = 1
)

// maxPrealloc bounds the elements a decoder allocates for a list or map
// before it has read them: beyond it, the list grows as its elements
// decode, so that a count that fits in the bytes left but is followed by
// garbage fails before it allocates much.
const maxPrealloc = 1024

// The fewest bytes an encoded element takes, which a count is checked
// against before anything is allocated for it.
const (
	minGroupSize      = 1                                 // one varint
	minConditionSize  = 1 + 1                             // key, version
	minWriteSize      = 1 + 1 + 1                         // key, value, delete
	minKeyVersionSize = 1 + 1                             // key, version
	minDataEntrySize  = 2 + 1 + 1                         // nonempty key, value, version
	minIntentSize     = 2 + 3 + 1 + 1 + 1 + 1 + 1 + 3 + 1 // key, txn, prio, write, delete, value, home, two groups, deadline
	minVoteSize       = 3 + 1 + 1 + 4 + 8 + 1             // txn, state, key count, refusal (with its holder), deadline
	minVoteKeySize    = 2 + 1                             // nonempty key, version
	minRecordSize     = 3 + 1 + 2 + 1 + 1                 // txn, state, one group, prio, deadline
)

// MarshalCommand encodes c for the raft log:
//
//	format version (1 byte, 1)
//	kind (1 byte, the CommandKind)
//	Txn
//	then by kind, in the struct's field order:
//	    PREPARE:        Prio, Home, Participants, Deadline, Now, Conditions, Writes
//	    PREPARE_COMMIT: Prio, Deadline, Now, Conditions, Writes
//	    FINALIZE:       Outcome, RefusedBy, Home, Participants, Deadline, Now
//	    RESOLVE:        Outcome, Deadline, Now
//	    PREVENT:        Deadline, Now
//	    FORGET_VOTE:    Now
//	    FORGET_RECORD:  Now
//	a Condition is Key, Version; a Write is Key, Value, Delete
//
// with the field encodings of this file's comment. It fails, wrapping
// ErrMalformed, only for a nil command or one of a type it does not know.
// It does not validate c: Participant.Apply does.
func MarshalCommand(c Command) ([]byte, error) {
	if isNil(c) {
		return nil, fmt.Errorf("%w: cannot encode a nil command", ErrMalformed)
	}
	// Each case reads its own Txn: a type of another package that embeds
	// a nil *Prepare is a Command too, and only the default case may see
	// it.
	var b []byte
	switch c := c.(type) {
	case *Prepare:
		b = commandHeader(KindPrepare, c.Txn, opsSize(c.Conditions, c.Writes)+10*len(c.Participants))
		b = binary.AppendUvarint(b, uint64(c.Prio))
		b = binary.AppendUvarint(b, uint64(c.Home))
		b = appendGroupList(b, c.Participants)
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = binary.AppendUvarint(b, uint64(c.Now))
		b = appendConditionsWrites(b, c.Conditions, c.Writes)
	case *PrepareCommit:
		b = commandHeader(KindPrepareCommit, c.Txn, opsSize(c.Conditions, c.Writes))
		b = binary.AppendUvarint(b, uint64(c.Prio))
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = binary.AppendUvarint(b, uint64(c.Now))
		b = appendConditionsWrites(b, c.Conditions, c.Writes)
	case *Finalize:
		b = commandHeader(KindFinalize, c.Txn, 10*len(c.Participants))
		b = append(b, byte(c.Outcome))
		b = binary.AppendUvarint(b, uint64(c.RefusedBy))
		b = binary.AppendUvarint(b, uint64(c.Home))
		b = appendGroupList(b, c.Participants)
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = binary.AppendUvarint(b, uint64(c.Now))
	case *Resolve:
		b = commandHeader(KindResolve, c.Txn, 0)
		b = append(b, byte(c.Outcome))
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = binary.AppendUvarint(b, uint64(c.Now))
	case *Prevent:
		b = commandHeader(KindPrevent, c.Txn, 0)
		b = binary.AppendUvarint(b, uint64(c.Deadline))
		b = binary.AppendUvarint(b, uint64(c.Now))
	case *ForgetVote:
		b = commandHeader(KindForgetVote, c.Txn, 0)
		b = binary.AppendUvarint(b, uint64(c.Now))
	case *ForgetRecord:
		b = commandHeader(KindForgetRecord, c.Txn, 0)
		b = binary.AppendUvarint(b, uint64(c.Now))
	default:
		return nil, fmt.Errorf("%w: cannot encode a command of type %T", ErrMalformed, c)
	}
	return b, nil
}

// commandHeader starts a command's encoding, with room for about extra
// more bytes than the fixed fields take.
func commandHeader(k CommandKind, t TxnID, extra int) []byte {
	b := make([]byte, 0, 64+extra)
	b = append(b, commandFormat, byte(k))
	return appendTxnID(b, t)
}

// opsSize estimates the encoded size of conditions and writes.
func opsSize(conds []Condition, writes []Write) int {
	n := 0
	for _, c := range conds {
		n += len(c.Key) + 12
	}
	for _, w := range writes {
		n += len(w.Key) + len(w.Value) + 12
	}
	return n
}

func appendConditionsWrites(b []byte, conds []Condition, writes []Write) []byte {
	b = appendListLen(b, len(conds), conds == nil)
	for _, c := range conds {
		b = appendString(b, c.Key)
		b = binary.AppendUvarint(b, uint64(c.Version))
	}
	b = appendListLen(b, len(writes), writes == nil)
	for _, w := range writes {
		b = appendString(b, w.Key)
		b = appendBytes(b, w.Value)
		b = appendBool(b, w.Delete)
	}
	return b
}

// UnmarshalCommand decodes what MarshalCommand encoded, into a command
// that shares no memory with b. It fails, wrapping ErrMalformed, on
// anything else: an unknown format version or kind, a truncated field, a
// length beyond the data, trailing bytes. A driver's FSM can put the
// error in the entry's Result as it is, as Apply does for a command it
// refuses.
func UnmarshalCommand(b []byte) (Command, error) {
	r := reader{b: b}
	if v := r.uint8("format version"); r.err == nil && v != commandFormat {
		return nil, fmt.Errorf("%w: command format version %d, want %d", ErrMalformed, v, commandFormat)
	}
	kind := CommandKind(r.uint8("command kind"))
	if r.err != nil {
		return nil, fmt.Errorf("%w: command: %w", ErrMalformed, r.err)
	}
	t := r.txnID("transaction id")
	var c Command
	switch kind {
	case KindPrepare:
		p := &Prepare{Txn: t}
		p.Prio = Prio(r.uint64("prio"))
		p.Home = GroupID(r.uint64("home"))
		p.Participants = r.groupList("participants")
		p.Deadline = Timestamp(r.uint64("deadline"))
		p.Now = Timestamp(r.uint64("now"))
		p.Conditions, p.Writes = r.conditionsWrites()
		c = p
	case KindPrepareCommit:
		p := &PrepareCommit{Txn: t}
		p.Prio = Prio(r.uint64("prio"))
		p.Deadline = Timestamp(r.uint64("deadline"))
		p.Now = Timestamp(r.uint64("now"))
		p.Conditions, p.Writes = r.conditionsWrites()
		c = p
	case KindFinalize:
		f := &Finalize{Txn: t}
		f.Outcome = Outcome(r.uint8("outcome"))
		f.RefusedBy = GroupID(r.uint64("refused by"))
		f.Home = GroupID(r.uint64("home"))
		f.Participants = r.groupList("participants")
		f.Deadline = Timestamp(r.uint64("deadline"))
		f.Now = Timestamp(r.uint64("now"))
		c = f
	case KindResolve:
		rs := &Resolve{Txn: t}
		rs.Outcome = Outcome(r.uint8("outcome"))
		rs.Deadline = Timestamp(r.uint64("deadline"))
		rs.Now = Timestamp(r.uint64("now"))
		c = rs
	case KindPrevent:
		pv := &Prevent{Txn: t}
		pv.Deadline = Timestamp(r.uint64("deadline"))
		pv.Now = Timestamp(r.uint64("now"))
		c = pv
	case KindForgetVote:
		c = &ForgetVote{Txn: t, Now: Timestamp(r.uint64("now"))}
	case KindForgetRecord:
		c = &ForgetRecord{Txn: t, Now: Timestamp(r.uint64("now"))}
	default:
		return nil, fmt.Errorf("%w: unknown command kind %d", ErrMalformed, uint8(kind))
	}
	if err := r.end(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, kind, err)
	}
	return c, nil
}

func (r *reader) conditionsWrites() ([]Condition, []Write) {
	var conds []Condition
	if n, isNil := r.list("condition count", minConditionSize); !isNil {
		conds = make([]Condition, 0, min(n, maxPrealloc))
		for i := range n {
			c := Condition{Key: r.string("condition key"), Version: Version(r.uint64("condition version"))}
			if r.err != nil {
				r.err = fmt.Errorf("condition %d: %w", i, r.err)
				return nil, nil
			}
			conds = append(conds, c)
		}
	}
	var writes []Write
	if n, isNil := r.list("write count", minWriteSize); !isNil {
		writes = make([]Write, 0, min(n, maxPrealloc))
		for i := range n {
			w := Write{Key: r.string("write key"), Value: r.bytes("write value"), Delete: r.bool("write delete")}
			if r.err != nil {
				r.err = fmt.Errorf("write %d: %w", i, r.err)
				return nil, nil
			}
			writes = append(writes, w)
		}
	}
	return conds, writes
}

// The codes of the errors a Result carries: which of the package's
// errors it wraps, tried in this order, or errOther.
var resultErrors = []error{1: ErrMalformed, 2: ErrStaleIndex, 3: ErrOutcomeConflict, 4: ErrNotForgettable}

const (
	errNone  = 0
	errOther = 5
)

// MarshalResult encodes r:
//
//	format version (1 byte, 1)
//	Index
//	Err: a code (1 byte): 0 for nil, 1 to 4 if it wraps ErrMalformed,
//	    ErrStaleIndex, ErrOutcomeConflict or ErrNotForgettable (the first
//	    of them, in this order), 5 for any other error; then, if not 0,
//	    the message (Err.Error())
//	Vote (1 byte)
//	Refusal: Reason (1 byte), Condition.Key, Condition.Version, Actual,
//	    Holder
//	Busy
//	Holder: Txn, Prio, Home, Participants, Deadline, Expired
//	Versions: the list, each Key, Version
//	Record (1 byte)
//	Expired
//
// with the field encodings of this file's comment.
func MarshalResult(r Result) []byte {
	b := make([]byte, 0, 64)
	b = append(b, resultFormat)
	b = binary.AppendUvarint(b, r.Index)
	b = appendResultError(b, r.Err)
	b = append(b, byte(r.Vote))
	b = appendRefusalExact(b, r.Refusal)
	b = appendBool(b, r.Busy)
	b = appendHolderExact(b, r.Holder)
	b = appendListLen(b, len(r.Versions), r.Versions == nil)
	for _, kv := range r.Versions {
		b = appendString(b, kv.Key)
		b = binary.AppendUvarint(b, uint64(kv.Version))
	}
	b = append(b, byte(r.Record))
	return appendBool(b, r.Expired)
}

func appendResultError(b []byte, err error) []byte {
	if err == nil {
		return append(b, errNone)
	}
	code := errOther
	for c, sentinel := range resultErrors {
		if sentinel != nil && errors.Is(err, sentinel) {
			code = c
			break
		}
	}
	b = append(b, byte(code))
	return appendString(b, err.Error())
}

// UnmarshalResult decodes what MarshalResult encoded. The Result's Err,
// if any, has the original's message, and errors.Is finds in it the
// package error the original wrapped (the first, as MarshalResult
// chose); the error is that package error itself if the original was.
// Everything else in the Result is reflect.DeepEqual to the original.
func UnmarshalResult(b []byte) (Result, error) {
	r := reader{b: b}
	if v := r.uint8("format version"); r.err == nil && v != resultFormat {
		return Result{}, fmt.Errorf("txn: result format version %d, want %d", v, resultFormat)
	}
	var res Result
	res.Index = r.uint64("index")
	res.Err = r.resultError()
	res.Vote = VoteState(r.uint8("vote"))
	res.Refusal = r.refusal(true)
	res.Busy = r.bool("busy")
	res.Holder = r.holder(true)
	if n, isNil := r.list("version count", minKeyVersionSize); !isNil {
		res.Versions = make([]KeyVersion, 0, min(n, maxPrealloc))
		for i := range n {
			kv := KeyVersion{Key: r.string("version key"), Version: Version(r.uint64("version"))}
			if r.err != nil {
				r.err = fmt.Errorf("version %d: %w", i, r.err)
				break
			}
			res.Versions = append(res.Versions, kv)
		}
	}
	res.Record = RecordState(r.uint8("record"))
	res.Expired = r.bool("expired")
	if err := r.end(); err != nil {
		return Result{}, fmt.Errorf("txn: decode result: %w", err)
	}
	return res, nil
}

// resultError is a decoded Result's error that wraps one of the
// package's.
type resultError struct {
	msg string
	is  error
}

func (e *resultError) Error() string { return e.msg }
func (e *resultError) Unwrap() error { return e.is }

func (r *reader) resultError() error {
	code := int(r.uint8("error code"))
	if r.err != nil || code == errNone {
		return nil
	}
	if code > errOther {
		r.fail("unknown error code %d", code)
		return nil
	}
	msg := r.string("error message")
	if r.err != nil {
		return nil
	}
	if code == errOther {
		return errors.New(msg)
	}
	sentinel := resultErrors[code]
	if msg == sentinel.Error() {
		return sentinel
	}
	return &resultError{msg: msg, is: sentinel}
}

// MarshalRecordInfo encodes ri:
//
//	format version (1 byte, 1)
//	State (1 byte), Participants, Prio, Deadline
func MarshalRecordInfo(ri RecordInfo) []byte {
	b := make([]byte, 0, 32+10*len(ri.Participants))
	b = append(b, recordInfoFormat, byte(ri.State))
	b = appendGroupList(b, ri.Participants)
	b = binary.AppendUvarint(b, uint64(ri.Prio))
	return binary.AppendUvarint(b, uint64(ri.Deadline))
}

// UnmarshalRecordInfo decodes what MarshalRecordInfo encoded.
func UnmarshalRecordInfo(b []byte) (RecordInfo, error) {
	r := reader{b: b}
	if v := r.uint8("format version"); r.err == nil && v != recordInfoFormat {
		return RecordInfo{}, fmt.Errorf("txn: record format version %d, want %d", v, recordInfoFormat)
	}
	var ri RecordInfo
	ri.State = RecordState(r.uint8("state"))
	ri.Participants = r.groupList("participants")
	ri.Prio = Prio(r.uint64("prio"))
	ri.Deadline = Timestamp(r.uint64("deadline"))
	if err := r.end(); err != nil {
		return RecordInfo{}, fmt.Errorf("txn: decode record: %w", err)
	}
	return ri, nil
}

// MarshalReadResult encodes rr:
//
//	format version (1 byte, 1)
//	Value, Version, Found
//	whether Intent is set (a bool), and if it is, the Holder as in a
//	    Result
func MarshalReadResult(rr ReadResult) []byte {
	b := make([]byte, 0, 32+len(rr.Value))
	b = append(b, readResultFormat)
	b = appendBytes(b, rr.Value)
	b = binary.AppendUvarint(b, uint64(rr.Version))
	b = appendBool(b, rr.Found)
	b = appendBool(b, rr.Intent != nil)
	if rr.Intent != nil {
		b = appendHolderExact(b, *rr.Intent)
	}
	return b
}

// UnmarshalReadResult decodes what MarshalReadResult encoded.
func UnmarshalReadResult(b []byte) (ReadResult, error) {
	r := reader{b: b}
	if v := r.uint8("format version"); r.err == nil && v != readResultFormat {
		return ReadResult{}, fmt.Errorf("txn: read result format version %d, want %d", v, readResultFormat)
	}
	var rr ReadResult
	rr.Value = r.bytes("value")
	rr.Version = Version(r.uint64("version"))
	rr.Found = r.bool("found")
	if r.bool("intent") {
		h := r.holder(true)
		rr.Intent = &h
	}
	if err := r.end(); err != nil {
		return ReadResult{}, fmt.Errorf("txn: decode read result: %w", err)
	}
	return rr, nil
}

// txnIDSize is the length of MarshalTxnID's encoding.
const txnIDSize = 8 + 4 + 4

// MarshalTxnID encodes t in 16 bytes: HLC, Node and Counter, big-endian.
// The layout is fixed (it has no version byte), and the encodings sort
// as TxnID.Compare orders the ids, so that they can serve as keys.
func MarshalTxnID(t TxnID) []byte {
	b := make([]byte, 0, txnIDSize)
	b = binary.BigEndian.AppendUint64(b, t.HLC)
	b = binary.BigEndian.AppendUint32(b, t.Node)
	return binary.BigEndian.AppendUint32(b, t.Counter)
}

// UnmarshalTxnID decodes what MarshalTxnID encoded: exactly 16 bytes.
func UnmarshalTxnID(b []byte) (TxnID, error) {
	if len(b) != txnIDSize {
		return TxnID{}, fmt.Errorf("txn: a transaction id takes %d bytes, not %d", txnIDSize, len(b))
	}
	return TxnID{
		HLC:     binary.BigEndian.Uint64(b),
		Node:    binary.BigEndian.Uint32(b[8:]),
		Counter: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// MarshalState encodes p's state for a snapshot: a format version byte
// (1) and AppendState's encoding, which RestoreParticipant decodes.
// Replicas at the same applied index encode the same bytes.
func (p *Participant) MarshalState() []byte {
	return p.AppendState([]byte{stateFormat})
}

// RestoreParticipant decodes what MarshalState encoded into a new
// Participant, which applies the commands after the snapshot's index as
// the encoded one would: RestoreParticipant(p.MarshalState()) encodes the
// same state as p.
//
// It refuses, with an error, anything that applying commands to a
// NewParticipant cannot have produced, rather than build a Participant
// whose next Apply would go wrong:
//   - in the encoding: an unknown format version, a truncated field, a
//     length beyond the data, trailing bytes, a longer varint than
//     needed, a bool other than 0 or 1;
//   - in each entry: keys and transaction ids not in strictly increasing
//     order (which rules out duplicates), an empty key, a zero
//     transaction id, an undefined vote, record or refusal state, a
//     version of 0 or above the applied index, group lists not sorted,
//     repeated, with a 0, or without the group itself (and an intent's,
//     without its home);
//   - in the entries' shapes: a value on an intent that does not write
//     its key or on a delete, keys only and always on a PREPARED vote, a
//     refusal only and always on a REFUSED one, carrying only the fields
//     of its reason;
//   - across the entries: an intent must belong to a PREPARED vote that
//     lists its key, and every key of a PREPARED vote must hold its
//     intent (a transaction's intents then agree on what PREPARE wrote
//     into them, and their deadline is the vote's); a PREPARED vote's
//     versions are its keys' current versions (nothing writes a locked
//     key); an intent whose home is this group has the record its
//     PREPARE wrote, with the same participants, priority and deadline;
//     a STAGING record has a vote here that is PREPARED or resolved.
func RestoreParticipant(b []byte) (*Participant, error) {
	r := reader{b: b}
	if v := r.uint8("format version"); r.err == nil && v != stateFormat {
		return nil, fmt.Errorf("txn: restore participant: state format version %d, want %d", v, stateFormat)
	}
	if r.err != nil {
		return nil, fmt.Errorf("txn: restore participant: %w", r.err)
	}
	p, err := readState(&r)
	if err != nil {
		return nil, fmt.Errorf("txn: restore participant: %w", err)
	}
	return p, nil
}

// readState reads appendState's encoding, with the applied index, and
// checks it as RestoreParticipant says.
func readState(r *reader) (*Participant, error) {
	p := NewParticipant(GroupID(r.uint64("group")))
	p.applied = r.uint64("applied index")
	p.clock = Timestamp(r.uint64("clock"))
	if r.err != nil {
		return nil, r.err
	}
	for _, read := range []func(*reader) error{p.readData, p.readIntents, p.readVotes, p.readRecords} {
		if err := read(r); err != nil {
			return nil, err
		}
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	if err := p.checkIntents(); err != nil {
		return nil, err
	}
	if err := p.checkVotesAndRecords(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Participant) readData(r *reader) error {
	n := r.count("data count", minDataEntrySize)
	if r.err != nil {
		return r.err
	}
	p.data = make(map[string]dataEntry, min(n, maxPrealloc))
	var prev string
	for i := range n {
		k := r.string("data key")
		e := dataEntry{value: r.bytes("data value"), version: Version(r.uint64("data version"))}
		if r.err != nil {
			return fmt.Errorf("data entry %d: %w", i, r.err)
		}
		switch {
		case k == "":
			return fmt.Errorf("data entry %d: empty key", i)
		case i > 0 && k <= prev:
			return fmt.Errorf("data entry %d: key %q not after %q", i, k, prev)
		case e.version == 0 || uint64(e.version) > p.applied:
			return fmt.Errorf("data entry %d: key %q has version %d, applied %d", i, k, e.version, p.applied)
		}
		p.data[k] = e
		prev = k
	}
	return nil
}

func (p *Participant) readIntents(r *reader) error {
	n := r.count("intent count", minIntentSize)
	if r.err != nil {
		return r.err
	}
	p.intents = make(map[string]intent, min(n, maxPrealloc))
	var prev string
	for i := range n {
		k := r.string("intent key")
		var in intent
		in.txn = r.txnID("intent transaction id")
		in.prio = Prio(r.uint64("intent prio"))
		in.write = r.bool("intent write")
		in.delete = r.bool("intent delete")
		in.value = r.bytes("intent value")
		in.home = GroupID(r.uint64("intent home"))
		in.participants = r.groups("intent participants")
		in.deadline = Timestamp(r.uint64("intent deadline"))
		if r.err != nil {
			return fmt.Errorf("intent %d: %w", i, r.err)
		}
		switch {
		case k == "":
			return fmt.Errorf("intent %d: empty key", i)
		case i > 0 && k <= prev:
			return fmt.Errorf("intent %d: key %q not after %q", i, k, prev)
		case in.txn.IsZero():
			return fmt.Errorf("intent on %q: zero transaction id", k)
		case !in.write && (in.delete || in.value != nil):
			return fmt.Errorf("intent on %q: a condition lock with a delete or a value", k)
		case in.delete && len(in.value) != 0:
			return fmt.Errorf("intent on %q: a delete with a value", k)
		}
		if err := p.checkGroups(in.participants, 2); err != nil {
			return fmt.Errorf("intent on %q: %w", k, err)
		}
		if _, found := slices.BinarySearch(in.participants, in.home); !found {
			return fmt.Errorf("intent on %q: home %d is not among the participants %v", k, in.home, in.participants)
		}
		p.intents[k] = in
		prev = k
	}
	return nil
}

func (p *Participant) readVotes(r *reader) error {
	n := r.count("vote count", minVoteSize)
	if r.err != nil {
		return r.err
	}
	p.votes = make(map[TxnID]vote, min(n, maxPrealloc))
	var prev TxnID
	for i := range n {
		t := r.txnID("vote transaction id")
		var v vote
		v.state = VoteState(r.uint8("vote state"))
		if nk := r.count("vote key count", minVoteKeySize); nk > 0 {
			v.keys = make([]string, 0, min(nk, maxPrealloc))
			v.versions = make([]Version, 0, min(nk, maxPrealloc))
			for j := range nk {
				k := r.string("vote key")
				version := Version(r.uint64("vote version"))
				switch {
				case r.err != nil:
					r.err = fmt.Errorf("key %d: %w", j, r.err)
				case k == "":
					r.fail("key %d is empty", j)
				case j > 0 && k <= v.keys[j-1]:
					r.fail("key %q not after %q", k, v.keys[j-1])
				}
				if r.err != nil {
					break
				}
				v.keys = append(v.keys, k)
				v.versions = append(v.versions, version)
			}
		}
		v.refusal = r.refusal(false)
		v.deadline = Timestamp(r.uint64("vote deadline"))
		if r.err != nil {
			return fmt.Errorf("vote %d: %w", i, r.err)
		}
		switch {
		case t.IsZero():
			return fmt.Errorf("vote %d: zero transaction id", i)
		case i > 0 && t.Compare(prev) <= 0:
			return fmt.Errorf("vote %d: %s not after %s", i, t, prev)
		case v.state == VoteNone || v.state > VoteResolvedAbort:
			return fmt.Errorf("vote of %s: state %d", t, uint8(v.state))
		case (v.state == VotePrepared) != (len(v.keys) > 0):
			return fmt.Errorf("vote of %s: %s with %d keys", t, v.state, len(v.keys))
		}
		if err := checkVoteRefusal(v); err != nil {
			return fmt.Errorf("vote of %s: %w", t, err)
		}
		p.votes[t] = v
		prev = t
	}
	return nil
}

// checkVoteRefusal checks a vote's refusal: set on a REFUSED vote only,
// for one of the reasons a vote records (the others are answered without
// a vote), with only the fields its reason sets.
func checkVoteRefusal(v vote) error {
	ref := v.refusal
	switch {
	case (v.state == VoteRefused) != (ref.Reason != 0):
		return fmt.Errorf("%s with refusal reason %d", v.state, uint8(ref.Reason))
	case ref.Reason != 0 && ref.Reason != RefusedCondition && ref.Reason != RefusedConflict && ref.Reason != RefusedPrevented:
		return fmt.Errorf("recorded refusal reason %d", uint8(ref.Reason))
	case ref.Reason != RefusedCondition && (ref.Condition != Condition{} || ref.Actual != 0):
		return fmt.Errorf("refusal %q carries a condition", ref.Reason)
	case ref.Reason != RefusedConflict && !isZeroHolder(ref.Holder):
		return fmt.Errorf("refusal %q carries a holder", ref.Reason)
	}
	return nil
}

func isZeroHolder(h Holder) bool {
	return h.Txn.IsZero() && h.Prio == 0 && h.Home == 0 && h.Participants == nil && h.Deadline == 0 && !h.Expired
}

func (p *Participant) readRecords(r *reader) error {
	n := r.count("record count", minRecordSize)
	if r.err != nil {
		return r.err
	}
	p.records = make(map[TxnID]record, min(n, maxPrealloc))
	var prev TxnID
	for i := range n {
		t := r.txnID("record transaction id")
		var rec record
		rec.state = RecordState(r.uint8("record state"))
		rec.participants = r.groups("record participants")
		rec.prio = Prio(r.uint64("record prio"))
		rec.deadline = Timestamp(r.uint64("record deadline"))
		if r.err != nil {
			return fmt.Errorf("record %d: %w", i, r.err)
		}
		switch {
		case t.IsZero():
			return fmt.Errorf("record %d: zero transaction id", i)
		case i > 0 && t.Compare(prev) <= 0:
			return fmt.Errorf("record %d: %s not after %s", i, t, prev)
		case rec.state == RecordNone || rec.state > RecordAborted:
			return fmt.Errorf("record of %s: state %d", t, uint8(rec.state))
		}
		// A FINALIZE's tombstone may name the home alone.
		if err := p.checkGroups(rec.participants, 1); err != nil {
			return fmt.Errorf("record of %s: %w", t, err)
		}
		p.records[t] = rec
		prev = t
	}
	return nil
}

// checkGroups checks a transaction's participants as the state keeps
// them: sorted, distinct, nonzero, at least least of them, and this
// group among them (a command whose participants leave it out is
// malformed here).
func (p *Participant) checkGroups(gs []GroupID, least int) error {
	if len(gs) < least {
		return fmt.Errorf("participants %v: fewer than %d", gs, least)
	}
	for i, g := range gs {
		if g == 0 || (i > 0 && gs[i-1] >= g) {
			return fmt.Errorf("participants %v: not sorted, distinct and nonzero", gs)
		}
	}
	if _, found := slices.BinarySearch(gs, p.group); !found {
		return fmt.Errorf("participants %v: without group %d", gs, p.group)
	}
	return nil
}

// checkIntents checks each intent against its transaction's vote and,
// at its home, record.
func (p *Participant) checkIntents() error {
	first := map[TxnID]intent{}
	for _, k := range slices.Sorted(maps.Keys(p.intents)) {
		in := p.intents[k]
		v, ok := p.votes[in.txn]
		if !ok || v.state != VotePrepared {
			return fmt.Errorf("intent on %q: %s's vote is %s, not prepared", k, in.txn, v.state)
		}
		if _, found := slices.BinarySearch(v.keys, k); !found {
			return fmt.Errorf("intent on %q: %s's vote does not list the key", k, in.txn)
		}
		if in.deadline != v.deadline {
			return fmt.Errorf("intent on %q: deadline %d, %s's vote has %d", k, in.deadline, in.txn, v.deadline)
		}
		if f, ok := first[in.txn]; ok {
			if f.prio != in.prio || f.home != in.home || !slices.Equal(f.participants, in.participants) {
				return fmt.Errorf("intent on %q: %s's intents disagree on its priority, home or participants", k, in.txn)
			}
			continue
		}
		first[in.txn] = in
		if in.home == p.group {
			rec, ok := p.records[in.txn]
			if !ok || rec.prio != in.prio || rec.deadline != in.deadline || !slices.Equal(rec.participants, in.participants) {
				return fmt.Errorf("intent on %q: %s's home is this group, which has no record of it as it prepared", k, in.txn)
			}
		}
	}
	return nil
}

// checkVotesAndRecords checks that a PREPARED vote holds the intents of
// its keys and saw their current versions, and that a STAGING record has
// its vote.
func (p *Participant) checkVotesAndRecords() error {
	for _, t := range sortedTxns(p.votes) {
		v := p.votes[t]
		for i, k := range v.keys {
			if in, ok := p.intents[k]; !ok || in.txn != t {
				return fmt.Errorf("vote of %s: no intent of it on %q", t, k)
			}
			if v.versions[i] != p.data[k].version {
				return fmt.Errorf("vote of %s: %q at version %d, the data has %d", t, k, v.versions[i], p.data[k].version)
			}
		}
	}
	for _, t := range sortedTxns(p.records) {
		if p.records[t].state != RecordStaging {
			continue
		}
		if v, ok := p.votes[t]; !ok || v.state == VoteRefused {
			return fmt.Errorf("record of %s: staging, and the vote here is %s", t, v.state)
		}
	}
	return nil
}

// appendListLen writes a list's length: 0 for nil, else n+1.
func appendListLen(b []byte, n int, isNil bool) []byte {
	if isNil {
		return append(b, 0)
	}
	return binary.AppendUvarint(b, uint64(n)+1)
}

// appendGroupList is appendGroups keeping nil apart from empty.
func appendGroupList(b []byte, gs []GroupID) []byte {
	b = appendListLen(b, len(gs), gs == nil)
	for _, g := range gs {
		b = binary.AppendUvarint(b, uint64(g))
	}
	return b
}

// appendHolderExact and appendRefusalExact are appendHolder and
// appendRefusal keeping nil apart from empty in the holder's
// participants.
func appendHolderExact(b []byte, h Holder) []byte {
	b = appendTxnID(b, h.Txn)
	b = binary.AppendUvarint(b, uint64(h.Prio))
	b = binary.AppendUvarint(b, uint64(h.Home))
	b = appendGroupList(b, h.Participants)
	b = binary.AppendUvarint(b, uint64(h.Deadline))
	return appendBool(b, h.Expired)
}

func appendRefusalExact(b []byte, r Refusal) []byte {
	b = append(b, byte(r.Reason))
	b = appendString(b, r.Condition.Key)
	b = binary.AppendUvarint(b, uint64(r.Condition.Version))
	b = binary.AppendUvarint(b, uint64(r.Actual))
	return appendHolderExact(b, r.Holder)
}

// reader reads the fields of the encodings above from memory. Its first
// error sticks and later reads return zeros, so that a decoder checks
// once per entry rather than after every field; the decoder adds the
// context.
type reader struct {
	b   []byte
	err error
}

// fail records an error, unless one came first.
func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

// end returns the first error, or one for bytes left after the value.
func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%d trailing bytes", len(r.b))
	}
	return r.err
}

// take returns the next n bytes, which alias the input.
func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("%s needs %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) uint8(what string) uint8 {
	if p := r.take(1, what); p != nil {
		return p[0]
	}
	return 0
}

// uint64 reads a varint, which must be in its shortest form: every value
// has one encoding.
func (r *reader) uint64(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	switch {
	case n == 0:
		r.fail("%s: varint cut short after %d bytes", what, len(r.b))
	case n < 0:
		r.fail("%s: varint overflows 64 bits", what)
	case n > 1 && r.b[n-1] == 0:
		r.fail("%s: varint longer than needed", what)
	default:
		r.b = r.b[n:]
		return v
	}
	return 0
}

func (r *reader) uint32(what string) uint32 {
	v := r.uint64(what)
	if v > math.MaxUint32 {
		r.fail("%s: %d overflows 32 bits", what, v)
		return 0
	}
	return uint32(v)
}

func (r *reader) bool(what string) bool {
	switch b := r.uint8(what); b {
	case 0:
		return false
	case 1:
		return true
	default:
		r.fail("%s: bool byte %d", what, b)
		return false
	}
}

// string reads appendString's encoding.
func (r *reader) string(what string) string {
	n := r.uint64(what + " length")
	return string(r.take(n, what))
}

// bytes reads appendBytes's encoding, into a copy: nil for nil, and a
// non-nil slice, empty or not, for the rest.
func (r *reader) bytes(what string) []byte {
	n := r.uint64(what + " length")
	if n == 0 {
		return nil
	}
	p := r.take(n-1, what)
	if r.err != nil {
		return nil
	}
	return append([]byte{}, p...)
}

// count reads a plain count of elements that take at least minSize bytes
// each, and fails if they cannot fit in the bytes left.
func (r *reader) count(what string, minSize int) int {
	n := r.uint64(what)
	if r.err != nil {
		return 0
	}
	if n > uint64(len(r.b)/minSize) {
		r.fail("%s %d: cannot fit in %d bytes", what, n, len(r.b))
		return 0
	}
	return int(n)
}

// list reads appendListLen's encoding, as count does a plain count.
func (r *reader) list(what string, minSize int) (n int, isNil bool) {
	v := r.uint64(what)
	if r.err != nil || v == 0 {
		return 0, true
	}
	if v-1 > uint64(len(r.b)/minSize) {
		r.fail("%s %d: cannot fit in %d bytes", what, v-1, len(r.b))
		return 0, true
	}
	return int(v - 1), false
}

func (r *reader) txnID(what string) TxnID {
	return TxnID{HLC: r.uint64(what + " hlc"), Node: r.uint32(what + " node"), Counter: r.uint32(what + " counter")}
}

// groups reads appendGroups's encoding: nil for none.
func (r *reader) groups(what string) []GroupID {
	n := r.count(what+" count", minGroupSize)
	if n == 0 {
		return nil
	}
	return r.groupElems(what, n)
}

// groupList reads appendGroupList's encoding.
func (r *reader) groupList(what string) []GroupID {
	n, isNil := r.list(what+" count", minGroupSize)
	if isNil {
		return nil
	}
	return r.groupElems(what, n)
}

func (r *reader) groupElems(what string, n int) []GroupID {
	gs := make([]GroupID, 0, min(n, maxPrealloc))
	for range n {
		g := GroupID(r.uint64(what))
		if r.err != nil {
			return nil
		}
		gs = append(gs, g)
	}
	return gs
}

// holder reads appendHolderExact's encoding if exact, else appendHolder's.
func (r *reader) holder(exact bool) Holder {
	var h Holder
	h.Txn = r.txnID("holder transaction id")
	h.Prio = Prio(r.uint64("holder prio"))
	h.Home = GroupID(r.uint64("holder home"))
	if exact {
		h.Participants = r.groupList("holder participants")
	} else {
		h.Participants = r.groups("holder participants")
	}
	h.Deadline = Timestamp(r.uint64("holder deadline"))
	h.Expired = r.bool("holder expired")
	return h
}

// refusal reads appendRefusalExact's encoding if exact, else
// appendRefusal's.
func (r *reader) refusal(exact bool) Refusal {
	var ref Refusal
	ref.Reason = RefusalReason(r.uint8("refusal reason"))
	ref.Condition.Key = r.string("refusal condition key")
	ref.Condition.Version = Version(r.uint64("refusal condition version"))
	ref.Actual = Version(r.uint64("refusal actual version"))
	ref.Holder = r.holder(exact)
	return ref
}
