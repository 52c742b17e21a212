package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// resendStatusJSON is the part of `ballast rack status --json` this test
// reads: the paths, and the head nodes' count of writes received again
// and found applied (nil if the field is missing).
type resendStatusJSON struct {
	rackStatusJSON
	ResentWrites         *string  `json:"resentWrites"`
	UnreachableHeadNodes []string `json:"unreachableHeadNodes"`
}

// resendStatus asks the rack for its status; unlike r.status it returns
// errors, which are expected while a network is cut.
func (r *rack) resendStatus() (resendStatusJSON, error) {
	var st resendStatusJSON
	out, err := r.cli("rack", "status", "--json")
	if err != nil {
		return st, fmt.Errorf("rack status: %w: %s", err, tail(out, 500))
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("rack status: %w: %s", err, tail(out, 500))
	}
	if st.ResentWrites == nil {
		return st, fmt.Errorf("rack status has no resentWrites: %s", tail(out, 500))
	}
	return st, nil
}

// resentWrites returns the count summed over every head node, or ok false
// while one of them does not answer (its count would be missing).
func (st resendStatusJSON) resentWrites() (count uint64, ok bool) {
	v, err := strconv.ParseUint(*st.ResentWrites, 10, 64)
	return v, err == nil && len(st.UnreachableHeadNodes) == 0
}

// TestResendAfterCutUnderFio runs fio (4k random writes at queue depth 32,
// each pass verified) over NBD and cuts the network that the agent's block
// stream to the primary head node goes over. Writes the primary had
// received when the cable went are applied, but their answers are lost:
// the agent gives up on the stream, opens one over the other network and
// sends them again under the same writer and op. The head nodes must
// recognise those as applied (ResentWrites, in rack status), and fio must
// see no error and verify every block. The count is 0 under writes before
// the first cut, and a cut adds at most one per write in flight: nothing
// but a resend moves it.
func TestResendAfterCutUnderFio(t *testing.T) {
	needTools(t, "fio", "nbdinfo")
	began := time.Now()
	r := newRackInNamespaces(t)
	r.startProcesses()
	const vol = "resend"
	if out, err := r.cli("volume", "create", vol, "--size", "256MiB", "--attach", agentHost); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	r.waitServed(vol, r.agent)
	uri := r.uri(vol)
	// Every head node reaches the two others over both networks (no
	// sleds: the writes stay in the head nodes' journals).
	const wantPaths = 3 * 2 * 2
	allPathsUp := func(st rackStatusJSON) bool {
		up := 0
		for _, p := range st.Paths {
			if p.Up {
				up++
			}
		}
		return up == wantPaths && len(st.Paths) == wantPaths
	}
	r.waitStatus(t, time.Minute, "every head node path up", allPathsUp)

	// fio passes over the first 64 MiB, each a write pass and then a
	// verify pass (the same job with --verify_only) in processes of their
	// own, so the test knows when writes are in flight: a cut during a
	// verify pass would find only reads to send again.
	const iodepth = 32
	var writingSince atomic.Int64 // start of the write pass running, in Unix ns; 0 if none
	done := make(chan struct{})
	fioDone := make(chan struct{})
	var fioErr error
	passes := 0
	go func() {
		defer close(fioDone)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			args := []string{"--name=resend", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
				fmt.Sprintf("--iodepth=%d", iodepth), "--size=64M", "--verify=crc32c", "--verify_fatal=1",
				"--verify_state_save=0", fmt.Sprintf("--randseed=%d", i+1), "--output-format=terse"}
			start := time.Now()
			writingSince.Store(start.UnixNano())
			out, err := r.runClient(5*time.Minute, "fio", append(args, "--do_verify=0")...)
			writingSince.Store(0)
			wrote := time.Since(start)
			if err != nil {
				fioErr = fmt.Errorf("fio pass %d, writing: %w\n%s", i, err, tail(out, 3000))
				return
			}
			if out, err := r.runClient(5*time.Minute, "fio", append(args, "--verify_only")...); err != nil {
				fioErr = fmt.Errorf("fio pass %d, verifying: %w\n%s", i, err, tail(out, 3000))
				return
			}
			passes++
			t.Logf("fio pass %d: written in %v, verified in %v", i, wrote.Round(time.Millisecond), (time.Since(start) - wrote).Round(time.Millisecond))
		}
	}()
	stopFio := func() error {
		close(done)
		<-fioDone
		return fioErr
	}
	stopped := false
	defer func() {
		if !stopped {
			stopFio()
		}
	}()

	// Baseline: writes flow, and none is counted as received again.
	time.Sleep(3 * time.Second)
	st, err := r.resendStatus()
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := st.resentWrites(); !ok || n != 0 {
		t.Fatalf("before any cut: resent writes %s, unreachable head nodes %v; want 0 from every head node", *st.ResentWrites, st.UnreachableHeadNodes)
	}
	t.Logf("setup and baseline took %v", time.Since(began).Round(time.Millisecond))

	// A cut finds no write at the primary when every write in flight is
	// still on its way there (the primary has answered a batch, and fio
	// and the agent have not yet sent the next: on a busy machine, one
	// cut in three or so). Only requests are lost then, and their resends
	// are first sends. So the test cuts again until a resend is counted.
	// The stream goes over network A while A is up, moves to B when A is
	// cut and stays there after the heal: round 1 cuts A, round 2 B, and
	// so on.
	const maxRounds = 8
	var resent uint64
	cuts := 0
	for round := 1; round <= maxRounds && resent == 0; round++ {
		primary := r.showVolume(vol).Volume.Primary
		nw := labNetworks[(round-1)%2]
		// Cut once a write pass has filled its queue.
		for since := writingSince.Load(); since == 0 || time.Since(time.Unix(0, since)) < time.Second; since = writingSince.Load() {
			time.Sleep(50 * time.Millisecond)
		}
		r.lab.cut(primary, nw)
		cuts++
		cutAt := time.Now()
		// The agent notices within about 3s (its keepalive, the TCP user
		// timeout or the path's health probes) and sends again over the
		// other network; the count is waited for while the cut holds.
		for time.Since(cutAt) < 8*time.Second {
			st, err := r.resendStatus()
			if err != nil {
				t.Logf("while cut: %v", err)
			} else if n, ok := st.resentWrites(); ok && n > 0 {
				resent = n
				t.Logf("round %d: %d writes found applied already, counted %v after the cut", round, n, time.Since(cutAt).Round(time.Millisecond))
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		r.lab.heal(primary, nw)
		if resent == 0 {
			t.Logf("round %d: no write found applied already within 8s of the cut of %s's network %s", round, primary, nw)
		}
		r.waitStatus(t, time.Minute, "every head node path up after the heal", allPathsUp)
	}

	err = stopFio()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}
	if resent == 0 {
		t.Fatalf("no head node counted a write sent again after %d cuts under fio (%d passes, all verified)", cuts, passes)
	}
	st, err = r.resendStatus()
	if err != nil {
		t.Fatal(err)
	}
	final, ok := st.resentWrites()
	if !ok || final < resent {
		t.Fatalf("after the cuts: resent writes %s, unreachable head nodes %v; want at least %d", *st.ResentWrites, st.UnreachableHeadNodes, resent)
	}
	// Each cut loses the answers of at most the writes in flight, and the
	// agent sends each of those again once: more means something else
	// counts.
	if limit := uint64(cuts * iodepth); final > limit {
		t.Fatalf("%d writes counted as received again after %d cuts at queue depth %d; want at most %d", final, cuts, iodepth, limit)
	}
	t.Logf("%d fio write+verify passes without error; %d writes sent again and not applied twice after %d cut(s); %v in all",
		passes, final, cuts, time.Since(began).Round(time.Millisecond))
}
