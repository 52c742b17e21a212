package nvmetcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestBringUpAndIO connects as Linux does, checks what Identify reports,
// and moves data both ways on several queues, with and without digests,
// in-capsule and by R2T.
func TestBringUpAndIO(t *testing.T) {
	for _, dg := range []struct{ hdr, data bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("hdgst=%v,ddgst=%v", dg.hdr, dg.data), func(t *testing.T) {
			tt := startTarget(t, nil)
			h := tt.connect(t, testNQN, HostOptions{HeaderDigest: dg.hdr, DataDigest: dg.data, IOQueues: 4, KATO: 5 * time.Second})
			ctx := ctxT(t)
			if len(h.IO) != 4 {
				t.Fatalf("%d I/O queues, want 4", len(h.IO))
			}
			if h.BlockSize != 4096 || h.Blocks != testDiskSz/4096 || h.MaxTransfer != DefaultMaxTransferBytes {
				t.Fatalf("namespace: block size %d, %d blocks, max transfer %d", h.BlockSize, h.Blocks, h.MaxTransfer)
			}
			var wg sync.WaitGroup
			for qi, q := range h.IO {
				for _, size := range []int{4096, 8192, 12288, 256 << 10, 3 << 20} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						off := uint64(qi)*(2<<20) + uint64(size%(1<<20))
						off -= off % 4096
						if off+uint64(size) > testDiskSz {
							off = testDiskSz - uint64(size)
						}
						data := pattern(byte(qi*7+size), size)
						if err := h.WriteAtQueue(ctx, q, data, off, false); err != nil {
							t.Errorf("queue %d: write %d at %d: %v", q.QID, size, off, err)
							return
						}
						got := make([]byte, size)
						if err := h.ReadAtQueue(ctx, q, got, off); err != nil {
							t.Errorf("queue %d: read %d at %d: %v", q.QID, size, off, err)
							return
						}
						if !bytes.Equal(got, data) {
							t.Errorf("queue %d: read back of %d at %d differs", q.QID, size, off)
						}
					}()
					wg.Wait() // same queue, overlapping ranges across sizes: one at a time
				}
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIdentifyController(t *testing.T) {
	tt := startTarget(t, nil)
	h := tt.connect(t, testNQN, HostOptions{KATO: 5 * time.Second})
	id := h.IdentifyController
	le := binary.LittleEndian
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"CNTLID", uint64(le.Uint16(id[78:])), uint64(h.Cntlid)},
		{"KAS", uint64(le.Uint16(id[320:])), 1},
		{"SQES", uint64(id[512]), 0x66},
		{"CQES", uint64(id[513]), 0x44},
		{"MAXCMD", uint64(le.Uint16(id[514:])), DefaultMaxQueueSize},
		{"NN", uint64(le.Uint32(id[516:])), 1},
		{"ONCS", uint64(le.Uint16(id[520:])), 0x0C},
		{"VWC", uint64(id[525]), 1},
		{"SGLS", uint64(le.Uint32(id[536:])), 1 | 1<<20},
		{"IOCCSZ", uint64(le.Uint32(id[1792:])), (64 + DefaultInCapsuleDataBytes) / 16},
		{"IORCSZ", uint64(le.Uint32(id[1796:])), 1},
		{"ICDOFF", uint64(le.Uint16(id[1800:])), 0},
		{"MSDBD", uint64(id[1803]), 1},
		{"MDTS", uint64(id[77]), 8},
		{"VER", uint64(le.Uint32(id[80:])), 0x10300},
		{"CNTRLTYPE", uint64(id[111]), 1},
		{"CMIC multi-controller", uint64(id[76] & 2), 2},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if sub := string(bytes.TrimRight(id[768:1024], "\x00")); sub != testNQN {
		t.Errorf("SUBNQN %q, want %q", sub, testNQN)
	}
}
