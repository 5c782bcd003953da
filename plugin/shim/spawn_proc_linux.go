package shim

import (
	"sync/atomic"
	"syscall"
	"time"

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
	// cgroup, when intoCgroup is set, is the descriptor of the cgroup the
	// child starts in (CLONE_INTO_CGROUP): it never runs outside it.
	cgroup     int
	intoCgroup bool
	// cgEvents, when intoCgroup is set, is the cgroup's cgroup.events: a
	// respawn on the exit path starts the replacement only while it reads
	// "populated 0" (reapRespawn).
	cgEvents int
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
	pidfd = -1
	pid, err = syscall.ForkExec(a.path, a.argv, &syscall.ProcAttr{
		Dir:   a.dir,
		Env:   a.env,
		Files: []uintptr{uintptr(a.files[0]), uintptr(a.files[1]), uintptr(a.files[2])},
		Sys: &syscall.SysProcAttr{
			Setpgid:     true,
			Credential:  a.cred,
			PidFD:       &pidfd,
			UseCgroupFD: a.intoCgroup,
			CgroupFD:    a.cgroup,
		},
	})
	return pid, pidfd, err
}
