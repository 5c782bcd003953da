package shim

import (
	"errors"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
)

// procAttr is what a spawner needs to start one process.
type procAttr struct {
	path  string   // executable, resolved (see lookPath)
	argv  []string // argv[0] included
	env   []string
	dir   string              // "" keeps the plugin's
	files [3]int              // the child's 0, 1, 2
	cred  *syscall.Credential // nil keeps the plugin's
	// extra become the child's 3, 4, …: at most maxExtraFDs (the beat area).
	extra []int
	// cgroup, when intoCgroup is set, is the descriptor of the cgroup the
	// child starts in (CLONE_INTO_CGROUP): it never runs outside it.
	cgroup     int
	intoCgroup bool
	// cgEvents, when intoCgroup is set, is the cgroup's cgroup.events: a
	// respawn on the exit path starts the replacement only while it reads
	// "populated 0" (reapRespawn).
	cgEvents int
	// place, when not nil, is applied in the child before exec (and
	// before its credentials change).
	place *placement
	// ptrace: the ForkExec child stops at its exec (see
	// spawnForkExecPlaced); the caller's thread is locked.
	ptrace bool
}

// maxExtraFDs is how many descriptors beyond 0, 1, 2 a child may be
// given (HB_SPAWN_FDS in the C spawner, less three).
const maxExtraFDs = 5

// fds is every descriptor of the child, by its number there.
func (a *procAttr) fds() []int {
	if len(a.extra) > maxExtraFDs {
		panic("shim: too many descriptors for a child")
	}
	return append(a.files[:len(a.files):len(a.files)], a.extra...)
}

// placement is what a spawn sets in the child besides its credentials:
// CPU affinity, nice, scheduling policy, resource limits and umask
// (plugin.Spec's CPUs, Nice, Sched*, Rlimits, Umask).
type placement struct {
	cpus             []int
	setNice          bool
	nice             int
	setSched         bool
	policy, priority int
	rlimits          []plugin.Rlimit
	setUmask         bool
	umask            int
}

// setsNofile reports whether p sets RLIMIT_NOFILE itself (then the
// plugin's own limit at start is not restored in the child).
func (p *placement) setsNofile() bool {
	if p == nil {
		return false
	}
	for _, l := range p.rlimits {
		if l.Resource == unix.RLIMIT_NOFILE {
			return true
		}
	}
	return false
}

// child is a process a spawner started.
type child struct {
	pid   int
	pidfd int // O_CLOEXEC, owned by the caller
	// tick0, tick1: boot-clock ticks just before and after the spawn (the
	// child's start time is tick0 when they are equal).
	tick0, tick1 uint64
}

// spawnProc starts a.path in its own process group. On return the process
// has exec'd. An exec that fails is reported as its errno (the failed child
// is reaped here). Callers track the child before ending the spawn (see
// spawnTracked).
func spawnProc(a *procAttr) (c child, err error) {
	c.tick0 = bootTicks()
	if clone3Usable() {
		pid, pidfd, err, ok := spawnClone3(a)
		if ok {
			c.pid, c.pidfd, c.tick1 = pid, pidfd, bootTicks()
			return c, err
		}
	}
	c.pid, c.pidfd, err = spawnForkExec(a)
	c.tick1 = bootTicks()
	return c, err
}

// spawnTracked is spawnProc with the child tracked before the stray reaper
// can take it for a stray (see reaper.spawning).
func spawnTracked(a *procAttr) (child, error) {
	beginSpawn()
	defer endSpawn()
	c, err := spawnProc(a)
	if err == nil {
		trackPID(c.pid)
	}
	return c, err
}

// reaped is what reapRespawn did.
type reaped struct {
	status int   // exit code, 128+signal, or -1
	ok     bool  // the child was reaped
	err    error // from waitid
	// tried: a respawn was attempted, with the result in c and spawnErr.
	tried bool
	// cgBusy: no respawn was attempted because the service's cgroup still
	// held processes after the reap.
	cgBusy   bool
	c        child
	spawnErr error
}

// spawned reports whether the respawn was tried and started a replacement.
func (r reaped) spawned() bool { return r.tried && r.spawnErr == nil }

// reapRespawn reaps the exited child behind pidfd as reapPidfd does and,
// when a is not nil, pol wants the exit status respawned and stop has not
// been set meanwhile, starts a at once. With a, the caller holds a spawn
// open (beginSpawn) around it and tracks the new child before ending it.
// With the clone3 spawner the zombie wait, the reap and the spawn are one
// call into C on one thread, like a bare supervisor's waitpid-then-vfork
// loop: nothing else runs between the zombie and the replacement. When it
// could not try (no clone3 here, or the child was not reaped), the caller
// spawns, if it still wants to.
func reapRespawn(pidfd int, wait time.Duration, a *procAttr, pol plugin.Respawn, stop *atomic.Bool) reaped {
	if a != nil && clone3Usable() {
		if r, ok := reapRespawnClone3(pidfd, wait, a, pol, stop); ok {
			return r
		}
	}
	var r reaped
	r.status, r.ok, r.err = reapPidfd(pidfd, wait)
	return r
}

// spawnForkExec is spawnProc through syscall.ForkExec: portable, but the
// child resets every signal handler one system call at a time, and
// ForkExec returns only once the exec'd program has started to run.
func spawnForkExec(a *procAttr) (pid, pidfd int, err error) {
	if a.place != nil {
		return spawnForkExecPlaced(a)
	}
	pidfd = -1
	var files []uintptr
	for _, fd := range a.fds() {
		files = append(files, uintptr(fd))
	}
	pid, err = syscall.ForkExec(a.path, a.argv, &syscall.ProcAttr{
		Dir:   a.dir,
		Env:   a.env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Ptrace:      a.ptrace,
			Setpgid:     true,
			Credential:  a.cred,
			PidFD:       &pidfd,
			UseCgroupFD: a.intoCgroup,
			CgroupFD:    a.cgroup,
		},
	})
	return pid, pidfd, err
}

// cpuMask is the sched_setaffinity mask of cpus (64 CPUs a word); nil
// for none.
func cpuMask(cpus []int) []uint64 {
	if len(cpus) == 0 {
		return nil
	}
	top := 0
	for _, c := range cpus {
		top = max(top, c)
	}
	m := make([]uint64, top/64+1)
	for _, c := range cpus {
		if c >= 0 {
			m[c/64] |= 1 << (c % 64)
		}
	}
	return m
}

// spawnForkExecPlaced is spawnForkExec with a.place applied. ForkExec has
// no hook between fork and exec, but the child inherits its parent
// thread's CPU affinity, nice value, scheduling policy and (once that
// thread has its own file-system attributes, unshare(CLONE_FS)) umask: so
// the fork is made from a thread of its own that takes them first, and
// that thread ends with the spawn (its goroutine exits locked to it). The
// resource limits are per process: they are set on the child with
// prlimit(2) while it is stopped at its first instruction: the child asks
// to be traced (PTRACE_TRACEME, from this same thread), so a successful
// exec stops it with SIGTRAP; the limits are set, and the tracer detaches
// without delivering the signal.
func spawnForkExecPlaced(a *procAttr) (pid, pidfd int, err error) {
	type result struct {
		pid, pidfd int
		err        error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		if err := applyPlacement(a.place); err != nil {
			done <- result{0, -1, err}
			return
		}
		pl := a.place
		b := *a
		b.place = nil
		b.ptrace = len(pl.rlimits) > 0
		pid, pidfd, err := spawnForkExec(&b)
		if err == nil && b.ptrace {
			err = setLimitsStopped(pid, pidfd, pl.rlimits)
			if err != nil {
				_ = pidfdSignal(pidfd, unix.SIGKILL)
				var ci childInfo
				_ = waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED)
				unix.Close(pidfd)
				pid, pidfd = 0, -1
			}
		}
		done <- result{pid, pidfd, err}
	}()
	r := <-done
	return r.pid, r.pidfd, r.err
}

// applyPlacement sets pl's affinity, nice, scheduling and umask on the
// calling thread, which must be locked to its goroutine and end with it.
func applyPlacement(pl *placement) error {
	fail := func(step string, err error) error {
		var e syscall.Errno
		if !errors.As(err, &e) {
			e = syscall.EINVAL
		}
		return &spawnStepError{step: step, err: e}
	}
	if len(pl.cpus) > 0 {
		var set unix.CPUSet
		for _, c := range pl.cpus {
			set.Set(c)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fail("cpus (sched_setaffinity)", err)
		}
	}
	if pl.setNice {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, pl.nice); err != nil {
			return fail("nice (setpriority)", err)
		}
	}
	if pl.setSched {
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: uint32(pl.policy), Priority: uint32(pl.priority)}
		if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
			return fail("sched (sched_setscheduler)", err)
		}
	}
	if pl.setUmask {
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fail("umask (unshare)", err)
		}
		unix.Umask(pl.umask)
	}
	return nil
}

// spawnStepError is a failure of the child before exec: which step, and
// the errno (matched by errors.Is).
type spawnStepError struct {
	step string
	err  syscall.Errno
}

func (e *spawnStepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *spawnStepError) Unwrap() error { return e.err }

// setLimitsStopped waits for the traced child pid to stop at its exec,
// sets lims on it and lets it go. Called on the thread that started it.
func setLimitsStopped(pid, pidfd int, lims []plugin.Rlimit) error {
	var ci childInfo
	if err := waitid(unix.P_PIDFD, pidfd, &ci, unix.WSTOPPED|unix.WNOWAIT); err != nil {
		return &spawnStepError{step: "rlimits (wait for the exec)", err: err.(syscall.Errno)}
	}
	// WNOWAIT: only the exit path reaps (docs/design.md#invariant-2); a
	// child that died instead of stopping is left for it.
	if ci.Code != cldTrapped && ci.Code != cldStopped {
		return &spawnStepError{step: "rlimits (the child did not stop at its exec)", err: syscall.ECHILD}
	}
	var failed error
	for _, l := range lims {
		lim := unix.Rlimit{Cur: l.Cur, Max: l.Max}
		if err := unix.Prlimit(pid, l.Resource, &lim, nil); err != nil {
			var en syscall.Errno
			if !errors.As(err, &en) {
				en = syscall.EINVAL
			}
			failed = &spawnStepError{step: "rlimits (prlimit)", err: en}
			break
		}
	}
	if err := unix.PtraceDetach(pid); err != nil && failed == nil {
		failed = &spawnStepError{step: "rlimits (ptrace detach)", err: err.(syscall.Errno)}
	}
	return failed
}
