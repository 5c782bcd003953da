package main

// The fault-injection suite: hb survives faults and bad input and loses
// nothing, shown against the real binaries (hbd and its plugin, hbctl,
// hbpeek, hbclient). Run it with
//
//	go test -race -count=1 -run TestFault -v ./cmd/hbd/
//
// Each test injects one kind of fault, checks the promise with bounded waits
// for the right state (never a timing threshold), and prints one summary
// line, "FAULT <name> faults_injected=… survived=… inputs_tried=…
// clients_restarted_unnecessarily=… exits_lost=… result=…", so the numbers
// quoted in the documentation come from a real run.
//
//	TestFaultHbdRestart   hbd SIGKILLed, then SIGQUIT-detached, then hbd and plugin both killed;
//	                      services killed while it is away
//	TestFaultPluginKilled the plugin SIGKILLed (twice, once with services dying in the gap)
//	TestFaultEventLoss    tiny connector buffer + an unrelated process/thread flood while
//	                      services are killed
//	TestFaultCrashLoop    a service that exits at once: backoff, fatal, no CPU burnt, start clears it
//	TestFaultBadConfig    malformed and hostile TOML: --check, reload, SIGHUP, the FuzzParse corpus
//	TestFaultBadService   missing/non-executable command, unknown user, bad names, a full table
//	TestFaultBadAPI       malformed, unknown and oversized requests; an unprivileged peer
//	TestFaultBadShm       /dev/shm/<name> a symlink, another user's, world-writable
//	TestFaultBadSocket    the socket path a symlink, a regular file, in a symlinked directory
//	TestFaultShutdown     SIGTERM (stop_timeout, SIGKILL after it), a second SIGTERM/SIGINT
//
// TestFaultBadConfigKnownBugs holds hostile configurations that still break
// a promise; it skips unless HB_E2E_KNOWN_BUGS=1 (see KnownBug).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/shm"
)

// checkTableMatches fails the test unless every named service's slot holds
// the PID and generation of want, with the start time /proc gives for that
// PID (the table is valid, and names these very processes).
func checkTableMatches(h *Harness, want map[string]api.ServiceStatus) {
	h.T.Helper()
	for name, st := range want {
		s := h.Slot(name)
		if s.Name != name || s.PID != uint32(st.PID) || s.Generation != st.Generation {
			h.T.Errorf("slot of %s: %+v; want pid %d generation %d", name, s, st.PID, st.Generation)
			continue
		}
		if ps, err := readStat(st.PID); err != nil || ps.StartTime != s.StartTime {
			h.T.Errorf("slot of %s: start_time %d, /proc/%d/stat says %d (%v)", name, s.StartTime, st.PID, ps.StartTime, err)
		}
	}
}

// countRestarted compares untouched services with what they were and
// returns how many were restarted (another PID or generation).
func countRestarted(h *Harness, before map[string]api.ServiceStatus, names ...string) int {
	h.T.Helper()
	n := 0
	for _, name := range names {
		st := h.ServiceStatus(name)
		b := before[name]
		if st.PID != b.PID || st.Generation != b.Generation || st.Exits != b.Exits || !IsRunning(st) {
			n++
			h.T.Errorf("%s was restarted or disturbed: %+v; was pid %d generation %d exits %d", name, st, b.PID, b.Generation, b.Exits)
		}
	}
	return n
}

// TestFaultHbdRestart: hbd is killed with SIGKILL, then (after the next hbd
// took over) detached with SIGQUIT. While it is away the plugin and every
// service keep running and the table stays valid; services killed meanwhile
// are respawned by the plugin alone (restart "always", no delay) or stay down
// (restart "never", or a restart_delay that only hbd can honour). The next
// hbd reattaches to the same plugin, takes the state from it, reports the
// exits it missed, respawns what waited for it, and restarts nothing else.
// Last, hbd and then the plugin are both killed: the next hbd starts a new
// plugin, which adopts what still runs.
func TestFaultHbdRestart(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "hbd-restart")
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%[1]q]
start_secs = "100ms"

[service.sleeper]
command    = "sleep infinity"
start_secs = "100ms"

[service.shell]
command    = ["sh", "-c", "while :; do sleep 1; done"]
start_secs = "100ms"

[service.respawner]
command    = [%[1]q]
start_secs = "100ms"

[service.oneshot]
command    = [%[1]q]
restart    = "never"
start_secs = "100ms"

[service.delayed]
command       = [%[1]q]
start_secs    = "100ms"
restart_delay = "300ms"
backoff_max   = "300ms"
`, h.HBClient))
	all := []string{"client", "sleeper", "shell", "respawner", "oneshot", "delayed"}
	untouched := []string{"client", "sleeper", "shell"}
	d := h.Start()
	census := watchInstances(h)
	h.WaitRunning(all...)
	plugin := pluginPID(h)

	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGQUIT} {
		rep.fault(t, func() {
			before := h.WaitRunning(all...)
			d.Signal(sig)
			code := d.Wait()
			if sig == syscall.SIGQUIT && code != 0 {
				t.Fatalf("hbd exited %d after SIGQUIT:\n%s", code, d.Log())
			}

			// hbd is away: the plugin and every service run on, the table
			// is valid and names them.
			if !Alive(plugin) {
				t.Fatalf("%v: the plugin %d died with hbd", sig, plugin)
			}
			for name, st := range before {
				if !Alive(st.PID) {
					t.Errorf("%v: %s (pid %d) died with hbd", sig, name, st.PID)
				}
			}
			if hdr := h.Table().Header(); hdr.WriterPID != uint32(plugin) || hdr.Version != shm.Version {
				t.Errorf("%v: table header %+v while hbd is away; want writer_pid %d", sig, hdr, plugin)
			}
			checkTableMatches(h, before)
			peek := h.Peek(h.Shm)
			for _, ps := range peek.Slots {
				if b, ok := before[ps.Name]; ok && (ps.PID != uint32(b.PID) || ps.Generation != b.Generation) {
					t.Errorf("%v: hbpeek says %+v; want pid %d generation %d", sig, ps, b.PID, b.Generation)
				}
			}
			if r := h.Ctl("status"); r.Code != 4 {
				t.Errorf("%v: hbctl status with hbd away: %v; want exit 4 (state unknown)", sig, r)
			}

			// Exits while hbd is away.
			for _, name := range []string{"respawner", "oneshot", "delayed"} {
				h.Kill(before[name].PID, syscall.SIGKILL)
			}
			b := before["respawner"]
			resp := h.WaitSlot("respawner", "respawned by the plugin alone", func(s shm.Slot) bool {
				return s.PID != 0 && s.PID != uint32(b.PID) && s.Generation == b.Generation+1 && s.Exits == b.Exits+1
			})
			for _, name := range []string{"oneshot", "delayed"} {
				b := before[name]
				h.WaitSlot(name, "pid 0 and the exit recorded", func(s shm.Slot) bool {
					return s.PID == 0 && s.Exits == b.Exits+1 && s.LastPID == uint32(b.PID)
				})
			}

			// The next hbd reattaches and takes over.
			d = h.Start()
			if got := pluginPID(h); got != plugin {
				t.Errorf("%v: plugin pid %d after the restart, want the same plugin %d", sig, got, plugin)
			}
			if !strings.Contains(d.Log(), "reattached=true") {
				t.Errorf("%v: the new hbd did not reattach:\n%s", sig, d.Log())
			}
			rep.addRestarted(countRestarted(h, before, untouched...))

			st := h.WaitService("respawner", "running as the plugin respawned it", func(st api.ServiceStatus) bool {
				return IsRunning(st) && st.PID == int(resp.PID)
			})
			if st.Generation != b.Generation+1 || st.Exits != b.Exits+1 || st.LastStatus != 137 {
				rep.addLost(1)
				t.Errorf("%v: respawner %+v; want generation %d, exits %d, last status 137", sig, st, b.Generation+1, b.Exits+1)
			}
			ob := before["oneshot"]
			st = h.WaitService("oneshot", "exited", func(st api.ServiceStatus) bool { return st.State == "exited" })
			if st.PID != 0 || st.Exits != ob.Exits+1 || st.LastStatus != 137 || st.Generation != ob.Generation {
				rep.addLost(1)
				t.Errorf("%v: oneshot %+v; want pid 0, exits %d, last status 137", sig, st, ob.Exits+1)
			}
			d.WaitLog("exited while hbd was away")
			if l := Lines(d.Log(), "exited while hbd was away"); !slices.ContainsFunc(l, func(s string) bool {
				return strings.Contains(s, "service=oneshot") && strings.Contains(s, "pid="+strconv.Itoa(ob.PID))
			}) {
				rep.addLost(1)
				t.Errorf("%v: the new hbd does not report oneshot's exit (pid %d): %q", sig, ob.PID, l)
			}
			db := before["delayed"]
			st = h.WaitService("delayed", "respawned by the new hbd", func(st api.ServiceStatus) bool {
				return IsRunning(st) && st.Generation == db.Generation+1
			})
			if st.Exits != db.Exits+1 || st.LastStatus != 137 {
				rep.addLost(1)
				t.Errorf("%v: delayed %+v; want exits %d, last status 137", sig, st, db.Exits+1)
			}
			for _, l := range Lines(d.Log(), "msg=spawned") {
				if !strings.Contains(l, "service=delayed") {
					rep.addRestarted(1)
					t.Errorf("%v: the new hbd spawned what it should have left alone: %s", sig, l)
				}
			}
			// Ready for the next round.
			h.MustCtl("start", "oneshot")
		})
	}

	// Both gone: hbd SIGKILLed, then the plugin, then two services while
	// nobody watches. The next hbd finds no plugin to reattach to, starts
	// one, which adopts the live services and reports the dead ones.
	rep.fault(t, func() {
		before := h.WaitRunning(all...)
		d.Signal(syscall.SIGKILL)
		d.Wait()
		h.Kill(plugin, syscall.SIGKILL)
		h.WaitGone(plugin)
		for _, name := range []string{"respawner", "oneshot"} {
			h.Kill(before[name].PID, syscall.SIGKILL)
			h.WaitGone(before[name].PID)
		}
		d = h.Start()
		old := plugin
		plugin = pluginPID(h)
		if plugin == old {
			t.Fatalf("the plugin %d was killed, yet hbd reports it", old)
		}
		live := map[string]api.ServiceStatus{}
		for _, n := range []string{"client", "sleeper", "shell", "delayed"} {
			live[n] = before[n]
		}
		checkAdopted(h, live, plugin)
		rep.addRestarted(countRestarted(h, before, "client", "sleeper", "shell", "delayed"))
		rb := before["respawner"]
		st := h.WaitService("respawner", "respawned by the new hbd", func(st api.ServiceStatus) bool {
			return IsRunning(st) && st.Generation == rb.Generation+1
		})
		if st.Exits != rb.Exits+1 || st.Adopted {
			rep.addLost(1)
			t.Errorf("respawner: %+v; want exits %d, not adopted", st, rb.Exits+1)
		}
		ob := before["oneshot"]
		st = h.WaitService("oneshot", "exited", func(st api.ServiceStatus) bool { return st.State == "exited" })
		if st.PID != 0 || st.Exits != ob.Exits+1 {
			rep.addLost(1)
			t.Errorf("oneshot: %+v; want pid 0, exits %d", st, ob.Exits+1)
		}
		for _, n := range []string{"respawner", "oneshot"} {
			if !reportsExit(d.Log(), n, before[n].PID) {
				rep.addLost(1)
				t.Errorf("the new hbd does not report the exit of %s (pid %d):\n%s", n, before[n].PID, d.Log())
			}
		}
	})
	census.Stop(t)
}

// waitNewPlugin waits until hbd reports a plugin other than old, and
// returns its PID.
func waitNewPlugin(h *Harness, old int) int {
	h.T.Helper()
	var pid int
	h.Eventually(fmt.Sprintf("a new plugin (the old one was %d)", old), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hl, err := h.Client().Health(ctx)
		if err != nil || hl.Plugin == nil || hl.Plugin.PID == old {
			return false, fmt.Sprint(hl, err)
		}
		pid = hl.Plugin.PID
		return true, ""
	})
	h.Track(pid)
	return pid
}

// checkAdopted fails the test unless each service of want runs on as the
// same process (PID, generation, start time), is flagged adopted in the
// table and in hbd's status, and is not plugin's child.
func checkAdopted(h *Harness, want map[string]api.ServiceStatus, plugin int) {
	h.T.Helper()
	for name, b := range want {
		st := h.WaitService(name, "adopted", func(st api.ServiceStatus) bool { return st.Adopted || st.PID != b.PID })
		if st.PID != b.PID || st.Generation != b.Generation || !IsRunning(st) {
			h.T.Errorf("%s after the plugin's death: %+v; want pid %d generation %d, running", name, st, b.PID, b.Generation)
		}
		s := h.Slot(name)
		ps, err := readStat(b.PID)
		switch {
		case err != nil:
			h.T.Errorf("%s (pid %d): %v", name, b.PID, err)
		case s.PID != uint32(b.PID) || s.Flags&shm.SlotAdopted == 0 || s.StartTime != ps.StartTime:
			h.T.Errorf("%s slot %+v; want pid %d flagged adopted, start_time %d (from /proc)", name, s, b.PID, ps.StartTime)
		case ps.PPID == plugin:
			h.T.Errorf("%s (pid %d) is the new plugin's child; an adopted process is not", name, b.PID)
		}
	}
	if hdr := h.Table().Header(); hdr.WriterPID != uint32(plugin) {
		h.T.Errorf("writer_pid %d, want the new plugin %d", hdr.WriterPID, plugin)
	}
}

// reportsExit reports whether hbd's log has an exit of the service's pid,
// handled live (msg=exited) or reported as having happened while nobody
// was listening.
func reportsExit(log, name string, pid int) bool {
	for _, l := range strings.Split(log, "\n") {
		if (strings.Contains(l, "msg=exited ") || strings.Contains(l, `msg="exited while hbd was away"`)) &&
			strings.Contains(l, " service="+name+" ") && strings.Contains(l, " pid="+strconv.Itoa(pid)+" ") {
			return true
		}
	}
	return false
}

// TestFaultPluginKilled: the plugin is SIGKILLed. Its services live on; hbd
// notices at once and starts a new plugin, which adopts every live service
// (same PID, start time checked, flagged adopted) and reports the ones that
// died in the gap, which hbd respawns. Adopted services stay supervised: a
// later kill is seen and respawned as the new plugin's child. There is never
// more than one instance of a service, and every dead plugin is reaped.
func TestFaultPluginKilled(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "plugin-kill")
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%[1]q]
start_secs = "100ms"

[service.sleeper]
command    = "sleep infinity"
start_secs = "100ms"

[service.shell]
command    = ["sh", "-c", "while :; do sleep 1; done"]
start_secs = "100ms"

[service.gap]
command    = [%[1]q]
start_secs = "100ms"

[service.never]
command    = [%[1]q]
restart    = "never"
start_secs = "100ms"
`, h.HBClient))
	all := []string{"client", "sleeper", "shell", "gap", "never"}
	d := h.Start()
	census := watchInstances(h)
	h.WaitRunning(all...)
	plugin := pluginPID(h)

	// 1. The plugin dies; every service is adopted.
	rep.fault(t, func() {
		before := h.WaitRunning(all...)
		h.Kill(plugin, syscall.SIGKILL)
		old := plugin
		plugin = waitNewPlugin(h, old)
		d.WaitLog("plugin died")
		checkAdopted(h, before, plugin)
		h.waitReaped(old, "the killed plugin")
		rep.addRestarted(countRestarted(h, before, all...))
	})

	// 2. The plugin dies, and two services die before a new plugin can
	// look: hbd is stopped meanwhile, so the gap is certain.
	rep.fault(t, func() {
		before := h.WaitRunning(all...)
		h.StopProcess(d.PID)
		h.Kill(plugin, syscall.SIGKILL)
		h.WaitGone(plugin)
		h.Kill(before["gap"].PID, syscall.SIGKILL)
		h.Kill(before["never"].PID, syscall.SIGKILL)
		h.WaitGone(before["gap"].PID)
		h.WaitGone(before["never"].PID)
		d.Signal(syscall.SIGCONT)
		old := plugin
		plugin = waitNewPlugin(h, old)

		live := map[string]api.ServiceStatus{}
		for _, n := range []string{"client", "sleeper", "shell"} {
			live[n] = before[n]
		}
		checkAdopted(h, live, plugin)
		gb := before["gap"]
		st := h.WaitService("gap", "respawned after dying in the gap", func(st api.ServiceStatus) bool {
			return IsRunning(st) && st.Generation == gb.Generation+1
		})
		if st.Exits != gb.Exits+1 || st.Adopted {
			rep.addLost(1)
			t.Errorf("gap after dying in the gap: %+v; want exits %d, not adopted", st, gb.Exits+1)
		}
		if ps, err := readStat(st.PID); err != nil || ps.PPID != plugin {
			t.Errorf("gap's new incarnation %d: parent %d (%v); want the new plugin %d", st.PID, ps.PPID, err, plugin)
		}
		if s := h.Slot("gap"); s.LastPID != uint32(gb.PID) || s.PID != uint32(st.PID) || s.Flags&shm.SlotAdopted != 0 {
			t.Errorf("gap slot %+v; want last_pid %d, pid %d, not adopted", s, gb.PID, st.PID)
		}
		nb := before["never"]
		st = h.WaitService("never", "exited (restart never)", func(st api.ServiceStatus) bool { return st.State == "exited" })
		if st.PID != 0 || st.Exits != nb.Exits+1 || st.Generation != nb.Generation {
			rep.addLost(1)
			t.Errorf("never after dying in the gap: %+v; want pid 0, exits %d", st, nb.Exits+1)
		}
		if s := h.Slot("never"); s.PID != 0 || s.LastPID != uint32(nb.PID) || s.State != shm.StateExited {
			t.Errorf("never slot %+v; want pid 0, last_pid %d, exited", s, nb.PID)
		}
		for _, n := range []string{"gap", "never"} {
			if !reportsExit(d.Log(), n, before[n].PID) {
				rep.addLost(1)
				t.Errorf("hbd does not report the exit of %s (pid %d) in the gap:\n%s", n, before[n].PID, d.Log())
			}
		}
		h.waitReaped(old, "the killed plugin")
		rep.addRestarted(countRestarted(h, before, "client", "sleeper", "shell"))
		h.MustCtl("start", "never")
	})

	// 3. An adopted service dies: detected, slot to 0, respawned by hbd as
	// the new plugin's child.
	rep.fault(t, func() {
		before := h.WaitRunning(all...)
		sb := before["sleeper"]
		if h.Slot("sleeper").Flags&shm.SlotAdopted == 0 {
			t.Fatalf("sleeper is not adopted: %+v", h.Slot("sleeper"))
		}
		i := h.SlotIndex("sleeper")
		h.Kill(sb.PID, syscall.SIGKILL)
		pid, sawZero := h.WatchPID(i, uint32(sb.PID))
		// A reader spinning on the word normally sees the 0 between the
		// two PIDs; the table's record of the exit (last_pid, exits) is
		// checked below whether or not this one did.
		rep.note("reader_saw_slot_0", sawZero)
		st := h.WaitService("sleeper", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.PID == int(pid) })
		if st.Generation != sb.Generation+1 || st.Exits != sb.Exits+1 || st.Adopted {
			rep.addLost(1)
			t.Errorf("sleeper after its respawn: %+v; want generation %d, exits %d, not adopted", st, sb.Generation+1, sb.Exits+1)
		}
		if s := h.Slot("sleeper"); s.LastPID != uint32(sb.PID) || s.Flags&shm.SlotAdopted != 0 {
			t.Errorf("sleeper slot %+v; want last_pid %d, not adopted", s, sb.PID)
		}
		if ps, err := readStat(int(pid)); err != nil || ps.PPID != plugin {
			t.Errorf("sleeper's new incarnation %d: parent %d (%v); want the plugin %d", pid, ps.PPID, err, plugin)
		}
		rep.addRestarted(countRestarted(h, before, "client", "shell", "gap", "never"))
	})
	rep.note("census_scans", census.Stop(t))
}

// floodC makes unrelated exit events until SIGTERM: in bursts, children
// that exit at once and threads that end at once (the proc connector
// reports every thread's exit, and a thread is cheaper to make than a
// process). Then it reaps what is left and prints how many of each it made.
const floodC = `#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
static void *nop(void *arg) { return arg; }

int main(void)
{
	struct sigaction sa;
	unsigned long procs = 0, threads = 0;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGTERM, &sa, NULL);
	while (!stop) {
		pthread_t th[64];
		int nt = 0;
		for (int i = 0; i < 64; i++)
			if (pthread_create(&th[nt], NULL, nop, NULL) == 0)
				nt++;
		for (int i = 0; i < nt; i++)
			pthread_join(th[i], NULL);
		threads += nt;
		for (int i = 0; i < 16; i++) {
			pid_t p = fork();
			if (p == 0)
				_exit(0);
			if (p > 0)
				procs++;
		}
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
	while (wait(NULL) > 0)
		;
	printf("%lu %lu\n", procs, threads);
	return 0;
}
`

// TestFaultEventLoss: with the proc connector's receive buffer at the
// kernel's minimum (HB_CONNECTOR_RCVBUF), its socket filter off
// (HB_CONNECTOR_FILTER=off) and a flood of unrelated exits, the kernel
// drops exit events (ENOBUFS); the plugin resyncs, and every kill
// of a watched service still counts one exit and is respawned. It does not
// run in parallel: the flood is felt by every connector socket on the
// machine.
func TestFaultEventLoss(t *testing.T) {
	if err := connector.Available(); err != nil {
		t.Skipf("the proc connector is unavailable here: %v", err)
	}
	rep := newFaultReport(t, "event-loss")
	h := NewHarness(t, Options{Detector: "connector"})
	flood := compileC(t, h.Dir, "flood", floodC)
	names := []string{"w1", "w2", "w3", "w4"}
	var cfg strings.Builder
	for _, n := range names {
		fmt.Fprintf(&cfg, "[service.%s]\ncommand = [%q]\nstart_secs = \"50ms\"\n\n", n, h.HBClient)
	}
	h.WriteConfig(cfg.String())
	d := startHbdEnv(h, "HB_CONNECTOR_RCVBUF=1", "HB_CONNECTOR_FILTER=off")
	var rcvbuf int
	h.Eventually("the plugin to log its receive buffer", func() (bool, string) {
		m := regexp.MustCompile(`"msg":"shim started".*"rcvbuf":(\d+)`).FindStringSubmatch(h.PluginLog())
		if m == nil {
			return false, tail(h.PluginLog(), 3)
		}
		rcvbuf, _ = strconv.Atoi(m[1])
		return true, ""
	})
	if rcvbuf <= 0 || rcvbuf > 64<<10 {
		t.Fatalf("HB_CONNECTOR_RCVBUF=1: the connector's receive buffer is %d bytes; want the kernel's small minimum", rcvbuf)
	}
	rep.note("rcvbuf", rcvbuf)
	h.WaitRunning(names...)
	census := watchInstances(h)

	// Two flooders: one per core.
	type flooder struct {
		cmd *exec.Cmd
		out bytes.Buffer
	}
	var floods []*flooder
	stopFlood := func() (procs, threads uint64) {
		for _, f := range floods {
			f.cmd.Process.Signal(syscall.SIGTERM)
			f.cmd.Wait()
			var p, th uint64
			fmt.Sscan(f.out.String(), &p, &th)
			procs += p
			threads += th
		}
		floods = nil
		return procs, threads
	}
	t.Cleanup(func() { stopFlood() })
	for range 2 {
		f := &flooder{cmd: exec.Command(flood)}
		f.cmd.Stdout = &f.out
		if err := f.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		floods = append(floods, f)
	}
	const lostMsg = "exit events were lost"
	h.Eventually("events lost (ENOBUFS) and a resync, in the plugin log", func() (bool, string) {
		return strings.Contains(h.PluginLog(), lostMsg), ""
	})

	kills := map[string]int{}
	for round := 0; round < 8; round++ {
		rep.fault(t, func() {
			// All four at once, each after it ran start_secs (so that the
			// plugin respawns it at once, without a round trip to hbd),
			// once hbd has caught up with the table.
			cur := map[string]api.ServiceStatus{}
			for _, n := range names {
				s := h.Slot(n)
				cur[n] = h.WaitService(n, fmt.Sprintf("running as pid %d", s.PID), func(st api.ServiceStatus) bool {
					return IsRunning(st) && st.PID == int(s.PID) && st.Generation == s.Generation
				})
			}
			for _, n := range names {
				h.Kill(cur[n].PID, syscall.SIGKILL)
				kills[n]++
			}
			for _, n := range names {
				b := cur[n]
				h.WaitSlot(n, fmt.Sprintf("kill %d seen and respawned", kills[n]), func(s shm.Slot) bool {
					return s.PID != 0 && s.PID != uint32(b.PID) && s.Generation == b.Generation+1 && s.Exits == b.Exits+1
				})
			}
		})
	}
	forks, threads := stopFlood()
	census.Stop(t)
	resyncs := len(Lines(h.PluginLog(), lostMsg))
	for _, n := range names {
		// The last round waited for the table only: hbd hears of the last
		// exit and respawn through the plugin's events, which may still be
		// on their way. A count that stays short is a lost exit.
		var st api.ServiceStatus
		for deadline := time.Now().Add(WaitTimeout); ; time.Sleep(10 * time.Millisecond) {
			st = h.WaitService(n, "running", IsRunning)
			if st.Exits >= uint64(kills[n]) || time.Now().After(deadline) {
				break
			}
		}
		s := h.Slot(n)
		if st.Exits != uint64(kills[n]) || s.Exits != uint64(kills[n]) || st.Generation != uint64(kills[n])+1 {
			rep.addLost(max(kills[n]-int(min(st.Exits, s.Exits)), 1))
			t.Errorf("%s: %d kills; hbd counts %d exits (generation %d), the table %d", n, kills[n], st.Exits, st.Generation, s.Exits)
		}
	}
	rep.note("unrelated_process_exits", forks)
	rep.note("unrelated_thread_exits", threads)
	rep.note("resyncs", resyncs)
	rep.note("watched_exits_found_by_resync", len(Lines(d.Log(), "source=resync")))
	if forks == 0 || threads == 0 || resyncs == 0 {
		t.Errorf("the flood made %d processes and %d threads, and the plugin resynced %d times; want all > 0", forks, threads, resyncs)
	}
}

// TestFaultCrashLoop: a service that exits at once backs off, goes fatal
// after start_retries, and hbctl start clears that. hbd and the plugin burn
// no CPU meanwhile and leave the other services alone.
//
// The CPU check is a correctness bound, not a timing threshold: a respawn
// loop without backoff keeps hbd and the plugin busy, close to 100% of a
// core, however fast or slow the machine is. With backoff they sleep between
// attempts and use a small fraction of the wall time; the bound (CPU time of
// hbd + plugin < 50% of one core over the loop, measured from
// /proc/PID/stat) only separates those two regimes. A loaded machine makes
// the wall time longer and the ratio smaller, never larger.
func TestFaultCrashLoop(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "crash-loop")
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.crash]
command       = [%[1]q, "-e", "3"]
start_secs    = "1s"
start_retries = 5
backoff_max   = "800ms"

[service.steady]
command    = "sleep infinity"
start_secs = "100ms"

[service.client]
command    = [%[1]q]
start_secs = "100ms"
`, h.HBClient))
	d := h.Start()
	plugin := pluginPID(h)
	before := h.WaitRunning("steady", "client")
	isFatal := func(st api.ServiceStatus) bool { return st.State == "fatal" }

	// Round 1 starts with hbd; round 2 with hbctl start, and is measured
	// from start to end.
	const retries = 5
	var ticks uint64
	var wall time.Duration
	for round := 1; round <= 2; round++ {
		rep.fault(t, func() {
			t0, c0 := time.Now(), cpuTicks(t, d.PID)+cpuTicks(t, plugin)
			if round == 2 {
				// start clears fatal: the failure count starts again.
				h.MustCtl("start", "crash")
				if st := h.ServiceStatus("crash"); isFatal(st) || st.FailedStarts >= retries || st.Generation <= retries {
					t.Errorf("crash right after hbctl start: %+v; want it out of fatal, failures counted anew", st)
				}
			}
			n := uint64(retries * round)
			st := h.WaitService("crash", fmt.Sprintf("fatal after %d spawns", n), func(st api.ServiceStatus) bool {
				return isFatal(st) && st.Generation == n
			})
			if round == 2 {
				ticks = cpuTicks(t, d.PID) + cpuTicks(t, plugin) - c0
				wall = time.Since(t0)
			}
			if st.PID != 0 || st.Exits != n || st.LastStatus != 3 || st.FailedStarts != retries ||
				!strings.Contains(st.Reason, fmt.Sprintf("%d times", retries)) {
				t.Errorf("crash: %+v; want pid 0, %d exits, last status 3, %d failed starts, a reason naming them", st, n, retries)
			}
			if s := h.SlotInState("crash", shm.StateFatal); s.PID != 0 || s.Exits != n {
				t.Errorf("crash slot %+v; want pid 0, fatal, %d exits", s, n)
			}
			rep.addRestarted(countRestarted(h, before, "steady", "client"))
		})
	}
	share := float64(ticks) / userHZ / wall.Seconds()
	rep.note("cpu_share_of_one_core", fmt.Sprintf("%.3f", share))
	t.Logf("crash loop: hbd+plugin used %d ticks (%.2fs) of CPU over %v", ticks, float64(ticks)/userHZ, wall.Round(time.Millisecond))
	if share >= 0.5 {
		t.Errorf("hbd and the plugin used %.0f%% of a core during the crash loops (%d ticks over %v): a respawn spin",
			100*share, ticks, wall)
	}
}

// hostileInput is one bad configuration.
type hostileInput struct {
	name string
	text string
	// want is a substring of hbd --check's output.
	want string
}

// hostileInputs are malformed or hostile configuration files. Each is
// rejected by hbd --check with a clear error, within the bounded wait.
func hostileInputs(h *Harness) []hostileInput {
	svc := fmt.Sprintf("[service.a]\ncommand = [%q]\n", h.HBClient)
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(rng.UintN(256))
	}
	many := strings.Repeat(`"x", `, 50000)
	return []hostileInput{
		{"syntax error", "[service.a\ncommand = \"x\"\n", "hb.toml:2:"},
		{"unterminated string", svc + "[service.b]\ncommand = \"sleep\n", "hb.toml:4:"},
		{"misspelt key", svc + "comand = \"x\"\n", `unknown key "comand"`},
		{"wrong type", "[service.a]\ncommand = 42\n", `service "a"`},
		{"duplicate table", svc + svc, "hb.toml:3:"},
		{"array of tables", "[[service.a]]\ncommand = \"x\"\n", `service`},
		{"bad values", svc + "restart = \"sometimes\"\nstart_secs = \"-1s\"\nstop_signal = \"SIGFOO\"\nbackoff_max = \"99999999999h\"\n", `restart`},
		{"bad [hbd]", "[hbd]\nslots = -1\ndetector = \"x\"\n" + svc, `slots`},
		{"name with a space", "[service.\"a b\"]\ncommand = \"x\"\n", `"a b"`},
		{"name with a slash", "[service.\"../../etc\"]\ncommand = \"x\"\n", `../../etc`},
		{"name too long", fmt.Sprintf("[service.%s]\ncommand = \"x\"\n", strings.Repeat("n", 48)), strings.Repeat("n", 48)},
		{"name not ASCII", "[service.\"ä\"]\ncommand = \"x\"\n", `service`},
		{"empty name", "[service.\"\"]\ncommand = \"x\"\n", `service`},
		{"NUL in a string", "[service.a]\ncommand = \"a\x00b\"\n", "hb.toml:2:"},
		{"NUL in a key", "[service.\x00]\ncommand = \"x\"\n", "hb.toml:1:"},
		{"NUL first", "\x00" + svc, "hb.toml:1:"},
		{"invalid UTF-8", "[service.a]\ncommand = \"\xff\xfe\"\n", "hb.toml:2:"},
		{"binary garbage", string(garbage), "hb.toml:"},
		{"huge array", svc + "[service.b]\ncommand = [" + many + "\"y\"]\nbogus = 1\n", `unknown key "bogus"`},
		{"deeply nested arrays", svc + "bogus = " + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + "\n", "nested more than"},
		{"nested inline tables", svc + "bogus = " + strings.Repeat("{a=", 100) + "1" + strings.Repeat("}", 100) + "\n", "nested more than"},
		{"deep table header", svc + "[" + strings.TrimSuffix(strings.Repeat("x.", 500), ".") + "]\n", "nested more than"},
		{"very long line", "# " + strings.Repeat("#", 1<<20) + "\n" + svc + "comand = 1\n", "hb.toml:4:"},
		{"very long value", "[service.a]\ncommand = [\"/nonexistent/" + strings.Repeat("v", 1<<20) + "\"]\nbogus = 1\n", `unknown key "bogus"`},
		{"many errors", strings.Repeat("[service.\"bad name\"]\ncomand = 1\n", 2000), `bad name`},
		{"include of what does not exist", "include = [\"/nonexistent/hb/*.toml\", 7]\n" + svc, "include"},
	}
}

// TestFaultBadConfig: malformed and hostile configuration files are
// rejected by hbd --check, by hbctl reload and by SIGHUP, each with an
// error naming the file and line, and the running services are not
// disturbed. The FuzzParse seed corpus of host/config runs too.
func TestFaultBadConfig(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "bad-config")
	h := NewHarness(t, Options{})
	good := fmt.Sprintf(`
[service.a]
command    = [%q]
start_secs = "100ms"

[service.b]
command    = "sleep infinity"
start_secs = "100ms"
`, h.HBClient)
	h.WriteConfig(good)
	d := h.Start()
	before := h.WaitRunning("a", "b")
	inputs := hostileInputs(h)
	lineRe := regexp.MustCompile(regexp.QuoteMeta(h.Config) + `:\d+: `)

	for _, in := range inputs {
		h.Run(in.name, func(t *testing.T) {
			rep.addInputs(1)
			rep.fault(t, func() {
				// The in-process parser keeps FuzzParse's promises on it.
				cfg, err := config.Parse(h.Config, []byte(in.text))
				var errs config.Errors
				switch {
				case err == nil && cfg.Validate() != nil:
					t.Errorf("Parse accepts what Validate rejects: %v", cfg.Validate())
				case err != nil && (!errors.As(err, &errs) || len(errs) == 0):
					t.Errorf("Parse error is %T %v; want a non-empty config.Errors", err, err)
				}

				// hbd --check, on a file of its own.
				h.WriteFile(h.Config, in.text)
				r := h.run(h.HBD, "--check", "-c", h.Config)
				out := r.Stdout + r.Stderr
				if r.Code != 1 || !strings.Contains(out, in.want) || strings.Contains(out, "goroutine ") {
					t.Errorf("hbd --check: exit %d; want 1 and %q in:\n%s", r.Code, in.want, tail(out, 10))
				}
				if err != nil && !lineRe.MatchString(out) {
					t.Errorf("hbd --check does not say file:line:\n%s", tail(out, 10))
				}
				// A reload of a file that does not load is rejected; the
				// running configuration stays.
				if err != nil {
					rl := h.Ctl("reload")
					if rl.Code != 1 || !strings.Contains(rl.Stdout+rl.Stderr, "reload") {
						t.Errorf("hbctl reload: %v", rl)
					}
				}
				h.WriteConfig(good)
			})
		})
	}

	h.Run("SIGHUP", func(t *testing.T) {
		rep.addInputs(1)
		rep.fault(t, func() {
			n := len(Lines(d.Log(), "reload rejected"))
			h.WriteFile(h.Config, inputs[0].text)
			d.Signal(syscall.SIGHUP)
			h.Eventually("hbd to reject the reload by SIGHUP", func() (bool, string) {
				return len(Lines(d.Log(), "reload rejected")) > n, ""
			})
			h.WriteConfig(good)
		})
	})
	if got := h.MustCtl("health"); !strings.Contains(got, "ok") {
		t.Errorf("hbd health after the bad configurations: %s", got)
	}
	rep.addRestarted(countRestarted(h, before, "a", "b"))

	h.Run("FuzzParse seed corpus", func(t *testing.T) {
		goTool, err := exec.LookPath("go")
		if err != nil {
			t.Skipf("no go tool to run host/config's FuzzParse: %v", err)
		}
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "test", "-count=1", "-run", "^FuzzParse$", "-v", "./host/config/")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS: FuzzParse")) {
			t.Errorf("go test -run FuzzParse ./host/config: %v\n%s", err, out)
		}
		seeds := len(regexp.MustCompile(`(?m)^\s+--- PASS: FuzzParse/`).FindAll(out, -1))
		rep.addInputs(seeds)
		rep.note("fuzz_seeds", seeds)
	})
}

// TestFaultBadConfigLimits: hostile configurations that would make a naive
// loader hang or exhaust memory are refused quickly with a clear error.
func TestFaultBadConfigLimits(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	svc := fmt.Sprintf("[service.a]\ncommand = [%q]\n", h.HBClient)
	check := func(t *testing.T, text, want string) {
		h.WriteFile(h.Config, text)
		// Capped address space: a runaway read fails instead of taking
		// the machine's memory.
		r := h.run("sh", "-c", `ulimit -v 4000000; exec "$0" --check -c "$1"`, h.HBD, h.Config)
		if out := r.Stdout + r.Stderr; r.Code != 1 || !strings.Contains(out, want) {
			t.Errorf("hbd --check: exit %d; want 1 and %q in:\n%s", r.Code, want, tail(out, 10))
		}
	}
	h.Run("deeply nested inline tables", func(t *testing.T) {
		check(t, svc+"bogus = "+strings.Repeat("{a=", 2000)+"1"+strings.Repeat("}", 2000)+"\n", "nest")
	})
	h.Run("include of a device", func(t *testing.T) {
		check(t, "include = [\"/dev/zero\"]\n"+svc, "/dev/zero")
	})
}

// TestFaultBadService: services that cannot run (no such command, not
// executable, a directory, an unknown user) and a service that does not fit
// in the table go fatal with a clear reason; hbd --check names the same
// problems; bad names are refused by the control API; the services that can
// run are not disturbed.
func TestFaultBadService(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "bad-service")
	h := NewHarness(t, Options{})
	noexec := filepath.Join(h.Dir, "noexec.sh")
	h.WriteFile(noexec, "#!/bin/sh\nexec sleep 1000\n")
	h.WriteConfig(fmt.Sprintf(`
[service.a]
command    = [%q]
start_secs = "100ms"

[service.missing]
command = ["/nonexistent/hb-no-such-command"]

[service.unfound]
command = "hb-no-such-command-in-path"

[service.noexec]
command = [%q]

[service.isdir]
command = [%q]

[service.nouser]
command = "sleep infinity"
user    = "hb-no-such-user"
`, h.HBClient, noexec, h.Dir))
	bad := map[string]string{ // service -> what its reason must say
		"missing": "/nonexistent/hb-no-such-command",
		"unfound": "hb-no-such-command-in-path",
		"noexec":  "noexec.sh",
		"isdir":   h.Dir,
		"nouser":  "hb-no-such-user",
	}
	rep.addInputs(len(bad))
	h.Run("check", func(t *testing.T) {
		r := h.run(h.HBD, "--check", "-c", h.Config)
		for name, want := range bad {
			if !slices.ContainsFunc(Lines(r.Stdout+r.Stderr, `service "`+name+`"`), func(l string) bool {
				return strings.Contains(l, want) && strings.HasPrefix(l, h.Config+":")
			}) {
				t.Errorf("hbd --check does not name %s's problem (%q):\n%s%s", name, want, r.Stdout, r.Stderr)
			}
		}
		if r.Code != 1 {
			t.Errorf("hbd --check: exit %d, want 1", r.Code)
		}
	})
	h.Start()
	before := h.WaitRunning("a")
	for name, want := range bad {
		rep.fault(t, func() {
			st := h.WaitService(name, "fatal", func(st api.ServiceStatus) bool { return st.State == "fatal" })
			if st.PID != 0 || !strings.Contains(st.Reason, want) || !strings.Contains(st.Reason, "spawn failed") {
				t.Errorf("%s: %+v; want fatal, a reason naming %q", name, st, want)
			}
			// Asking again fails the same way, with the reason.
			r := h.Ctl("start", name)
			if r.Code != 1 || !strings.Contains(r.Stderr, want) {
				t.Errorf("hbctl start %s: %v", name, r)
			}
			if st := h.ServiceStatus(name); st.State != "fatal" {
				t.Errorf("%s after hbctl start: %+v", name, st)
			}
		})
	}
	for _, name := range []string{strings.Repeat("n", 48), "a b", "../a", "a/b", "ä"} {
		rep.addInputs(1)
		rep.fault(t, func() {
			if r := h.Ctl("stop", name); r.Code != 1 || !strings.Contains(r.Stderr, "no service") {
				t.Errorf("hbctl stop %q: %v", name, r)
			}
		})
	}
	rep.addRestarted(countRestarted(h, before, "a"))

	h.Run("full table", func(t *testing.T) {
		rep.addInputs(1)
		rep.fault(t, func() {
			h2 := NewHarness(t, Options{Slots: 2})
			h2.WriteConfig(`
[service.s1]
command    = "sleep infinity"
start_secs = "100ms"

[service.s2]
command    = "sleep infinity"
start_secs = "100ms"

[service.s3]
command    = "sleep infinity"
start_secs = "100ms"
`)
			h2.Start()
			b2 := h2.WaitRunning("s1", "s2")
			st := h2.WaitService("s3", "fatal", func(st api.ServiceStatus) bool { return st.State == "fatal" })
			if st.PID != 0 || !strings.Contains(st.Reason, "full") {
				t.Errorf("s3 with the table full: %+v; want fatal, a reason saying the table is full", st)
			}
			if r := h2.Ctl("start", "s3"); r.Code != 1 || !strings.Contains(r.Stderr, "full") {
				t.Errorf("hbctl start s3: %v", r)
			}
			if _, err := h2.Table().Lookup("s3"); !errors.Is(err, shm.ErrNotFound) {
				t.Errorf("s3 in the table: %v", err)
			}
			rep.addRestarted(countRestarted(h2, b2, "s1", "s2"))
		})
	})
}

// apiCase is one bad request to the control API.
type apiCase struct {
	name, method, path, ctype, body string
	header                          http.Header
	want                            int
}

// TestFaultBadAPI: malformed, unknown and oversized requests get a clear
// 4xx answer, garbage on the socket is answered 400, and a peer that is
// neither root nor hbd's user nor in socket_group cannot act (403, even
// with the socket file opened to everyone); nothing running is disturbed.
func TestFaultBadAPI(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "bad-api")
	h := NewHarness(t, Options{LogLevel: "debug"})
	h.WriteConfig(fmt.Sprintf(`
[service.a]
command    = [%q]
start_secs = "100ms"

[service.b]
command    = "sleep infinity"
start_secs = "100ms"
`, h.HBClient))
	d := h.Start()
	before := h.WaitRunning("a", "b")
	big := `{"names":["a"],"pad":"` + strings.Repeat("x", api.MaxBodyBytes+1) + `"}`
	cases := []apiCase{
		{name: "unknown route", method: "GET", path: "/v1/nope", want: 404},
		{name: "unknown version", method: "GET", path: "/v2/services", want: 404},
		{name: "wrong method", method: "DELETE", path: "/v1/services", want: 405},
		{name: "GET on an action", method: "GET", path: "/v1/stop", want: 405},
		{name: "unknown service", method: "POST", path: "/v1/services/nope/stop", want: 404},
		{name: "name too long", method: "POST", path: "/v1/services/" + strings.Repeat("n", 48) + "/stop", want: 404},
		{name: "dot-dot name", method: "POST", path: "/v1/services/%2e%2e/stop", want: 404},
		{name: "escaped slash", method: "POST", path: "/v1/services/a%2fb/stop", want: 404},
		{name: "malformed JSON", method: "POST", path: "/v1/stop", ctype: "application/json", body: `{"names": [`, want: 400},
		{name: "wrong JSON type", method: "POST", path: "/v1/stop", body: `{"names":"a"}`, want: 400},
		{name: "unknown field", method: "POST", path: "/v1/stop", body: `{"names":["a"],"force":true}`, want: 400},
		{name: "trailing data", method: "POST", path: "/v1/stop", body: `{"names":["a"]} {"all":true}`, want: 400},
		{name: "names and all", method: "POST", path: "/v1/stop", body: `{"names":["a"],"all":true}`, want: 400},
		{name: "empty body", method: "POST", path: "/v1/stop", want: 400},
		{name: "unknown name in a list", method: "POST", path: "/v1/stop", body: `{"names":["a","nope"]}`, want: 404},
		{name: "oversized body", method: "POST", path: "/v1/stop", body: big, want: 413},
		{name: "bad signal", method: "POST", path: "/v1/services/a/signal", body: `{"signal":"NOPE"}`, want: 400},
		{name: "signal number out of range", method: "POST", path: "/v1/services/a/signal", body: `{"signal":"999"}`, want: 400},
		{name: "NUL in a name", method: "POST", path: "/v1/services/a%00/stop", want: 404},
		{name: "oversized header", method: "GET", path: "/v1/services", want: 431,
			header: http.Header{"X-Pad": {strings.Repeat("h", 64<<10)}}},
	}
	for _, c := range cases {
		rep.addInputs(1)
		rep.fault(t, func() {
			var body *strings.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			} else {
				body = strings.NewReader("")
			}
			code, resp := rawHTTP(t, h.Socket, c.method, c.path, c.ctype, body, c.header)
			if code != c.want {
				t.Errorf("%s: %s %s: %d %s; want %d", c.name, c.method, c.path, code, tail(resp, 3), c.want)
			}
			if code != 431 {
				var e api.Error
				if err := json.Unmarshal([]byte(resp), &e); err != nil || e.Error == "" {
					t.Errorf("%s: answer %q is not an error object: %v", c.name, tail(resp, 3), err)
				}
			}
		})
	}
	for name, payload := range map[string][]byte{
		"garbage":         []byte("\x00\x01\x02 GARBAGE\r\n\r\n"),
		"half a request":  []byte("POST /v1/stop HTTP/1.1\r\nHost: hb\r\nContent-Length: 100\r\n\r\n{\"na"),
		"bad HTTP method": []byte("ST\x00P /v1/stop HTTP/1.1\r\nHost: hb\r\n\r\n"),
	} {
		rep.addInputs(1)
		rep.fault(t, func() {
			out := rawConn(t, h.Socket, payload)
			if name != "half a request" && !strings.HasPrefix(out, "HTTP/1.1 400") {
				t.Errorf("%s: answer %q; want 400", name, tail(out, 3))
			}
		})
	}

	h.Run("unprivileged peer", func(t *testing.T) {
		RequireRoot(t, "running a client as uid 65534")
		// Let uid 65534 reach the socket: the directory may be entered,
		// hbctl is copied where it may be run.
		if err := os.Chmod(h.Dir, 0o711); err != nil {
			t.Fatal(err)
		}
		hbctl := publicCopy(t, filepath.Join(h.Dir, "pub"), h.HBCtl)
		const nobody = 65534
		rep.addInputs(1)
		rep.fault(t, func() {
			// The socket's mode (0660, root) keeps it out at connect.
			_, stderr, code := runAs(t, nobody, nobody, hbctl, "-s", h.Socket, "stop", "a")
			if code != 3 || !strings.Contains(stderr, "permission denied") {
				t.Errorf("hbctl stop as uid %d: exit %d %q; want 3, permission denied", nobody, code, stderr)
			}
		})
		// With the file opened to everyone, hbd itself refuses (SO_PEERCRED).
		if err := os.Chmod(h.Socket, 0o666); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(h.Socket, api.SocketMode)
		rep.addInputs(1)
		rep.fault(t, func() {
			_, stderr, code := runAs(t, nobody, nobody, hbctl, "-s", h.Socket, "stop", "a")
			// hbd answers 403; hbctl prints hbd's message and exits 1.
			if code != 1 || !strings.Contains(stderr, "permission denied: uid 65534") {
				t.Errorf("hbctl stop as uid %d through a 0666 socket: exit %d %q; want 1 and hbd's 403 message", nobody, code, stderr)
			}
		})
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Logf("no curl: %v", err)
			return
		}
		for _, req := range [][]string{
			{"-X", "POST", "-d", `{"all":true}`, "http://hb/v1/stop"},
			{"-X", "POST", "http://hb/v1/services/b/signal", "-d", `{"signal":"KILL"}`},
			{"-X", "POST", "http://hb/v1/reload"},
			{"http://hb/v1/services"},
		} {
			rep.addInputs(1)
			rep.fault(t, func() {
				out, stderr, code := runAs(t, nobody, nobody, curl, append([]string{"-sS", "-w", "\n%{http_code}",
					"--unix-socket", h.Socket}, req...)...)
				if code != 0 || !strings.HasSuffix(out, "\n403") || !strings.Contains(out, "permission denied") {
					t.Errorf("curl %q as uid %d: exit %d, %q %q; want 403", req, nobody, code, out, stderr)
				}
			})
		}
		if l := Lines(d.Log(), "api: request refused"); !slices.ContainsFunc(l, func(s string) bool {
			return strings.Contains(s, "peer_uid=65534")
		}) {
			t.Errorf("hbd does not log the refused requests: %q", l)
		}
	})
	rep.addRestarted(countRestarted(h, before, "a", "b"))
	if r := h.Ctl("health"); r.Code != 0 {
		t.Errorf("hbd after the bad requests: %v", r)
	}
}

// refusedStart runs hbd, expects it to exit 1 with every string of want in
// its log, and checks that it started nothing and left no socket.
func refusedStart(h *Harness, want ...string) {
	h.T.Helper()
	d := h.StartProcess()
	code := d.Wait()
	if code != 1 {
		h.T.Errorf("hbd: exit %d, want 1:\n%s", code, d.Log())
	}
	for _, w := range want {
		if !strings.Contains(d.Log(), w) {
			h.T.Errorf("hbd's error does not say %q:\n%s", w, d.Log())
		}
	}
	if left := h.Leftovers(); len(left) > 0 {
		h.T.Errorf("a refused hbd left processes: %v", left)
	}
}

// TestFaultBadShm: a pre-existing /dev/shm/<name> that is a symlink, owned
// by another user or writable by others makes hbd refuse to start with an
// error naming the path; the symlink is not followed and nothing is touched.
func TestFaultBadShm(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "bad-shm")
	svc := "[service.a]\ncommand = \"sleep infinity\"\nstart_secs = \"100ms\"\n"

	h := NewHarness(t, Options{})
	h.Run("symlink", func(t *testing.T) {
		rep.addInputs(1)
		rep.fault(t, func() {
			h.WriteConfig(svc)
			target := filepath.Join(h.Dir, "precious")
			h.WriteFile(target, "precious data\n")
			if err := os.Chmod(target, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, h.ShmPath); err != nil {
				t.Fatal(err)
			}
			tb, lb := readFileState(t, target), readFileState(t, h.ShmPath)
			refusedStart(h, h.ShmPath, "symlink")
			if ta, la := readFileState(t, target), readFileState(t, h.ShmPath); ta != tb || la != lb {
				t.Errorf("touched: target %+v -> %+v, link %+v -> %+v", tb, ta, lb, la)
			}
			if _, err := os.Lstat(h.Socket); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket left behind: %v", err)
			}
		})
	})

	h2 := NewHarness(t, Options{})
	h2.Run("another user's", func(t *testing.T) {
		RequireRoot(t, "giving a file to another user")
		rep.addInputs(1)
		rep.fault(t, func() {
			h2.WriteConfig(svc)
			h2.WriteFile(h2.ShmPath, strings.Repeat("not a table\n", 100))
			if err := os.Chown(h2.ShmPath, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			b := readFileState(t, h2.ShmPath)
			refusedStart(h2, h2.ShmPath, "owned by another user")
			if a := readFileState(t, h2.ShmPath); a != b {
				t.Errorf("touched: %+v -> %+v", b, a)
			}
		})
	})

	h3 := NewHarness(t, Options{})
	h3.Run("world-writable", func(t *testing.T) {
		rep.addInputs(1)
		rep.fault(t, func() {
			// A real table, left by a clean stop, then opened to everyone.
			h3.WriteConfig(svc)
			h3.Start()
			h3.WaitRunning("a")
			h3.hbds[len(h3.hbds)-1].Stop()
			if err := os.Chmod(h3.ShmPath, 0o666); err != nil {
				t.Fatal(err)
			}
			b := readFileState(t, h3.ShmPath)
			refusedStart(h3, h3.ShmPath, "writable by group or others")
			if a := readFileState(t, h3.ShmPath); a != b {
				t.Errorf("touched: %+v -> %+v", b, a)
			}
		})
	})
}

// TestFaultBadSocket: a socket path that is a symlink or a regular file, or
// lies in a symlinked directory, makes hbd refuse to start with an error
// naming it; the file is left as it was and no plugin is started.
func TestFaultBadSocket(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "bad-socket")
	svc := "[service.a]\ncommand = \"sleep infinity\"\n"
	for _, c := range []struct {
		name string
		make func(h *Harness) (watch string)
		want []string // in hbd's error, besides the socket's directory
	}{
		{"symlink", func(h *Harness) string {
			target := filepath.Join(h.Dir, "precious")
			h.WriteFile(target, "precious data\n")
			if err := os.Symlink(target, h.Socket); err != nil {
				h.T.Fatal(err)
			}
			return target
		}, []string{"is a symlink", "not touching it"}},
		{"regular file", func(h *Harness) string {
			h.WriteFile(h.Socket, "precious data\n")
			return h.Socket
		}, []string{"not a socket", "not touching it"}},
		{"symlinked directory", func(h *Harness) string {
			real := filepath.Join(h.Dir, "real")
			if err := os.Mkdir(real, 0o755); err != nil {
				h.T.Fatal(err)
			}
			link := filepath.Join(h.Dir, "link")
			if err := os.Symlink(real, link); err != nil {
				h.T.Fatal(err)
			}
			h.Socket = filepath.Join(link, "hbd.sock")
			return real
		}, []string{"socket directory", "is a symlink"}},
	} {
		h := NewHarness(t, Options{})
		h.Run(c.name, func(t *testing.T) {
			rep.addInputs(1)
			rep.fault(t, func() {
				watch := c.make(h)
				h.WriteConfig(svc)
				var b fileState
				if fi, err := os.Stat(watch); err == nil && !fi.IsDir() {
					b = readFileState(t, watch)
				}
				lb := readFileState(t, filepath.Dir(h.Socket))
				refusedStart(h, append([]string{filepath.Dir(h.Socket)}, c.want...)...)
				if fi, err := os.Stat(watch); err == nil && !fi.IsDir() {
					if a := readFileState(t, watch); a != b {
						t.Errorf("touched %s: %+v -> %+v", watch, b, a)
					}
				} else if ents, _ := os.ReadDir(watch); len(ents) > 0 {
					t.Errorf("hbd created %v in %s", ents, watch)
				}
				if la := readFileState(t, filepath.Dir(h.Socket)); la.Link != lb.Link {
					t.Errorf("touched %s", filepath.Dir(h.Socket))
				}
				if _, err := os.Lstat(h.ShmPath); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("a plugin was started: %s exists (%v)", h.ShmPath, err)
				}
			})
		})
	}
}

// watchEvents runs hbctl watch --json in the background until hbd goes
// away, and waits until it is subscribed (it has printed a reload event
// that the harness asked for).
func watchEvents(h *Harness) (events func() []api.Event) {
	h.T.Helper()
	cmd := exec.Command(h.HBCtl, "-s", h.Socket, "watch", "--json")
	cmd.Env = append(os.Environ(), "HB_SHM="+h.Shm)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		h.T.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	h.T.Cleanup(func() { cmd.Process.Kill(); <-done })
	last := time.Time{}
	h.Eventually("hbctl watch to see events", func() (bool, string) {
		if strings.Contains(out.String(), `"kind":"reload"`) {
			return true, ""
		}
		if time.Since(last) > 200*time.Millisecond {
			h.MustCtl("reload")
			last = time.Now()
		}
		return false, out.String()
	})
	return func() []api.Event {
		h.T.Helper()
		select {
		case <-done:
		case <-time.After(WaitTimeout):
			h.T.Fatalf("hbctl watch still running %v after hbd stopped:\n%s", WaitTimeout, out.String())
		}
		var evs []api.Event
		for _, l := range strings.Split(out.String(), "\n") {
			var ev api.Event
			if json.Unmarshal([]byte(l), &ev) == nil && ev.Kind != "" {
				evs = append(evs, ev)
			}
		}
		return evs
	}
}

// exitStatuses returns the status of each service's exit events, in order.
func exitStatuses(evs []api.Event) map[string][]int {
	out := map[string][]int{}
	for _, ev := range evs {
		if ev.Kind == api.EventExit {
			out[ev.Name] = append(out[ev.Name], ev.Status)
		}
	}
	return out
}

// checkNothingLeft fails the test if any process the harness saw (services,
// their children, the plugin) still exists in any form (zombies included),
// or the socket or plugin.json remain, or the table is not closed cleanly.
func checkNothingLeft(h *Harness) {
	h.T.Helper()
	if left := h.Leftovers(); len(left) > 0 {
		h.T.Errorf("processes left behind: %v", left)
	}
	for pid := range h.tracked {
		if h.stillThere(pid) {
			st, _ := readStat(pid)
			h.T.Errorf("pid %d (%s) is still in the process table, state %c, parent %d", pid, cmdline(pid), st.State, st.PPID)
		}
	}
	if _, err := os.Lstat(h.Socket); !errors.Is(err, fs.ErrNotExist) {
		h.T.Errorf("socket after the stop: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(h.StateDir, "plugin.json")); !errors.Is(err, fs.ErrNotExist) {
		h.T.Errorf("plugin.json after the stop: %v", err)
	}
	if hdr := h.Table().Header(); hdr.WriterPID != 0 {
		h.T.Errorf("writer_pid %d after the stop, want 0 (clean)", hdr.WriterPID)
	}
	for s := range h.Table().Used() {
		h.T.Errorf("slot left in the table: %+v", s)
	}
}

// spawnsDuringStop counts the services hbd or the plugin spawned after hbd
// began to stop everything: each is a restart nobody asked for.
func spawnsDuringStop(h *Harness, d *Hbd) int {
	h.T.Helper()
	log := d.Log()
	i := strings.Index(log, `msg="stopping every service"`)
	if i < 0 {
		h.T.Errorf("hbd did not log its stop:\n%s", log)
		return 0
	}
	spawns := Lines(log[i:], "msg=spawned")
	for _, l := range spawns {
		h.T.Errorf("spawned during the stop: %s", l)
	}
	return len(spawns)
}

// trackFamily records every live process of the harness's services
// (children included), so that checkNothingLeft checks their end.
func trackFamily(h *Harness) {
	for _, groups := range serviceGroups(h.ShmPath) {
		for _, pids := range groups {
			for _, pid := range pids {
				h.Track(pid)
			}
		}
	}
}

// TestFaultShutdown: SIGTERM stops every service within its stop_timeout
// (SIGTERM to its process group; SIGKILL only to one that outlives
// stop_timeout) and leaves no process, no zombie, no socket and a clean
// table; a second SIGTERM or SIGINT during the stop kills what is left at
// once.
func TestFaultShutdown(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "shutdown")
	h := NewHarness(t, Options{})
	h.Run("SIGTERM", func(t *testing.T) {
		rep.fault(t, func() {
			h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "100ms"

[service.stubborn]
command      = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
start_secs   = "100ms"
stop_timeout = "500ms"

[service.family]
command    = ["sh", "-c", "sleep 1001 & sleep 1002 & wait"]
start_secs = "100ms"

[service.slow]
command      = ["sh", "-c", "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done"]
start_secs   = "100ms"
stop_timeout = "1m"

[service.down]
command   = "sleep infinity"
autostart = false
`, h.HBClient))
			d := h.Start()
			pluginPID(h)
			h.WaitRunning("client", "stubborn", "family", "slow")
			h.Eventually("family's children", func() (bool, string) {
				g := serviceGroups(h.ShmPath)["family"]
				n := 0
				for _, pids := range g {
					n += len(pids)
				}
				return n == 3, fmt.Sprint(g)
			})
			trackFamily(h)
			events := watchEvents(h)
			d.Signal(syscall.SIGTERM)
			if code := d.Wait(); code != 0 {
				t.Fatalf("hbd exited %d after SIGTERM:\n%s", code, d.Log())
			}
			st := exitStatuses(events())
			want := map[string][]int{"client": {0}, "stubborn": {137}, "family": {143}, "slow": {0}}
			for name, w := range want {
				if !slices.Equal(st[name], w) {
					t.Errorf("%s: exit statuses %v during the stop; want %v", name, st[name], w)
				}
			}
			if st["down"] != nil {
				t.Errorf("down (never started) exited: %v", st["down"])
			}
			for _, l := range Lines(h.PluginLog(), "stop: timed out") {
				if !strings.Contains(l, `"service":"stubborn"`) {
					t.Errorf("SIGKILLed after stop_timeout although it stopped in time: %s", l)
				}
			}
			if l := Lines(h.PluginLog(), "stop: timed out"); len(l) != 1 {
				t.Errorf("stubborn was not SIGKILLed after its stop_timeout: %q", l)
			}
			rep.addRestarted(spawnsDuringStop(h, d))
			checkNothingLeft(h)
		})
	})

	for _, sigs := range [][2]syscall.Signal{{syscall.SIGTERM, syscall.SIGINT}, {syscall.SIGINT, syscall.SIGINT}, {syscall.SIGINT, syscall.SIGTERM}} {
		h := NewHarness(t, Options{})
		h.Run(fmt.Sprintf("%v then %v", sigs[0], sigs[1]), func(t *testing.T) {
			rep.fault(t, func() {
				h.WriteConfig(fmt.Sprintf(`
[service.client]
command    = [%q]
start_secs = "100ms"

[service.stubborn]
command      = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
start_secs   = "100ms"
stop_timeout = "1h"
`, h.HBClient))
				d := h.Start()
				pluginPID(h)
				h.WaitRunning("client", "stubborn")
				trackFamily(h)
				events := watchEvents(h)
				// Stopped in reverse order: stubborn first, and it waits.
				d.Signal(sigs[0])
				h.WaitService("stubborn", "stopping", func(st api.ServiceStatus) bool { return st.State == "stopping" })
				d.Signal(sigs[1])
				if code := d.Wait(); code != 0 {
					t.Fatalf("hbd exited %d after %v and %v:\n%s", code, sigs[0], sigs[1], d.Log())
				}
				if !strings.Contains(d.Log(), "second signal") {
					t.Errorf("hbd did not log the forced stop:\n%s", d.Log())
				}
				if st := exitStatuses(events()); !slices.Equal(st["stubborn"], []int{137}) || len(st["client"]) != 1 {
					t.Errorf("exit statuses %v; want stubborn [137] and one exit of client", st)
				}
				rep.addRestarted(spawnsDuringStop(h, d))
				checkNothingLeft(h)
			})
		})
	}
}
