package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotReport writes SVG plots of r into dir: for each test with
// distributions, their CDFs on one plot (hb beside the baselines and peers
// of the same run), and for the chain, packets lost per kill per method. It
// returns the files written.
func plotReport(r *Report, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	var tests []string
	for _, res := range r.Results {
		if len(res.Samples) > 1 && !slices.Contains(tests, res.Test) {
			tests = append(tests, res.Test)
		}
	}
	for _, test := range tests {
		f, err := plotCDF(r, test, dir)
		if err != nil {
			return files, fmt.Errorf("plot %s: %w", test, err)
		}
		if f != "" {
			files = append(files, f)
		}
	}
	if f, err := plotChain(r, dir); err != nil {
		return files, fmt.Errorf("plot chain: %w", err)
	} else if f != "" {
		files = append(files, f)
	}
	return files, nil
}

// plotCDF plots the distributions of one test, one line each, on a log
// time axis; "" when no distribution has two samples above 0.
func plotCDF(r *Report, test, dir string) (string, error) {
	p := plot.New()
	p.Title.Text = test + ": cumulative distribution"
	p.Y.Label.Text = "fraction of samples ≤ x"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = false
	p.Legend.Left = false
	var lines []any
	unit := ""
	for _, res := range r.Results {
		if res.Test != test || len(res.Samples) < 2 || !plotted(res.Name) {
			continue
		}
		if unit == "" {
			unit = res.Unit
		}
		if res.Unit != unit {
			continue // one axis: the test's first unit
		}
		xs := slices.Clone(res.Samples)
		slices.Sort(xs)
		pts := make(plotter.XYs, 0, len(xs))
		for i, x := range xs {
			if x <= 0 {
				continue // a log axis has no room for 0
			}
			pts = append(pts, plotter.XY{X: x, Y: float64(i+1) / float64(len(xs))})
		}
		if len(pts) < 2 {
			continue
		}
		lines = append(lines, shorten(res.Name), pts)
	}
	if len(lines) == 0 {
		return "", nil // nothing above 0 to put on a log axis
	}
	p.X.Label.Text = unit + " (log scale)"
	if err := plotutil.AddLines(p, lines...); err != nil {
		return "", err
	}
	file := filepath.Join(dir, test+"-cdf.svg")
	return file, p.Save(9*vg.Inch, 6*vg.Inch, file)
}

// plotChain plots packets lost per kill for each method of the chain test;
// "" when the report has none.
func plotChain(r *Report, dir string) (string, error) {
	var names []string
	var vals plotter.Values
	for _, res := range r.Results {
		if res.Test == "chain" && strings.HasPrefix(res.Name, "packets lost per kill, ") {
			method, _, _ := strings.Cut(strings.TrimPrefix(res.Name, "packets lost per kill, "), " (")
			names = append(names, fmt.Sprintf("%s: %.3g", method, res.P50))
			vals = append(vals, res.P50)
		}
	}
	if len(vals) == 0 {
		return "", nil
	}
	p := plot.New()
	p.Title.Text = "chain: packets lost per kill of the active worker"
	p.Y.Label.Text = "packets per kill"
	bars, err := plotter.NewBarChart(vals, vg.Points(40))
	if err != nil {
		return "", err
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	p.NominalX(names...)
	file := filepath.Join(dir, "chain-loss.svg")
	return file, p.Save(9*vg.Inch, 5*vg.Inch, file)
}

// plotted reports whether a distribution goes on its test's plot: the
// figures a reader compares (hb's and the waiters' on the same kill), not
// the differences, the waiters on their own children or the split of hb's
// path into steps, which the report's table has.
func plotted(name string) bool {
	for _, skip := range []string{"minus", "own child", "plugin detects", "reader sees 0 after"} {
		if strings.Contains(name, skip) {
			return false
		}
	}
	return true
}

// shorten keeps a legend entry readable.
func shorten(s string) string {
	if len(s) > 70 {
		return s[:67] + "..."
	}
	return s
}

// loadReport reads a report hbbench --json wrote.
func loadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: not an hbbench --json report: %w", path, err)
	}
	return &r, nil
}
