package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestMoveVolumeUnderFio moves a volume's record between volume groups,
// back and forth, while fio writes and verifies it over NBD: every move
// is one transaction across three groups, and I/O sees latency at most,
// never an error; the primary and epoch stay (nothing failed over).
func TestMoveVolumeUnderFio(t *testing.T) {
	needTools(t, "fio")
	r := newRack(t)
	r.startProcesses()
	if out, err := r.cli("volume", "create", "mv", "--size", "128MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("mv", r.agent)
	uri := r.uri("mv")
	before := r.showVolume("mv")

	stopFio := r.fioLoop(func(i int) []string {
		return []string{"--name=mv", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite",
			"--bs=16k", "--iodepth=16", "--size=32M", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1",
			fmt.Sprintf("--randseed=%d", i+1), "--output-format=terse"}
	})
	groups := []string{"3", "7", before.Volume.Group, "12", "3", before.Volume.Group}
	for _, g := range groups {
		time.Sleep(time.Second)
		start := time.Now()
		if out, err := r.cli("volume", "move", "mv", "--group", g); err != nil {
			t.Fatalf("move to group %s: %v\n%s", g, err, out)
		}
		v := r.showVolume("mv")
		if v.Volume.Group != g {
			t.Fatalf("after moving to group %s, volume show says group %s", g, v.Volume.Group)
		}
		t.Logf("moved to group %s in %v", g, time.Since(start).Round(time.Millisecond))
	}
	// A few lease periods in the last group: its leader must see the
	// primary's renewals, or it fails the volume over.
	time.Sleep(8 * time.Second)
	passes, err := stopFio()
	if err != nil {
		t.Fatal(err)
	}
	after := r.showVolume("mv")
	if after.Volume.Primary != before.Volume.Primary || after.Volume.Epoch != before.Volume.Epoch {
		t.Fatalf("the moves failed the volume over: primary %s epoch %s, was %s epoch %s",
			after.Volume.Primary, after.Volume.Epoch, before.Volume.Primary, before.Volume.Epoch)
	}
	t.Logf("%d fio write+verify passes through %d moves", passes, len(groups))
	if out, err := r.cli("volume", "move", "mv", "--group", after.Volume.Group); err == nil {
		t.Fatalf("a move to the group the volume is in succeeded: %s", out)
	}
}
