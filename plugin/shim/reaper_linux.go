package shim

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Wait status is per process, not per Shim, so the bookkeeping that decides
// who reaps what is process-wide: the PIDs reserved for the exit path of some
// Shim (tracked), the count of spawns under way that keeps a just-forked child
// from being taken for a stray, and one stray-reaper goroutine shared by
// every open Shim.
var reaper = struct {
	// spawning counts spawns under way, each from before its fork until the
	// new PID is tracked (beginSpawn, endSpawn). While any is, the stray
	// reaper reaps nothing: an untracked zombie might be a child that exited
	// before it was tracked, whose status would be lost. It never blocks a
	// spawn: it sets deferred and leaves, and the last endSpawn kicks it.
	spawning atomic.Int32
	deferred atomic.Bool

	mu      sync.Mutex            // guards the fields below
	tracked map[int]struct{}      // PIDs the exit path of some Shim will reap
	refs    int                   // open Shims; the goroutine runs while > 0
	stop    chan struct{}         // closed to stop the goroutine
	done    chan struct{}         // closed when the goroutine has returned
	kick    chan struct{}         // buffered(1): run a pass now
	reaped  func(pid int, st int) // test hook: a stray was reaped
}{tracked: map[int]struct{}{}}

// beginSpawn opens a spawn: call it before the fork, and endSpawn once the
// new PID is tracked (or the spawn failed).
func beginSpawn() { reaper.spawning.Add(1) }

func endSpawn() {
	if reaper.spawning.Add(-1) == 0 && reaper.deferred.Swap(false) {
		kickReaper()
	}
}

// kickReaper asks the stray reaper for a pass.
func kickReaper() {
	reaper.mu.Lock()
	kick := reaper.kick
	reaper.mu.Unlock()
	if kick != nil {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

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
	reaper.mu.Unlock()
	kickReaper()
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
	go reapLoop(reaper.stop, reaper.done, reaper.kick, log)
	// Children of an earlier plugin in this process may be waiting.
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
	close(reaper.stop)
	done := reaper.done
	reaper.kick = nil
	reaper.mu.Unlock()
	<-done
}

// reapLoop runs a pass at each kick: from the exit path after every exit
// it records (when orphans of a service appear: its group is killed, its
// double-forked daemons outlive it), and from the shim's beat. SIGCHLD is
// not caught: the plugin gets one for every exit of a service, at the very
// moment the exit path is reaping and respawning it, and waking goroutines
// for it would take CPU from that (docs/perf-notes.md). A stray's zombie
// waits for the next beat at most; it holds no memory, only its PID.
func reapLoop(stop, done, kick chan struct{}, log *slog.Logger) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-kick:
		}
		reapStrays(log)
	}
}

// reapStrays reaps every exited child that no exit path is waiting for:
// descendants re-parented to this subreaper, and children whose exit path
// gave up. It peeks with WNOWAIT and stops at the first tracked zombie; the
// exit path reaps that one and kicks another pass. It runs on kicks only
// (reapLoop), and reaps nothing while a spawn is under way (see
// reaper.spawning): the last spawn to end kicks it again.
func reapStrays(log *slog.Logger) {
	for {
		var ci childInfo
		err := waitid(unix.P_ALL, 0, &ci, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
		if err != nil {
			if !errors.Is(err, unix.ECHILD) {
				log.Warn("stray reaper: waitid", "err", err)
			}
			return
		}
		if ci.Pid == 0 {
			return
		}
		// In this order: a child of a spawn that was under way at the
		// peek is tracked by the time that spawn has ended.
		if reaper.spawning.Load() > 0 {
			reaper.deferred.Store(true)
			if reaper.spawning.Load() > 0 {
				return // the last endSpawn kicks another pass
			}
		}
		if isTracked(int(ci.Pid)) {
			return
		}
		var ws unix.WaitStatus
		pid, err := unix.Wait4(int(ci.Pid), &ws, unix.WNOHANG, nil)
		for errors.Is(err, unix.EINTR) {
			pid, err = unix.Wait4(int(ci.Pid), &ws, unix.WNOHANG, nil)
		}
		if errors.Is(err, unix.ECHILD) {
			// The exit path reaped and untracked it between the peek and
			// isTracked: nothing was lost.
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
