//go:build cgo

package shim

/*
#include <stdlib.h>
#include "spawn_clone3_linux_amd64.h"
*/
import "C"

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
)

// clone3Off is set once clone3 proved unusable here (a kernel before 5.5,
// or a seccomp policy that refuses it): every spawn then uses ForkExec.
var clone3Off atomic.Bool

func clone3Usable() bool { return !clone3Off.Load() }

// stepNames names the child's steps (HB_STEP_*) in errors.
var stepNames = [...]string{"", "setpgid", "setgroups", "setgid", "setuid", "chdir", "setrlimit", "set up descriptors", "exec", "signal mask",
	"cpus (sched_setaffinity)", "nice (setpriority)", "sched (sched_setscheduler)", "rlimits (prlimit)"}

// nofile is the RLIMIT_NOFILE the plugin was started with, when the Go
// runtime has raised it since: services get the original, as from
// syscall.ForkExec.
var nofile = sync.OnceValues(func() (lim unix.Rlimit, restore bool) {
	var cur, max C.uint64_t
	if C.hb_nofile_at_start(&cur, &max) == 0 {
		return lim, false
	}
	var now unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &now); err != nil {
		return lim, false
	}
	lim = unix.Rlimit{Cur: uint64(cur), Max: uint64(max)}
	return lim, lim != now
})

// spawnClone3 is spawnProc through hb_spawn (spawn_clone3_linux_amd64.c).
// ok is false when clone3 cannot be used here; the caller then falls back
// to ForkExec.
func spawnClone3(a *procAttr) (pid, pidfd int, err error, ok bool) {
	block, req := newSpawnReq(a)
	defer C.free(block)

	syscall.ForkLock.Lock()
	ret := C.hb_spawn(req)
	syscall.ForkLock.Unlock()
	return clone3Result(ret, req)
}

// clone3Result interprets what hb_spawn returned for req.
func clone3Result(ret C.long, req *C.struct_hb_spawn_req) (pid, pidfd int, err error, ok bool) {
	if ret < 0 {
		e := syscall.Errno(-ret)
		// Into a cgroup, EINVAL, EPERM, EBUSY, EOPNOTSUPP are the
		// cgroup's refusal (docs/cgroups.md), not clone3's.
		cgroupRefused := req.into_cgroup != 0 && e != syscall.ENOSYS && e != syscall.E2BIG
		if !cgroupRefused && (e == syscall.ENOSYS || e == syscall.EINVAL || e == syscall.EPERM || e == syscall.E2BIG) {
			clone3Off.Store(true)
			return 0, -1, nil, false
		}
		return 0, -1, e, true
	}
	pid, pidfd = int(ret), int(req.pidfd)
	if req.err == 0 {
		return pid, pidfd, nil, true
	}
	// The child failed before exec and has exited (127): reap it here.
	e := syscall.Errno(req.err)
	var ci childInfo
	if pidfd >= 0 {
		_ = waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED)
		unix.Close(pidfd)
	} else {
		_ = waitid(unix.P_PID, pid, &ci, unix.WEXITED)
	}
	if step := int(req.step); step != C.HB_STEP_EXEC && step > 0 && step < len(stepNames) {
		return 0, -1, &spawnStepError{step: stepNames[step], err: e}, true
	}
	return 0, -1, e, true
}

// reapRespawnClone3 is reapRespawn through hb_reap_respawn. It does not
// hold syscall.ForkLock, which would stop every other spawn for as long as
// the zombie takes: ForkLock only matters for descriptors created without
// close-on-exec, and the plugin creates none (Go's os and net packages,
// netlink, epoll, eventfd, pidfds, BPF objects and the table all open theirs
// close-on-exec). ok is false when clone3 proved unusable here before
// anything was reaped.
func reapRespawnClone3(pidfd int, wait time.Duration, a *procAttr, pol plugin.Respawn, stop *atomic.Bool) (r reaped, ok bool) {
	block, req := newSpawnReq(a)
	defer C.free(block)
	// rr may be Go memory, passed for the call only, as long as what it
	// points to is not: the request and the exit codes are C memory.
	var rr C.struct_hb_reap_req
	if n := len(pol.ExitCodes); n > 0 {
		codes := (*C.int)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.int(0)))))
		if codes == nil {
			panic("hb: out of memory")
		}
		defer C.free(unsafe.Pointer(codes))
		cs := unsafe.Slice(codes, n)
		for i, c := range pol.ExitCodes {
			cs[i] = C.int(c)
		}
		rr.codes, rr.ncodes = codes, C.int(n)
	}
	rr.pidfd = C.int(pidfd)
	rr.wait_ms = C.int(wait.Milliseconds())
	if pol.OnFailure {
		rr.on_failure = 1
	}
	rr.spawn = req
	rr.cg_events_fd = -1
	if a.intoCgroup {
		rr.cg_events_fd = C.int(a.cgEvents)
	}

	// stop, too, is Go memory with no pointers in it (an atomic.Bool is
	// one uint32).
	C.hb_reap_respawn(&rr, (*C.uint32_t)(unsafe.Pointer(stop)))
	r.status, r.ok = int(rr.status), rr.reaped != 0
	if rr.err != 0 {
		r.err = syscall.Errno(rr.err)
	}
	r.cgBusy = rr.cg_busy != 0
	if rr.spawned == 0 {
		return r, true
	}
	r.tried = true
	r.c.tick0, r.c.tick1 = uint64(rr.spawn_t0)/(1e9/userHZ), uint64(rr.spawn_t1)/(1e9/userHZ)
	pid, pidfd, err, usable := clone3Result(rr.spawned, req)
	if !usable {
		// clone3 refused here: the caller spawns with the fallback.
		r.tried = false
		return r, true
	}
	r.c.pid, r.c.pidfd, r.spawnErr = pid, pidfd, err
	return r, true
}

// newSpawnReq lays out the request and everything it points to in one C
// allocation (freed by the caller): the child reads it after the Go
// runtime has lost sight of this goroutine, so none of it may be Go memory.
func newSpawnReq(a *procAttr) (unsafe.Pointer, *C.struct_hb_spawn_req) {
	const ptr = unsafe.Sizeof(uintptr(0))
	reqSize := (unsafe.Sizeof(C.struct_hb_spawn_req{}) + 7) &^ 7
	ngroups := 0
	if a.cred != nil && !a.cred.NoSetGroups {
		ngroups = len(a.cred.Groups)
	}
	groupsSize := (uintptr(ngroups)*4 + 7) &^ 7
	pl := a.place
	var mask []uint64
	var nrl int
	if pl != nil {
		mask = cpuMask(pl.cpus)
		nrl = len(pl.rlimits)
	}
	placeSize := uintptr(len(mask))*8 + (uintptr(nrl)*4+7)&^7 + uintptr(nrl)*16
	strs := len(a.path) + 1 + len(a.dir) + 1
	for _, s := range a.argv {
		strs += len(s) + 1
	}
	for _, s := range a.env {
		strs += len(s) + 1
	}
	argvOff := reqSize
	envOff := argvOff + uintptr(len(a.argv)+1)*ptr
	groupsOff := envOff + uintptr(len(a.env)+1)*ptr
	placeOff := groupsOff + groupsSize
	strOff := placeOff + placeSize
	total := strOff + uintptr(strs)

	block := C.malloc(C.size_t(total))
	if block == nil {
		panic("hb: out of memory")
	}
	mem := unsafe.Slice((*byte)(block), total)
	clear(mem[:strOff])
	at := strOff
	put := func(s string) *C.char {
		p := (*C.char)(unsafe.Pointer(&mem[at]))
		copy(mem[at:], s)
		mem[at+uintptr(len(s))] = 0
		at += uintptr(len(s)) + 1
		return p
	}
	req := (*C.struct_hb_spawn_req)(block)
	argv := unsafe.Slice((**C.char)(unsafe.Pointer(&mem[argvOff])), len(a.argv)+1)
	for i, s := range a.argv {
		argv[i] = put(s)
	}
	envp := unsafe.Slice((**C.char)(unsafe.Pointer(&mem[envOff])), len(a.env)+1)
	for i, s := range a.env {
		envp[i] = put(s)
	}
	req.path = put(a.path)
	if a.dir != "" {
		req.dir = put(a.dir)
	}
	req.argv = (**C.char)(unsafe.Pointer(&argv[0]))
	req.envp = (**C.char)(unsafe.Pointer(&envp[0]))
	fds := a.fds()
	for i, fd := range fds {
		req.fd[i] = C.int(fd)
	}
	req.nfd = C.int(len(fds))
	req.setpgid = 1
	if a.intoCgroup {
		req.into_cgroup, req.cgroup_fd = 1, C.int(a.cgroup)
	}
	if c := a.cred; c != nil {
		req.cred = 1
		req.uid, req.gid = C.uint32_t(c.Uid), C.uint32_t(c.Gid)
		if ngroups > 0 {
			groups := unsafe.Slice((*C.uint32_t)(unsafe.Pointer(&mem[groupsOff])), ngroups)
			for i, g := range c.Groups {
				groups[i] = C.uint32_t(g)
			}
			req.groups = &groups[0]
		}
		req.ngroups = C.int(ngroups)
		if c.NoSetGroups {
			req.ngroups = -1
		}
	}
	if pl != nil {
		at := placeOff
		if len(mask) > 0 {
			m := unsafe.Slice((*C.ulong)(unsafe.Pointer(&mem[at])), len(mask))
			for i, w := range mask {
				m[i] = C.ulong(w)
			}
			req.cpus, req.cpus_len = &m[0], C.int(len(mask)*8)
			at += uintptr(len(mask)) * 8
		}
		if nrl > 0 {
			res := unsafe.Slice((*C.int)(unsafe.Pointer(&mem[at])), nrl)
			at += (uintptr(nrl)*4 + 7) &^ 7
			cur := unsafe.Slice((*C.uint64_t)(unsafe.Pointer(&mem[at])), nrl)
			at += uintptr(nrl) * 8
			max := unsafe.Slice((*C.uint64_t)(unsafe.Pointer(&mem[at])), nrl)
			for i, l := range pl.rlimits {
				res[i], cur[i], max[i] = C.int(l.Resource), C.uint64_t(l.Cur), C.uint64_t(l.Max)
			}
			req.nrlimits, req.rlimit_res, req.rlimit_cur, req.rlimit_max = C.int(nrl), &res[0], &cur[0], &max[0]
		}
		if pl.setNice {
			req.set_nice, req.nice = 1, C.int(pl.nice)
		}
		if pl.setSched {
			req.set_sched, req.sched_policy, req.sched_priority = 1, C.int(pl.policy), C.int(pl.priority)
		}
		if pl.setUmask {
			req.set_umask, req.umask = 1, C.int(pl.umask)
		}
	}
	if lim, restore := nofile(); restore && !pl.setsNofile() {
		req.set_nofile = 1
		req.nofile_cur, req.nofile_max = C.uint64_t(lim.Cur), C.uint64_t(lim.Max)
	}
	return block, req
}

// cWantsStatus is the C spawner's copy of pol.WantsStatus (hb_wanted), for
// the test that keeps the two in agreement.
func cWantsStatus(pol plugin.Respawn, status int) bool {
	var rr C.struct_hb_reap_req
	if n := len(pol.ExitCodes); n > 0 {
		codes := (*C.int)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.int(0)))))
		defer C.free(unsafe.Pointer(codes))
		for i, c := range pol.ExitCodes {
			unsafe.Slice(codes, n)[i] = C.int(c)
		}
		rr.codes, rr.ncodes = codes, C.int(n)
	}
	if pol.OnFailure {
		rr.on_failure = 1
	}
	return C.hb_wanted(&rr, C.int(status)) != 0
}
