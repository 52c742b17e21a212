package bench

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeQemuNBD writes a script that refuses the --aio modes in refuse, as
// a kernel without io_uring or a file system without O_DIRECT would make
// qemu-nbd do, and runs qemu-nbd for the others.
func fakeQemuNBD(t *testing.T, refuse ...string) string {
	t.Helper()
	var cases []string
	for _, aio := range refuse {
		cases = append(cases, "--aio="+aio+") echo \"qemu-nbd: fake: aio "+aio+" refused\" >&2; exit 1;;")
	}
	script := "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in " + strings.Join(cases, " ") + " esac; done\nexec qemu-nbd \"$@\"\n"
	path := filepath.Join(t.TempDir(), "qemu-nbd")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCacheNoneFallsBack starts the cache=none baseline with a qemu-nbd
// that refuses io_uring: it runs with native, and its description says
// so and why.
func TestCacheNoneFallsBack(t *testing.T) {
	needTools(t, "qemu-nbd")
	q := newQemuNBD(BaselineCacheNone, fakeQemuNBD(t, "io_uring"), t.TempDir(), 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tg, err := q.start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer q.stop()
	t.Log(tg.Description)
	for _, want := range []string{"--cache=none --aio=native", "--aio=io_uring failed", "aio io_uring refused", "O_DIRECT"} {
		if !strings.Contains(tg.Description, want) {
			t.Errorf("description lacks %q: %s", want, tg.Description)
		}
	}
	if tg.Copies != 1 || tg.SizeBytes != 8<<20 {
		t.Errorf("copies %d, size %d", tg.Copies, tg.SizeBytes)
	}
}

// TestCacheNoneFailsClearly: when no --aio mode starts, the error names
// each and why.
func TestCacheNoneFailsClearly(t *testing.T) {
	q := newQemuNBD(BaselineCacheNone, fakeQemuNBD(t, cacheNoneAIO...), t.TempDir(), 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := q.start(ctx)
	if err == nil {
		q.stop()
		t.Fatal("started")
	}
	q.stop()
	t.Log(err)
	for _, aio := range cacheNoneAIO {
		if !strings.Contains(err.Error(), "--aio="+aio+" failed") || !strings.Contains(err.Error(), "aio "+aio+" refused") {
			t.Errorf("error does not say why --aio=%s failed: %v", aio, err)
		}
	}
}

// TestPlan: the baselines run first, cache=none leading, and the rack
// last; the sustain suite runs the rack alone, told the journal's size.
func TestPlan(t *testing.T) {
	names := func(ps []provider) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.name())
		}
		return out
	}
	cfg := Config{Suite: SuiteStandard, BallastBinary: "ballast"}
	cfg.EnsureDefaults()
	s, _ := cfg.suite()
	if got, want := names(plan(&cfg, t.TempDir(), s)), []string{BaselineCacheNone, BaselineWritethrough, BaselineWriteback, SubjectName}; !slices.Equal(got, want) {
		t.Errorf("standard plan = %v, want %v", got, want)
	}
	cfg = Config{Suite: SuiteSustain, BallastBinary: "ballast", JournalBytes: 1 << 30}
	cfg.EnsureDefaults()
	s, _ = cfg.suite()
	ps := plan(&cfg, t.TempDir(), s)
	if got := names(ps); !slices.Equal(got, []string{SubjectName}) {
		t.Fatalf("sustain plan = %v, want the rack alone", got)
	}
	if r := ps[0].(*rack); r.journalBytes != 1<<30 || r.sizeBytes < 4<<30 {
		t.Errorf("sustain rack: journal %d, volume %d bytes", r.journalBytes, r.sizeBytes)
	}
}

// TestJournalArgs: the rack is given --journal-size only when it was set
// and the binary's subcommand lists the flag, and its description says
// which.
func TestJournalArgs(t *testing.T) {
	fake := func(help string) string {
		path := filepath.Join(t.TempDir(), "ballast")
		if err := os.WriteFile(path, []byte("#!/bin/sh\necho '"+help+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return path
	}
	r := &rack{kind: RackDemo, bin: fake("      --journal-size string   head-node journal size"), journalBytes: 1 << 30}
	if got := r.journalArgs("demo"); !slices.Equal(got, []string{"--journal-size", "1073741824"}) || !strings.Contains(r.describe(), "journals of 1.0 GiB (--journal-size)") {
		t.Errorf("with the flag: %v, %q", got, r.describe())
	}
	r.bin = fake("      --flush-interval duration")
	if got := r.journalArgs("demo"); got != nil || !strings.Contains(r.describe(), "has no --journal-size flag") {
		t.Errorf("without the flag: %v, %q", got, r.describe())
	}
	r.journalBytes = 0
	if got := r.journalArgs("demo"); got != nil || strings.Contains(r.describe(), "journal") {
		t.Errorf("not set: %v, %q", got, r.describe())
	}
}
