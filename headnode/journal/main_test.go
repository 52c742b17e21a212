package journal

import (
	"testing"

	"github.com/ballast-storage/ballast/internal/leakcheck"
)

func TestMain(m *testing.M) {
	leakcheck.Main(m, "ballast/headnode/journal.")
}
