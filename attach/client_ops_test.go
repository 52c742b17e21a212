package attach

import "testing"

func TestOpTrackerKnowsTheOldestWithoutAnAnswer(t *testing.T) {
	var tr opTracker
	step := func(wantOp, wantOldest uint64) {
		t.Helper()
		op, oldest := tr.start()
		if op != wantOp || oldest != wantOldest {
			t.Fatalf("start: op %d oldest %d, want %d and %d", op, oldest, wantOp, wantOldest)
		}
	}
	step(1, 1)
	step(2, 1)
	step(3, 1)
	tr.finish(2)
	step(4, 1) // 1 still waits
	tr.finish(1)
	step(5, 3) // 2 answered already
	tr.finish(3)
	tr.finish(4)
	tr.finish(5)
	step(6, 6) // nothing waits but the new one
}

func TestWritersAreNamedApart(t *testing.T) {
	seen := map[uint64]bool{}
	for range 100 {
		w := newWriter()
		if w == 0 || seen[w] {
			t.Fatalf("writer name %d repeats or is 0", w)
		}
		seen[w] = true
	}
}
