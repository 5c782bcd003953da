package shim

import (
	"syscall"
)

// procAttr is what a spawner needs to start one process.
type procAttr struct {
	path  string   // executable, resolved (see lookPath)
	argv  []string // argv[0] included
	env   []string
	dir   string              // "" keeps the plugin's
	files [3]int              // the child's 0, 1, 2
	cred  *syscall.Credential // nil keeps the plugin's
}

// spawnProc starts a.path in its own process group and returns its PID and
// a pidfd for it (O_CLOEXEC, owned by the caller). On return the process
// has exec'd. An exec that fails is reported as its errno (the failed child
// is reaped here). Callers hold reaper.spawnMu shared.
func spawnProc(a *procAttr) (pid, pidfd int, err error) {
	if clone3Usable() {
		pid, pidfd, err, ok := spawnClone3(a)
		if ok {
			return pid, pidfd, err
		}
	}
	return spawnForkExec(a)
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
			Setpgid:    true,
			Credential: a.cred,
			PidFD:      &pidfd,
		},
	})
	return pid, pidfd, err
}
