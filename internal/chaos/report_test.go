package chaos

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"
	"time"
)

func TestSummaryLine(t *testing.T) {
	var s Summary
	s.Add(1, nil, Result{AckedWrites: 100, Lost: 1, Violations: 2, StaleReads: 3}, nil)
	s.Add(2, nil, Result{AckedWrites: 20, Violations: 1}, nil)
	want := "chaos: 2 schedules, 120 acknowledged writes, 1 lost, 3 linearizability violations, 3 stale reads"
	if got := s.Line(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// The shape scripts parse.
	re := regexp.MustCompile(`^chaos: (\d+) schedules, (\d+) acknowledged writes, (\d+) lost, (\d+) linearizability violations, (\d+) stale reads$`)
	if !re.MatchString((Summary{}).Line()) {
		t.Errorf("the zero summary's line %q", (Summary{}).Line())
	}
}

func TestSummaryFailed(t *testing.T) {
	tests := []struct {
		r    Result
		want bool
	}{
		{Result{AckedWrites: 5}, false},
		{Result{StaleReads: 1, Violations: 1}, true},
		{Result{Lost: 1}, true},
		{Result{CorruptReads: 1, Violations: 1}, true},
		{Result{TimedOut: 3}, false},
	}
	for _, tt := range tests {
		var s Summary
		s.Add(7, nil, tt.r, nil)
		if s.Failed() != tt.want {
			t.Errorf("%+v: failed %v", tt.r, s.Failed())
		}
	}
}

func TestSummaryJSON(t *testing.T) {
	var s Summary
	steps := Plan(3, time.Minute, testTopo)
	s.Add(3, steps, Result{Operations: 10, AckedWrites: 4, UnknownWrites: 1, Lost: 1, Violations: 1, Details: []string{"v block 1: lost"}},
		map[string]Quantiles{"kill": {Count: 2, P50: 1500 * time.Millisecond, P99: 4 * time.Second, Max: 4 * time.Second}})
	s.Add(4, nil, Result{Operations: 5, AckedWrites: 2, StaleReads: 1, Violations: 1},
		map[string]Quantiles{"kill": {Count: 2, P50: 500 * time.Millisecond, P99: 6 * time.Second, Max: 6 * time.Second}})
	s.Duration = 2 * time.Minute

	if len(s.Steps) != len(steps) || len(steps) == 0 {
		t.Fatalf("%d steps kept of %d", len(s.Steps), len(steps))
	}
	if q := s.Unavailability["kill"]; q.Count != 4 || q.P50 != time.Second || q.P99 != 6*time.Second || q.Max != 6*time.Second {
		t.Errorf("merged kill unavailability %+v", q)
	}

	path := filepath.Join(t.TempDir(), "chaos.json")
	if err := s.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSummary(path)
	if err != nil {
		t.Fatal(err)
	}
	s.unavail = nil // merge state, not part of the file
	if !reflect.DeepEqual(back, s) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, s)
	}

	// The file's field names and units, which scripts rely on.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]any{
		"schedules": 2.0, "acknowledged_writes": 6.0, "lost": 1.0, "linearizability_violations": 2.0,
		"stale_reads": 1.0, "operations": 15.0, "unknown_writes": 1.0, "duration_ms": 120000.0, "failed": true,
		"line": s.Line(),
	} {
		if m[field] != want {
			t.Errorf("%s = %v, want %v", field, m[field], want)
		}
	}
	runs := m["runs"].([]any)
	if len(runs) != 2 || runs[0].(map[string]any)["seed"] != 3.0 || runs[1].(map[string]any)["stale_reads"] != 1.0 {
		t.Errorf("runs = %v", runs)
	}
	kill := m["unavailability"].(map[string]any)["kill"].(map[string]any)
	if kill["p99_ms"] != 6000.0 || kill["count"] != 4.0 {
		t.Errorf("unavailability.kill = %v", kill)
	}
}
