package journal

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// The replay tests write batches through the journal, damage the file as a
// crash or a bad disk could, reopen it and check where replay stopped and
// why.

// batchAt is where a batch starts, from the location of its first block.
func batchAt(loc Location) int64 { return loc.Offset - BlockSize }

// fileOf opens the journal file of fs directly, to damage it.
func fileOf(t *testing.T, fs memFS) interface {
	ReadAt([]byte, int64) (int, error)
	WriteAt([]byte, int64) (int, error)
	Close() error
} {
	t.Helper()
	f, err := fs.FS.OpenFile(testPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// rewriteHeader decodes the header at off, lets edit change its fixed
// fields and entry table, and writes it back with its CRC recomputed (so
// that only what edit did is wrong with it). The header must fit in its
// first block.
func rewriteHeader(t *testing.T, fs memFS, off int64, edit func(h *header, table []byte)) {
	t.Helper()
	f := fileOf(t, fs)
	lead := make([]byte, BlockSize)
	if _, err := f.ReadAt(lead, off); err != nil {
		t.Fatal(err)
	}
	h, err := decodeFixedHeader(lead, off, 1<<30)
	if err != nil || h.hdrLen > BlockSize {
		t.Fatalf("header at %d: %+v, %v", off, h, err)
	}
	edit(&h, lead[fixedHeaderLen:h.hdrLen])
	putFixedHeader(lead, &h)
	putUint32(lead[12:], headerCRC(lead[:min(h.hdrLen, BlockSize)]))
	if _, err := f.WriteAt(lead, off); err != nil {
		t.Fatal(err)
	}
}

func TestReplayStops(t *testing.T) {
	type damage func(t *testing.T, fs memFS, batches [][]Location)
	third := func(b [][]Location) int64 { return batchAt(b[2][0]) }
	for _, tc := range []struct {
		name   string
		damage damage
		reason string // in the replay's end
	}{{
		name: "torn header",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			// Batch 3's header spans three sectors (its metadata is
			// long); a power loss kept only the first.
			f := fileOf(t, fs)
			f.WriteAt(make([]byte, BlockSize-512), third(b)+512)
		},
		reason: "CRC",
	}, {
		name: "bad block CRC",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			f := fileOf(t, fs)
			f.WriteAt([]byte{0xee}, b[2][1].Offset+4000)
		},
		reason: "block 1: CRC",
	}, {
		name: "broken chain",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.prevCRC ^= 1 })
		},
		reason: "chain CRC",
	}, {
		name: "LSN gap",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.lsn++ })
		},
		reason: "header has LSN 4",
	}, {
		name: "older generation",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.gen-- })
		},
		reason: "generation 0 after 1",
	}, {
		name: "future generation",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.gen = 99 })
		},
		reason: "generation 99",
	}, {
		name: "bad version",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			f := fileOf(t, fs)
			f.WriteAt([]byte{2}, third(b)+8)
		},
		reason: "version 2",
	}, {
		name: "zeros",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			f := fileOf(t, fs)
			f.WriteAt(make([]byte, 3*BlockSize), third(b))
		},
		reason: "bad magic",
	}, {
		name: "header elsewhere",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.offset += BlockSize })
		},
		reason: "says it is at",
	}, {
		name: "header length past the limit",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.hdrLen = 0xffffffff })
		},
		reason: "length 4294967295",
	}, {
		name: "header length past the zone",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.hdrLen = 1 << 20 })
		},
		reason: "do not fit",
	}, {
		name: "too many blocks",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.blocks = 1 << 31 })
		},
		reason: "do not fit",
	}, {
		name: "too many entries",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(h *header, _ []byte) { h.entries = 1 << 31 })
		},
		reason: "entries in",
	}, {
		name: "metadata length past the header",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(_ *header, table []byte) {
				binary.LittleEndian.PutUint32(table, 60000)
			})
		},
		reason: "metadata bytes",
	}, {
		name: "block counts disagree",
		damage: func(t *testing.T, fs memFS, b [][]Location) {
			rewriteHeader(t, fs, third(b), func(_ *header, table []byte) {
				binary.LittleEndian.PutUint32(table[4:], 1)
			})
		},
		reason: "trailing bytes",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newMemFS(1)
			j, _ := mustOpen(t, smallOpts(fs, 4))
			var batches [][]Location
			for i := range 5 {
				meta := "batch"
				if i == 2 {
					meta = strings.Repeat("long ", 300) // a header of three sectors
				}
				_, locs := appendWait(t, j, entryOf(meta, uint64(10*i), uint64(10*i+1)))
				batches = append(batches, locs[0])
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, fs, batches)

			j, got := mustOpen(t, smallOpts(fs, 4))
			if len(got) != 2 || got[0].lsn != 1 || got[1].lsn != 2 {
				t.Fatalf("replayed %v, want batches 1 and 2", got)
			}
			if end := j.mu.replayEnd; end == nil || !strings.Contains(end.Error(), tc.reason) {
				t.Fatalf("replay ended with %v, want %q", end, tc.reason)
			}
			// The journal goes on from batch 2: the new batch 3 and
			// nothing of the old 4 and 5 replay next time.
			_, locs := appendWait(t, j, entryOf("new 3", 99))
			if locs[0][0].LSN != 3 || batchAt(locs[0][0]) != third(batches) {
				t.Fatalf("new batch 3 at %+v", locs[0][0])
			}
			j.Close()
			j, got = mustOpen(t, smallOpts(fs, 4))
			defer j.Close()
			if len(got) != 3 || string(got[2].meta) != "new 3" {
				t.Fatalf("after the new batch 3, replayed %v", got)
			}
		})
	}
}

// A zone reused in a later lap still holds the batches of the earlier one
// after the new ones: replay stops at the first of them.
func TestReplayStopsAtStaleLap(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 2))
	// Four 16 KiB batches per zone: 1-4 in zone 0, 5-8 in zone 1.
	for i := range 8 {
		appendWait(t, j, entryOf("lap 1", uint64(3*i), uint64(3*i+1), uint64(3*i+2)))
	}
	if err := j.Release(5); err != nil {
		t.Fatal(err)
	}
	_, locs := appendWait(t, j, entryOf("lap 2", 100, 101, 102))
	if locs[0][0].LSN != 9 || batchAt(locs[0][0]) != superblockArea {
		t.Fatalf("batch 9 at %+v, not at zone 0's start", locs[0][0])
	}
	j.Close()
	j, got := mustOpen(t, smallOpts(fs, 2))
	defer j.Close()
	var lsns []uint64
	for _, r := range got {
		lsns = append(lsns, r.lsn)
	}
	if len(lsns) != 5 || lsns[0] != 5 || lsns[4] != 9 {
		t.Fatalf("replayed batches %v, want 5 to 9", lsns)
	}
	// Batch 2 of lap 1 is intact after batch 9.
	if end := j.mu.replayEnd; end == nil || !strings.Contains(end.Error(), "header has LSN 2") {
		t.Fatalf("replay ended with %v", end)
	}
}

// A batch that does not fit in the rest of its zone goes to the next,
// behind a zone-end marker; without the marker, replay does not look
// there.
func TestReplayZoneEndMarker(t *testing.T) {
	for _, lose := range []bool{false, true} {
		fs := newMemFS(1)
		j, _ := mustOpen(t, smallOpts(fs, 3))
		// Three 16 KiB batches and one of 8 KiB leave 8 KiB in zone 0;
		// the next 16 KiB batch goes to zone 1.
		for i := range 3 {
			appendWait(t, j, entryOf("", uint64(3*i), uint64(3*i+1), uint64(3*i+2)))
		}
		appendWait(t, j, entryOf("", 50))
		_, locs := appendWait(t, j, entryOf("next zone", 60, 61, 62))
		markerAt := int64(superblockArea + 56<<10)
		if batchAt(locs[0][0]) != superblockArea+64<<10 {
			t.Fatalf("batch 5 at %d", batchAt(locs[0][0]))
		}
		j.Close()
		if lose {
			f := fileOf(t, fs)
			f.WriteAt(make([]byte, BlockSize), markerAt)
		}
		j, got := mustOpen(t, smallOpts(fs, 3))
		last := got[len(got)-1]
		switch {
		case !lose && (last.lsn != 5 || string(last.meta) != "next zone"):
			t.Fatalf("replay through the marker ended at %v (%v)", last, j.mu.replayEnd)
		case lose && last.lsn != 4:
			t.Fatalf("replay without the marker ended at %v", last)
		}
		j.Close()
	}
}

// After a crash that lost batch k but kept k+1, a new batch k written
// with the same content and size must not make the old k+1 its successor.
func TestReplayNoResurrection(t *testing.T) {
	fs := newMemFS(1)
	j, _ := mustOpen(t, smallOpts(fs, 4))
	var batches [][]Location
	for i := range 5 {
		_, locs := appendWait(t, j, entryOf("same", uint64(i)))
		batches = append(batches, locs[0])
	}
	j.Close()
	// Batch 4 torn; batch 5 intact.
	f := fileOf(t, fs)
	f.WriteAt([]byte{0}, batchAt(batches[3][0])+12)

	j, got := mustOpen(t, smallOpts(fs, 4))
	if len(got) != 3 {
		t.Fatalf("replayed %v", got)
	}
	// The same entry again: the same batch 4 but for its generation.
	_, locs := appendWait(t, j, entryOf("same", 3))
	if locs[0][0] != batches[3][0] {
		t.Fatalf("new batch 4 at %+v, old at %+v", locs[0][0], batches[3][0])
	}
	j.Close()
	j, got = mustOpen(t, smallOpts(fs, 4))
	defer j.Close()
	if len(got) != 4 {
		t.Fatalf("replayed %v: the old batch 5 came back", got)
	}
}
