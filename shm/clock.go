package shm

import _ "unsafe" // for go:linkname

// nanotime is the runtime's CLOCK_MONOTONIC, read through the vDSO. x/sys's
// ClockGettime is a system call: on the exit path and in the watchdog's
// samples that cost a kernel entry each, and it woke the runtime's sysmon
// thread from its sleep every time (entersyscall), doubling the context
// switches of an otherwise idle plugin.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// MonotonicNs returns CLOCK_MONOTONIC in nanoseconds, the clock of
// changed_ns, last_exit_ns and writer_beat_ns, and of the kernel's
// bpf_ktime_get_ns and exec/exit stamps.
func MonotonicNs() uint64 { return uint64(nanotime()) }
