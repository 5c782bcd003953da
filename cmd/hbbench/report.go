package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Report is everything hbbench measured and checked; --json prints it as is.
type Report struct {
	Meta    Meta      `json:"meta"`
	Results []*Result `json:"results"`
	Checks  []Check   `json:"checks"`
	Notes   []string  `json:"notes,omitempty"`
	Skipped []string  `json:"skipped,omitempty"`
	// OK is false when a correctness check failed (a missed exit, a slot
	// left wrong, a test that could not run); timings never clear it.
	OK bool `json:"ok"`
	// suffix is appended to the names of the results and checks added
	// while it is set (the runs under --load).
	suffix string
}

// Meta describes the run.
type Meta struct {
	// Load is --load: the death and respawn tests ran again under it.
	Load       string   `json:"load,omitempty"`
	Date       string   `json:"date"`
	Kernel     string   `json:"kernel"`
	CPU        string   `json:"cpu"`
	Cores      int      `json:"cores"`
	GoVersion  string   `json:"go_version"`
	HBD        string   `json:"hbd"` // hbd --version
	Command    string   `json:"command"`
	Root       bool     `json:"root"`
	Connector  bool     `json:"connector"`  // the proc connector works here
	Tracepoint bool     `json:"tracepoint"` // the exit tracepoint (eBPF) works here
	Reader     string   `json:"reader"`     // spin or yield
	Tests      []string `json:"tests"`
	Kills      int      `json:"kills"`
	Services   int      `json:"services"`
	FloodSecs  float64  `json:"flood_secs"`
	Seconds    float64  `json:"seconds"` // wall time of the whole run
	// LoadAvg is /proc/loadavg at the start and at the end: other work on
	// the machine shows here.
	LoadAvg []string `json:"loadavg"`
}

// Result is one measured series. Single measurements have N 1 and
// P50 = P99 = Max.
type Result struct {
	Test string  `json:"test"`
	Name string  `json:"name"`
	Unit string  `json:"unit"`
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	// Baseline names the Result (same Test) the ratios are taken against.
	Baseline string  `json:"baseline,omitempty"`
	RatioP50 float64 `json:"ratio_p50,omitempty"`
	RatioP99 float64 `json:"ratio_p99,omitempty"`
	// Target is the target (docs/benchmark.md) for this figure; Meets says whether
	// this run met it (informational: timings never fail the run).
	Target string `json:"target,omitempty"`
	Meets  *bool  `json:"meets_target,omitempty"`
	Note   string `json:"note,omitempty"`
	// Samples are a distribution's values, in Unit, in the order taken
	// (for --plot).
	Samples []float64 `json:"samples,omitempty"`
}

// Check is one correctness check.
type Check struct {
	Test   string `json:"test"`
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func (r *Report) add(res Result) *Result {
	if r.suffix != "" && !strings.HasSuffix(res.Name, r.suffix) {
		res.Name += r.suffix
	}
	p := &res
	r.Results = append(r.Results, p)
	return p
}

// addSeries adds a distribution in nanoseconds, shown in unit.
func (r *Report) addSeries(test, name, unit string, ns []float64) *Result {
	s := summarize(ns)
	samples := make([]float64, len(ns))
	for i, v := range ns {
		samples[i] = nsTo(v, unit)
	}
	return r.add(Result{Test: test, Name: name, Unit: unit, N: s.N,
		P50: nsTo(s.P50, unit), P99: nsTo(s.P99, unit), Max: nsTo(s.Max, unit), Samples: samples})
}

// addValue adds a single measurement.
func (r *Report) addValue(test, name, unit string, v float64) *Result {
	return r.add(Result{Test: test, Name: name, Unit: unit, N: 1, P50: v, P99: v, Max: v})
}

// against fills the ratios of res against the result named base.
func (r *Report) against(res *Result, base string) {
	base += r.suffix
	for _, b := range r.Results {
		if b.Test == res.Test && b.Name == base && b.P50 > 0 && b.P99 > 0 && b.Unit == res.Unit {
			res.Baseline = base
			res.RatioP50 = res.P50 / b.P50
			res.RatioP99 = res.P99 / b.P99
			return
		}
	}
}

func (r *Report) check(test, name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Test: test, Name: name + r.suffix, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func meets(res *Result, ok bool) { res.Meets = &ok }

// meetsRatio records whether res's ratios are within p50 and p99 (when
// there is a baseline to compare with).
func meetsRatio(res *Result, p50, p99 float64) {
	if res.Baseline == "" || res.N == 0 {
		return
	}
	meets(res, res.RatioP50 <= p50 && res.RatioP99 <= p99)
}

// ok reports whether every check passed.
func (r *Report) ok() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func (r *Report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// num formats a figure with 3 significant digits, without exponent.
func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1 || v <= -1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func (r *Report) writeMarkdown(w io.Writer) {
	m := r.Meta
	fmt.Fprintf(w, "# hbbench\n\n")
	fmt.Fprintf(w, "- date: %s\n- kernel: %s\n- cpu: %s (%d cores)\n- go: %s; %s\n- command: `%s`\n",
		m.Date, m.Kernel, m.CPU, m.Cores, m.GoVersion, m.HBD, m.Command)
	fmt.Fprintf(w, "- root: %v; proc connector here: %v; exit tracepoint here: %v; hb reader: C, %s loop on hb_pid()\n- wall time: %.1f s; load average at start / end: %s\n\n",
		m.Root, m.Connector, m.Tracepoint, m.Reader, m.Seconds, strings.Join(m.LoadAvg, " / "))
	fmt.Fprintf(w, "| test | what | n | p50 | p99 | max | unit | vs baseline | ratio p50 | ratio p99 | target | met |\n")
	fmt.Fprintf(w, "|---|---|--:|--:|--:|--:|---|---|--:|--:|---|---|\n")
	for _, res := range r.Results {
		ratio50, ratio99 := "", ""
		if res.Baseline != "" {
			ratio50, ratio99 = fmt.Sprintf("%.2f×", res.RatioP50), fmt.Sprintf("%.2f×", res.RatioP99)
		}
		met := ""
		if res.Meets != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*res.Meets]
		}
		name := res.Name
		if res.Note != "" {
			name += " (" + res.Note + ")"
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			res.Test, name, res.N, num(res.P50), num(res.P99), num(res.Max), res.Unit,
			res.Baseline, ratio50, ratio99, res.Target, met)
	}
	fmt.Fprintf(w, "\n## Correctness checks\n\n| test | check | result | detail |\n|---|---|---|---|\n")
	for _, c := range r.Checks {
		res := "ok"
		if !c.OK {
			res = "**FAIL**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", c.Test, c.Name, res, strings.ReplaceAll(c.Detail, "|", "/"))
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, "\nSkipped:\n")
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "- %s\n", s)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintf(w, "\nNotes:\n")
		for _, s := range r.Notes {
			fmt.Fprintf(w, "- %s\n", s)
		}
	}
	verdict := "PASS: no exit missed, no slot left wrong"
	if !r.OK {
		verdict = "FAIL: see the checks above"
	}
	fmt.Fprintf(w, "\n%s\n", verdict)
}
