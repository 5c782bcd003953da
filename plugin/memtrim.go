package plugin

import (
	"runtime/debug"
	"sync"
	"time"
)

// BurstTrim gives the heap memory a process no longer uses back to the
// system once a burst of work has settled: starting a thousand services is a
// burst of short-lived allocations (several MiB in hbd and in the plugin)
// that the runtime would otherwise return only gradually, over minutes on
// a quiet machine, while what the process keeps is a small part of it. Note
// marks one unit of work; Quiet after the last of at least Burst notes,
// debug.FreeOSMemory runs once (one collection of the small heap that is
// left). It never runs on an exit's way, and an idle process arms no timer.
type BurstTrim struct {
	Burst int           // notes that make a burst
	Quiet time.Duration // how long after the last note the memory goes back

	mu sync.Mutex
	n  int
	t  *time.Timer
}

// Note counts one unit of work of the current burst.
func (b *BurstTrim) Note() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n++
	if b.n < b.Burst {
		return
	}
	if b.t == nil {
		b.t = time.AfterFunc(b.Quiet, b.release)
		return
	}
	b.t.Reset(b.Quiet)
}

func (b *BurstTrim) release() {
	b.mu.Lock()
	b.n, b.t = 0, nil
	b.mu.Unlock()
	debug.FreeOSMemory()
}
