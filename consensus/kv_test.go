package consensus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// applyKVAt encodes cmd and applies it to kv as the log entry at index.
func applyKVAt(t testing.TB, kv *KV, index uint64, cmd KVCommand) KVResult {
	t.Helper()
	data, err := cmd.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return kv.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(KVResult)
}

// dumpKV renders kv's state as "key=value@version" in key order, for
// comparing states with readable failures.
func dumpKV(kv *KV) string {
	var parts []string
	for _, e := range kv.Scan(nil, 0) {
		parts = append(parts, fmt.Sprintf("%q=%q@%d", e.Key, e.Value, e.Version))
	}
	return strings.Join(parts, " ")
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

// snapshotKV returns kv's persisted snapshot.
func snapshotKV(t testing.TB, kv *KV) []byte {
	t.Helper()
	snap, err := kv.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist left the sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// closeTracker is a snapshot reader that records its Close.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func TestKVApply(t *testing.T) {
	b := func(s string) []byte { return []byte(s) }
	// The state every case starts from: a and b written at index 10, c at
	// 11. Every case applies at index 20.
	const initial = `"a"="1"@10 "b"="2"@10 "c"="3"@11`
	tests := []struct {
		name string
		cmd  KVCommand
		// raw, if set, is applied instead of cmd's encoding.
		raw       []byte
		wantOps   []KVOpResult
		wantErr   *KVConflictError
		malformed bool
		wantState string
	}{{
		name:      "put new key",
		cmd:       KVBatch(KVPut(b("d"), b("4"))),
		wantOps:   []KVOpResult{{0, 20}},
		wantState: initial + ` "d"="4"@20`,
	}, {
		name:      "put over a key",
		cmd:       KVBatch(KVPut(b("a"), b("x"))),
		wantOps:   []KVOpResult{{10, 20}},
		wantState: `"a"="x"@20 "b"="2"@10 "c"="3"@11`,
	}, {
		name:      "put empty value",
		cmd:       KVBatch(KVPut(b("e"), nil)),
		wantOps:   []KVOpResult{{0, 20}},
		wantState: initial + ` "e"=""@20`,
	}, {
		name:      "delete a key",
		cmd:       KVBatch(KVDelete(b("b"))),
		wantOps:   []KVOpResult{{10, 0}},
		wantState: `"a"="1"@10 "c"="3"@11`,
	}, {
		name:      "delete an absent key",
		cmd:       KVBatch(KVDelete(b("z"))),
		wantOps:   []KVOpResult{{0, 0}},
		wantState: initial,
	}, {
		name:      "compare-and-swap at the version",
		cmd:       KVBatch(KVCompareAndSwap(b("c"), 11, b("y"))),
		wantOps:   []KVOpResult{{11, 20}},
		wantState: `"a"="1"@10 "b"="2"@10 "c"="y"@20`,
	}, {
		name:      "compare-and-swap creating an absent key",
		cmd:       KVBatch(KVCompareAndSwap(b("n"), 0, b("new"))),
		wantOps:   []KVOpResult{{0, 20}},
		wantState: initial + ` "n"="new"@20`,
	}, {
		name:      "compare-and-swap at another version",
		cmd:       KVBatch(KVCompareAndSwap(b("a"), 11, b("x"))),
		wantErr:   &KVConflictError{Op: 0, Key: b("a"), Expected: 11, Actual: 10},
		wantState: initial,
	}, {
		name:      "compare-and-swap expecting absent, key present",
		cmd:       KVBatch(KVCompareAndSwap(b("a"), 0, b("x"))),
		wantErr:   &KVConflictError{Op: 0, Key: b("a"), Expected: 0, Actual: 10},
		wantState: initial,
	}, {
		name:      "compare-and-swap of an absent key",
		cmd:       KVBatch(KVCompareAndSwap(b("z"), 5, b("x"))),
		wantErr:   &KVConflictError{Op: 0, Key: b("z"), Expected: 5, Actual: 0},
		wantState: initial,
	}, {
		name:      "batch applies every op",
		cmd:       KVBatch(KVPut(b("d"), b("4")), KVDelete(b("a")), KVCompareAndSwap(b("c"), 11, b("z"))),
		wantOps:   []KVOpResult{{0, 20}, {10, 0}, {11, 20}},
		wantState: `"b"="2"@10 "c"="z"@20 "d"="4"@20`,
	}, {
		name: "batch with a failed compare-and-swap applies nothing",
		cmd: KVBatch(KVPut(b("d"), b("4")), KVDelete(b("a")),
			KVCompareAndSwap(b("c"), 10, b("z")), KVPut(b("e"), b("5"))),
		wantErr:   &KVConflictError{Op: 2, Key: b("c"), Expected: 10, Actual: 11},
		wantState: initial,
	}, {
		name:      "batch ops see the earlier ops",
		cmd:       KVBatch(KVDelete(b("a")), KVCompareAndSwap(b("a"), 0, b("again"))),
		wantOps:   []KVOpResult{{10, 0}, {0, 20}},
		wantState: `"a"="again"@20 "b"="2"@10 "c"="3"@11`,
	}, {
		name:      "batch compare-and-swap after a put of its key",
		cmd:       KVBatch(KVPut(b("a"), b("x")), KVCompareAndSwap(b("a"), 10, b("y"))),
		wantErr:   &KVConflictError{Op: 1, Key: b("a"), Expected: 10, Actual: 20},
		wantState: initial,
	}, {
		name:      "same key twice: the last op wins",
		cmd:       KVBatch(KVPut(b("d"), b("first")), KVPut(b("d"), b("second"))),
		wantOps:   []KVOpResult{{0, 20}, {20, 20}},
		wantState: initial + ` "d"="second"@20`,
	}, {
		name:      "empty entry",
		raw:       []byte{},
		malformed: true,
		wantState: initial,
	}, {
		name:      "unknown format",
		raw:       []byte{2, 0, 0, 0, 1, 2, 0, 0, 0, 1, 'a'},
		malformed: true,
		wantState: initial,
	}, {
		name:      "truncated put",
		raw:       []byte{1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 'a', 0, 0, 0, 5, 'x'},
		malformed: true,
		wantState: initial,
	}, {
		name: "malformed second op of a batch",
		// A valid delete of a, then an op of kind 9.
		raw:       []byte{1, 0, 0, 0, 2, 2, 0, 0, 0, 1, 'a', 9, 0, 0, 0, 1, 'b'},
		malformed: true,
		wantState: initial,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := NewKV()
			applyKVAt(t, kv, 10, KVBatch(KVPut(b("a"), b("1")), KVPut(b("b"), b("2"))))
			applyKVAt(t, kv, 11, KVBatch(KVPut(b("c"), b("3"))))
			if got := dumpKV(kv); got != initial {
				t.Fatalf("initial state %s, want %s", got, initial)
			}
			data := tt.raw
			if data == nil {
				var err error
				if data, err = tt.cmd.MarshalBinary(); err != nil {
					t.Fatal(err)
				}
			}
			res, ok := kv.Apply(&raft.Log{Index: 20, Type: raft.LogCommand, Data: data}).(KVResult)
			if !ok {
				t.Fatal("Apply did not return a KVResult")
			}
			if res.Index != 20 {
				t.Errorf("Index = %d, want 20", res.Index)
			}
			var conflict *KVConflictError
			switch {
			case tt.malformed:
				if !errors.Is(res.Err, ErrKVMalformed) {
					t.Errorf("Err = %v, want ErrKVMalformed", res.Err)
				}
			case tt.wantErr != nil:
				if !errors.As(res.Err, &conflict) || !errors.Is(res.Err, ErrKVConflict) {
					t.Fatalf("Err = %v, want a *KVConflictError", res.Err)
				}
				if conflict.Op != tt.wantErr.Op || !bytes.Equal(conflict.Key, tt.wantErr.Key) ||
					conflict.Expected != tt.wantErr.Expected || conflict.Actual != tt.wantErr.Actual {
					t.Errorf("conflict %+v, want %+v", conflict, tt.wantErr)
				}
			default:
				if res.Err != nil {
					t.Fatalf("Err = %v", res.Err)
				}
			}
			if tt.wantOps == nil && res.Ops != nil {
				t.Errorf("refused command returned ops %v", res.Ops)
			}
			if fmt.Sprint(res.Ops) != fmt.Sprint(tt.wantOps) {
				t.Errorf("Ops = %v, want %v", res.Ops, tt.wantOps)
			}
			if got := dumpKV(kv); got != tt.wantState {
				t.Errorf("state %s, want %s", got, tt.wantState)
			}
		})
	}
}

func TestKVCommandEncoding(t *testing.T) {
	cmd := KVBatch(
		KVPut([]byte("k\x00\xff"), []byte("value")),
		KVDelete([]byte("gone")),
		KVCompareAndSwap([]byte("c"), 1<<40+3, []byte{}),
		KVPut([]byte("nil-value"), nil),
	)
	data, err := cmd.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	orig := bytes.Clone(data)
	got, err := DecodeKVCommand(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Ops) != len(cmd.Ops) {
		t.Fatalf("decoded %d ops, want %d", len(got.Ops), len(cmd.Ops))
	}
	for i, op := range got.Ops {
		want := cmd.Ops[i]
		if op.Kind != want.Kind || !bytes.Equal(op.Key, want.Key) || !bytes.Equal(op.Value, want.Value) || op.Version != want.Version {
			t.Errorf("op %d decoded as %+v, want %+v", i, op, want)
		}
	}
	// The decoded command owns its bytes: the log's buffer may be reused.
	for i := range data {
		data[i] = 0xee
	}
	again, err := got.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, orig) {
		t.Errorf("re-encoding after the input changed gives %x, want %x", again, orig)
	}

	for _, bad := range []struct {
		name string
		cmd  KVCommand
	}{
		{"no ops", KVCommand{}},
		{"empty key", KVBatch(KVPut(nil, []byte("v")))},
		{"empty key in a batch", KVBatch(KVPut([]byte("k"), nil), KVDelete([]byte{}))},
		{"unknown kind", KVBatch(KVOp{Kind: 7, Key: []byte("k")})},
		{"zero kind", KVBatch(KVOp{Key: []byte("k")})},
		{"put with a version", KVBatch(KVOp{Kind: KVOpPut, Key: []byte("k"), Version: 3})},
		{"delete with a value", KVBatch(KVOp{Kind: KVOpDelete, Key: []byte("k"), Value: []byte("v")})},
		{"delete with a version", KVBatch(KVOp{Kind: KVOpDelete, Key: []byte("k"), Version: 3})},
	} {
		if _, err := bad.cmd.MarshalBinary(); !errors.Is(err, ErrKVMalformed) {
			t.Errorf("encoding %s: %v, want ErrKVMalformed", bad.name, err)
		}
	}

	// Every strict prefix of a valid command is malformed, and so is
	// anything after its end.
	for n := range len(orig) {
		if _, err := DecodeKVCommand(orig[:n]); !errors.Is(err, ErrKVMalformed) {
			t.Errorf("decoding the first %d of %d bytes: %v, want ErrKVMalformed", n, len(orig), err)
		}
	}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, bad := range []struct {
		name string
		data []byte
	}{
		{"trailing byte", cat(orig, []byte{0})},
		{"format 0", cat([]byte{0}, orig[1:])},
		{"format 2", cat([]byte{2}, orig[1:])},
		{"no ops", cat([]byte{1}, be32(0))},
		{"more ops than bytes", cat([]byte{1}, be32(1<<32-1), []byte{2}, be32(1), []byte("k"))},
		{"op count above the ops", cat([]byte{1}, be32(3), []byte{2}, be32(1), []byte("k"), []byte{2}, be32(1), []byte("k"))},
		{"op count above the ops, padded", cat([]byte{1}, be32(3), []byte{2}, be32(1), []byte("k"), []byte{2}, be32(1), []byte("k"), make([]byte, 6))},
		{"key length beyond the data", cat([]byte{1}, be32(1), []byte{2}, be32(1<<32-1), []byte("kkkkkk"))},
		{"value length beyond the data", cat([]byte{1}, be32(1), []byte{1}, be32(1), []byte("k"), be32(1<<31))},
		{"empty key", cat([]byte{1}, be32(1), []byte{2}, be32(0), []byte{0, 0})},
		{"unknown kind", cat([]byte{1}, be32(1), []byte{4}, be32(1), []byte("k"))},
	} {
		if _, err := DecodeKVCommand(bad.data); !errors.Is(err, ErrKVMalformed) {
			t.Errorf("decoding %s: %v, want ErrKVMalformed", bad.name, err)
		}
	}
}

func TestKVGetScan(t *testing.T) {
	var kv KV // the zero KV is empty and usable
	if _, _, ok := kv.Get([]byte("a")); ok {
		t.Error("Get on an empty KV found a key")
	}
	if got := kv.Scan(nil, 0); len(got) != 0 {
		t.Errorf("Scan on an empty KV: %v", got)
	}
	keys := []string{"b", "\xff", "abc", "a", "ba", "ab", "a\x00"}
	for i, k := range keys {
		applyKVAt(t, &kv, uint64(i+1), KVBatch(KVPut([]byte(k), []byte("v-"+k))))
	}

	v, ver, ok := kv.Get([]byte("abc"))
	if !ok || string(v) != "v-abc" || ver != 3 {
		t.Fatalf(`Get("abc") = %q, %d, %v; want "v-abc", 3, true`, v, ver, ok)
	}
	v[0] = 'X'
	if v, _, _ := kv.Get([]byte("abc")); string(v) != "v-abc" {
		t.Errorf("changing Get's value changed the state: %q", v)
	}

	scanKeys := func(prefix string, limit int) string {
		var out []string
		for _, e := range kv.Scan([]byte(prefix), limit) {
			if string(e.Value) != "v-"+string(e.Key) {
				t.Errorf("Scan: %q = %q", e.Key, e.Value)
			}
			out = append(out, fmt.Sprintf("%q", e.Key))
		}
		return strings.Join(out, ",")
	}
	for _, tt := range []struct {
		prefix string
		limit  int
		want   string
	}{
		{"", 0, `"a","a\x00","ab","abc","b","ba","\xff"`},
		{"", -1, `"a","a\x00","ab","abc","b","ba","\xff"`},
		{"", 2, `"a","a\x00"`},
		{"a", 0, `"a","a\x00","ab","abc"`},
		{"ab", 1, `"ab"`},
		{"b", 10, `"b","ba"`},
		{"\xff", 0, `"\xff"`},
		{"c", 0, ``},
	} {
		if got := scanKeys(tt.prefix, tt.limit); got != tt.want {
			t.Errorf("Scan(%q, %d) = %s, want %s", tt.prefix, tt.limit, got, tt.want)
		}
	}
	got := kv.Scan([]byte("b"), 1)
	got[0].Key[0], got[0].Value[0] = 'X', 'X'
	if got := scanKeys("b", 1); got != `"b"` {
		t.Errorf("changing Scan's entries changed the state: %s", got)
	}
	if v, _, _ := kv.Get([]byte("b")); string(v) != "v-b" {
		t.Errorf("changing Scan's value changed the state: %q", v)
	}
}

func TestKVSnapshotRoundTrip(t *testing.T) {
	kv := NewKV()
	applyKVAt(t, kv, 5, KVBatch(KVPut([]byte("a"), []byte("1")), KVPut([]byte("k\x00\xff"), []byte{0, 1, 2})))
	applyKVAt(t, kv, 6, KVBatch(KVPut([]byte("empty"), nil)))
	applyKVAt(t, kv, 9, KVBatch(KVPut([]byte("b"), []byte("2")), KVDelete([]byte("a"))))
	want := dumpKV(kv)

	// A snapshot is the state when Snapshot ran, whatever Apply does
	// before Persist.
	snap, err := kv.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applyKVAt(t, kv, 10, KVBatch(KVPut([]byte("b"), []byte("changed")), KVPut([]byte("late"), []byte("x"))))
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	data := sink.Bytes()

	// Restore replaces the state entirely, versions included.
	other := NewKV()
	applyKVAt(t, other, 100, KVBatch(KVPut([]byte("b"), []byte("other")), KVPut([]byte("zzz"), []byte("other"))))
	rc := &closeTracker{Reader: bytes.NewReader(data)}
	if err := other.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if !rc.closed {
		t.Error("Restore did not close its reader")
	}
	if got := dumpKV(other); got != want {
		t.Errorf("restored %s, want %s", got, want)
	}
	// Equal states make equal snapshots.
	if again := snapshotKV(t, other); !bytes.Equal(again, data) {
		t.Errorf("snapshot of the restored state differs:\n%x\n%x", again, data)
	}
	// The restored state goes on from there.
	res := applyKVAt(t, other, 11, KVBatch(KVCompareAndSwap([]byte("b"), 9, []byte("3"))))
	if res.Err != nil {
		t.Errorf("compare-and-swap at a restored version: %v", res.Err)
	}

	// An empty snapshot empties the state.
	empty := snapshotKV(t, NewKV())
	if err := other.Restore(io.NopCloser(bytes.NewReader(empty))); err != nil {
		t.Fatal(err)
	}
	if got := dumpKV(other); got != "" {
		t.Errorf("restoring an empty snapshot left %s", got)
	}

	// A snapshot that does not decode leaves the state alone.
	entry := func(key string, version uint64, value string) []byte {
		b := appendKVBytes(nil, []byte(key))
		b = binary.BigEndian.AppendUint64(b, version)
		return appendKVBytes(b, []byte(value))
	}
	snapshot := func(count uint64, entries ...[]byte) []byte {
		b := binary.BigEndian.AppendUint64([]byte{kvSnapshotFormat}, count)
		return append(b, bytes.Join(entries, nil)...)
	}
	bad := map[string][]byte{
		"empty":            {},
		"format 2":         append([]byte{2}, data[1:]...),
		"trailing byte":    append(bytes.Clone(data), 0),
		"unsorted":         snapshot(2, entry("b", 1, ""), entry("a", 1, "")),
		"duplicate key":    snapshot(2, entry("a", 1, ""), entry("a", 2, "")),
		"version 0":        snapshot(1, entry("a", 0, "")),
		"empty key":        snapshot(1, entry("", 1, "")),
		"count too high":   snapshot(2, entry("a", 1, "")),
		"huge count":       snapshot(1<<62, entry("a", 1, "")),
		"huge value":       append(snapshot(1, entry("a", 1, "")[:13]), 0xff, 0xff, 0xff, 0xff),
		"count too low":    snapshot(1, entry("a", 1, ""), entry("b", 1, "")),
		"truncated header": data[:5],
	}
	for n := 1; n < len(data); n++ {
		bad[fmt.Sprintf("first %d of %d bytes", n, len(data))] = data[:n]
	}
	for name, b := range bad {
		before := dumpKV(kv)
		if err := kv.Restore(io.NopCloser(bytes.NewReader(b))); !errors.Is(err, ErrKVMalformed) {
			t.Errorf("restoring %s: %v, want ErrKVMalformed", name, err)
		}
		if got := dumpKV(kv); got != before {
			t.Errorf("failed restore of %s changed the state to %s", name, got)
		}
	}
}

// TestKVConcurrent runs reads and snapshots while commands apply; it is
// meant for the race detector.
func TestKVConcurrent(t *testing.T) {
	kv := NewKV()
	const writes = 300
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				kv.Get([]byte("k-1"))
				if got := kv.Scan([]byte("k-"), 5); len(got) > 5 {
					t.Errorf("Scan returned %d entries, limit 5", len(got))
				}
				// Not snapshotKV: t.Fatal is for the test's goroutine.
				snap, err := kv.Snapshot()
				if err == nil {
					err = snap.Persist(&memSink{})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range writes {
		key := fmt.Appendf(nil, "k-%d", i%20)
		res := applyKVAt(t, kv, uint64(i+1), KVBatch(KVPut(key, fmt.Appendf(nil, "%d", i)), KVDelete(fmt.Appendf(nil, "k-%d", (i+7)%20))))
		if res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	close(stop)
	wg.Wait()
}

// FuzzDecodeKVCommand checks that the decoder refuses what it does not
// accept with an error and without panicking, that what it accepts is the
// one encoding of its command, and that applying any entry changes the
// state only if the whole command applies.
func FuzzDecodeKVCommand(f *testing.F) {
	for _, cmd := range []KVCommand{
		KVBatch(KVPut([]byte("k"), []byte("v"))),
		KVBatch(KVDelete([]byte("a")), KVCompareAndSwap([]byte("b"), 3, []byte("x")), KVPut([]byte("c"), nil)),
	} {
		data, err := cmd.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fuzzer's input must not change: decode a copy.
		work := bytes.Clone(data)
		cmd, err := DecodeKVCommand(work)
		if err != nil {
			if !errors.Is(err, ErrKVMalformed) {
				t.Fatalf("decode error %v does not wrap ErrKVMalformed", err)
			}
		} else {
			// The command owns its bytes.
			for i := range work {
				work[i] ^= 0x5a
			}
			enc, err := cmd.MarshalBinary()
			if err != nil {
				t.Fatalf("decoded command does not encode: %v", err)
			}
			if !bytes.Equal(enc, data) {
				t.Fatalf("decoded command encodes as %x, not as its input %x", enc, data)
			}
		}

		kv := NewKV()
		applyKVAt(t, kv, 3, KVBatch(KVPut([]byte("a"), []byte("1")), KVPut([]byte("b"), []byte("2"))))
		before := dumpKV(kv)
		res := kv.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: data}).(KVResult)
		switch {
		case err != nil:
			if !errors.Is(res.Err, ErrKVMalformed) {
				t.Fatalf("Apply of a malformed command: %v, want ErrKVMalformed", res.Err)
			}
		case res.Err == nil:
			if len(res.Ops) != len(cmd.Ops) {
				t.Fatalf("%d op results for %d ops", len(res.Ops), len(cmd.Ops))
			}
			return
		case !errors.Is(res.Err, ErrKVConflict):
			t.Fatalf("Apply refused a well-formed command with %v", res.Err)
		}
		if got := dumpKV(kv); got != before {
			t.Fatalf("refused command changed the state from %s to %s", before, got)
		}
	})
}

// TestKVReplicated runs a KV group on three nodes over loopback: writes go
// through the leader, reads are linearizable across a leadership transfer,
// every member converges to the same state, and a member restarted from a
// snapshot catches up.
func TestKVReplicated(t *testing.T) {
	const g = 1
	c := &testCluster{t: t, dir: t.TempDir(), fsms: map[string]map[uint64]*kvFSM{}}
	t.Cleanup(c.close)
	var voters []raft.Server
	for range 3 {
		voters = append(voters, c.addNode().voter())
	}
	nodes := c.snapshotNodes()
	kvs := map[*testNode]*KV{}
	for _, n := range nodes {
		kvs[n] = NewKV()
		if _, err := n.node.StartGroup(g, kvs[n], voters); err != nil {
			t.Fatal(err)
		}
	}
	ctx := testContext(t)

	// put writes key=value through the leader. A retry after the
	// leadership moved may write the key twice, which a put allows; the
	// version is that of the write that answered.
	put := func(key, value string) uint64 {
		t.Helper()
		var res KVResult
		c.onLeader(g, func(l *testNode) error {
			var err error
			res, err = l.node.ApplyKV(ctx, g, KVBatch(KVPut([]byte(key), []byte(value))))
			return err
		})
		if len(res.Ops) != 1 || res.Ops[0].Version != res.Index || res.Index == 0 {
			t.Fatalf("put %s: result %+v", key, res)
		}
		return res.Index
	}
	// read reads key linearizably on node n.
	read := func(n *testNode, key string) (string, uint64, bool) {
		t.Helper()
		v, ver, ok, err := n.node.ReadKV(ctx, g, kvs[n], []byte(key))
		if err != nil {
			t.Fatalf("ReadKV(%s) on %s: %v", key, n.id, err)
		}
		return string(v), ver, ok
	}
	// readOnLeader reads key on whichever node leads.
	readOnLeader := func(key string) (v string, ver uint64, ok bool) {
		t.Helper()
		c.onLeader(g, func(l *testNode) error {
			b, version, found, err := l.node.ReadKV(ctx, g, kvs[l], []byte(key))
			v, ver, ok = string(b), version, found
			return err
		})
		return v, ver, ok
	}

	versions := map[string]uint64{}
	var last uint64
	for i := range 20 {
		key := fmt.Sprintf("k/%02d", i)
		versions[key] = put(key, "v"+key)
		if versions[key] <= last {
			t.Errorf("put %s got version %d after %d", key, versions[key], last)
		}
		last = versions[key]
	}
	for key, ver := range versions {
		if v, gotVer, ok := readOnLeader(key); !ok || v != "v"+key || gotVer != ver {
			t.Errorf("ReadKV(%s) = %q, %d, %v; want %q, %d", key, v, gotVer, ok, "v"+key, ver)
		}
	}
	if _, _, ok := readOnLeader("absent"); ok {
		t.Error("ReadKV found an absent key")
	}

	// Followers refuse both, naming the leader.
	l := c.leader(g)
	f := otherThan(nodes, l)
	var nle *NotLeaderError
	_, err := f.node.ApplyKV(ctx, g, KVBatch(KVPut([]byte("x"), nil)))
	if !errors.As(err, &nle) || !errors.Is(err, raft.ErrNotLeader) || nle.Group != g {
		t.Errorf("ApplyKV on a follower: %v, want a *NotLeaderError", err)
	} else if nle.LeaderID != raft.ServerID(l.id) {
		t.Logf("follower %s names leader %q, not %s (the leadership moved?)", f.id, nle.LeaderID, l.id)
	}
	if _, _, _, err := f.node.ReadKV(ctx, g, kvs[f], []byte("k/00")); !errors.As(err, &nle) {
		t.Errorf("ReadKV on a follower: %v, want a *NotLeaderError", err)
	}
	if _, err := l.node.ApplyKV(ctx, 99, KVBatch(KVPut([]byte("x"), nil))); !errors.Is(err, ErrNoGroup) {
		t.Errorf("ApplyKV to an unknown group: %v, want ErrNoGroup", err)
	}
	if _, err := l.node.ApplyKV(ctx, g, KVCommand{}); !errors.Is(err, ErrKVMalformed) {
		t.Errorf("ApplyKV of an empty command: %v, want ErrKVMalformed", err)
	}

	// Compare-and-swap: at the version read, then again at the stale one.
	v00 := versions["k/00"]
	var res KVResult
	c.onLeader(g, func(l *testNode) error {
		res, err = l.node.ApplyKV(ctx, g, KVBatch(KVCompareAndSwap([]byte("k/00"), v00, []byte("swapped"))))
		return err
	})
	if len(res.Ops) != 1 || res.Ops[0] != (KVOpResult{PrevVersion: v00, Version: res.Index}) {
		t.Fatalf("compare-and-swap result %+v", res)
	}
	swapped := res.Index
	var conflict *KVConflictError
	c.onLeader(g, func(l *testNode) error {
		res, err = l.node.ApplyKV(ctx, g, KVBatch(KVPut([]byte("batch/new"), []byte("x")), KVCompareAndSwap([]byte("k/00"), v00, []byte("again"))))
		if errors.As(err, &conflict) {
			return nil
		}
		return err
	})
	if conflict == nil || conflict.Op != 1 || conflict.Expected != v00 || conflict.Actual != swapped || !errors.Is(res.Err, ErrKVConflict) || res.Ops != nil {
		t.Errorf("stale compare-and-swap in a batch: %v, result %+v", conflict, res)
	}
	if _, _, ok := readOnLeader("batch/new"); ok {
		t.Error("a refused batch applied its put")
	}

	// The leadership moves. The new leader's first read must see every
	// command its predecessor applied, the swap included.
	old := c.leader(g)
	target := otherThan(nodes, old)
	if err := transferTo(ctx, c, g, target); err != nil {
		t.Fatal(err)
	}
	if v, ver, ok := read(target, "k/00"); !ok || v != "swapped" || ver != swapped {
		t.Errorf("new leader's first read of k/00: %q, %d, %v; want %q, %d", v, ver, ok, "swapped", swapped)
	}
	if term := raftOf(target, g).CurrentTerm(); kvs[target].fence.barrierTerm.Load() != term {
		t.Errorf("new leader's barrier term %d, want its term %d", kvs[target].fence.barrierTerm.Load(), term)
	}
	waitFor(t, "the old leader to refuse reads", func() error {
		_, _, _, err := old.node.ReadKV(ctx, g, kvs[old], []byte("k/00"))
		if !leadershipMoved(err) {
			return fmt.Errorf("ReadKV on the old leader: %v", err)
		}
		return nil
	})
	for i := range 10 {
		key := fmt.Sprintf("k2/%02d", i)
		versions[key] = put(key, "v"+key)
	}
	c.onLeader(g, func(l *testNode) error {
		res, err = l.node.ApplyKV(ctx, g, KVBatch(
			KVDelete([]byte("k/02")),
			KVPut([]byte("k/03"), []byte("x")),
			KVCompareAndSwap([]byte("k2/04"), versions["k2/04"], []byte("y"))))
		return err
	})
	if len(res.Ops) != 3 || res.Ops[0] != (KVOpResult{versions["k/02"], 0}) || res.Ops[2] != (KVOpResult{versions["k2/04"], res.Index}) {
		t.Errorf("batch result %+v", res)
	}
	for key, want := range map[string]string{"k/02": "", "k/03": "x", "k2/04": "y", "k2/09": "vk2/09", "k/00": "swapped"} {
		v, _, ok := readOnLeader(key)
		if ok != (want != "") || v != want {
			t.Errorf("ReadKV(%s) = %q, %v; want %q", key, v, ok, want)
		}
	}

	// converge waits until every member's state is the leader's, after a
	// barrier on the leader.
	converge := func() {
		t.Helper()
		var want []byte
		var from *testNode
		c.onLeader(g, func(l *testNode) error {
			from = l
			if err := raftOf(l, g).Barrier(waitTimeout).Error(); err != nil {
				return err
			}
			want = snapshotKV(t, kvs[l])
			return nil
		})
		waitFor(t, "every member to reach the leader's state", func() error {
			for _, n := range nodes {
				if got := snapshotKV(t, kvs[n]); !bytes.Equal(got, want) {
					return fmt.Errorf("%s has %s, leader %s has %s", n.id, dumpKV(kvs[n]), from.id, dumpKV(kvs[from]))
				}
			}
			return nil
		})
	}
	converge()

	// A follower restarts from a snapshot (the log behind it is gone, as
	// testRaftConfig keeps 4 trailing entries) into a fresh KV, and
	// catches up with what it missed.
	f = otherThan(nodes, c.leader(g))
	if err := raftOf(f, g).Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if err := f.node.StopGroup(g); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		key := fmt.Sprintf("k3/%02d", i)
		put(key, "v"+key)
	}
	kvs[f] = NewKV()
	r, err := f.node.StartGroup(g, kvs[f], voters)
	if err != nil {
		t.Fatal(err)
	}
	if idx := r.Stats()["last_snapshot_index"]; idx == "0" {
		t.Error("the restarted member has no snapshot")
	}
	converge()
	if v, _, ok := kvs[f].Get([]byte("k/00")); !ok || string(v) != "swapped" {
		t.Errorf("restarted member has k/00 = %q, %v", v, ok)
	}
}

// TestKVSingleVoter reads after every write on a one-voter group: the
// first read of the term sets the barrier term, and every read sees the
// write before it.
// startSingleVoterKV starts a node that leads group 1 alone, over a KV;
// the caller closes the node.
func startSingleVoterKV(t *testing.T) (*testNode, *KV, *raft.Raft) {
	t.Helper()
	n, err := startTestNode(t.TempDir(), "n0", testRaftConfig())
	if err != nil {
		t.Fatal(err)
	}
	kv := NewKV()
	r, err := n.node.StartGroup(1, kv, []raft.Server{n.voter()})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n0 to lead", func() error {
		if r.State() != raft.Leader {
			return errors.New(r.State().String())
		}
		return nil
	})
	return n, kv, r
}

func TestKVSingleVoter(t *testing.T) {
	n, kv, r := startSingleVoterKV(t)
	t.Cleanup(func() { _ = n.close() })
	ctx := testContext(t)
	if kv.fence.barrierTerm.Load() != 0 {
		t.Fatal("barrier term set before any read")
	}
	for i := range 5 {
		key := fmt.Appendf(nil, "k%d", i)
		res, err := n.node.ApplyKV(ctx, 1, KVBatch(KVPut(key, key)))
		if err != nil {
			t.Fatal(err)
		}
		v, ver, ok, err := n.node.ReadKV(ctx, 1, kv, key)
		if err != nil || !ok || !bytes.Equal(v, key) || ver != res.Index {
			t.Fatalf("ReadKV(%s) = %q, %d, %v, %v", key, v, ver, ok, err)
		}
		if got, want := kv.fence.barrierTerm.Load(), r.CurrentTerm(); got != want {
			t.Fatalf("barrier term %d, want %d", got, want)
		}
	}
	// A context that has ended fails the read and the write without
	// asking raft.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, _, err := n.node.ReadKV(done, 1, kv, []byte("k0")); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadKV with a canceled context: %v", err)
	}
	if _, err := n.node.ApplyKV(done, 1, KVBatch(KVPut([]byte("k0"), nil))); !errors.Is(err, context.Canceled) {
		t.Errorf("ApplyKV with a canceled context: %v", err)
	}
	if v, _, _ := kv.Get([]byte("k0")); string(v) != "k0" {
		t.Errorf("k0 = %q after a canceled write", v)
	}
}
