package e2e

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/proto/ballastpb"
	"github.com/ballast-storage/ballast/volume"
)

// TestInProcessEmptiedSecondary is an operator replacing a secondary's
// disk: data written and acknowledged, the secondary stopped, its data
// directory emptied, the node started again, then the primary stopped.
// The emptied node must not be promoted (it holds nothing), and once the
// primary is back and has mirrored the volume to it, it is promoted on
// the next failover with every acknowledged byte.
func TestInProcessEmptiedSecondary(t *testing.T) {
	r, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	const size = 4 << 20
	createVolume(t, c, "v", size)
	ctx := context.Background()
	vol, err := c.OpenVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)
	pattern := func(off int) []byte {
		b := make([]byte, 64<<10)
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], uint64(off+i)^0x5ba11a57)
		}
		return b
	}
	for off := 0; off < size; off += 64 << 10 {
		if err := dev.WriteAt(ctx, pattern(off), uint64(off), false); err != nil {
			t.Fatal(err)
		}
	}
	// wrongBytes reads the volume back and counts the bytes that are not
	// what was acknowledged.
	wrongBytes := func() int {
		t.Helper()
		wrong := 0
		got := make([]byte, 64<<10)
		for off := 0; off < size; off += len(got) {
			if err := dev.ReadAt(ctx, got, uint64(off)); err != nil {
				t.Fatal(err)
			}
			want := pattern(off)
			for i := range got {
				if got[i] != want[i] {
					wrong++
				}
			}
		}
		return wrong
	}

	info, err := c.Lookup(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	primary, secondary, epoch := info.Volume.Primary, info.Volume.Secondaries[0], info.Volume.Epoch
	t.Logf("primary %s, secondary %s, epoch %d", primary, secondary, epoch)

	r.stop(secondary)
	if err := os.RemoveAll(filepath.Join(r.dir, secondary)); err != nil {
		t.Fatal(err)
	}
	r.start(secondary)
	// As an operator would, wait until the rack has taken the node back
	// (its incarnation registered, its vote counted again); no write
	// reaches the volume meanwhile.
	waitRejoined(t, r, secondary)
	r.stop(primary)

	// lookup asks with a bound: with no primary the client would retry.
	lookup := func() (*ballastpb.GetVolumeResponse, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return c.Lookup(ctx, "v")
	}
	// Two leases and more: a failover would have happened by now.
	deadline := time.Now().Add(2*volume.DefaultLeaseConfig.Duration + 4*time.Second)
	for time.Now().Before(deadline) {
		info, err := lookup()
		if err == nil && info.Volume.Primary == secondary {
			t.Fatalf("the emptied node %s was promoted at epoch %d; %d of %d bytes read back wrong",
				secondary, info.Volume.Epoch, wrongBytes(), size)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The primary returns: it serves again, and a write mirrors the
	// volume to the emptied node.
	r.start(primary)
	if err := dev.WriteAt(ctx, pattern(0), 0, false); err != nil {
		t.Fatal(err)
	}
	if n := wrongBytes(); n != 0 {
		t.Fatalf("%d of %d bytes read back wrong from the returned primary", n, size)
	}
	// Once mirrored, the node may be promoted, and holds everything.
	r.stop(primary)
	deadline = time.Now().Add(60 * time.Second)
	for {
		info, err := lookup()
		if err == nil && info.Volume.Primary == secondary {
			t.Logf("promoted %s at epoch %d", secondary, info.Volume.Epoch)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirrored node was never promoted: %v %v", info, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := wrongBytes(); n != 0 {
		t.Fatalf("%d of %d bytes read back wrong from the promoted node", n, size)
	}
}

// waitRejoined waits until head node id, started over an emptied data
// directory, is taken back by every group.
func waitRejoined(t *testing.T, r *inProcessRack, id string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r.mu.Lock()
		n := r.nodes[id]
		r.mu.Unlock()
		if n != nil && n.Rejoined() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not taken back by every group", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInProcessEmptiedPrimary: the primary's data directory is emptied and
// the node started again at once, well within its lease. It must not
// serve the volume it no longer holds: its renewals are refused, the
// volume fails over to the secondary, and every acknowledged byte reads
// back.
func TestInProcessEmptiedPrimary(t *testing.T) {
	r, c := startInProcessRack(t, volume.DefaultLeaseConfig)
	const size = 1 << 20
	createVolume(t, c, "v", size)
	ctx := context.Background()
	vol, err := c.OpenVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	dev := attach.NewDevice(vol)
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	if err := dev.WriteAt(ctx, want, 0, false); err != nil {
		t.Fatal(err)
	}
	info, err := c.Lookup(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	primary, secondary := info.Volume.Primary, info.Volume.Secondaries[0]
	r.stop(primary)
	if err := os.RemoveAll(filepath.Join(r.dir, primary)); err != nil {
		t.Fatal(err)
	}
	r.start(primary)

	// A write right away, while the record still names the emptied node
	// primary: it must not serve it, nor open a session that mirrors its
	// empty log over the secondary's copy.
	last := make([]byte, 4096)
	for i := range last {
		last[i] = 0xee
	}
	if err := dev.WriteAt(ctx, last, size-4096, false); err != nil {
		t.Fatal(err)
	}
	copy(want[size-4096:], last)

	got := make([]byte, size)
	if err := dev.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	wrong := 0
	for i := range got {
		if got[i] != want[i] {
			wrong++
		}
	}
	info, err = c.Lookup(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if wrong != 0 {
		t.Fatalf("%d of %d bytes read back wrong (primary %s at epoch %d)", wrong, size, info.Volume.Primary, info.Volume.Epoch)
	}
	if info.Volume.Primary != secondary {
		t.Fatalf("primary %s at epoch %d, want the secondary %s", info.Volume.Primary, info.Volume.Epoch, secondary)
	}
}
