package shm

import (
	"fmt"
	"testing"
)

// benchTable is a default-size table with 256 running services, read
// through a read-only mapping as a peer would.
func benchTable(b *testing.B) (*Writer, *Table) {
	b.Helper()
	w := newWriter(b, DefaultSlots)
	for k := range 256 {
		i := mustAlloc(b, w, fmt.Sprintf("svc-%03d", k))
		w.Spawned(i, uint32(1000+k), 1, uint64(k), StateRunning, 0)
	}
	return w, openReader(b, w)
}

// BenchmarkPID is the peer's liveness check: one atomic load.
func BenchmarkPID(b *testing.B) {
	_, r := benchTable(b)
	b.ReportAllocs()
	var sum uint32
	for b.Loop() {
		sum += r.PID(200)
	}
	if sum == 0 {
		b.Fatal("PID read 0")
	}
}

// BenchmarkSnapshot is a consistent copy of a whole slot (one allocation: the name).
func BenchmarkSnapshot(b *testing.B) {
	_, r := benchTable(b)
	b.ReportAllocs()
	for b.Loop() {
		if s := r.Snapshot(200); s.PID == 0 {
			b.Fatal("Snapshot: no PID")
		}
	}
}

// BenchmarkLookup finds the last of 256 services by name (a linear scan).
func BenchmarkLookup(b *testing.B) {
	_, r := benchTable(b)
	b.ReportAllocs()
	for b.Loop() {
		if i, err := r.Lookup("svc-255"); err != nil || i != 255 {
			b.Fatal(i, err)
		}
	}
}

// BenchmarkSpawnExit is the writer's cost of one spawn plus one exit record.
func BenchmarkSpawnExit(b *testing.B) {
	w, _ := benchTable(b)
	b.ReportAllocs()
	g := uint64(1)
	for b.Loop() {
		g++
		w.Spawned(7, 4242, g, g, StateRunning, 0)
		w.RecordExit(7, 4242, 0, g, StateBackoff)
	}
}

// TestNoAllocs pins the allocation-free paths (a count, not a timing).
func TestNoAllocs(t *testing.T) {
	w := newWriter(t, 8)
	r := openReader(t, w)
	i := mustAlloc(t, w, "rx")
	w.Spawned(i, 9, 1, 1, StateRunning, 0)
	for name, f := range map[string]func(){
		"PID":      func() { r.PID(i) },
		"Lookup":   func() { r.Lookup("rx") },
		"ClearPID": func() { w.ClearPID(i, 12345) },
		"Spawned":  func() { w.Spawned(i, 9, 1, 1, StateRunning, 0) },
		"Beat":     func() { w.Beat() },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations, want 0", name, n)
		}
	}
}
