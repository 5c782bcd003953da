package shim

import (
	"errors"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/shm"
)

// is64bit is 1 on 64-bit hosts, where the signal-specific part of siginfo_t
// starts 4 bytes later (the union is 8-byte aligned).
const is64bit = ^uint(0) >> 63

// childInfo is the SIGCHLD view of siginfo_t as filled by waitid(2).
// unix.Siginfo keeps these fields opaque.
type childInfo struct {
	Signo int32
	Errno int32
	Code  int32
	_     [is64bit]int32
	Pid   int32
	UID   uint32
	// Status is the exit code (CLD_EXITED) or the signal number.
	Status int32
	_      [128 - (6+is64bit)*4]byte
}

// si_code values for SIGCHLD.
const (
	cldExited  = 1
	cldKilled  = 2
	cldDumped  = 3
	cldTrapped = 4 // a traced child stopped
	cldStopped = 5
)

// status converts the waitid result to hb's exit status: the exit code, or
// 128+signal for a process killed by a signal.
func (ci *childInfo) status() int {
	switch ci.Code {
	case cldExited:
		return int(ci.Status)
	case cldKilled, cldDumped:
		return 128 + int(ci.Status)
	}
	return -1
}

// waitid is waitid(2) with a typed siginfo, retried on EINTR. With WNOHANG
// and nothing to report it returns nil and ci.Pid == 0.
func waitid(idtype, id int, ci *childInfo, options int) error {
	*ci = childInfo{}
	for {
		_, _, e := unix.Syscall6(unix.SYS_WAITID, uintptr(idtype), uintptr(id),
			uintptr(unsafe.Pointer(ci)), uintptr(options), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// reapPidfd reaps the child behind pidfd exactly once. reaped is false when
// the process is not our child (ECHILD: adopted after a plugin restart) or
// its zombie did not become visible within wait. The zombie of a child whose
// pidfd has been reported readable is normally visible at once; wait only
// covers the gap between the connector's event and the kernel's exit_notify.
func reapPidfd(pidfd int, wait time.Duration) (status int, reaped bool, err error) {
	var ci childInfo
	for attempt := 0; attempt < 2; attempt++ {
		err = waitid(unix.P_PIDFD, pidfd, &ci, unix.WEXITED|unix.WNOHANG)
		if err != nil {
			return -1, false, err
		}
		if ci.Pid != 0 {
			return ci.status(), true, nil
		}
		if attempt == 0 {
			// Not a zombie yet: sleep in poll until the pidfd is readable.
			pollReadable(pidfd, wait)
		}
	}
	return -1, false, nil
}

// pollReadable waits up to d for fd to become readable and reports whether it is.
func pollReadable(fd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms < 0 {
			ms = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// procStat is the part of /proc/PID/stat the shim needs.
type procStat = shm.Stat

// readProcStat parses /proc/PID/stat (shm.ReadStat, hb's one parser of it).
func readProcStat(pid int) (procStat, error) { return shm.ReadStat(pid) }

// killGroup sends sig to process group pgid; a group that no longer exists
// is not an error.
func killGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return fmt.Errorf("kill group %d: refusing", pgid)
	}
	err := unix.Kill(-pgid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// pidfdSignal sends sig through pidfd; a process that has already exited is
// not an error.
func pidfdSignal(pidfd int, sig syscall.Signal) error {
	err := unix.PidfdSendSignal(pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// userHZ is the unit of the start time in /proc/PID/stat (USER_HZ, 100 on
// every Linux port).
const userHZ = 100

// bootTicks is CLOCK_BOOTTIME in USER_HZ ticks, rounded down as the kernel
// rounds a process's start time: a process created between two calls that
// return the same value has that start time.
func bootTicks() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano()) / (1e9 / userHZ)
}

// nonChildReapWait bounds how long the exit path waits for the parent of a
// process that is not the plugin's child to reap it, for its status.
const nonChildReapWait = 250 * time.Millisecond

// pidfdExitStatus is the exit status (code, or 128+signal) of the exited
// process of pidfd from PIDFD_GET_INFO with PIDFD_INFO_EXIT (Linux 6.15+),
// waiting up to wait for the pidfd to report the process reaped
// (POLLHUP); -1 when the kernel does not tell.
func pidfdExitStatus(pidfd int, wait time.Duration) int {
	if pidfd < 0 {
		return -1
	}
	deadline := time.Now().Add(wait)
	for {
		info := unix.PidfdInfo{Mask: unix.PIDFD_INFO_EXIT}
		err := unix.IoctlPidfdInfo(pidfd, &info)
		if err == nil && info.Mask&unix.PIDFD_INFO_EXIT != 0 {
			ws := unix.WaitStatus(info.Exit_code)
			switch {
			case ws.Exited():
				return ws.ExitStatus()
			case ws.Signaled():
				return 128 + int(ws.Signal())
			}
			return -1
		}
		if err != nil && !errors.Is(err, unix.ESRCH) {
			return -1 // no PIDFD_GET_INFO (before 6.13) or no exit info (before 6.15)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return -1
		}
		// No event asked for: POLLHUP (reaped) is reported anyway, and the
		// readiness of an exited, unreaped process does not spin this loop.
		fds := []unix.PollFd{{Fd: int32(pidfd)}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return -1
		}
		if n > 0 && fds[0].Revents&unix.POLLHUP != 0 {
			deadline = time.Now()
		}
	}
}
