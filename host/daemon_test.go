package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/plugintest"
	"github.com/hbshim/hb/shm"
)

// bound is the longest a test waits for a state; reaching it is a failure,
// not a measurement.
const bound = 10 * time.Second

// testSlots is the fake table's capacity.
const testSlots = 8

// harness is a Daemon driven through a plugintest.Shim: no root, no
// process, no /dev/shm.
type harness struct {
	t     *testing.T
	d     *Daemon
	f     *plugintest.Shim
	dir   string
	dials atomic.Int32
	log   *lockedBuffer
	// beforeDial, if set before connect, runs at the start of each dial.
	beforeDial func()
}

// lockedBuffer collects the daemon's log, shown when a test fails.
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

// svcTOML is one [service.NAME] table of a test configuration.
func svcTOML(name string, keys ...string) string {
	return fmt.Sprintf("[service.%s]\ncommand = [\"/bin/sh\", \"-c\", \"exit 0\"]\n%s\n", name, strings.Join(keys, "\n"))
}

// newHarness writes a configuration of services (see svcTOML), lets seed
// prepare the table as a previous hbd left it, and connects a Daemon to it.
func newHarness(t *testing.T, seed func(f *plugintest.Shim), services ...string) *harness {
	t.Helper()
	h := &harness{t: t, f: plugintest.New(testSlots), dir: t.TempDir(), log: &lockedBuffer{}}
	cfg := h.writeConfig(services...)
	if seed != nil {
		seed(h.f)
	}
	h.d = newDaemon(cfg, slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})), "/nonexistent/hbd")
	h.d.dial = func(config.HBD) (pluginConn, bool, error) {
		h.dials.Add(1)
		if h.beforeDial != nil {
			h.beforeDial()
		}
		return h.f.Conn(), false, nil
	}
	t.Cleanup(func() {
		h.d.detach()
		h.f.Die()
		if t.Failed() {
			t.Logf("hbd log:\n%s\nplugin calls: %q", h.log.String(), h.f.Calls())
		}
	})
	return h
}

// connect is Run's first step.
func (h *harness) connect() {
	h.t.Helper()
	h.d.mu.Lock()
	err := h.d.connect()
	h.d.mu.Unlock()
	if err != nil {
		h.t.Fatalf("connect: %v", err)
	}
}

// writeConfig writes hb.toml and loads it.
func (h *harness) writeConfig(services ...string) *config.Config {
	h.t.Helper()
	text := fmt.Sprintf("[hbd]\nstate_dir = %q\nsocket = %q\nslots = %d\n\n%s", h.dir, filepath.Join(h.dir, "hbd.sock"), testSlots,
		strings.Join(services, "\n"))
	path := filepath.Join(h.dir, "hb.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		h.t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		h.t.Fatalf("config:\n%s\n%v", text, err)
	}
	return cfg
}

// get returns the named service's status.
func (h *harness) get(name string) api.ServiceStatus {
	h.t.Helper()
	st, err := h.d.Get(name)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// wait polls the named service until ok accepts its status.
func (h *harness) wait(name, what string, ok func(api.ServiceStatus) bool) api.ServiceStatus {
	h.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		st := h.get(name)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: %s not reached within %v; status %+v", name, what, bound, st)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitState waits for the named service's state.
func (h *harness) waitState(name, state string) api.ServiceStatus {
	h.t.Helper()
	return h.wait(name, "state "+state, func(st api.ServiceStatus) bool { return st.State == state })
}

// waitCall waits until the fake has seen call.
func (h *harness) waitCall(call string) {
	h.t.Helper()
	deadline := time.Now().Add(bound)
	for !slices.Contains(h.f.Calls(), call) {
		if time.Now().After(deadline) {
			h.t.Fatalf("plugin call %q not made within %v", call, bound)
		}
		time.Sleep(time.Millisecond)
	}
}

// exit makes the named service's current incarnation exit.
func (h *harness) exit(name string, status int) {
	h.t.Helper()
	if _, err := h.f.Exit(name, status, "pidfd"); err != nil {
		h.t.Fatal(err)
	}
}

// calls returns the fake's calls that start with one of prefixes.
func (h *harness) calls(prefixes ...string) []string {
	var out []string
	for _, c := range h.f.Calls() {
		for _, p := range prefixes {
			if strings.HasPrefix(c, p) {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// A restarted hbd takes each service's state from the table: a live slot is
// adopted, never started twice; a slot that died while nobody was deciding
// goes through the policy; one down on purpose stays down; a service without
// a slot starts if autostart; a slot no service is configured for is
// stopped and freed.
func TestReconcileAfterRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		keys      []string
		seed      func(f *plugintest.Shim) // nil: no slot
		state     string
		pid       int // -1: any non-zero
		adopted   bool
		spawned   bool
		extraWant []string // further plugin calls that must be made
	}{
		{name: "live slot adopted", seed: func(f *plugintest.Shim) { f.Seed("svc", 1234, shm.StateRunning, -1) },
			state: "running", pid: 1234, adopted: true},
		{name: "live slot hbd was stopping", seed: func(f *plugintest.Shim) { f.Seed("svc", 1234, shm.StateStopping, -1) },
			state: "running", pid: 1234, adopted: true},
		{name: "live slot still starting", keys: []string{`start_secs = "1h"`},
			seed: func(f *plugintest.Shim) { f.Seed("svc", 1234, shm.StateStarting, -1) }, state: "starting", pid: 1234, adopted: true},
		{name: "stopped stays stopped", seed: func(f *plugintest.Shim) { f.Seed("svc", 0, shm.StateStopped, 0) },
			state: "stopped"},
		{name: "fatal stays fatal", seed: func(f *plugintest.Shim) { f.Seed("svc", 0, shm.StateFatal, 1) },
			state: "fatal"},
		{name: "died while away, always", keys: []string{`start_secs = "0s"`},
			seed: func(f *plugintest.Shim) { f.Seed("svc", 0, shm.StateRunning, 1) }, state: "running", pid: -1, spawned: true},
		{name: "died while away, never", keys: []string{`restart = "never"`},
			seed: func(f *plugintest.Shim) { f.Seed("svc", 0, shm.StateRunning, 1) }, state: "exited"},
		{name: "died while away, on-failure, clean exit", keys: []string{`restart = "on-failure"`},
			seed: func(f *plugintest.Shim) { f.Seed("svc", 0, shm.StateExited, 0) }, state: "exited"},
		{name: "no slot, autostart", keys: []string{`start_secs = "0s"`}, state: "running", pid: -1, spawned: true},
		{name: "no slot, no autostart", keys: []string{"autostart = false"}, state: "stopped"},
		{name: "slot of a removed service, down", seed: func(f *plugintest.Shim) { f.Seed("gone", 0, shm.StateExited, 1) },
			keys: []string{"autostart = false"}, state: "stopped", extraWant: []string{"free gone"}},
		{name: "slot of a removed service, live", seed: func(f *plugintest.Shim) { f.Seed("gone", 4321, shm.StateRunning, -1) },
			keys: []string{"autostart = false"}, state: "stopped", extraWant: []string{"stop gone", "free gone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seed := tt.seed
			h := newHarness(t, seed, svcTOML("svc", tt.keys...))
			h.connect()
			st := h.waitState("svc", tt.state)
			switch {
			case tt.pid == -1 && st.PID == 0:
				t.Errorf("pid 0, want a live incarnation: %+v", st)
			case tt.pid >= 0 && st.PID != tt.pid:
				t.Errorf("pid %d, want %d: %+v", st.PID, tt.pid, st)
			}
			if st.Adopted != tt.adopted {
				t.Errorf("adopted %v, want %v", st.Adopted, tt.adopted)
			}
			if spawns := h.calls("spawn "); (len(spawns) > 0) != tt.spawned || len(spawns) > 1 {
				t.Errorf("spawn calls %q, want spawned=%v (at most one)", spawns, tt.spawned)
			}
			for _, c := range tt.extraWant {
				h.waitCall(c)
			}
			if tt.extraWant != nil {
				got := h.calls("stop gone", "free gone")
				if !slices.Equal(got, tt.extraWant) {
					t.Errorf("orphan calls %q, want %q", got, tt.extraWant)
				}
			}
		})
	}
}

// Each exit is judged by the restart policy: respawned (by the plugin at
// once, or by hbd after restart_delay), or kept down.
func TestExitDecisions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		keys      []string
		status    int
		state     string
		respawned bool // a second incarnation runs
		reason    string
	}{
		{name: "always, exit 0", keys: []string{`restart = "always"`}, status: 0, state: "running", respawned: true},
		{name: "always, killed", keys: []string{`restart = "always"`}, status: 137, state: "running", respawned: true},
		{name: "on-failure, exit 0", keys: []string{`restart = "on-failure"`}, status: 0, state: "exited",
			reason: "an expected exit code"},
		{name: "on-failure, exit 3", keys: []string{`restart = "on-failure"`}, status: 3, state: "running", respawned: true},
		{name: "on-failure, exit 3 listed", keys: []string{`restart = "on-failure"`, "exit_codes = [0, 3]"}, status: 3,
			state: "exited"},
		{name: "never, exit 1", keys: []string{`restart = "never"`}, status: 1, state: "exited", reason: `restart is "never"`},
		{name: "always, restart_delay", keys: []string{`restart_delay = "1h"`, `backoff_max = "1h"`}, status: 1, state: "backoff",
			reason: "restarting in 1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, svcTOML("svc", append([]string{`start_secs = "0s"`}, tt.keys...)...))
			h.connect()
			first := h.waitState("svc", "running")
			h.exit("svc", tt.status)
			st := h.wait("svc", "exit handled", func(st api.ServiceStatus) bool {
				return st.Exits == 1 && st.State == tt.state && (st.PID != 0) == tt.respawned
			})
			if tt.respawned && st.Generation != first.Generation+1 {
				t.Errorf("generation %d, want %d", st.Generation, first.Generation+1)
			}
			if st.LastStatus != tt.status {
				t.Errorf("last status %d, want %d", st.LastStatus, tt.status)
			}
			if tt.state == "backoff" && st.NextStart.IsZero() {
				t.Errorf("backoff without a next start: %+v", st)
			}
			if !strings.Contains(st.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", st.Reason, tt.reason)
			}
		})
	}
}

// Runs shorter than start_secs are failed starts: each backs off twice as
// long as the one before, and start_retries of them in a row give up.
func TestFailedStarts(t *testing.T) {
	t.Parallel()
	t.Run("backoff doubles", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("svc", `start_secs = "1h"`, "start_retries = 0", `backoff_max = "1h"`))
		h.connect()
		for i, want := range []string{"retrying in 100ms", "retrying in 200ms", "retrying in 400ms"} {
			h.wait("svc", "incarnation running", func(st api.ServiceStatus) bool { return st.Generation == uint64(i+1) && st.PID != 0 })
			h.exit("svc", 1)
			st := h.wait("svc", "backoff", func(st api.ServiceStatus) bool { return st.Exits == uint64(i+1) && st.State != "starting" })
			if st.State != "backoff" || st.FailedStarts != i+1 || !strings.Contains(st.Reason, want) {
				t.Fatalf("after failed start %d: %+v; want backoff, %d failed starts, %q", i+1, st, i+1, want)
			}
		}
	})
	t.Run("fatal after start_retries", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("svc", `start_secs = "1h"`, "start_retries = 3", `backoff_max = "1ms"`))
		h.connect()
		for i := range 3 {
			h.wait("svc", "incarnation running", func(st api.ServiceStatus) bool { return st.Generation == uint64(i+1) && st.PID != 0 })
			h.exit("svc", 1)
		}
		st := h.waitState("svc", "fatal")
		if st.FailedStarts != 3 || st.PID != 0 || !strings.Contains(st.Reason, "exited too quickly 3 times") {
			t.Errorf("fatal status %+v, want 3 failed starts, no pid, reason about 3 quick exits", st)
		}
		if spawns := h.calls("spawn "); len(spawns) != 3 {
			t.Errorf("spawns %q, want 3", spawns)
		}
		// A start by request clears the count and tries again.
		if err := h.d.Start([]string{"svc"}); err != nil {
			t.Fatal(err)
		}
		if st := h.get("svc"); st.State != "starting" || st.FailedStarts != 0 {
			t.Errorf("after Start: %+v, want starting with 0 failed starts", st)
		}
	})
	t.Run("spawn error", func(t *testing.T) {
		t.Parallel()
		// Two services, one free slot (the others hold slots of services
		// no longer configured, freed only after the start): the second
		// cannot get one, which no retry can fix.
		h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`), svcTOML("b", `start_secs = "0s"`))
		for i := range testSlots - 1 {
			h.f.Seed(fmt.Sprintf("other%d", i), 0, shm.StateStopped, 0)
		}
		h.connect()
		h.waitState("a", "running")
		st := h.waitState("b", "fatal")
		if !strings.Contains(st.Reason, "slot table is full") {
			t.Errorf("reason %q, want the table full", st.Reason)
		}
	})
}

// A subscription the plugin dropped is resumed from the last event handled;
// when events were lost in between, the table is the truth.
func TestEventGaps(t *testing.T) {
	t.Parallel()
	t.Run("dropped subscription, nothing lost", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`))
		h.connect()
		h.waitState("a", "running")
		h.f.RefuseEvents(true)
		h.f.DropEvents()
		h.exit("a", 1) // respawned by the plugin while hbd is not listening
		h.f.RefuseEvents(false)
		st := h.wait("a", "respawn seen", func(st api.ServiceStatus) bool { return st.Generation == 2 })
		if st.Exits != 1 || st.State != "running" || st.PID == 0 {
			t.Errorf("after resubscribing: %+v, want running generation 2 with one exit", st)
		}
	})
	t.Run("events lost, reconciled", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("a", `restart = "never"`), svcTOML("b", `restart = "never"`))
		h.connect()
		h.waitState("a", "running")
		h.waitState("b", "running")
		h.f.RefuseEvents(true)
		h.f.DropEvents()
		h.waitCall("events") // the first resubscription was refused: hbd is not listening
		h.exit("a", 3)
		h.f.Forget() // a's exit is gone from the plugin's buffer
		h.exit("b", 4)
		h.f.RefuseEvents(false)
		st := h.waitState("a", "exited")
		if st.PID != 0 || st.LastStatus != 3 || st.Exits != 1 {
			t.Errorf("a after the gap: %+v, want exited, status 3, one exit", st)
		}
		if st := h.waitState("b", "exited"); st.LastStatus != 4 {
			t.Errorf("b: %+v, want exited with status 4", st)
		}
		if !strings.Contains(h.log.String(), "missed plugin events") {
			t.Errorf("no gap logged")
		}
	})
	t.Run("plugin died", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`), svcTOML("b", `start_secs = "0s"`, `restart = "never"`))
		h.connect()
		a := h.waitState("a", "running")
		b := h.waitState("b", "running")
		h.f.Die()
		st := h.wait("a", "adopted by the new plugin", func(st api.ServiceStatus) bool { return st.Adopted })
		if st.PID != a.PID || st.Generation != a.Generation || st.State != "running" {
			t.Errorf("a after the plugin's death: %+v, want the same incarnation (pid %d) running", st, a.PID)
		}
		if n := h.dials.Load(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
		// The new plugin's events are acted on.
		h.exit("b", 1)
		if st := h.waitState("b", "exited"); st.PID != 0 || st.Generation != b.Generation {
			t.Errorf("b: %+v", st)
		}
	})
	t.Run("plugin died, and the next connections failed", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`))
		h.connect()
		a := h.waitState("a", "running")
		// Every connection fails after it counted (at Events) until three
		// were tried: hbd keeps trying, however many failed.
		h.f.RefuseEvents(true)
		h.f.Die()
		deadline := time.Now().Add(bound)
		for h.dials.Load() < 4 {
			if time.Now().After(deadline) {
				t.Fatalf("%d connections within %v, want hbd to keep trying", h.dials.Load(), bound)
			}
			time.Sleep(time.Millisecond)
		}
		h.f.RefuseEvents(false)
		st := h.wait("a", "adopted by a plugin at last", func(st api.ServiceStatus) bool { return st.Adopted })
		if st.PID != a.PID {
			t.Errorf("a: %+v, want pid %d", st, a.PID)
		}
	})
}

// Reload stops removed services and frees their slots, restarts changed
// ones and starts added ones; the others are not touched.
func TestReload(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil,
		svcTOML("keep", `start_secs = "0s"`), svcTOML("gone", `start_secs = "0s"`), svcTOML("edit", `start_secs = "0s"`))
	h.connect()
	keep := h.waitState("keep", "running")
	edit := h.waitState("edit", "running")
	h.waitState("gone", "running")
	h.writeConfig(svcTOML("new", `start_secs = "0s"`), svcTOML("edit", `start_secs = "0s"`, `stop_signal = "INT"`),
		svcTOML("keep", `start_secs = "0s"`), svcTOML("later", "autostart = false"))
	before := len(h.f.Calls())
	res, err := h.d.Reload()
	if err != nil {
		t.Fatal(err)
	}
	want := api.ReloadResult{Added: []string{"new", "later"}, Removed: []string{"gone"}, Changed: []string{"edit"}}
	if fmt.Sprint(res) != fmt.Sprint(want) {
		t.Errorf("Reload = %+v, want %+v", res, want)
	}
	var calls []string
	for _, c := range h.f.Calls()[before:] {
		if !strings.HasPrefix(c, "setstate ") && c != "list" {
			calls = append(calls, c)
		}
	}
	if want := []string{"stop gone", "stop edit", "free gone", "spawn edit", "spawn new"}; !slices.Equal(calls, want) {
		t.Errorf("plugin calls %q, want %q", calls, want)
	}
	if st := h.get("keep"); st.PID != keep.PID || st.Generation != keep.Generation {
		t.Errorf("keep was touched: %+v", st)
	}
	if st := h.get("edit"); st.Generation != edit.Generation+1 || st.PID == 0 {
		t.Errorf("edit not restarted: %+v", st)
	}
	if _, err := h.d.Get("gone"); err == nil {
		t.Errorf("gone still listed")
	}
	var names []string
	for _, st := range h.d.List() {
		names = append(names, st.Name)
	}
	if want := []string{"new", "edit", "keep", "later"}; !slices.Equal(names, want) {
		t.Errorf("List order %q, want %q", names, want)
	}
	if st := h.get("later"); st.State != "stopped" {
		t.Errorf("later: %+v, want stopped (autostart false)", st)
	}

	// A file that does not load changes nothing.
	if err := os.WriteFile(filepath.Join(h.dir, "hb.toml"), []byte("[service.x]\ncomand = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before = len(h.f.Calls())
	if _, err := h.d.Reload(); err == nil {
		t.Errorf("Reload of a bad file succeeded")
	}
	if calls := h.f.Calls()[before:]; len(calls) != 0 {
		t.Errorf("a rejected reload made plugin calls %q", calls)
	}
}

// A shutdown stops the services in reverse config order, frees their
// slots, then stops the plugin cleanly.
func TestShutdownOrder(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("one", `start_secs = "0s"`), svcTOML("two", `start_secs = "0s"`),
		svcTOML("three", `start_secs = "0s"`, "autostart = false"), svcTOML("four", `start_secs = "0s"`))
	h.connect()
	for _, n := range []string{"one", "two", "four"} {
		h.waitState(n, "running")
	}
	before := len(h.f.Calls())
	if err := h.d.shutdown(make(chan os.Signal)); err != nil {
		t.Fatal(err)
	}
	var calls []string
	for _, c := range h.f.Calls()[before:] {
		if strings.HasPrefix(c, "stop ") || strings.HasPrefix(c, "free ") || c == "shutdown" {
			calls = append(calls, c)
		}
	}
	want := []string{"stop four", "stop two", "stop one", "free four", "free three", "free two", "free one", "shutdown"}
	if !slices.Equal(calls, want) {
		t.Errorf("plugin calls %q, want %q", calls, want)
	}
	if got := h.f.Shutdowns(); !slices.Equal(got, []bool{true}) {
		t.Errorf("Shutdown(clean) calls %v, want [true]", got)
	}
	for _, st := range h.d.List() {
		if st.State != "stopped" || st.PID != 0 {
			t.Errorf("%s after shutdown: %+v", st.Name, st)
		}
	}
	if slots := h.f.Slots(); len(slots) != 0 {
		t.Errorf("table after shutdown: %+v, want empty", slots)
	}
}

// A stop of a service hbd takes for down still reaches the plugin: hbd's
// view lags the plugin's by the events in flight, and the plugin may run it
// again already (here: started behind hbd's back while hbd sees no event).
// The stop takes that incarnation down, and the service ends stopped.
func TestStopReachesPluginWhenHostSeesDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("once", `start_secs = "0s"`, `restart = "never"`))
	h.connect()
	h.waitState("once", "running")
	h.exit("once", 0)
	h.waitState("once", "exited")
	release := h.f.HoldEvents()
	if _, err := h.f.Spawn(t.Context(), plugin.Spec{Name: "once", Command: []string{"/bin/true"}}); err != nil {
		t.Fatal(err)
	}
	if err := h.d.Stop([]string{"once"}); err != nil {
		t.Fatal(err)
	}
	for _, sl := range h.f.Slots() {
		if sl.Name == "once" && sl.PID != 0 {
			t.Errorf("after the stop the plugin still runs it: slot %+v", sl)
		}
	}
	release()
	h.waitState("once", "stopped")
}

// A shutdown stops a service before those it was started after, whatever
// their config order; Names (hbctl start --all) lists them in start order.
func TestShutdownOrderAfter(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("app", `start_secs = "0s"`, `after = ["db"]`), svcTOML("db", `start_secs = "0s"`),
		svcTOML("web", `start_secs = "0s"`, `after = ["app"]`))
	h.connect()
	for _, n := range []string{"db", "app", "web"} {
		h.waitState(n, "running")
	}
	if got, want := h.d.Names(), []string{"db", "app", "web"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want the start order %q", got, want)
	}
	before := len(h.f.Calls())
	if err := h.d.shutdown(make(chan os.Signal)); err != nil {
		t.Fatal(err)
	}
	var stops []string
	for _, c := range h.f.Calls()[before:] {
		if strings.HasPrefix(c, "stop ") {
			stops = append(stops, c)
		}
	}
	if want := []string{"stop web", "stop app", "stop db"}; !slices.Equal(stops, want) {
		t.Errorf("plugin calls %q, want %q", stops, want)
	}
}

func TestStartOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		order []string
		after map[string][]string
		want  []string
	}{
		{"no after", []string{"a", "b", "c"}, nil, []string{"a", "b", "c"}},
		{"moved after its dependency", []string{"a", "b", "c"}, map[string][]string{"a": {"c"}}, []string{"c", "a", "b"}},
		{"chain", []string{"c", "b", "a"}, map[string][]string{"c": {"b"}, "b": {"a"}}, []string{"a", "b", "c"}},
		{"two dependencies in their order", []string{"x", "b", "a"}, map[string][]string{"x": {"a", "b"}}, []string{"a", "b", "x"}},
		{"unknown name ignored", []string{"a", "b"}, map[string][]string{"a": {"nope"}}, []string{"a", "b"}},
		{"cycle keeps every name once", []string{"a", "b"}, map[string][]string{"a": {"b"}, "b": {"a"}}, []string{"b", "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := startOrder(tt.order, func(n string) []string { return tt.after[n] })
			if !slices.Equal(got, tt.want) {
				t.Errorf("startOrder(%q, %v) = %q, want %q", tt.order, tt.after, got, tt.want)
			}
		})
	}
}

// Readers never wait for the plugin: List, Get and Names answer while a
// Spawn is stalled, at start (spawnMany) and for a Start request.
func TestListWhileSpawnStalled(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		start func(h *harness) error
		keys  []string
	}{
		{name: "autostart", start: func(h *harness) error {
			h.d.mu.Lock()
			defer h.d.mu.Unlock()
			return h.d.connect()
		}},
		{name: "start request", keys: []string{"autostart = false"}, start: func(h *harness) error {
			h.connect()
			return h.d.Start([]string{"a", "b"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, svcTOML("a", append([]string{`start_secs = "0s"`}, tt.keys...)...),
				svcTOML("b", append([]string{`start_secs = "0s"`}, tt.keys...)...))
			stall := h.f.StallSpawns()
			defer stall.Release()
			done := make(chan error, 1)
			go func() { done <- tt.start(h) }()
			select {
			case <-stall.Arrived():
			case <-time.After(bound):
				t.Fatalf("no Spawn within %v", bound)
			}
			answered := make(chan []api.ServiceStatus, 1)
			go func() {
				_ = h.d.Names()
				_, _ = h.d.Get("a")
				answered <- h.d.List()
			}()
			select {
			case list := <-answered:
				if len(list) != 2 {
					t.Errorf("List = %+v, want 2 services", list)
				}
			case <-time.After(bound):
				t.Fatalf("List did not answer within %v while a Spawn was stalled", bound)
			}
			stall.Release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			h.waitState("a", "running")
			h.waitState("b", "running")
		})
	}
}

// Readers never wait for a plugin launch (or reattach) either.
func TestListWhilePluginLaunches(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`))
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.beforeDial = func() {
		once.Do(func() { close(arrived) })
		<-release
	}
	done := make(chan error, 1)
	go func() {
		h.d.mu.Lock()
		defer h.d.mu.Unlock()
		done <- h.d.connect()
	}()
	<-arrived
	answered := make(chan []api.ServiceStatus, 1)
	go func() { answered <- h.d.List() }()
	select {
	case list := <-answered:
		if len(list) != 1 || list[0].State != "stopped" {
			t.Errorf("List during the launch = %+v, want a stopped", list)
		}
	case <-time.After(bound):
		close(release)
		t.Fatalf("List did not answer within %v while the plugin was launching", bound)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.waitState("a", "running")
}

// A service that names another process its main one (sd_notify's
// MAINPID=, reported by the plugin as an adopt event with a message):
// hbctl status shows that PID from then on, and after READY=1 the PID the
// ready event names.
func TestMainPIDMoves(t *testing.T) {
	h := newHarness(t, nil, svcTOML("rx", `ready = "notify"`, `start_secs = "0s"`))
	h.connect()
	h.waitCall("spawn rx")
	sp := h.f.Slots()[0]
	if sp.Name != "rx" || sp.PID == 0 {
		t.Fatalf("slot %+v", sp)
	}
	daemon := int(sp.PID) + 100
	h.f.Emit(plugin.Event{Kind: plugin.EventAdopt, Name: "rx", Slot: sp.Index, PID: daemon, Generation: sp.Generation,
		Message: "main pid 4343 (MAINPID=)"})
	h.f.Emit(plugin.Event{Kind: plugin.EventReady, Name: "rx", Slot: sp.Index, PID: daemon, Generation: sp.Generation})
	st := h.wait("rx", "running as the daemon", func(st api.ServiceStatus) bool { return st.PID == daemon && st.State == "running" })
	if st.Generation != sp.Generation {
		t.Fatalf("status %+v; want generation %d", st, sp.Generation)
	}
	// An adopt event of another generation changes nothing.
	h.f.Emit(plugin.Event{Kind: plugin.EventAdopt, Name: "rx", Slot: sp.Index, PID: daemon + 1, Generation: sp.Generation + 7,
		Message: "main pid (MAINPID=)"})
	h.f.Emit(plugin.Event{Kind: plugin.EventStatus, Name: "rx", Slot: sp.Index, PID: daemon, Generation: sp.Generation, Message: "fence"})
	h.wait("rx", "the fence", func(st api.ServiceStatus) bool { return st.StatusText == "fence" })
	if st := h.get("rx"); st.PID != daemon {
		t.Fatalf("status pid %d after a stale adopt event, want %d", st.PID, daemon)
	}
}

// stallList is a plugin whose List waits for release: connect is midway,
// the plugin known but the table not yet read.
type stallList struct {
	plugin.Shim
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
	fail    error // List's answer, when set
}

func (s *stallList) List(ctx context.Context) ([]shm.Slot, error) {
	s.once.Do(func() { close(s.arrived) })
	<-s.release
	if s.fail != nil {
		return nil, s.fail
	}
	return s.Shim.List(ctx)
}

type stallConn struct {
	*plugintest.Conn
	shim plugin.Shim
}

func (c stallConn) Shim() plugin.Shim { return c.shim }

// Health is not ok until hbd has read the table: until then every
// service shows the state hbd started with (stopped), whatever runs. A
// check that waits for health (hbctl wait, the tests' harness) would read
// that as the truth.
func TestHealthWaitsForTheTable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(f *plugintest.Shim) { f.Seed("a", 4242, shm.StateRunning, -1) }, svcTOML("a", `start_secs = "0s"`))
	st := &stallList{arrived: make(chan struct{}), release: make(chan struct{})}
	h.d.dial = func(config.HBD) (pluginConn, bool, error) {
		c := h.f.Conn()
		st.Shim = c.Shim()
		return stallConn{Conn: c, shim: st}, true, nil
	}
	done := make(chan error, 1)
	go func() {
		h.d.mu.Lock()
		defer h.d.mu.Unlock()
		done <- h.d.connect()
	}()
	select {
	case <-st.arrived:
	case err := <-done:
		t.Fatalf("connect returned before reading the table: %v", err)
	}
	_, err := h.d.PluginInfo(context.Background())
	close(st.release)
	if !errors.Is(err, api.ErrAttaching) {
		t.Errorf("PluginInfo while the table is read = %v, want %v", err, api.ErrAttaching)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := h.d.PluginInfo(context.Background()); err != nil {
		t.Errorf("PluginInfo once attached: %v", err)
	}
	if got := h.get("a"); got.PID != 4242 || got.State != "running" {
		t.Errorf("a once attached: %+v, want pid 4242 running", got)
	}
}

// A connect that fails after it has a plugin (here its List) leaves health
// not ok: the services' states were never brought in line with the table,
// and watchPlugin tries again.
func TestHealthAfterAFailedAttach(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("a", `start_secs = "0s"`))
	if _, err := h.d.PluginInfo(context.Background()); !errors.Is(err, api.ErrAttaching) {
		t.Errorf("PluginInfo before the first connect = %v, want %v", err, api.ErrAttaching)
	}
	st := &stallList{arrived: make(chan struct{}), release: make(chan struct{}), fail: errors.New("list refused")}
	close(st.release)
	h.d.dial = func(config.HBD) (pluginConn, bool, error) {
		c := h.f.Conn()
		st.Shim = c.Shim()
		return stallConn{Conn: c, shim: st}, true, nil
	}
	h.d.mu.Lock()
	err := h.d.connect()
	h.d.mu.Unlock()
	if err == nil {
		t.Fatal("connect succeeded although List failed")
	}
	if _, err := h.d.PluginInfo(context.Background()); !errors.Is(err, api.ErrAttaching) {
		t.Errorf("PluginInfo after a failed connect = %v, want %v", err, api.ErrAttaching)
	}
}
