package shim

import (
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Wait status is per process, not per Shim, so the bookkeeping that decides
// who reaps what is process-wide: the PIDs reserved for the exit path of some
// Shim (tracked), the lock that keeps a just-forked child from being taken for
// a stray, and one stray-reaper goroutine shared by every open Shim.
var reaper = struct {
	// spawnMu is held shared from just before the spawn until the new PID is
	// tracked, and exclusively by the stray reaper while it peeks and reaps.
	// Without it a child that exits before it is tracked would look like a
	// stray and be reaped, and its status lost.
	spawnMu sync.RWMutex

	mu      sync.Mutex            // guards the fields below
	tracked map[int]struct{}      // PIDs the exit path of some Shim will reap
	refs    int                   // open Shims; the goroutine runs while > 0
	stop    chan struct{}         // closed to stop the goroutine
	done    chan struct{}         // closed when the goroutine has returned
	kick    chan struct{}         // buffered(1): run a pass now
	sigc    chan os.Signal        // SIGCHLD
	reaped  func(pid int, st int) // test hook: a stray was reaped
}{tracked: map[int]struct{}{}}

// trackPID reserves pid for the exit path: the stray reaper leaves it alone.
func trackPID(pid int) {
	reaper.mu.Lock()
	reaper.tracked[pid] = struct{}{}
	reaper.mu.Unlock()
}

// untrackPID hands pid back to the stray reaper (after the exit path reaped
// it, or gave up on it) and asks for a pass: strays that exited while a
// tracked zombie was first in line are visible now.
func untrackPID(pid int) {
	reaper.mu.Lock()
	delete(reaper.tracked, pid)
	kick := reaper.kick
	reaper.mu.Unlock()
	if kick != nil {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

func isTracked(pid int) bool {
	reaper.mu.Lock()
	_, ok := reaper.tracked[pid]
	reaper.mu.Unlock()
	return ok
}

// startReaper takes a reference on the stray reaper, starting it on the first.
func startReaper(log *slog.Logger) {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	reaper.refs++
	if reaper.refs > 1 {
		return
	}
	reaper.stop = make(chan struct{})
	reaper.done = make(chan struct{})
	reaper.kick = make(chan struct{}, 1)
	reaper.sigc = make(chan os.Signal, 1)
	signal.Notify(reaper.sigc, unix.SIGCHLD)
	go reapLoop(reaper.stop, reaper.done, reaper.kick, reaper.sigc, log)
	// Children may have exited before SIGCHLD was being caught.
	reaper.kick <- struct{}{}
}

// stopReaper drops a reference; the last one stops the goroutine and waits
// for it.
func stopReaper() {
	reaper.mu.Lock()
	reaper.refs--
	if reaper.refs > 0 {
		reaper.mu.Unlock()
		return
	}
	signal.Stop(reaper.sigc)
	close(reaper.stop)
	done := reaper.done
	reaper.kick = nil
	reaper.mu.Unlock()
	<-done
}

func reapLoop(stop, done, kick chan struct{}, sigc chan os.Signal, log *slog.Logger) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-sigc:
		case <-kick:
		}
		reapStrays(log)
	}
}

// reapStrays reaps every exited child that no exit path is waiting for:
// descendants re-parented to this subreaper, and children whose exit path
// gave up. It peeks with WNOWAIT and stops at the first tracked zombie; the
// exit path reaps that one and kicks another pass. It never polls: it runs on
// SIGCHLD and on kicks only.
func reapStrays(log *slog.Logger) {
	reaper.spawnMu.Lock()
	defer reaper.spawnMu.Unlock()
	for {
		var ci childInfo
		err := waitid(unix.P_ALL, 0, &ci, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
		if err != nil {
			if !errors.Is(err, unix.ECHILD) {
				log.Warn("stray reaper: waitid", "err", err)
			}
			return
		}
		if ci.Pid == 0 || isTracked(int(ci.Pid)) {
			return
		}
		var ws unix.WaitStatus
		pid, err := unix.Wait4(int(ci.Pid), &ws, unix.WNOHANG, nil)
		for errors.Is(err, unix.EINTR) {
			pid, err = unix.Wait4(int(ci.Pid), &ws, unix.WNOHANG, nil)
		}
		if errors.Is(err, unix.ECHILD) {
			// The exit path reaped and untracked it between the peek and
			// isTracked (it reaps without spawnMu): nothing was lost.
			continue
		}
		if err != nil || pid == 0 {
			log.Warn("stray reaper: wait4", "pid", ci.Pid, "err", err)
			return
		}
		log.Debug("reaped stray process", "pid", pid, "status", ci.status())
		reaper.mu.Lock()
		hook := reaper.reaped
		reaper.mu.Unlock()
		if hook != nil {
			hook(pid, ci.status())
		}
	}
}
