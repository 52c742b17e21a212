package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/volume"
)

// TestInProcessFailover stops the primary head node of a volume three
// times while writers keep writing: no write fails, and every block reads
// back as the last write acknowledged to it. Each stopped node comes back
// before the next stop, once the volume's new secondary holds a full copy.
func TestInProcessFailover(t *testing.T) {
	r, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	const size = 8 << 20
	createVolume(t, c, "v", size)
	ctx := context.Background()
	vol, err := c.OpenVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)

	// Each writer owns a region and writes its blocks in turn, so the
	// last acknowledged write of a block is known exactly.
	const writers, blocksPerWriter = 8, 64
	var mu sync.Mutex
	acked := map[uint64]uint64{} // block -> sequence number written
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes sync.Map
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := uint64(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				block := uint64(w*blocksPerWriter) + i%blocksPerWriter
				binary.LittleEndian.PutUint64(buf, block)
				binary.LittleEndian.PutUint64(buf[8:], i)
				if err := dev.WriteAt(ctx, buf, block*4096, false); err != nil {
					t.Errorf("writer %d: write of block %d: %v", w, block, err)
					return
				}
				mu.Lock()
				acked[block] = i
				mu.Unlock()
				writes.Store(w, i)
			}
		}()
	}

	for round := 0; round < 3; round++ {
		time.Sleep(time.Second)
		info, err := c.Lookup(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		old := info.Volume
		t.Logf("round %d: stopping primary %s (epoch %d, secondaries %v)", round, old.Primary, old.Epoch, old.Secondaries)
		r.stop(old.Primary)
		// Failed over and mirrored to a new secondary, writes going on.
		deadline := time.Now().Add(60 * time.Second)
		for {
			info, err = c.Lookup(ctx, "v")
			if err == nil && info.Volume.Epoch > old.Epoch && len(info.Volume.CatchingUp) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no failover of volume v: %v %v", info, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		nv := info.Volume
		if nv.Primary == old.Primary || !slices.Contains(old.Secondaries, nv.Primary) || slices.Contains(nv.Secondaries, old.Primary) {
			t.Fatalf("failover from %v to %v", old, nv)
		}
		t.Logf("round %d: primary %s at epoch %d, secondaries %v", round, nv.Primary, nv.Epoch, nv.Secondaries)
		r.start(old.Primary)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	got := make([]byte, 4096)
	for block, seq := range acked {
		if err := dev.ReadAt(ctx, got, block*4096); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 4096)
		binary.LittleEndian.PutUint64(want, block)
		binary.LittleEndian.PutUint64(want[8:], seq)
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d holds write %d, want the last acknowledged %d",
				block, binary.LittleEndian.Uint64(got[8:]), seq)
		}
	}
	n := 0
	writes.Range(func(_, v any) bool { n += int(v.(uint64)); return true })
	t.Logf("%d writes through 3 failovers", n)
}
