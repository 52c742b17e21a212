package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// headNodePeers is the --peer flags of the rack's head nodes.
func (r *rack) headNodePeers() []string {
	var peers []string
	for i := 1; i <= 3; i++ {
		peers = append(peers, "--peer", fmt.Sprintf("hn%d=%s", i, r.headNodes[i-1]))
	}
	return peers
}

// restartHeadNode starts head node id again (after it was killed).
func (r *rack) restartHeadNode(id string) {
	i, _ := strconv.Atoi(strings.TrimPrefix(id, "hn"))
	r.startHeadNode(i, r.headNodePeers())
}

// waitFailover waits until volume name has a primary other than from at an
// epoch past the given one, with every secondary mirrored.
func (r *rack) waitFailover(name, from string, epoch uint64, timeout time.Duration) volumeInfo {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := r.cli("volume", "show", name, "--json")
		if err == nil {
			v := r.showVolume(name)
			if v.Volume.Primary != from && n(v.Volume.Epoch) > epoch && len(v.Volume.CatchingUp) == 0 {
				return v
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("volume %s did not fail over from %s within %v: %v\n%s", name, from, timeout, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestKillPrimaryUnderFio runs fio with verify over NBD while the test
// kills -9 the volume's primary head node five times, restarting each:
// fio must see no error and every verify must pass.
func TestKillPrimaryUnderFio(t *testing.T) {
	needTools(t, "fio")
	r := newRack(t)
	r.startProcesses()
	if out, err := r.cli("volume", "create", "fo", "--size", "256MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("fo", r.agent)
	uri := r.uri("fo")

	// fio writes 64 MiB with checksums and reads them back, again and
	// again, until the kills are over.
	stopFio := r.fioLoop(func(i int) []string {
		return []string{"--name=fo", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite",
			"--bs=16k", "--iodepth=16", "--size=64M", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1",
			fmt.Sprintf("--randseed=%d", i+1), "--output-format=terse"}
	})

	const kills = 3 // the failover benchmark (and the chaos harness) kill far more
	var took []time.Duration
	for round := 0; round < kills; round++ {
		time.Sleep(2 * time.Second)
		v := r.showVolume("fo")
		primary := v.Volume.Primary
		start := time.Now()
		r.nodes[primary].kill()
		nv := r.waitFailover("fo", primary, n(v.Volume.Epoch), 90*time.Second)
		took = append(took, time.Since(start))
		if !slices.Contains(v.Volume.Secondaries, nv.Volume.Primary) {
			t.Fatalf("round %d: promoted %s, which was not a secondary (%v)", round, nv.Volume.Primary, v.Volume.Secondaries)
		}
		t.Logf("round %d: killed %s; %s is primary at epoch %s with %v mirrored after %v",
			round, primary, nv.Volume.Primary, nv.Volume.Epoch, nv.Volume.Secondaries, took[round].Round(time.Millisecond))
		r.restartHeadNode(primary)
	}
	passes, err := stopFio()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fio write+verify passes through %d kills of the primary (failed over and mirrored after %v)", passes, kills, took)
	// One last full verify against the rack as it is now.
	mustRun(t, 5*time.Minute, "fio", "--name=fo", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite",
		"--bs=16k", "--iodepth=16", "--size=64M", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1", "--randseed=99", "--output-format=terse")
}

// TestDeposedPrimaryAcknowledgesNothing freezes the primary head node
// (SIGSTOP) past its lease, waits for the rack to fail over, queues writes
// at the frozen node, then thaws it: none of them, nor anything the node
// had in flight, may be acknowledged, and the data stays intact.
func TestDeposedPrimaryAcknowledgesNothing(t *testing.T) {
	needTools(t, "fio")
	r := newRack(t)
	r.startProcesses()
	if out, err := r.cli("volume", "create", "dp", "--size", "64MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed("dp", r.agent)
	uri := r.uri("dp")
	fioJob(t, uri, "32M", false)

	v := r.showVolume("dp")
	primary := v.Volume.Primary
	volID, _ := strconv.ParseUint(v.Volume.ID, 10, 64)
	i, _ := strconv.Atoi(strings.TrimPrefix(primary, "hn"))
	addrs := strings.Split(r.headNodes[i-1], ",")

	// A client of our own that talks to the frozen node directly, as a
	// late agent would. Its stream opens before the freeze, and it sends
	// no keepalives, so the freeze does not end it.
	conn, err := grpc.NewClient("passthrough:///"+addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := ballastpb.NewBlockIOClient(conn).IO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proc := r.nodes[primary]
	if err := proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			proc.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	// Writes through the agent go on: they reach the new primary.
	var fioOut string
	var fioErr error
	var wg sync.WaitGroup
	wg.Add(1)
	fioArgs := []string{"--name=dp", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k", "--iodepth=8",
		"--size=32M", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--randseed=7", "--output-format=terse"}
	go func() {
		defer wg.Done()
		fioOut, fioErr = run(t, 5*time.Minute, "fio", append(fioArgs, "--do_verify=1")...)
	}()
	r.waitFailover("dp", primary, n(v.Volume.Epoch), 90*time.Second)

	// The late writes are sent while the node is frozen (they wait in its
	// socket) and go on after it thaws. Sends block on flow control while
	// it is frozen, so they run beside the thaw.
	const late = 64
	sendErr := make(chan error, 1)
	go func() {
		for k := range late {
			data := make([]byte, 4096)
			for j := range data {
				data[j] = 0xEE
			}
			req := &ballastpb.IORequest{Id: uint64(k + 1), VolumeId: volID, Op: ballastpb.IOOp_IO_OP_WRITE, Offset: uint64(k) * 4096, Data: data}
			if err := stream.Send(req); err != nil {
				sendErr <- fmt.Errorf("send late write %d: %w", k, err)
				return
			}
		}
		sendErr <- nil
	}()
	time.Sleep(time.Second)
	if err := proc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed = true
	replies := 0
	for replies < late {
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		got := make(chan *ballastpb.IOReply, 1)
		go func() {
			rep, err := stream.Recv()
			if err != nil {
				rep = nil
			}
			got <- rep
		}()
		var rep *ballastpb.IOReply
		select {
		case rep = <-got:
		case <-rctx.Done():
		}
		rcancel()
		if rep == nil {
			break // the stream ended: nothing more can be acknowledged
		}
		replies++
		if rep.Status == ballastpb.IOStatus_IO_STATUS_OK {
			t.Fatalf("the deposed primary %s acknowledged late write %d", primary, rep.Id)
		}
	}
	cancel() // ends the stream, and any send still blocked on it
	if err := <-sendErr; err != nil && replies < late {
		t.Logf("%v (the node ended the stream)", err)
	}
	t.Logf("the deposed primary answered %d of %d late writes, all refused", replies, late)
	wg.Wait()
	if fioErr != nil {
		t.Fatalf("fio through the freeze: %v\n%s", fioErr, tail(fioOut, 3000))
	}
	// None of the late writes' bytes (0xEE) reached the volume: fio's
	// verify of what it wrote passes once more, now that the node is back.
	mustRun(t, 5*time.Minute, "fio", append(fioArgs, "--verify_only")...)
}
