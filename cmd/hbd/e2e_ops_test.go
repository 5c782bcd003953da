package main

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
)

// TestOperatorStatus: what an operator reads tells the trouble. status
// exits 3 while a service is not in its wanted state (and --quiet prints
// nothing), health names the fatal service, start --all answers one line
// per service (JSON with --json) in words, not HTTP's; after a restart of
// hbd the reasons and the uptime are the services' own, and a stop keeps
// the reason it was fatal.
func TestOperatorStatus(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.steady]
command    = "sleep infinity"
start_secs = "100ms"

[service.missing]
command = ["/nonexistent/hb-program"]

[service.crash]
command       = ["/bin/sh", "-c", "exit 3"]
start_retries = 2
`)
	d := h.Start()
	steady := h.WaitRunning("steady")["steady"]
	isFatal := func(st api.ServiceStatus) bool { return st.State == "fatal" }
	missing := h.WaitService("missing", "fatal", isFatal)
	crash := h.WaitService("crash", "fatal", isFatal)
	if missing.OK || missing.Wanted != api.WantedUp || missing.ReasonAt.IsZero() {
		t.Errorf("missing: %+v; want wanted up, not ok, a reason with its time", missing)
	}

	if r := h.Ctl("status"); r.Code != 3 || !strings.Contains(r.Stdout, "no such file or directory (") {
		t.Errorf("status with a fatal service: %v; want exit 3, the reason with its time", r)
	}
	if r := h.Ctl("status", "steady"); r.Code != 0 {
		t.Errorf("status steady: %v; want 0", r)
	}
	if r := h.Ctl("status", "--quiet"); r.Code != 3 || r.Stdout != "" || r.Stderr != "" {
		t.Errorf("status --quiet: %v; want exit 3 and no output", r)
	}
	if r := h.Ctl("health"); r.Code != 1 || !strings.Contains(r.Stdout, "NOT OK") || !strings.Contains(r.Stdout, "missing") {
		t.Errorf("health with a fatal service: %v; want exit 1 naming it", r)
	}

	r := h.Ctl("start", "steady", "missing")
	if r.Code != 1 || !strings.Contains(r.Stdout, "steady: running") ||
		!strings.Contains(r.Stderr, "hbctl: start: missing: missing did not start: spawn failed") {
		t.Errorf("start steady missing: %v; want exit 1, one line per service", r)
	}
	for _, w := range []string{"conflict", "not possible now", "and 1 more", " 409"} {
		if strings.Contains(r.Stdout+r.Stderr, w) {
			t.Errorf("start --all says %q: %v", w, r)
		}
	}
	r = h.Ctl("start", "steady", "missing", "--json")
	var sts []api.ServiceStatus
	if err := json.Unmarshal([]byte(r.Stdout), &sts); err != nil || r.Code != 1 || len(sts) != 2 ||
		sts[0].Name != "steady" || sts[0].Error != "" || sts[1].Name != "missing" || sts[1].Error == "" {
		t.Errorf("start --json: %v (%v); want both services, missing with its error", r, err)
	}
	h.WaitService("missing", "fatal", isFatal)

	// hbd restarts: the services' uptime and reasons are their own.
	time.Sleep(1100 * time.Millisecond) // so that an uptime from hbd's start would differ
	d.Signal(syscall.SIGQUIT)
	if code := d.Wait(); code != 0 {
		t.Fatalf("hbd exited %d after SIGQUIT:\n%s", code, d.Log())
	}
	h.Start()
	after := h.ServiceStatus("steady")
	if after.PID != steady.PID || after.StartedAt.Sub(steady.StartedAt).Abs() > time.Second {
		t.Errorf("steady after an hbd restart: pid %d started %v; want pid %d started %v", after.PID, after.StartedAt, steady.PID, steady.StartedAt)
	}
	if up, err := time.ParseDuration(after.Uptime); err != nil || up < time.Second {
		t.Errorf("steady's uptime %q after an hbd restart: hbd's age, not its own", after.Uptime)
	}
	if st := h.ServiceStatus("crash"); st.State != "fatal" || st.Reason != crash.Reason || !st.ReasonAt.Equal(crash.ReasonAt) {
		t.Errorf("crash after an hbd restart: %s %q at %v; want fatal %q at %v", st.State, st.Reason, st.ReasonAt, crash.Reason, crash.ReasonAt)
	}

	r = h.Ctl("stop", "--all")
	if r.Code != 0 || len(Lines(r.Stdout, ": stopped")) != 3 {
		t.Errorf("stop --all: %v; want one stopped line per service", r)
	}
	if st := h.ServiceStatus("crash"); !strings.Contains(st.Reason, "was fatal") || !strings.Contains(st.Reason, crash.Reason) || !st.OK {
		t.Errorf("crash after stop --all: %q ok %v; want the fatal reason kept, ok (wanted down)", st.Reason, st.OK)
	}
	if r := h.Ctl("status"); r.Code != 0 {
		t.Errorf("status with everything stopped on request: %v; want 0", r)
	}
}
