package shim

import (
	"log/slog"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// benchWatched puts n incarnations with a period of period under a fresh
// watchdog (its Shim has only what the checker uses) and returns their
// counters, writable as a service's, and a stop function.
func benchWatched(b *testing.B, n int, period time.Duration) (*watchdog, []*uint64, func()) {
	s := &Shim{quit: make(chan struct{}), log: slog.New(slog.DiscardHandler)}
	d, err := newWatchdog(s)
	if err != nil {
		b.Fatal(err)
	}
	s.dog = d
	var words []*uint64
	var maps [][]byte
	now := shm.MonotonicNs()
	for i := range n {
		a, err := shm.NewBeatArea("bench")
		if err != nil {
			b.Fatal(err)
		}
		m, err := unix.Mmap(a.FD(), 0, shm.BeatSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			b.Fatal(err)
		}
		a.CloseFD()
		maps = append(maps, m)
		words = append(words, (*uint64)(unsafe.Pointer(&m[0])))
		inc := &incarnation{svc: &service{name: "bench"}, idx: i, pid: 1 << 30, startNs: now, done: make(chan struct{})}
		d.watch(inc, a, plugin.Spec{Watchdog: period})
	}
	return d, words, func() {
		close(s.quit)
		<-d.done
		for _, m := range maps {
			unix.Munmap(m)
		}
	}
}

// BenchmarkWatchdogCheck is the checker's work at one wake-up with 100
// services at 10 ms, all beating: ns per wake-up (the timerfd's own wake-up
// is not in it; BenchmarkWatchdogCPU measures the whole).
func BenchmarkWatchdogCheck(b *testing.B) {
	d, words, stop := benchWatched(b, 100, 10*time.Millisecond)
	defer stop()
	// Disarm the real timer: this benchmark drives check with its own clock.
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	now := shm.MonotonicNs()
	for b.Loop() {
		for _, w := range words {
			*w++
		}
		now += uint64(watchGrain)
		if hung := d.check(now); len(hung) != 0 {
			b.Fatalf("%d hung", len(hung))
		}
	}
	_, checks, _ := d.stats()
	b.ReportMetric(float64(checks)/float64(b.N), "samples/wakeup")
}

// BenchmarkWatchdogCPU runs the real checker (timerfd, goroutine) for a
// second with 100 services at 10 ms beaten every 2 ms, and reports the
// process's CPU time beyond what the beating alone costs, as a share of
// one core.
func BenchmarkWatchdogCPU(b *testing.B) {
	const n, period, beat, run = 100, 10 * time.Millisecond, 2 * time.Millisecond, time.Second
	cpu := func() time.Duration {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	beatFor := func(words []*uint64) time.Duration {
		t := time.NewTicker(beat)
		defer t.Stop()
		start := cpu()
		end := time.Now().Add(run)
		for time.Now().Before(end) {
			<-t.C
			for _, w := range words {
				*w++
			}
		}
		return cpu() - start
	}
	for b.Loop() {
		// Baseline: the same beating with no watchdog.
		var base []*uint64
		for range n {
			base = append(base, new(uint64))
		}
		idle := beatFor(base)
		d, words, stop := benchWatched(b, n, period)
		busy := beatFor(words)
		wakeups, checks, watching := d.stats()
		stop()
		if watching != n {
			b.Fatalf("watching %d of %d: some were declared hung", watching, n)
		}
		b.ReportMetric(100*float64(busy-idle)/float64(run), "core%")
		b.ReportMetric(float64(wakeups)/run.Seconds(), "wakeups/s")
		b.ReportMetric(float64(checks)/run.Seconds(), "samples/s")
	}
}
