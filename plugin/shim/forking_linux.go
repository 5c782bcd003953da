package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TypeForking is plugin.Spec.Type for a program that daemonizes: the first
// process exits 0 once the service is up, and the main process is the one
// its PID file names.
const TypeForking = "forking"

// forkingWait bounds how long a spawn of a forking service waits for its
// first process to exit and its PID file to name a process of its cgroup;
// it stays below the host's call timeout.
const forkingWait = 8 * time.Second

// startForking starts one incarnation of a forking service (Spec.Type
// "forking", docs/cgroups.md): the first process is spawned in the
// service's cgroup and must exit 0; then the PID file is read (readPIDFile:
// never through a path another user can change), its PID must be in the
// service's cgroup — a PID file naming another process is refused — and
// that process goes into the slot and is watched, as an adopted one is.
// It is our child when it was re-parented to the plugin (a child
// subreaper), else it is watched without being reaped. The plugin never
// respawns a forking service itself: hbd's policy does. Called with svc.op
// held and no incarnation of svc running.
func (s *Shim) startForking(ctx context.Context, svc *service, spec plugin.Spec) (plugin.SpawnResult, error) {
	spec.Respawn = plugin.Respawn{}
	if spec.PIDFile == "" || !filepath.IsAbs(spec.PIDFile) {
		return plugin.SpawnResult{}, badSpec(errors.New("want an absolute pid_file"), "spawn %q: type \"forking\"", spec.Name)
	}
	p, err := s.planStart(svc, spec, false)
	if err != nil {
		return plugin.SpawnResult{}, err
	}
	if !p.attr.intoCgroup {
		return plugin.SpawnResult{}, badSpec(errors.New("needs the service's cgroup to tell its processes from others ("+s.cg.String()+")"),
			"spawn %q: type \"forking\"", spec.Name)
	}
	cg := svc.cg
	if err := s.emptyCgroup(p); err != nil {
		return plugin.SpawnResult{}, err
	}
	// A PID file left by an earlier incarnation must not be taken for
	// this one's: its process is gone (the cgroup is empty), and a
	// number read from it would fail the membership check anyway.
	spawned := time.Now()
	c, err := spawnTracked(&p.attr)
	if err != nil {
		return plugin.SpawnResult{}, p.spawnError(err)
	}
	deadline := time.Now().Add(forkingWait)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl)-time.Second < forkingWait {
		deadline = dl.Add(-time.Second)
	}
	status, err := waitLauncher(c, deadline)
	untrackPID(c.pid)
	fail := func(err error) (plugin.SpawnResult, error) {
		if _, e := cg.empty(cgroupEmptyWait); e != nil {
			s.log.Warn("spawn: forking: emptying the cgroup", "service", spec.Name, "err", e)
		}
		return plugin.SpawnResult{}, err
	}
	if err != nil {
		return fail(fmt.Errorf("spawn %q: type \"forking\": %w", spec.Name, err))
	}
	if status != 0 {
		return fail(fmt.Errorf("spawn %q: type \"forking\": the first process (pid %d) exited %d before the service was up", spec.Name, c.pid, status))
	}
	pid, pidfd, err := forkingMain(cg, spec, spawned, deadline)
	if err != nil {
		return fail(fmt.Errorf("spawn %q: type \"forking\": %w", spec.Name, err))
	}
	return s.startedForking(p, pid, pidfd)
}

// waitLauncher waits (until deadline) for the first process of a forking
// service to exit, and reaps it.
func waitLauncher(c child, deadline time.Time) (int, error) {
	defer unix.Close(c.pidfd)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			_ = pidfdSignal(c.pidfd, unix.SIGKILL)
			var ci childInfo
			_ = waitid(unix.P_PIDFD, c.pidfd, &ci, unix.WEXITED)
			return -1, fmt.Errorf("the first process (pid %d) did not exit within %s: does it daemonize? (it was killed)", c.pid, forkingWait)
		}
		if pollReadable(c.pidfd, left) {
			break
		}
	}
	var ci childInfo
	if err := waitid(unix.P_PIDFD, c.pidfd, &ci, unix.WEXITED); err != nil {
		return -1, fmt.Errorf("reap the first process (pid %d): %w", c.pid, err)
	}
	return ci.status(), nil
}

// forkingMain waits until the PID file names a live process of the
// service's cgroup (a daemon may write it just after its parent exits) and
// returns it with a pidfd opened before the last membership check. A file
// written since the spawn that names a process outside the cgroup is
// refused at once; an older one (a stale file) is waited on.
func forkingMain(cg *svcCgroup, spec plugin.Spec, spawned, deadline time.Time) (pid, pidfd int, err error) {
	uid := -1
	if spec.UID >= 0 {
		uid = spec.UID
	}
	for {
		var mtime time.Time
		pid, mtime, err = readPIDFile(spec.PIDFile, uid)
		if err == nil {
			if !cg.contains(pid) {
				if !mtime.Before(spawned.Truncate(time.Second)) {
					return 0, -1, fmt.Errorf("pid_file %s names pid %d, which is not a process of the service's cgroup %s: refused", spec.PIDFile, pid, cg.path)
				}
				err = fmt.Errorf("pid_file %s names pid %d, which is not a process of the service's cgroup %s: refused", spec.PIDFile, pid, cg.path)
			} else if pidfd, err = unix.PidfdOpen(pid, 0); err == nil {
				if cg.contains(pid) {
					return pid, pidfd, nil
				}
				unix.Close(pidfd)
				err = fmt.Errorf("pid_file %s: pid %d left the service's cgroup", spec.PIDFile, pid)
			}
		}
		var unsafe *pidFileError
		if errors.As(err, &unsafe) || time.Now().After(deadline) {
			return 0, -1, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pidFileError: the PID file cannot be trusted (not merely not there yet).
type pidFileError struct{ msg string }

func (e *pidFileError) Error() string { return e.msg }

// readPIDFile reads the PID in path. It never follows a path another user
// can change: every component is opened relative to the one before with
// O_NOFOLLOW (a symlink fails), each directory must belong to root or uid
// (the service's user; -1: root only) and not be writable by group or
// others unless sticky, and the file must be a regular file of root's or
// uid's with one link and at most 32 bytes. A missing file is an ordinary
// error (the daemon may not have written it yet); the rest is a
// *pidFileError.
func readPIDFile(path string, uid int) (pid int, mtime time.Time, err error) {
	owner := func(st *unix.Stat_t) bool { return st.Uid == 0 || (uid >= 0 && st.Uid == uint32(uid)) }
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, mtime, err
	}
	parts := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	at := ""
	for i, part := range parts {
		at += "/" + part
		last := i == len(parts)-1
		flags := unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW
		if last {
			flags = unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOFOLLOW
		}
		next, oerr := unix.Openat(fd, part, flags, 0)
		unix.Close(fd)
		if err = oerr; err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return 0, mtime, &pidFileError{fmt.Sprintf("pid_file %s: %s is a symlink or not a directory: refused", path, at)}
			}
			return 0, mtime, fmt.Errorf("pid_file %s: %w", path, err)
		}
		fd = next
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return 0, mtime, fmt.Errorf("pid_file %s: %w", path, err)
		}
		switch {
		case !owner(&st):
			unix.Close(fd)
			return 0, mtime, &pidFileError{fmt.Sprintf("pid_file %s: %s belongs to uid %d, not root or the service's user: refused", path, at, st.Uid)}
		case !last && st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			unix.Close(fd)
			return 0, mtime, &pidFileError{fmt.Sprintf("pid_file %s: %s is writable by group or others (mode %04o): refused", path, at, st.Mode&0o7777)}
		case last && (st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 || st.Size > 32):
			unix.Close(fd)
			return 0, mtime, &pidFileError{fmt.Sprintf("pid_file %s: not a regular file of at most 32 bytes with one link: refused", path)}
		case last && st.Mode&0o022 != 0:
			unix.Close(fd)
			return 0, mtime, &pidFileError{fmt.Sprintf("pid_file %s: writable by group or others (mode %04o): refused", path, st.Mode&0o7777)}
		}
		mtime = time.Unix(st.Mtim.Unix())
	}
	defer unix.Close(fd)
	var buf [33]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil {
		return 0, mtime, fmt.Errorf("pid_file %s: %w", path, err)
	}
	pid, err = strconv.Atoi(string(bytes.TrimSpace(buf[:n])))
	if err != nil || pid <= 1 {
		return 0, mtime, fmt.Errorf("pid_file %s: %q is not a PID", path, bytes.TrimSpace(buf[:n]))
	}
	return pid, mtime, nil
}

// startedForking makes the process pid (pidfd) of p's cgroup the service's
// current incarnation: slot, spawn event, watch.
func (s *Shim) startedForking(p *startPlan, pid, pidfd int) (plugin.SpawnResult, error) {
	svc, spec, idx, gen := p.svc, p.spec, p.idx, p.gen
	beginSpawn()
	ps, err := readProcStat(pid)
	child := err == nil && ps.PPID == os.Getpid()
	if child {
		trackPID(pid)
	}
	endSpawn()
	if err != nil {
		unix.Close(pidfd)
		return plugin.SpawnResult{}, fmt.Errorf("spawn %q: type \"forking\": pid %d: %w", spec.Name, pid, unwrapPath(err))
	}
	inc := &incarnation{
		svc: svc, idx: idx, key: watchKey(idx, gen), pid: pid, gen: gen,
		startTime: ps.StartTime, child: child, pidfd: pidfd, done: make(chan struct{}),
		killMode: KillCgroup, cg: svc.cg, started: time.Now(), startNs: shm.MonotonicNs(), forking: true,
	}
	s.mu.Lock()
	svc.cur = inc
	if svc.logsDirect() {
		s.kickChores() // the log pass trims what it writes
	}
	s.incs[inc.key] = inc
	s.mu.Unlock()
	state := shm.StateStarting
	if spec.RunningAtSpawn {
		state = shm.StateRunning
	}
	s.w.Spawned(idx, uint32(pid), gen, ps.StartTime, state, 0)
	s.kickRecord()
	svc.spec, svc.exe = spec, p.argv0
	s.emit(plugin.Event{Kind: plugin.EventSpawn, Name: spec.Name, Slot: idx, PID: pid, Generation: gen, DetectedNs: inc.startNs})
	watch := s.watcher.Watch
	if child {
		watch = s.watcher.WatchChild
	}
	if err := watch(inc.key, pid, pidfd); err != nil {
		s.abortForking(inc)
		return plugin.SpawnResult{}, fmt.Errorf("spawn %q: watch pid %d: %w", spec.Name, pid, err)
	}
	s.log.Debug("spawned (forking)", "service", spec.Name, "pid", pid, "slot", idx, "generation", gen, "child", child)
	return plugin.SpawnResult{Slot: idx, PID: pid, Generation: gen, StartTime: ps.StartTime}, nil
}

// abortForking undoes startedForking when the watch cannot be armed: the
// cgroup is emptied, the exit recorded and reported.
func (s *Shim) abortForking(inc *incarnation) {
	s.mu.Lock()
	delete(s.incs, inc.key)
	s.mu.Unlock()
	s.w.ClearPID(inc.idx, uint32(inc.pid))
	_, _ = inc.cg.empty(cgroupEmptyWait)
	inc.mu.Lock()
	if inc.child {
		var ci childInfo
		_ = waitid(unix.P_PIDFD, inc.pidfd, &ci, unix.WEXITED)
		untrackPID(inc.pid)
	}
	unix.Close(inc.pidfd)
	inc.pidfd, inc.reaped = -1, true
	inc.mu.Unlock()
	now := shm.MonotonicNs()
	s.w.RecordExit(inc.idx, uint32(inc.pid), -1, now, shm.StateExited)
	s.kickRecord()
	close(inc.done)
	s.emit(plugin.Event{Kind: plugin.EventExit, Name: inc.svc.name, Slot: inc.idx, PID: inc.pid,
		Generation: inc.gen, Status: -1, Source: "reaper", DetectedNs: now})
}
