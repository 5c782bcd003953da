package main

// The end-to-end harness: it drives the real binaries (hbd, hbctl, hbpeek,
// hbclient) the way a user does. Tests in this package, and the
// fault-injection suite that shares it, use these pieces:
//
//	h := NewHarness(t, Options{})          // private dir, unique shm name, cleanup
//	h.WriteConfig(services)                // [hbd] table + the TOML given
//	d := h.Start()                         // hbd -c CONFIG, waits until it answers
//	r := h.Ctl("status", "--json")         // hbctl -s SOCKET ..., captured
//	sts := h.Status()                      // hbctl status --json, decoded
//	pl := h.Health().Plugin.PID            // hbctl health --json, decoded
//	sl := h.Slot("rx")                     // the shm slot, read with shm.Open
//	lines := h.Peek()                      // hbpeek's view of the same table
//	h.WaitService("rx", "running", IsRunning)
//	h.WaitSlot("rx", "pid 0", func(s shm.Slot) bool { return s.PID == 0 })
//	pid, sawZero := h.WatchPID(i, old)     // spin on the slot's PID word like a peer
//	ctlPID, wait := h.StartCtl("wait", "rx", "--down")  // hbctl in the background
//	h.Run("sub", func(t *testing.T) {...}) // a subtest the helpers report to
//	h.Leftovers()                          // processes of this harness still alive
//	d.Signal(syscall.SIGTERM); d.Wait()    // or d.Stop(): SIGTERM and exit 0
//
// Every wait is bounded (WaitTimeout) and fails the test with what it was
// waiting for and the last value seen; there are no timing assertions.
//
// Cleanup, registered by NewHarness, stops every hbd still running with
// SIGTERM. If the last hbd that served was stopped that way (by the test or
// by the cleanup) and exited 0, any process left behind fails the test.
// Processes are found by the PIDs the test saw (Track; the helpers track
// what they read) and by scanning /proc for environments holding
// HB_SHM=<name> (hbd runs with it and its plugin inherits it) or
// HB_SHM=/dev/shm/<name> (the plugin gives it to every service). Leftovers
// are then SIGKILLed whatever happened, so a test that detaches or kills hbd
// on purpose leaves nothing to the next one. Cleanup also fails the test
// when hbd's output or the plugin's log holds a data race report, a panic
// or an invalid state transition, logs both outputs of a failed test, and
// removes /dev/shm/<name> and the private directory.
//
// Knobs (environment):
//
//	HB_E2E_BINDIR=DIR   use hbd, hbctl, hbpeek and hbclient from DIR instead of
//	                    building them (e.g. to run the suite as another user)
//	HB_E2E_KEEP=1       keep the private directory of a failed test
//	HB_E2E_KNOWN_BUGS=1 run the tests that demonstrate known, unfixed bugs
//	HB_E2E_LOGS=1       log hbd's and the plugin's output of every test, not
//	                    only of failed ones (with go test -v)
//
// When the test binary is built with -race, hbd is built with -race too, so
// races in the manager and the plugin are caught end to end.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// WaitTimeout bounds every wait for a state. It is a deadline for a hang,
// never a performance threshold.
const WaitTimeout = 15 * time.Second

// Environment knobs; see the package comment.
const (
	envBinDir    = "HB_E2E_BINDIR"
	envKeep      = "HB_E2E_KEEP"
	envKnownBugs = "HB_E2E_KNOWN_BUGS"
	envLogs      = "HB_E2E_LOGS"
)

// Bins are the paths of the executables under test.
type Bins struct {
	HBD, HBCtl, HBPeek, HBClient string
	// PeerC and PeerGo are the README's peer examples
	// (contrib/examples/peer-c, contrib/examples/peer-go).
	PeerC, PeerGo string
}

var built struct {
	once sync.Once
	bins Bins
	tmp  string // removed by TestMain
	err  error
}

// e2eParallel is how many tests run at once unless -test.parallel is given:
// they mostly wait for processes, so more than GOMAXPROCS.
const e2eParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", strconv.Itoa(max(e2eParallel, runtime.GOMAXPROCS(0))))
	}
	code := m.Run()
	if built.tmp != "" {
		os.RemoveAll(built.tmp)
	}
	os.Exit(code)
}

// Binaries returns the executables, building them on first use: hbd and
// hbctl with go build (hbd with -race when this test binary has it), hbpeek
// and hbclient with $CC (default gcc). It fails the test if they cannot be
// had.
func Binaries(t testing.TB) Bins {
	t.Helper()
	built.once.Do(func() { built.bins, built.tmp, built.err = buildBinaries() })
	if built.err != nil {
		t.Fatalf("e2e binaries: %v", built.err)
	}
	return built.bins
}

func buildBinaries() (Bins, string, error) {
	if dir := os.Getenv(envBinDir); dir != "" {
		b := Bins{HBD: filepath.Join(dir, "hbd"), HBCtl: filepath.Join(dir, "hbctl"),
			HBPeek: filepath.Join(dir, "hbpeek"), HBClient: filepath.Join(dir, "hbclient"),
			PeerC: filepath.Join(dir, "peer-c"), PeerGo: filepath.Join(dir, "peer-go")}
		for _, p := range []string{b.HBD, b.HBCtl, b.HBPeek, b.HBClient, b.PeerC, b.PeerGo} {
			if _, err := os.Stat(p); err != nil {
				return Bins{}, "", fmt.Errorf("%s=%s: %w", envBinDir, dir, err)
			}
		}
		return b, "", nil
	}
	root, err := moduleRoot()
	if err != nil {
		return Bins{}, "", err
	}
	tmp, err := os.MkdirTemp("", "hb-e2e-bin-")
	if err != nil {
		return Bins{}, "", err
	}
	b := Bins{HBD: filepath.Join(tmp, "hbd"), HBCtl: filepath.Join(tmp, "hbctl"),
		HBPeek: filepath.Join(tmp, "hbpeek"), HBClient: filepath.Join(tmp, "hbclient"),
		PeerC: filepath.Join(tmp, "peer-c"), PeerGo: filepath.Join(tmp, "peer-go")}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return b, "", fmt.Errorf("the go command is not on PATH: %w", err)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	hbdArgs := []string{"build", "-o", b.HBD}
	if raceEnabled {
		hbdArgs = append(hbdArgs, "-race")
	}
	steps := [][]string{
		append([]string{goTool}, append(hbdArgs, "./cmd/hbd")...),
		{goTool, "build", "-o", b.HBCtl, "./cmd/hbctl"},
		{cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Icontrib/c", "-o", b.HBPeek, "contrib/c/hbpeek.c"},
		{cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-o", b.HBClient, "contrib/c/hbclient.c"},
		{cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Icontrib/c", "-o", b.PeerC, "contrib/examples/peer-c/peer.c"},
		{goTool, "build", "-o", b.PeerGo, "./contrib/examples/peer-go"},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(tmp)
			return Bins{}, "", fmt.Errorf("%s: %w\n%s", strings.Join(s, " "), err, out)
		}
	}
	return b, tmp, nil
}

// moduleRoot finds the directory of hb's go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/hbshim/hb\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the hb module's go.mod above the working directory")
		}
		dir = parent
	}
}

// Options tune a Harness. The zero value is a good default.
type Options struct {
	// Detector is [hbd] detector: "auto" (default), "connector" or "pidfd".
	Detector string
	// Slots is [hbd] slots (default 32).
	Slots int
	// LogLevel is hbd's --log-level (default info).
	LogLevel string
}

// Harness is one end-to-end setup: a private directory with the
// configuration (hb.toml), state directory, control socket and service logs,
// a unique shm table name, and the hbd processes a test starts on them. It
// is used from the test's goroutine only (see Run for subtests).
type Harness struct {
	// T is the test the helpers report to: the test given to NewHarness,
	// or the subtest while Run runs one.
	T *testing.T
	Bins
	Opt Options

	Dir      string // private directory
	Config   string // hb.toml, absolute
	Socket   string // control socket
	StateDir string // [hbd] state_dir
	LogDir   string // [hbd] log_dir
	Shm      string // table name, unique per harness
	ShmPath  string // /dev/shm/<Shm>

	client  *api.Client
	table   *shm.Table
	hbds    []*Hbd
	tracked map[int]uint64 // pid -> start time, of every process the test saw
}

var harnessSeq atomic.Int64

// NewHarness makes the private directory and names, and registers the
// cleanup described in the file comment. Call WriteConfig, then Start.
func NewHarness(t *testing.T, opt Options) *Harness {
	t.Helper()
	if opt.Detector == "" {
		opt.Detector = "auto"
	}
	if opt.Slots == 0 {
		opt.Slots = 32
	}
	// Not t.TempDir: a short path keeps the sockets under sun_path's limit.
	dir, err := os.MkdirTemp("", "hbe-")
	if err != nil {
		t.Fatal(err)
	}
	h := &Harness{
		T:        t,
		Bins:     Binaries(t),
		Opt:      opt,
		Dir:      dir,
		Config:   filepath.Join(dir, "hb.toml"),
		Socket:   filepath.Join(dir, "hbd.sock"),
		StateDir: filepath.Join(dir, "state"),
		LogDir:   filepath.Join(dir, "log"),
		Shm:      fmt.Sprintf("hbtest-%d-%d", os.Getpid(), harnessSeq.Add(1)),
		tracked:  map[int]uint64{},
	}
	h.ShmPath = filepath.Join(shm.DefaultDir, h.Shm)
	h.client = api.NewClient(h.Socket)
	t.Cleanup(h.cleanup)
	return h
}

// Run runs f as a subtest of the harness's test; meanwhile the harness
// reports to the subtest (its helpers call h.T.Fatalf). The subtests of one
// harness run one at a time: do not call t.Parallel in f.
func (h *Harness) Run(name string, f func(t *testing.T)) bool {
	parent := h.T
	return parent.Run(name, func(t *testing.T) {
		h.T = t
		defer func() { h.T = parent }()
		f(t)
	})
}

// ConfigText is the configuration WriteConfig writes: the harness's [hbd]
// table followed by services (TOML service tables).
func (h *Harness) ConfigText(services string) string {
	return fmt.Sprintf(`[hbd]
shm       = %q
socket    = %q
state_dir = %q
log_dir   = %q
slots     = %d
detector  = %q

%s
`, h.Shm, h.Socket, h.StateDir, h.LogDir, h.Opt.Slots, h.Opt.Detector, services)
}

// WriteConfig (re)writes hb.toml with the [hbd] table and services.
func (h *Harness) WriteConfig(services string) {
	h.T.Helper()
	h.WriteFile(h.Config, h.ConfigText(services))
}

// WriteFile writes a file atomically (a reload never reads half a file).
func (h *Harness) WriteFile(path, text string) {
	h.T.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		h.T.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		h.T.Fatal(err)
	}
}

// Hbd is one hbd process started by the harness.
type Hbd struct {
	h    *Harness
	Cmd  *exec.Cmd
	PID  int
	out  *outFile // stdout and stderr
	done chan struct{}
	code int // exit status once done is closed; -1 killed by a signal

	ready  bool        // Start saw it answer: it served
	termed atomic.Bool // sent SIGTERM or SIGINT: asked to stop everything
}

// Start runs hbd on the configuration and waits until it answers a health
// check on its socket with a plugin; it fails the test if hbd exits first.
func (h *Harness) Start() *Hbd {
	h.T.Helper()
	return startHbdEnv(h)
}

// startHbdEnv is Harness.Start with extra environment for hbd (and so for
// its plugin, which inherits it).
func startHbdEnv(h *Harness, env ...string) *Hbd {
	h.T.Helper()
	d := startProcessEnv(h, env)
	h.Eventually("hbd to answer on "+h.Socket, func() (bool, string) {
		if d.Exited() {
			h.T.Fatalf("hbd exited with status %d before it was ready:\n%s", d.code, d.Log())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hl, err := h.client.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		// A fatal service makes health not ok, but hbd and its plugin serve.
		if hl.Plugin == nil || !hl.OK && (len(hl.Fatal) == 0 || hl.Plugin.ShmProblem != "") {
			return false, fmt.Sprintf("health %+v", hl)
		}
		h.Track(hl.Plugin.PID)
		return true, ""
	})
	d.ready = true
	return d
}

// StartProcess runs hbd on the configuration without waiting for it; extra
// arguments follow -c CONFIG. The process gets HB_SHM=<Shm>, which marks it
// and its plugin for the leftover scan.
func (h *Harness) StartProcess(extra ...string) *Hbd {
	h.T.Helper()
	return startProcessEnv(h, nil, extra...)
}

// startProcessEnv is Harness.StartProcess with extra environment.
func startProcessEnv(h *Harness, env []string, extra ...string) *Hbd {
	h.T.Helper()
	args := []string{"-c", h.Config}
	if h.Opt.LogLevel != "" {
		args = append(args, "--log-level", h.Opt.LogLevel)
	}
	cmd := exec.Command(h.HBD, append(args, extra...)...)
	cmd.Env = append(os.Environ(), "HB_SHM="+h.Shm, "GORACE=halt_on_error=0 atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, env...)
	// A file, not a pipe: the plugin keeps hbd's stdout and stderr for the
	// services with stdout = "inherit", so a pipe would have Wait wait for
	// the plugin and the services too.
	out, err := os.CreateTemp(h.Dir, "hbd-*.out")
	if err != nil {
		h.T.Fatal(err)
	}
	d := &Hbd{h: h, Cmd: cmd, out: &outFile{path: out.Name()}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Start()
	out.Close() // hbd has its own
	if err != nil {
		h.T.Fatalf("start hbd: %v", err)
	}
	d.PID = cmd.Process.Pid
	h.hbds = append(h.hbds, d)
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			d.code = ee.ExitCode()
		default:
			d.code = -2
		}
		close(d.done)
	}()
	return d
}

// Signal sends sig to hbd.
func (d *Hbd) Signal(sig syscall.Signal) {
	d.h.T.Helper()
	if sig == syscall.SIGTERM || sig == syscall.SIGINT {
		d.termed.Store(true)
	}
	if err := d.Cmd.Process.Signal(sig); err != nil {
		d.h.T.Fatalf("signal hbd %d: %v", d.PID, err)
	}
}

// Exited reports whether hbd has exited.
func (d *Hbd) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Wait waits (bounded) for hbd to exit and returns its exit status.
func (d *Hbd) Wait() int {
	d.h.T.Helper()
	select {
	case <-d.done:
		return d.code
	case <-time.After(WaitTimeout):
		d.h.T.Fatalf("hbd %d did not exit within %v:\n%s", d.PID, WaitTimeout, d.Log())
		return 0
	}
}

// Log returns everything hbd wrote so far (its stderr log).
func (d *Hbd) Log() string { return d.out.String() }

// WaitLog waits until hbd's log contains substr.
func (d *Hbd) WaitLog(substr string) {
	d.h.T.Helper()
	d.h.Eventually(fmt.Sprintf("hbd's log to contain %q", substr), func() (bool, string) {
		return strings.Contains(d.Log(), substr), ""
	})
}

// Result is one run of hbctl.
type Result struct {
	Args           []string
	Stdout, Stderr string
	Code           int
}

func (r Result) String() string {
	return fmt.Sprintf("hbctl %q: exit %d\nstdout:\n%s\nstderr:\n%s", r.Args, r.Code, r.Stdout, r.Stderr)
}

// Ctl runs hbctl -s SOCKET ARGS with HB_SHM=<Shm> and returns what it did.
func (h *Harness) Ctl(args ...string) Result {
	h.T.Helper()
	return h.run(h.HBCtl, append([]string{"-s", h.Socket}, args...)...)
}

// MustCtl is Ctl that fails the test unless hbctl exits 0; it returns stdout.
func (h *Harness) MustCtl(args ...string) string {
	h.T.Helper()
	r := h.Ctl(args...)
	if r.Code != 0 {
		h.T.Fatalf("%v", r)
	}
	return r.Stdout
}

// StartCtl starts hbctl -s SOCKET ARGS in the background; the returned
// function waits (bounded) for it and returns its Result.
func (h *Harness) StartCtl(args ...string) (pid int, wait func() Result) {
	h.T.Helper()
	args = append([]string{"-s", h.Socket}, args...)
	cmd := exec.Command(h.HBCtl, args...)
	cmd.Env = append(os.Environ(), "HB_SHM="+h.Shm)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		h.T.Fatalf("start hbctl: %v", err)
	}
	done := make(chan Result, 1)
	go func() {
		err := cmd.Wait()
		r := Result{Args: args, Stdout: out.String(), Stderr: errb.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.Code = ee.ExitCode()
		} else if err != nil {
			r.Code = -2
		}
		done <- r
	}()
	return cmd.Process.Pid, func() Result {
		h.T.Helper()
		select {
		case r := <-done:
			return r
		case <-time.After(WaitTimeout):
			cmd.Process.Kill()
			h.T.Fatalf("hbctl %q did not finish within %v", args, WaitTimeout)
			return Result{}
		}
	}
}

// Run runs any program with HB_SHM=<Shm> and returns what it did.
func (h *Harness) run(prog string, args ...string) Result {
	h.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(os.Environ(), "HB_SHM="+h.Shm)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Args: args, Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		h.T.Fatalf("%s %q: %v", prog, args, err)
	}
	if ctx.Err() != nil {
		h.T.Fatalf("%s %q did not finish within %v", prog, args, WaitTimeout)
	}
	return r
}

// Status returns `hbctl status --json`, every service in config order.
func (h *Harness) Status() []api.ServiceStatus {
	h.T.Helper()
	var sts []api.ServiceStatus
	out := h.statusJSON("status", "--json")
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		h.T.Fatalf("hbctl status --json: %v\n%s", err, out)
	}
	for _, st := range sts {
		h.Track(st.PID)
	}
	return sts
}

// statusJSON runs hbctl status ARGS; it fails the test unless hbctl exits
// 0 or 3 (a service not in its wanted state) and returns stdout.
func (h *Harness) statusJSON(args ...string) string {
	h.T.Helper()
	r := h.Ctl(args...)
	if r.Code != 0 && r.Code != 3 {
		h.T.Fatalf("%v", r)
	}
	return r.Stdout
}

// ServiceStatus returns `hbctl status NAME --json` for one service.
func (h *Harness) ServiceStatus(name string) api.ServiceStatus {
	h.T.Helper()
	var sts []api.ServiceStatus
	out := h.statusJSON("status", name, "--json")
	if err := json.Unmarshal([]byte(out), &sts); err != nil || len(sts) != 1 {
		h.T.Fatalf("hbctl status %s --json: %v\n%s", name, err, out)
	}
	h.Track(sts[0].PID)
	return sts[0]
}

// Health returns `hbctl health --json`; it fails the test unless hbd and
// its plugin are healthy. The plugin's PID is tracked.
func (h *Harness) Health() api.Health {
	h.T.Helper()
	var (
		hl  api.Health
		r   Result
		err error
	)
	// hbd may be attaching to a new plugin (health 503, attaching): that
	// ends within milliseconds.
	h.Eventually("hbd to be done attaching to its plugin", func() (bool, string) {
		hl = api.Health{}
		r = h.Ctl("health", "--json")
		err = json.Unmarshal([]byte(r.Stdout), &hl)
		return err != nil || !hl.Attaching, r.String()
	})
	if err != nil || hl.Plugin == nil ||
		r.Code != 0 && (len(hl.Fatal) == 0 || hl.Plugin.ShmProblem != "") {
		h.T.Fatalf("hbctl health --json: %v\n%s", err, r)
	}
	h.Track(hl.Plugin.PID)
	return hl
}

// Client is an API client on the harness's socket, for fast polling.
func (h *Harness) Client() *api.Client { return h.client }

// Get returns one service through the API (no hbctl process): for polling.
func (h *Harness) Get(name string) (api.ServiceStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := h.client.Get(ctx, name)
	if err == nil {
		h.Track(st.PID)
	}
	return st, err
}

// WaitService waits until cond holds for the service's status (read through
// the API) and returns that status. what names the condition for the
// failure message.
func (h *Harness) WaitService(name, what string, cond func(api.ServiceStatus) bool) api.ServiceStatus {
	h.T.Helper()
	var st api.ServiceStatus
	h.Eventually(fmt.Sprintf("service %s %s", name, what), func() (bool, string) {
		var err error
		if st, err = h.Get(name); err != nil {
			return false, err.Error()
		}
		return cond(st), fmt.Sprintf("%+v", st)
	})
	return st
}

// IsRunning is a WaitService condition: state running with a process.
func IsRunning(st api.ServiceStatus) bool { return st.State == "running" && st.PID != 0 }

// WaitRunning waits until every named service is running and returns their
// statuses by name.
func (h *Harness) WaitRunning(names ...string) map[string]api.ServiceStatus {
	h.T.Helper()
	out := map[string]api.ServiceStatus{}
	for _, n := range names {
		out[n] = h.WaitService(n, "running", IsRunning)
	}
	return out
}

// Table returns the shm table, opened read-only with shm.Open on first use
// (the plugin creates it before hbd answers) and closed by the cleanup.
func (h *Harness) Table() *shm.Table {
	h.T.Helper()
	if h.table == nil {
		t, err := shm.Open(h.Shm)
		if err != nil {
			h.T.Fatalf("open the table: %v", err)
		}
		h.table = t
	}
	return h.table
}

// SlotIndex returns the index of the service's slot, failing the test if
// the table has none.
func (h *Harness) SlotIndex(name string) int {
	h.T.Helper()
	i, err := h.Table().Lookup(name)
	if err != nil {
		h.T.Fatalf("slot of %s: %v", name, err)
	}
	return i
}

// Slot returns a consistent snapshot of the service's slot.
func (h *Harness) Slot(name string) shm.Slot {
	h.T.Helper()
	s := h.Table().Snapshot(h.SlotIndex(name))
	h.Track(int(s.PID))
	return s
}

// WaitSlot waits until cond holds for the service's slot and returns it.
func (h *Harness) WaitSlot(name, what string, cond func(shm.Slot) bool) shm.Slot {
	h.T.Helper()
	var s shm.Slot
	h.Eventually(fmt.Sprintf("slot of %s: %s", name, what), func() (bool, string) {
		i, err := h.Table().Lookup(name)
		if err != nil {
			return false, err.Error()
		}
		s = h.Table().Snapshot(i)
		h.Track(int(s.PID))
		return cond(s), fmt.Sprintf("%+v%s", s, procBrief(int(s.PID)))
	})
	return s
}

// SlotInState waits for the named service's slot to read state st and
// returns it. hbd records a state it decides (running after start_secs,
// fatal, backoff) in its own status first and in the slot by a call to the
// plugin after, so a test that saw the status must wait for the slot.
func (h *Harness) SlotInState(name string, st shm.State) shm.Slot {
	h.T.Helper()
	return h.WaitSlot(name, "state "+st.String(), func(s shm.Slot) bool { return s.State == st })
}

// procBrief says what the kernel knows of pid (state, parent, where it
// sleeps) for a failure message; "" for 0.
func procBrief(pid int) string {
	if pid == 0 {
		return ""
	}
	st, err := shm.ReadStat(pid)
	if err != nil {
		return fmt.Sprintf(" (pid %d: %v)", pid, err)
	}
	wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return fmt.Sprintf(" (pid %d: state %c, parent %d, exe %q, wchan %q)", pid, st.State, st.PPID, exe, wchan)
}

// WatchPID follows slot i's PID word, the way a peer would, until it holds
// a PID other than 0 and old. It returns that PID and whether the word was
// seen at 0 on the way. For the first few milliseconds (when a kill is
// detected and respawned) it spins on atomic loads, then it polls gently so
// as not to starve hbd of CPU.
func (h *Harness) WatchPID(i int, old uint32) (pid uint32, sawZero bool) {
	h.T.Helper()
	t := h.Table()
	start := time.Now()
	for n := 0; ; n++ {
		p := t.PID(i)
		switch {
		case p == 0:
			sawZero = true
		case p != old:
			h.Track(int(p))
			return p, sawZero
		}
		if n%256 == 0 {
			switch since := time.Since(start); {
			case since > WaitTimeout:
				h.T.Fatalf("slot %d: pid still %d after %v", i, p, WaitTimeout)
			case since > spinFor:
				time.Sleep(200 * time.Microsecond)
			default:
				runtime.Gosched()
			}
		}
	}
}

// spinFor is how long WatchPID spins before it polls.
const spinFor = 20 * time.Millisecond

// PeekSlot is one slot line of hbpeek.
type PeekSlot struct {
	Index      int
	Name       string
	PID        uint32
	State      string
	Generation uint64
	Exits      uint64
	LastStatus int32
	LastPID    uint32
}

// PeekTable is hbpeek's output: the header fields (key=value) and the slots.
type PeekTable struct {
	Header map[string]string
	Slots  []PeekSlot
}

// Peek runs hbpeek with args (e.g. the table name, or "-p", path) and parses
// its output; it fails the test unless hbpeek exits 0.
func (h *Harness) Peek(args ...string) PeekTable {
	h.T.Helper()
	r := h.run(h.HBPeek, args...)
	if r.Code != 0 {
		h.T.Fatalf("hbpeek %q: exit %d\n%s%s", args, r.Code, r.Stdout, r.Stderr)
	}
	p, err := parsePeek(r.Stdout)
	if err != nil {
		h.T.Fatalf("hbpeek %q: %v\n%s", args, err, r.Stdout)
	}
	return p
}

func parsePeek(out string) (PeekTable, error) {
	p := PeekTable{Header: map[string]string{}}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] == "#" {
			for _, kv := range f[1:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					p.Header[k] = v
				}
			}
			continue
		}
		if len(f) != 8 {
			return p, fmt.Errorf("slot line %q: %d fields, want 8", line, len(f))
		}
		var s PeekSlot
		var err error
		num := func(str string, bits int) uint64 {
			n, e := strconv.ParseUint(str, 10, bits)
			if e != nil && err == nil {
				err = e
			}
			return n
		}
		s.Index = int(num(f[0], 31))
		s.Name = f[1]
		s.PID = uint32(num(f[2], 32))
		s.State = f[3]
		s.Generation = num(f[4], 64)
		s.Exits = num(f[5], 64)
		ls, e := strconv.ParseInt(f[6], 10, 32)
		if e != nil && err == nil {
			err = e
		}
		s.LastStatus = int32(ls)
		s.LastPID = uint32(num(f[7], 32))
		if err != nil {
			return p, fmt.Errorf("slot line %q: %w", line, err)
		}
		p.Slots = append(p.Slots, s)
	}
	return p, nil
}

// Eventually calls cond until it returns true, at most WaitTimeout, then
// fails the test with what and the last detail cond returned.
func (h *Harness) Eventually(what string, cond func() (ok bool, detail string)) {
	h.T.Helper()
	deadline := time.Now().Add(WaitTimeout)
	delay := time.Millisecond
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.T.Fatalf("timed out after %v waiting for %s; last: %s", WaitTimeout, what, detail)
		}
		time.Sleep(delay)
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// Track records a process the test has seen (a service, the plugin), so the
// cleanup can check it is gone. 0 is ignored.
func (h *Harness) Track(pid int) {
	if pid <= 0 {
		return
	}
	if _, ok := h.tracked[pid]; ok {
		return
	}
	if st, err := shm.StartTime(pid); err == nil {
		h.tracked[pid] = st
	}
}

// Proc is a live process found by Leftovers.
type Proc struct {
	PID     int
	Cmdline string
}

func (p Proc) String() string { return fmt.Sprintf("%d (%s)", p.PID, p.Cmdline) }

// Leftovers returns the live (not zombie) processes that belong to this
// harness: tracked PIDs still running the same process, and every process
// whose environment has HB_SHM=<Shm> or HB_SHM=<ShmPath>. hbctl processes
// run by the harness count while they run.
func (h *Harness) Leftovers() []Proc {
	var out []Proc
	seen := map[int]bool{}
	add := func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		out = append(out, Proc{PID: pid, Cmdline: cmdline(pid)})
	}
	for pid, st := range h.tracked {
		if live(pid) {
			if now, err := shm.StartTime(pid); err == nil && now == st {
				add(pid)
			}
		}
	}
	ents, _ := os.ReadDir("/proc")
	marks := [][]byte{[]byte("HB_SHM=" + h.Shm + "\x00"), []byte("HB_SHM=" + h.ShmPath + "\x00")}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || len(env) == 0 {
			continue
		}
		env = append([]byte{0}, env...)
		for _, m := range marks {
			if bytes.Contains(env, append([]byte{0}, m...)) && live(pid) {
				add(pid)
				break
			}
		}
	}
	slices.SortFunc(out, func(a, b Proc) int { return a.PID - b.PID })
	return out
}

// live reports whether pid exists and is not a zombie.
func live(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// Alive reports whether pid is a live (not zombie) process.
func Alive(pid int) bool { return live(pid) }

// Kill sends sig to pid.
func (h *Harness) Kill(pid int, sig syscall.Signal) {
	h.T.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		h.T.Fatalf("kill -%d %d: %v", sig, pid, err)
	}
}

// Process names one process: its PID and its start time, since a PID is
// reused once the kernel's counter has wrapped (a replacement may get the
// PID its predecessor just freed).
type Process struct {
	PID   int
	Start uint64 // /proc/PID/stat start time, clock ticks after boot
}

// ProcessOf identifies the running process pid.
func (h *Harness) ProcessOf(pid int) Process {
	h.T.Helper()
	st, err := shm.ReadStat(pid)
	if err != nil {
		h.T.Fatalf("pid %d: %v", pid, err)
	}
	return Process{PID: pid, Start: st.StartTime}
}

// Is reports whether pid is still this process (not a new one under a
// reused PID).
func (p Process) Is(pid int) bool {
	if pid != p.PID {
		return false
	}
	st, err := shm.ReadStat(pid)
	return err != nil || st.StartTime == p.Start
}

// WaitGone waits until pid is no longer a live process.
func (h *Harness) WaitGone(pid int) {
	h.T.Helper()
	h.Eventually(fmt.Sprintf("pid %d to exit", pid), func() (bool, string) {
		return !live(pid), cmdline(pid)
	})
}

// WaitThreadsGone waits until every thread of process pid has exited. A
// process whose main thread is a zombie may still have threads in their
// exit (WaitGone is satisfied by then): what a thread's exit does, such as
// the kernel's walk of its robust futex list, is done only after this.
func (h *Harness) WaitThreadsGone(pid int) {
	h.T.Helper()
	h.Eventually(fmt.Sprintf("every thread of pid %d to exit", pid), func() (bool, string) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return true, ""
		}
		return len(tasks) == 1 && !live(pid), fmt.Sprintf("%d threads", len(tasks))
	})
}

// StopProcess sends SIGSTOP to pid and waits until every thread of it is
// stopped. kill(2) returns once the signal is queued: the kernel wakes one
// thread, which then tells the others to stop, and a thread woken meanwhile
// by something else (a watched process's pidfd turning readable, a proc
// connector event) returns to user space and runs on until it is told. A
// test that acts while the process cannot (kills a service it watches,
// removes the table it writes) must not begin before this returns.
func (h *Harness) StopProcess(pid int) {
	h.T.Helper()
	h.Kill(pid, syscall.SIGSTOP)
	h.Eventually(fmt.Sprintf("every thread of pid %d to be stopped", pid), func() (bool, string) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return false, err.Error()
		}
		var running []string
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				continue // the thread has exited
			}
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] != 'T' && b[i+2] != 't' {
				running = append(running, task.Name())
			}
		}
		return len(running) == 0, fmt.Sprintf("threads not stopped: %v", running)
	})
}

// PluginLog returns the plugin's log file (state_dir/plugin.log).
func (h *Harness) PluginLog() string {
	b, _ := os.ReadFile(filepath.Join(h.StateDir, "plugin.log"))
	return string(b)
}

// Stop sends SIGTERM to hbd and waits for it, failing the test unless it
// exits 0.
func (d *Hbd) Stop() {
	d.h.T.Helper()
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(); code != 0 {
		d.h.T.Fatalf("hbd exited %d after SIGTERM:\n%s", code, d.Log())
	}
}

// badOutput lists what must never appear in hbd's or the plugin's output:
// race reports, crashes, and an invalid state transition (a manager bug,
// which hbd logs and survives).
var badOutput = []string{"WARNING: DATA RACE", "panic: ", "fatal error: ", `msg="state machine"`}

func (h *Harness) cleanup() {
	t := h.T
	// Stop what still runs.
	for _, d := range h.hbds {
		if d.Exited() {
			continue
		}
		d.termed.Store(true)
		d.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if d.code != 0 {
				t.Errorf("cleanup: hbd %d exited %d after SIGTERM", d.PID, d.code)
			}
		case <-time.After(WaitTimeout):
			t.Errorf("cleanup: hbd %d still running %v after SIGTERM; killing it", d.PID, WaitTimeout)
			d.Cmd.Process.Kill()
			<-d.done
		}
	}
	// If the last hbd that served was stopped cleanly (SIGTERM, exit 0),
	// it must have left nothing behind.
	var last *Hbd
	for _, d := range h.hbds {
		if d.ready {
			last = d
		}
	}
	if clean := last != nil && last.termed.Load() && last.code == 0; clean {
		// hbd has waited for its plugin; give a service killed last a
		// moment to be reaped by it, without waiting on a timer.
		var left []Proc
		h.eventuallyQuiet(func() bool { left = h.Leftovers(); return len(left) == 0 })
		if len(left) > 0 {
			t.Errorf("cleanup: processes left behind after hbd stopped cleanly: %v", left)
		}
	}
	for _, p := range h.Leftovers() {
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
	h.eventuallyQuiet(func() bool { return len(h.Leftovers()) == 0 })
	if left := h.Leftovers(); len(left) > 0 {
		t.Errorf("cleanup: processes survive SIGKILL: %v", left)
	}
	removeCgroupTree(h) // the plugin's cgroups, if an unclean stop left them

	for _, d := range h.hbds {
		for _, bad := range badOutput {
			if strings.Contains(d.Log(), bad) {
				t.Errorf("hbd %d wrote %q:\n%s", d.PID, bad, d.Log())
				break
			}
		}
	}
	plog := h.PluginLog()
	for _, bad := range badOutput {
		if strings.Contains(plog, bad) {
			t.Errorf("the plugin wrote %q to its log:\n%s", bad, plog)
			break
		}
	}
	if t.Failed() || os.Getenv(envLogs) != "" {
		for _, d := range h.hbds {
			t.Logf("hbd %d log:\n%s", d.PID, tail(d.Log(), 60))
		}
		t.Logf("plugin log:\n%s", tail(plog, 40))
	}

	h.client.Close()
	if h.table != nil {
		h.table.Close()
	}
	if err := os.Remove(h.ShmPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cleanup: %v", err)
	}
	if t.Failed() && os.Getenv(envKeep) != "" {
		t.Logf("kept %s", h.Dir)
		return
	}
	os.RemoveAll(h.Dir)
}

// eventuallyQuiet is Eventually without failing: it gives up silently.
func (h *Harness) eventuallyQuiet(cond func() bool) {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append([]string{"...\n"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "")
}

// outFile is the file hbd writes its stdout and stderr to.
type outFile struct{ path string }

// String is what the file holds now.
func (o *outFile) String() string {
	b, _ := os.ReadFile(o.path)
	return string(b)
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the lines of s that contain substr.
func Lines(s, substr string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// KnownBug skips the test unless HB_E2E_KNOWN_BUGS is set: it demonstrates
// a bug that is not fixed yet, described by why.
func KnownBug(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(envKnownBugs) == "" {
		t.Skipf("known bug, not fixed yet (run with %s=1 to see it fail): %s", envKnownBugs, why)
	}
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root: %s", why)
	}
}
