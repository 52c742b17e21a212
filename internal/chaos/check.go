package chaos

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// FinalImage is the read-back of a whole volume after the faults healed:
// Blocks[i] is block i.
type FinalImage struct {
	Volume string
	Blocks []Observed
}

// Result is what Check found in one run's history.
type Result struct {
	Operations, AckedWrites, UnknownWrites int
	// Lost counts blocks whose final content is a value no write wrote
	// there, or is older than an acknowledged write or trim of the block
	// that began after that value's write had returned.
	Lost int
	// Violations counts the (volume, block) registers whose history, with
	// the final read-back appended as a read after every other operation,
	// is not linearizable.
	Violations int
	// StaleReads counts block reads (one per block of a read, live or
	// final) that returned a value already overwritten by a write or trim
	// acknowledged before the read began. Each is also a violation of its
	// block.
	StaleReads int
	// CorruptReads counts block reads (live or final) that saw Corrupt
	// content. Each is also a violation of its block.
	CorruptReads int
	// TimedOut counts the registers whose check did not finish within the
	// timeout: neither passed nor failed. (Not in the first draft of the
	// API: added so that a run can say how much it did not check.)
	TimedOut int
	// Details are up to maxDetails human-readable lines for the report.
	Details []string
}

const maxDetails = 50

// How the history becomes porcupine's:
//
// Each (volume, block) is a register whose value names the write that left
// it there: 0 is zero content (never written, or trimmed), i > 0 the i-th
// distinct Tag written to the block. A multi-block write or read is one Op
// but one register operation per block, all with the op's Call and Return.
// Reads that failed carry no information and are left out; flushes change
// no register.
//
// A write or trim whose outcome is Failed or Pending may have taken effect
// at any moment after its call, or never. It is given a Return after every
// other event (the final read-back included): porcupine may then place it
// anywhere after its Call, and placing it after everything is the same as
// "never". Such a write whose value no read (live or final) returned is
// dropped instead: values are unique, so nothing can depend on it, and a
// history with it is linearizable iff the history without it is (place it
// last). A trim's value, zero, is not unique, so an unknown trim is
// dropped only when no read that returned zero ended after the trim began.
// Dropping them keeps porcupine's search small when many calls fail during
// a fault.

// Value ids of a register: zeroValue, or 1 + the index of the Tag in the
// register's table, or these two for reads of values no write wrote.
const (
	zeroValue    = 0
	unknownValue = -1 // a Valid tag never written to this block
	corruptValue = -2
)

type regKey struct {
	volume string
	block  uint64
}

// regOp is one operation on one register.
type regOp struct {
	kind  Kind // Write, Trim or Read
	op    int  // index into the history; -1 for the final read-back
	call  int64
	ret   int64 // forever for a write or trim of unknown outcome
	acked bool  // a write or trim that returned OK
	value int
}

type register struct {
	key   regKey
	tags  []Tag       // value i is tags[i-1]
	ids   map[Tag]int // tag -> value
	ops   []regOp
	final bool // the final read-back covers this register
}

// registerResult is what checking one register found.
type registerResult struct {
	violation  bool
	timedOut   bool
	lost       bool
	stale      int
	corrupt    int
	details    []string
	firstIssue int64 // for ordering the details: earliest problem time
}

// Check checks a run's history and the final read-back of its volumes.
// It partitions the history by (volume, block) and checks each register
// with porcupine, in parallel; timeout bounds each register's check (0: no
// bound), and a register whose check times out is counted in TimedOut and
// reported in Details, not as a violation. A volume without a FinalImage
// is checked without a final read.
func Check(ops []Op, final []FinalImage, timeout time.Duration) Result {
	res := Result{Operations: len(ops)}
	for _, op := range ops {
		if op.Kind != Write {
			continue
		}
		if op.Outcome == OK {
			res.AckedWrites++
		} else {
			res.UnknownWrites++
		}
	}
	regs, end, problems := buildRegisters(ops)
	details := problems
	forever := end + 2

	// The final read-back: one read per register after everything else.
	// Blocks that no call touched must be zero; they are checked here
	// directly rather than given a register each.
	images := map[string]FinalImage{}
	for _, img := range final {
		images[img.Volume] = img
	}
	for _, img := range final {
		for b, obs := range img.Blocks {
			if r := regs[regKey{img.Volume, uint64(b)}]; r != nil {
				r.final = true
				r.ops = append(r.ops, regOp{kind: Read, op: -1, call: end, ret: end + 1, value: r.valueOf(obs)})
				continue
			}
			if obs.Content == Zero {
				continue
			}
			res.Lost++
			res.Violations++
			if obs.Content == Corrupt {
				res.CorruptReads++
			}
			details = append(details, fmt.Sprintf("%s block %d: never written, final read-back holds %s", img.Volume, b, describeObserved(obs)))
		}
	}
	keys := make([]regKey, 0, len(regs))
	for k := range regs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b regKey) int {
		return cmp.Or(cmp.Compare(a.volume, b.volume), cmp.Compare(a.block, b.block))
	})
	for _, k := range keys {
		if img, ok := images[k.volume]; ok && !regs[k].final {
			details = append(details, fmt.Sprintf("%s block %d: written but beyond the final read-back's %d blocks: not checked for loss", k.volume, k.block, len(img.Blocks)))
		}
	}

	results := make([]registerResult, len(keys))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = checkRegister(regs[keys[i]], ops, forever, timeout)
			}
		}()
	}
	for i := range keys {
		next <- i
	}
	close(next)
	wg.Wait()

	var flagged []registerResult
	for _, rr := range results {
		if rr.violation {
			res.Violations++
		}
		if rr.timedOut {
			res.TimedOut++
		}
		if rr.lost {
			res.Lost++
		}
		res.StaleReads += rr.stale
		res.CorruptReads += rr.corrupt
		if len(rr.details) > 0 {
			flagged = append(flagged, rr)
		}
	}
	// The earliest problems first: later ones are often its consequences.
	slices.SortStableFunc(flagged, func(a, b registerResult) int { return cmp.Compare(a.firstIssue, b.firstIssue) })
	for _, rr := range flagged {
		details = append(details, rr.details...)
	}
	if len(details) > maxDetails {
		more := len(details) - (maxDetails - 1)
		details = append(details[:maxDetails-1], fmt.Sprintf("... and %d more", more))
	}
	res.Details = details
	return res
}

// buildRegisters splits the history into registers. end is a time after
// every call and return of the history. problems are details about
// malformed ops (a harness bug, not the system's).
func buildRegisters(ops []Op) (regs map[regKey]*register, end int64, problems []string) {
	regs = map[regKey]*register{}
	get := func(vol string, block uint64) *register {
		k := regKey{vol, block}
		r := regs[k]
		if r == nil {
			r = &register{key: k, ids: map[Tag]int{}}
			regs[k] = r
		}
		return r
	}
	for _, op := range ops {
		end = max(end, int64(op.Call), int64(op.Return))
	}
	end++
	// Writes first, so that every read can name the write it saw, even one
	// that began after the read (a violation porcupine will find).
	for i, op := range ops {
		if op.Kind != Write && op.Kind != Trim {
			continue
		}
		if op.Kind == Write && len(op.Wrote) < op.Count {
			problems = append(problems, fmt.Sprintf("op %d: a write of %d blocks with %d tags: blocks without a tag not checked", i, op.Count, len(op.Wrote)))
		}
		for j := range op.Count {
			ro := regOp{kind: op.Kind, op: i, call: int64(op.Call), ret: int64(op.Return), acked: op.Outcome == OK}
			r := get(op.Volume, op.Block+uint64(j))
			if op.Kind == Write {
				if j >= len(op.Wrote) {
					continue
				}
				t := op.Wrote[j]
				id, ok := r.ids[t]
				if !ok {
					r.tags = append(r.tags, t)
					id = len(r.tags)
					r.ids[t] = id
				}
				ro.value = id
			}
			r.ops = append(r.ops, ro)
		}
	}
	for i, op := range ops {
		if op.Kind != Read || op.Outcome != OK {
			continue
		}
		for j := range min(op.Count, len(op.Saw)) {
			r := get(op.Volume, op.Block+uint64(j))
			r.ops = append(r.ops, regOp{kind: Read, op: i, call: int64(op.Call), ret: int64(op.Return), value: r.valueOf(op.Saw[j])})
		}
		if len(op.Saw) < op.Count {
			problems = append(problems, fmt.Sprintf("op %d: a read of %d blocks that saw %d: blocks without a value not checked", i, op.Count, len(op.Saw)))
		}
	}
	return regs, end, problems
}

// valueOf names the value a read observed in this register.
func (r *register) valueOf(obs Observed) int {
	switch obs.Content {
	case Zero:
		return zeroValue
	case Valid:
		if id, ok := r.ids[obs.Tag]; ok {
			return id
		}
		return unknownValue
	default:
		return corruptValue
	}
}

// checkRegister checks one register: values never written, stale reads and
// a lost final value by the simple rules below, then linearizability with
// porcupine.
func checkRegister(r *register, ops []Op, forever int64, timeout time.Duration) registerResult {
	var rr registerResult
	rr.firstIssue = math.MaxInt64
	issue := func(at int64, line string) {
		rr.firstIssue = min(rr.firstIssue, at)
		rr.details = append(rr.details, fmt.Sprintf("%s block %d: %s", r.key.volume, r.key.block, line))
	}
	// An unknown outcome may take effect at any moment after its call.
	for i := range r.ops {
		if (r.ops[i].kind == Write || r.ops[i].kind == Trim) && !r.ops[i].acked {
			r.ops[i].ret = forever
		}
	}

	neverWritten := false
	for _, ro := range r.ops {
		if ro.kind != Read || ro.value >= 0 {
			continue
		}
		neverWritten = true
		what := "a value never written to this block"
		if ro.value == corruptValue {
			what = "corrupt content"
			rr.corrupt++
		}
		if ro.op < 0 {
			rr.lost = true
			issue(ro.call, "the final read-back holds "+what)
		} else {
			issue(ro.call, fmt.Sprintf("%s saw %s", r.describe(ro, ops), what))
		}
	}

	// Stale reads and lost writes, by one rule: a value v is overwritten
	// for good once an acknowledged write or trim w2 of another value has
	// begun after every write of v returned (so w2 took effect after v)
	// and has itself returned; the earliest such return is v's
	// overwrittenAt. Zero's writers are the initial state and every trim.
	// A write of unknown outcome never returned, so its value is never
	// overwritten for good. A read that began after overwrittenAt(v) and
	// returned v is stale; a final read-back that holds a v with any
	// overwrittenAt is a lost write, since values are unique and nothing
	// could have written v again.
	overwrittenAt := func(v int) (at int64, by regOp, from regOp) {
		at = math.MinInt64
		var sources []regOp
		if v == zeroValue {
			sources = append(sources, regOp{kind: Trim, op: -1, ret: math.MinInt64, acked: true}) // the initial state
		}
		for _, ro := range r.ops {
			if (ro.kind == Write || ro.kind == Trim) && ro.value == v {
				sources = append(sources, ro)
			}
		}
		for _, s := range sources {
			sAt := int64(math.MaxInt64)
			var sBy regOp
			for _, w2 := range r.ops {
				if w2.kind == Read || !w2.acked || w2.value == v || w2.call <= s.ret {
					continue
				}
				if w2.ret < sAt {
					sAt, sBy = w2.ret, w2
				}
			}
			if sAt > at {
				at, by, from = sAt, sBy, s
			}
		}
		return at, by, from
	}
	memo := map[int]int64{}
	for _, ro := range r.ops {
		if ro.kind != Read || ro.value < 0 {
			continue
		}
		at, ok := memo[ro.value]
		if !ok {
			at, _, _ = overwrittenAt(ro.value)
			memo[ro.value] = at
		}
		if at == math.MaxInt64 || at >= ro.call {
			continue
		}
		_, by, from := overwrittenAt(ro.value)
		was := "the initial zero"
		if from.op >= 0 {
			was = r.describe(from, ops)
		}
		if ro.op < 0 {
			rr.lost = true
			issue(ro.call, fmt.Sprintf("lost: the final read-back holds the value of %s, overwritten by %s", was, r.describe(by, ops)))
			continue
		}
		rr.stale++
		issue(ro.call, fmt.Sprintf("stale read: %s returned the value of %s, overwritten by %s", r.describe(ro, ops), was, r.describe(by, ops)))
	}

	if neverWritten {
		// No state of the register holds such a value: porcupine would
		// only say the same, later.
		rr.violation = true
		return rr
	}

	history, src := r.porcupineHistory()
	switch porcupine.CheckOperationsTimeout(registerModel, history, timeout) {
	case porcupine.Ok:
		if rr.stale > 0 || rr.lost {
			// A stale read or lost value is never linearizable: the two
			// checkers disagreeing is a bug of this package.
			issue(0, "BUG: porcupine accepted a history with a stale read or lost value")
			rr.violation = true
		}
	case porcupine.Illegal:
		rr.violation = true
		if len(rr.details) == 0 {
			issue(r.explain(ops, history, src, timeout))
		}
	default:
		rr.timedOut = true
		issue(r.firstRead(), fmt.Sprintf("linearizability not decided within %v (%d operations): unknown", timeout, len(history)))
	}
	return rr
}

type regInput struct {
	write bool // a write or a trim
	value int
}

// registerModel is a register whose value names the write that left it.
var registerModel = porcupine.Model{
	Init: func() any { return zeroValue },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regInput)
		if in.write {
			return true, in.value
		}
		return state.(int) == in.value, state
	},
	Hash: func(state any) uint64 { return uint64(state.(int)) },
	DescribeOperation: func(input, output any) string {
		in := input.(regInput)
		if in.write {
			return fmt.Sprintf("write %d", in.value)
		}
		return fmt.Sprintf("read -> %d", in.value)
	},
	DescribeState: func(state any) string { return fmt.Sprint(state.(int)) },
}

// porcupineHistory is the register's history without the writes and trims
// of unknown outcome that nothing can depend on (see the comment above
// zeroValue); src[i] is history[i]'s operation.
func (r *register) porcupineHistory() (history []porcupine.Operation, src []regOp) {
	observed := map[int]bool{}
	var lastZeroRead int64 = math.MinInt64
	for _, ro := range r.ops {
		if ro.kind == Read {
			observed[ro.value] = true
			if ro.value == zeroValue {
				lastZeroRead = max(lastZeroRead, ro.ret)
			}
		}
	}
	for _, ro := range r.ops {
		if !ro.acked && ro.kind == Write && !observed[ro.value] {
			continue
		}
		if !ro.acked && ro.kind == Trim && lastZeroRead < ro.call {
			continue
		}
		client := 0
		if ro.op >= 0 {
			client = ro.op // porcupine uses it only to draw
		}
		history = append(history, porcupine.Operation{
			ClientId: client,
			Input:    regInput{write: ro.kind != Read, value: ro.value},
			Call:     ro.call,
			Return:   ro.ret,
		})
		src = append(src, ro)
	}
	return history, src
}

func (r *register) firstRead() int64 {
	first := int64(math.MaxInt64)
	for _, ro := range r.ops {
		if ro.kind == Read {
			first = min(first, ro.call)
		}
	}
	return first
}

// describe says who did ro, when, and with what value.
func (r *register) describe(ro regOp, ops []Op) string {
	if ro.op < 0 {
		return "the final read-back"
	}
	op := ops[ro.op]
	var b strings.Builder
	fmt.Fprintf(&b, "client %d %s (op %d) [%v, ", op.Client, op.Kind, ro.op, op.Call)
	if op.Outcome == Pending {
		b.WriteString("pending]")
	} else {
		fmt.Fprintf(&b, "%v] %s", op.Return, op.Outcome)
	}
	switch {
	case ro.kind == Write && ro.value > 0:
		t := r.tags[ro.value-1]
		fmt.Fprintf(&b, " tag op %#x seq %d", t.Op, t.Seq)
	case ro.kind == Read && ro.value > 0:
		t := r.tags[ro.value-1]
		fmt.Fprintf(&b, " saw tag op %#x seq %d", t.Op, t.Seq)
	case ro.kind == Read && ro.value == zeroValue:
		b.WriteString(" saw zero")
	}
	return b.String()
}

// explain says where a register's history stops being linearizable, for
// a violation no simpler rule explained: porcupine's longest linearizable
// prefix, and the earliest-returning operation outside it, which no order
// of the others could place.
func (r *register) explain(ops []Op, history []porcupine.Operation, src []regOp, timeout time.Duration) (int64, string) {
	_, info := porcupine.CheckOperationsVerbose(registerModel, history, timeout)
	var longest []int
	for _, partition := range info.PartialLinearizations() {
		for _, l := range partition {
			if len(l) > len(longest) {
				longest = l
			}
		}
	}
	placed := make([]bool, len(history))
	for _, i := range longest {
		placed[i] = true
	}
	stuck := -1
	for i := range history {
		if !placed[i] && (stuck < 0 || history[i].Return < history[stuck].Return) {
			stuck = i
		}
	}
	if stuck < 0 {
		return r.firstRead(), fmt.Sprintf("not linearizable (%d operations)", len(history))
	}
	held := "the initial zero"
	for _, i := range longest {
		if src[i].kind != Read {
			held = r.describe(src[i], ops)
		}
	}
	return src[stuck].call, fmt.Sprintf("not linearizable: %s cannot be placed after %d of %d operations, the last write or trim placed being %s",
		r.describe(src[stuck], ops), len(longest), len(history), held)
}

func describeObserved(obs Observed) string {
	switch obs.Content {
	case Zero:
		return "zero"
	case Valid:
		return fmt.Sprintf("a block of client %d op %d for volume %d block %d", obs.Tag.Client, obs.Tag.Op, obs.Tag.Volume, obs.Tag.Block)
	}
	return "corrupt content"
}
