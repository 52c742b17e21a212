package driver

import (
	"os"
	"testing"

	"github.com/ballast-storage/ballast/internal/leakcheck"
)

// TestMain runs a node process when asked to (see runNodeProcess), and
// otherwise the tests, failing the run if the package's, raft's or
// consensus's goroutines outlive them: closing a rack must end them all.
func TestMain(m *testing.M) {
	if os.Getenv(nodeEnv) != "" {
		os.Exit(runNodeProcess())
	}
	leakcheck.Main(m, "ballast/txn/driver.", "github.com/hashicorp/raft.", "ballast/consensus.", "ballast/consensus/")
}
