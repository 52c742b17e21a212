package chaos

import (
	"testing"
	"time"
)

// steady appends ops on vol that succeed every 10 ms over [from, to), each
// taking 2 ms, from one client.
func steady(ops []Op, vol string, from, to time.Duration) []Op {
	for t := from; t < to; t += 10 * time.Millisecond {
		ops = append(ops, Op{Volume: vol, Kind: Read, Count: 1, Call: t, Return: t + 2*time.Millisecond, Outcome: OK})
	}
	return ops
}

func TestUnavailability(t *testing.T) {
	s := time.Second
	var ops []Op
	ops = steady(ops, "a", 0, 10*s)
	ops = steady(ops, "b", 0, 10*s)
	// Volume a stalls at 10 s: calls fail fast and are retried for 3 s.
	for t := 10 * s; t < 13*s; t += 100 * time.Millisecond {
		ops = append(ops, Op{Volume: "a", Kind: Write, Count: 1, Call: t, Return: t + 90*time.Millisecond, Outcome: Failed})
	}
	ops = steady(ops, "a", 13*s, 100*s)
	// Volume b's one call hangs from 10 s to 15 s.
	ops = append(ops, Op{Volume: "b", Kind: Write, Count: 1, Call: 10 * s, Return: 15 * s, Outcome: OK})
	ops = steady(ops, "b", 15*s, 100*s)
	// Volume c's call never returns, from 90 s.
	ops = steady(ops, "c", 0, 90*s)
	ops = append(ops, Op{Volume: "c", Kind: Write, Count: 1, Call: 90 * s, Outcome: Pending})

	faults := []Fault{
		{Kind: "kill", Target: "hn1", Start: 9 * s, End: 10 * s},        // both a and b stall: b's 5 s is the worst
		{Kind: "kill", Target: "hn2", Start: 50 * s, End: 51 * s},       // nothing stalls
		{Kind: "pause", Target: "hn3", Start: 11 * s, End: 11 * s},      // instantaneous, inside the stalls
		{Kind: "cut-network", Target: "s1", Start: 85 * s, End: 86 * s}, // c never came back
		{Kind: "loss", Target: "s2", Start: 20 * s, End: 25 * s},        // only the tail of the window
	}
	got := Unavailability(ops, faults)
	want := map[string]Quantiles{
		"kill":  {Count: 2, P50: 2 * time.Millisecond, P99: 5 * s, Max: 5 * s},
		"pause": {Count: 1, P50: 5 * s, P99: 5 * s, Max: 5 * s},
		// From c's pending call at 90 s to the end of the history, 100 s.
		"cut-network": {Count: 1, P50: 10 * s, P99: 10 * s, Max: 10 * s},
		"loss":        {Count: 1, P50: 2 * time.Millisecond, P99: 2 * time.Millisecond, Max: 2 * time.Millisecond},
	}
	for kind, w := range want {
		g := got[kind]
		// The healthy value is one call's latency; allow the steady
		// grid's slack around it.
		if g.Count != w.Count || !near(g.P50, w.P50) || !near(g.P99, w.P99) || !near(g.Max, w.Max) {
			t.Errorf("%s: got %+v, want %+v", kind, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("kinds %v", got)
	}
	if q := Unavailability(ops, nil); len(q) != 0 {
		t.Errorf("no faults: %v", q)
	}
}

func near(a, b time.Duration) bool {
	d := a - b
	return d > -10*time.Millisecond && d < 10*time.Millisecond
}

func TestQuantiles(t *testing.T) {
	var vs []time.Duration
	for i := 1; i <= 100; i++ {
		vs = append(vs, time.Duration(i)*time.Millisecond)
	}
	q := quantiles(vs)
	if q.Count != 100 || q.P50 != 50*time.Millisecond || q.P99 != 99*time.Millisecond || q.Max != 100*time.Millisecond {
		t.Errorf("%+v", q)
	}
	if q := quantiles([]time.Duration{7}); q.P50 != 7 || q.P99 != 7 || q.Max != 7 {
		t.Errorf("%+v", q)
	}
}
