package shm

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestMonotonicNsIsClockMonotonic: the vDSO reading is the kernel's
// CLOCK_MONOTONIC (the clock of the tracepoint's and the exit's stamps),
// not a clock relative to the process's start.
func TestMonotonicNsIsClockMonotonic(t *testing.T) {
	for range 1000 {
		var a, b unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &a); err != nil {
			t.Fatal(err)
		}
		m := MonotonicNs()
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &b)
		if m < uint64(a.Nano()) || m > uint64(b.Nano()) {
			t.Fatalf("MonotonicNs %d is not between two CLOCK_MONOTONIC readings %d and %d", m, a.Nano(), b.Nano())
		}
	}
}
