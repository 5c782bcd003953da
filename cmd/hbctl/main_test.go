package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/api/apitest"
	"github.com/hbshim/hb/host/api/ctl"
	"github.com/hbshim/hb/shm"
)

// asHbctl makes the test binary run main() instead of the tests: it is
// hbctl for the binary smoke test when the go tool is not at hand.
const asHbctl = "HBCTL_TEST_AS_MAIN"

// TestMain lets the test binary serve as hbctl (asHbctl).
func TestMain(m *testing.M) {
	if os.Getenv(asHbctl) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// testTimeout bounds waits for a state; never a performance threshold.
const testTimeout = 30 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// env is hbctl's environment: HB_SOCKET is sock, HB_SHM is empty.
func env(sock string) func(string) string {
	return func(k string) string {
		if k == "HB_SOCKET" {
			return sock
		}
		return ""
	}
}

// run is one hbctl run in this process, as ctl.Main would do it.
type run struct {
	args   []string
	cancel context.CancelFunc // what SIGINT does to hbctl
	done   chan int           // receives the exit status
	out    *io.PipeReader     // stdout
	errb   *lockedBuffer
}

// lockedBuffer is a bytes.Buffer safe to write while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs hbctl with args against sock in the background.
func start(t *testing.T, sock string, args ...string) *run {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	pr, pw := io.Pipe()
	r := &run{args: args, cancel: cancel, done: make(chan int, 1), out: pr, errb: &lockedBuffer{}}
	go func() {
		code := ctl.Run(ctx, args, ctl.Env{Stdout: pw, Stderr: r.errb, Getenv: env(sock)})
		pw.Close()
		r.done <- code
	}()
	t.Cleanup(cancel)
	return r
}

// wait returns hbctl's stdout (all that is left of it) and exit status.
func (r *run) wait(t *testing.T) (string, int) {
	t.Helper()
	out, err := io.ReadAll(r.out)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-r.done:
		return string(out), code
	case <-time.After(testTimeout):
		t.Fatalf("hbctl %q did not return within %v", r.args, testTimeout)
		return "", 0
	}
}

// hbctl runs hbctl to completion.
func hbctl(t *testing.T, sock string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	r := start(t, sock, args...)
	out, code := r.wait(t)
	return out, r.errb.String(), code
}

func serve(t *testing.T, b api.Backend) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hbd.sock")
	srv, err := api.Listen(path, "", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path
}

func want(t *testing.T, args []string, code, wantCode int, stdout, stderr string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("hbctl %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, stdout, stderr)
	}
}

// fields splits the table output into rows of whitespace-separated fields.
func fields(out string) [][]string {
	var rows [][]string
	for l := range strings.Lines(out) {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

func newBackend(t *testing.T) *apitest.Backend {
	b := apitest.New("rx", "tx", "dpi")
	if err := b.Start([]string{"rx"}); err != nil {
		t.Fatal(err)
	}
	b.Update("tx", func(s *api.ServiceStatus) { s.Reason = "stopped by hbctl" })
	b.Update("dpi", func(s *api.ServiceStatus) {
		s.State, s.Exits, s.LastStatus, s.Generation = "backoff", 3, 137, 3
		s.Reason, s.NextStart = "exited too quickly", time.Now().Add(time.Hour)
	})
	return b
}

func TestStatus(t *testing.T) {
	b := newBackend(t)
	sock := serve(t, b)

	args := []string{"status"}
	out, errOut, code := hbctl(t, sock, args...)
	want(t, args, code, 3, out, errOut) // dpi is backing off: not as wanted
	for _, tc := range []struct {
		args []string
		code int
	}{{[]string{"status", "rx"}, 0}, {[]string{"status", "tx"}, 0}, {[]string{"status", "dpi"}, 3},
		{[]string{"status", "rx", "dpi", "--quiet"}, 3}, {[]string{"status", "rx", "-q"}, 0}} {
		o, e, c := hbctl(t, sock, tc.args...)
		want(t, tc.args, c, tc.code, o, e)
		if slices.Contains(tc.args, "--quiet") || slices.Contains(tc.args, "-q") {
			if o != "" || e != "" {
				t.Errorf("hbctl %q printed %q %q", tc.args, o, e)
			}
		}
	}
	rows := fields(out)
	if len(rows) != 4 {
		t.Fatalf("status printed %d lines, want 4:\n%s", len(rows), out)
	}
	if diff := cmp.Diff([]string{"NAME", "STATE", "PID", "GEN", "EXITS", "LAST", "UPTIME/SINCE", "REASON"}, rows[0]); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	rx, _ := b.Get("rx")
	if got, want := rows[1][:6], []string{"rx", "running", fmt.Sprint(rx.PID), "1", "0", "-"}; !cmp.Equal(got, want) {
		t.Errorf("rx row %q, want prefix %q", rows[1], want)
	}
	if got := strings.Join(rows[2], " "); !strings.HasPrefix(got, "tx stopped - 0 0 - since ") || !strings.HasSuffix(got, "stopped by hbctl") {
		t.Errorf("tx row %q", got)
	}
	if got := strings.Join(rows[3], " "); !strings.HasPrefix(got, "dpi backoff - 3 3 137(KILL) since ") || !strings.Contains(got, "exited too quickly; next start in ") {
		t.Errorf("dpi row %q", got)
	}

	// Flags after arguments; JSON.
	args = []string{"status", "rx", "dpi", "--json"}
	out, errOut, code = hbctl(t, sock, args...)
	want(t, args, code, 3, out, errOut)
	var sts []api.ServiceStatus
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(sts) != 2 || sts[0].Name != "rx" || sts[0].PID != rx.PID || sts[1].Name != "dpi" || sts[1].LastStatus != 137 {
		t.Errorf("status --json: %+v", sts)
	}

	// A missing service: the others are still shown, exit 1.
	args = []string{"status", "nope", "rx"}
	out, errOut, code = hbctl(t, sock, args...)
	want(t, args, code, 1, out, errOut)
	if !strings.Contains(errOut, `no service "nope"`) || len(fields(out)) != 2 {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}

	// -s before the command overrides HB_SOCKET.
	args = []string{"-s", sock, "status", "rx"}
	out, errOut, code = hbctl(t, "/nonexistent.sock", args...)
	want(t, args, code, 0, out, errOut)
}

func TestActions(t *testing.T) {
	b := newBackend(t)
	sock := serve(t, b)
	tests := []struct {
		args     []string
		code     int
		call     string // the backend's last call afterwards ("" none)
		inStdout string
		inStderr string
	}{
		{args: []string{"restart", "nope"}, code: 1, call: "restart nope", inStderr: "hbctl: restart: no service \"nope\"\n"},
		{args: []string{"start", "tx", "dpi"}, code: 0, call: "start tx,dpi", inStdout: "tx: running, pid "},
		{args: []string{"restart", "rx"}, code: 0, call: "restart rx", inStdout: "rx: running, pid "},
		{args: []string{"stop", "--all"}, code: 0, call: "stop dpi,tx,rx", inStdout: "rx: stopped"},
		{args: []string{"start", "--all", "--json"}, code: 0, call: "start rx,tx,dpi", inStdout: `"name": "dpi"`},
		{args: []string{"start"}, code: 2, inStderr: "no service named"},
		{args: []string{"stop", "rx", "--all"}, code: 2, inStderr: "not both"},
		{args: []string{"signal", "HUP", "rx"}, code: 0, call: "signal HUP rx", inStdout: "rx: sent SIGHUP to pid"},
		{args: []string{"signal", "-9", "rx"}, code: 0, call: "signal KILL rx"},
		{args: []string{"signal", "sigusr1", "rx", "--json"}, code: 0, call: "signal USR1 rx", inStdout: `"state": "running"`},
		{args: []string{"signal", "BOGUS", "rx"}, code: 2, inStderr: `unknown signal "BOGUS"`},
		{args: []string{"signal", "HUP"}, code: 2},
		{args: []string{"signal", "HUP", "nope"}, code: 1, call: "signal HUP nope", inStderr: `no service "nope"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			before := len(b.Calls())
			out, errOut, code := hbctl(t, sock, tc.args...)
			want(t, tc.args, code, tc.code, out, errOut)
			calls := b.Calls()[before:]
			if tc.call == "" && len(calls) > 0 || tc.call != "" && (len(calls) == 0 || calls[len(calls)-1] != tc.call) {
				t.Errorf("backend calls %q, want %q", calls, tc.call)
			}
			if !strings.Contains(out, tc.inStdout) {
				t.Errorf("stdout %q does not contain %q", out, tc.inStdout)
			}
			if !strings.Contains(errOut, tc.inStderr) {
				t.Errorf("stderr %q does not contain %q", errOut, tc.inStderr)
			}
		})
	}
}

func TestReload(t *testing.T) {
	b := newBackend(t)
	sock := serve(t, b)
	lines := []string{`hb.toml:3: service "rx": unknown key "comand"`, `hb.toml:9: service "tx": command: empty`}
	b.SetReload(func() (api.ReloadResult, error) {
		return api.ReloadResult{}, api.InvalidConfig(errors.Join(errors.New(lines[0]), errors.New(lines[1])))
	})
	out, errOut, code := hbctl(t, sock, "reload")
	want(t, []string{"reload"}, code, 1, out, errOut)
	for _, l := range lines {
		if !strings.Contains(errOut, "\n  "+l+"\n") {
			t.Errorf("stderr does not list %q:\n%s", l, errOut)
		}
	}

	b.SetReload(func() (api.ReloadResult, error) {
		return api.ReloadResult{Added: []string{"new"}, Changed: []string{"rx", "tx"}}, nil
	})
	out, errOut, code = hbctl(t, sock, "reload")
	want(t, []string{"reload"}, code, 0, out, errOut)
	if out != "reloaded: 1 added (new); 2 changed (rx, tx)\n" {
		t.Errorf("stdout %q", out)
	}
}

func TestUnreachable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "hbd.sock")
	for _, args := range [][]string{{"status"}, {"stop", "rx"}, {"watch"}, {"wait", "rx", "--up"}, {"reload"}, {"health"}} {
		out, errOut, code := hbctl(t, missing, args...)
		wantCode := 3
		if args[0] == "status" {
			wantCode = 4 // the state is unknown, not "not running"
		}
		want(t, args, code, wantCode, out, errOut)
		if !strings.Contains(errOut, "cannot reach hbd at "+missing) || !strings.Contains(errOut, "is hbd running? set -s or HB_SOCKET") {
			t.Errorf("hbctl %q: stderr %q", args, errOut)
		}
	}
}

func TestWait(t *testing.T) {
	b := newBackend(t)
	sock := serve(t, b)
	ctx := ctxT(t)

	// begin runs `hbctl wait ...` and returns once it has subscribed.
	begin := func(args ...string) *run {
		t.Helper()
		r := start(t, sock, args...)
		if err := b.WaitSubscribers(ctx, 1); err != nil {
			t.Fatal(err)
		}
		return r
	}
	finish := func(r *run, wantCode int) string {
		t.Helper()
		out, code := r.wait(t)
		want(t, r.args, code, wantCode, out, r.errb.String())
		if err := b.WaitSubscribers(ctx, 0); err != nil {
			t.Fatal(err)
		}
		return out
	}

	r := begin("wait", "dpi", "--up")
	b.Update("dpi", func(s *api.ServiceStatus) { s.State, s.PID = "starting", 4242 })
	b.Update("dpi", func(s *api.ServiceStatus) { s.State = "running" })
	if out := finish(r, 0); out != "dpi: up (running, pid 4242)\n" {
		t.Errorf("stdout %q", out)
	}

	r = begin("wait", "--down", "dpi")
	b.Update("dpi", func(s *api.ServiceStatus) { s.State, s.PID = "exited", 0 })
	finish(r, 0)

	// Already down: no event needed.
	args := []string{"wait", "dpi", "tx", "--down"}
	o, e, code := hbctl(t, sock, args...)
	want(t, args, code, 0, o, e)

	args = []string{"wait", "tx", "--up", "--timeout", "50ms"}
	o, e, code = hbctl(t, sock, args...)
	want(t, args, code, 4, o, e)
	if !strings.Contains(e, "timed out after 50ms: tx is not up (stopped)") {
		t.Errorf("stderr %q", e)
	}

	for _, args := range [][]string{{"wait", "nope", "--up"}} {
		o, e, code := hbctl(t, sock, args...)
		want(t, args, code, 1, o, e)
	}
	for _, args := range [][]string{{"wait", "tx"}, {"wait", "tx", "--up", "--down"}, {"wait", "--up"}, {"wait", "tx", "--up", "--timeout", "soon"}} {
		o, e, code := hbctl(t, sock, args...)
		want(t, args, code, 2, o, e)
	}
}

func TestWatch(t *testing.T) {
	b := newBackend(t)
	path := filepath.Join(t.TempDir(), "hbd.sock")
	srv, err := api.Listen(path, "", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := ctxT(t)

	for _, tc := range []struct {
		name     string
		args     []string
		end      func(r *run)
		wantCode int
		check    func(t *testing.T, lines []string)
	}{
		{
			name: "json until interrupted", args: []string{"watch", "--json"},
			end: func(r *run) { r.cancel() }, wantCode: 0, // SIGINT cancels the command
			check: func(t *testing.T, lines []string) {
				var ev api.Event
				if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil || ev.Kind != "exit" || ev.Name != "rx" || ev.Status != 137 {
					t.Errorf("first line %q: %+v %v", lines[0], ev, err)
				}
			},
		},
		{
			name: "text, hbd goes away", args: []string{"watch", "rx"},
			end: func(*run) { srv.Close() }, wantCode: 3,
			check: func(t *testing.T, lines []string) {
				if !strings.Contains(lines[0], " exit   rx pid 7 gen 2 status 137(KILL) via connector") {
					t.Errorf("first line %q", lines[0])
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, path, tc.args...)
			if err := b.WaitSubscribers(ctx, 1); err != nil {
				t.Fatal(err)
			}
			b.Emit(api.Event{Kind: "spawn", Name: "other", PID: 1})
			b.Emit(api.Event{Kind: "exit", Name: "rx", PID: 7, Generation: 2, Status: 137, Source: "connector"})
			b.Emit(api.Event{Kind: "state", Name: "rx", State: "backoff", Reason: "exited with 137"})
			sc := bufio.NewScanner(r.out)
			var lines []string
			for len(lines) < 2 && sc.Scan() {
				if strings.Contains(sc.Text(), "other") && len(tc.args) > 1 && tc.args[1] == "rx" {
					t.Errorf("filtered watch printed %q", sc.Text())
				}
				if !strings.Contains(sc.Text(), "other") {
					lines = append(lines, sc.Text())
				}
			}
			if len(lines) < 2 {
				t.Fatalf("watch printed %q; stderr %s", lines, r.errb.String())
			}
			tc.check(t, lines)
			tc.end(r)
			if _, code := r.wait(t); code != tc.wantCode {
				t.Errorf("exit %d, want %d; stderr %s", code, tc.wantCode, r.errb.String())
			}
			if err := b.WaitSubscribers(ctx, 0); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestShm(t *testing.T) {
	dir := t.TempDir()
	w, err := shm.Create("hbtest", shm.Options{Dir: dir, Slots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	w.SetHeaderFlags(shm.FlagPidfd)
	w.Beat()
	rx, err := w.Alloc("rx")
	if err != nil {
		t.Fatal(err)
	}
	pid := uint32(os.Getpid())
	st, err := shm.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	w.Spawned(rx, pid, 1, st, shm.StateRunning, 0)
	tx, err := w.Alloc("tx")
	if err != nil {
		t.Fatal(err)
	}
	w.Spawned(tx, 99999, 2, 1, shm.StateRunning, shm.SlotAdopted)
	w.RecordExit(tx, 99999, 137, shm.MonotonicNs(), shm.StateBackoff)
	table := filepath.Join(dir, "hbtest")

	// hbd need not run: the socket is missing.
	nosock := filepath.Join(dir, "none.sock")
	args := []string{"shm", "--path", table, "--json"}
	out, errOut, code := hbctl(t, nosock, args...)
	want(t, args, code, 0, out, errOut)
	var v struct {
		Path   string
		Header struct {
			SlotCount uint32 `json:"slot_count"`
			WriterPID uint32 `json:"writer_pid"`
		}
		Writer struct {
			Status string
			Pidfd  bool
		}
		Slots []struct {
			Index      int
			Name       string
			PID        uint32
			State      string
			Generation uint64
			Exits      uint64
			LastStatus int32 `json:"last_status"`
			Adopted    bool
		}
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if v.Path != table || v.Header.SlotCount != 8 || v.Header.WriterPID != pid || v.Writer.Status != "alive" || !v.Writer.Pidfd {
		t.Errorf("header: %+v", v)
	}
	if len(v.Slots) != 2 {
		t.Fatalf("slots: %+v", v.Slots)
	}
	if s := v.Slots[0]; s.Name != "rx" || s.PID != pid || s.State != "running" || s.Generation != 1 {
		t.Errorf("rx slot %+v", s)
	}
	if s := v.Slots[1]; s.Name != "tx" || s.PID != 0 || s.State != "backoff" || s.Exits != 1 || s.LastStatus != 137 || !s.Adopted {
		t.Errorf("tx slot %+v", s)
	}

	// A writer whose process exists but whose beat is old is stalled, not alive.
	f, err := os.OpenFile(table, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var old [8]byte
	binary.LittleEndian.PutUint64(old[:], shm.MonotonicNs()-uint64(10*time.Second))
	if _, err := f.WriteAt(old[:], 40); err != nil { // writer_beat_ns
		t.Fatal(err)
	}
	f.Close()
	args = []string{"shm", "--path", table, "--json"}
	out, errOut, code = hbctl(t, nosock, args...)
	want(t, args, code, 0, out, errOut)
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if v.Writer.Status != "stalled" {
		t.Errorf("writer with a 10 s old beat: status %q, want stalled", v.Writer.Status)
	}
	w.Beat()

	args = []string{"shm", "tx", "--path", table}
	out, errOut, code = hbctl(t, nosock, args...)
	want(t, args, code, 0, out, errOut)
	rows := fields(out)
	if len(rows) != 3 || !strings.HasPrefix(out, table+": ABI v1, 8 slots, writer pid "+fmt.Sprint(pid)+" (alive") ||
		!strings.Contains(out, ", detectors pidfd, created ") {
		t.Errorf("shm output:\n%s", out)
	}
	if got := strings.Join(rows[2], " "); !strings.HasPrefix(got, "1 tx 0 backoff 2 1 137(KILL) ") || !strings.HasSuffix(got, " ago adopted") {
		t.Errorf("tx row %q", got)
	}

	args = []string{"shm", "--path", table, "rx", "nope"}
	out, errOut, code = hbctl(t, nosock, args...)
	want(t, args, code, 1, out, errOut)
	if !strings.Contains(errOut, `no slot for service "nope"`) || len(fields(out)) != 3 {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}

	args = []string{"shm", "--path", filepath.Join(dir, "missing")}
	out, errOut, code = hbctl(t, nosock, args...)
	want(t, args, code, 1, out, errOut)

	args = []string{"shm", "--name", "hb-test-no-such-table-" + fmt.Sprint(os.Getpid())}
	out, errOut, code = hbctl(t, nosock, args...)
	want(t, args, code, 1, out, errOut)
	if !strings.Contains(errOut, "set --name or HB_SHM") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestHelpAndUsage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock") // help never dials
	cmds := []string{"status", "start", "stop", "restart", "signal", "reload", "watch", "wait", "shm", "health", "version", "help"}
	var cases [][]string
	cases = append(cases, []string{"--help"}, []string{"-h"}, []string{"help"}, []string{"-s", "x", "--help"})
	for _, c := range cmds {
		cases = append(cases, []string{c, "--help"}, []string{c, "-h"}, []string{"help", c}, []string{c, "x", "-h"})
	}
	for _, args := range cases {
		out, errOut, code := hbctl(t, sock, args...)
		want(t, args, code, 0, out, errOut)
		if !strings.HasPrefix(out, "usage: hbctl") || errOut != "" {
			t.Errorf("hbctl %q: stdout %q stderr %q", args, out, errOut)
		}
	}
	out, _, _ := hbctl(t, sock, "help")
	for _, s := range []string{"Exit status:", "4    wait timed out", "HB_SOCKET"} {
		if !strings.Contains(out, s) {
			t.Errorf("help does not mention %q", s)
		}
	}

	for _, args := range [][]string{{}, {"nope"}, {"help", "nope"}, {"status", "--bogus"}, {"-x", "status"}, {"reload", "extra"}, {"version", "x"}} {
		out, errOut, code := hbctl(t, sock, args...)
		want(t, args, code, 2, out, errOut)
		if errOut == "" {
			t.Errorf("hbctl %q: usage error with nothing on stderr", args)
		}
	}
}

func TestVersionAndHealth(t *testing.T) {
	b := newBackend(t)
	b.SetPluginInfo(api.PluginInfo{PID: 77, Shm: "hb", Slots: 1024, Connector: true, Pidfd: true, Version: "v9", FeatureVersion: 2}, nil)
	sock := serve(t, b)

	out, errOut, code := hbctl(t, sock, "version")
	want(t, []string{"version"}, code, 0, out, errOut)
	if !strings.HasPrefix(out, "hbctl ") || !strings.Contains(out, fmt.Sprintf("(pid %d) at %s", os.Getpid(), sock)) || !strings.Contains(out, "plugin v9 (features 2, pid 77)") {
		t.Errorf("version:\n%s", out)
	}
	out, errOut, code = hbctl(t, filepath.Join(t.TempDir(), "none.sock"), "version")
	want(t, []string{"version"}, code, 0, out, errOut)
	if !strings.Contains(out, "not reachable") {
		t.Errorf("version without hbd:\n%s", out)
	}

	out, errOut, code = hbctl(t, sock, "health")
	want(t, []string{"health"}, code, 0, out, errOut)
	if !strings.Contains(out, ": ok\n") || !strings.Contains(out, "detectors connector+pidfd,") {
		t.Errorf("health:\n%s", out)
	}
	b.SetPluginInfo(api.PluginInfo{PID: 77, Shm: "hb", Slots: 1024, Tracepoint: true, Connector: true, Pidfd: true, DetectorPriority: 1}, nil)
	out, errOut, code = hbctl(t, sock, "health")
	want(t, []string{"health"}, code, 0, out, errOut)
	if !strings.Contains(out, "detectors tracepoint+connector+pidfd (tracepoint reader SCHED_FIFO 1),") {
		t.Errorf("health with a real-time reader:\n%s", out)
	}
	b.SetPluginInfo(api.PluginInfo{PID: 77, Shm: "hb", Slots: 1024, KillTracepoint: true, Tracepoint: true, Pidfd: true}, nil)
	out, errOut, code = hbctl(t, sock, "health")
	want(t, []string{"health"}, code, 0, out, errOut)
	if !strings.Contains(out, "detectors kill+tracepoint+pidfd,") {
		t.Errorf("health with the kill program:\n%s", out)
	}
	note := "SIGKILLs are seen at the exit, not at the kill (no BTF)"
	b.SetPluginInfo(api.PluginInfo{PID: 77, Shm: "hb", Slots: 1024, Tracepoint: true, Pidfd: true, KillNote: note}, nil)
	out, errOut, code = hbctl(t, sock, "health")
	want(t, []string{"health"}, code, 0, out, errOut)
	if !strings.Contains(out, "detectors tracepoint+pidfd,") || !strings.Contains(out, note+"\n") {
		t.Errorf("health without the kill program:\n%s", out)
	}
	b.SetPluginInfo(api.PluginInfo{}, errors.New("plugin exited"))
	out, errOut, code = hbctl(t, sock, "health", "--json")
	want(t, []string{"health"}, code, 1, out, errOut)
	var h api.Health
	if err := json.Unmarshal([]byte(out), &h); err != nil || h.OK || !strings.Contains(h.Error, "plugin exited") {
		t.Errorf("health --json: %+v %v\n%s", h, err, out)
	}
}

// The built binary, once: main wires ctl.Main to the process's arguments,
// streams and environment, and SIGINT ends a watch with status 0.
func TestBinarySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hbctl")
	}
	b := newBackend(t)
	sock := serve(t, b)
	bin, extra := filepath.Join(t.TempDir(), "hbctl"), []string{}
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Logf("go build failed, running the test binary as hbctl: %v\n%s", err, out)
		bin, extra = os.Args[0], []string{asHbctl + "=1", "GORACE=atexit_sleep_ms=0"}
	}
	cmd := func(args ...string) *exec.Cmd {
		c := exec.CommandContext(ctxT(t), bin, args...)
		c.Env = append(append(os.Environ(), "HB_SOCKET="+sock, "HB_SHM="), extra...)
		return c
	}
	out, err := cmd("status", "rx").Output()
	if err != nil || !strings.HasPrefix(string(out), "NAME") || !strings.Contains(string(out), "rx") {
		t.Errorf("hbctl status rx: %v\n%s", err, out)
	}
	if err := cmd("stop", "nope").Run(); err == nil {
		t.Errorf("hbctl stop nope: exit 0, want 1")
	} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("hbctl stop nope: %v, want exit status 1", err)
	}
	w := cmd("watch")
	stdout, err := w.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGINT once it prints: its stream is open (an interrupt before that
	// is an interrupted command, status 130).
	if err := b.WaitSubscribers(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	b.Emit(api.Event{Kind: "spawn", Name: "rx", PID: 7})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if !strings.Contains(line, "rx pid 7") {
		t.Fatalf("hbctl watch printed %q (%v)", line, err)
	}
	if err := w.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(stdout); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Errorf("hbctl watch after SIGINT: %v, want exit status 0", err)
	}
}
