package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// ProgressWriter returns f when it is a terminal, else nil: the progress
// display is for people watching, and stays out of logs and pipes.
func ProgressWriter(f *os.File) io.Writer {
	if term.IsTerminal(int(f.Fd())) {
		return f
	}
	return nil
}

// progress shows how far a run is: a bar over the planned time of every
// step, advancing with the clock within a step, and the step's name. A nil
// *progress shows nothing.
type progress struct {
	bar   *progressbar.ProgressBar
	steps int

	mu        sync.Mutex
	step      int
	doneMs    int64 // planned time of the finished steps
	plannedMs int64 // of the current step
	started   time.Time
	stop      chan struct{}
	stopped   sync.WaitGroup
}

func newProgress(w io.Writer, steps int, total time.Duration) *progress {
	if w == nil {
		return nil
	}
	p := &progress{steps: steps, stop: make(chan struct{})}
	p.bar = progressbar.NewOptions64(max(total.Milliseconds(), 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionClearOnFinish(),
	)
	p.stopped.Add(1)
	go p.tick()
	return p
}

func (p *progress) tick() {
	defer p.stopped.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			// Within a step the bar follows the clock, stopping short of
			// the step's planned end until the step is over.
			in := min(time.Since(p.started).Milliseconds(), p.plannedMs*95/100)
			p.bar.Set64(p.doneMs + max(in, 0))
			p.mu.Unlock()
		}
	}
}

// begin starts a step expected to take planned.
func (p *progress) begin(label string, planned time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.step++
	p.plannedMs, p.started = planned.Milliseconds(), time.Now()
	p.bar.Describe(fmt.Sprintf("[%d/%d] %s", p.step, p.steps, label))
}

// end finishes the current step.
func (p *progress) end() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.doneMs += p.plannedMs
	p.plannedMs = 0
	p.bar.Set64(p.doneMs)
}

// finish removes the bar. It may be called more than once.
func (p *progress) finish() {
	if p == nil {
		return
	}
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.stopped.Wait()
	p.bar.Finish()
	p.bar.Exit()
}

// logHandler keeps the log readable under the progress bar: below warn
// level it drops records (the bar says what is happening), and it clears
// the bar before a record is written (the bar is drawn again at the next
// tick).
type logHandler struct {
	h    slog.Handler
	prog *progress
}

func (l logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn && l.h.Enabled(ctx, level)
}

func (l logHandler) Handle(ctx context.Context, r slog.Record) error {
	l.prog.mu.Lock()
	defer l.prog.mu.Unlock()
	l.prog.bar.Clear()
	return l.h.Handle(ctx, r)
}

func (l logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{l.h.WithAttrs(attrs), l.prog}
}

func (l logHandler) WithGroup(name string) slog.Handler {
	return logHandler{l.h.WithGroup(name), l.prog}
}

// logger returns log as it should be used while the bar shows.
func (p *progress) logger(log *slog.Logger) *slog.Logger {
	if p == nil {
		return log
	}
	return slog.New(logHandler{log.Handler(), p})
}
