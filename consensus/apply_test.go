package consensus

import (
	"sync"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/leakcheck"
)

// A read that confirms the leadership while the group stops must end:
// raft leaves a VerifyLeader request queued at its shutdown unanswered,
// so stopping a group first lets the queued ones be answered.
func TestReadsRacingAGroupStopAllEnd(t *testing.T) {
	for round := range 5 {
		n, kv, _ := startSingleVoterKV(t)
		ctx := testContext(t)
		var readers sync.WaitGroup
		started := make(chan struct{}, 16)
		for range 16 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				started <- struct{}{}
				for n.node.Linearize(ctx, 1, &kv.fence) == nil {
				}
			}()
		}
		for range 16 {
			<-started
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		if err := n.node.StopGroup(1); err != nil {
			t.Fatal(err)
		}
		readers.Wait()
		if leaked := leakcheck.Wait(2*time.Second, "ballast/consensus.await", "ballast/consensus.(*group).verifyLeader"); leaked != "" {
			t.Fatalf("round %d: goroutines waiting on raft after the group stopped:\n%s", round, leaked)
		}
		if err := n.close(); err != nil {
			t.Fatal(err)
		}
	}
}
