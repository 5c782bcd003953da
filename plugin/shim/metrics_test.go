package shim

import (
	"slices"
	"testing"
)

func TestLatencyHistogram(t *testing.T) {
	l := newLatency(10, 100, 1000)
	for _, ns := range []uint64{0, 10, 11, 100, 999, 1000, 1001, 5000} {
		l.observe(ns)
	}
	h := l.snapshot()
	if want := []uint64{2, 2, 2}; !slices.Equal(h.Counts, want) {
		t.Errorf("counts %v, want %v (upper bounds inclusive)", h.Counts, want)
	}
	if h.Count != 8 || h.SumNs != 0+10+11+100+999+1000+1001+5000 {
		t.Errorf("count %d sum %d, want 8 and %d", h.Count, h.SumNs, 0+10+11+100+999+1000+1001+5000)
	}
	h.BoundsNs[0] = 7 // a snapshot is a copy
	if l.bounds[0] != 10 {
		t.Error("snapshot shares its bounds with the histogram")
	}
	for _, nl := range []*latency{newDetectToStore(), newRespawnLatency()} {
		if !slices.IsSorted(nl.bounds) || len(slices.Compact(slices.Clone(nl.bounds))) != len(nl.bounds) {
			t.Errorf("bounds %v are not strictly ascending", nl.bounds)
		}
	}
	if _, ok := elapsedSince(0, 5); ok {
		t.Error("elapsedSince from an unknown time")
	}
	if _, ok := elapsedSince(6, 5); ok {
		t.Error("elapsedSince from the future")
	}
	if d, ok := elapsedSince(2, 5); !ok || d != 3 {
		t.Errorf("elapsedSince(2, 5) = %d, %v", d, ok)
	}
}
