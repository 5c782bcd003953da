package shim

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// notifySend sends msg to $NOTIFY_SOCKET from this process (the kernel
// attaches its credentials).
func notifySend(msg string) bool {
	c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err == nil
}

// mainPIDLauncher is the "mainpid" helper (see runChild).
func mainPIDLauncher() int {
	v := os.Getenv("HB_TEST_MAINPID")
	if v == "handover" {
		return mainPIDHandover()
	}
	if v != "child" {
		if !notifySend("MAINPID=" + v + "\nREADY=1") {
			return 3
		}
		blockForever()
		return 0
	}
	exe, err := os.Executable()
	if err != nil {
		return 2
	}
	daemon := exec.Command(exe, "-test.run=^$")
	daemon.Env = append(os.Environ(), childModeEnv+"=mainpid-daemon")
	if err := daemon.Start(); err != nil {
		return 2
	}
	go func() {
		daemon.Wait()
		os.Exit(4) // the daemon died first (its test is over): no launcher left behind
	}()
	for {
		if _, err := os.Stat(os.Getenv("HB_TEST_OUT")); err == nil {
			return 0 // the daemon has said MAINPID=: exit without waiting for it
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// mainPIDHandover is the "mainpid" helper with $HB_TEST_MAINPID
// "handover": it says READY=1 itself, waits for $HB_TEST_GO to exist, then
// starts a mainpid-daemon that says MAINPID= alone, and stays.
func mainPIDHandover() int {
	if !notifySend("READY=1") {
		return 3
	}
	for {
		if _, err := os.Stat(os.Getenv("HB_TEST_GO")); err == nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	exe, err := os.Executable()
	if err != nil {
		return 2
	}
	daemon := exec.Command(exe, "-test.run=^$")
	daemon.Env = append(os.Environ(), childModeEnv+"=mainpid-daemon", "HB_TEST_DAEMON_MSG=MAINPID=%d")
	if err := daemon.Start(); err != nil {
		return 2
	}
	blockForever()
	return 0
}

// mainPIDDaemon is the "mainpid-daemon" helper (see runChild): it sends
// $HB_TEST_DAEMON_MSG (default "MAINPID=%d\nREADY=1", %d its PID).
func mainPIDDaemon() int {
	msg := os.Getenv("HB_TEST_DAEMON_MSG")
	if msg == "" {
		msg = "MAINPID=%d\nREADY=1"
	}
	if !notifySend(fmt.Sprintf(msg, os.Getpid())) {
		return 3
	}
	if err := writeFileAtomic(os.Getenv("HB_TEST_OUT"), strconv.Itoa(os.Getpid())); err != nil {
		return 2
	}
	blockForever()
	return 0
}

// mainPIDHarness is a Shim for ready "notify" services, with cgroups or
// not, whose notify sockets are read only once hold returns (nil: at
// once), and which calls cleared (if not nil) after each clear of a slot
// by the exit fast path.
func mainPIDHarness(t *testing.T, cgroups bool, hold func(), cleared func(pid int)) (*harness, *lockedBuffer, func() []clearRecord) {
	logs := &lockedBuffer{}
	var clears func() []clearRecord
	mod := func(o *Options) {
		o.StateDir = t.TempDir()
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		o.onNotifyRead = hold
		*o, clears = recordClears(*o)
		if record := o.onCleared; cleared != nil {
			o.onCleared = func(idx, pid int, c bool) {
				record(idx, pid, c)
				cleared(pid)
			}
		}
	}
	if cgroups {
		return cgroupHarnessWith(t, mod), logs, clears
	}
	dir := t.TempDir()
	opts := Options{ShmName: "t", ShmDir: dir, Slots: 16, Detector: connector.DetectAuto}
	mod(&opts)
	return openHarness(t, opts, dir), logs, clears
}

// containments are the two ways the plugin tells a service's processes:
// its process group, and its cgroup where the plugin has cgroups.
var containments = []struct {
	name    string
	cgroups bool
}{{"process-group", false}, {"cgroup", true}}

// TestNotifyMainPID: a ready "notify" service whose launcher forks the
// daemon, which says "MAINPID=<itself>\nREADY=1" over the notify socket
// (its own credentials), after which the launcher exits 0. The slot
// publishes the daemon, never the launcher; the launcher's exit is no
// death (no exit event, no exit in the slot) and the stray reaper reaps
// it; the daemon's SIGKILL clears the slot while it is still unreaped,
// is reaped by the exit path with its exact status, and the service is
// respawned per its policy. "exit first": the notify socket is read only
// once the launcher's exit has been detected, so the exit path must read
// the message before it judges that exit.
func TestNotifyMainPID(t *testing.T) {
	for _, c := range containments {
		for _, order := range []string{"message first", "exit first"} {
			t.Run(c.name+"/"+order, func(t *testing.T) {
				testNotifyMainPID(t, c.cgroups, order == "exit first")
			})
		}
	}
}

func testNotifyMainPID(t *testing.T, cgroups, exitFirst bool) {
	var launcher struct {
		sync.Mutex
		pid  int
		seen chan struct{} // closed once its exit was detected
	}
	launcher.seen = make(chan struct{})
	var hold func()
	if exitFirst {
		hold = func() { <-launcher.seen }
	}
	h, logs, clears := mainPIDHarness(t, cgroups, hold, func(pid int) {
		launcher.Lock()
		defer launcher.Unlock()
		if pid == launcher.pid && pid != 0 {
			select {
			case <-launcher.seen:
			default:
				close(launcher.seen)
			}
		}
	})
	var mu sync.Mutex
	strays := map[int]int{}
	reaper.mu.Lock()
	reaper.reaped = func(pid, st int) { mu.Lock(); strays[pid] = st; mu.Unlock() }
	reaper.mu.Unlock()
	t.Cleanup(func() { reaper.mu.Lock(); reaper.reaped = nil; reaper.mu.Unlock() })

	out := tempPath(t, "daemon.pid")
	spec := h.childSpec("mp", "mainpid", "HB_TEST_MAINPID=child", "HB_TEST_OUT="+out)
	spec.Ready = plugin.ReadyNotify
	spec.Respawn = plugin.Respawn{Enabled: true}
	// The launcher's PID is known before its exit can be detected: it
	// exits only once its daemon is up.
	launcher.Lock()
	res := h.spawn(spec)
	launcher.pid = res.PID
	launcher.Unlock()
	daemon, err := strconv.Atoi(strings.TrimSpace(readFile(t, out)))
	if err != nil {
		t.Fatal(err)
	}
	if ev := h.nextOf("mp"); ev.Kind != plugin.EventSpawn || ev.PID != res.PID {
		t.Fatalf("first event %+v; want the spawn of pid %d", ev, res.PID)
	}
	// The next events: the main process moved, then ready with it; no
	// exit of the launcher before or between.
	ad := h.nextOf("mp")
	if ad.Kind != plugin.EventAdopt || ad.PID != daemon || ad.Generation != res.Generation || !strings.Contains(ad.Message, "MAINPID=") {
		t.Fatalf("event %+v; want the adoption of the daemon (pid %d, generation %d) by MAINPID=\n%s", ad, daemon, res.Generation, logs)
	}
	ready := h.nextOf("mp")
	if ready.Kind != plugin.EventReady || ready.PID != daemon {
		t.Fatalf("event %+v; want ready with pid %d", ready, daemon)
	}
	start, err := shm.StartTime(daemon)
	if err != nil {
		t.Fatal(err)
	}
	if sl := h.slot(res.Slot); int(sl.PID) != daemon || sl.StartTime != start || sl.Generation != res.Generation || sl.Exits != 0 {
		t.Fatalf("slot %+v; want the daemon (pid %d, start time %d), generation %d, no exit", sl, daemon, start, res.Generation)
	}
	// The launcher exited 0 and was reaped as a stray, not as a death.
	stray := func(pid int) (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		st, ok := strays[pid]
		return st, ok
	}
	waitFor(t, "the stray reaper to reap the launcher", func() bool { _, ok := stray(res.PID); return ok })
	if st, _ := stray(res.PID); st != 0 || !gone(res.PID) {
		t.Errorf("the launcher (pid %d) reaped with status %d; want 0", res.PID, st)
	}
	os.Remove(out) // for the next incarnation's launcher
	if !cgroups {
		// Its process group lives on with the daemon: a stop reaches it.
		if pgid, err := unix.Getpgid(daemon); err != nil || pgid != res.PID {
			t.Fatalf("daemon's process group %d (%v), want %d", pgid, err, res.PID)
		}
	}
	// Now the daemon is our child (re-parented to this subreaper).
	if ps, err := readProcStat(daemon); err != nil || ps.PPID != os.Getpid() {
		t.Fatalf("daemon's parent %d (%v), want this process %d", ps.PPID, err, os.Getpid())
	}

	if err := unix.Kill(daemon, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ex := h.nextOf("mp")
	if ex.Kind != plugin.EventExit || ex.PID != daemon || ex.Status != 128+9 || !ex.Respawned || ex.Generation != res.Generation {
		t.Fatalf("event %+v; want the daemon's exit (pid %d, status 137), respawned", ex, daemon)
	}
	sp := h.nextOf("mp")
	if sp.Kind != plugin.EventSpawn || sp.Generation != res.Generation+1 {
		t.Fatalf("event %+v; want the respawn (generation %d)", sp, res.Generation+1)
	}
	if sl := h.slot(res.Slot); sl.Exits != 1 || sl.LastPID != uint32(daemon) || sl.LastStatus != 137 || sl.Generation != sp.Generation {
		t.Fatalf("slot %+v; want one exit, of the daemon (137), and the respawn's generation", sl)
	}
	var daemonClear *clearRecord
	for _, r := range clears() {
		if r.pid == res.PID && r.cleared {
			t.Errorf("the launcher's exit cleared the slot: %+v", r)
		}
		if r.pid == daemon {
			daemonClear = &r
		}
	}
	if daemonClear == nil || !daemonClear.cleared || !daemonClear.zombie || daemonClear.idx != res.Slot {
		t.Errorf("the daemon's exit: clear %+v; want the slot cleared while the daemon was unreaped", daemonClear)
	}
	if _, ok := stray(daemon); ok {
		t.Error("the stray reaper reaped the daemon: the exit path must")
	}
	if strings.Contains(logs.String(), "level=WARN msg=reap") {
		t.Errorf("reap warnings:\n%s", logs)
	}

	// The respawned incarnation moves to its daemon too; a stop ends both.
	ad = h.next(plugin.EventAdopt, "mp")
	if ad.Generation != sp.Generation || ad.PID == sp.PID {
		t.Fatalf("respawn: adopt event %+v", ad)
	}
	h.next(plugin.EventReady, "mp")
	if err := h.s.Stop(context.Background(), "mp", unix.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if ex := h.next(plugin.EventExit, "mp"); ex.PID != ad.PID {
		t.Errorf("stop: exit %+v; want the new daemon's (pid %d)", ex, ad.PID)
	}
	waitFor(t, "the service's processes gone", func() bool { return gone(ad.PID) && gone(sp.PID) })
}

// TestNotifyMainPIDRefused: MAINPID= naming a process outside the
// service (this test's own) is refused with a warning; the READY=1 beside
// it publishes the spawned process, which stays the main one.
func TestNotifyMainPIDRefused(t *testing.T) {
	for _, c := range containments {
		t.Run(c.name, func(t *testing.T) {
			h, logs, _ := mainPIDHarness(t, c.cgroups, nil, nil)
			spec := h.childSpec("mpr", "mainpid", "HB_TEST_MAINPID="+strconv.Itoa(os.Getpid()))
			spec.Ready = plugin.ReadyNotify
			res := h.spawn(spec)
			ev := h.next(plugin.EventReady, "mpr")
			if ev.PID != res.PID {
				t.Fatalf("ready event %+v; want pid %d", ev, res.PID)
			}
			if sl := h.slot(res.Slot); int(sl.PID) != res.PID || sl.StartTime != res.StartTime {
				t.Fatalf("slot %+v; want the spawned pid %d", sl, res.PID)
			}
			if l := logs.String(); !strings.Contains(l, "MAINPID= refused") || !strings.Contains(l, "not a process of the service") {
				t.Errorf("no warning for the refused MAINPID=:\n%s", l)
			}
			if err := h.s.Stop(context.Background(), "mpr", unix.SIGKILL, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if ex := h.next(plugin.EventExit, "mpr"); ex.PID != res.PID {
				t.Errorf("exit %+v; want the spawned pid %d", ex, res.PID)
			}
		})
	}
}

// TestNotifyMainPIDHandover: a service that is ready (its spawned process
// in the slot) hands over to a new process of its own (MAINPID= alone):
// the slot goes from the old PID to the new one with the new one's start
// time and is never cleared on the way; the old process, still running,
// is now just a process of the service, and its death is no exit; the new
// one's death is, and the service is respawned.
func TestNotifyMainPIDHandover(t *testing.T) {
	for _, c := range containments {
		t.Run(c.name, func(t *testing.T) {
			h, logs, clears := mainPIDHarness(t, c.cgroups, nil, nil)
			var mu sync.Mutex
			strays := map[int]int{}
			reaper.mu.Lock()
			reaper.reaped = func(pid, st int) { mu.Lock(); strays[pid] = st; mu.Unlock() }
			reaper.mu.Unlock()
			t.Cleanup(func() { reaper.mu.Lock(); reaper.reaped = nil; reaper.mu.Unlock() })
			goFile, out := tempPath(t, "go"), tempPath(t, "daemon.pid")
			spec := h.childSpec("ho", "mainpid", "HB_TEST_MAINPID=handover", "HB_TEST_GO="+goFile, "HB_TEST_OUT="+out)
			spec.Ready = plugin.ReadyNotify
			spec.Respawn = plugin.Respawn{Enabled: true}
			res := h.spawn(spec)
			if ev := h.next(plugin.EventReady, "ho"); ev.PID != res.PID {
				t.Fatalf("ready event %+v; want pid %d", ev, res.PID)
			}
			if sl := h.slot(res.Slot); int(sl.PID) != res.PID {
				t.Fatalf("ready: slot %+v; want pid %d", sl, res.PID)
			}
			if err := os.WriteFile(goFile, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			daemon, err := strconv.Atoi(strings.TrimSpace(readFile(t, out)))
			if err != nil {
				t.Fatal(err)
			}
			ad := h.nextOf("ho")
			if ad.Kind != plugin.EventAdopt || ad.PID != daemon || ad.Generation != res.Generation {
				t.Fatalf("event %+v; want the adoption of pid %d by MAINPID=\n%s", ad, daemon, logs)
			}
			start, err := shm.StartTime(daemon)
			if err != nil {
				t.Fatal(err)
			}
			if sl := h.slot(res.Slot); int(sl.PID) != daemon || sl.StartTime != start || sl.Exits != 0 || sl.State != shm.StateStarting {
				t.Fatalf("slot %+v; want pid %d (start time %d), no exit, still starting", sl, daemon, start)
			}
			if recs := clears(); len(recs) != 0 {
				t.Fatalf("the slot was cleared on the way: %+v", recs)
			}
			// The old main process dies: no exit of the service.
			if err := unix.Kill(res.PID, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the stray reaper to reap the old main process", func() bool {
				mu.Lock()
				defer mu.Unlock()
				_, ok := strays[res.PID]
				return ok
			})
			if err := unix.Kill(daemon, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			ex := h.nextOf("ho")
			if ex.Kind != plugin.EventExit || ex.PID != daemon || ex.Status != 128+9 || !ex.Respawned {
				t.Fatalf("event %+v; want the exit of pid %d (137), respawned", ex, daemon)
			}
			sp := h.next(plugin.EventSpawn, "ho")
			for _, r := range clears() {
				if r.pid == res.PID && r.cleared {
					t.Errorf("the old main process's exit cleared the slot: %+v", r)
				}
			}
			if sl := h.slot(res.Slot); sl.Exits != 1 || sl.LastPID != uint32(daemon) {
				t.Errorf("slot %+v; want one exit, the daemon's", sl)
			}
			h.next(plugin.EventReady, "ho")
			ad = h.next(plugin.EventAdopt, "ho") // the go file is there: it hands over at once
			if err := h.s.Stop(context.Background(), "ho", unix.SIGKILL, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if ex := h.next(plugin.EventExit, "ho"); ex.PID != ad.PID || ex.Generation != sp.Generation {
				t.Errorf("stop: exit %+v; want its new main process's (pid %d)", ex, ad.PID)
			}
			waitFor(t, "the respawned processes gone", func() bool { return gone(sp.PID) && gone(ad.PID) })
		})
	}
}
