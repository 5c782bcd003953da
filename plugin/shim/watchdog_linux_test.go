package shim

import (
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// beatChild is the "beat" helper: it beats (shm.Beat) every millisecond
// and writes $HB_TEST_OUT after its first beat; on SIGUSR1 it stops
// beating and spins (a real hang: running, not beating).
func beatChild() int {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGUSR1)
	if err := shm.BeatInit(); err != nil || !shm.Beating() {
		return 3
	}
	if gate := os.Getenv("HB_TEST_BEAT_GATE"); gate != "" {
		// A long start-up: no beat until the test says so.
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	shm.Beat()
	if out := os.Getenv("HB_TEST_OUT"); out != "" {
		if err := writeFileAtomic(out, "beating\n"); err != nil {
			return 2
		}
	}
	t := time.NewTicker(time.Millisecond)
	for {
		select {
		case <-stop:
			for {
				runtime.Gosched() // spin without beating until killed
			}
		case <-t.C:
			shm.Beat()
		}
	}
}

// hungRecord is what onHung saw in the slot.
type hungRecord struct {
	pid   int
	slot  shm.Slot
	state shm.State
}

// watchdogHarness is a harness whose onHung hook records the slot at the
// moment the watchdog declared a service hung.
func watchdogHarness(t *testing.T) (*harness, func() []hungRecord) {
	dir := t.TempDir()
	var mu sync.Mutex
	var recs []hungRecord
	var h *harness
	opts := Options{ShmName: "t", ShmDir: dir, Slots: 16, Detector: connector.DetectPidfd}
	opts.onHung = func(idx, pid int) {
		sl := h.s.w.Snapshot(idx) // h is set before the first spawn
		mu.Lock()
		recs = append(recs, hungRecord{pid: pid, slot: sl, state: sl.State})
		mu.Unlock()
	}
	h = openHarness(t, opts, dir)
	return h, func() []hungRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]hungRecord(nil), recs...)
	}
}

// waitChecks waits until the watchdog has made n more checks than now,
// with pid still in slot idx (alive, beating, not hung).
func waitChecks(t *testing.T, h *harness, n uint64, idx, pid int) {
	t.Helper()
	_, base, _ := h.s.dog.stats()
	waitFor(t, "watchdog checks of a beating service", func() bool {
		_, c, _ := h.s.dog.stats()
		return c >= base+n
	})
	if sl := h.slot(idx); int(sl.PID) != pid || sl.State == shm.StateHung {
		t.Fatalf("a beating service's slot: %+v; want pid %d, not hung", sl, pid)
	}
}

// TestWatchdogHang: a service that beats is left alone; one that stops
// beating (a spin, or SIGSTOP) reads 0 and hung the moment its deadline is
// missed, gets the watchdog signal, then SIGKILL after the grace, and is
// respawned (exit Reason "watchdog"); its replacement's beats keep it up.
func TestWatchdogHang(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hang   syscall.Signal
		status int // exit status of the hung incarnation
	}{
		// The Go runtime dies of SIGABRT with a stack dump and status 2.
		{"spin", syscall.SIGUSR1, 2},
		// A stopped process keeps SIGABRT pending: SIGKILL ends it.
		{"sigstop", syscall.SIGSTOP, 128 + 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, hungs := watchdogHarness(t)
			out := tempPath(t, "out")
			spec := h.childSpec("wd", "beat", "HB_TEST_OUT="+out)
			spec.Watchdog = 500 * time.Millisecond // a beat every 1 ms; room for a loaded -race run
			spec.WatchdogGrace = 300 * time.Millisecond
			spec.Respawn = plugin.Respawn{Enabled: true}
			first := h.spawn(spec)
			h.next(plugin.EventSpawn, "wd")
			waitFor(t, "the first beat", func() bool { _, err := os.Stat(out); return err == nil })
			waitChecks(t, h, 3, first.Slot, first.PID)

			if err := unix.Kill(first.PID, tc.hang); err != nil {
				t.Fatal(err)
			}
			hung := h.next(plugin.EventHung, "wd")
			if hung.PID != first.PID || hung.Generation != first.Generation || hung.SinceBeatNs < uint64(spec.Watchdog)/2 {
				t.Errorf("hung event %+v; want pid %d, generation %d, since_beat near %v", hung, first.PID, first.Generation, spec.Watchdog)
			}
			recs := hungs()
			if len(recs) != 1 || recs[0].pid != first.PID || recs[0].slot.PID != 0 || recs[0].state != shm.StateHung {
				t.Fatalf("slot when declared hung: %+v; want pid word 0, state hung", recs)
			}
			ex := h.next(plugin.EventExit, "wd")
			if ex.PID != first.PID || ex.Reason != WatchdogReason || !ex.Respawned || ex.Status != tc.status {
				t.Fatalf("exit %+v; want pid %d, reason watchdog, respawned, status %d", ex, first.PID, tc.status)
			}
			sp := h.next(plugin.EventSpawn, "wd")
			if sp.Generation != first.Generation+1 {
				t.Fatalf("respawn %+v; want generation %d", sp, first.Generation+1)
			}
			waitChecks(t, h, 3, first.Slot, sp.PID)
			if n := len(hungs()); n != 1 {
				t.Fatalf("%d hung records; the replacement beats and must not be hung", n)
			}
		})
	}
}

// TestWatchdogFirstBeat: a service ready at the spawn counts its periods
// from its first beat: a start-up of many periods without one is not a hang
// (until ready_timeout), and once it beats a stop of its beats is.
func TestWatchdogFirstBeat(t *testing.T) {
	h, hungs := watchdogHarness(t)
	gate := tempPath(t, "gate")
	out := tempPath(t, "out")
	spec := h.childSpec("slow", "beat", "HB_TEST_OUT="+out, "HB_TEST_BEAT_GATE="+gate)
	spec.Watchdog = 20 * time.Millisecond
	spec.WatchdogGrace = 300 * time.Millisecond
	first := h.spawn(spec)
	// Many periods without a beat (a sample every twentieth of one): the
	// watchdog samples and waits.
	waitChecks(t, h, 200, first.Slot, first.PID)
	if len(hungs()) != 0 {
		t.Fatalf("declared hung before its first beat: %+v", hungs())
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first beat", func() bool { _, err := os.Stat(out); return err == nil })
	waitChecks(t, h, 3, first.Slot, first.PID)
	if err := unix.Kill(first.PID, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if hung := h.next(plugin.EventHung, "slow"); hung.PID != first.PID {
		t.Fatalf("hung event %+v; want pid %d", hung, first.PID)
	}

	// One that never beats is hung once ready_timeout has passed.
	never := h.childSpec("never", "beat", "HB_TEST_BEAT_GATE="+tempPath(t, "never-gate"))
	never.Watchdog, never.WatchdogGrace, never.ReadyTimeout = 20*time.Millisecond, 300*time.Millisecond, 200*time.Millisecond
	h.spawn(never)
	if hung := h.next(plugin.EventHung, "never"); hung.SinceBeatNs < uint64(never.ReadyTimeout) {
		t.Errorf("a never-beating service was hung after %v; want its ready_timeout %v first", time.Duration(hung.SinceBeatNs), never.ReadyTimeout)
	}
}

// TestWatchdogDeadline drives the checker with its own clock, every
// wake-up 100 µs after the sample time it was armed for (the first one
// later still): a service that stops beating is declared hung at its
// deadline (the sample that saw its last beat + the period) plus that
// wake-up's lateness, not at the next step of the grid after it, and never
// before the deadline.
func TestWatchdogDeadline(t *testing.T) {
	const period, late = 20 * time.Millisecond, 100 * time.Microsecond
	now := uint64(1e12)
	d, words, stop := benchWatched(t, 1, period, func() uint64 { return now })
	defer stop()
	due := func() uint64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.times[0]
	}
	*words[0]++ // the first beat
	now = due() + 3*uint64(late)
	if hung := d.check(now); len(hung) != 0 {
		t.Fatalf("hung at its first beat")
	}
	deadline := now + uint64(period) // it beats no more
	for range 100 {
		now = due() + uint64(late)
		hung := d.check(now)
		if now < deadline && len(hung) != 0 {
			t.Fatalf("declared hung %v before its deadline", time.Duration(deadline-now))
		}
		if len(hung) != 0 {
			hung[0].area.Close()
			if now > deadline+uint64(late) {
				t.Fatalf("declared hung %v after its deadline; want at most the wake-up's %v", time.Duration(now-deadline), late)
			}
			return
		}
	}
	t.Fatal("never declared hung")
}

// TestWatchdogSharedGrid: services with the same step share their sample
// times, and so the checker's wake-ups, however far apart they were put
// under the watchdog.
func TestWatchdogSharedGrid(t *testing.T) {
	now, tick := uint64(1e12), uint64(7*time.Microsecond)
	// Each watch reads the clock once: 100 services over 700 µs.
	d, words, stop := benchWatched(t, 100, 10*time.Millisecond, func() uint64 { now += tick; return now })
	defer stop()
	tick = 0
	for range 5 {
		for _, w := range words {
			*w++
		}
		d.mu.Lock()
		now = d.times[0] + uint64(10*time.Microsecond)
		d.mu.Unlock()
		if hung := d.check(now); len(hung) != 0 {
			t.Fatalf("%d hung", len(hung))
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.times) != 1 {
		t.Fatalf("%d sample times for 100 services of one step: %v; want 1", len(d.times), d.times)
	}
}

func TestWatchdogOff(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	out := tempPath(t, "out")
	h.spawn(h.childSpec("plain", "report", "HB_TEST_OUT="+out))
	waitFor(t, "report", func() bool { _, err := os.Stat(out); return err == nil })
	if env := readFile(t, out); strings.Contains(env, shm.BeatFDEnv+"=") {
		t.Errorf("child without a watchdog got %s:\n%s", shm.BeatFDEnv, env)
	}
	if _, _, n := h.s.dog.stats(); n != 0 {
		t.Errorf("watching %d incarnations; want none", n)
	}
}
