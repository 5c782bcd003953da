package shim

import (
	"sort"
	"sync/atomic"

	"github.com/hbshim/hb/plugin"
)

// latency is a fixed-bucket histogram of durations in nanoseconds, written
// on the exit path: observe is a binary search and three atomic adds, no
// lock and no allocation.
type latency struct {
	bounds []uint64        // upper bounds, ascending; fixed
	counts []atomic.Uint64 // counts[i]: observations in (bounds[i-1], bounds[i]]
	count  atomic.Uint64   // every observation, including those above the last bound
	sum    atomic.Uint64   // their sum
}

func newLatency(bounds ...uint64) *latency {
	return &latency{bounds: bounds, counts: make([]atomic.Uint64, len(bounds))}
}

func (l *latency) observe(ns uint64) {
	if i := sort.Search(len(l.bounds), func(i int) bool { return l.bounds[i] >= ns }); i < len(l.bounds) {
		l.counts[i].Add(1)
	}
	l.sum.Add(ns)
	l.count.Add(1)
}

// snapshot reads the histogram. The reads are not one atomic step: an
// observation under way may be in Count and not yet in its bucket, which
// a scrape a moment later shows.
func (l *latency) snapshot() plugin.Histogram {
	h := plugin.Histogram{BoundsNs: append([]uint64(nil), l.bounds...), Counts: make([]uint64, len(l.bounds))}
	h.Count = l.count.Load()
	h.SumNs = l.sum.Load()
	var in uint64
	for i := range l.counts {
		h.Counts[i] = l.counts[i].Load()
		in += h.Counts[i]
	}
	if in > h.Count { // a bucket counted before count: keep Count ≥ the buckets' sum
		h.Count = in
	}
	return h
}

const (
	us  = uint64(1000)
	ms  = 1000 * us
	sec = 1000 * ms
)

// newDetectToStore is the histogram of an exit's detection to the store of
// 0 in its slot: microseconds normally, milliseconds when the detector's
// thread waited for a CPU.
func newDetectToStore() *latency {
	return newLatency(1*us, 2*us, 5*us, 10*us, 25*us, 50*us, 100*us, 250*us, 500*us,
		1*ms, 2500*us, 5*ms, 10*ms, 25*ms, 100*ms, 1*sec)
}

// newRespawnLatency is the histogram of an exit's detection to its
// replacement being in the slot, when the plugin respawns.
func newRespawnLatency() *latency {
	return newLatency(100*us, 250*us, 500*us, 1*ms, 2500*us, 5*ms, 10*ms, 25*ms, 50*ms,
		100*ms, 250*ms, 500*ms, 1*sec, 2500*ms, 5*sec, 10*sec)
}

// elapsedSince is now - from, 0 when from is unknown (0) or later than now.
func elapsedSince(from, now uint64) (uint64, bool) {
	if from == 0 || now < from {
		return 0, false
	}
	return now - from, true
}
