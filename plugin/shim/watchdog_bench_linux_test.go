package shim

import (
	"log/slog"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// benchWatched puts n incarnations with a period of period under a fresh
// watchdog (its Shim has only what the checker uses) and returns their
// counters, writable as a service's, and a stop function. With a clock,
// the timerfd is never armed: the caller drives check with that clock.
func benchWatched(b testing.TB, n int, period time.Duration, clock func() uint64) (*watchdog, []*uint64, func()) {
	s := &Shim{quit: make(chan struct{}), log: slog.New(slog.DiscardHandler)}
	d, err := newWatchdog(s)
	if err != nil {
		b.Fatal(err)
	}
	if clock != nil {
		d.mu.Lock()
		d.manual, d.clock = true, clock
		d.mu.Unlock()
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
	now := shm.MonotonicNs()
	d, words, stop := benchWatched(b, 100, 10*time.Millisecond, func() uint64 { return now })
	defer stop()
	_, checks0, _ := d.stats()
	wakeups := 0
	for b.Loop() {
		for _, w := range words {
			*w++
		}
		now += uint64(watchGrain)
		if hung := d.check(now); len(hung) != 0 {
			b.Fatalf("%d hung", len(hung))
		}
		wakeups++
	}
	_, checks, _ := d.stats()
	b.ReportMetric(float64(checks-checks0)/float64(wakeups), "samples/wakeup")
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
		d, words, stop := benchWatched(b, n, period, nil)
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

// BenchmarkWatchdogDetect measures how long after its deadline (last beat
// + period) a hang of a 20 ms watchdog is declared (the slot's PID word
// set to 0), over 40 hangs: p50 and p99 in µs. The service beats every
// 100-300 µs from a goroutine, then stops at a random moment.
func BenchmarkWatchdogDetect(b *testing.B) {
	const period, hangs = 20 * time.Millisecond, 40
	dir := b.TempDir()
	hungAt := make(chan uint64, 1)
	s, err := New(Options{ShmName: "bench", ShmDir: dir, Slots: 4, Detector: connector.DetectPidfd,
		onHung: func(idx, pid int) { hungAt <- shm.MonotonicNs() }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	idx, err := s.w.Alloc("detect")
	if err != nil {
		b.Fatal(err)
	}
	const fakePID = 1 << 30 // above any pid_max: never a process
	for b.Loop() {
		var lat []time.Duration
		for h := range hangs {
			a, err := shm.NewBeatArea("detect")
			if err != nil {
				b.Fatal(err)
			}
			m, err := unix.Mmap(a.FD(), 0, shm.BeatSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				b.Fatal(err)
			}
			a.CloseFD()
			word := (*uint64)(unsafe.Pointer(&m[0]))
			gen := uint64(h + 1)
			s.w.Spawned(idx, fakePID, gen, 1, shm.StateRunning, 0)
			inc := &incarnation{svc: &service{name: "detect", idx: idx}, idx: idx, pid: fakePID, gen: gen,
				startNs: shm.MonotonicNs(), pidfd: -1, done: make(chan struct{})}
			*word = 1
			s.dog.watch(inc, a, plugin.Spec{Watchdog: period, WatchdogGrace: time.Hour})
			stopAt := time.Now().Add(3*period + time.Duration(h)*period/hangs)
			// The beats come from a thread of their own sleeping in
			// nanosleep(2): a Go timer of 100 µs in an otherwise idle
			// process fires about every millisecond (the poller's
			// timeout), which would count a late beat as a late watchdog.
			var last uint64
			runtime.LockOSThread()
			pause := unix.NsecToTimespec(int64(100 * time.Microsecond))
			for time.Now().Before(stopAt) {
				*word++
				last = shm.MonotonicNs()
				_ = unix.Nanosleep(&pause, nil)
			}
			runtime.UnlockOSThread()
			at := <-hungAt
			lat = append(lat, time.Duration(at-(last+uint64(period))))
			close(inc.done)
			unix.Munmap(m)
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50_us_after_deadline")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99_us_after_deadline")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max_us_after_deadline")
	}
}
