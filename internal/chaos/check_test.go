package chaos

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// Handmade histories on volume "v". Times are in milliseconds.

func ms_(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func tagOf(op uint64, block uint64) Tag { return Tag{Client: uint32(op >> 8), Op: op, Block: block} }

// wr is a one-block write of tag op to block b.
func wr(op uint64, b uint64, call, ret int, out Outcome) Op {
	o := Op{Client: int(op >> 8), Volume: "v", Kind: Write, Block: b, Count: 1, Wrote: []Tag{tagOf(op, b)}, Call: ms_(call), Return: ms_(ret), Outcome: out}
	if out == Pending {
		o.Return = 0
	}
	return o
}

func trim(b uint64, call, ret int, out Outcome) Op {
	o := Op{Client: 7, Volume: "v", Kind: Trim, Block: b, Count: 1, Call: ms_(call), Return: ms_(ret), Outcome: out}
	if out == Pending {
		o.Return = 0
	}
	return o
}

// rd is a one-block read of block b that saw the write op (0: zero).
func rd(b uint64, saw uint64, call, ret int) Op {
	return Op{Client: 9, Volume: "v", Kind: Read, Block: b, Count: 1, Saw: []Observed{see(saw, b)}, Call: ms_(call), Return: ms_(ret), Outcome: OK}
}

func see(op uint64, b uint64) Observed {
	if op == 0 {
		return Observed{Content: Zero}
	}
	return Observed{Content: Valid, Tag: tagOf(op, b)}
}

// img is a final image of "v" whose block i holds the write ops[i] (0: zero).
func img(ops ...uint64) []FinalImage {
	im := FinalImage{Volume: "v"}
	for b, op := range ops {
		im.Blocks = append(im.Blocks, see(op, uint64(b)))
	}
	return []FinalImage{im}
}

var corrupt = Observed{Content: Corrupt}

func TestCheck(t *testing.T) {
	tests := []struct {
		name  string
		ops   []Op
		final []FinalImage
		// want: lost, violations, stale reads, corrupt reads
		lost, violations, stale, corrupt int
		explain                          string // in the first detail
	}{
		{
			name:  "sequential write, read, final",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), rd(0, 0x101, 20, 30)},
			final: img(0x101),
		},
		{
			name:  "a read before any write sees zero",
			ops:   []Op{rd(0, 0, 0, 5), wr(0x101, 0, 10, 20, OK)},
			final: img(0x101),
		},
		{
			name:  "lost write: the final image holds the older value",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, OK)},
			final: img(0x101),
			lost:  1, violations: 1,
		},
		{
			name:  "lost write: the final image is zero",
			ops:   []Op{wr(0x101, 0, 0, 10, OK)},
			final: img(0),
			lost:  1, violations: 1,
		},
		{
			name:  "stale read",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, OK), rd(0, 0x101, 40, 50)},
			final: img(0x102),
			stale: 1, violations: 1,
		},
		{
			name:  "stale zero after an acknowledged write",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), rd(0, 0, 20, 30)},
			final: img(0x101),
			stale: 1, violations: 1,
		},
		{
			name: "overlapping writes: either may win",
			ops: []Op{
				wr(0x101, 0, 0, 30, OK), wr(0x201, 0, 10, 20, OK),
				rd(0, 0x101, 40, 50),
			},
			final: img(0x101),
		},
		{
			name: "overlapping writes: the other wins",
			ops: []Op{
				wr(0x101, 0, 0, 30, OK), wr(0x201, 0, 10, 20, OK),
				rd(0, 0x201, 40, 50),
			},
			final: img(0x201),
		},
		{
			name: "a read concurrent with a write sees either",
			ops: []Op{
				wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 40, OK),
				rd(0, 0x101, 25, 30), rd(0, 0x102, 26, 35), rd(0, 0x102, 50, 60),
			},
			final: img(0x102),
		},
		{
			name: "concurrent writes seen in an order no linearization allows",
			// Neither write was acknowledged before any read began, so no
			// read is stale; but w1, then w2, then w1 again is impossible.
			ops: []Op{
				wr(0x101, 0, 0, 100, OK), wr(0x201, 0, 0, 100, OK),
				rd(0, 0x101, 10, 20), rd(0, 0x201, 30, 40), rd(0, 0x101, 50, 60),
			},
			final:      img(0x101),
			violations: 1,
			explain:    "v block 0: not linearizable: client 9 read (op 4) [50ms, 60ms] ok saw tag op 0x101 seq 0 cannot be placed after 4 of 6 operations, the last write or trim placed being client 2 write (op 1)",
		},
		{
			name:       "a read sees a write that had not begun",
			ops:        []Op{rd(0, 0x101, 0, 10), wr(0x101, 0, 20, 30, OK)},
			final:      img(0x101),
			violations: 1,
		},
		{
			name:  "failed write seen",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, Failed), rd(0, 0x102, 40, 50)},
			final: img(0x102),
		},
		{
			name:  "failed write not seen",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, Failed), rd(0, 0x101, 40, 50)},
			final: img(0x101),
		},
		{
			name:  "failed write takes effect after it returned",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, Failed), rd(0, 0x101, 40, 50), rd(0, 0x102, 60, 70)},
			final: img(0x102),
		},
		{
			name:  "pending write seen only by the final read-back",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 0, Pending)},
			final: img(0x102),
		},
		{
			name:  "pending write never seen",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 0, Pending)},
			final: img(0x101),
		},
		{
			name: "a failed write seen, then unseen",
			// It may land late or never, but not land and then vanish.
			ops: []Op{
				wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, Failed),
				rd(0, 0x102, 40, 50), rd(0, 0x101, 60, 70),
			},
			final:      img(0x101),
			violations: 1, stale: 0,
		},
		{
			// The model allows a write whose call failed to land at any time
			// after its call: the error may come before the data reaches a
			// replica that later wins. So this is not a loss.
			name: "a failed write may land after a later acknowledged one",
			ops: []Op{
				wr(0x101, 0, 0, 10, Failed), wr(0x102, 0, 20, 30, OK),
			},
			final: img(0x101),
		},
		{
			name: "but once seen after the acknowledged one, it stays",
			ops: []Op{
				wr(0x101, 0, 0, 10, Failed), wr(0x102, 0, 20, 30, OK), rd(0, 0x101, 40, 50), rd(0, 0x102, 60, 70),
			},
			final:      img(0x101),
			violations: 1,
		},
		{
			name:  "trim then read zero",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, OK), rd(0, 0, 40, 50)},
			final: img(0),
		},
		{
			name:  "read after an acknowledged trim sees the old write",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, OK), rd(0, 0x101, 40, 50)},
			final: img(0),
			stale: 1, violations: 1,
		},
		{
			name:  "trim lost",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, OK)},
			final: img(0x101),
			lost:  1, violations: 1,
		},
		{
			name:  "failed trim may have taken effect",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, Failed), rd(0, 0, 40, 50)},
			final: img(0),
		},
		{
			name:  "failed trim may not have",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, Failed), rd(0, 0x101, 40, 50)},
			final: img(0x101),
		},
		{
			name:  "write after trim",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), trim(0, 20, 30, OK), wr(0x102, 0, 40, 50, OK), rd(0, 0x102, 60, 70)},
			final: img(0x102),
		},
		{
			name:       "corrupt live read",
			ops:        []Op{wr(0x101, 0, 0, 10, OK), {Client: 9, Volume: "v", Kind: Read, Count: 1, Saw: []Observed{corrupt}, Call: ms_(20), Return: ms_(30)}},
			final:      img(0x101),
			violations: 1, corrupt: 1,
		},
		{
			name:  "corrupt final block",
			ops:   []Op{wr(0x101, 0, 0, 10, OK)},
			final: []FinalImage{{Volume: "v", Blocks: []Observed{corrupt}}},
			lost:  1, violations: 1, corrupt: 1,
		},
		{
			name:       "a read of a value nobody wrote",
			ops:        []Op{wr(0x101, 0, 0, 10, OK), rd(0, 0x999, 20, 30)},
			final:      img(0x101),
			violations: 1,
		},
		{
			name: "a write that landed on the wrong block",
			// Block 1 holds the tag written to block 0.
			ops:   []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 1, 0, 10, OK)},
			final: []FinalImage{{Volume: "v", Blocks: []Observed{see(0x101, 0), see(0x101, 0)}}},
			lost:  1, violations: 1,
		},
		{
			name:  "a block nobody wrote is not zero",
			ops:   []Op{wr(0x101, 0, 0, 10, OK)},
			final: img(0x101, 0, 0x555),
			lost:  1, violations: 1,
		},
		{
			name:  "failed reads and flushes carry nothing",
			ops:   []Op{wr(0x101, 0, 0, 10, OK), {Volume: "v", Kind: Read, Count: 1, Call: ms_(20), Return: ms_(30), Outcome: Failed}, {Volume: "v", Kind: Flush, Call: ms_(20), Return: ms_(30)}},
			final: img(0x101),
		},
		{
			name: "a volume without a final image is checked without one",
			ops:  []Op{wr(0x101, 0, 0, 10, OK), rd(0, 0x101, 20, 30)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Check(tt.ops, tt.final, 10*time.Second)
			if r.Lost != tt.lost || r.Violations != tt.violations || r.StaleReads != tt.stale || r.CorruptReads != tt.corrupt || r.TimedOut != 0 {
				t.Errorf("lost %d violations %d stale %d corrupt %d timed out %d; want %d %d %d %d 0\n%s",
					r.Lost, r.Violations, r.StaleReads, r.CorruptReads, r.TimedOut,
					tt.lost, tt.violations, tt.stale, tt.corrupt, strings.Join(r.Details, "\n"))
			}
			if (tt.lost+tt.violations > 0) != (len(r.Details) > 0) {
				t.Errorf("details %q", r.Details)
			}
			if tt.explain != "" && (len(r.Details) == 0 || !strings.Contains(r.Details[0], tt.explain)) {
				t.Errorf("details %q, want %q", r.Details, tt.explain)
			}
		})
	}
}

func TestCheckMultiBlock(t *testing.T) {
	// One write of four blocks over older single-block writes; the final
	// image kept the new write on blocks 0, 1 and 3 but not on 2.
	ops := []Op{
		wr(0x101, 0, 0, 10, OK), wr(0x102, 1, 0, 10, OK), wr(0x103, 2, 0, 10, OK), wr(0x104, 3, 0, 10, OK),
		{Client: 2, Volume: "v", Kind: Write, Block: 0, Count: 4, Call: ms_(20), Return: ms_(30), Outcome: OK,
			Wrote: []Tag{tagOf(0x201, 0), tagOf(0x201, 1), tagOf(0x201, 2), tagOf(0x201, 3)}},
		{Client: 9, Volume: "v", Kind: Read, Block: 0, Count: 4, Call: ms_(40), Return: ms_(50), Outcome: OK,
			Saw: []Observed{see(0x201, 0), see(0x201, 1), see(0x201, 2), see(0x104, 3)}},
	}
	r := Check(ops, img(0x201, 0x201, 0x103, 0x201), time.Second)
	if r.Operations != 6 || r.AckedWrites != 5 || r.Lost != 1 || r.StaleReads != 1 || r.Violations != 2 {
		t.Errorf("%+v", r)
	}
	if !strings.Contains(strings.Join(r.Details, "\n"), "v block 2: lost") {
		t.Errorf("details do not name block 2 as lost: %q", r.Details)
	}
}

func TestCheckCounts(t *testing.T) {
	ops := []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 0, 20, 30, Failed), wr(0x103, 0, 40, 0, Pending), trim(0, 50, 60, OK), rd(0, 0, 70, 80)}
	r := Check(ops, img(0), time.Second)
	if r.Operations != 5 || r.AckedWrites != 1 || r.UnknownWrites != 2 {
		t.Errorf("%+v", r)
	}
	// The pending write may land after the trim: zero and 0x103 are both
	// right at the end.
	if r := Check(ops, img(0x103), time.Second); r.Violations != 0 || r.Lost != 0 {
		t.Errorf("%+v", r)
	}
}

// TestCheckRandomLinearizable builds histories of a correct register store:
// every op takes effect at a point inside its interval, intervals overlap,
// some writes and trims fail whether or not they took effect. Check must
// accept all of them; and then catch one acknowledged write being undone.
func TestCheckRandomLinearizable(t *testing.T) {
	detected := 0
	for seed := range uint64(25) {
		rng := rand.New(rand.NewPCG(seed, 1))
		const blocks = 4
		var ops []Op
		state := [blocks]uint64{}
		for i := range 300 {
			point := 100 + i*10 // the op's linearization point
			call := point - rng.IntN(40)
			ret := point + 1 + rng.IntN(40)
			b := uint64(rng.IntN(blocks))
			out := OK
			if rng.IntN(6) == 0 {
				out = Failed
				if rng.IntN(3) == 0 {
					out = Pending
				}
			}
			// A failed call took effect or not: both are correct.
			effect := out == OK || rng.IntN(2) == 0
			switch rng.IntN(10) {
			case 0:
				ops = append(ops, trim(b, call, ret, out))
				if effect {
					state[b] = 0
				}
			case 1, 2, 3, 4:
				tag := uint64(0x100 + i)
				ops = append(ops, wr(tag, b, call, ret, out))
				if effect {
					state[b] = tag
				}
			default:
				ops = append(ops, rd(b, state[b], call, ret))
			}
		}
		final := img(state[:]...)
		r := Check(ops, final, 10*time.Second)
		if r.Violations != 0 || r.Lost != 0 || r.StaleReads != 0 || r.TimedOut != 0 {
			t.Fatalf("seed %d: a correct history rejected: %+v\n%s", seed, r, strings.Join(r.Details, "\n"))
		}

		// The first acknowledged write of block 0, when an acknowledged
		// write or trim began after it returned, must not be the final
		// value: put it back and the block must count as lost.
		var first *Op
		for i := range ops {
			op := &ops[i]
			if op.Block != 0 || op.Outcome != OK {
				continue
			}
			if first == nil && op.Kind == Write {
				first = op
				continue
			}
			if first != nil && op.Kind != Read && op.Call > first.Return {
				bad := img(state[:]...)
				bad[0].Blocks[0] = Observed{Content: Valid, Tag: first.Wrote[0]}
				r := Check(ops, bad, 10*time.Second)
				if r.Lost != 1 || r.Violations < 1 {
					t.Fatalf("seed %d: block 0 reverted to %+v: lost %d, violations %d", seed, first.Wrote[0], r.Lost, r.Violations)
				}
				detected++
				break
			}
		}
	}
	t.Logf("%d of 25 histories reverted a block, all caught", detected)
	if detected < 20 {
		t.Errorf("only %d of 25 histories could revert a block", detected)
	}
}

func TestCheckDetailsBounded(t *testing.T) {
	var ops []Op
	var blocks []uint64
	for b := range uint64(80) {
		ops = append(ops, wr(0x100+b, b, 0, 10, OK))
		blocks = append(blocks, 0)
	}
	r := Check(ops, img(blocks...), time.Second)
	if r.Lost != 80 || len(r.Details) != maxDetails || !strings.HasPrefix(r.Details[maxDetails-1], "... and") {
		t.Errorf("lost %d, %d details, last %q", r.Lost, len(r.Details), r.Details[len(r.Details)-1])
	}
}

func TestCheckManyVolumesFast(t *testing.T) {
	// Thousands of registers, some with many concurrent failed writes
	// nobody read: checked well inside the test budget.
	var ops []Op
	var images []FinalImage
	for v := range 4 {
		vol := fmt.Sprintf("v%d", v)
		im := FinalImage{Volume: vol}
		for b := range uint64(500) {
			tag := Tag{Client: 1, Op: uint64(v)<<32 | b, Volume: uint32(v), Block: b}
			ops = append(ops, Op{Client: 1, Volume: vol, Kind: Write, Block: b, Count: 1, Wrote: []Tag{tag}, Call: ms_(0), Return: ms_(10), Outcome: OK})
			im.Blocks = append(im.Blocks, Observed{Content: Valid, Tag: tag})
		}
		for i := range 200 {
			tag := Tag{Client: 2, Op: uint64(v)<<32 | 1<<20 | uint64(i), Volume: uint32(v)}
			ops = append(ops, Op{Client: 2, Volume: vol, Kind: Write, Block: 0, Count: 1, Wrote: []Tag{tag}, Call: ms_(20 + i), Return: ms_(25 + i), Outcome: Failed})
		}
		images = append(images, im)
	}
	start := time.Now()
	r := Check(ops, images, 5*time.Second)
	if r.Violations != 0 || r.Lost != 0 || r.TimedOut != 0 {
		t.Fatalf("%+v", r)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("checking took %v", d)
	}
}

// TestCheckRandomClients is a larger correct history: four clients issuing
// reads, writes and trims of one to four blocks back to back, with the
// occasional very slow call, one call in ten failing whether or not it took
// effect. Each call takes effect at the midpoint of its interval.
func TestCheckRandomClients(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	const blocks, clients = 32, 4
	var ops []Op
	next := make([]int, clients) // each client's next call, in µs
	for n := range 4000 {
		c := rng.IntN(clients)
		call := next[c]
		lat := 1 + rng.IntN(2000)
		if rng.IntN(200) == 0 {
			lat = 20000 + rng.IntN(20000)
		}
		next[c] = call + lat + rng.IntN(50)
		count := 1 + rng.IntN(4)
		b := uint64(rng.IntN(blocks - count + 1))
		op := Op{Client: c, Volume: "v", Block: b, Count: count, Outcome: OK,
			Call: time.Duration(call) * time.Microsecond, Return: time.Duration(call+lat) * time.Microsecond}
		if rng.IntN(10) == 0 {
			op.Outcome = Failed
		}
		switch p := rng.IntN(10); {
		case p < 5:
			op.Kind = Write
			for i := range count {
				op.Wrote = append(op.Wrote, Tag{Client: uint32(c), Op: uint64(n), Block: b + uint64(i)})
			}
		case p < 9:
			op.Kind = Read
		default:
			op.Kind = Trim
		}
		ops = append(ops, op)
	}
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	mid := func(i int) time.Duration { return (ops[i].Call + ops[i].Return) / 2 }
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(mid(a), mid(b)) })
	var state [blocks]Observed
	for _, i := range order {
		op := &ops[i]
		effect := op.Outcome == OK || rng.IntN(2) == 0
		for j := range op.Count {
			b := op.Block + uint64(j)
			switch {
			case op.Kind == Write && effect:
				state[b] = Observed{Content: Valid, Tag: op.Wrote[j]}
			case op.Kind == Trim && effect:
				state[b] = Observed{}
			case op.Kind == Read && op.Outcome == OK:
				op.Saw = append(op.Saw, state[b])
			}
		}
	}
	start := time.Now()
	r := Check(ops, []FinalImage{{Volume: "v", Blocks: state[:]}}, 10*time.Second)
	if r.Violations != 0 || r.Lost != 0 || r.StaleReads != 0 || r.TimedOut != 0 {
		t.Fatalf("a correct history rejected: %+v\n%s", r, strings.Join(r.Details, "\n"))
	}
	t.Logf("%d operations on %d blocks checked in %v", len(ops), blocks, time.Since(start))
}

func TestCheckShortImage(t *testing.T) {
	// A read-back shorter than the blocks written is the harness's fault:
	// said in the details, not counted as a loss.
	ops := []Op{wr(0x101, 0, 0, 10, OK), wr(0x102, 5, 0, 10, OK)}
	r := Check(ops, img(0x101), time.Second)
	if r.Lost != 0 || r.Violations != 0 || len(r.Details) != 1 || !strings.Contains(r.Details[0], "v block 5: written but beyond") {
		t.Errorf("%+v", r)
	}
}
