package driver

import (
	"testing"
	"time"
)

// The clock never goes back and never repeats, whatever the wall clock
// does.
func TestClock(t *testing.T) {
	wall := time.Unix(100, 0)
	c := NewClock(func() time.Time { return wall })
	a := c.Now()
	wall = wall.Add(-time.Hour) // the wall clock steps back
	b := c.Now()
	if b <= a {
		t.Fatalf("after the wall clock stepped back: %d, then %d", a, b)
	}
	wall = time.Unix(200, 0)
	if e := c.Now(); e != 200e9 {
		t.Fatalf("with the wall clock ahead again: %d, want %d", e, int64(200e9))
	}
}
