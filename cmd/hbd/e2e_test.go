package main

// End-to-end tests of hb: the real hbd (and its plugin), hbctl, hbpeek and
// hbclient, on a private configuration and shm table each. See
// harness_test.go for the helpers.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// threeServices is a C client, a plain sleep and a shell loop that keeps a
// child in its process group.
func threeServices(h *Harness) string {
	return fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "200ms"

[service.sleeper]
command    = "sleep infinity"
start_secs = "200ms"

[service.shell]
command    = ["sh", "-c", "while :; do sleep 1; done"]
start_secs = "200ms"
`, h.HBClient)
}

// TestStatusTableAndPeekAgree: hbctl status --json, the shm reader and
// hbpeek (by name and by path) tell the same story about running services.
func TestStatusTableAndPeekAgree(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	h.Start()
	names := []string{"client", "sleeper", "shell"}
	h.WaitRunning(names...)

	sts := h.Status()
	if got := len(sts); got != len(names) {
		t.Fatalf("status lists %d services, want %d: %+v", got, len(names), sts)
	}
	health := h.Health()
	// With the tracepoint and the privilege for it, its reader runs at the
	// default real-time priority; otherwise it is an ordinary thread.
	if want := 0; health.Plugin.Tracepoint && os.Geteuid() == 0 {
		want = 1
		if health.Plugin.DetectorPriority != want {
			t.Errorf("tracepoint reader priority %d, want %d", health.Plugin.DetectorPriority, want)
		}
	} else if health.Plugin.DetectorPriority != want {
		t.Errorf("reader priority %d without the tracepoint, want %d", health.Plugin.DetectorPriority, want)
	}
	// The kill program runs with the exit tracepoint where the kernel has
	// BTF; without it, health says why.
	_, btfErr := os.Stat("/sys/kernel/btf/vmlinux")
	switch p := health.Plugin; {
	case !p.Tracepoint && (p.KillTracepoint || p.KillNote != ""):
		t.Errorf("health: kill %v, note %q without the exit tracepoint", p.KillTracepoint, p.KillNote)
	case p.Tracepoint && btfErr == nil && !p.KillTracepoint:
		t.Errorf("health: the kill program does not run beside the exit tracepoint: %q", p.KillNote)
	case p.Tracepoint && !p.KillTracepoint && !strings.Contains(p.KillNote, "at the exit"):
		t.Errorf("health: no kill program and no note saying why: %+v", p)
	}

	tbl := h.Table()
	hdr := tbl.Header()
	if hdr.WriterPID != uint32(health.Plugin.PID) {
		t.Errorf("table writer_pid %d, plugin pid %d", hdr.WriterPID, health.Plugin.PID)
	}
	if hdr.Version != shm.Version || int(hdr.SlotCount) != h.Opt.Slots {
		t.Errorf("table header %+v, want version %d and %d slots", hdr, shm.Version, h.Opt.Slots)
	}

	// What the Go reader sees, as hbpeek prints it.
	var fromTable []PeekSlot
	for s := range tbl.Used() {
		fromTable = append(fromTable, PeekSlot{Index: s.Index, Name: s.Name, PID: s.PID, State: s.State.String(),
			Generation: s.Generation, Exits: s.Exits, LastStatus: s.LastStatus, LastPID: s.LastPID})
	}
	byName := h.Peek(h.Shm)
	byPath := h.Peek("-p", h.ShmPath)
	if d := cmp.Diff(fromTable, byName.Slots); d != "" {
		t.Errorf("hbpeek NAME differs from the shm reader (-reader +hbpeek):\n%s", d)
	}
	if d := cmp.Diff(byName, byPath); d != "" {
		t.Errorf("hbpeek -p PATH differs from hbpeek NAME (-name +path):\n%s", d)
	}
	if got, want := byName.Header["writer_pid"], strconv.Itoa(health.Plugin.PID); got != want {
		t.Errorf("hbpeek writer_pid=%s, want %s", got, want)
	}
	if got := byName.Header["used"]; got != "3" {
		t.Errorf("hbpeek used=%s, want 3", got)
	}

	// hbctl status against the table, service by service.
	want := map[string]PeekSlot{}
	for _, s := range byName.Slots {
		want[s.Name] = s
	}
	for _, st := range sts {
		s, ok := want[st.Name]
		if !ok {
			t.Errorf("%s: in status but not in the table", st.Name)
			continue
		}
		got := PeekSlot{Index: st.Slot, Name: st.Name, PID: uint32(st.PID), State: st.State,
			Generation: st.Generation, Exits: st.Exits, LastStatus: int32(st.LastStatus), LastPID: s.LastPID}
		if d := cmp.Diff(s, got); d != "" {
			t.Errorf("%s: hbctl status differs from the table (-table +status):\n%s", st.Name, d)
		}
		if st.State != "running" || st.PID == 0 || st.Generation != 1 || st.Exits != 0 || st.LastStatus != -1 {
			t.Errorf("%s: %+v, want running, generation 1, no exit", st.Name, st)
		}
		// The service's process is what the table says, and knows where it is.
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.PID))
		if err != nil {
			t.Errorf("%s: %v", st.Name, err)
			continue
		}
		for _, kv := range []string{"HB_SHM=" + h.ShmPath, "HB_SERVICE=" + st.Name,
			"HB_SLOT=" + strconv.Itoa(st.Slot), "HB_GENERATION=1"} {
			if !strings.Contains("\x00"+string(env), "\x00"+kv+"\x00") {
				t.Errorf("%s (pid %d): environment lacks %s", st.Name, st.PID, kv)
			}
		}
	}

	// hbctl shm (the table read by hbctl, without hbd) agrees too.
	var view struct {
		Header struct {
			WriterPID uint32 `json:"writer_pid"`
		} `json:"header"`
		Writer struct {
			Status string `json:"status"`
		} `json:"writer"`
		Slots []struct {
			Index      int    `json:"index"`
			Name       string `json:"name"`
			PID        uint32 `json:"pid"`
			State      string `json:"state"`
			Generation uint64 `json:"generation"`
		} `json:"slots"`
	}
	if err := json.Unmarshal([]byte(h.MustCtl("shm", "--name", h.Shm, "--json")), &view); err != nil {
		t.Fatal(err)
	}
	if view.Header.WriterPID != hdr.WriterPID || view.Writer.Status != "alive" || len(view.Slots) != len(byName.Slots) {
		t.Errorf("hbctl shm --json: %+v", view)
	}
	for i, s := range view.Slots {
		p := byName.Slots[i]
		if s.Index != p.Index || s.Name != p.Name || s.PID != p.PID || s.State != p.State || s.Generation != p.Generation {
			t.Errorf("hbctl shm slot %+v, hbpeek %+v", s, p)
		}
	}

	// The human table names each service with its pid.
	out := h.MustCtl("status")
	for _, st := range sts {
		if !strings.Contains(out, st.Name) || !strings.Contains(out, strconv.Itoa(st.PID)) {
			t.Errorf("hbctl status does not show %s with pid %d:\n%s", st.Name, st.PID, out)
		}
	}
}

// TestKill9Respawn: a killed service's slot goes to 0, then holds a new PID
// with generation+1 and exits+1, and hbctl status says running with it.
func TestKill9Respawn(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h) + `
[service.delayed]
command       = "sleep infinity"
start_secs    = "200ms"
restart_delay = "1s"
backoff_max   = "1s"
`)
	h.Start()
	sts := h.WaitRunning("client", "sleeper", "shell", "delayed")

	for _, name := range []string{"client", "shell", "delayed"} {
		h.Run(name, func(t *testing.T) {
			before := h.Slot(name)
			i := h.SlotIndex(name)
			old := before.PID
			h.Kill(int(old), syscall.SIGKILL)
			if name == "delayed" {
				// A respawn after restart_delay: the slot reads 0 (state
				// backoff) meanwhile, for every peer to see.
				s := h.WaitSlot(name, "pid 0 in backoff", func(s shm.Slot) bool {
					return s.PID == 0 && s.State == shm.StateBackoff
				})
				if s.LastPID != old || s.Exits != before.Exits+1 || s.Generation != before.Generation {
					t.Errorf("slot in backoff: %+v; want last_pid %d, exits+1, the same generation", s, old)
				}
				if st := h.ServiceStatus(name); st.State != "backoff" || st.PID != 0 || st.NextStart.IsZero() {
					t.Errorf("hbctl status in backoff: %+v", st)
				}
			}
			// A respawn at once is usually too quick to catch the 0; the
			// record of the exit (last_pid, exits) shows it happened.
			pid, sawZero := h.WatchPID(i, old)
			t.Logf("%s: pid %d -> %d, 0 seen in between: %v", name, old, pid, sawZero)
			after := h.WaitSlot(name, "generation+1 and exits+1", func(s shm.Slot) bool {
				return s.Generation == before.Generation+1 && s.Exits == before.Exits+1
			})
			if after.PID != pid || after.LastPID != old || after.LastStatus != 128+int32(syscall.SIGKILL) {
				t.Errorf("slot after the kill: %+v; want pid %d, last_pid %d, last_status 137", after, pid, old)
			}
			// The slot reads 0 from the start of the exit (the tracepoint);
			// the process is gone once the kernel has torn it down, which a
			// starved CPU (another test's real-time load) can delay.
			h.WaitGone(int(old))
			h.WaitService(name, fmt.Sprintf("running with pid %d", pid), func(st api.ServiceStatus) bool {
				return IsRunning(st) && st.PID == int(pid)
			})
			st := h.ServiceStatus(name)
			if st.State != "running" || st.PID != int(pid) || st.Generation != before.Generation+1 ||
				st.Exits != before.Exits+1 || st.LastStatus != 137 {
				t.Errorf("hbctl status %s: %+v; want running, pid %d, generation %d, exits %d, last status 137",
					name, st, pid, before.Generation+1, before.Exits+1)
			}
			if s := h.SlotInState(name, shm.StateRunning); s.PID != pid {
				t.Errorf("slot %+v, want running with pid %d", s, pid)
			}
		})
	}
	// The untouched service is untouched.
	if st := h.ServiceStatus("sleeper"); st.PID != sts["sleeper"].PID || st.Generation != 1 {
		t.Errorf("sleeper changed: %+v, was %+v", st, sts["sleeper"])
	}
}

// TestStopStartRestart: hbctl stop, start and restart act, and status and
// the table say so.
func TestStopStartRestart(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h) + `
[service.delayed]
command       = "sleep infinity"
start_secs    = "100ms"
restart_delay = "700ms"
backoff_max   = "700ms"
`)
	h.Start()
	first := h.WaitRunning("client", "sleeper", "shell", "delayed")

	checkStopped := func(name string, oldPID int) {
		t.Helper()
		st := h.ServiceStatus(name)
		if st.State != "stopped" || st.PID != 0 {
			t.Errorf("after stop, status %s: %+v; want stopped, pid 0", name, st)
		}
		if s := h.Slot(name); s.PID != 0 || s.State != shm.StateStopped {
			t.Errorf("after stop, slot %s: pid %d state %v; want 0 stopped", name, s.PID, s.State)
		}
		// The stop is over once the exit has begun (the slot reads 0
		// from then on); the kernel's teardown of the process may take a
		// moment longer on a loaded machine.
		h.WaitGone(oldPID)
	}

	// stop
	sleeper := h.ProcessOf(first["sleeper"].PID)
	out := h.MustCtl("stop", "sleeper")
	if !strings.HasPrefix(out, "sleeper: stopped") {
		t.Errorf("hbctl stop sleeper printed %q", out)
	}
	checkStopped("sleeper", first["sleeper"].PID)
	if r := h.Ctl("stop", "sleeper"); r.Code != 0 {
		t.Errorf("stopping a stopped service: %v", r)
	}

	// start
	out = h.MustCtl("start", "sleeper")
	if !strings.HasPrefix(out, "sleeper: starting, pid ") && !strings.HasPrefix(out, "sleeper: running, pid ") {
		t.Errorf("hbctl start sleeper printed %q", out)
	}
	st := h.WaitService("sleeper", "running", IsRunning)
	if sleeper.Is(st.PID) || st.Generation != 2 {
		t.Errorf("after start: %+v; want a new process, generation 2", st)
	}
	if s := h.Slot("sleeper"); s.PID != uint32(st.PID) || s.Generation != 2 {
		t.Errorf("after start, slot %+v; want pid %d generation 2", s, st.PID)
	}

	// restart
	before := h.ServiceStatus("shell")
	shell := h.ProcessOf(before.PID)
	h.MustCtl("restart", "shell")
	after := h.ServiceStatus("shell")
	if after.PID == 0 || shell.Is(after.PID) || after.Generation != before.Generation+1 ||
		(after.State != "starting" && after.State != "running") {
		t.Errorf("after restart: %+v, before %+v", after, before)
	}
	h.WaitGone(before.PID) // torn down once the kernel is done with it
	if s := h.Slot("shell"); s.PID != uint32(after.PID) {
		t.Errorf("after restart, slot pid %d, status pid %d", s.PID, after.PID)
	}

	// signal: hbclient exits 0 on SIGTERM; restart = "always" respawns it.
	cl := h.ServiceStatus("client")
	// (The pid printed is the status's after the signal: when the plugin
	// has respawned the service already, the new incarnation's.)
	if out := h.MustCtl("signal", "TERM", "client"); !strings.HasPrefix(out, "client: sent SIGTERM to pid ") {
		t.Errorf("hbctl signal TERM client printed %q", out)
	}
	st = h.WaitService("client", "running again", func(st api.ServiceStatus) bool {
		return IsRunning(st) && st.Generation == cl.Generation+1
	})
	if st.LastStatus != 0 || st.Exits != cl.Exits+1 {
		t.Errorf("client after SIGTERM: %+v; want last status 0, one more exit", st)
	}

	// stop while backing off: the pending respawn is cancelled.
	dl := h.ServiceStatus("delayed")
	h.Kill(dl.PID, syscall.SIGKILL)
	bo := h.WaitService("delayed", "backoff", func(st api.ServiceStatus) bool { return st.State == "backoff" })
	h.MustCtl("stop", "delayed")
	checkStopped("delayed", dl.PID)
	// Past the moment the cancelled respawn was due, nothing has started.
	time.Sleep(time.Until(bo.NextStart) + 300*time.Millisecond)
	if st := h.ServiceStatus("delayed"); st.State != "stopped" || st.Generation != dl.Generation {
		t.Errorf("a stopped service was respawned by its cancelled backoff: %+v", st)
	}
	if s := h.Slot("delayed"); s.PID != 0 || s.Generation != dl.Generation {
		t.Errorf("slot of the stopped service: %+v", s)
	}
	h.MustCtl("start", "delayed")

	// --all
	all := h.Status()
	h.MustCtl("stop", "--all")
	for _, st := range all {
		checkStopped(st.Name, st.PID)
	}
	h.MustCtl("start", "--all")
	for _, name := range []string{"client", "sleeper", "shell", "delayed"} {
		h.WaitService(name, "running", IsRunning)
	}

	// Unknown services are an error, and nothing else is touched.
	if r := h.Ctl("stop", "nosuch"); r.Code != 1 || !strings.Contains(r.Stderr, "nosuch") {
		t.Errorf("stop nosuch: %v", r)
	}
	if r := h.Ctl("status", "nosuch"); r.Code != 1 {
		t.Errorf("status nosuch: %v", r)
	}
}

// TestMissingExecutableGoesFatal: services that cannot be executed are fatal
// with the reason in status, and the others run.
func TestMissingExecutableGoesFatal(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	notExec := filepath.Join(h.Dir, "not-executable")
	h.WriteFile(notExec, "#!/bin/sh\nexit 0\n")
	h.WriteConfig(fmt.Sprintf(`
[service.good]
command    = "sleep infinity"
start_secs = "100ms"

[service.missing]
command = ["/nonexistent/hb-program", "--flag"]

[service.notinpath]
command = "hb-no-such-program-anywhere"

[service.notexec]
command = [%q]

[service.good2]
command    = [%q]
start_secs = "100ms"
`, notExec, h.HBClient))
	h.Start()
	h.WaitRunning("good", "good2")

	for name, reason := range map[string]string{
		"missing":   "/nonexistent/hb-program: no such file or directory",
		"notinpath": `"hb-no-such-program-anywhere" not found in PATH`,
		"notexec":   "not executable",
	} {
		st := h.WaitService(name, "fatal", func(st api.ServiceStatus) bool { return st.State == "fatal" })
		if st.PID != 0 || !strings.Contains(st.Reason, reason) {
			t.Errorf("%s: %+v; want pid 0 and a reason containing %q", name, st, reason)
		}
		if !strings.Contains(st.Reason, h.Config+":") {
			t.Errorf("%s: reason %q does not locate the command in %s", name, st.Reason, h.Config)
		}
		// Asking again says why, and fails.
		r := h.Ctl("start", name)
		if r.Code != 1 || !strings.Contains(r.Stderr, reason) {
			t.Errorf("hbctl start %s: %v; want exit 1 with %q", name, r, reason)
		}
	}
	r := h.Ctl("status")
	if r.Code != 3 {
		t.Errorf("hbctl status with fatal services: %v; want exit 3", r)
	}
	out := r.Stdout
	if rows := Lines(out, "fatal"); len(rows) != 3 {
		t.Errorf("hbctl status shows %d fatal rows, want 3:\n%s", len(rows), out)
	}
	for _, name := range []string{"good", "good2"} {
		if st := h.ServiceStatus(name); !IsRunning(st) {
			t.Errorf("%s: %+v, want running", name, st)
		}
	}
}

// TestCheck: hbd --check rejects a bad configuration with file and line
// (exit 1) and passes a good one (exit 0).
func TestCheck(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	good := h.ConfigText(threeServices(h))
	cases := []struct {
		name     string
		services string
		wantLine int    // line of the error in the file, 0: the config is good
		wantMsg  string // part of the error
	}{
		{name: "good", services: threeServices(h)},
		{name: "unknown key", services: "[service.a]\ncomand = \"sleep 1\"\n", wantLine: 10, wantMsg: `unknown key "comand"`},
		{name: "syntax", services: "[service.a]\ncommand = \"sleep 1\n", wantLine: 10, wantMsg: "newline"},
		{name: "bad value", services: "[service.a]\ncommand = \"sleep 1\"\nrestart = \"sometimes\"\n", wantLine: 11, wantMsg: "restart"},
		{name: "missing executable", services: "[service.a]\ncommand = \"/nonexistent/x\"\n", wantLine: 10, wantMsg: "/nonexistent/x"},
	}
	if !strings.Contains(good, "\n\n\n[service.client]") {
		t.Fatalf("the [hbd] table is not 7 lines followed by two blank lines; fix wantLine:\n%s", good)
	}
	for _, tc := range cases {
		h.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(h.Dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			h.WriteFile(path, h.ConfigText(tc.services))
			r := h.run(h.HBD, "--check", "-c", path)
			if tc.wantLine == 0 {
				if r.Code != 0 || !strings.Contains(r.Stdout, "ok") {
					t.Errorf("hbd --check on a good file: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
				}
				return
			}
			loc := fmt.Sprintf("%s:%d:", path, tc.wantLine)
			if r.Code != 1 || !strings.Contains(r.Stderr, loc) || !strings.Contains(r.Stderr, tc.wantMsg) {
				t.Errorf("hbd --check: exit %d, stderr:\n%s\nwant exit 1 and %q with %q", r.Code, r.Stderr, loc, tc.wantMsg)
			}
		})
	}
	h.Run("no such file", func(t *testing.T) {
		r := h.run(h.HBD, "--check", "-c", filepath.Join(h.Dir, "nope.toml"))
		if r.Code != 1 || !strings.Contains(r.Stderr, "nope.toml") {
			t.Errorf("hbd --check on a missing file: exit %d\n%s", r.Code, r.Stderr)
		}
	})
}

// TestReload: a bad file is rejected (exit 1, file:line) and the services
// keep running untouched; a good one removes, adds and changes services.
func TestReload(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	base := fmt.Sprintf(`
[service.keep]
command    = [%q]
start_secs = "100ms"

[service.gone]
command    = "sleep 1001"
start_secs = "100ms"

[service.change]
command    = "sleep 1002"
start_secs = "100ms"
`, h.HBClient)
	h.WriteConfig(base)
	h.Start()
	before := h.WaitRunning("keep", "gone", "change")

	// A broken file: rejected with its location, nothing changes.
	h.WriteConfig(base + "\n[service.broken]\ncommand = [\"sleep\", \n")
	brokenLine := strings.Count(h.ConfigText(base), "\n") + 3
	r := h.Ctl("reload")
	if r.Code != 1 || !strings.Contains(r.Stderr, fmt.Sprintf("%s:%d", h.Config, brokenLine)) {
		t.Errorf("%v\nwant exit 1 and %s:%d", r, h.Config, brokenLine)
	}
	h.WriteConfig(base + "\n[service.bad]\ncommand = \"sleep 1\"\nstart_retries = -1\n")
	r = h.Ctl("reload")
	if r.Code != 1 || !strings.Contains(r.Stderr, h.Config+":") || !strings.Contains(r.Stderr, "start_retries") {
		t.Errorf("%v\nwant exit 1 and a located start_retries error", r)
	}
	for _, st := range h.Status() {
		if b := before[st.Name]; st.PID != b.PID || st.Generation != b.Generation || st.State != "running" {
			t.Errorf("after a rejected reload, %s: %+v, was %+v", st.Name, st, b)
		}
	}

	// A good file: gone removed, fresh added, change changed, keep kept.
	goneSlot := h.SlotIndex("gone")
	h.WriteConfig(fmt.Sprintf(`
[service.keep]
command    = [%q]
start_secs = "100ms"

[service.change]
command    = "sleep 2002"
start_secs = "100ms"

[service.fresh]
command    = "sleep 1003"
start_secs = "100ms"
`, h.HBClient))
	out := h.MustCtl("reload")
	if want := "reloaded: 1 added (fresh); 1 removed (gone); 1 changed (change)\n"; out != want {
		t.Errorf("hbctl reload printed %q, want %q", out, want)
	}
	if r := h.Ctl("status", "gone"); r.Code != 1 {
		t.Errorf("status of a removed service: %v", r)
	}
	if _, err := h.Table().Lookup("gone"); !errors.Is(err, shm.ErrNotFound) {
		t.Errorf("slot of the removed service: %v, want ErrNotFound", err)
	}
	// The freed slot may already be fresh's; it is gone's no more.
	if s := h.Table().Snapshot(goneSlot); s.Name == "gone" {
		t.Errorf("freed slot %d: %+v", goneSlot, s)
	}
	for _, s := range h.Peek(h.Shm).Slots {
		if s.Name == "gone" {
			t.Errorf("hbpeek still lists the removed service: %+v", s)
		}
	}
	h.WaitGone(before["gone"].PID)

	fresh := h.WaitService("fresh", "running", IsRunning)
	if s := h.Slot("fresh"); s.PID != uint32(fresh.PID) {
		t.Errorf("fresh: slot pid %d, status pid %d", s.PID, fresh.PID)
	}
	if !strings.Contains(cmdline(fresh.PID), "sleep 1003") {
		t.Errorf("fresh runs %q", cmdline(fresh.PID))
	}

	ch := h.WaitService("change", "running the new command", func(st api.ServiceStatus) bool {
		return IsRunning(st) && strings.Contains(cmdline(st.PID), "sleep 2002")
	})
	if ch.PID == before["change"].PID || ch.Generation != before["change"].Generation+1 {
		t.Errorf("change: %+v, was %+v; want a new pid and generation+1", ch, before["change"])
	}
	h.WaitGone(before["change"].PID)

	if st := h.ServiceStatus("keep"); st.PID != before["keep"].PID || st.Generation != before["keep"].Generation {
		t.Errorf("keep was touched: %+v, was %+v", st, before["keep"])
	}

	// SIGHUP reloads too.
	h.WriteConfig(fmt.Sprintf(`
[service.keep]
command    = [%q]
start_secs = "100ms"

[service.change]
command    = "sleep 2002"
start_secs = "100ms"

[service.fresh]
command    = "sleep 1003"
start_secs = "100ms"

[service.hup]
command    = "sleep 1004"
start_secs = "100ms"
`, h.HBClient))
	h.hbds[len(h.hbds)-1].Signal(syscall.SIGHUP)
	h.WaitService("hup", "running", IsRunning)
	if st := h.ServiceStatus("keep"); st.PID != before["keep"].PID {
		t.Errorf("keep was touched by SIGHUP: %+v", st)
	}
}

// TestCrashLoopGoesFatal: a service that exits at once backs off, goes fatal
// after start_retries, and hbctl start clears that.
func TestCrashLoopGoesFatal(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.crash]
command       = [%q, "-e", "3"]
start_secs    = "1s"
start_retries = 3
backoff_max   = "200ms"

[service.once]
command    = [%q, "-e", "0"]
restart    = "on-failure"
start_secs = "0s"

[service.steady]
command    = "sleep infinity"
start_secs = "100ms"

[service.instant]
command    = "sleep infinity"
start_secs = "0s"
`, h.HBClient, h.HBClient))
	h.Start()

	// start_secs 0: running from the spawn on, in the slot as in hbd, and
	// again after a respawn by the plugin (which writes it there itself).
	for gen := uint64(1); gen <= 2; gen++ {
		st := h.WaitService("instant", fmt.Sprintf("generation %d running", gen), func(st api.ServiceStatus) bool {
			return IsRunning(st) && st.Generation == gen
		})
		if s := h.Slot("instant"); s.State != shm.StateRunning || int(s.PID) != st.PID || s.Generation != gen {
			t.Errorf("instant slot, generation %d: %+v; want running, pid %d", gen, s, st.PID)
		}
		if gen == 1 {
			if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}

	isFatal := func(st api.ServiceStatus) bool { return st.State == "fatal" }
	st := h.WaitService("crash", "fatal", isFatal)
	if st.PID != 0 || st.Generation != 3 || st.Exits != 3 || st.LastStatus != 3 || st.FailedStarts != 3 ||
		!strings.Contains(st.Reason, "3 times") {
		t.Errorf("crash: %+v; want pid 0, generation 3, exits 3, last status 3, 3 failed starts", st)
	}
	if s := h.SlotInState("crash", shm.StateFatal); s.PID != 0 || s.Exits != 3 || s.LastStatus != 3 {
		t.Errorf("crash slot: %+v; want pid 0, fatal, 3 exits, last status 3", s)
	}
	if out := h.Ctl("status", "crash").Stdout; !strings.Contains(out, "fatal") {
		t.Errorf("hbctl status crash:\n%s", out)
	}

	// start clears fatal: it spawns again (and, crashing, ends fatal again).
	h.MustCtl("start", "crash")
	st = h.WaitService("crash", "fatal again after 3 more", func(st api.ServiceStatus) bool {
		return isFatal(st) && st.Generation == 6
	})
	if st.Exits != 6 || st.FailedStarts != 3 {
		t.Errorf("crash after start: %+v; want 6 exits, 3 failed starts", st)
	}

	// restart = "on-failure": a clean exit stays down, exited.
	once := h.WaitService("once", "exited", func(st api.ServiceStatus) bool { return st.State == "exited" })
	if once.Generation != 1 || once.Exits != 1 || once.LastStatus != 0 || once.PID != 0 {
		t.Errorf("once: %+v; want one run, exit 0", once)
	}
	if s := h.Slot("once"); s.State != shm.StateExited || s.PID != 0 {
		t.Errorf("once slot: %+v", s)
	}
	if st := h.ServiceStatus("steady"); !IsRunning(st) || st.Generation != 1 {
		t.Errorf("steady: %+v", st)
	}
}

// TestSIGTERMLeavesNothing: SIGTERM to hbd stops every service (even those
// that ignore SIGTERM or have children) and the plugin, removes the socket
// and closes the table cleanly.
func TestSIGTERMLeavesNothing(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "100ms"

[service.stubborn]
command      = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
start_secs   = "100ms"
stop_timeout = "300ms"

[service.family]
command    = ["sh", "-c", "sleep 1001 & sleep 1002 & wait"]
start_secs = "100ms"

[service.down]
command   = "sleep infinity"
autostart = false
`, h.HBClient))
	d := h.Start()
	h.WaitRunning("client", "stubborn", "family")
	health := h.Health()
	// The family's children, so that their end is checked by PID too.
	fam := h.ServiceStatus("family")
	h.Eventually("family's children", func() (bool, string) {
		n := 0
		for _, p := range h.Leftovers() {
			if strings.HasPrefix(p.Cmdline, "sleep 100") {
				h.Track(p.PID)
				n++
			}
		}
		return n == 2, fmt.Sprint(h.Leftovers())
	})

	d.Stop()
	if left := h.Leftovers(); len(left) > 0 {
		t.Errorf("left behind after SIGTERM: %v", left)
	}
	if Alive(health.Plugin.PID) || Alive(fam.PID) {
		t.Errorf("plugin %d or service %d alive", health.Plugin.PID, fam.PID)
	}
	if _, err := os.Lstat(h.Socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(h.StateDir, "plugin.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("plugin.json after SIGTERM: %v", err)
	}
	tbl := h.Table()
	if hdr := tbl.Header(); hdr.WriterPID != 0 {
		t.Errorf("writer_pid %d after a clean stop, want 0", hdr.WriterPID)
	}
	for s := range tbl.Used() {
		if s.PID != 0 {
			t.Errorf("slot after SIGTERM: %+v; want pid 0", s)
		}
	}
	if r := h.Ctl("status"); r.Code != 4 {
		t.Errorf("hbctl status with hbd gone: %v; want exit 4 (state unknown)", r)
	}
	// Nothing went wrong, so nothing was logged as an error (go-plugin's
	// wait of the plugin included).
	if l := append(Lines(d.Log(), "level=ERROR"), Lines(d.Log(), "[ERROR]")...); len(l) > 0 {
		t.Errorf("errors logged by a clean stop: %q", l)
	}
}

// TestSIGQUITDetachAndReattach: SIGQUIT leaves the plugin and the services
// running; the next hbd reattaches without restarting anything; SIGTERM then
// cleans up everything.
func TestSIGQUITDetachAndReattach(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	d := h.Start()
	before := h.WaitRunning("client", "sleeper", "shell")
	plugin := pluginPID(h)

	d.Signal(syscall.SIGQUIT)
	if code := d.Wait(); code != 0 {
		t.Fatalf("hbd exited %d after SIGQUIT:\n%s", code, d.Log())
	}
	if !Alive(plugin) {
		t.Fatalf("plugin %d died with hbd's SIGQUIT", plugin)
	}
	for name, st := range before {
		if !Alive(st.PID) {
			t.Errorf("%s (pid %d) died with hbd's SIGQUIT", name, st.PID)
		}
		if s := h.Slot(name); s.PID != uint32(st.PID) || s.Generation != st.Generation {
			t.Errorf("%s: slot %+v while hbd is away, want pid %d generation %d", name, s, st.PID, st.Generation)
		}
	}
	if hdr := h.Table().Header(); hdr.WriterPID != uint32(plugin) {
		t.Errorf("writer_pid %d while hbd is away, want the plugin %d", hdr.WriterPID, plugin)
	}
	if r := h.Ctl("status"); r.Code != 4 {
		t.Errorf("hbctl status with hbd away: %v; want exit 4 (state unknown)", r)
	}

	d2 := h.Start()
	if got := pluginPID(h); got != plugin {
		t.Errorf("plugin pid %d after reattach, want %d", got, plugin)
	}
	for _, st := range h.Status() {
		b := before[st.Name]
		if st.PID != b.PID || st.Generation != b.Generation || st.State != "running" || st.Exits != 0 {
			t.Errorf("after reattach, %s: %+v; was %+v", st.Name, st, b)
		}
	}
	if l := Lines(d2.Log(), "msg=spawned"); len(l) > 0 {
		t.Errorf("the second hbd spawned services: %q", l)
	}
	if !strings.Contains(d2.Log(), "reattached=true") {
		t.Errorf("the second hbd did not reattach:\n%s", d2.Log())
	}

	// The reattached hbd supervises: a kill is respawned.
	i := h.SlotIndex("client")
	h.Kill(before["client"].PID, syscall.SIGKILL)
	pid, _ := h.WatchPID(i, uint32(before["client"].PID))
	h.WaitService("client", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.PID == int(pid) })

	d2.Stop()
	if left := h.Leftovers(); len(left) > 0 {
		t.Errorf("left behind after SIGTERM: %v", left)
	}
	if Alive(plugin) {
		t.Errorf("plugin %d alive after SIGTERM", plugin)
	}
	if hdr := h.Table().Header(); hdr.WriterPID != 0 {
		t.Errorf("writer_pid %d after SIGTERM, want 0", hdr.WriterPID)
	}
}

// TestReattachAfterDeathWhileAway: while hbd is detached, the plugin
// respawns what the policy respawns at once; a service whose respawn needs
// hbd (restart_delay) stays down until the next hbd reattaches, reports the
// exit and respawns it. The others are left alone.
func TestReattachAfterDeathWhileAway(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h) + `
[service.delayed]
command       = "sleep infinity"
start_secs    = "200ms"
restart_delay = "300ms"
backoff_max   = "300ms"
`)
	d := h.Start()
	before := h.WaitRunning("client", "sleeper", "shell", "delayed")
	d.Signal(syscall.SIGQUIT)
	if code := d.Wait(); code != 0 {
		t.Fatalf("hbd exited %d after SIGQUIT", code)
	}

	h.Kill(before["sleeper"].PID, syscall.SIGKILL)
	h.Kill(before["delayed"].PID, syscall.SIGKILL)
	sl := h.WaitSlot("sleeper", "respawned by the plugin alone", func(s shm.Slot) bool {
		return s.PID != 0 && s.Generation == 2 && s.Exits == 1
	})
	h.WaitSlot("delayed", "pid 0 and the exit recorded", func(s shm.Slot) bool { return s.PID == 0 && s.Exits == 1 })
	h.WaitGone(before["delayed"].PID)

	d2 := h.Start()
	st := h.WaitService("delayed", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.Generation == 2 })
	if st.Exits != 1 || st.LastStatus != 137 || st.PID == before["delayed"].PID {
		t.Errorf("delayed after reattach: %+v; want a new pid, 1 exit, last status 137", st)
	}
	if st := h.ServiceStatus("sleeper"); st.PID != int(sl.PID) || st.Generation != 2 || st.Exits != 1 || !IsRunning(st) {
		t.Errorf("sleeper after reattach: %+v; want pid %d generation 2 (the plugin's respawn)", st, sl.PID)
	}
	for _, name := range []string{"client", "shell"} {
		if st := h.ServiceStatus(name); st.PID != before[name].PID || st.Generation != 1 {
			t.Errorf("%s: %+v, was %+v", name, st, before[name])
		}
	}
	d2.WaitLog("exited while hbd was away")
}

// TestWaitDownUp: hbctl wait --down and --up follow a service across a kill.
func TestWaitDownUp(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{LogLevel: "debug"})
	h.WriteConfig(fmt.Sprintf(`
[service.v]
command       = [%q]
start_secs    = "100ms"
restart_delay = "1s"
backoff_max   = "1s"
`, h.HBClient))
	d := h.Start()
	st := h.WaitService("v", "running", IsRunning)

	// Not down yet: the timeout says so.
	r := h.Ctl("wait", "v", "--down", "--timeout", "200ms")
	if r.Code != 4 || !strings.Contains(r.Stderr, "timed out") {
		t.Errorf("%v; want exit 4 (timeout)", r)
	}
	// Up already: returns at once.
	if r := h.Ctl("wait", "v", "--up"); r.Code != 0 || !strings.Contains(r.Stdout, fmt.Sprintf("v: up (running, pid %d)", st.PID)) {
		t.Errorf("%v", r)
	}

	ctlPID, wait := h.StartCtl("wait", "v", "--down", "--timeout", "10s")
	waitSubscribed(h, d, ctlPID, "v")
	h.Kill(st.PID, syscall.SIGKILL)
	r = wait()
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "v: down (") {
		t.Errorf("wait --down across a kill: %v", r)
	}

	r = h.Ctl("wait", "v", "--up", "--timeout", "10s")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "v: up (running, pid ") {
		t.Errorf("wait --up after a kill: %v", r)
	}
	if st2 := h.ServiceStatus("v"); !IsRunning(st2) || st2.PID == st.PID || st2.Generation != 2 ||
		!strings.Contains(r.Stdout, strconv.Itoa(st2.PID)) {
		t.Errorf("after wait --up: %+v, printed %q", st2, r.Stdout)
	}
}

// TestWaitDownAcrossImmediateRespawn: a service respawned at once was down
// for a moment; wait --down must see that moment, not wait for the next one.
func TestWaitDownAcrossImmediateRespawn(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{LogLevel: "debug"})
	h.WriteConfig(fmt.Sprintf("[service.v]\ncommand = [%q]\nstart_secs = \"100ms\"\n", h.HBClient))
	d := h.Start()
	st := h.WaitService("v", "running", IsRunning)
	ctlPID, wait := h.StartCtl("wait", "v", "--down", "--timeout", "3s")
	waitSubscribed(h, d, ctlPID, "v")
	h.Kill(st.PID, syscall.SIGKILL)
	if r := wait(); r.Code != 0 {
		t.Errorf("wait --down across a kill with immediate respawn: %v", r)
	}
}

// waitSubscribed waits until the hbctl wait with this pid has subscribed to
// events and read the service once (hbd logs the read at debug level).
func waitSubscribed(h *Harness, d *Hbd, ctlPID int, name string) {
	h.T.Helper()
	d.WaitLog(fmt.Sprintf("path=/v1/services/%s peer_uid=%d peer_pid=%d", name, os.Geteuid(), ctlPID))
}

// pluginPID asks hbd for its plugin's PID.
func pluginPID(h *Harness) int {
	h.T.Helper()
	return h.Health().Plugin.PID
}

// TestDetectors: with detector "pidfd", "connector" (where
// connector.Available says the proc connector works here; it is skipped
// otherwise) and "auto", a kill is seen and respawned, and health and the
// table's flags name the detectors.
func TestDetectors(t *testing.T) {
	t.Parallel()
	for _, det := range []string{"pidfd", "connector", "auto"} {
		t.Run(det, func(t *testing.T) {
			t.Parallel()
			connErr := connector.Available()
			if det == "connector" && connErr != nil {
				t.Skipf("detector connector: %v", connErr)
			}
			h := NewHarness(t, Options{Detector: det})
			h.WriteConfig(fmt.Sprintf("[service.v]\ncommand = [%q]\nstart_secs = \"100ms\"\n", h.HBClient))
			h.Start()
			health := h.Health()
			wantConn := det == "connector" || det == "auto" && connErr == nil
			if health.Plugin.Connector != wantConn || !health.Plugin.Pidfd {
				t.Errorf("detector %s: health plugin %+v; want connector %v, pidfd true", det, health.Plugin, wantConn)
			}
			flags := h.Table().Header().Flags
			if (flags&shm.FlagConnector != 0) != wantConn || flags&shm.FlagPidfd == 0 {
				t.Errorf("detector %s: table flags %#x", det, flags)
			}
			st := h.WaitService("v", "running", IsRunning)
			i := h.SlotIndex("v")
			h.Kill(st.PID, syscall.SIGKILL)
			pid, _ := h.WatchPID(i, uint32(st.PID))
			h.WaitService("v", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.PID == int(pid) })
		})
	}
}

// TestServiceUser: a service with user set runs as that user.
func TestServiceUser(t *testing.T) {
	t.Parallel()
	RequireRoot(t, "setting a service's user")
	h := NewHarness(t, Options{})
	h.WriteConfig("[service.v]\ncommand = \"sleep infinity\"\nuser = \"nobody\"\nstart_secs = \"100ms\"\n")
	h.Start()
	st := h.WaitService("v", "running", IsRunning)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID))
	if err != nil {
		t.Fatal(err)
	}
	uid := Lines(string(b), "Uid:")
	if len(uid) != 1 || strings.Fields(uid[0])[1] != "65534" {
		t.Errorf("service runs as %q, want uid 65534 (nobody)", uid)
	}
}

// TestSecondSIGTERMForces: a second SIGTERM during the stop kills what is
// left at once instead of waiting out stop_timeout.
func TestSecondSIGTERMForces(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "100ms"

[service.stubborn]
command      = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
start_secs   = "100ms"
stop_timeout = "1m"
`, h.HBClient))
	d := h.Start()
	h.WaitRunning("client", "stubborn")
	plugin := pluginPID(h)

	// Stopped in reverse order: stubborn first, and it ignores SIGTERM.
	d.Signal(syscall.SIGTERM)
	h.WaitService("stubborn", "stopping", func(st api.ServiceStatus) bool { return st.State == "stopping" })
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(); code != 0 {
		t.Errorf("hbd exited %d after two SIGTERMs", code)
	}
	if left := h.Leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if Alive(plugin) {
		t.Errorf("plugin %d alive", plugin)
	}
	if !strings.Contains(d.Log(), "second signal") {
		t.Errorf("hbd did not log the forced stop:\n%s", d.Log())
	}
}

// TestSecondHbdRefused: a second hbd on the same socket, or on the same
// shm table, exits 1 without touching the first one's services.
func TestSecondHbdRefused(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	h.Start()
	before := h.WaitRunning("client", "sleeper", "shell")

	h.Run("same socket", func(t *testing.T) {
		d2 := h.StartProcess()
		if code := d2.Wait(); code != 1 || !strings.Contains(d2.Log(), "socket in use") {
			t.Errorf("second hbd on the same socket: exit %d\n%s", code, d2.Log())
		}
	})
	h.Run("same table", func(t *testing.T) {
		h2 := NewHarness(t, Options{})
		h2.WriteFile(h2.Config, strings.Replace(h2.ConfigText(threeServices(h2)),
			fmt.Sprintf("shm       = %q", h2.Shm), fmt.Sprintf("shm       = %q", h.Shm), 1))
		d2 := h2.StartProcess()
		if code := d2.Wait(); code != 1 {
			t.Errorf("second hbd on the same table: exit %d\n%s", code, d2.Log())
		}
		if _, err := os.Lstat(h2.Socket); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the refused hbd left its socket: %v", err)
		}
		if !strings.Contains(d2.Log(), "locked by another writer") {
			t.Errorf("hbd does not say why its plugin could not start:\n%s", d2.Log())
		}
	})
	for _, st := range h.Status() {
		if b := before[st.Name]; st.PID != b.PID || st.Generation != b.Generation || !IsRunning(st) {
			t.Errorf("%s was touched by the second hbd: %+v, was %+v", st.Name, st, b)
		}
	}
	if hdr := h.Table().Header(); hdr.WriterPID != uint32(pluginPID(h)) {
		t.Errorf("writer_pid %d, want the first plugin", hdr.WriterPID)
	}
}

// TestReattachWithChangedConfig: the hbd that reattaches after a SIGQUIT
// applies the configuration it reads: a service no longer configured is
// stopped and its slot freed, a new one is started, the rest keep running.
func TestReattachWithChangedConfig(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	d := h.Start()
	before := h.WaitRunning("client", "sleeper", "shell")
	d.Signal(syscall.SIGQUIT)
	d.Wait()

	h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "200ms"

[service.sleeper]
command    = "sleep infinity"
start_secs = "200ms"

[service.extra]
command    = "sleep 1005"
start_secs = "200ms"
`, h.HBClient))
	h.Start()
	h.WaitService("extra", "running", IsRunning)
	h.WaitGone(before["shell"].PID)
	h.WaitSlot("extra", "a slot", func(s shm.Slot) bool { return s.PID != 0 })
	h.Eventually("shell's slot to be freed", func() (bool, string) {
		_, err := h.Table().Lookup("shell")
		return errors.Is(err, shm.ErrNotFound), fmt.Sprint(err)
	})
	for _, name := range []string{"client", "sleeper"} {
		if st := h.ServiceStatus(name); st.PID != before[name].PID || st.Generation != 1 {
			t.Errorf("%s: %+v, was %+v", name, st, before[name])
		}
	}
	if r := h.Ctl("status", "shell"); r.Code != 1 {
		t.Errorf("status of the removed service: %v", r)
	}
}

// TestPluginDeathAdopts: when the plugin is killed, hbd starts a new one,
// which adopts the running services from the table (same PIDs) and keeps
// supervising them.
func TestPluginDeathAdopts(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	h.Start()
	before := h.WaitRunning("client", "sleeper", "shell")
	old := pluginPID(h)
	h.Kill(old, syscall.SIGKILL)
	var plugin int
	h.Eventually("a new plugin", func() (bool, string) {
		hl, err := h.Client().Health(t.Context())
		if err != nil || hl.Plugin == nil || hl.Plugin.PID == old {
			return false, fmt.Sprint(hl, err)
		}
		plugin = hl.Plugin.PID
		return true, ""
	})
	h.Track(plugin)
	if hdr := h.Table().Header(); hdr.WriterPID != uint32(plugin) {
		t.Errorf("writer_pid %d, want the new plugin %d", hdr.WriterPID, plugin)
	}
	// hbd shows the new plugin as soon as it is launched, and each
	// service as adopted once it has handled the plugin's adopt event.
	h.Eventually("every service adopted by the new plugin", func() (bool, string) {
		for _, st := range h.Status() {
			if !st.Adopted {
				return false, fmt.Sprintf("%s: %+v", st.Name, st)
			}
		}
		return true, ""
	})
	for _, st := range h.Status() {
		b := before[st.Name]
		if st.PID != b.PID || st.Generation != b.Generation || !st.Adopted || !IsRunning(st) {
			t.Errorf("%s after the plugin's death: %+v; want the same pid and generation, adopted", st.Name, st)
		}
	}
	// An adopted service is still watched: its exit is seen and respawned.
	i := h.SlotIndex("sleeper")
	h.Kill(before["sleeper"].PID, syscall.SIGKILL)
	pid, _ := h.WatchPID(i, uint32(before["sleeper"].PID))
	st := h.WaitService("sleeper", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.PID == int(pid) })
	if st.Generation != 2 || st.Adopted {
		t.Errorf("sleeper after its respawn: %+v; want generation 2, not adopted", st)
	}
}

// TestPluginDeathLeavesNoZombie: hbd reaps every plugin that dies, and
// go-plugin's wait of it does not fail. (It did while the pidfd Launch
// watches shared its open file description, O_NONBLOCK, with the one
// os/exec waits on: waitid(P_PIDFD) failed with EAGAIN, the plugin stayed a
// zombie and go-plugin logged "waitid: resource temporarily unavailable".)
func TestPluginDeathLeavesNoZombie(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(threeServices(h))
	d := h.Start()
	h.WaitRunning("client", "sleeper", "shell")
	for round := 0; round < 4; round++ {
		old := pluginPID(h)
		h.Kill(old, syscall.SIGKILL)
		h.Eventually("a new plugin", func() (bool, string) {
			hl, err := h.Client().Health(t.Context())
			return err == nil && hl.Plugin != nil && hl.Plugin.PID != old, fmt.Sprint(hl, err)
		})
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(d.PID) {
			t.Errorf("hbd left its child %s unreaped (zombie)", e.Name())
		}
	}
	if l := Lines(d.Log(), "resource temporarily unavailable"); len(l) > 0 {
		t.Errorf("hbd logged %q", l)
	}
}

// TestInheritOutput: stdout/stderr "inherit" go to hbd's own stdout and
// stderr (the journal under systemd), not the plugin's log, and a service
// writing there never blocks, with or without hbd attached.
func TestInheritOutput(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	trigger, done := filepath.Join(h.Dir, "go"), filepath.Join(h.Dir, "wrote-all")
	h.WriteConfig(fmt.Sprintf(`
[service.hello]
command = ["sh", "-c", "echo hello-inherit-out; echo hello-inherit-err >&2; exec sleep 1000"]
stdout  = "inherit"
stderr  = "inherit"

[service.chatty]
command = ["sh", "-c", "while [ ! -e %s ]; do sleep 0.05; done; head -c 300000 /dev/zero | tr '\\0' x; touch %s; exec sleep 1000"]
stdout  = "inherit"
`, trigger, done))
	d := h.Start()
	h.WaitService("chatty", "started", func(st api.ServiceStatus) bool { return st.PID != 0 })
	h.Run("hbd's output", func(t *testing.T) {
		h.Eventually("hello's output in hbd's stdout and stderr", func() (bool, string) {
			l := d.Log()
			return strings.Contains(l, "hello-inherit-out\n") && strings.Contains(l, "hello-inherit-err\n"), tail(l, 5)
		})
		if l := h.PluginLog(); strings.Contains(l, "hello-inherit") {
			t.Errorf("inherited output in the plugin's log:\n%s", tail(l, 5))
		}
	})
	h.Run("no block while detached", func(t *testing.T) {
		d.Signal(syscall.SIGQUIT)
		d.Wait()
		h.WriteFile(trigger, "")
		h.Eventually("chatty to write all its output", func() (bool, string) {
			_, err := os.Stat(done)
			return err == nil, fmt.Sprint(err)
		})
	})
}
