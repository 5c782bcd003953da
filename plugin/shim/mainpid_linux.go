package shim

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// The main process can move (sd_notify's MAINPID=, docs/design.md#invariant-19).
// A service spawned with ready "notify" may name another of its processes
// its main process: typically a launcher forks the daemon, the daemon says
// "MAINPID=<itself>\nREADY=1" and the launcher exits 0. The message must
// come from a process of the service (readNotify), and the process it
// names must be a live one of the service: in its cgroup where it has one,
// else in the process group the spawned process leads. Then, as a forking
// service's PID-file process is (startedForking), the new main process is
// watched through a pidfd opened before the last membership check, the
// slot's PID word goes from the old main process to it in one
// compare-and-swap, and the old one's exit is no longer the service's
// death: no longer tracked, it is reaped by the stray reaper if it is our
// child. The new one is tracked from here to its exit, so the stray
// reaper never takes it, and the exit path reaps it if it is our child by
// then (re-parented to the plugin, a child subreaper, when its launcher
// exited).

// mainPIDNotified acts on MAINPID=v in a message of inc's service from
// sender: v becomes the main process (followMain), or the message is
// logged and not followed.
func (s *Shim) mainPIDNotified(inc *incarnation, sender int, v string) {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 1 || strconv.Itoa(n) != v {
		s.log.Warn("notify: MAINPID= is not a PID; not followed", "service", inc.svc.name, "mainpid", v, "sender_pid", sender)
		return
	}
	old := inc.mainPID()
	if n == old {
		return
	}
	if err := s.followMain(inc, n); err != nil {
		s.log.Warn("notify: MAINPID= refused: the main process stays", "service", inc.svc.name, "pid", old,
			"mainpid", n, "sender_pid", sender, "err", err)
		return
	}
	s.log.Info("notify: main process moved (MAINPID=)", "service", inc.svc.name, "pid", n, "was", old,
		"generation", inc.gen, "sender_pid", sender)
}

// errNotInService: the process MAINPID= names is not one of the service.
var errNotInService = errors.New("not a process of the service")

// followMain makes process n the main process of inc, or says why not.
// Called with the notify socket's mu held (notified).
func (s *Shim) followMain(inc *incarnation, n int) error {
	if inc.adopted || inc.forking || inc.managerName() != "" || inc.armed == nil {
		return errors.New("only the main process of a service the plugin spawned (not type forking) can be replaced")
	}
	select {
	case <-inc.armed: // the spawned process is watched (announce)
	case <-s.quit:
		return errClosed
	}
	if !s.life.TryRLock() {
		return errClosed // closing: the table and the watcher are going
	}
	defer s.life.RUnlock()
	if s.closed.Load() {
		return errClosed
	}
	if isTracked(n) {
		return fmt.Errorf("pid %d is the main process of another incarnation", n)
	}
	where := "the service's process group " + strconv.Itoa(inc.pid)
	if inc.cg != nil {
		where = "the service's cgroup " + inc.cg.path
	}
	if !inService(inc, n) {
		return fmt.Errorf("pid %d: %w (not in %s)", n, errNotInService, where)
	}
	pidfd, err := unix.PidfdOpen(n, 0)
	if err != nil {
		return fmt.Errorf("pid %d: pidfd_open: %w", n, err)
	}
	// Tracked before it is looked at again: were it our child and to
	// exit now, the stray reaper must leave it (a reaped one fails the
	// test below, which comes after).
	trackPID(n)
	fail := func(err error) error {
		untrackPID(n)
		unix.Close(pidfd)
		return err
	}
	// Identity: the checks below are about the pidfd's process only if it
	// still lives after them (a live process's PID is not reused).
	ps, err := readProcStat(n)
	switch {
	case err != nil:
		return fail(fmt.Errorf("pid %d: %w", n, unwrapPath(err)))
	case !inService(inc, n):
		return fail(fmt.Errorf("pid %d: %w (it left %s)", n, errNotInService, where))
	case ps.State == 'Z' || pollReadable(pidfd, 0):
		return fail(fmt.Errorf("pid %d has exited", n))
	}
	if err := s.handOver(inc, n, pidfd, ps); err != nil {
		return fail(err)
	}
	return nil
}

// handOver moves inc's main process to n (pidfd, ps: its pidfd and stat,
// verified by followMain): the new one watched, the old one unwatched, the
// slot's PID word from the old one to n when it holds the old one (the
// incarnation is published), and the old one handed to the stray reaper.
// On error nothing has changed, and pidfd is the caller's to close.
func (s *Shim) handOver(inc *incarnation, n, pidfd int, ps procStat) error {
	inc.mainMu.Lock()
	defer inc.mainMu.Unlock()
	s.mu.Lock()
	if s.incs[inc.key] != inc {
		// The exit path took it: its main process exited and that exit is
		// being judged (it read the socket first, drainNotifyOf).
		s.mu.Unlock()
		return errors.New("the service's main process has exited")
	}
	inc.mu.Lock()
	defer inc.mu.Unlock()
	oldMain, old, oldfd, oldChild, oldStart := inc.main.Load(), inc.mainPID(), inc.pidfd, inc.child, inc.startTime
	child := ps.PPID == os.Getpid()
	inc.main.Store(int32(n))
	inc.pidfd, inc.child, inc.startTime = pidfd, child, ps.StartTime
	s.mu.Unlock()

	// From here an exit of old that the detectors report is a former main
	// process's (takeIncarnation). Unwatch, then watch n under the same
	// key: one watch per incarnation.
	s.watcher.Unwatch(inc.key)
	watch := s.watcher.WatchTraced // not ours: the tracepoint sees it die as early as a child
	if child {
		watch = s.watcher.WatchChild
	}
	if err := watch(inc.key, n, pidfd); err != nil {
		s.mu.Lock()
		inc.main.Store(oldMain)
		inc.pidfd, inc.child, inc.startTime = oldfd, oldChild, oldStart
		s.mu.Unlock()
		// Watched again (an exit meanwhile is reported at once, through
		// the readable pidfd).
		rewatch := s.watcher.WatchTraced
		if oldChild {
			rewatch = s.watcher.WatchChild
		}
		if rerr := rewatch(inc.key, old, oldfd); rerr != nil {
			s.log.Error("notify: MAINPID=: cannot watch the main process again; its exit will not be detected",
				"service", inc.svc.name, "pid", old, "err", rerr)
		}
		return fmt.Errorf("watch pid %d: %w", n, err)
	}

	// The slot: from old to n in one compare-and-swap, start time first.
	// A word that old's exit cleared meanwhile gets n only when the
	// incarnation was ready (and not declared hung: mainMu orders this
	// with hang); a word not yet published gets n at READY=1.
	published := s.w.MovePID(inc.idx, uint32(old), uint32(n), inc.gen, ps.StartTime)
	if !published && inc.ready.Load() && !inc.hung.Load() && s.w.PID(inc.idx) == 0 {
		published = s.w.Publish(inc.idx, uint32(n), inc.gen)
	}
	if published && s.gone(inc) {
		// n exited (or was SIGKILLed) meanwhile: its watch reports it,
		// but the slot must not name it until then (inc.mu, held, keeps
		// our child unreaped).
		s.w.ClearPID(inc.idx, uint32(n))
	}
	s.kickRecord()
	// The old main process: no longer watched nor tracked. It may live on
	// (a process of the service, signalled and killed with it) or have
	// exited; the stray reaper reaps it if it is our child. Not before
	// the slot names n.
	unix.Close(oldfd)
	untrackPID(old)
	// Emitted under inc.mu: before n's exit event, which the exit path
	// emits after taking it.
	s.emit(plugin.Event{
		Kind: plugin.EventAdopt, Name: inc.svc.name, Slot: inc.idx, PID: n, Generation: inc.gen,
		DetectedNs: shm.MonotonicNs(), Message: fmt.Sprintf("main pid %d (MAINPID=), was %d", n, old),
	})
	return nil
}
