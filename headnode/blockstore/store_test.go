package blockstore

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &ballastpb.LogRecord{Seq: 1, Blocks: []*ballastpb.BlockWrite{{Block: 2, Data: pattern(4096, 3)}}}
	if err := s.Append(1, []*ballastpb.LogRecord{rec}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(1, []*ballastpb.LogRecord{{Seq: 3}}, 0); !errors.Is(err, ErrSeqGap) {
		t.Fatalf("append with a gap: got %v, want ErrSeqGap", err)
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last, _ := s.LastSeq(1); last != 1 {
		t.Fatalf("last seq after reopen: %d", last)
	}
	buf := make([]byte, 3*4096)
	if _, err := s.ReadLocal(1, 1, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[4096:8192], pattern(4096, 3)) || !bytes.Equal(buf[:4096], make([]byte, 4096)) {
		t.Fatal("block data lost across reopen")
	}
	recs, err := s.LogFrom(1, 1, 10, 0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("log after reopen: %v %v", recs, err)
	}
}

// TestRecordsOfANewerBuildAreRefused: a record with a field this build does
// not know is refused, not applied as whatever this build reads in it (the
// journal would drop the field too).
func TestRecordsOfANewerBuildAreRefused(t *testing.T) {
	s := openMemStore(t)
	const vol = 4
	b, err := proto.Marshal(blockRecord(1, 7, 1))
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 99, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	var rec ballastpb.LogRecord
	if err := proto.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(vol, []*ballastpb.LogRecord{&rec}, 0); err == nil || !strings.Contains(err.Error(), "does not know") {
		t.Fatalf("append of a record with an unknown field: %v", err)
	}
	if last, err := s.LastSeq(vol); err != nil || last != 0 {
		t.Fatalf("after the refusal the log ends at %d (%v), want 0", last, err)
	}
	if err := s.Append(vol, []*ballastpb.LogRecord{blockRecord(1, 7, 1)}, 0); err != nil {
		t.Fatalf("the same record without the field: %v", err)
	}
}
