// Package lint holds tests that keep the module's layout honest: imports
// between its packages point one way (DESIGN.md's layering), and every
// package says in a doc.go what it owns and what it may import.
package lint

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/ballast-storage/ballast"

// allowed lists, for each package of the module, the module packages its
// non-test files may import. A prefix ending in "/" allows a whole tree.
// Packages not listed may import nothing of the module; cmd/ and e2e may
// import anything.
var allowed = map[string][]string{
	"volume":              {"proto/", "txn", "migrate", "internal/clock"},
	"consensus":           {"consensus/logstore", "consensus/transport", "internal/durable"},
	"consensus/transport": {"proto/raftpb"},
	"consensus/logstore":  {"internal/durable"},
	"headnode":            {"consensus", "volume", "internal/", "proto/", "txn", "txn/driver", "migrate", "headnode/blockstore", "headnode/journal", "headnode/ec", "headnode/replica", "headnode/blockcache"},
	"attach":              {"attach/blockdev", "attach/nbd", "attach/nvmetcp", "internal/", "proto/", "volume", "migrate"},
	"attach/nbd":          {"attach/blockdev", "internal/bufpool", "internal/inflight"},
	"attach/nvmetcp":      {"attach/blockdev", "internal/bufpool", "internal/inflight"},
	"bench":               {"attach", "attach/blockdev", "internal/", "proto/"},
	"sled":                {"internal/", "proto/sledpb"},
	"internal/rpc":        {"internal/bufpool"},
	"internal/replwire":   {},
	"internal/sledwire":   {},
	"txn/driver":          {"txn", "consensus", "proto/txnpb"},
	// The head node's block store: its journal, the volume model, leaf
	// utilities and wire types; nothing of the node, its groups or
	// transactions.
	"headnode/blockstore": {"headnode/journal", "volume", "internal/", "proto/"},
	// The head node's block journal: leaf utilities at most. Its crashfs
	// (test support for any package's crash tests) imports nothing.
	"headnode/journal": {"internal/"},
	// Erasure-coded segments' pure logic: no I/O, no state of the node.
	"headnode/ec": {"proto/ballastpb"},
	// The write path's ordering at a primary: no I/O, no state of the node.
	"headnode/replica": {"proto/ballastpb"},
	// The primaries' read cache: a data structure, nothing of the node.
	"headnode/blockcache": {},
	// Test support: nodes on loopback for the packages above consensus.
	"internal/consensustest": {"consensus"},
}

var unrestricted = []string{"cmd/", "e2e"}

// ioFree lists the packages that hold pure logic, driven by the ones that
// do the I/O: they import nothing that reaches a disk, a network, a clock
// or a store, so their tests are deterministic.
var ioFree = []string{"headnode/ec", "headnode/replica"}

// ioImports are the imports that do I/O or read the clock; a prefix ending
// in "/" covers a tree.
var ioImports = []string{"os", "os/", "net", "net/", "syscall", "time", "io/fs", "golang.org/x/sys/",
	"google.golang.org/grpc", "google.golang.org/grpc/", "github.com/cockroachdb/pebble", "github.com/cockroachdb/pebble/",
	"github.com/hashicorp/raft"}

func TestPureCoresDoNoIO(t *testing.T) {
	root := moduleRoot(t)
	fset := token.NewFileSet()
	for _, pkg := range ioFree {
		files, err := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("package %s: no Go files (%v)", pkg, err)
		}
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				ip := strings.Trim(imp.Path.Value, `"`)
				if matchesAny(ip, ioImports) {
					t.Errorf("%s imports %s: it is meant to do no I/O (see internal/lint)", file, ip)
				}
			}
		}
	}
}

func TestImportDirection(t *testing.T) {
	root := moduleRoot(t)
	imports := moduleImports(t, root)
	if len(imports) < 5 {
		t.Fatalf("found only %d packages under %s", len(imports), root)
	}
	for pkg, deps := range imports {
		if matchesAny(pkg, unrestricted) {
			continue
		}
		for _, dep := range deps {
			if !matchesAny(dep, allowed[pkg]) {
				t.Errorf("%s imports %s, which the layering does not allow (see internal/lint)", pkg, dep)
			}
		}
	}
}

func TestEveryPackageHasDocGo(t *testing.T) {
	root := moduleRoot(t)
	for pkg := range moduleImports(t, root) {
		if strings.HasPrefix(pkg, "proto/") || pkg == "internal/lint" {
			continue // generated code; this test package
		}
		if _, err := os.Stat(filepath.Join(root, pkg, "doc.go")); err != nil {
			if pkg == "cmd/ballast" || pkg == "internal/nbdclient" {
				continue // documented in main.go / client.go
			}
			t.Errorf("package %s has no doc.go saying what it owns and may import", pkg)
		}
	}
}

func matchesAny(pkg string, patterns []string) bool {
	for _, p := range patterns {
		if pkg == p || (strings.HasSuffix(p, "/") && strings.HasPrefix(pkg, p)) || pkg == strings.TrimSuffix(p, "/") {
			return true
		}
	}
	return false
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// moduleImports maps each package directory (relative to the root) to the
// module packages its non-test files import.
func moduleImports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		rel = filepath.ToSlash(rel)
		if rel == "internal/deps" {
			return nil // build-tagged list of pinned dependencies
		}
		if _, ok := out[rel]; !ok {
			out[rel] = nil
		}
		for _, imp := range f.Imports {
			ip := strings.Trim(imp.Path.Value, `"`)
			if dep, ok := strings.CutPrefix(ip, module+"/"); ok {
				out[rel] = appendUnique(out[rel], path.Clean(dep))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := range out {
		sort.Strings(out[k])
	}
	return out
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
