package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// buildBeater builds testdata/beater (a Go service that beats with
// shm.Beat until SIGUSR1) into dir and returns its path.
func buildBeater(t *testing.T, dir string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "beater")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/hbd/testdata/beater")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build beater: %v\n%s", err, b)
	}
	return out
}

// watchdogPeriod is the services' watchdog in TestFaultWatchdog: long
// enough that a client started on a loaded machine beats within its first
// period, short enough to keep the test quick.
const watchdogPeriod = 300 * time.Millisecond

// TestFaultWatchdog: a C client (hb_beat) and a Go client (shm.Beat) beat a
// 300 ms watchdog and are left alone; then one hangs for real (stops
// beating, waits in pause()) and the other is SIGSTOPped. Each one's slot
// reads 0 within the period plus a small bound, its state is hung (hbctl
// status shows it, hbctl watch gets the hung event), it gets SIGABRT
// (the C client dies of it: 134) or, stopped, SIGKILL after the grace
// (137), and is respawned with reason "watchdog"; the replacement's beats
// keep it up.
func TestFaultWatchdog(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "watchdog")
	h := NewHarness(t, Options{})
	beater := buildBeater(t, h.Dir)
	h.WriteConfig(fmt.Sprintf(`
[service.cbeat]
command        = [%q, "-b", "2"]
start_secs     = "0s"
watchdog       = "300ms"
watchdog_grace = "500ms"

[service.gobeat]
command        = [%q]
start_secs     = "0s"
watchdog       = "300ms"
watchdog_grace = "500ms"
`, h.HBClient, beater))
	h.Start()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := h.Client().Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nextEvent := func(kind, name string) api.Event {
		t.Helper()
		timeout := time.After(WaitTimeout)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("event stream ended waiting for %s of %s", kind, name)
				}
				if ev.Kind == kind && ev.Name == name {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s event of %s within %v", kind, name, WaitTimeout)
			}
		}
	}
	up := h.WaitRunning("cbeat", "gobeat")

	// stillBeating: a window of five periods in which the service's
	// incarnation pid keeps its slot (no check found it without a beat).
	stillBeating := func(name string, pid int) {
		t.Helper()
		time.Sleep(5 * watchdogPeriod)
		if s := h.Slot(name); int(s.PID) != pid || s.State != shm.StateRunning {
			t.Fatalf("%s beats but its slot is %+v; want pid %d running", name, s, pid)
		}
	}
	stillBeating("cbeat", up["cbeat"].PID)
	stillBeating("gobeat", up["gobeat"].PID)

	hangs := []struct {
		name, what string
		sig        syscall.Signal
		status     int
	}{
		{"cbeat", "the C client stops beating (hangs in pause())", syscall.SIGUSR1, 128 + int(syscall.SIGABRT)},
		{"gobeat", "SIGSTOP the Go client", syscall.SIGSTOP, 128 + int(syscall.SIGKILL)},
	}
	for _, hg := range hangs {
		rep.attack(t, hg.what, func() {
			i := h.SlotIndex(hg.name)
			old := h.Slot(hg.name).PID
			tab := h.Table()
			start := time.Now()
			h.Kill(int(old), hg.sig)
			for tab.PID(i) == old {
				if time.Since(start) > WaitTimeout {
					t.Fatalf("%s: slot still %d %v after the hang", hg.name, old, WaitTimeout)
				}
				time.Sleep(100 * time.Microsecond)
			}
			toZero := time.Since(start)
			rep.note(hg.name+"_hang_to_slot0", toZero.Round(time.Millisecond))
			// Declared a period after the last beat plus at most two samples
			// (a twentieth of the period each); the bound allows for a
			// loaded machine delaying the plugin's checker.
			if limit := watchdogPeriod + 500*time.Millisecond; toZero > limit {
				t.Errorf("%s: slot read %d for %v after the hang; want 0 within %v", hg.name, old, toZero, limit)
			}
			if p := tab.PID(i); p != 0 && p == old {
				t.Fatalf("%s: slot pid %d", hg.name, p)
			}
			if hg.sig == syscall.SIGSTOP {
				// SIGABRT stays pending on a stopped process: it is hung
				// (slot 0, state hung, status hung) until the grace ends.
				h.WaitSlot(hg.name, "hung with pid 0", func(s shm.Slot) bool { return s.PID == 0 && s.State == shm.StateHung })
				h.WaitService(hg.name, "shown hung", func(st api.ServiceStatus) bool { return st.State == "hung" && st.PID == 0 })
			}
			hung := nextEvent(api.EventHung, hg.name)
			if hung.PID != int(old) || hung.State != "hung" || hung.Reason == "" {
				t.Errorf("hung event %+v; want pid %d, state hung, the time since the last beat", hung, old)
			}
			ex := nextEvent(api.EventExit, hg.name)
			if ex.PID != int(old) || ex.Reason != "watchdog" || ex.Status != hg.status {
				t.Errorf("exit event %+v; want pid %d, reason watchdog, status %d", ex, old, hg.status)
			}
			sp := nextEvent(api.EventSpawn, hg.name)
			h.WaitGone(int(old))
			s := h.WaitSlot(hg.name, "respawned", func(s shm.Slot) bool { return s.PID != 0 && s.PID != old })
			if int(s.PID) != sp.PID {
				t.Fatalf("%s: slot pid %d, spawn event pid %d", hg.name, s.PID, sp.PID)
			}
			stillBeating(hg.name, sp.PID)
		})
	}
}
