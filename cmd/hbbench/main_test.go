package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    func(*options) bool
		wantErr string
	}{
		{name: "defaults", args: nil, want: func(o *options) bool {
			return o.kills == 200 && o.services == 1000 && o.floodSecs == 10 && len(o.only) == len(allTests) && o.only["chain"] && o.reader == "yield"
		}},
		{name: "quick presets", args: []string{"--quick"}, want: func(o *options) bool {
			return o.kills == 10 && o.services == 50 && o.floodSecs == 2 && o.idleSecs == 1
		}},
		{name: "explicit flag beats preset", args: []string{"--quick", "--kills", "3"}, want: func(o *options) bool {
			return o.kills == 3 && o.services == 50
		}},
		{name: "long presets", args: []string{"--long"}, want: func(o *options) bool { return o.kills == 1000 && o.floodSecs == 30 }},
		{name: "only table", args: []string{"--only", "table"}, want: func(o *options) bool { return len(o.only) == 1 && o.only["table"] }},
		{name: "only", args: []string{"--only", "death, peer"}, want: func(o *options) bool {
			return len(o.only) == 2 && o.only["death"] && o.only["peer"]
		}},
		{name: "unknown test", args: []string{"--only", "death,speed"}, wantErr: `unknown test "speed"`},
		{name: "quick and long", args: []string{"--quick", "--long"}, wantErr: "exclude each other"},
		{name: "bad reader", args: []string{"--reader", "sleep"}, wantErr: "--reader"},
		{name: "zero kills", args: []string{"--kills", "0"}, wantErr: "at least 1"},
		{name: "stray argument", args: []string{"now"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags(%q) error = %v, want one containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tt.args, err)
			}
			if !tt.want(o) {
				t.Errorf("parseFlags(%q) = %+v", tt.args, *o)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	xs := make([]float64, 0, 200)
	for i := 200; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	got := summarize(xs)
	want := summary{N: 200, P50: 100, P99: 198, Max: 200}
	if got != want {
		t.Errorf("summarize(1..200) = %+v, want %+v", got, want)
	}
	if got := summarize([]float64{7}); got != (summary{N: 1, P50: 7, P99: 7, Max: 7}) {
		t.Errorf("summarize([7]) = %+v", got)
	}
	if got := summarize(nil); got != (summary{}) {
		t.Errorf("summarize(nil) = %+v", got)
	}
}

// buildTools builds hbbench, hbd and hbclient into one directory, the way
// make build lays out bin/.
func buildTools(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in $PATH to build hbbench and hbd")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		if cc, err = exec.LookPath("gcc"); err != nil {
			t.Skip("no C compiler (cc or gcc) for hbclient and the helper")
		}
	}
	dir := t.TempDir()
	for _, pkg := range []string{".", "../hbd"} {
		cmd := exec.Command(goTool, "build", "-o", dir+"/", pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	cmd := exec.Command(cc, "-std=c11", "-O2", "-o", filepath.Join(dir, "hbclient"), "../../contrib/c/hbclient.c")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("compile hbclient: %v\n%s", err, b)
	}
	return dir
}

// TestQuickRun runs the real benchmark with tiny counts and checks the JSON
// it prints. Only shapes and correctness are checked, never timings. As
// non-root the proc connector parts are present only if the connector works
// here; the pidfd parts always run.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(dir, "hbbench"), "--quick", "--only", "death,respawn,peer",
		"--kills", "3", "--peer-batches", "3", "--settle", "2ms", "--json", "--include", "../../contrib/c")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("hbbench ran in %v; stderr:\n%s", time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("hbbench: %v\nstdout:\n%s", err, stdout.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("hbbench --json output is not a report: %v\n%s", err, stdout.String())
	}
	if !rep.OK {
		t.Errorf("report ok = false; checks: %+v", rep.Checks)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	m := rep.Meta
	if m.Date == "" || m.Kernel == "" || m.Command == "" || m.Cores < 1 || len(m.LoadAvg) != 2 {
		t.Errorf("meta incomplete: %+v", m)
	}
	if strings.Join(m.Tests, ",") != "death,respawn,peer" {
		t.Errorf("meta.tests = %v, want death,respawn,peer", m.Tests)
	}
	det := "pidfd"
	switch {
	case m.Tracepoint:
		det = "tracepoint"
	case m.Connector:
		det = "connector"
	}
	want := []struct {
		test, name string
		baseline   bool // has ratios against a baseline
	}{
		{"death", "raw pidfd waiter on the same kill as hb detector=pidfd: kill→reader sees 0", false},
		{"death", "raw pidfd waiter on its own child: kill→reader sees 0", false},
		{"death", "hb detector=pidfd: kill→slot 0", true},
		{"death", "hb detector=pidfd: kill→plugin detects", false},
		{"respawn", "bare supervisor thread (waitpid, vfork+exec), C client (hbclient): kill→reader sees new PID", false},
		{"respawn", "hb detector=" + det + ", C client (hbclient): kill→new PID in slot", true},
		{"peer", "C kill(pid, 0)", false},
		{"peer", "C hb_pid()", true},
		{"peer", "Go Table.PID", true},
	}
	if m.Connector {
		want = append(want,
			struct {
				test, name string
				baseline   bool
			}{"death", "raw proc connector waiter on the same kill as hb detector=connector: kill→reader sees 0", false},
			struct {
				test, name string
				baseline   bool
			}{"death", "hb detector=connector: kill→slot 0", true})
	}
	for _, w := range want {
		var got *Result
		for _, res := range rep.Results {
			if res.Test == w.test && res.Name == w.name {
				got = res
			}
		}
		if got == nil {
			t.Errorf("no result %s / %q", w.test, w.name)
			continue
		}
		if got.N == 0 || got.Unit == "" || got.P50 <= 0 || got.P50 > got.P99 || got.P99 > got.Max {
			t.Errorf("%s / %q: bad distribution %+v", w.test, w.name, *got)
		}
		if w.baseline && (got.Baseline == "" || got.RatioP50 <= 0 || got.RatioP99 <= 0) {
			t.Errorf("%s / %q: no ratio against a baseline: %+v", w.test, w.name, *got)
		}
	}
	// Nothing left behind: no table of this run in /dev/shm.
	prefix := fmt.Sprintf("hbbench-%d-", cmd.Process.Pid)
	ents, _ := os.ReadDir("/dev/shm")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("/dev/shm/%s left behind", e.Name())
		}
	}
}

// TestQuickChain runs the example chain (contrib/examples/chain, compiled
// from its sources) under hbd with each liveness method and checks that the
// packet counts add up and that rx, reading hb's slot word, switched to the
// standby at every kill. Loss figures are timings: not checked.
func TestQuickChain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	rep := runReport(t, dir, "--only", "chain", "--chain-kills", "2")
	checks := map[string]bool{}
	for _, c := range rep.Checks {
		checks[c.Name] = c.OK
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	if !checks["hung: rx switched at every hang"] {
		t.Errorf("no passing hang check in %+v", rep.Checks)
	}
	if !checks["hb: rx switched at every kill"] {
		t.Errorf("no passing switch check in %+v", rep.Checks)
	}
	for _, m := range chainMethods {
		found := false
		for _, res := range rep.Results {
			if res.Test == "chain" && strings.HasPrefix(res.Name, "packets lost per kill, "+m.label) && res.N == 2 {
				found = true
			}
		}
		if !found {
			t.Errorf("no loss figure for method %s", m.name)
		}
	}
}

// --plot writes one CDF per test with distributions and the chain's bars,
// as SVG, and --from reads a report back (naming the file when it is not one).
func TestPlotReport(t *testing.T) {
	r := &Report{}
	r.addSeries("death", "hb detector=pidfd: kill→slot 0", "us", []float64{1000, 2000, 3000, 50000})
	r.addSeries("death", "raw pidfd waiter on the same kill as hb detector=pidfd: kill→reader sees 0", "us", []float64{900, 1900, 2500})
	r.addSeries("death", "hb detector=pidfd: hb's kill→slot 0 minus the raw waiter's", "us", []float64{1, 2, 3})
	r.addValue("chain", "packets lost per kill, hb slot word (one load per packet)", "packets", 0)
	r.addValue("chain", "packets lost per kill, UDP heartbeat every 10 ms, dead after 3 missed", "packets", 520)
	path := filepath.Join(t.TempDir(), "report.json")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.writeJSON(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	back, err := loadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Results[0].Samples) != 4 {
		t.Fatalf("samples did not survive the JSON: %+v", back.Results[0])
	}
	dir := t.TempDir()
	files, err := plotReport(back, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "death-cdf.svg"), filepath.Join(dir, "chain-loss.svg")}
	if !slices.Equal(files, want) {
		t.Fatalf("plotReport wrote %q, want %q", files, want)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s is not an SVG (%v): %.80q", f, err, b)
		}
	}
	if b, _ := os.ReadFile(want[0]); bytes.Contains(b, []byte("minus the raw")) || !bytes.Contains(b, []byte("kill→slot 0")) {
		t.Errorf("death plot: the difference series is drawn, or hb's is not")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte("not json"), 0o644)
	if _, err := loadReport(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("loadReport(bad) = %v, want an error naming %s", err, bad)
	}
}

// TestQuickPeers runs the peers test with a handful of services: every
// supervisor that is installed starts them, replaces them after a kill of
// all, and replaces one service after a kill. Only that they ran is checked.
func TestQuickPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	rep := runReport(t, dir, "--only", "peers", "--services", "5", "--scale-rounds", "1",
		"--idle-secs", "0", "--chain-kills", "1")
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	sups := []string{"bare fork/exec", "hb"}
	for _, s := range []struct{ name, bin string }{{"runit", "runsvdir"}, {"s6", "s6-svscan"}, {"supervisord", "supervisord"}} {
		if _, err := exec.LookPath(s.bin); err == nil {
			sups = append(sups, s.name)
		} else {
			t.Logf("%s is not installed: not compared", s.name)
		}
	}
	for _, s := range sups {
		for _, name := range []string{s + ": start 5 services: launch → all running", s + ": kill all 5 → all replaced", s + ": N = 1: kill → the replacement runs"} {
			found := false
			for _, res := range rep.Results {
				found = found || (res.Name == name && res.N >= 1 && res.P50 > 0)
			}
			if !found {
				t.Errorf("no figure %q", name)
			}
		}
	}
}

// TestQuickFat runs the fat-stage test with a small stage: every kill of
// the fat and the tiny stage is recorded and the figures are there.
func TestQuickFat(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	rep := runReport(t, dir, "--only", "fat", "--fat-mib", "64", "--fat-kills", "2")
	if len(rep.Checks) == 0 {
		t.Fatal("no correctness checks in the report")
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	var fat, back bool
	for _, res := range rep.Results {
		fat = fat || (strings.Contains(res.Name, "64 MiB stage: kill→slot 0") && res.N == 2 && res.Baseline != "")
		back = back || (strings.Contains(res.Name, "kill→replacement's PID in the slot") && res.N == 2)
	}
	if !fat || !back {
		t.Errorf("figures missing (kill→slot 0 against its baseline: %v, replacement: %v)", fat, back)
	}
}

// compareLoad gives hb's headline figures under load against the idle ones
// of the same run, and nothing else.
func TestCompareLoad(t *testing.T) {
	r := &Report{}
	r.addSeries("death", "hb detector=pidfd: kill→slot 0", "us", []float64{1000, 2000})
	r.addSeries("death", "raw pidfd waiter on the same kill as hb detector=pidfd: kill→reader sees 0", "us", []float64{1000, 2000})
	r.suffix = loadSuffix
	r.addSeries("death", "hb detector=pidfd: kill→slot 0", "us", []float64{3000, 8000})
	r.addSeries("death", "raw pidfd waiter on the same kill as hb detector=pidfd: kill→reader sees 0", "us", []float64{3000, 8000})
	r.suffix = ""
	compareLoad(r)
	var rows []*Result
	for _, res := range r.Results {
		if res.Unit == "ratio" {
			rows = append(rows, res)
		}
	}
	if len(rows) != 1 || rows[0].Name != "hb detector=pidfd: kill→slot 0: ordinary load ÷ idle" || rows[0].P50 != 3 || rows[0].P99 != 4 || rows[0].Meets == nil || *rows[0].Meets {
		for _, row := range rows {
			t.Logf("row %+v", *row)
		}
		t.Fatalf("%d comparison rows, want one: kill→slot 0 at 3× (p50) and 4× (p99), target not met", len(rows))
	}
}

// TestQuickWatchdog runs the watchdog test with two hangs: each is recorded,
// no beating service is declared hung (a figure now: at 10 ms a machine
// that does not run a beater for that long makes it true), and the figures
// are there. The 100
// services get a 500 ms watchdog and the hung beater 200 ms: beside the
// rest of the suite on two cores a process can wait longer than 10 or 20 ms
// to run, and a missed deadline then is the truth, not a fault of hb's.
func TestQuickWatchdog(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	rep := runReport(t, dir, "--only", "watchdog", "--fat-kills", "2", "--idle-secs", "1", "--watchdog", "200ms", "--many-watchdog", "500ms")
	if len(rep.Checks) < 3 {
		t.Errorf("%d checks, want the hang audit: %+v", len(rep.Checks), rep.Checks)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	want := map[string]bool{"one beat: C hb_beat()": false, "hang → slot 0, minus the 200ms watchdog period": false, "plugin CPU, 100 services beating a 500ms watchdog": false}
	for _, res := range rep.Results {
		if _, ok := want[res.Name]; ok && res.N >= 1 {
			want[res.Name] = true
		}
		// At 500 ms every beater (beating every 100 ms) runs in time.
		if strings.HasPrefix(res.Name, "services of 100 declared hung") && res.P50 != 0 {
			t.Errorf("%s: %v; want 0 with a 500 ms watchdog", res.Name, res.P50)
		}
	}
	for name, ok := range want {
		if !ok {
			t.Errorf("no figure %q", name)
		}
	}
}

// TestQuickTable runs the table test small: every figure is there and every
// kill was recorded (the figures themselves fail nothing).
func TestQuickTable(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbd and runs it (-short)")
	}
	dir := buildTools(t)
	rep := runReport(t, dir, "--only", "table", "--kills", "3", "--fat-kills", "2")
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s: %s", c.Test, c.Name, c.Detail)
		}
	}
	want := map[string]int{
		"kill -9 → peer blocked in hb_wait (futex) wakes":                               3,
		"kill -9 → raw pidfd waiter thread wakes":                                       3,
		"plugin kill -9 → reader sees writer_alive dead (one load)":                     2,
		"plugin kill -9 → raw pidfd waiter on the plugin wakes":                         2,
		"one shared FUTEX_WAKE, nobody waiting: the plugin adds 2 after each pid store": 1,
	}
	for _, res := range rep.Results {
		if n, ok := want[res.Name]; ok && res.N == n {
			delete(want, res.Name)
		}
	}
	for name, n := range want {
		t.Errorf("no figure %q with %d samples", name, n)
	}
}

// runReport runs the hbbench in dir with args and --json, and returns its
// report; a failed run or output that is not a report fails the test.
func runReport(t *testing.T, dir string, args ...string) Report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(dir, "hbbench"), append(args, "--json", "--include", "../../contrib/c")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hbbench: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("hbbench --json output is not a report: %v\n%s", err, stdout.String())
	}
	return rep
}

// TestParseLoad: --load takes ordinary, rt or both; anything else is an
// error that names what it wants.
func TestParseLoad(t *testing.T) {
	for _, tc := range []struct {
		arg          string
		ordinary, rt bool
		ok           bool
	}{
		{"", false, false, true},
		{"ordinary", true, false, true},
		{"rt", false, true, true},
		{"ordinary,rt", true, true, true},
		{"busy", false, false, false},
		{"rt,", false, false, false},
	} {
		args := []string{}
		if tc.arg != "" {
			args = []string{"--load", tc.arg}
		}
		o, err := parseFlags(args)
		if !tc.ok {
			if err == nil || !strings.Contains(err.Error(), "ordinary, rt or ordinary,rt") {
				t.Errorf("--load %q: err %v, want one naming the kinds", tc.arg, err)
			}
			continue
		}
		if err != nil || o.loadOrdinary != tc.ordinary || o.loadRT != tc.rt {
			t.Errorf("--load %q: %+v, %v; want ordinary %v rt %v", tc.arg, o, err, tc.ordinary, tc.rt)
		}
	}
}

// TestFatIdle: the fat stage is killed only once it is asleep with its
// memory held; a stage still faulting its pages in (running) is not up.
func TestFatIdle(t *testing.T) {
	for _, tc := range []struct {
		rss   float64
		state byte
		want  bool
	}{
		{2048, 'S', true},
		{2000, 'S', true},
		{2048, 'R', false}, // still in MAP_POPULATE or the touching loop
		{2048, 'D', false},
		{1000, 'S', false},
	} {
		if got := fatIdle(tc.rss, tc.state, 2048); got != tc.want {
			t.Errorf("fatIdle(%v MiB, %c) = %v, want %v", tc.rss, tc.state, got, tc.want)
		}
	}
}
