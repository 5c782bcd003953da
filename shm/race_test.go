package shm

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// The flipping scheme shared by the Go and C consistency tests: incarnation
// g >= 1 of the service in the slot is
//
//	Spawned(i, pid g*7, gen g, start_time g*3, running, flags g&1)
//	RecordExit(i, pid g*7, status g%256, exit_ns g*11, backoff)
//
// so every consistent copy satisfies checkFlip, and a torn one (fields of
// two different updates) does not.
func flip(w *Writer, i int, g uint64) {
	pid := uint32(g * 7)
	w.Spawned(i, pid, g, g*3, StateRunning, uint32(g&1))
	w.RecordExit(i, pid, int32(g%256), g*11, StateBackoff)
}

// checkFlip returns why s cannot be a consistent copy of a flipped slot, or "".
func checkFlip(s Slot) string {
	g := s.Generation
	if s.Name != "flip" {
		return fmt.Sprintf("name %q", s.Name)
	}
	if g == 0 {
		if s.State != StateStopped || s.PID != 0 || s.Exits != 0 || s.LastStatus != -1 {
			return "initial slot"
		}
		return ""
	}
	if s.StartTime != g*3 || s.Flags != uint32(g&1) {
		return "start_time/flags of another generation"
	}
	if s.PID != 0 && s.PID != uint32(g*7) {
		return "pid of another generation"
	}
	switch s.State {
	case StateRunning:
		if s.Exits != g-1 {
			return "running with exits != generation-1"
		}
		if g > 1 && (s.LastPID != uint32((g-1)*7) || s.LastExitNs != (g-1)*11 || s.LastStatus != int32((g-1)%256)) {
			return "running with last_* of another exit"
		}
	case StateBackoff:
		if s.PID != 0 {
			return "exited with a pid"
		}
		if s.Exits != g || s.LastPID != uint32(g*7) || s.LastExitNs != g*11 || s.LastStatus != int32(g%256) {
			return "exited with fields of another generation"
		}
	default:
		return "state " + s.State.String()
	}
	return ""
}

// TestConcurrentSnapshots runs a writer flipping one slot through
// spawn/exit cycles and another churning Alloc/Free on the rest, while
// readers copy slots; no copy may be torn. Run it with -race.
func TestConcurrentSnapshots(t *testing.T) {
	const (
		cycles    = 20000   // at least this many spawn/exit cycles
		minReads  = 20000   // and until the readers made this many snapshots
		maxCycles = 1 << 20 // bound on the wait for the readers
	)
	w := newWriter(t, 8)
	r := openReader(t, w)
	fi := mustAlloc(t, w, "flip")
	var done atomic.Bool
	var reads, running, exited atomic.Int64
	var ready, wg sync.WaitGroup
	ready.Add(3)
	wg.Add(2)
	var last uint64
	go func() {
		defer wg.Done()
		ready.Wait()
		g := uint64(1)
		for ; g <= cycles || reads.Load() < minReads && g < maxCycles; g++ {
			flip(w, fi, g)
		}
		last = g - 1
	}()
	go func() { // churn: names come and go in the other slots
		defer wg.Done()
		for k := 0; k < cycles/4; k++ {
			name := fmt.Sprintf("churn-%d", k%5)
			i, err := w.Alloc(name)
			if err != nil {
				t.Errorf("Alloc(%s): %v", name, err)
				return
			}
			if k%2 == 0 {
				if err := w.Free(i); err != nil {
					t.Errorf("Free(%d): %v", i, err)
					return
				}
			}
		}
	}()
	var readers sync.WaitGroup
	for range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			ready.Done()
			for !done.Load() {
				s := r.Snapshot(fi)
				if why := checkFlip(s); why != "" {
					t.Errorf("torn snapshot (%s): %+v", why, s)
					return
				}
				reads.Add(1)
				switch s.State {
				case StateRunning:
					running.Add(1)
				case StateBackoff:
					exited.Add(1)
				}
				if pid := r.PID(fi); pid%7 != 0 {
					t.Errorf("PID %d is no incarnation's", pid)
					return
				}
				for c := range r.Used() {
					if c.Index == fi {
						continue
					}
					if !strings.HasPrefix(c.Name, "churn-") || c.State != StateStopped || c.LastStatus != -1 {
						t.Errorf("torn churn slot: %+v", c)
						return
					}
				}
				if i, err := r.Lookup("flip"); err != nil || i != fi {
					t.Errorf("Lookup(flip) = %d, %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	done.Store(true)
	readers.Wait()
	s := r.Snapshot(fi)
	if s.Generation != last || s.Exits != last || s.State != StateBackoff || s.PID != 0 {
		t.Errorf("final slot %+v", s)
	}
	t.Logf("%d cycles, %d snapshots: %d running, %d exited", last, reads.Load(), running.Load(), exited.Load())
}
