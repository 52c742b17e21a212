package migrate

import (
	"errors"
	"testing"
)

func loadedGate(t *testing.T, rec Attachment) *Gate {
	t.Helper()
	g := NewGate()
	if acts := g.RequestLoad(); !acts.Load {
		t.Fatal("a fresh gate asked for no load")
	}
	g.Loaded(rec)
	return g
}

func TestBeginComputesTheNextRecord(t *testing.T) {
	attached := Attachment{Host: "h1", Generation: 4, Last: 4}
	prepared := Attachment{Host: "h1", Generation: 4, To: "h2", ToGeneration: 5, Last: 5}
	for _, tc := range []struct {
		name   string
		rec    Attachment
		change Change
		want   Attachment
		drain  bool
		noop   bool
		err    error
	}{
		{name: "prepare", rec: attached, change: Change{Prepare, "h2"},
			want: prepared},
		{name: "prepare again is a no-op", rec: prepared, change: Change{Prepare, "h2"}, noop: true},
		{name: "prepare another destination", rec: prepared, change: Change{Prepare, "h3"},
			want: Attachment{Host: "h1", Generation: 4, To: "h3", ToGeneration: 6, Last: 6}},
		{name: "prepare the attached host", rec: attached, change: Change{Prepare, "h1"}, err: ErrRefused},
		{name: "prepare a detached volume", rec: Attachment{Generation: 2, Last: 2}, change: Change{Prepare, "h1"}, err: ErrRefused},
		{name: "abort", rec: prepared, change: Change{Kind: Abort},
			want: Attachment{Host: "h1", Generation: 4, Last: 5}},
		{name: "abort with nothing prepared", rec: attached, change: Change{Kind: Abort}, err: ErrRefused},
		{name: "switch now to the prepared host", rec: prepared, change: Change{SwitchNow, "h2"},
			want: Attachment{Host: "h2", Generation: 5, Last: 5}, drain: true},
		{name: "switch now unprepared", rec: attached, change: Change{SwitchNow, "h3"},
			want: Attachment{Host: "h3", Generation: 5, Last: 5}, drain: true},
		{name: "switch now to the attached host", rec: attached, change: Change{SwitchNow, "h1"}, noop: true},
		{name: "attach", rec: Attachment{Generation: 7, Last: 7}, change: Change{Attach, "h1"},
			want: Attachment{Host: "h1", Generation: 8, Last: 8}, drain: true},
		{name: "attach to a host-less volume", rec: Attachment{}, change: Change{Attach, "h1"},
			want: Attachment{Host: "h1", Generation: 1, Last: 1}, drain: true},
		{name: "attach an attached volume", rec: attached, change: Change{Attach, "h2"}, err: ErrRefused},
		{name: "attach to the same host", rec: attached, change: Change{Attach, "h1"}, noop: true},
		{name: "detach", rec: prepared, change: Change{Kind: Detach},
			want: Attachment{Generation: 6, Last: 6}, drain: true},
		{name: "detach a detached volume", rec: Attachment{Generation: 3, Last: 3}, change: Change{Kind: Detach}, noop: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := loadedGate(t, tc.rec)
			// A write in flight shows whether the change waits for it.
			if v, _ := g.Admit(Request{ID: 1, Session: Session{Host: tc.rec.Host, Generation: tc.rec.Generation}, Op: Write}); v != Proceed {
				t.Fatalf("the attached session's write: %v", v)
			}
			noop, acts, err := g.Begin(tc.change)
			if !errors.Is(err, tc.err) || noop != tc.noop {
				t.Fatalf("Begin = noop %v, err %v; want noop %v, err %v", noop, err, tc.noop, tc.err)
			}
			if err != nil || noop {
				if acts.Commit != nil {
					t.Fatalf("a refused or empty change commits %v", *acts.Commit)
				}
				return
			}
			if tc.drain != (acts.Commit == nil) {
				t.Fatalf("drain %v but commit asked at once: %v", tc.drain, acts.Commit)
			}
			if tc.drain {
				if _, again, err := g.Begin(tc.change); !errors.Is(err, ErrBusy) || again.Commit != nil {
					t.Fatalf("a second change during the first: %v", err)
				}
				acts = g.Done()
			}
			if acts.Commit == nil || *acts.Commit != tc.want {
				t.Fatalf("commit %v, want %v", acts.Commit, tc.want)
			}
			g.Finished(*acts.Commit)
			if rec, ok := g.Known(); !ok || rec != tc.want {
				t.Fatalf("after the commit the gate holds %v", rec)
			}
		})
	}
}

func TestWritesDuringADrainingChangeWait(t *testing.T) {
	g := loadedGate(t, Attachment{Host: "h1", Generation: 1, To: "h2", ToGeneration: 2, Last: 2})
	src, dst := Session{"h1", 1}, Session{"h2", 2}
	if v, _ := g.Admit(Request{ID: 1, Session: src, Op: Write}); v != Proceed {
		t.Fatal(v)
	}
	// The destination's first write starts the switchover and waits.
	v, acts := g.Admit(Request{ID: 2, Session: dst, Op: Write})
	if v != Hold || acts.Commit != nil {
		t.Fatalf("destination write: %v %v", v, acts.Commit)
	}
	// The source's next write waits too; its flush and reads do not.
	if v, _ := g.Admit(Request{ID: 3, Session: src, Op: Write}); v != Hold {
		t.Fatalf("source write during the drain: %v", v)
	}
	if v, _ := g.Admit(Request{ID: 4, Session: src, Op: Flush}); v != Proceed {
		t.Fatalf("source flush during the drain: %v", v)
	}
	if v, _ := g.Admit(Request{ID: 5, Session: dst, Op: Read}); v != Proceed {
		t.Fatalf("destination read: %v", v)
	}
	acts = g.Done()
	if acts.Commit == nil || acts.Commit.Host != "h2" || acts.Commit.Generation != 2 {
		t.Fatalf("after the drain: commit %v", acts.Commit)
	}
	acts = g.Finished(*acts.Commit)
	want := map[uint64]Verdict{2: Proceed, 3: Refuse}
	if len(acts.Release) != 2 {
		t.Fatalf("released %v", acts.Release)
	}
	for _, r := range acts.Release {
		if want[r.ID] != r.Verdict {
			t.Errorf("request %d: %v, want %v", r.ID, r.Verdict, want[r.ID])
		}
	}
	// The old host's flush with nothing pending succeeds; its write fails.
	if v, _ := g.Admit(Request{ID: 6, Session: src, Op: Flush}); v != Proceed {
		t.Errorf("late source flush: %v", v)
	}
	if v, _ := g.Admit(Request{ID: 7, Session: src, Op: Write}); v != Refuse {
		t.Errorf("late source write: %v", v)
	}
}

func TestASessionNewerThanTheRecordWaitsForALoad(t *testing.T) {
	g := loadedGate(t, Attachment{Host: "h1", Generation: 1, Last: 1})
	// h2 was prepared by a primary before a failover that this gate has
	// not seen.
	v, acts := g.Admit(Request{ID: 1, Session: Session{"h2", 2}, Op: Write})
	if v != Hold || !acts.Load {
		t.Fatalf("unknown newer session: %v, load %v", v, acts.Load)
	}
	acts = g.Loaded(Attachment{Host: "h1", Generation: 1, To: "h2", ToGeneration: 2, Last: 2})
	if acts.Commit == nil || acts.Commit.Host != "h2" {
		t.Fatalf("after the load the destination switches over: %+v", acts)
	}
	// A newer session that the load does not show either is refused
	// after one load.
	g = loadedGate(t, Attachment{Host: "h1", Generation: 1, Last: 1})
	if _, acts := g.Admit(Request{ID: 1, Session: Session{"h9", 9}, Op: Write}); !acts.Load {
		t.Fatal("no load asked")
	}
	acts = g.Loaded(Attachment{Host: "h1", Generation: 1, Last: 1})
	if len(acts.Release) != 1 || acts.Release[0].Verdict != Refuse {
		t.Fatalf("after the load: %+v", acts)
	}
}

func TestHostlessClientsWriteOnlyUnattachedVolumes(t *testing.T) {
	g := loadedGate(t, Attachment{})
	if v, _ := g.Admit(Request{ID: 1, Op: Write}); v != Proceed {
		t.Fatalf("host-less write to a detached volume: %v", v)
	}
	g.Done()
	g = loadedGate(t, Attachment{Host: "h1", Generation: 1, Last: 1})
	if v, _ := g.Admit(Request{ID: 1, Op: Write}); v != Refuse {
		t.Fatalf("host-less write to an attached volume: %v", v)
	}
}

func TestFailedSendsHeldRequestsBack(t *testing.T) {
	g := NewGate()
	v, acts := g.Admit(Request{ID: 1, Session: Session{"h1", 1}, Op: Write})
	if v != Hold || !acts.Load {
		t.Fatalf("before the load: %v %v", v, acts.Load)
	}
	acts = g.Failed()
	if len(acts.Release) != 1 || acts.Release[0].Verdict != Retry {
		t.Fatalf("%+v", acts)
	}
}
