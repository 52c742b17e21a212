package chaos

import "time"

// FinalImage is the read-back of a whole volume after the faults healed:
// Blocks[i] is block i.
type FinalImage struct {
	Volume string
	Blocks []Observed
}

// Result is what Check found in one run's history.
type Result struct {
	Operations, AckedWrites, UnknownWrites int
	Lost                                   int
	Violations                             int
	StaleReads                             int
	CorruptReads                           int
	Details                                []string
}

// Check checks a run's history and final images.
func Check(ops []Op, final []FinalImage, timeout time.Duration) Result {
	return Result{Operations: len(ops)}
}
