package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/shm"
)

// allTests in the order they run.
var allTests = []string{"death", "respawn", "peer", "scale", "flood", "fat", "watchdog", "chain", "peers", "table", "bridge"}

const usage = `Usage: hbbench [flags]

Measures hb against baselines taken in the same run (see docs/benchmark.md for the
performance targets) and checks that no exit is missed. Prints a markdown
report, or JSON with --json. Exit status 1 when a correctness check failed.

Flags:
  --only LIST        tests to run, comma-separated: death,respawn,peer,scale,flood,fat,watchdog,chain,peers,table,bridge (default all)
  --quick            small counts (a few seconds; used by the tests)
  --long             big counts (several minutes)
  --kills N          kills per series in death and respawn (default 200)
  --services N       services in the scale and peers tests (default 1000)
  --scale-rounds N   kill-all rounds in the scale and peers tests (default 3)
  --idle-secs S      idle window for the CPU figures of the scale and peers tests (default 10)
  --peers LIST       the supervisors of the peers test, of: bare,hb,runit,s6,supervisord (default all)
  --flood-secs S     length of the exit flood (default 10)
  --flood-procs N    generator processes of the flood (default: number of CPUs)
  --flood-services N services killed at random during the flood (default 8)
  --fat-kills N      kills of each stage in the fat test, hangs in the watchdog test, plugin
                     kills in the table test, kills per manager in bridge (default 10)
  --watchdog D       watchdog of the hung beater in the watchdog test (default 20ms)
  --many-watchdog D  watchdog of the 100 beating services in the watchdog test (default 10ms)
  --fat-mib N        touched memory of the fat stage, MiB (default 2048)
  --chain-kills N    kills of the active worker per method in the chain test (default 20)
  --chain-rate PPS   packets a second rx sends in the chain test (default 20000)
  --late-ms MS       a kill→slot 0 slower than this in the flood counts as late (default 50)
  --peer-batches N   timed batches per peer-check series (default 200)
  --settle DUR       quiet time before each kill (default 10ms)
  --reader MODE      the C reader's loop while waiting for the slot: yield (sched_yield
                     between loads; default) or spin (pause instruction only)
  --json             print the report as JSON
  --load KINDS       after the tests, under load (KINDS: ordinary, rt, or ordinary,rt):
                     ordinary runs death and respawn again with one busy spinner per CPU and
                     gives each hb figure's p50 and p99 against its idle one; rt kills a
                     service under one SCHED_FIFO spinner per CPU (root) and times kill → slot 0
  --plot DIR         also write SVG plots (latency CDFs, packets lost per kill) into DIR
  --from FILE        run nothing: print the report an earlier --json run wrote (and plot it with --plot)
  --hbd PATH         hbd binary (default: next to hbbench, else $PATH)
  --hbclient PATH    the C client (default: next to hbbench)
  --go-client PATH   a Go client that blocks until SIGTERM (default: built with --go)
  --go PATH          go tool used to build the Go client (default: go in $PATH)
  --cc PATH          C compiler for the helper (default $CC, else cc)
  --include DIR      directory of hb_shm.h (default: contrib/c found from bin/ or the working directory)
  --keep             keep the temporary directory (hbd logs, configs) and print its path
`

// options are the parsed flags.
type options struct {
	only          map[string]bool
	quick, long   bool
	json          bool
	kills         int
	services      int
	scaleRounds   int
	idleSecs      float64
	peers         string // --peers: comma-separated supervisors of the peers test; "" all
	floodSecs     float64
	floodProcs    int
	floodServices int
	lateMs        float64
	chainKills    int
	fatKills      int
	fatMiB        int
	watchdog      time.Duration
	manyWatchdog  time.Duration
	chainRate     int
	peerBatches   int
	settle        time.Duration
	reader        string
	hbd           string
	hbclient      string
	goClient      string
	goTool        string
	cc            string
	include       string
	keep          bool
	load          string // "", "ordinary", "rt" or "ordinary,rt"
	loadOrdinary  bool   // death and respawn again under ordinary load
	loadRT        bool   // the real-time load test
	plot          string // write SVG plots into this directory
	from          string // plot this JSON report instead of running
}

// parseLoad sets o.loadOrdinary and o.loadRT from o.load; false when it
// names another kind.
func parseLoad(o *options) bool {
	if o.load == "" {
		return true
	}
	for _, k := range strings.Split(o.load, ",") {
		switch k {
		case "ordinary":
			o.loadOrdinary = true
		case "rt":
			o.loadRT = true
		default:
			return false
		}
	}
	return true
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("hbbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	only := fs.String("only", strings.Join(allTests, ","), "")
	fs.BoolVar(&o.quick, "quick", false, "")
	fs.BoolVar(&o.long, "long", false, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.IntVar(&o.kills, "kills", 200, "")
	fs.IntVar(&o.services, "services", 1000, "")
	fs.IntVar(&o.scaleRounds, "scale-rounds", 3, "")
	fs.Float64Var(&o.idleSecs, "idle-secs", 10, "")
	fs.StringVar(&o.peers, "peers", "", "")
	fs.Float64Var(&o.floodSecs, "flood-secs", 10, "")
	fs.IntVar(&o.floodProcs, "flood-procs", runtime.NumCPU(), "")
	fs.IntVar(&o.floodServices, "flood-services", 8, "")
	fs.Float64Var(&o.lateMs, "late-ms", 50, "")
	fs.IntVar(&o.chainKills, "chain-kills", 20, "")
	fs.IntVar(&o.fatKills, "fat-kills", 10, "")
	fs.IntVar(&o.fatMiB, "fat-mib", 2048, "")
	fs.DurationVar(&o.watchdog, "watchdog", 20*time.Millisecond, "")
	fs.DurationVar(&o.manyWatchdog, "many-watchdog", 10*time.Millisecond, "")
	fs.IntVar(&o.chainRate, "chain-rate", 20000, "")
	fs.IntVar(&o.peerBatches, "peer-batches", 200, "")
	fs.DurationVar(&o.settle, "settle", 10*time.Millisecond, "")
	fs.StringVar(&o.reader, "reader", "yield", "")
	fs.StringVar(&o.hbd, "hbd", "", "")
	fs.StringVar(&o.hbclient, "hbclient", "", "")
	fs.StringVar(&o.goClient, "go-client", "", "")
	fs.StringVar(&o.goTool, "go", "", "")
	fs.StringVar(&o.cc, "cc", "", "")
	fs.StringVar(&o.include, "include", "", "")
	fs.BoolVar(&o.keep, "keep", false, "")
	fs.StringVar(&o.plot, "plot", "", "")
	fs.StringVar(&o.load, "load", "", "")
	fs.StringVar(&o.from, "from", "", "")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.quick && o.long {
		return nil, errors.New("--quick and --long exclude each other")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	preset := func(name string, quick, long func()) {
		if set[name] {
			return
		}
		if o.quick {
			quick()
		} else if o.long {
			long()
		}
	}
	preset("kills", func() { o.kills = 10 }, func() { o.kills = 1000 })
	preset("services", func() { o.services = 50 }, func() { o.services = 2000 })
	preset("scale-rounds", func() { o.scaleRounds = 1 }, func() { o.scaleRounds = 10 })
	preset("idle-secs", func() { o.idleSecs = 1 }, func() { o.idleSecs = 30 })
	preset("flood-secs", func() { o.floodSecs = 2 }, func() { o.floodSecs = 30 })
	preset("fat-kills", func() { o.fatKills = 2 }, func() { o.fatKills = 50 })
	preset("fat-mib", func() { o.fatMiB = 256 }, func() {})
	preset("chain-kills", func() { o.chainKills = 3 }, func() { o.chainKills = 100 })
	preset("peer-batches", func() { o.peerBatches = 20 }, func() { o.peerBatches = 1000 })
	preset("settle", func() { o.settle = 5 * time.Millisecond }, func() {})

	o.only = map[string]bool{}
	for t := range strings.SplitSeq(*only, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !slices.Contains(allTests, t) {
			return nil, fmt.Errorf("--only: unknown test %q (want %s)", t, strings.Join(allTests, ","))
		}
		o.only[t] = true
	}
	switch {
	case len(o.only) == 0:
		return nil, errors.New("--only: no test named")
	case o.chainKills < 1 || o.chainRate < 1 || o.fatKills < 1 || o.fatMiB < 1:
		return nil, errors.New("--chain-kills, --chain-rate, --fat-kills and --fat-mib must be at least 1")
	case o.kills < 1 || o.services < 1 || o.scaleRounds < 1 || o.peerBatches < 1 || o.floodProcs < 1 || o.floodServices < 1:
		return nil, errors.New("--kills, --services, --scale-rounds, --peer-batches, --flood-procs and --flood-services must be at least 1")
	case o.manyWatchdog < time.Millisecond || o.watchdog < 5*time.Millisecond:
		return nil, errors.New("--many-watchdog: at least 1ms; --watchdog: at least 5ms (its beater beats every 1 ms)")
	case o.floodSecs <= 0 || o.idleSecs < 0:
		return nil, errors.New("--flood-secs must be positive and --idle-secs not negative")
	case badPeers(o.peers) != "":
		return nil, fmt.Errorf("--peers: unknown supervisor %q: want some of bare,hb,runit,s6,supervisord", badPeers(o.peers))
	case !parseLoad(o):
		return nil, fmt.Errorf("--load: want ordinary, rt or ordinary,rt, got %q", o.load)
	case o.reader != "spin" && o.reader != "yield":
		return nil, fmt.Errorf("--reader: want spin or yield, got %q", o.reader)
	case o.services > 65536:
		return nil, errors.New("--services: at most 65536 (the table's limit)")
	}
	return o, nil
}

// env is what every test shares.
type env struct {
	opts      *options
	dir       string // temporary directory
	hbd       string
	hbclient  string
	goClient  string // "" if it could not be built
	helperBin string
	cc        string // the C compiler
	include   string // the directory of hb_shm.h
	helper    *helper
	root      bool
	cnErr     error // why the proc connector cannot be used, nil if it can
	trErr     error // why the exit tracepoint cannot be used, nil if it can
	seq       int
	tableIDs  int
	rng       *rand.Rand

	exeC, exeGo int // helper exe ids; exeGo -1 without a Go client

	// shared hbds of death, respawn and peer, by detector.
	shared map[string]*hbdProc
	// keepDir: a check failed; the temporary directory is kept.
	keepDir bool
}

func (e *env) nextTableID() int {
	id := e.tableIDs % 8
	e.tableIDs++
	return id
}

// jitter is the settle time plus up to half of it again, so that kills do
// not fall into step with anything periodic (the plugin's 1 s beat).
func (e *env) jitter() time.Duration {
	s := e.opts.settle
	if s <= 0 {
		return 0
	}
	return s + time.Duration(e.rng.Int64N(int64(s)/2+1))
}

// cleanups run at exit, last registered first, also on SIGINT/SIGTERM.
var cleanups struct {
	sync.Mutex
	fns  []func()
	done bool
}

func atExit(f func()) {
	cleanups.Lock()
	defer cleanups.Unlock()
	cleanups.fns = append(cleanups.fns, f)
}

func runCleanups() {
	cleanups.Lock()
	defer cleanups.Unlock()
	if cleanups.done {
		return
	}
	cleanups.done = true
	for i := len(cleanups.fns) - 1; i >= 0; i-- {
		cleanups.fns[i]()
	}
}

func afterSeconds(s float64) <-chan time.Time {
	return time.After(time.Duration(s * float64(time.Second)))
}

// logf reports progress on stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hbbench: "+format+"\n", args...)
}

// run is hbbench; it returns the exit status.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(usage)
			return 0
		}
		fmt.Fprintf(os.Stderr, "hbbench: %v\n\n%s", err, usage)
		return 2
	}
	if o.from != "" {
		r, err := loadReport(o.from)
		if err != nil {
			logf("%v", err)
			return 2
		}
		r.writeMarkdown(os.Stdout)
		if o.plot == "" {
			return 0
		}
		return writePlots(r, o.plot)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		logf("%v: stopping everything", sig)
		runCleanups()
		os.Exit(130)
	}()
	code := bench(o)
	runCleanups()
	return code
}

// writePlots writes r's plots into dir (--plot) and says where.
func writePlots(r *Report, dir string) int {
	files, err := plotReport(r, dir)
	for _, f := range files {
		logf("wrote %s", f)
	}
	if err != nil {
		logf("%v", err)
		return 2
	}
	return 0
}

func bench(o *options) int {
	start := time.Now()
	r := &Report{Meta: machineMeta()}
	r.Meta.LoadAvg = []string{loadAvg()}
	r.Meta.Reader = o.reader
	r.Meta.Kills, r.Meta.Services, r.Meta.FloodSecs = o.kills, o.services, o.floodSecs
	for _, t := range allTests {
		if o.only[t] {
			r.Meta.Tests = append(r.Meta.Tests, t)
		}
	}
	e, err := setup(o, r)
	if err != nil {
		logf("setup: %v", err)
		return 2
	}
	r.Meta.Root = e.root
	if b, err := exec.Command(e.hbd, "--version").Output(); err == nil {
		r.Meta.HBD = strings.TrimSpace(string(b))
	}
	r.Meta.Connector = e.cnErr == nil
	r.Meta.Tracepoint = e.trErr == nil

	type test struct {
		name string
		fn   func(*env, *Report) error
	}
	// death, respawn and peer share two hbds (connector and pidfd); they
	// are stopped before scale and flood, which run their own.
	tests := []test{{"death", runDeath}, {"respawn", runRespawn}, {"peer", runPeer}, {"scale", runScale}, {"flood", runFlood}, {"fat", runFat}, {"watchdog", runWatchdog}, {"chain", runChain}, {"peers", runPeers}, {"table", runTable}, {"bridge", runBridge}}
	for _, t := range tests {
		if !o.only[t.name] {
			continue
		}
		if t.name == "scale" || t.name == "flood" || t.name == "fat" || t.name == "watchdog" || t.name == "chain" || t.name == "peers" || t.name == "table" || t.name == "bridge" {
			e.stopShared()
		}
		logf("%s ...", t.name)
		t0 := time.Now()
		if err := t.fn(e, r); err != nil {
			r.check(t.name, "test ran", false, "%v", err)
			logf("%s: %v", t.name, err)
		}
		logf("%s done in %.1f s", t.name, time.Since(t0).Seconds())
	}
	e.stopShared()
	if o.loadOrdinary {
		// The spinners' watchdog: an hour, far beyond the two tests.
		stop, n, err := startLoad(e, 3600)
		if err != nil {
			r.check("load", "spinners started", false, "%v", err)
		} else {
			r.Meta.Load = "ordinary"
			r.note("load: %d busy spinners (one per CPU, nice 0) during the second run of death and respawn", n)
			r.suffix = loadSuffix
			for _, t := range tests {
				if (t.name == "death" || t.name == "respawn") && o.only[t.name] {
					logf("%s under ordinary load ...", t.name)
					if err := t.fn(e, r); err != nil {
						r.check(t.name, "test ran", false, "%v", err)
					}
				}
			}
			e.stopShared()
			r.suffix = ""
			stop()
			compareLoad(r)
		}
	}
	if o.loadRT {
		logf("rt load ...")
		t0 := time.Now()
		if err := runRTLoad(e, r); err != nil {
			r.check("rt-load", "test ran", false, "%v", err)
			logf("rt load: %v", err)
		}
		logf("rt load done in %.1f s", time.Since(t0).Seconds())
		e.stopShared()
	}
	r.Meta.Seconds = time.Since(start).Seconds()
	r.Meta.LoadAvg = append(r.Meta.LoadAvg, loadAvg())
	r.OK = r.ok()
	if o.json {
		if err := r.writeJSON(os.Stdout); err != nil {
			logf("%v", err)
			return 2
		}
	} else {
		r.writeMarkdown(os.Stdout)
	}
	if o.plot != "" {
		if code := writePlots(r, o.plot); code != 0 {
			return code
		}
	}
	if !r.OK {
		// The logs of every hbd (state_dir/plugin.log, hbd.log) are what a
		// failure needs.
		e.keepDir = true
	}
	if o.keep || e.keepDir {
		logf("kept %s (hbd logs and configs)", e.dir)
	}
	if !r.OK {
		return 1
	}
	return 0
}

// setup finds the binaries, compiles the helper, builds the Go client if
// needed, and starts the helper.
func setup(o *options, r *Report) (*env, error) {
	e := &env{opts: o, root: os.Geteuid() == 0, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)), exeGo: -1}
	removeStaleTables()
	dir, err := os.MkdirTemp("", "hbbench-")
	if err != nil {
		return nil, err
	}
	e.dir = dir
	atExit(func() {
		if !o.keep && !e.keepDir {
			os.RemoveAll(dir)
		}
	})
	self, _ := os.Executable()
	near := func(flagVal, name string) (string, error) {
		if flagVal != "" {
			return filepath.Abs(flagVal)
		}
		if self != "" {
			p := filepath.Join(filepath.Dir(self), name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p, nil
			}
		}
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s not found next to %s nor in $PATH (run make build, or give --%s)", name, self, name)
		}
		return filepath.Abs(p)
	}
	if e.hbd, err = near(o.hbd, "hbd"); err != nil {
		return nil, err
	}
	if e.hbclient, err = near(o.hbclient, "hbclient"); err != nil {
		return nil, err
	}
	include, err := findInclude(o.include)
	if err != nil {
		return nil, err
	}
	cc := o.cc
	if cc == "" {
		cc = os.Getenv("CC")
	}
	if cc == "" {
		cc = "cc"
	}
	e.cc, e.include = cc, include
	if e.helperBin, err = compileHelper(cc, include, dir); err != nil {
		return nil, err
	}
	if o.only["respawn"] {
		if o.goClient != "" {
			e.goClient, err = filepath.Abs(o.goClient)
		} else {
			e.goClient, err = buildGoClient(o.goTool, dir)
		}
		if err != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("respawn with a Go client: %v", err))
			e.goClient = ""
		}
	}
	e.cnErr = connector.Available()
	e.trErr = connector.TraceAvailable()
	if e.helper, err = startHelper(e.helperBin); err != nil {
		return nil, err
	}
	atExit(e.helper.close)
	if _, err := e.helper.call("mode %s", o.reader); err != nil {
		return nil, err
	}
	e.exeC = 0
	if _, err := e.helper.call("exe 0 %s", e.hbclient); err != nil {
		return nil, err
	}
	if e.goClient != "" {
		e.exeGo = 1
		if _, err := e.helper.call("exe 1 %s", e.goClient); err != nil {
			return nil, err
		}
	}
	if e.cnErr == nil && o.only["death"] {
		if _, err := e.helper.call("cnopen"); err != nil {
			e.cnErr = err
		}
	}
	return e, nil
}

// buildGoClient builds a tiny Go program that blocks until SIGTERM.
func buildGoClient(goTool, dir string) (string, error) {
	if goTool == "" {
		p, err := exec.LookPath("go")
		if err != nil {
			return "", fmt.Errorf("no go tool in $PATH to build the Go client (give --go or --go-client)")
		}
		goTool = p
	}
	src := filepath.Join(dir, "goclient")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	const prog = `// Command goclient blocks until SIGTERM: hbbench's Go service.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	<-c
}
`
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module hbbench/goclient\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "goclient-bin")
	cmd := exec.Command(goTool, "build", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOTOOLCHAIN=local", "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the Go client: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// removeStaleTables removes tables left by an hbbench that was killed
// outright (hbbench-PID-N whose PID is gone).
func removeStaleTables() {
	ents, _ := os.ReadDir(shm.DefaultDir)
	for _, de := range ents {
		rest, ok := strings.CutPrefix(de.Name(), "hbbench-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_ = os.Remove(filepath.Join(shm.DefaultDir, de.Name()))
	}
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// machineMeta describes this machine and run.
func machineMeta() Meta {
	m := Meta{Date: time.Now().Format(time.RFC3339), Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " +
			unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			a = strconv.Quote(a)
		}
		args[i] = a
	}
	m.Command = strings.Join(args, " ")
	return m
}

// badPeers is the first name in --peers that is not a supervisor of the
// peers test, or "".
func badPeers(list string) string {
	if list == "" {
		return ""
	}
	for p := range strings.SplitSeq(list, ",") {
		switch strings.TrimSpace(p) {
		case "bare", "hb", "runit", "s6", "supervisord":
		default:
			return p
		}
	}
	return ""
}
