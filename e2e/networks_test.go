package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/headnode"
)

// labPort is every server's port in a namespaced rack (each host has its
// own addresses, so one port serves all).
const labPort = 7400

// labSleds is the number of sleds of a namespaced rack; segments are 2+1.
const labSleds = 3

// newRackInNamespaces lays out a rack in a netLab: head nodes hn1..hn3 at
// 10.77.{1,2}.i, sleds s1..s3 at 10.77.{1,2}.2i, and the agent (with
// every client: fio, nbdinfo, the admin CLI) at 10.77.{1,2}.100, serving
// NBD on its own loopback.
func newRackInNamespaces(t testing.TB) *rack {
	lab := newNetLab(t)
	r := &rack{t: t, dataDir: t.TempDir(), port: labPort, nbdAddr: fmt.Sprintf("127.0.0.1:%d", 10809),
		nodes: map[string]*proc{}, lab: lab}
	for i := 1; i <= 3; i++ {
		lab.addHost(fmt.Sprintf("hn%d", i), i)
		r.headNodes = append(r.headNodes, fmt.Sprintf("%s:%d,%s:%d", labAddr("a", i), labPort, labAddr("b", i), labPort))
	}
	for i := 1; i <= labSleds; i++ {
		lab.addHost(fmt.Sprintf("s%d", i), 20+i)
	}
	lab.addHost("agent", 100)
	return r
}

// TestCutNetworksUnderFio runs fio with verify over NBD while the test
// cuts one network at a time: network A of the primary head node, then its
// network B, then A of one sled and B of another together. Never both
// networks of one host. While each cut holds, a fresh write+verify job
// must complete (I/O goes on over the other network, not merely after the
// heal), and fio's long-running passes must see no error.
func TestCutNetworksUnderFio(t *testing.T) {
	needTools(t, "fio", "nbdinfo")
	r := newRackInNamespaces(t)
	// Small segments and a low flush threshold keep head-node → sled
	// traffic flowing during the cuts.
	r.headNodeFlags = []string{"--data-shards", "2", "--parity-shards", "1", "--segment-size", "4MiB",
		"--flush-threshold", "8MiB", "--flush-interval", "1s"}
	r.startProcesses()
	for i := 1; i <= labSleds; i++ {
		r.startSled(i, "--scrub-rate", "0")
	}
	if out, err := r.cli("volume", "create", "net", "--size", "256MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("net", r.agent)
	uri := r.uri("net")
	r.waitStatus(t, time.Minute, "sleds up", sledsUp(labSleds))
	// Every head node reaches the two others and every sled over both
	// networks, and all three report every group (the directory and the
	// volume groups), each with one leader.
	wantPaths := 3 * (2 + labSleds) * 2
	settled := func(st rackStatusJSON) bool {
		up := 0
		for _, p := range st.Paths {
			if p.Up {
				up++
			}
		}
		members, leaders := map[string]int{}, map[string]int{}
		for _, g := range st.Groups {
			members[g.Group]++
			if g.State == "Leader" {
				leaders[g.Group]++
			}
		}
		for g, m := range members {
			if m != 3 || leaders[g] != 1 {
				return false
			}
		}
		return up == wantPaths && len(st.Paths) == wantPaths && len(members) == 1+headnode.DefaultVolumeGroups
	}
	r.waitStatus(t, time.Minute, fmt.Sprintf("%d network paths up and %d groups led", wantPaths, 1+headnode.DefaultVolumeGroups), settled)

	fioArgs := func(size string, seed int) []string {
		return []string{"--name=net", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=16k", "--iodepth=16",
			"--size=" + size, "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1",
			fmt.Sprintf("--randseed=%d", seed), "--output-format=terse"}
	}
	// The background writer: passes over the first 64 MiB until the cuts
	// are over. Cut probes below use the next 16 MiB, so the two never
	// verify each other's writes.
	stopFio := r.fioLoop(func(i int) []string { return fioArgs("64M", i+1) })

	// underCut cuts the given (host, network) pairs, checks that I/O goes
	// on while they are cut, and heals them.
	underCut := func(what string, cuts [][2]string) {
		t.Helper()
		time.Sleep(3 * time.Second)
		for _, c := range cuts {
			r.lab.cut(c[0], c[1])
		}
		start := time.Now()
		// The rack notices: some head node reports each cut path down.
		r.waitStatus(t, 30*time.Second, what+" reported down", func(st rackStatusJSON) bool {
			for _, c := range cuts {
				addr := fmt.Sprintf("%s:%d", labAddr(c[1], r.lab.index[c[0]]), labPort)
				found := false
				for _, p := range st.Paths {
					found = found || (p.To == c[0] && p.Address == addr && !p.Up)
				}
				if !found {
					return false
				}
			}
			return true
		})
		args := append(fioArgs("16M", int(start.UnixNano()%1000)), "--offset=64M")
		out, err := r.runClient(90*time.Second, "fio", args...)
		took := time.Since(start)
		// Hold the cut a while past the probe so the paths' state settles
		// and the background writer runs on the other network too.
		time.Sleep(5 * time.Second)
		for _, c := range cuts {
			r.lab.heal(c[0], c[1])
		}
		if err != nil {
			t.Fatalf("%s: write+verify while cut: %v\n%s", what, err, tail(out, 3000))
		}
		t.Logf("%s: 16 MiB written and verified while cut, done %v after the cut", what, took.Round(time.Millisecond))
	}

	primary := r.showVolume("net").Volume.Primary
	underCut("network A of primary "+primary, [][2]string{{primary, "a"}})
	primary = r.showVolume("net").Volume.Primary
	underCut("network B of primary "+primary, [][2]string{{primary, "b"}})
	underCut("network A of s1 and B of s2", [][2]string{{"s1", "a"}, {"s2", "b"}})

	passes, err := stopFio()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fio write+verify passes through the cuts", passes)
	v := r.showVolume("net")
	t.Logf("volume after the cuts: primary %s, epoch %s", v.Volume.Primary, v.Volume.Epoch)
	// Everything still reads back: one last full write+verify.
	if out, err := r.runClient(5*time.Minute, "fio", fioArgs("64M", 99)...); err != nil {
		t.Fatalf("final verify: %v\n%s", err, tail(out, 3000))
	}
}
