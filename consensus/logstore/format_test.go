package logstore

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestLogValueRoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 890123456, time.UTC)
	cases := []raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("hello"), Extensions: []byte("ext"), AppendedAt: at},
		{Index: 2, Term: 1, Type: raft.LogNoop},
		{Index: 3, Term: 7, Type: raft.LogConfiguration, Data: []byte{}, Extensions: []byte{}},
		{Index: 4, Term: 1<<64 - 1, Type: raft.LogBarrier, Data: nil, Extensions: []byte{0}},
		{Index: 1<<64 - 1, Term: 2, Type: raft.LogType(200), Data: bytes.Repeat([]byte{0xff}, 70000)},
		{Index: 5, Term: 3, Type: raft.LogCommand, AppendedAt: time.Unix(-12345, 1).UTC()},
		{Index: 6, Term: 3, Type: raft.LogCommand, AppendedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)},
	}
	for _, want := range cases {
		v := appendLogValue(nil, &want)
		var got raft.Log
		if err := decodeLogValue(want.Index, v, &got); err != nil {
			t.Fatalf("decode %+v: %v", want, err)
		}
		if !got.AppendedAt.Equal(want.AppendedAt) {
			t.Errorf("index %d: AppendedAt %v, want %v", want.Index, got.AppendedAt, want.AppendedAt)
		}
		got.AppendedAt, want.AppendedAt = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("index %d: round trip gave %+v, want %+v", want.Index, got, want)
		}
		if (got.Data == nil) != (want.Data == nil) || (got.Extensions == nil) != (want.Extensions == nil) {
			t.Errorf("index %d: nil-ness not kept", want.Index)
		}
	}
}

// A local time reads back as the same instant, in UTC.
func TestLogValueTimeZone(t *testing.T) {
	loc := time.FixedZone("X", 3600)
	want := time.Date(2025, 1, 2, 3, 4, 5, 6, loc)
	var got raft.Log
	if err := decodeLogValue(1, appendLogValue(nil, &raft.Log{Index: 1, AppendedAt: want}), &got); err != nil {
		t.Fatal(err)
	}
	if !got.AppendedAt.Equal(want) || got.AppendedAt.Location() != time.UTC {
		t.Fatalf("got %v, want %v in UTC", got.AppendedAt, want)
	}
}

// The byte layout is pinned: doc.go documents it and stores on disk hold it.
func TestLogValueGolden(t *testing.T) {
	l := raft.Log{
		Index: 9, Term: 300, Type: raft.LogConfiguration,
		Data: []byte("ab"), Extensions: []byte{},
		AppendedAt: time.Unix(1, 5).UTC(),
	}
	want := []byte{
		0x01,       // version
		0x05,       // LogConfiguration
		0x07,       // flags: AppendedAt, Data, Extensions
		0xac, 0x02, // uvarint 300
		0x02, 0x05, // varint 1 (zig-zag), uvarint 5
		0x02, 'a', 'b', // Data
		0x00, // Extensions: empty
	}
	if got := appendLogValue(nil, &l); !bytes.Equal(got, want) {
		t.Fatalf("encoding %x, want %x", got, want)
	}
	if got := logKey(0x0102, 0x0304); !bytes.Equal(got, []byte{1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4}) {
		t.Fatalf("log key %x", got)
	}
	if got := stableKey(0x0102, []byte("k")); !bytes.Equal(got, []byte{2, 0, 0, 0, 0, 0, 0, 1, 2, 'k'}) {
		t.Fatalf("stable key %x", got)
	}
}

func TestLogValueCorrupt(t *testing.T) {
	good := appendLogValue(nil, &raft.Log{Index: 1, Term: 2, Data: []byte("data"), Extensions: []byte("x"), AppendedAt: time.Unix(5, 6)})
	cases := map[string][]byte{
		"empty":           {},
		"short header":    {1, 0},
		"version 0":       append([]byte{0}, good[1:]...),
		"version 2":       append([]byte{2}, good[1:]...),
		"unknown flag":    {1, 0, 0x08, 1},
		"no term":         {1, 0, 0},
		"bad term varint": {1, 0, 0, 0x80},
		"truncated":       good[:len(good)-1],
		"trailing byte":   append(append([]byte{}, good...), 0),
		"data too long":   {1, 0, flagData, 1, 5, 'a'},
		"nanos too big":   {1, 0, flagAppendedAt, 1, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03},
		"overlong varint": {1, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
	}
	for name, v := range cases {
		var l raft.Log
		if err := decodeLogValue(1, v, &l); err == nil {
			t.Errorf("%s: %x decoded without error to %+v", name, v, l)
		}
	}
}

// FuzzDecodeLogValue checks that no input panics the decoder and that what
// decodes re-encodes to the same bytes (the encoding is canonical).
func FuzzDecodeLogValue(f *testing.F) {
	f.Add(appendLogValue(nil, &raft.Log{Index: 1, Term: 2, Data: []byte("data"), Extensions: []byte("x"), AppendedAt: time.Unix(5, 6)}))
	f.Add(appendLogValue(nil, &raft.Log{Index: 1, Term: 2}))
	f.Add([]byte{1, 0, 7, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		var l raft.Log
		if err := decodeLogValue(1, v, &l); err != nil {
			return
		}
		if got := appendLogValue(nil, &l); !bytes.Equal(got, v) {
			// Varints may be non-minimal in the input; that decodes but
			// re-encodes shorter. Anything else is a bug.
			var again raft.Log
			if err := decodeLogValue(1, got, &again); err != nil || !reflect.DeepEqual(again, l) {
				t.Fatalf("%x decoded to %+v, which re-encodes to %x", v, l, got)
			}
		}
	})
}
