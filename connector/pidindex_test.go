package connector

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestPIDIndex: the index finds every live watch and nothing else, through
// replacements, removals (tombstones) and growth, against a map doing the
// same.
func TestPIDIndex(t *testing.T) {
	var x pidIndex
	want := map[int32]*watch{}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 20000 {
		pid := int32(rng.IntN(3000) + 1)
		switch rng.IntN(3) {
		case 0, 1:
			wt := &watch{pid: pid, key: uint64(step)}
			x.set(wt)
			want[pid] = wt
		case 2:
			if wt := want[pid]; wt != nil {
				if rng.IntN(4) == 0 {
					x.del(&watch{pid: pid}) // not the indexed one: nothing happens
				} else {
					x.del(wt)
					delete(want, pid)
				}
			}
		}
		if step%1000 == 0 || step == 19999 {
			for p := int32(0); p <= 3001; p++ {
				if got := x.get(p); got != want[p] {
					t.Fatalf("step %d: get(%d) = %v; want %v", step, p, got, want[p])
				}
			}
			tb := x.t.Load()
			if tb.live != len(want) || 2*tb.used > len(tb.slots) {
				t.Fatalf("step %d: %d live (want %d), %d used of %d slots", step, tb.live, len(want), tb.used, len(tb.slots))
			}
		}
	}
}

// TestPIDIndexConcurrent: readers that hold no lock, while one writer adds,
// replaces and removes entries and the table grows, always find a watch
// that stays indexed (run with -race).
func TestPIDIndexConcurrent(t *testing.T) {
	var x pidIndex
	const fixed = 100
	keep := make([]*watch, fixed)
	for i := range keep {
		keep[i] = &watch{pid: int32(i + 1)}
		x.set(keep[i])
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var misses atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, wt := range keep {
					if x.get(wt.pid) != wt {
						misses.Add(1)
					}
				}
			}
		}()
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var churn []*watch
	for range 50000 {
		if len(churn) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(churn))
			x.del(churn[i])
			churn[i] = churn[len(churn)-1]
			churn = churn[:len(churn)-1]
			continue
		}
		wt := &watch{pid: int32(fixed + 1 + rng.IntN(5000))}
		if old := x.get(wt.pid); old != nil {
			continue // one watch per pid, as the Watcher keeps it
		}
		x.set(wt)
		churn = append(churn, wt)
	}
	stop.Store(true)
	wg.Wait()
	if n := misses.Load(); n != 0 {
		t.Fatalf("readers missed a watch that stayed indexed %d times", n)
	}
}
