package consensus

import (
	"testing"

	"github.com/ballast-storage/ballast/internal/leakcheck"
)

// TestMain fails the run if raft's or the package's goroutines outlive the
// tests: every test closes its nodes, and Close must end them all,
// including the goroutines waiting on raft futures for a caller that gave
// up.
func TestMain(m *testing.M) {
	leakcheck.Main(m, "github.com/hashicorp/raft.", "ballast/consensus.", "ballast/consensus/")
}
