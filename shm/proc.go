package shm

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// MonotonicNs returns CLOCK_MONOTONIC in nanoseconds, the clock of
// changed_ns, last_exit_ns and writer_beat_ns.
func MonotonicNs() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0 // cannot fail on Linux with a valid pointer and clock
	}
	return uint64(ts.Nano())
}

// realtimeNs returns CLOCK_REALTIME in nanoseconds, the clock of created_ns.
func realtimeNs() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// StartTime returns field 22 of /proc/PID/stat, the time the process started
// in clock ticks since boot. Together with the PID it identifies one process:
// a recycled PID has a different start time. The error wraps fs.ErrNotExist
// when the process does not exist.
func StartTime(pid int) (uint64, error) {
	// open, read, close: three system calls and one buffer on the stack,
	// since the plugin does this on every spawn before it stores the PID.
	var path [32]byte
	p := append(append(append(path[:0], "/proc/"...), strconv.Itoa(pid)...), "/stat"...)
	fd, err := unix.Open(string(p), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("shm: start time of pid %d: %w", pid, &os.PathError{Op: "open", Path: string(p), Err: err})
	}
	var buf [1024]byte
	n, err := unix.Read(fd, buf[:])
	unix.Close(fd)
	if err != nil {
		return 0, fmt.Errorf("shm: start time of pid %d: %w", pid, &os.PathError{Op: "read", Path: string(p), Err: err})
	}
	b := buf[:max(n, 0)]
	v, err := parseStartTime(b)
	if err != nil {
		return 0, fmt.Errorf("shm: start time of pid %d: /proc/%d/stat: %w", pid, pid, err)
	}
	return v, nil
}

// parseStartTime extracts field 22 from the contents of /proc/PID/stat. Field
// 2, comm, is in parentheses and may itself contain spaces and ')', so the
// fields are counted from the last ')'.
func parseStartTime(b []byte) (uint64, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("no ')' closing the command name")
	}
	// After ") " come fields 3 (state), 4 (ppid), ...; field 22 is the 20th.
	fields := bytes.Fields(b[end+1:])
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(fields), idx+1)
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field 22 (starttime): %w", err)
	}
	return v, nil
}
