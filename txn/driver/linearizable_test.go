package driver

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ballast-storage/ballast/txn"
)

// The keys of the linearizability test: two in each of four groups.
var (
	lzGroups = []txn.GroupID{1, 2, 3, 4}
	lzKeys   = []string{"a", "b"}
)

const lzNumKeys = 8

func lzKey(i int) (txn.GroupID, string) { return lzGroups[i/len(lzKeys)], lzKeys[i%len(lzKeys)] }

// lzState is the model's state: each key's value, "" when absent.
type lzState [lzNumKeys]string

// lzInput is an operation: a read of one key, or a transaction whose
// conditions are the values its client read before (a version names one
// write, and every write's value is unique, so a value stands for it).
type lzInput struct {
	read   int // key index, for a read
	isTxn  bool
	conds  map[int]string
	writes map[int]string
}

// lzOutput is what the client saw.
type lzOutput struct {
	value string // a read's value
	// status of a transaction; StatusAborted with condFailed when a
	// condition was refused, which the model checks; any other abort
	// (contention, expiry) is a no-op.
	status     txn.ClientStatus
	condFailed bool
}

// lzModel is the specification: a map of keys, transactions applying all
// their writes at once if every condition holds. An outcome the client
// never learnt may have happened or not.
var lzModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{lzState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(lzState), input.(lzInput), output.(lzOutput)
		if !in.isTxn {
			if s[in.read] == out.value {
				return []any{s}
			}
			return nil
		}
		holds := true
		for k, v := range in.conds {
			holds = holds && s[k] == v
		}
		applied := s
		for k, v := range in.writes {
			applied[k] = v
		}
		switch {
		case out.status == txn.StatusCommitted && holds:
			return []any{applied}
		case out.status == txn.StatusCommitted:
			return nil
		case out.status == txn.StatusAborted && out.condFailed:
			if holds {
				return nil
			}
			return []any{s}
		case out.status == txn.StatusAborted:
			return []any{s}
		case holds: // unknown
			return []any{s, applied}
		default:
			return []any{s}
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(lzInput), output.(lzOutput)
		if !in.isTxn {
			g, k := lzKey(in.read)
			return fmt.Sprintf("read %d/%s -> %q", g, k, out.value)
		}
		return fmt.Sprintf("txn if %v set %v -> %s (cond failed %v)", in.conds, in.writes, out.status, out.condFailed)
	},
}

var lzSeeds = flag.Int("txn.seeds", 0, "seeds of the linearizability test to run (default 1, or TXN_SOAK_SEEDS)")

// TestLinearizableUnderFaults runs random transactions over keys in four
// groups of three real raft nodes while nodes are killed and restarted
// and cut off the network, and proposers die in the middle of
// transactions; then checks the history with porcupine, and that every
// lock and record is eventually resolved and forgotten.
func TestLinearizableUnderFaults(t *testing.T) {
	seeds := *lzSeeds
	if seeds == 0 {
		seeds = 1
		if s, err := strconv.Atoi(os.Getenv("TXN_SOAK_SEEDS")); err == nil && s > 0 {
			seeds = s
		}
	}
	base := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("TXN_SEED"), 10, 64); err == nil {
		base = s
	}
	for i := range seeds {
		seed := base + uint64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runLinearizable(t, seed) })
	}
}

type lzHistory struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *lzHistory) now() int64 { return time.Since(h.start).Nanoseconds() }

func (h *lzHistory) add(client int, in lzInput, out lzOutput, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

func runLinearizable(t *testing.T, seed uint64) {
	t.Logf("TXN_SEED=%d reproduces this run", seed)
	rack := newTestRack(t, 3, lzGroups...)
	hist := &lzHistory{start: time.Now()}
	newProposer := func(id uint32) *Proposer { return newClientProposer(t, rack.local, id) }
	runWorkload(t, seed, hist, newProposer, func(ctx context.Context, rng *rand.Rand) { injectFaults(ctx, t, rack, rng) })

	// Everything up and connected: every transaction must finish and be
	// forgotten, whatever its proposer did.
	rack.faults.Heal()
	for i := range rack.nodes {
		rack.restart(i)
	}
	quiet, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rack.waitQuiet(quiet, true); err != nil {
		t.Errorf("recovery and garbage collection did not finish: %v", err)
	}
	checkHistory(t, hist, newProposer(999))
}

// runWorkload runs four clients for six seconds while faults injects
// faults, and records what they saw in hist.
func runWorkload(t *testing.T, seed uint64, hist *lzHistory, newProposer func(uint32) *Proposer, faults func(context.Context, *rand.Rand)) {
	ctx, stop := context.WithTimeout(context.Background(), 6*time.Second)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		faults(ctx, rand.New(rand.NewPCG(seed, 1)))
	}()
	var ids atomic.Uint32
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runClient(ctx, t, hist, c, rand.New(rand.NewPCG(seed, uint64(c)+2)), func() *Proposer { return newProposer(1 + ids.Add(1)) })
		}()
	}
	wg.Wait()
}

// checkHistory reads every key's final value with p (which waits for and
// recovers what still holds a lock), then checks the history.
func checkHistory(t *testing.T, hist *lzHistory, p *Proposer) {
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for k := range lzNumKeys {
		g, key := lzKey(k)
		call := hist.now()
		res, err := p.Read(ctx, g, key)
		if err != nil {
			t.Fatalf("final read of %d/%s: %v", g, key, err)
		}
		hist.add(99, lzInput{read: k}, lzOutput{value: string(res.Value)}, call, hist.now())
	}

	res, info := porcupine.CheckOperationsVerbose(lzModel.ToModel(), hist.ops, time.Minute)
	var committed, unknown, aborted, reads int
	for _, op := range hist.ops {
		switch {
		case !op.Input.(lzInput).isTxn:
			reads++
		case op.Output.(lzOutput).status == txn.StatusCommitted:
			committed++
		case op.Output.(lzOutput).status == txn.StatusAborted:
			aborted++
		default:
			unknown++
		}
	}
	t.Logf("%d operations: %d committed, %d aborted, %d unknown, %d reads", len(hist.ops), committed, aborted, unknown, reads)
	if committed < 20 {
		t.Errorf("only %d transactions committed: the faults left too little to check", committed)
	}
	if res != porcupine.Ok {
		f, err := os.CreateTemp("", "txn-linearizability-*.html")
		if err == nil {
			_ = porcupine.Visualize(lzModel.ToModel(), info, f)
			_ = f.Close()
			t.Logf("history visualised in %s", f.Name())
		}
		t.Fatalf("history is not linearizable (%v)", res)
	}
}

func newClientProposer(t testing.TB, groups Groups, id uint32) *Proposer {
	p, err := NewProposer(ProposerConfig{Node: id, Groups: groups, Coordinator: testCoordinator, RequestTimeout: time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runClient reads and writes until ctx ends. Now and then its proposer
// dies in the middle of a transaction (Close), and a new one takes over.
func runClient(ctx context.Context, t *testing.T, hist *lzHistory, c int, rng *rand.Rand, newProposer func() *Proposer) {
	p := newProposer()
	defer func() { p.Close() }()
	read := map[int]string{} // the last value this client read of each key
	for seq := 0; ctx.Err() == nil; seq++ {
		if rng.IntN(3) == 0 {
			k := rng.IntN(lzNumKeys)
			g, key := lzKey(k)
			call := hist.now()
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			res, err := p.Read(rctx, g, key)
			cancel()
			if err != nil {
				continue // a failed read has no effect: leave it out
			}
			hist.add(c, lzInput{read: k}, lzOutput{value: string(res.Value)}, call, hist.now())
			read[k] = string(res.Value)
			continue
		}
		in := lzInput{isTxn: true, conds: map[int]string{}, writes: map[int]string{}}
		var spec txn.Spec
		for _, gi := range rng.Perm(len(lzGroups))[:1+rng.IntN(3)] {
			k := gi*len(lzKeys) + rng.IntN(len(lzKeys))
			g, key := lzKey(k)
			v := fmt.Sprintf("c%d.%d", c, seq)
			in.writes[k] = v
			spec.Writes = append(spec.Writes, txn.GroupWrite{Group: g, Write: txn.Write{Key: key, Value: []byte(v)}})
		}
		// A condition on a key the client read: a compare-and-set.
		if len(read) > 0 && rng.IntN(2) == 0 {
			keys := slices.Sorted(maps.Keys(read))
			k := keys[rng.IntN(len(keys))]
			g, key := lzKey(k)
			if ver, ok := readVersion(ctx, p, g, key, read[k]); ok {
				in.conds[k] = read[k]
				spec.Conditions = append(spec.Conditions, txn.GroupCondition{Group: g, Condition: txn.Condition{Key: key, Version: ver}})
			}
		}
		call := hist.now()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var rep txn.Report
		var err error
		if rng.IntN(25) == 0 {
			// The proposer dies while the transaction runs.
			done := make(chan struct{})
			go func() { defer close(done); rep, err = p.Commit(cctx, spec) }()
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			p.Close()
			<-done
			p = newProposer()
		} else {
			rep, err = p.Commit(cctx, spec)
		}
		cancel()
		out := lzOutput{status: rep.Status, condFailed: rep.Status == txn.StatusAborted && rep.Refusal.Reason == txn.RefusedCondition}
		ret := hist.now()
		if rep.Status == txn.StatusUnknown || rep.Status == 0 {
			out.status = txn.StatusUnknown
			ret = math.MaxInt64 // it may take effect any time later
		} else if err != nil {
			t.Errorf("commit reported %s with an error: %v", rep.Status, err)
		}
		hist.add(c, in, out, call, ret)
	}
}

// readVersion reads key's version, if its value is still v: the
// condition then names the write the client read.
func readVersion(ctx context.Context, p *Proposer, g txn.GroupID, key, v string) (txn.Version, bool) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res, err := p.Read(rctx, g, key)
	if err != nil || string(res.Value) != v {
		return 0, false
	}
	return res.Version, true
}

// injectFaults kills and restarts nodes and cuts them off the network,
// one node at a time, until ctx ends.
func injectFaults(ctx context.Context, t *testing.T, rack *testRack, rng *rand.Rand) {
	ids := make([]string, len(rack.nodes))
	for i, n := range rack.nodes {
		ids[i] = n.id
	}
	for sleepCtx(ctx, time.Duration(300+rng.IntN(400))*time.Millisecond) {
		i := rng.IntN(len(rack.nodes))
		if rng.IntN(2) == 0 {
			t.Logf("%s: kill %s", time.Now().Format("15:04:05.000"), ids[i])
			rack.kill(i)
			sleepCtx(ctx, time.Duration(200+rng.IntN(800))*time.Millisecond)
			rack.restart(i)
		} else {
			t.Logf("%s: isolate %s", time.Now().Format("15:04:05.000"), ids[i])
			rack.faults.Isolate(ids[i], ids...)
			sleepCtx(ctx, time.Duration(200+rng.IntN(800))*time.Millisecond)
			rack.faults.Heal()
		}
	}
}
