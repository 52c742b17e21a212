package sled

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ballast-storage/ballast/internal/clock"
)

// fakeTime is a manual clock whose sleeps advance it at once and are
// recorded; afterSleep, if set, runs after each (a client's I/O, say).
type fakeTime struct {
	c          *clock.Manual
	slept      []time.Duration
	afterSleep func(i int)
}

func (f *fakeTime) sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	f.slept = append(f.slept, d)
	f.c.Advance(d)
	if f.afterSleep != nil {
		f.afterSleep(len(f.slept) - 1)
	}
	return true
}

// pacedScrubber returns a scrubber of s on a fake clock, and the shards it
// scrubs: 2.5 MiB (three pieces), 1 MiB and 4097 bytes.
func pacedScrubber(t *testing.T, rate uint64, busyRate int64) (*scrubber, *fakeTime, *Store) {
	t.Helper()
	s := openCacheStore(t, t.TempDir(), 1, 0, nil)
	for i, n := range []int{5 << 19, 1 << 20, 4097} {
		if _, err := s.Put(ShardID{Volume: 1, Segment: uint64(i)}, 1, randomData(int64(i), n)); err != nil {
			t.Fatal(err)
		}
	}
	ft := &fakeTime{c: clock.NewManual(time.Hour)}
	sc := newScrubber(s, rate, busyRate)
	sc.clock, sc.sleep = ft.c, ft.sleep
	return sc, ft, s
}

// at is how long n bytes take at rate bytes per second.
func at(n, rate uint64) time.Duration { return time.Duration(n * uint64(time.Second) / rate) }

// TestScrubberKeepsToItsBudget: on a quiet sled, each piece is followed by
// the wait its bytes cost at the rate, so a pass over 3.5 MiB at 1 MiB/s
// takes 3.5 s of the (fake) clock; it finds every shard sound, and the
// files it opens are not left in the read cache.
func TestScrubberKeepsToItsBudget(t *testing.T) {
	const rate = 1 << 20
	sc, ft, s := pacedScrubber(t, rate, 0)
	if !sc.pass(context.Background(), make([]byte, scrubPieceBytes)) {
		t.Fatal("pass stopped")
	}
	want := []time.Duration{at(1<<20, rate), at(1<<20, rate), at(1<<19, rate), at(1<<20, rate), at(4097, rate)}
	if !slices.Equal(ft.slept, want) {
		t.Fatalf("waits %v, want %v", ft.slept, want)
	}
	st := sc.snapshot()
	if st.ShardsVerified != 3 || st.BytesVerified != 5<<19+1<<20+4097 || st.CorruptFound != 0 || st.BusyPieces != 0 || st.Passes != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n := s.OpenShardFiles(); n != 0 {
		t.Fatalf("the scrubber left %d files in the read cache", n)
	}
}

// TestScrubberBacksOffWhileClientsAreBusy: a piece after which a client
// read or wrote is paced at the busy rate; once clients are quiet again,
// the scrubber goes back to its rate.
func TestScrubberBacksOffWhileClientsAreBusy(t *testing.T) {
	const rate, busy = 1 << 20, 1 << 16
	sc, ft, s := pacedScrubber(t, rate, busy)
	ft.afterSleep = func(i int) {
		if i < 2 { // a client reads during the first two waits
			if _, _, err := s.Get(ShardID{Volume: 1, Segment: 1}, 0, 4096); err != nil {
				t.Error(err)
			}
		}
	}
	sc.pass(context.Background(), make([]byte, scrubPieceBytes))
	want := []time.Duration{at(1<<20, rate), at(1<<20, busy), at(1<<19, busy), at(1<<20, rate), at(4097, rate)}
	if !slices.Equal(ft.slept, want) {
		t.Fatalf("waits %v, want %v", ft.slept, want)
	}
	if st := sc.snapshot(); st.BusyPieces != 2 {
		t.Fatalf("%d busy pieces, want 2", st.BusyPieces)
	}
}

// TestScrubberPausesWhileClientsAreBusy: with a negative busy rate the
// scrubber reads nothing while clients are busy: it waits, a piece's
// budget at a time, until one wait passes without client I/O.
func TestScrubberPausesWhileClientsAreBusy(t *testing.T) {
	const rate = 1 << 20
	sc, ft, s := pacedScrubber(t, rate, -1)
	ft.afterSleep = func(i int) {
		if i < 3 {
			if _, err := s.Put(ShardID{Volume: 2, Segment: uint64(i)}, 1, []byte("x")); err != nil {
				t.Error(err)
			}
		}
	}
	sc.pass(context.Background(), make([]byte, scrubPieceBytes))
	// After piece 1: its wait (a put in it). After piece 2: clients were
	// busy, so waits of piece 2's budget until one passes with no I/O
	// (two see a put, the third none), then piece 2's own wait, and the
	// rest at the rate.
	quiet := at(1<<20, rate)
	want := []time.Duration{at(1<<20, rate), quiet, quiet, quiet, at(1<<20, rate), at(1<<19, rate), at(1<<20, rate), at(4097, rate)}
	if !slices.Equal(ft.slept, want) {
		t.Fatalf("waits %v, want %v", ft.slept, want)
	}
	if s.Quarantined() != 0 {
		t.Fatal("quarantined")
	}
}

// TestPacerSavesNoCredit: an idle spell buys no burst, and the wait after
// a charge is its bytes' cost from the later of now and the last end.
func TestPacerSavesNoCredit(t *testing.T) {
	var p pacer
	t0 := clock.Instant{}.Add(time.Hour)
	if w := p.charge(t0, 1000, 1000); w != time.Second {
		t.Fatalf("first wait %v", w)
	}
	// Charged again before the wait is over: the debt adds up.
	if w := p.charge(t0.Add(500*time.Millisecond), 1000, 1000); w != 1500*time.Millisecond {
		t.Fatalf("second wait %v", w)
	}
	// A minute idle, then two charges: no saved credit.
	t1 := t0.Add(time.Minute)
	if w := p.charge(t1, 500, 1000); w != 500*time.Millisecond {
		t.Fatalf("after idle %v", w)
	}
	if w := p.charge(t1, 500, 1000); w != time.Second {
		t.Fatalf("second after idle %v", w)
	}
}

// TestScrubFindsABadTableUnderAnOpenFile: the scrubber checks the header
// and chunk table on the disk, not the copies a shard's open file was
// checked with: a table that went bad after the file was opened is found.
func TestScrubFindsABadTableUnderAnOpenFile(t *testing.T) {
	sc, _, s := pacedScrubber(t, 1<<30, 0)
	id := ShardID{Volume: 1, Segment: 1}
	if _, _, err := s.Get(id, 0, 4096); err != nil {
		t.Fatal(err)
	}
	corruptShardFile(t, s, id, headerBytes+1<<20+8) // the table of the 1 MiB shard
	if _, _, err := s.Get(id, 4096, 4096); err != nil {
		t.Fatalf("a read through the open file still checks out: %v", err)
	}
	sc.pass(context.Background(), make([]byte, scrubPieceBytes))
	if st := sc.snapshot(); st.CorruptFound != 1 || s.Quarantined() != 1 {
		t.Fatalf("stats %+v, %d quarantined", st, s.Quarantined())
	}
	if _, _, err := s.Get(id, 0, 4096); err == nil {
		t.Fatal("a quarantined shard is still served")
	}
}
