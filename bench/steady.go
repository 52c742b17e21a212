package bench

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ballast-storage/ballast/attach"
	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// Outcomes of the wait for a rack to flush the fill to its sleds.
const (
	// FlushDone: the head nodes reported no volume data left in their
	// logs; the workloads ran in the steady state.
	FlushDone = "flushed"
	// FlushTimedOut: data was still in the logs when the wait gave up;
	// the workloads ran anyway, on a volume partly in the logs.
	FlushTimedOut = "timed_out"
	// FlushNoSleds: the rack has no sleds, so its data stays in the logs
	// by design and there is nothing to wait for.
	FlushNoSleds = "no_sleds"
)

// FlushWait is how the wait, after the fill and before the workloads,
// for a Ballast rack to flush its volume's data to the sleds went.
type FlushWait struct {
	Status  string  `json:"status"`
	WaitedS float64 `json:"waited_s"`
	// DirtyBytes is the volume data the head nodes' logs still held when
	// the wait ended, summed over every volume of the rack (the rack the
	// harness starts has only the benchmark's while it waits).
	DirtyBytes uint64 `json:"dirty_bytes"`
	Note       string `json:"note,omitempty"`
}

// flushTimeout is how long to wait for a region to be flushed: the
// flush runs every 30 s by default, and then moves the log's data at a
// few MB/s or more on a loaded machine.
func flushTimeout(cfg *Config, region uint64) time.Duration {
	if cfg.FlushTimeout > 0 {
		return cfg.FlushTimeout
	}
	return 90*time.Second + time.Duration(region/(8<<20))*time.Second
}

// flushEstimate is about how long the wait takes, for the progress
// display: up to a flush interval, then the flush.
func flushEstimate(region uint64) time.Duration {
	return 20*time.Second + time.Duration(region/(30<<20))*time.Second
}

// waitFlushed polls the rack's status (RackStatus: every head node's
// dirty_bytes, the volume data in its log not yet flushed to the sleds)
// until it is zero, the rack turns out to have no sleds, or timeout
// passes. The count is rack-wide; in a rack the harness started, the
// benchmark's volume is the only one written.
func waitFlushed(ctx context.Context, headNodes [][]string, timeout time.Duration, log *slog.Logger) FlushWait {
	c := &attach.Client{HeadNodes: headNodes, Logger: log}
	defer c.Close()
	began := time.Now()
	deadline := began.Add(timeout)
	var (
		fw       FlushWait
		lastErr  error
		lastLog  = began
		answered bool
	)
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var st *ballastpb.RackStatusResponse
		err := c.Admin(rctx, func(ctx context.Context, a ballastpb.AdminClient) error {
			var err error
			st, err = a.RackStatus(ctx, &ballastpb.RackStatusRequest{})
			return err
		})
		cancel()
		fw.WaitedS = time.Since(began).Seconds()
		switch {
		case err != nil:
			lastErr = err
		case len(st.Sleds) == 0:
			fw.Status, fw.Note = FlushNoSleds, "the rack has no sleds: its data stays in the head nodes' logs"
			return fw
		default:
			answered = true
			fw.DirtyBytes = st.GetRedundancy().GetDirtyBytes()
			if len(st.UnreachableHeadNodes) == 0 && fw.DirtyBytes == 0 {
				fw.Status = FlushDone
				return fw
			}
			lastErr = nil
			if n := len(st.UnreachableHeadNodes); n > 0 {
				lastErr = fmt.Errorf("head nodes %v did not answer", st.UnreachableHeadNodes)
			}
		}
		if time.Since(lastLog) >= 15*time.Second {
			lastLog = time.Now()
			log.Info("waiting for the fill to be flushed to the sleds", "dirty", humanBytes(fw.DirtyBytes), "waited", time.Since(began).Round(time.Second))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			fw.Status = FlushTimedOut
			switch {
			case ctx.Err() != nil:
				fw.Note = "interrupted"
			case !answered:
				fw.Note = fmt.Sprintf("the rack's status could not be read within %v: %v", timeout, lastErr)
			default:
				fw.Note = fmt.Sprintf("%s of volume data was still in the head nodes' logs after %v, so the workloads did not start from the steady state", humanBytes(fw.DirtyBytes), timeout)
				if lastErr != nil {
					fw.Note += fmt.Sprintf(" (%v)", lastErr)
				}
			}
			return fw
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
