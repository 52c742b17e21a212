package chaos

import "time"

// Fault is one fault as it happened in a run: End is when it was healed,
// or Start for an instantaneous one.
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

// Unavailability measures, per fault kind, how long volumes stalled.
func Unavailability(ops []Op, faults []Fault) map[string]Quantiles {
	return map[string]Quantiles{}
}
