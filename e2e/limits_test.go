package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/internal/nbdclient"
	"github.com/ballast-storage/ballast/volume"
)

// TestAgentConnectionLimit serves a volume from an agent that takes two
// NBD connections: the project's client holds both, qemu-io's is refused
// with the reason while they keep working, and once one leaves qemu-io
// gets in.
func TestAgentConnectionLimit(t *testing.T) {
	needTools(t, "qemu-io")
	r, c := startInProcessRack(t, volume.LeaseConfig{})
	createVolume(t, c, "lim", 64<<20)
	a, err := attach.StartAgent(attach.AgentConfig{
		HeadNodes: hnsOf(r), NBDListen: "127.0.0.1:0", Logger: r.logger, MaxNBDConnections: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr := a.NBDAddr().String()
	var conns []*nbdclient.Conn
	for range 2 {
		nc, err := nbdclient.Dial(addr, "lim", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns = append(conns, nc)
	}

	qemuIO := func(cmds ...string) (string, error) {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "qemu-io", append(args, "nbd://"+addr+"/lim")...).CombinedOutput()
		return string(out), err
	}
	out, err := qemuIO("write -P 0x5a 0 64k")
	if err == nil || !strings.Contains(out, "too many NBD connections") {
		t.Fatalf("qemu-io over the limit: err %v, output:\n%s", err, out)
	}
	if s := a.NBDStats(); s.Refused != 1 || s.Connections != 2 {
		t.Errorf("agent NBD stats %+v, want 2 connections and 1 refused", s)
	}

	data := bytes.Repeat([]byte{0xa5}, 64<<10)
	if err := conns[0].WriteAt(data, 0, true); err != nil {
		t.Fatalf("write on a connection within the limit: %v", err)
	}
	got := make([]byte, len(data))
	if err := conns[1].ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back on the other connection: %v", err)
	}

	conns[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for a.NBDStats().Connections != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection still counts: %+v", a.NBDStats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if out, err := qemuIO("read -P 0xa5 0 64k"); err != nil {
		t.Fatalf("qemu-io with a slot free: %v\n%s", err, out)
	}
}

func hnsOf(r *inProcessRack) [][]string {
	var hns [][]string
	for _, p := range r.peers {
		hns = append(hns, p.Addresses)
	}
	return hns
}
