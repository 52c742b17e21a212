package volume

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/clock"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

var testLease = LeaseConfig{Duration: 3 * time.Second, Margin: 500 * time.Millisecond}

var t0 = clock.Instant{}.Add(1_000_000 * time.Second)

func TestPrimaryLease(t *testing.T) {
	l := NewPrimaryLease(testLease, 4)
	if l.Valid(t0) {
		t.Fatal("a new lease is valid before any renewal")
	}
	a := l.StartRenewal(t0)
	b := l.StartRenewal(t0.Add(time.Second))
	l.Renewed(b)
	if !l.Valid(t0.Add(3900*time.Millisecond)) || l.Valid(t0.Add(4*time.Second)) {
		t.Fatal("the lease does not run Duration from when the renewal was asked for")
	}
	l.Renewed(a) // an older renewal confirmed late does not shorten it
	if !l.Valid(t0.Add(3900 * time.Millisecond)) {
		t.Fatal("a late confirmation of an older renewal shortened the lease")
	}
	c := l.StartRenewal(t0.Add(2 * time.Second))
	l.Failed(c)
	if l.Valid(t0.Add(4 * time.Second)) {
		t.Fatal("a failed renewal extended the lease")
	}
	d := l.StartRenewal(t0.Add(3 * time.Second))
	l.Refused(d)
	e := l.StartRenewal(t0.Add(3 * time.Second))
	l.Renewed(e)
	if l.Valid(t0.Add(3*time.Second)) || !l.Deposed() {
		t.Fatal("a refused renewal did not depose the primary for good")
	}
}

func TestLeaseTable(t *testing.T) {
	tab := NewLeaseTable(testLease, t0)
	// A new leader trusts no lease to have ended before Duration + Margin
	// from when it took office, renewed or not.
	if tab.Expired(1, t0.Add(3500*time.Millisecond)) || !tab.Expired(1, t0.Add(3501*time.Millisecond)) {
		t.Fatal("a new leader's table does not wait Duration + Margin from taking office")
	}
	tab.Renewed(1, t0.Add(2*time.Second))
	if tab.Expired(1, t0.Add(5500*time.Millisecond)) || !tab.Expired(1, t0.Add(5501*time.Millisecond)) {
		t.Fatal("a renewal does not hold the lease Duration + Margin")
	}
	tab.Renewed(1, t0.Add(time.Second)) // out of order: keeps the later one
	if tab.Expired(1, t0.Add(5500*time.Millisecond)) {
		t.Fatal("an older renewal moved the expiry back")
	}
}

func renew(vol uint64, holder string, epoch uint64) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLease{RenewLease: &ballastpb.RenewLeaseCommand{VolumeId: vol, Holder: holder, Epoch: epoch}}}
}

func promote(c *ballastpb.PromoteVolumeCommand) *ballastpb.DirectoryCommand {
	return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_PromoteVolume{PromoteVolume: c}}
}

func TestDirectoryRenewAndPromote(t *testing.T) {
	d := NewDirectory()
	v := applyLog(t, d, 1, create("a", 1<<30, "hn1", "hn2")).Volume
	if res := applyLog(t, d, 2, renew(v.Id, "hn1", 1)); res.Err != nil {
		t.Fatalf("the primary's renewal: %v", res.Err)
	}
	if res := applyLog(t, d, 3, renew(v.Id, "hn2", 1)); !errors.Is(res.Err, ErrDeposed) {
		t.Fatalf("a secondary's renewal: %v, want ErrDeposed", res.Err)
	}
	if res := applyLog(t, d, 4, renew(99, "hn1", 1)); !errors.Is(res.Err, ErrNotFound) {
		t.Fatalf("renewal of an unknown volume: %v, want ErrNotFound", res.Err)
	}
	if res := applyLog(t, d, 5, promote(&ballastpb.PromoteVolumeCommand{VolumeId: v.Id, IfEpoch: 1, IfLeaseRenewals: 1, Primary: "hn3", Secondaries: []string{"hn2"}})); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("promoting a node that holds no replica: %v, want ErrInvalid", res.Err)
	}
	// Planned on a volume state that predates the last renewal: refused.
	stale, err := PlanPromotion(v, []string{"hn2", "hn3"})
	if err != nil {
		t.Fatal(err)
	}
	if res := applyLog(t, d, 6, promote(stale)); !errors.Is(res.Err, ErrConflict) {
		t.Fatalf("promotion planned before a renewal: %v, want ErrConflict", res.Err)
	}
	cur, _ := d.ByID(v.Id)
	plan, err := PlanPromotion(cur, []string{"hn2", "hn3"})
	if err != nil {
		t.Fatal(err)
	}
	res := applyLog(t, d, 6, promote(plan))
	if res.Err != nil || res.Volume.Epoch != 2 || res.Volume.Primary != "hn2" || !slices.Equal(res.Volume.Secondaries, []string{"hn3"}) {
		t.Fatalf("promotion: %+v", res)
	}
	// The same proposal again (a retry after an unknown outcome) changes nothing.
	if res := applyLog(t, d, 7, promote(plan)); !errors.Is(res.Err, ErrConflict) || res.Volume.Epoch != 2 {
		t.Fatalf("repeated promotion: %+v, want ErrConflict at epoch 2", res)
	}
	// The old primary, back from a pause, is told it is deposed.
	res = applyLog(t, d, 8, renew(v.Id, "hn1", 1))
	if !errors.Is(res.Err, ErrDeposed) || res.Volume.Primary != "hn2" {
		t.Fatalf("the deposed primary's renewal: %+v", res)
	}
	if res := applyLog(t, d, 9, renew(v.Id, "hn2", 2)); res.Err != nil {
		t.Fatalf("the new primary's renewal: %v", res.Err)
	}
}

func TestPlanPromotion(t *testing.T) {
	v := &ballastpb.Volume{Name: "a", Id: 1, Epoch: 5, Primary: "hn1", Secondaries: []string{"hn2", "hn3"}}
	for _, c := range []struct {
		live        []string
		primary     string
		secondaries []string
		err         bool
	}{
		{live: []string{"hn2", "hn3", "hn4"}, primary: "hn2", secondaries: []string{"hn3", "hn4"}},
		{live: []string{"hn3", "hn4", "hn5"}, primary: "hn3", secondaries: []string{"hn4", "hn5"}},
		{live: []string{"hn1", "hn3"}, primary: "hn3", secondaries: nil, err: true}, // nobody new to mirror to
		{live: []string{"hn1", "hn4"}, err: true},                                   // no live replica
	} {
		got, err := PlanPromotion(v, c.live)
		if c.err {
			if err == nil && len(got.Secondaries) > 0 {
				t.Errorf("live %v: %+v, want no usable plan", c.live, got)
			}
			continue
		}
		if err != nil || got.Primary != c.primary || !slices.Equal(got.Secondaries, c.secondaries) || got.IfEpoch != 5 {
			t.Errorf("live %v: %+v %v, want primary %s secondaries %v", c.live, got, err, c.primary, c.secondaries)
		}
	}
}

// TestFailoverNeverOverlapsLeases simulates a primary, the group and its
// leader with a fake clock, message delays, lost renewals, clocks that run
// at different rates, leader changes and primary pauses, and checks the
// one property failover rests on: once a promotion is applied, the old
// primary's lease is over and stays over, so it can never acknowledge a
// write again. It also checks that a primary that is never paused and
// whose renewals all arrive is never replaced.
func TestFailoverNeverOverlapsLeases(t *testing.T) {
	for seed := int64(1); seed <= 400; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulateFailover(t, seed) })
	}
}

func simulateFailover(t *testing.T, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	const tick = 10 * time.Millisecond
	const horizon = 60 * time.Second
	// Clock rates within ±5%: Margin (0.5 s) covers the drift over a
	// 3 s lease.
	rate := func() float64 { return 1 + (rng.Float64()-0.5)*0.1 }
	primaryRate, leaderRate := rate(), rate()
	local := func(real time.Duration, r float64) clock.Instant { return t0.Add(time.Duration(float64(real) * r)) }
	pauses := rng.Intn(3) == 0
	lossy := rng.Intn(3) == 0
	leaderChanges := rng.Intn(2) == 0

	d := NewDirectory()
	// index numbers the commands as raft's log would.
	var index uint64
	apply := func(cmd *ballastpb.DirectoryCommand) ApplyResult {
		index++
		return d.ApplyCommand(index, cmd, 0)
	}
	vol := apply(create("a", 1<<30, "hn1", "hn2")).Volume
	lease := NewPrimaryLease(testLease, vol.Epoch)
	table := NewLeaseTable(testLease, local(0, leaderRate))

	type event struct {
		at time.Duration
		do func(now time.Duration)
	}
	var events []event
	after := func(now, delay time.Duration, do func(time.Duration)) {
		events = append(events, event{now + delay, do})
	}
	var pausedUntil time.Duration
	var promotedAt time.Duration = -1
	promotionProposed := false
	nextRenew := time.Duration(0)

	for now := time.Duration(0); now < horizon; now += tick {
		// Deliver what is due, in order.
		slices.SortStableFunc(events, func(a, b event) int { return int(a.at - b.at) })
		for len(events) > 0 && events[0].at <= now {
			e := events[0]
			events = events[1:]
			e.do(now)
		}
		paused := now < pausedUntil
		if pauses && !paused && rng.Intn(1500) == 0 {
			pausedUntil = now + time.Duration(1+rng.Intn(8))*time.Second
			paused = true
		}
		if leaderChanges && rng.Intn(2000) == 0 {
			// A new leader (the old one's table is lost) takes office
			// after an election.
			table = nil
			after(now, time.Duration(rng.Intn(2000))*time.Millisecond, func(now time.Duration) {
				table = NewLeaseTable(testLease, local(now, leaderRate))
				promotionProposed = false
			})
		}
		// The primary renews every RenewEvery, unless paused.
		if !paused && now >= nextRenew && !lease.Deposed() {
			nextRenew = now + testLease.RenewEvery()
			id := lease.StartRenewal(local(now, primaryRate))
			if lossy && rng.Intn(4) == 0 {
				after(now, testLease.Duration, func(time.Duration) { lease.Failed(id) })
			} else {
				after(now, time.Duration(rng.Intn(2000))*time.Millisecond, func(now time.Duration) {
					res := apply(renew(vol.Id, "hn1", lease.Epoch()))
					if res.Err == nil && table != nil {
						table.Renewed(vol.Id, local(now, leaderRate))
					}
					// The reply reaches the primary later, and not before
					// a pause ends.
					after(now, time.Duration(rng.Intn(500))*time.Millisecond, func(now time.Duration) {
						deliver := func(time.Duration) {
							if errors.Is(res.Err, ErrDeposed) {
								lease.Refused(id)
							} else if res.Err == nil {
								lease.Renewed(id)
							} else {
								lease.Failed(id)
							}
						}
						if now < pausedUntil {
							after(now, pausedUntil-now, deliver)
						} else {
							deliver(now)
						}
					})
				})
			}
		}
		// The leader promotes hn2 once hn1's lease has surely run out.
		if table != nil && !promotionProposed && promotedAt < 0 && table.Expired(vol.Id, local(now, leaderRate)) {
			promotionProposed = true
			cur, _ := d.ByID(vol.Id)
			plan, err := PlanPromotion(cur, []string{"hn2", "hn3"})
			if err != nil {
				t.Fatal(err)
			}
			after(now, time.Duration(rng.Intn(1000))*time.Millisecond, func(now time.Duration) {
				if res := apply(promote(plan)); res.Err == nil {
					promotedAt = now
				} else if errors.Is(res.Err, ErrConflict) {
					promotionProposed = false // renewed meanwhile: decide again
				} else {
					t.Fatalf("promotion: %v", res.Err)
				}
			})
		}
		// The property: after the promotion, hn1 may never acknowledge.
		if promotedAt >= 0 && lease.Valid(local(now, primaryRate)) {
			t.Fatalf("at %v hn1 still holds its lease, though hn2 was promoted at %v (pauses %v, lossy %v, leader changes %v, rates %.3f/%.3f)",
				now, promotedAt, pauses, lossy, leaderChanges, primaryRate, leaderRate)
		}
	}
	if !pauses && !lossy && promotedAt >= 0 {
		t.Fatalf("a healthy primary was replaced at %v (leader changes %v)", promotedAt, leaderChanges)
	}
	if pauses && promotedAt >= 0 && !lease.Deposed() && pausedUntil < horizon-5*time.Second {
		t.Fatalf("the replaced primary renewed after its pause and was not told it is deposed")
	}
}

func TestDirectoryMirroring(t *testing.T) {
	d := NewDirectory()
	var seen []string
	d.OnLeasesRenewed = func(holder string, vols []uint64) { seen = append(seen, fmt.Sprint(holder, vols)) }
	a := applyLog(t, d, 1, create("a", 1<<30, "hn1", "hn2")).Volume
	b := applyLog(t, d, 2, create("b", 1<<30, "hn2", "hn1")).Volume
	batch := &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_RenewLeases{RenewLeases: &ballastpb.RenewLeasesCommand{
		Holder: "hn1", Leases: []*ballastpb.RenewLeaseCommand{{VolumeId: a.Id, Epoch: 1}, {VolumeId: b.Id, Epoch: 1}, {VolumeId: 99, Epoch: 1}},
	}}}
	res := applyLog(t, d, 3, batch)
	if res.Err != nil || !slices.Equal(res.Refused, []uint64{b.Id, 99}) || !slices.Equal(seen, []string{fmt.Sprint("hn1", []uint64{a.Id})}) {
		t.Fatalf("batched renewal: %+v, hook saw %v; want b and 99 refused, a renewed", res, seen)
	}
	// hn2 is gone: hn3 replaces it and catches up, so it cannot lead yet.
	cur, _ := d.ByID(a.Id)
	repl, err := PlanReplacement(cur, "hn2", []string{"hn1", "hn3"})
	if err != nil || repl.Add != "hn3" {
		t.Fatalf("plan replacement: %+v %v", repl, err)
	}
	res = applyLog(t, d, 4, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ReplaceSecondary{ReplaceSecondary: repl}})
	if res.Err != nil || !slices.Equal(res.Volume.Secondaries, []string{"hn3"}) || !slices.Equal(res.Volume.CatchingUp, []string{"hn3"}) || res.Volume.Epoch != 1 {
		t.Fatalf("replacement: %+v", res)
	}
	if res := applyLog(t, d, 5, &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_ReplaceSecondary{ReplaceSecondary: repl}}); !errors.Is(res.Err, ErrConflict) {
		t.Fatalf("repeated replacement: %v, want ErrConflict", res.Err)
	}
	cur, _ = d.ByID(a.Id)
	if plan, err := PlanPromotion(cur, []string{"hn3", "hn4"}); err == nil {
		t.Fatalf("planned promotion of a secondary still catching up: %+v", plan)
	}
	forced := &ballastpb.PromoteVolumeCommand{VolumeId: a.Id, IfEpoch: 1, IfLeaseRenewals: cur.LeaseRenewals, Primary: "hn3", Secondaries: []string{"hn4"}}
	if res := applyLog(t, d, 6, promote(forced)); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("promotion of a secondary still catching up: %v, want ErrInvalid", res.Err)
	}
	inSync := func(epoch uint64, node string) *ballastpb.DirectoryCommand {
		return &ballastpb.DirectoryCommand{Op: &ballastpb.DirectoryCommand_SecondaryInSync{SecondaryInSync: &ballastpb.SecondaryInSyncCommand{VolumeId: a.Id, Epoch: epoch, Node: node}}}
	}
	if res := applyLog(t, d, 7, inSync(0, "hn3")); !errors.Is(res.Err, ErrConflict) {
		t.Fatalf("in-sync report of another epoch: %v, want ErrConflict", res.Err)
	}
	if res := applyLog(t, d, 8, inSync(1, "hn3")); res.Err != nil || len(res.Volume.CatchingUp) != 0 {
		t.Fatalf("in-sync report: %+v", res)
	}
	// Now hn3 may lead; the node that takes its place catches up.
	cur, _ = d.ByID(a.Id)
	plan, err := PlanPromotion(cur, []string{"hn3", "hn4"})
	if err != nil {
		t.Fatal(err)
	}
	res = applyLog(t, d, 9, promote(plan))
	if res.Err != nil || res.Volume.Primary != "hn3" || res.Volume.Epoch != 2 || !slices.Equal(res.Volume.CatchingUp, []string{"hn4"}) {
		t.Fatalf("promotion after sync: %+v", res)
	}
}
