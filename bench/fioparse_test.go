package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The testdata are real fio 3.33 outputs of the nbd engine against
// qemu-nbd, as the harness captures them (stdout only; fio prints its
// "connected to NBD server" notice there before the JSON):
//   - fio-4k-randread-qd32.json: the harness's own job, reads and writes
//     reported together (--unified_rw_reporting=mixed).
//   - fio-4k-randrw-split.json: a 70/30 job over two connections without
//     unified or group reporting: two jobs, each with read and write
//     sides, which the parser must combine.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(a, b, rel float64) bool { return math.Abs(a-b) <= rel*math.Max(math.Abs(a), math.Abs(b)) }

func TestParseFioJSONMixed(t *testing.T) {
	b := readTestdata(t, "fio-4k-randread-qd32.json")
	if !strings.HasPrefix(string(b), "fio: connected to NBD server\n") {
		t.Fatal("testdata lost the notice that precedes the JSON")
	}
	r, err := parseFioJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	// The numbers of its "mixed" side.
	if r.Version != "fio-3.33" || r.IOPS != 13400.383142 || r.BytesPerS != 54887969 || r.IOBytes != 57303040 || r.Ops != 13990 {
		t.Errorf("parsed %+v", r)
	}
	l := r.Latency
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"min", l.MinUs, 299.288}, {"p50", l.P50Us, 2146.304}, {"p99", l.P99Us, 5799.936},
		{"p99.9", l.P999Us, 44826.624}, {"max", l.MaxUs, 45176.723}, {"mean", l.MeanUs, 2381.874811079},
	} {
		if !near(c.got, c.want, 1e-9) {
			t.Errorf("%s = %v µs, want %v", c.name, c.got, c.want)
		}
	}
	if !near(r.ClientCPU, 10.354746+22.243528, 1e-9) {
		t.Errorf("client CPU = %v", r.ClientCPU)
	}
	// The CDF holds fio's 17 percentiles plus the minimum and maximum.
	if len(l.CDF) != 19 || l.CDF[0].Percentile != 0 || l.CDF[18].Percentile != 100 {
		t.Fatalf("CDF = %v", l.CDF)
	}
	for i := 1; i < len(l.CDF); i++ {
		if l.CDF[i].LatencyUs < l.CDF[i-1].LatencyUs || l.CDF[i].Percentile <= l.CDF[i-1].Percentile {
			t.Errorf("CDF not increasing at %d: %v", i, l.CDF)
		}
	}
}

func TestParseFioJSONCombinesJobsAndDirections(t *testing.T) {
	r, err := parseFioJSON(readTestdata(t, "fio-4k-randrw-split.json"))
	if err != nil {
		t.Fatal(err)
	}
	out := readFioSides(t, "fio-4k-randrw-split.json")
	var iops, ops float64
	var p50s []float64
	for _, s := range out {
		iops += s.IOPS
		ops += s.TotalIOs
		p50s = append(p50s, s.Lat.Percentile["50.000000"]/1e3)
	}
	if len(out) != 4 {
		t.Fatalf("testdata has %d sides, want 2 jobs × read and write", len(out))
	}
	if !near(r.IOPS, iops, 1e-12) || r.Ops != ops {
		t.Errorf("IOPS, ops = %v, %v; want the sums %v, %v", r.IOPS, r.Ops, iops, ops)
	}
	if len(r.Directions) != 2 {
		t.Errorf("directions = %v, want read and write", r.Directions)
	}
	// The combined median lies between the sides' medians.
	lo, hi := slicesMin(p50s), slicesMax(p50s)
	if r.Latency.P50Us < lo || r.Latency.P50Us > hi {
		t.Errorf("combined p50 %v µs outside the sides' p50s [%v, %v]", r.Latency.P50Us, lo, hi)
	}
	if r.Latency.P99Us < r.Latency.P50Us || r.Latency.MaxUs < r.Latency.P999Us {
		t.Errorf("combined percentiles out of order: %+v", r.Latency)
	}
}

// readFioSides returns every job's read and write side of a testdata file.
func readFioSides(t *testing.T, name string) []*fioSide {
	t.Helper()
	b := readTestdata(t, name)
	var out fioOutput
	if err := jsonUnmarshalFrom(b, &out); err != nil {
		t.Fatal(err)
	}
	var sides []*fioSide
	for _, j := range out.Jobs {
		for _, s := range []*fioSide{j.Read, j.Write} {
			if s != nil && s.TotalIOs > 0 {
				sides = append(sides, s)
			}
		}
	}
	return sides
}

func TestParseFioJSONRejectsUnusableOutput(t *testing.T) {
	for name, in := range map[string]string{
		"nothing":     "",
		"no JSON":     "fio: failed to connect to NBD server\n",
		"truncated":   "{\n \"jobs\": [",
		"no jobs":     `{"fio version": "fio-3.33", "jobs": []}`,
		"job failed":  `{"jobs": [{"jobname": "x", "error": 5, "read": {"total_ios": 3}}]}`,
		"no I/O done": `{"jobs": [{"jobname": "x", "read": {"total_ios": 0}}]}`,
	} {
		if _, err := parseFioJSON([]byte(in)); !errors.Is(err, ErrFioOutput) {
			t.Errorf("%s: err = %v, want ErrFioOutput", name, err)
		}
	}
}

func TestFioArgs(t *testing.T) {
	w := multiConn(4, 8)
	args := strings.Join(w.args("nbd://127.0.0.1:1/x", 1<<30, 10*time.Second, 2*time.Second, ""), " ")
	for _, want := range []string{
		"--ioengine=nbd", "--uri=nbd://127.0.0.1:1/x", "--rw=randrw", "--rwmixread=70", "--bs=4096",
		"--iodepth=8", "--numjobs=4", "--size=268435456", "--offset_increment=268435456",
		"--runtime=10000ms", "--ramp_time=2000ms", "--unified_rw_reporting=mixed", "--lat_percentiles=1",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("fio args %q lack %q", args, want)
		}
	}
	if n := strings.Count(fioPercentiles, ":") + 1; n > 20 {
		t.Errorf("%d percentiles; fio accepts at most 20", n)
	}
}

func slicesMin(v []float64) float64 {
	m := math.Inf(1)
	for _, x := range v {
		m = math.Min(m, x)
	}
	return m
}

func slicesMax(v []float64) float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = math.Max(m, x)
	}
	return m
}

// jsonUnmarshalFrom decodes the JSON document that follows fio's notices.
func jsonUnmarshalFrom(b []byte, v any) error {
	return json.Unmarshal(b[bytes.IndexByte(b, '{'):], v)
}

func TestFioArgsFlushAndTimeline(t *testing.T) {
	w := &FioWorkload{ID: "x", RW: "randwrite", BlockBytes: 4096, IODepth: 1, Fsync: 1, WorkingSetBytes: 64 << 20,
		TimelineInterval: time.Second}
	args := strings.Join(w.args("nbd://h/x", w.region(&Suite{RegionBytes: 1 << 30}), time.Minute, 0, "fio/t-x"), " ")
	for _, want := range []string{"--fsync=1", "--size=67108864", "--write_iops_log=fio/t-x", "--log_avg_msec=1000", "--runtime=60000ms"} {
		if !strings.Contains(args, want) {
			t.Errorf("fio args %q lack %q", args, want)
		}
	}
	if strings.Contains(args, "ramp_time") {
		t.Errorf("fio args %q ramp though the suite has none", args)
	}
}

// TestReadIOPSLogs reads fio's IOPS logs of two jobs, with the clock's
// jitter and a ramp before the first interval, into a timeline, and
// averages it per window.
func TestReadIOPSLogs(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "fio"), 0o755)
	logs := map[string]string{
		"fio/t-x_iops.1.log": "2500, 100, 1, 0, 0\n3001, 110, 1, 0, 0\n3500, 120, 1, 0, 0\n3999, 130, 1, 0, 0\n4500, 140, 1, 0, 0\n",
		"fio/t-x_iops.2.log": "2500, 1, 0, 0, 0\n3000, 1, 1, 0, 0\n3500, 1, 1, 0, 0\n4000, 1, 1, 0, 0\n4501, 1, 1, 0, 0\n",
	}
	for name, body := range logs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tl, files, err := readIOPSLogs(dir, "fio/t-x", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{101, 111, 121, 131, 141}; !slices.Equal(tl.IOPS, want) || len(tl.Errors) != len(want) || tl.IntervalS != 0.5 {
		t.Errorf("timeline = %+v, want IOPS %v", tl, want)
	}
	if !slices.Equal(files, []string{"fio/t-x_iops.1.log", "fio/t-x_iops.2.log"}) {
		t.Errorf("files = %v", files)
	}
	// Windows of a second: the fifth interval is half a window, which
	// counts (fio may leave a run's last interval unlogged); a third of
	// one would not.
	if w := tl.windows(time.Second); !slices.Equal(w, []float64{106, 126, 141}) {
		t.Errorf("windows = %v", w)
	}
	if w := tl.windows(2 * time.Second); !slices.Equal(w, []float64{116}) {
		t.Errorf("windows of 2 s = %v", w)
	}
	if _, _, err := readIOPSLogs(dir, "fio/none", time.Second); !errors.Is(err, ErrFioOutput) {
		t.Errorf("no log: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "fio/bad_iops.1.log"), []byte("1000; 5\n"), 0o644)
	if _, _, err := readIOPSLogs(dir, "fio/bad", time.Second); !errors.Is(err, ErrFioOutput) {
		t.Errorf("bad log: %v", err)
	}
}
