package connector

import (
	"os"
	"runtime"
)

// SpareProcs is how many Ps ReserveProcs adds to the runtime's default.
const SpareProcs = 2

// ReserveProcs raises GOMAXPROCS by SpareProcs, unless the environment sets
// GOMAXPROCS, and returns the value in force. A program whose Watcher must
// report deaths while every CPU is busy calls it once, at its start: above
// all one whose reader runs at a real-time priority (Options.Priority).
//
// A reader woken from its wait needs a P to run the Go code that reports
// the death. With as many Ps as CPUs, every P can be held by an ordinary
// thread that the kernel has preempted (a flood of exits keeps every CPU
// busy): the real-time reader, though woken at once, then sleeps until one
// of those threads is scheduled again and hands a P over. A trace of an
// exit flood showed the reader wake 25 µs after the SIGKILL and store the 0
// 122 ms later. Spare Ps are idle in the common case; their caches cost the
// plugin about 0.4 MiB with 1000 services (docs/benchmark.md).
func ReserveProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := runtime.GOMAXPROCS(0) + SpareProcs
	runtime.GOMAXPROCS(n)
	return n
}
