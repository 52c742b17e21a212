package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/ballast-storage/ballast/sled"
)

// TestOfflineSledsByRecordedID: --sled-data finds each sled by the id its
// metadata records, refuses an id that disagrees or repeats, and reads a
// shard only from the sled a segment names.
func TestOfflineSledsByRecordedID(t *testing.T) {
	dir := t.TempDir()
	s, err := sled.Start(sled.Config{ID: "s9", DataDir: dir, Devices: 1, ListenAddresses: []string{"127.0.0.1:0"},
		ScrubBytesPerSecond: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("ballast!"), 1024)
	if _, err := s.Store().Put(sled.ShardID{Volume: 4, Segment: 2<<32 | 1, Index: 3}, 2, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	sleds, err := openOfflineSleds([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	got, h, err := sleds.ReadShard("s9", 4, 2<<32|1, 3, 8, 16)
	if err != nil || !bytes.Equal(got, data[8:24]) {
		t.Fatalf("read: %v", err)
	}
	if h.Volume != 4 || h.Segment != 2<<32|1 || h.Index != 3 || h.Epoch != 2 {
		t.Fatalf("header %+v", h)
	}
	if _, _, err := sleds.ReadShard("s8", 4, 2<<32|1, 3, 0, 16); err == nil || !strings.Contains(err.Error(), "--sled-data") {
		t.Fatalf("read from a sled not given: %v", err)
	}
	if _, err := openOfflineSleds([]string{"s9=" + dir}); err != nil {
		t.Fatalf("the recorded id given: %v", err)
	}
	if _, err := openOfflineSleds([]string{"s8=" + dir}); err == nil {
		t.Fatal("an id the sled's metadata contradicts was taken")
	}
	if _, err := openOfflineSleds([]string{dir, dir}); err == nil {
		t.Fatal("a sled given twice was taken")
	}
}
