package shm

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// realtimeNs returns CLOCK_REALTIME in nanoseconds, the clock of created_ns.
func realtimeNs() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// Stat is the part of /proc/PID/stat that hb reads: the one parser of that
// file in hb (the plugin, hbd and the benchmark all use it).
type Stat struct {
	State        byte   // field 3: R, S, D, Z, T, ...
	PPID         int    // field 4
	PGRP         int    // field 5
	UTime, STime uint64 // fields 14 and 15, clock ticks
	// StartTime is field 22: when the process started, in clock ticks since
	// boot. Together with the PID it identifies one process: a recycled PID
	// has a different start time.
	StartTime uint64
	// ExitCode is field 52 (Linux 3.5): the wait status of an exited
	// process (a zombie), in the form waitpid(2) reports it; HaveExitCode
	// is false where the field is missing or hidden.
	ExitCode     int
	HaveExitCode bool
}

// ExitStatus is hb's form of a wait status w (as ExitCode holds it): the
// exit code, or 128 + the signal that killed the process.
func ExitStatus(w int) int {
	if sig := w & 0x7f; sig != 0 {
		return 128 + sig
	}
	return (w >> 8) & 0xff
}

// StartTime returns field 22 of /proc/PID/stat (Stat.StartTime). The error
// wraps fs.ErrNotExist when the process does not exist.
func StartTime(pid int) (uint64, error) {
	st, err := ReadStat(pid)
	return st.StartTime, err
}

// ReadStat reads and parses /proc/PID/stat. The error wraps fs.ErrNotExist
// when the process does not exist.
func ReadStat(pid int) (Stat, error) {
	// open, read, close: three system calls and one buffer on the stack,
	// since the plugin does this on every spawn before it stores the PID.
	var path [32]byte
	p := append(append(append(path[:0], "/proc/"...), strconv.Itoa(pid)...), "/stat"...)
	fd, err := unix.Open(string(p), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stat{}, fmt.Errorf("shm: stat of pid %d: %w", pid, &os.PathError{Op: "open", Path: string(p), Err: err})
	}
	var buf [1024]byte
	n, err := unix.Read(fd, buf[:])
	_ = unix.Close(fd)
	if err != nil {
		return Stat{}, fmt.Errorf("shm: stat of pid %d: %w", pid, &os.PathError{Op: "read", Path: string(p), Err: err})
	}
	st, err := ParseStat(buf[:max(n, 0)])
	if err != nil {
		return Stat{}, fmt.Errorf("shm: stat of pid %d: /proc/%d/stat: %w", pid, pid, err)
	}
	return st, nil
}

// ParseStat parses the contents of /proc/PID/stat. Field 2, comm, is in
// parentheses and may itself contain spaces and ')', so the fields are
// counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return Stat{}, fmt.Errorf("no ')' closing the command name")
	}
	// After ") " come fields 3 (state), 4 (ppid), ...; field 22 is the 20th.
	f := bytes.Fields(b[end+1:])
	const last = 22 - 3
	if len(f) <= last {
		return Stat{}, fmt.Errorf("%d fields after the command name, want at least %d", len(f), last+1)
	}
	if len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("field 3 (state) %q is not one letter", f[0])
	}
	st := Stat{State: f[0][0]}
	var err error
	num := func(i int, name string) uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		if v, err = strconv.ParseUint(string(f[i]), 10, 64); err != nil {
			err = fmt.Errorf("field %d (%s): %w", i+3, name, err)
		}
		return v
	}
	st.PPID = int(num(1, "ppid"))
	st.PGRP = int(num(2, "pgrp"))
	st.UTime = num(11, "utime")
	st.STime = num(12, "stime")
	st.StartTime = num(last, "starttime")
	if err != nil {
		return Stat{}, err
	}
	if const52 := 52 - 3; len(f) > const52 {
		if v, e := strconv.ParseInt(string(f[const52]), 10, 32); e == nil {
			st.ExitCode, st.HaveExitCode = int(v), true
		}
	}
	return st, nil
}
