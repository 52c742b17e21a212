package txn

import (
	"errors"
	"slices"
	"testing"
)

// A host's own writes take the log index as the key's version, and wait
// for a transaction's lock to go.
func TestHostWrite(t *testing.T) {
	p := NewParticipant(1)
	if err := p.Write(3, Write{Key: "vol/a", Value: []byte("rec")}); err != nil {
		t.Fatal(err)
	}
	if r := p.Read("vol/a"); !r.Found || r.Version != 3 || string(r.Value) != "rec" {
		t.Fatalf("after host write: %+v", r)
	}
	if err := p.Write(3, Write{Key: "vol/b", Value: []byte("x")}); !errors.Is(err, ErrStaleIndex) {
		t.Fatalf("write at an applied index: %v, want ErrStaleIndex", err)
	}

	// A transaction conditions on vol/a and writes vol/c: both locked.
	if r := p.Apply(4, prepare(tOld, 1, "vol/a=3", "vol/c=new")); r.Vote != VotePrepared {
		t.Fatalf("prepare: %+v", r)
	}
	for _, k := range []string{"vol/a", "vol/c"} {
		if err := p.Write(5, Write{Key: k, Value: []byte("host")}); !errors.Is(err, ErrLocked) {
			t.Errorf("host write of locked %s: %v, want ErrLocked", k, err)
		}
	}
	if p.Applied() != 4 {
		t.Errorf("a refused host write moved the applied index to %d", p.Applied())
	}
	if err := p.Write(5, Write{Key: "vol/free", Value: []byte("host")}); err != nil {
		t.Errorf("host write of a free key beside the locks: %v", err)
	}
	for _, w := range []Write{{Key: ""}, {Key: "k", Value: []byte("v"), Delete: true}} {
		if err := p.Write(9, w); !errors.Is(err, ErrMalformed) {
			t.Errorf("host write %+v: %v, want ErrMalformed", w, err)
		}
	}
}

// ApplyObserved reports the writes a command installs, and only those.
func TestApplyObservedReportsInstalledWrites(t *testing.T) {
	p := NewParticipant(1)
	var seen []string
	observe := func(w Write) {
		if w.Delete {
			seen = append(seen, "-"+w.Key)
		} else {
			seen = append(seen, w.Key+"="+string(w.Value))
		}
	}
	p.ApplyObserved(1, prepareCommit(tOld, "", "a=1 b=2"), observe)
	if want := []string{"a=1", "b=2"}; !slices.Equal(seen, want) {
		t.Fatalf("one-phase commit installed %v, want %v", seen, want)
	}
	seen = nil
	p.ApplyObserved(2, prepare(tYoung, 1, "", "a= c=3"), observe)
	p.ApplyObserved(3, prepare(tThird, 1, "", "d=4"), observe)
	p.ApplyObserved(4, resolve(tThird, Abort), observe)
	if len(seen) != 0 {
		t.Fatalf("prepares and an abort installed %v", seen)
	}
	p.ApplyObserved(5, resolve(tYoung, Commit), observe)
	if want := []string{"-a", "c=3"}; !slices.Equal(seen, want) {
		t.Fatalf("commit installed %v, want %v", seen, want)
	}
	seen = nil
	p.ApplyObserved(6, resolve(tYoung, Commit), observe)
	if len(seen) != 0 {
		t.Fatalf("a duplicated commit installed %v again", seen)
	}
}
