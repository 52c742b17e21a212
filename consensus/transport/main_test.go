package transport

import (
	"testing"

	"github.com/ballast-storage/ballast/internal/leakcheck"
)

// TestMain fails the run if any of the package's goroutines outlive the
// tests: every test closes what it starts, and Close must end them all.
func TestMain(m *testing.M) {
	leakcheck.Main(m, "ballast/consensus/transport.(*")
}
