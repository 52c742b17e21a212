package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs the tests and then, if they passed, waits up to 5 s for the
// goroutines whose stacks contain any of markers (and not a test's own
// frames) to end; it exits 1, printing their stacks, if some do not.
// Call it from TestMain.
func Main(m *testing.M, markers ...string) {
	code := m.Run()
	if code == 0 {
		if leaked := Wait(5*time.Second, markers...); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// Wait returns the stacks of the goroutines still running code that
// matches a marker after timeout, or "" once there are none.
func Wait(timeout time.Duration, markers ...string) string {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if ours(g, markers) && !strings.Contains(g, "testing.tRunner") && !strings.Contains(g, "TestMain") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ours(stack string, markers []string) bool {
	for _, m := range markers {
		if strings.Contains(stack, m) {
			return true
		}
	}
	return false
}
