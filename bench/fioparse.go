package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrFioOutput is returned for fio output that holds no usable result.
var ErrFioOutput = errors.New("bench: unusable fio output")

// fioOutput is the part of fio's --output-format=json document the
// harness reads.
type fioOutput struct {
	Version string   `json:"fio version"`
	Jobs    []fioJob `json:"jobs"`
}

type fioJob struct {
	Name  string   `json:"jobname"`
	Error int      `json:"error"`
	Read  *fioSide `json:"read"`
	Write *fioSide `json:"write"`
	Trim  *fioSide `json:"trim"`
	// Mixed holds reads and writes together with
	// --unified_rw_reporting=mixed.
	Mixed  *fioSide `json:"mixed"`
	UsrCPU float64  `json:"usr_cpu"`
	SysCPU float64  `json:"sys_cpu"`
}

type fioSide struct {
	IOBytes  float64 `json:"io_bytes"`
	BWBytes  float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	RuntimeM float64 `json:"runtime"` // milliseconds
	TotalIOs float64 `json:"total_ios"`
	Lat      fioLat  `json:"lat_ns"`
	Clat     fioLat  `json:"clat_ns"`
}

type fioLat struct {
	Min        float64            `json:"min"`
	Max        float64            `json:"max"`
	Mean       float64            `json:"mean"`
	N          float64            `json:"N"`
	Percentile map[string]float64 `json:"percentile"`
}

// fioResult is what one fio run measured, all jobs and directions
// together.
type fioResult struct {
	Version    string
	IOPS       float64
	BytesPerS  float64
	IOBytes    float64
	Ops        float64
	RuntimeS   float64
	Latency    Latency
	ClientCPU  float64 // fio's own usr+sys CPU, percent of one core
	Directions []string
}

// parseFioJSON reads fio's JSON output. fio's nbd engine may print
// notices ("fio: connected to NBD server") before the document, so
// parsing starts at the first line that opens a JSON object. Latency is
// total latency (lat_ns, submission to completion) when fio reported its
// percentiles (--lat_percentiles=1), else completion latency (clat_ns).
func parseFioJSON(b []byte) (*fioResult, error) {
	start := -1
	for i := 0; i < len(b); {
		if b[i] == '{' {
			start = i
			break
		}
		nl := bytes.IndexByte(b[i:], '\n')
		if nl < 0 {
			break
		}
		i += nl + 1
	}
	if start < 0 {
		return nil, fmt.Errorf("%w: no JSON document in %q", ErrFioOutput, truncate(string(b), 200))
	}
	var out fioOutput
	dec := json.NewDecoder(bytes.NewReader(b[start:]))
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFioOutput, err)
	}
	if len(out.Jobs) == 0 {
		return nil, fmt.Errorf("%w: no jobs", ErrFioOutput)
	}
	r := &fioResult{Version: out.Version}
	var curves []curve
	for _, j := range out.Jobs {
		if j.Error != 0 {
			return nil, fmt.Errorf("%w: job %s failed with error %d", ErrFioOutput, j.Name, j.Error)
		}
		r.ClientCPU += j.UsrCPU + j.SysCPU
		for _, d := range []struct {
			name string
			side *fioSide
		}{{"mixed", j.Mixed}, {"read", j.Read}, {"write", j.Write}, {"trim", j.Trim}} {
			if d.side == nil || d.side.TotalIOs == 0 {
				continue
			}
			s := d.side
			r.IOPS += s.IOPS
			r.BytesPerS += s.BWBytes
			r.IOBytes += s.IOBytes
			r.Ops += s.TotalIOs
			r.RuntimeS = max(r.RuntimeS, s.RuntimeM/1e3)
			r.Directions = appendUniqueString(r.Directions, d.name)
			lat := s.Lat
			if len(lat.Percentile) == 0 {
				lat = s.Clat
			}
			c, err := lat.curve()
			if err != nil {
				return nil, fmt.Errorf("%w: job %s %s: %w", ErrFioOutput, j.Name, d.name, err)
			}
			curves = append(curves, c)
		}
	}
	if r.Ops == 0 {
		return nil, fmt.Errorf("%w: no I/O completed", ErrFioOutput)
	}
	at, mean := mixture(curves)
	var points []float64
	for _, c := range curves {
		for _, p := range c.Points {
			points = appendUniqueFloat(points, p.Percentile)
		}
	}
	sort.Float64s(points)
	r.Latency = latencyFrom(at, mean, points)
	return r, nil
}

// curve turns fio's percentiles (keys like "99.900000", values in ns)
// into a curve in µs with the minimum at 0 and the maximum at 100.
func (l fioLat) curve() (curve, error) {
	c := curve{Weight: l.N, MeanUs: l.Mean / 1e3}
	c.Points = append(c.Points, CDFPoint{0, l.Min / 1e3})
	keys := make([]float64, 0, len(l.Percentile))
	vals := map[float64]float64{}
	for k, v := range l.Percentile {
		p, err := strconv.ParseFloat(k, 64)
		if err != nil {
			return c, fmt.Errorf("percentile key %q: %w", k, err)
		}
		keys = append(keys, p)
		vals[p] = v
	}
	sort.Float64s(keys)
	for _, p := range keys {
		if p <= 0 || p >= 100 {
			continue
		}
		// fio reports a percentile as the upper edge of its histogram
		// bucket; keep the curve within the recorded range.
		v := min(max(vals[p], l.Min), l.Max)
		c.Points = append(c.Points, CDFPoint{p, v / 1e3})
	}
	c.Points = append(c.Points, CDFPoint{100, l.Max / 1e3})
	if c.Weight == 0 {
		c.Weight = 1
	}
	return c, nil
}

func appendUniqueString(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func appendUniqueFloat(list []float64, f float64) []float64 {
	for _, x := range list {
		if x == f {
			return list
		}
	}
	return append(list, f)
}

// readIOPSLogs reads the IOPS logs fio wrote with
// --write_iops_log=prefix --log_avg_msec=interval (prefix_iops.N.log in
// dir, one a job) into a timeline: each line is "time ms, IOPS, data
// direction, block size, offset[, priority]", time being the end of its
// interval. Lines of the same interval (directions, jobs) add up; time
// counts from the first interval, so a ramp before logging began is left
// out. It returns the log files, relative to dir.
func readIOPSLogs(dir, prefix string, interval time.Duration) (*Timeline, []string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, prefix+"_iops.*.log"))
	if err != nil || len(paths) == 0 {
		return nil, nil, fmt.Errorf("%w: no IOPS log %s_iops.*.log (%v)", ErrFioOutput, prefix, err)
	}
	sort.Strings(paths)
	var files []string
	type sample struct{ ms, iops float64 }
	var samples []sample
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		files = append(files, rel)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, files, fmt.Errorf("IOPS log: %w", err)
		}
		for n, line := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			f := strings.Split(line, ",")
			if len(f) < 2 {
				return nil, files, fmt.Errorf("%w: %s line %d: %q", ErrFioOutput, rel, n+1, line)
			}
			ms, err1 := strconv.ParseFloat(strings.TrimSpace(f[0]), 64)
			v, err2 := strconv.ParseFloat(strings.TrimSpace(f[1]), 64)
			if err1 != nil || err2 != nil {
				return nil, files, fmt.Errorf("%w: %s line %d: %q", ErrFioOutput, rel, n+1, line)
			}
			samples = append(samples, sample{ms, v})
		}
	}
	if len(samples) == 0 {
		return nil, files, fmt.Errorf("%w: IOPS log %s is empty", ErrFioOutput, prefix)
	}
	step := float64(interval.Milliseconds())
	first := math.Inf(1)
	for _, s := range samples {
		first = math.Min(first, s.ms)
	}
	// The first interval ends at first; fio's clock jitters by a few
	// milliseconds, so an interval is the nearest multiple of step.
	t := &Timeline{IntervalS: interval.Seconds(), Events: []Event{}}
	for _, s := range samples {
		i := int(math.Round((s.ms - first) / step))
		for len(t.IOPS) <= i {
			t.IOPS = append(t.IOPS, 0)
			t.Errors = append(t.Errors, 0)
		}
		t.IOPS[i] += s.iops
	}
	return t, files, nil
}
