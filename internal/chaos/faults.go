package chaos

import (
	"cmp"
	"slices"
	"time"
)

// Fault is one fault as it happened in a run: End is when it was healed,
// or Start for an instantaneous one. Kind groups faults in the report (the
// Action's name is the natural choice).
type Fault struct {
	Kind       string
	Target     string
	Start, End time.Duration
}

// Quantiles summarise the unavailability measured for one fault kind.
type Quantiles struct {
	Count         int
	P50, P99, Max time.Duration
}

// unavailabilityTail is how long after a fault healed a stall still counts
// against it: recovery (a new primary's lease, a rebuild) takes time.
const unavailabilityTail = 30 * time.Second

// stall is an interval during which a volume had a call outstanding and
// none completed OK.
type stall struct{ from, to time.Duration }

// Unavailability measures, for each fault, the longest stall of any volume
// overlapping [Start, End+30s], and returns those values' quantiles per
// fault Kind. A fault during which no volume stalled counts as zero.
//
// A volume's stalls are the gaps between its successive OK completions,
// each starting at the first call still outstanding after the previous
// completion: the volume answered at that completion, and was being asked
// again from that call. Calls that fail fast and are retried therefore
// extend a stall rather than end it. A call that never returned stalls its
// volume until the end of the history.
func Unavailability(ops []Op, faults []Fault) map[string]Quantiles {
	stalls := volumeStalls(ops)
	values := map[string][]time.Duration{}
	for _, f := range faults {
		lo, hi := f.Start, max(f.End, f.Start)+unavailabilityTail
		var worst time.Duration
		for _, ss := range stalls {
			for _, s := range ss {
				if s.to >= lo && s.from <= hi {
					worst = max(worst, s.to-s.from)
				}
			}
		}
		values[f.Kind] = append(values[f.Kind], worst)
	}
	out := make(map[string]Quantiles, len(values))
	for kind, vs := range values {
		out[kind] = quantiles(vs)
	}
	return out
}

// volumeStalls returns each volume's stalls, in time order.
func volumeStalls(ops []Op) map[string][]stall {
	var end time.Duration
	byVolume := map[string][]Op{}
	for _, op := range ops {
		end = max(end, op.Call, op.Return)
		byVolume[op.Volume] = append(byVolume[op.Volume], op)
	}
	out := map[string][]stall{}
	for vol, vops := range byVolume {
		// The OK completions, in order; the end of the history closes the
		// last gap if a call is still outstanding then.
		var oks []time.Duration
		for _, op := range vops {
			if op.Outcome == OK {
				oks = append(oks, op.Return)
			}
		}
		slices.Sort(oks)
		oks = append(oks, end)
		// The calls sorted by call time. A call that returned by the
		// start of a gap can be outstanding in no later gap either, so one
		// cursor skipping them finds, for each gap, the earliest call still
		// outstanding in it.
		type span struct{ call, ret time.Duration }
		spans := make([]span, 0, len(vops))
		for _, op := range vops {
			ret := op.Return
			if op.Outcome == Pending {
				ret = end
			}
			spans = append(spans, span{op.Call, ret})
		}
		slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.call, b.call) })
		i := 0
		prev := time.Duration(-1) // before the first call
		for _, c := range oks {
			if c <= prev {
				continue
			}
			for i < len(spans) && spans[i].ret <= prev {
				i++
			}
			if i < len(spans) && spans[i].call <= c {
				if from := max(spans[i].call, prev); c > from {
					out[vol] = append(out[vol], stall{from, c})
				}
			}
			prev = c
		}
	}
	return out
}

// quantiles are nearest-rank quantiles of vs.
func quantiles(vs []time.Duration) Quantiles {
	if len(vs) == 0 {
		return Quantiles{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Quantiles{Count: len(s), P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}
