package shim

import (
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	mu       sync.Mutex            // guards the fields below
	tracked  map[int]struct{}      // PIDs the exit path of some Shim will reap
	refs     int                   // open Shims; the goroutine runs while > 0
	stop     chan struct{}         // closed to stop the goroutine
	done     chan struct{}         // closed when the goroutine has returned
	kick     chan struct{}         // buffered(1): run a pass now
	reaped   func(pid int, st int) // test hook: a stray was reaped
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
// double-forked daemons outlive it), and a beat (beatInterval) after a
// child exited (SIGCHLD) since the last pass. SIGCHLD itself only arms that
// timer: the plugin gets one for every exit of a service, at the very
// moment the exit path is reaping and respawning it, and a pass then would
// take CPU from that (docs/perf-notes.md). A stray's zombie waits a beat at
// most; it holds no memory, only its PID. An idle plugin has no timer here
// and does not walk its children at all.
func reapLoop(stop, done, kick chan struct{}, log *slog.Logger) {
	defer close(done)
	// SIGCHLD only arms the timer of a pass (or a kick comes first): it
	// wakes nothing else, so a service's exit costs the exit path no more
	// than the runtime's signal delivery.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	defer signal.Stop(sigchld)
	// due fires a beat after the first SIGCHLD since the last pass; nil
	// while none is due, so an idle plugin has no timer here.
	var due <-chan time.Time
	for {
		select {
		case <-stop:
			return
		case <-sigchld:
			if due == nil {
				due = time.After(beatInterval)
			}
			continue
		case <-due:
		case <-kick:
		}
		due = nil
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

// drainTimeout bounds how long a clean close waits for the processes that
// outlived their service's stop (see drainStrays) before it kills them, and
// then again for the kill to take.
const drainTimeout = 3 * time.Second

// drainStrays is a clean close's last step, once every service is stopped:
// the plugin is a subreaper, so whatever its services left behind (a
// service's children that were still dying when its main process was
// reaped, daemons that double-forked) is its child now, and it must reap
// them before it exits — else they outlive hb, or end as zombies of an init
// that may never reap them. It sends SIGTERM to each group that still has
// members, waits for each stray (pidfd, no polling) up to timeout, SIGKILLs
// what is still running, and waits once more. Only
// children in groups (the process groups of the shim's services) are its
// strays: another child of the process is none of its business.
func drainStrays(log *slog.Logger, timeout time.Duration, groups map[int]struct{}) {
	for g := range groups {
		_ = killGroup(g, unix.SIGTERM)
	}
	for round := 0; round < 2; round++ {
		left := waitStrays(groups, timeout)
		if len(left) == 0 {
			return
		}
		for _, pid := range left {
			if round == 0 {
				log.Warn("killing a process that outlived its service's stop", "pid", pid, "cmdline", procCmdline(pid))
				unix.Kill(pid, unix.SIGKILL)
			} else {
				log.Error("a process outlived its service's stop and SIGKILL", "pid", pid, "cmdline", procCmdline(pid))
			}
		}
	}
}

// waitStrays reaps the children of this process in groups as they exit,
// until none is left or timeout passes, and returns the PIDs still running
// then.
func waitStrays(groups map[int]struct{}, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		var fds []unix.PollFd
		var live []int
		for _, pid := range strayChildren(groups) {
			var ws unix.WaitStatus
			if p, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); p == pid || errors.Is(err, unix.ECHILD) {
				continue // reaped now, or by someone else meanwhile
			}
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue // gone between the list and the open: the next pass reaps it
			}
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
			live = append(live, pid)
		}
		if len(live) == 0 {
			return nil
		}
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms > 0 {
			unix.Poll(fds, ms) // EINTR or a readable pidfd: look again
		}
		for _, fd := range fds {
			unix.Close(int(fd.Fd))
		}
		if ms <= 0 {
			return live
		}
	}
}

// strayChildren lists this process's children (zombies included) whose
// process group is one of groups.
func strayChildren(groups map[int]struct{}) []int {
	tasks, _ := os.ReadDir("/proc/self/task")
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if st, err := readProcStat(pid); err == nil {
				if _, ok := groups[st.PGRP]; ok {
					out = append(out, pid)
				}
			}
		}
	}
	return out
}

// procCmdline is /proc/PID/cmdline with spaces for NULs, for log lines.
func procCmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}
