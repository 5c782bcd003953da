package connectortest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RTLoad is a real-time load: one SCHED_FIFO busy spinner per CPU, and a
// peer thread of the caller above them that kills a process and watches a
// word until it changes.
type RTLoad struct {
	// Spinner returns the command of the spinner for cpu: pinned to it, it
	// becomes SCHED_FIFO, prints "ready\n", waits for end of file on
	// descriptor 3 (the gate), then spins. It should end by itself after a
	// while (alarm), whatever happens to the caller.
	Spinner func(cpu int) *exec.Cmd
	// PeerPriority is the peer thread's SCHED_FIFO priority, above the
	// spinners'.
	PeerPriority int
	// Settle is the time between the spinners' start and the kill.
	Settle time.Duration
	// Poll is the peer's sleep between two looks at the word.
	Poll time.Duration
	// GiveUp ends the watch when the word has not changed.
	GiveUp time.Duration
}

// KillUnder starts the spinners on every CPU of the caller's affinity,
// kills pid with SIGKILL from the peer thread once they spin, and watches
// word until it no longer returns pid (or GiveUp has passed). The peer
// kills the spinners as soon as it is done. It returns the time from the
// kill to the change, whether the change was seen, and the kill's
// CLOCK_MONOTONIC nanoseconds. While the spinners run, the peer makes raw
// system calls only, and garbage collection is off: the Go runtime's other
// threads are ordinary and starved. word must not allocate.
func (l RTLoad) KillUnder(pid uint32, word func() uint32) (took time.Duration, seen bool, killNs uint64, err error) {
	var gate [2]int
	if err := unix.Pipe2(gate[:], unix.O_CLOEXEC); err != nil {
		return 0, false, 0, err
	}
	gateR := os.NewFile(uintptr(gate[0]), "gate")
	gateOpen := true
	var spinners []*exec.Cmd
	defer func() {
		for _, c := range spinners {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		if gateOpen {
			unix.Close(gate[1])
		}
		gateR.Close()
	}()
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return 0, false, 0, err
	}
	for cpu := range 1024 {
		if !cpus.IsSet(cpu) {
			continue
		}
		c := l.Spinner(cpu)
		c.ExtraFiles = []*os.File{gateR}
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := c.StdoutPipe()
		if err != nil {
			return 0, false, 0, err
		}
		if err := c.Start(); err != nil {
			return 0, false, 0, err
		}
		spinners = append(spinners, c)
		if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			return 0, false, 0, fmt.Errorf("spinner on CPU %d: %q, %v", cpu, line, err)
		}
	}
	pids := make([]int, len(spinners))
	for i, c := range spinners {
		pids[i] = c.Process.Pid
	}

	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	type result struct {
		took   time.Duration
		seen   bool
		t0     uint64
		closed bool // the peer closed the gate
		err    error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		rt := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(l.PeerPriority)}
		if err := unix.SchedSetAttr(0, &rt, 0); err != nil {
			done <- result{err: fmt.Errorf("the peer thread: SCHED_FIFO %d: %w", l.PeerPriority, err)}
			return
		}
		defer func() {
			back := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: 0} // SCHED_OTHER
			_ = unix.SchedSetAttr(0, &back, 0)
		}()
		sleep := func(d time.Duration) {
			ts := unix.NsecToTimespec(int64(d))
			_, _, _ = unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0) // EINTR: a shorter look
		}
		var r result
		_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(gate[1]), 0, 0) // end of file: they spin
		r.closed = true
		sleep(l.Settle)
		r.t0 = monotonicNs()
		if _, _, e := unix.RawSyscall(unix.SYS_KILL, uintptr(pid), uintptr(unix.SIGKILL), 0); e != 0 {
			r.err = fmt.Errorf("kill %d: %w", pid, e)
		}
		for r.err == nil {
			now := monotonicNs()
			if word() != pid {
				r.took, r.seen = time.Duration(now-r.t0), true
				break
			}
			if r.took = time.Duration(now - r.t0); r.took > l.GiveUp {
				break
			}
			sleep(l.Poll)
		}
		for _, p := range pids {
			_, _, _ = unix.RawSyscall(unix.SYS_KILL, uintptr(p), uintptr(unix.SIGKILL), 0)
		}
		done <- r
	}()
	r := <-done
	if r.closed {
		gateOpen = false
	}
	return r.took, r.seen, r.t0, r.err
}

// monotonicNs is CLOCK_MONOTONIC in nanoseconds.
func monotonicNs() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}
