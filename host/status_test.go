package host

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/plugin/plugintest"
	"github.com/hbshim/hb/shm"
	"golang.org/x/sys/unix"
)

// restartHBD replaces h's Daemon by a new one on the same state directory
// and fake plugin, as a restart of hbd does (the plugin keeps running).
func (h *harness) restartHBD() {
	h.t.Helper()
	h.d.detach()
	cfg, err := config.Load(h.dir + "/hb.toml")
	if err != nil {
		h.t.Fatal(err)
	}
	h.d = newDaemon(cfg, slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})), "/nonexistent/hbd")
	h.d.dial = func(config.HBD) (pluginConn, bool, error) { return h.f.Conn(), true, nil }
	h.connect()
}

// A service's reason says what happened and when, survives a restart of
// hbd and a stop, and Wanted/OK say whether it is where hbd wants it.
func TestReasonsSurvive(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, svcTOML("svc", `start_secs = "1h"`, "start_retries = 2"))
	h.connect()
	h.waitState("svc", "starting")
	if st := h.get("svc"); st.Wanted != api.WantedUp || !st.OK {
		t.Errorf("starting: wanted %q ok %v, want up, ok", st.Wanted, st.OK)
	}
	h.exit("svc", 1)
	h.waitState("svc", "backoff")
	if st := h.get("svc"); st.OK || st.Wanted != api.WantedUp {
		t.Errorf("backoff: wanted %q ok %v, want up, not ok", st.Wanted, st.OK)
	}
	h.waitState("svc", "starting")
	h.exit("svc", 1)
	st := h.waitState("svc", "fatal")
	if !strings.Contains(st.Reason, "exited too quickly 2 times") || st.ReasonAt.IsZero() || st.OK {
		t.Fatalf("fatal: reason %q at %v ok %v", st.Reason, st.ReasonAt, st.OK)
	}
	fatalReason, fatalAt := st.Reason, st.ReasonAt

	h.restartHBD()
	st = h.get("svc")
	if st.State != "fatal" || st.Reason != fatalReason || !st.ReasonAt.Equal(fatalAt) {
		t.Errorf("after an hbd restart: %s %q at %v, want fatal %q at %v", st.State, st.Reason, st.ReasonAt, fatalReason, fatalAt)
	}

	if err := h.d.Stop([]string{"svc"}); err != nil {
		t.Fatal(err)
	}
	st = h.get("svc")
	if st.State != "stopped" || !strings.Contains(st.Reason, "stopped by request") || !strings.Contains(st.Reason, fatalReason) {
		t.Errorf("stop of a fatal service: %s %q: the fatal reason is lost", st.State, st.Reason)
	}
	if st.Wanted != api.WantedDown || !st.OK {
		t.Errorf("stopped: wanted %q ok %v, want down, ok", st.Wanted, st.OK)
	}
	h.restartHBD()
	if st2 := h.get("svc"); st2.Reason != st.Reason {
		t.Errorf("stopped, after an hbd restart: reason %q, want %q", st2.Reason, st.Reason)
	}
}

// After a restart of hbd a live service's uptime is its own, from the
// slot's start time, not hbd's age.
func TestUptimeFromSlot(t *testing.T) {
	t.Parallel()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Skip(err)
	}
	back := min(time.Hour, time.Duration(ts.Nano())/2).Truncate(time.Minute)
	if back < 2*time.Minute {
		t.Skip("booted less than 4 minutes ago")
	}
	ticks := uint64((time.Duration(ts.Nano()) - back) / (10 * time.Millisecond))
	h := newHarness(t, func(f *plugintest.Shim) {
		f.Seed("svc", 1234, shm.StateRunning, -1)
		f.SetStartTime("svc", ticks)
	}, svcTOML("svc"))
	h.connect()
	st := h.get("svc")
	up, err := time.ParseDuration(st.Uptime)
	if err != nil || up < back-time.Minute || up > back+time.Minute {
		t.Errorf("uptime %q (%v), want about %v: the slot's start time", st.Uptime, err, back)
	}
	if since := time.Since(st.StartedAt); since < back-time.Minute {
		t.Errorf("started_at %v ago, want about %v", since, back)
	}
}

// wanted: which state hbd wants a service in, and whether it is there.
func TestWanted(t *testing.T) {
	t.Parallel()
	cfg := &config.Service{Name: "svc", ExitCodes: []int{0, 2}}
	for _, tt := range []struct {
		state      policy.State
		wantDown   bool
		hung       string
		lastStatus int
		want       string
		ok         bool
	}{
		{state: policy.StateStarting, want: api.WantedUp, ok: true},
		{state: policy.StateRunning, want: api.WantedUp, ok: true},
		{state: policy.StateRunning, hung: "no beat for 1s", want: api.WantedUp, ok: false},
		{state: policy.StateBackoff, want: api.WantedUp, ok: false},
		{state: policy.StateFatal, want: api.WantedUp, ok: false},
		{state: policy.StateExited, lastStatus: 2, want: api.WantedUp, ok: true},
		{state: policy.StateExited, lastStatus: 1, want: api.WantedUp, ok: false},
		{state: policy.StateExited, lastStatus: -1, want: api.WantedUp, ok: false},
		{state: policy.StateStopped, want: api.WantedDown, ok: true},
		{state: policy.StateStopping, wantDown: true, want: api.WantedDown, ok: false},
		{state: policy.StateRunning, wantDown: true, want: api.WantedDown, ok: false},
	} {
		s := &service{cfg: cfg, m: policy.NewMachine(tt.state), wantDown: tt.wantDown, hung: tt.hung, lastStatus: tt.lastStatus}
		if got, ok := s.wanted(); got != tt.want || ok != tt.ok {
			t.Errorf("%s (want down %v, hung %q, last status %d): wanted %q ok %v; want %q %v",
				tt.state, tt.wantDown, tt.hung, tt.lastStatus, got, ok, tt.want, tt.ok)
		}
	}
}

// The name of a service with instances stands for all of them; NAME-i for one.
func TestInstanceNames(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, `[service.w]
command    = ["/bin/sh", "-c", "exit 0"]
instances  = 3
start_secs = "0s"
`)
	h.connect()
	for _, n := range []string{"w-0", "w-1", "w-2"} {
		h.waitState(n, "running")
	}
	for _, tt := range []struct {
		names []string
		want  []string
	}{
		{[]string{"w"}, []string{"w-0", "w-1", "w-2"}},
		{[]string{"w-1"}, []string{"w-1"}},
		{[]string{"w-2", "w"}, []string{"w-2", "w-0", "w-1"}},
	} {
		if got := h.d.Expand(tt.names); !slices.Equal(dedup(got), tt.want) {
			t.Errorf("Expand(%q) = %q, want %q", tt.names, dedup(got), tt.want)
		}
		before := len(h.calls("spawn "))
		if err := h.d.Restart(tt.names); err != nil {
			t.Fatal(err)
		}
		if got := len(h.calls("spawn ")) - before; got != len(tt.want) {
			t.Errorf("Restart(%q) spawned %d, want %d", tt.names, got, len(tt.want))
		}
	}
	if _, err := h.d.Get("w"); err == nil {
		t.Error(`Get("w") found a service; want not found (w stands for its instances)`)
	}
}

func dedup(names []string) []string {
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
