package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/color/palette"
	imgdraw "image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Plot sizes: small enough to commit one to the README.
const (
	plotWidth  = 7 * vg.Inch
	plotHeight = 4 * vg.Inch
)

// writePlots draws a latency CDF per workload (one line per target) and
// IOPS over time for every workload with a timeline (one line per target,
// events marked). It returns the files it wrote, relative to dir.
func writePlots(r *Report, dir string) ([]string, error) {
	var files []string
	colors := map[string]color.Color{}
	for i, t := range r.tableOrder() {
		colors[t] = plotutil.Color(i)
	}
	for _, w := range r.Workloads {
		var cdfs, timelines []*Result
		for _, t := range r.tableOrder() {
			res := r.Result(w.Name, t)
			if res == nil || res.Error != "" || res.Skipped != "" {
				continue
			}
			if res.Latency != nil && len(res.Latency.CDF) > 1 {
				cdfs = append(cdfs, res)
			}
			if res.Timeline != nil && len(res.Timeline.IOPS) > 0 {
				timelines = append(timelines, res)
			}
		}
		if len(cdfs) > 0 {
			name := "cdf-" + w.Name + ".png"
			if err := plotCDF(filepath.Join(dir, name), w, cdfs, colors); err != nil {
				return files, err
			}
			files = append(files, name)
		}
		if len(timelines) > 0 {
			name := "timeline-" + w.Name + ".png"
			if err := plotTimeline(filepath.Join(dir, name), w, timelines, colors); err != nil {
				return files, err
			}
			files = append(files, name)
		}
	}
	return files, nil
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	return p
}

// plotCDF draws the latency distributions of one workload: x is latency
// on a log scale, y the share of requests that completed within it.
func plotCDF(path string, w WorkloadInfo, results []*Result, colors map[string]color.Color) error {
	p := newPlot(w.Name+": latency CDF", "latency (log scale)", "requests completed (%)")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = latencyTicks{}
	p.Y.Min, p.Y.Max = 0, 100
	// Bottom right is where a CDF has no lines: fast requests are few.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(4), vg.Points(4)
	lo, hi := math.Inf(1), 0.0
	for _, res := range results {
		var xys plotter.XYs
		for _, pt := range res.Latency.CDF {
			x := math.Max(pt.LatencyUs, 0.1)
			xys = append(xys, plotter.XY{X: x, Y: pt.Percentile})
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", w.Name, err)
		}
		line.Color = colors[res.Target]
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (p50 %s µs, p99 %s µs)", res.Target, fmtUs(res.Latency.P50Us), fmtUs(res.Latency.P99Us)), line)
	}
	// Whole decades, so the log axis has ticks to read.
	p.X.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.X.Max = math.Pow(10, math.Ceil(math.Log10(hi)))
	return savePNG(p, path)
}

// plotTimeline draws IOPS over time, one line per target, with each
// target's events as dashed vertical lines labelled at the top.
func plotTimeline(path string, w WorkloadInfo, results []*Result, colors map[string]color.Color) error {
	p := newPlot(w.Name+": IOPS over time", "time (s)", "IOPS")
	p.Legend.Top, p.Legend.Left = true, false
	top, end := 0.0, 0.0
	for _, res := range results {
		for _, v := range res.Timeline.IOPS {
			top = math.Max(top, v)
		}
		end = math.Max(end, float64(len(res.Timeline.IOPS))*res.Timeline.IntervalS)
	}
	// Headroom above the lines for the legend and the event labels.
	step := niceStep(math.Max(top*1.45, 1) / 5)
	top = math.Ceil(math.Max(top*1.45, 1)/step) * step
	p.Y.Min, p.Y.Max = 0, top
	p.Y.Tick.Marker = stepTicks{step}
	p.X.Min, p.X.Max = 0, end
	var labels plotter.XYLabels
	type placed struct {
		label string
		at    float64
	}
	var seen []placed
	for _, res := range results {
		tl := res.Timeline
		var xys plotter.XYs
		for i, v := range tl.IOPS {
			xys = append(xys, plotter.XY{X: (float64(i) + 0.5) * tl.IntervalS, Y: v})
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", w.Name, err)
		}
		line.Color = colors[res.Target]
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(res.Target, line)
		for _, e := range tl.Events {
			mark, err := plotter.NewLine(plotter.XYs{{X: e.AtS, Y: 0}, {X: e.AtS, Y: top}})
			if err != nil {
				return err
			}
			mark.Color = colors[res.Target]
			mark.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(mark)
			// One label for the same event on several targets; other
			// labels step down so they do not overlap.
			dup := false
			for _, s := range seen {
				if s.label == e.Label && math.Abs(s.at-e.AtS) < 2*tl.IntervalS {
					dup = true
				}
			}
			if dup {
				continue
			}
			seen = append(seen, placed{e.Label, e.AtS})
			y := top * (0.97 - 0.06*float64((len(seen)-1)%8))
			labels.XYs = append(labels.XYs, plotter.XY{X: e.AtS, Y: y})
			labels.Labels = append(labels.Labels, " "+e.Label)
		}
	}
	if len(labels.XYs) > 0 {
		l, err := plotter.NewLabels(labels)
		if err != nil {
			return err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(8)
			l.TextStyle[i].YAlign = draw.YTop
		}
		p.Add(l)
	}
	return savePNG(p, path)
}

// niceStep rounds a tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

// stepTicks marks every multiple of Step, labelled without decimals when
// the step is whole (10000, not 10000.00).
type stepTicks struct{ Step float64 }

func (s stepTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for v := math.Ceil(lo/s.Step) * s.Step; v <= hi+s.Step/1e6; v += s.Step {
		label := strconv.FormatFloat(v, 'f', -1, 64)
		if s.Step >= 1 {
			label = fmt.Sprintf("%.0f", v)
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: label})
	}
	return ticks
}

// savePNG renders a plot and writes it as a paletted PNG: a plot has few
// colours, and a palette makes the file a third the size, small enough to
// commit.
func savePNG(p *plot.Plot, path string) error {
	c := vgimg.NewWith(vgimg.UseWH(plotWidth, plotHeight), vgimg.UseDPI(96))
	p.Draw(draw.New(c))
	src := c.Image()
	pal := append(color.Palette{}, palette.Plan9...)
	img := image.NewPaletted(src.Bounds(), pal)
	imgdraw.Draw(img, img.Bounds(), src, src.Bounds().Min, imgdraw.Src)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("save plot: %w", err)
	}
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

// latencyTicks marks a log axis of microseconds at every decade, labelled
// in the unit that reads best (100 µs, 10 ms, 1 s).
type latencyTicks struct{}

func (latencyTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.LogTicks{Prec: -1}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label == "" {
			continue
		}
		switch us := t.Value; {
		case us >= 1e6:
			ticks[i].Label = strconv.FormatFloat(us/1e6, 'g', -1, 64) + " s"
		case us >= 1e3:
			ticks[i].Label = strconv.FormatFloat(us/1e3, 'g', -1, 64) + " ms"
		default:
			ticks[i].Label = strconv.FormatFloat(us, 'g', -1, 64) + " µs"
		}
	}
	return ticks
}
