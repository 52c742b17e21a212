package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Kind is what a client call did.
type Kind int

const (
	Write Kind = iota
	Read
	Trim
	Flush
)

func (k Kind) String() string {
	switch k {
	case Write:
		return "write"
	case Read:
		return "read"
	case Trim:
		return "trim"
	case Flush:
		return "flush"
	}
	return "kind?"
}

// Outcome is how a call ended.
type Outcome int

const (
	// OK: the call returned success.
	OK Outcome = iota
	// Failed: the call returned an error. For writes and trims the effect is
	// unknown: the error may have come after the data was replicated.
	Failed
	// Pending: the call never returned (the run ended first).
	Pending
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	case Pending:
		return "pending"
	}
	return "outcome?"
}

// Op is one client call of the workload.
type Op struct {
	Client int
	Volume string
	Kind   Kind
	Block  uint64 // first block
	Count  int    // blocks
	// Wrote is, for a Write, the tag of each block written (len Count).
	Wrote []Tag `json:",omitempty"`
	// Saw is, for a Read that returned OK, what each block held (len Count).
	Saw []Observed `json:",omitempty"`
	// Call and Return are measured from the run's start on the monotonic
	// clock; Return is 0 while Pending.
	Call, Return time.Duration
	Outcome      Outcome
	Err          string `json:",omitempty"`
}

// Observed is what a read found in one block.
type Observed struct {
	Content Content
	Tag     Tag
}

// Recorder keeps the history of a run. It is safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    struct {
		sync.Mutex
		ops []Op
	}
}

// NewRecorder starts a history whose times are measured from start.
func NewRecorder(start time.Time) *Recorder {
	return &Recorder{start: start}
}

// Begin records op as called now, Pending until End, and returns its id.
func (r *Recorder) Begin(op Op) (id int) {
	op.Call = time.Since(r.start)
	op.Return = 0
	op.Outcome = Pending
	op.Saw = nil
	op.Wrote = append([]Tag(nil), op.Wrote...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.ops = append(r.mu.ops, op)
	return len(r.mu.ops) - 1
}

// End records the outcome of the call Begin returned id for. saw is kept
// only for a read that returned OK; err, if any, is kept as text.
func (r *Recorder) End(id int, outcome Outcome, saw []Observed, err error) {
	now := time.Since(r.start)
	r.mu.Lock()
	defer r.mu.Unlock()
	op := &r.mu.ops[id]
	if op.Outcome != Pending {
		panic(fmt.Sprintf("chaos: op %d ended twice", id))
	}
	op.Outcome = outcome
	if outcome == Pending {
		return
	}
	op.Return = now
	if op.Return <= op.Call {
		op.Return = op.Call + 1 // a call takes time: keeps Call < Return for porcupine
	}
	if op.Kind == Read && outcome == OK {
		op.Saw = append([]Observed(nil), saw...)
	}
	if err != nil {
		op.Err = err.Error()
	}
}

// Ops returns a copy of the history so far, in the order calls began.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Op, len(r.mu.ops))
	copy(out, r.mu.ops)
	return out
}

// WriteHistory writes ops as JSON lines, one op a line.
func WriteHistory(w io.Writer, ops []Op) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range ops {
		if err := enc.Encode(&ops[i]); err != nil {
			return fmt.Errorf("chaos: write history op %d: %w", i, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("chaos: write history: %w", err)
	}
	return nil
}

// ReadHistory reads a history WriteHistory wrote.
func ReadHistory(r io.Reader) ([]Op, error) {
	dec := json.NewDecoder(r)
	var ops []Op
	for {
		var op Op
		err := dec.Decode(&op)
		if err == io.EOF {
			return ops, nil
		}
		if err != nil {
			return ops, fmt.Errorf("chaos: read history op %d: %w", len(ops), err)
		}
		ops = append(ops, op)
	}
}
