package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// TestFaultCrashLoopHeadless: a service that exits at once, with restart
// "always" and start_secs "0s", is respawned by the plugin alone while hbd
// is away (SIGKILLed), thousands of times in a row (headless_respawns set
// past what the test watches: by default the plugin stops after 100, see
// TestHeadlessRespawnBudget), and is never left down:
// its slot never reads PID 0 with no new exit for longer than stuckAfter.
// The next hbd reattaches to the same plugin, supervises the loop, and stops
// it cleanly. Not parallel: the loop keeps about one core busy for ten
// seconds or so, which the suite's timing-sensitive tests should not share.
func TestFaultCrashLoopHeadless(t *testing.T) {
	rep := newFaultReport(t, "crash-loop-headless")
	h := NewHarness(t, Options{})
	h.WriteFile(h.Config, strings.Replace(h.ConfigText(`
[service.crash]
command    = ["/bin/false"]
restart    = "always"
start_secs = "0s"

[service.steady]
command    = "sleep infinity"
start_secs = "100ms"
`), "[hbd]\n", "[hbd]\nheadless_respawns = 1000000\n", 1))
	d := h.Start()
	plugin := pluginPID(h)
	before := h.WaitRunning("steady")
	h.WaitSlot("crash", "respawned at least once", func(s shm.Slot) bool { return s.Exits > 0 })

	// respawns: how many respawns by the plugin are watched. A service left
	// down was seen after a few hundred to a few tens of thousands of them
	// (the window was a few microseconds per respawn), so many are needed
	// to show it. watchFor bounds the time (the loop runs at one to three
	// thousand respawns a second here, and keeps about one core busy
	// meanwhile). stuckAfter: a slot that reads 0 with no new exit for
	// this long was left down (a respawn takes well under a millisecond).
	const (
		respawns   = 30000
		watchFor   = 20 * time.Second
		stuckAfter = 2 * time.Second
	)
	rep.attack(t, "SIGKILL hbd under a service that exits at once, then let the plugin respawn it alone", func() {
		d.Signal(syscall.SIGKILL)
		d.Wait()
		if !Alive(plugin) {
			t.Fatalf("the plugin %d died with hbd", plugin)
		}
		i := h.SlotIndex("crash")
		tab := h.Table()
		first := tab.Snapshot(i)
		last, lastChange := first, time.Now()
		deadline := time.Now().Add(watchFor)
		for {
			// Polled gently: the loop itself keeps a core busy.
			time.Sleep(10 * time.Millisecond)
			s := tab.Snapshot(i)
			now := time.Now()
			if s.Exits != last.Exits || s.PID != last.PID {
				last, lastChange = s, now
			}
			if s.Exits-first.Exits >= respawns {
				break
			}
			if s.PID == 0 && now.Sub(lastChange) > stuckAfter {
				rep.addLost(1)
				t.Errorf("crash left down by the plugin after %d respawns while hbd was away: slot %+v unchanged for %v",
					s.Exits-first.Exits, s, now.Sub(lastChange).Round(time.Millisecond))
				break
			}
			if now.After(deadline) {
				t.Logf("crash: %d respawns by the plugin in %v (wanted %d): the machine is slow; the loop never stalled",
					s.Exits-first.Exits, watchFor, respawns)
				break
			}
		}
		n := tab.Snapshot(i).Exits - first.Exits
		rep.note("respawns_while_away", n)
		t.Logf("crash: %d respawns by the plugin while hbd was away", n)
		if s := h.Slot("steady"); s.PID != uint32(before["steady"].PID) {
			rep.addRestarted(1)
			t.Errorf("steady: slot %+v; want pid %d untouched", s, before["steady"].PID)
		}
	})

	// The next hbd reattaches to the same plugin and takes the loop over.
	d = h.Start()
	if got := pluginPID(h); got != plugin {
		t.Errorf("plugin pid %d after the restart, want the same plugin %d", got, plugin)
	}
	g := h.ServiceStatus("crash").Generation
	h.WaitService("crash", fmt.Sprintf("respawned past generation %d under the new hbd", g+10),
		func(st api.ServiceStatus) bool { return st.Generation > g+10 })
	h.MustCtl("stop", "crash")
	h.WaitSlot("crash", "stopped", func(s shm.Slot) bool { return s.PID == 0 && s.State == shm.StateStopped })
	if st := h.ServiceStatus("steady"); st.PID != before["steady"].PID || !IsRunning(st) {
		t.Errorf("steady after the reattach: %+v; want pid %d running", st, before["steady"].PID)
	}
	d.Stop()
}

// TestHeadlessRespawnBudget: a plugin whose hbd is gone does not respawn
// for ever. With the default headless_respawns (100), a service that exits
// at once is respawned by the plugin alone at most 100 times in a row after
// hbd is SIGKILLed, then stays down (PID 0, exited); a steady service is
// untouched. The next hbd finds it exited and brings it back by its policy.
func TestHeadlessRespawnBudget(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.crash]
command    = ["/bin/false"]
restart    = "always"
start_secs = "0s"

[service.steady]
command    = "sleep infinity"
start_secs = "100ms"
`)
	d := h.Start()
	before := h.WaitRunning("steady")
	h.WaitSlot("crash", "respawned at least once", func(s shm.Slot) bool { return s.Exits > 0 })
	d.Signal(syscall.SIGKILL)
	d.Wait()
	e0 := h.Slot("crash").Exits
	s := h.WaitSlot("crash", "left down by the plugin", func(s shm.Slot) bool { return s.PID == 0 && s.State == shm.StateExited })
	time.Sleep(time.Second)
	if s2 := h.Slot("crash"); s2.Exits != s.Exits || s2.PID != 0 || s2.Generation != s.Generation {
		t.Errorf("crash respawned after the budget: %+v, then %+v", s, s2)
	}
	// 100 respawns: 101 exits, plus those the plugin respawned before it
	// saw hbd's connection close (not yet headless: about one a
	// millisecond of that delay, a few on a loaded machine). Without a
	// budget the loop would go on for ever; the check above shows it
	// stopped.
	if n := s.Exits - e0; n > 110 {
		t.Errorf("%d exits after hbd died, want at most 100 respawns and the few before the plugin saw hbd gone", n)
	}
	t.Logf("crash: %d exits after hbd died; left down at generation %d", s.Exits-e0, s.Generation)
	if st := h.Slot("steady"); st.PID != uint32(before["steady"].PID) {
		t.Errorf("steady: slot %+v; want pid %d untouched", st, before["steady"].PID)
	}
	if !strings.Contains(h.PluginLog(), "no hbd: leaving the service down until one connects") {
		t.Errorf("plugin.log does not say why crash is left down")
	}

	d = h.Start()
	h.WaitService("crash", "respawned by the next hbd", func(st api.ServiceStatus) bool { return st.Generation > s.Generation+1 })
	h.MustCtl("stop", "crash")
	d.Stop()
}
