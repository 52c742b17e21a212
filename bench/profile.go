package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

// profileCapture is the CPU profiles being taken of a target's processes
// during one workload.
type profileCapture struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	files []string
}

// startProfiles asks every pprof endpoint of t for a CPU profile over d
// (whole seconds, at least one) and, when they arrive, writes each raw
// profile and a summary of its top entries under profiles/ in the output
// directory. A profile that cannot be taken is logged, not fatal.
func startProfiles(ctx context.Context, env *runEnv, t *Target, workload string, d time.Duration) *profileCapture {
	pc := &profileCapture{}
	secs := max(int(d/time.Second), 1)
	for _, ep := range t.Profilers {
		pc.wg.Add(1)
		go func() {
			defer pc.wg.Done()
			base := fmt.Sprintf("%s-%s-%s", t.Name, ep.Name, workload)
			files, err := captureProfile(ctx, ep.Addr, secs, filepath.Join(env.outDir, "profiles"), base)
			if err != nil {
				env.log.Warn("CPU profile not taken", "target", t.Name, "process", ep.Name, "workload", workload, "err", err)
				return
			}
			pc.mu.Lock()
			pc.files = append(pc.files, files...)
			pc.mu.Unlock()
		}()
	}
	return pc
}

// wait returns the files written, relative to the output directory.
func (pc *profileCapture) wait() []string {
	pc.wg.Wait()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	sort.Strings(pc.files)
	return pc.files
}

func captureProfile(ctx context.Context, addr string, secs int, dir, base string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("fetch profile: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch profile: %s: %s", resp.Status, truncate(string(raw), 200))
	}
	prof, err := profile.Parse(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse profile: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pb, txt := base+".pb.gz", base+".txt"
	if err := os.WriteFile(filepath.Join(dir, pb), raw, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, txt), []byte(summarizeProfile(prof, 25)), 0o644); err != nil {
		return nil, err
	}
	return []string{filepath.Join("profiles", pb), filepath.Join("profiles", txt)}, nil
}

// profileEntry is a function or package and its share of the samples.
type profileEntry struct {
	Name      string
	Flat, Cum int64
	FlatPct   float64
	CumPct    float64
}

// profileTop computes, from a CPU profile, the time spent in each
// function itself (flat) and in it or what it calls (cum), and the flat
// time of each package, sorted by flat time.
func profileTop(p *profile.Profile) (funcs, pkgs []profileEntry, total int64) {
	vi := len(p.SampleType) - 1 // cpu nanoseconds follow the sample count
	flat, cum, pkgFlat := map[string]int64{}, map[string]int64{}, map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		seen := map[string]bool{}
		for li, loc := range s.Location {
			// Inlined frames come first within a location; the leaf is
			// the first line of the first location.
			for i, line := range loc.Line {
				if line.Function == nil {
					continue
				}
				name := line.Function.Name
				if li == 0 && i == 0 {
					flat[name] += v
					pkgFlat[packageOf(name)] += v
				}
				if !seen[name] {
					seen[name] = true
					cum[name] += v
				}
			}
		}
	}
	pct := func(v int64) float64 {
		if total == 0 {
			return 0
		}
		return 100 * float64(v) / float64(total)
	}
	for name, c := range cum {
		funcs = append(funcs, profileEntry{Name: name, Flat: flat[name], Cum: c, FlatPct: pct(flat[name]), CumPct: pct(c)})
	}
	for name, f := range pkgFlat {
		pkgs = append(pkgs, profileEntry{Name: name, Flat: f, FlatPct: pct(f)})
	}
	byFlat := func(es []profileEntry) {
		sort.Slice(es, func(i, j int) bool {
			if es[i].Flat != es[j].Flat {
				return es[i].Flat > es[j].Flat
			}
			return es[i].Name < es[j].Name
		})
	}
	byFlat(funcs)
	byFlat(pkgs)
	return funcs, pkgs, total
}

// packageOf returns the import path of a Go function name such as
// "github.com/cockroachdb/pebble.(*DB).Get" or "runtime.mallocgc".
func packageOf(fn string) string {
	slash := strings.LastIndexByte(fn, '/')
	dot := strings.IndexByte(fn[slash+1:], '.')
	if dot < 0 {
		return fn
	}
	return fn[:slash+1+dot]
}

// summarizeProfile renders the top n functions by flat and by cumulative
// time and the packages by flat time.
func summarizeProfile(p *profile.Profile, n int) string {
	funcs, pkgs, total := profileTop(p)
	var b strings.Builder
	dur := time.Duration(p.DurationNanos)
	fmt.Fprintf(&b, "CPU profile: %v of samples over %v (%.0f%% of one core)\n\n",
		time.Duration(total).Round(time.Millisecond), dur.Round(time.Millisecond), 100*float64(total)/float64(max(p.DurationNanos, 1)))
	b.WriteString("By package (flat):\n")
	for i, e := range pkgs {
		if i == n {
			break
		}
		fmt.Fprintf(&b, "  %6.1f%%  %s\n", e.FlatPct, e.Name)
	}
	b.WriteString("\nBy function (flat, cum):\n")
	for i, e := range funcs {
		if i == n {
			break
		}
		fmt.Fprintf(&b, "  %6.1f%% %6.1f%%  %s\n", e.FlatPct, e.CumPct, e.Name)
	}
	sort.Slice(funcs, func(i, j int) bool {
		if funcs[i].Cum != funcs[j].Cum {
			return funcs[i].Cum > funcs[j].Cum
		}
		return funcs[i].Name < funcs[j].Name
	})
	b.WriteString("\nBy function (cum):\n")
	for i, e := range funcs {
		if i == n {
			break
		}
		fmt.Fprintf(&b, "  %6.1f%%  %s\n", e.CumPct, e.Name)
	}
	return b.String()
}
