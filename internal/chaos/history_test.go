package chaos

import (
	"bytes"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestRecorder(t *testing.T) {
	r := NewRecorder(time.Now())
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				tag := Tag{Client: uint32(c), Op: uint64(c)<<40 | uint64(i), Block: uint64(i)}
				id := r.Begin(Op{Client: c, Volume: "v", Kind: Write, Block: uint64(i), Count: 1, Wrote: []Tag{tag}})
				r.End(id, OK, nil, nil)
			}
		}()
	}
	wg.Wait()
	read := r.Begin(Op{Client: 9, Volume: "v", Kind: Read, Block: 0, Count: 1})
	pending := r.Begin(Op{Client: 9, Volume: "v", Kind: Write, Block: 1, Count: 1, Wrote: []Tag{{Client: 9}}})
	failed := r.Begin(Op{Client: 9, Volume: "v", Kind: Trim, Block: 1, Count: 1})
	r.End(read, OK, []Observed{{Content: Zero}}, nil)
	r.End(failed, Failed, nil, errors.New("connection reset"))

	ops := r.Ops()
	if len(ops) != 203 {
		t.Fatalf("%d ops", len(ops))
	}
	for i, op := range ops[:200] {
		if op.Outcome != OK || op.Return <= op.Call {
			t.Fatalf("op %d: %+v", i, op)
		}
	}
	if op := ops[read]; len(op.Saw) != 1 || op.Outcome != OK {
		t.Errorf("read: %+v", op)
	}
	if op := ops[pending]; op.Outcome != Pending || op.Return != 0 {
		t.Errorf("pending: %+v", op)
	}
	if op := ops[failed]; op.Outcome != Failed || op.Err != "connection reset" {
		t.Errorf("failed: %+v", op)
	}

	var buf bytes.Buffer
	if err := WriteHistory(&buf, ops); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{`"Kind":"trim"`, `"Outcome":"failed"`, `"Outcome":"pending"`, `"Content":"zero"`} {
		if !bytes.Contains(buf.Bytes(), []byte(name)) {
			t.Errorf("the history file has no %s", name)
		}
	}
	back, err := ReadHistory(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, ops) {
		t.Errorf("history changed through JSON lines")
	}
	for _, bad := range []string{"{\"Client\":1}\n{oops", `{"Kind":"erase"}`} {
		if _, err := ReadHistory(bytes.NewBufferString(bad)); err == nil {
			t.Errorf("%q read without error", bad)
		}
	}
}
