package shim

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// The heartbeat watchdog (docs/watchdog.md). Each watched incarnation has a
// beat area (shm.BeatArea) that only it and the plugin map; the plugin
// samples its counter every step (a twentieth of the period, at least
// watchGrain). One timerfd, armed for the earliest next sample of all
// watched incarnations, is the only timer. A sample that finds the counter
// changed records the time it was read (seen); one that finds it unchanged
// for a whole period since then declares the incarnation hung (hang): it
// cannot have beaten in the last period. Its last beat was at most one step
// before seen, and once the deadline (seen + period) is nearer than the
// next step it is sampled at the deadline itself, so the hang is declared
// at most one step (and a wake-up) after it. Sample times are otherwise on
// a grid of watchGrain, so that many services share wake-ups.

const (
	// watchGrain is the grid of sample times (at most the step): it
	// bounds the wake-ups of many services to one per grain. Services with
	// the same step are on the same grid whenever they were put under the
	// watchdog (a grid of half the step split them into two, which made
	// twice the wake-ups).
	watchGrain = time.Millisecond
	// watchSteps is how many samples a period gets (fewer when the step
	// would be shorter than watchGrain).
	watchSteps = 20
	// defaultWatchdogGrace is Spec.WatchdogGrace's default.
	defaultWatchdogGrace = 5 * time.Second
	// beatFD is the descriptor number of the beat area in the child: the
	// first after stdin, stdout and stderr.
	beatFD = 3
)

// WatchdogReason is an exit event's Reason when the plugin killed the
// process for missing its watchdog deadline.
const WatchdogReason = plugin.ReasonWatchdog

// watched is one incarnation under the watchdog.
type watched struct {
	inc    *incarnation
	area   *shm.BeatArea
	period uint64 // ns
	step   uint64 // ns between samples
	grain  uint64 // ns
	sig    syscall.Signal
	grace  time.Duration

	deadline uint64 // CLOCK_MONOTONIC ns of the next sample
	count    uint64 // the counter at the last sample
	beatNs   uint64 // the sample that first saw count (the spawn before the first beat)
	// first is how long the service may take to its first beat (ns) when
	// that is longer than period: a service ready at the spawn counts its
	// periods from its first beat, and must give it within ready_timeout.
	// beaten: a beat has been seen.
	first  uint64
	beaten bool
}

// bucket is the incarnations due at one sample time.
type bucket struct{ ws []*watched }

// timeHeap is a min-heap of sample times.
type timeHeap []uint64

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *timeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// watchdog is the Shim's checker: one timerfd, waited for in the runtime's
// poller by one goroutine. (A goroutine blocked in read(2) on a thread of
// its own holds a P in a system call, which keeps the runtime's sysmon
// thread from its deep sleep: two more context switches every sample.)
type watchdog struct {
	s    *Shim
	mu   sync.Mutex
	fd   int      // the timerfd
	file *os.File // fd, waited for in the runtime's poller
	raw  syscall.RawConn
	// closed: the checker is to stop; guarded by mu. The loop closes fd.
	closed bool
	// manual: the timerfd is never armed; a test calls check with its own
	// clock. Guarded by mu.
	manual bool
	// clock reads CLOCK_MONOTONIC (ns); a test's own clock in manual mode.
	clock func() uint64
	// due holds the watched incarnations by sample time, times the
	// distinct sample times: services on the same grid share a bucket, so
	// a sample costs an append, not a heap operation.
	due   map[uint64]*bucket
	times timeHeap
	spare []*bucket // emptied buckets, reused
	// seen holds, during a check, the incarnations whose counter changed:
	// their time is read once all are sampled.
	seen []*watched
	n    int // incarnations watched
	// armed is the deadline the timerfd is set for, 0 when disarmed.
	armed uint64
	// checks and wakeups count the work done (tests and benchmarks).
	checks, wakeups uint64
	done            chan struct{}
}

// newWatchdog creates the timerfd and starts the checker; it ends when
// s.quit is closed.
func newWatchdog(s *Shim) (*watchdog, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("shim: watchdog: timerfd_create: %w", err)
	}
	file := os.NewFile(uintptr(fd), "watchdog timerfd")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("shim: watchdog: %w", err)
	}
	d := &watchdog{s: s, fd: fd, file: file, raw: raw, due: map[uint64]*bucket{}, clock: shm.MonotonicNs,
		done: make(chan struct{})}
	go d.loop()
	go func() {
		<-s.quit
		d.mu.Lock()
		d.closed = true
		// Expire at once: wakes loop's read, which then sees closed.
		soon := unix.ItimerSpec{Value: unix.Timespec{Nsec: 1}}
		_ = unix.TimerfdSettime(d.fd, 0, &soon, nil)
		d.mu.Unlock()
	}()
	return d, nil
}

// watch puts inc (with its beat area) under the watchdog from now. A
// service that declared itself ready (ready "notify" or "fd") has one
// period from now; one ready at the spawn counts its periods from its first
// beat, which must come within its ReadyTimeout (default 90 s): exec and
// start-up on a busy machine take longer than a data-plane period, and a
// watchdog that struck before the first beat would kill every stage of a
// start burst again and again.
func (d *watchdog) watch(inc *incarnation, area *shm.BeatArea, spec plugin.Spec) {
	period := uint64(spec.Watchdog)
	step := max(period/watchSteps, min(uint64(watchGrain), period/2))
	grain := min(uint64(watchGrain), step)
	sig, grace := spec.WatchdogSignal, spec.WatchdogGrace
	if sig == 0 {
		sig = unix.SIGABRT
	}
	if grace <= 0 {
		grace = defaultWatchdogGrace
	}
	w := &watched{inc: inc, area: area, period: period, step: max(step, 1), grain: max(grain, 1), sig: sig, grace: grace,
		count: area.Count() + inc.notifyBeats.Load()}
	if spec.Ready == "" || spec.Ready == plugin.ReadySpawn {
		first := spec.ReadyTimeout
		if first <= 0 {
			first = defaultReadyTimeout
		}
		w.first = uint64(first)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w.beatNs = d.clock()
	w.deadline = w.next(w.beatNs)
	d.n++
	d.add(w)
	d.rearm()
}

// add puts w in the bucket of its sample time. Called with mu held.
func (d *watchdog) add(w *watched) {
	b, ok := d.due[w.deadline]
	if !ok {
		heap.Push(&d.times, w.deadline)
		if n := len(d.spare); n > 0 {
			b, d.spare = d.spare[n-1], d.spare[:n-1]
		} else {
			b = &bucket{}
		}
		d.due[w.deadline] = b
	}
	b.ws = append(b.ws, w) // no map store: most adds go to an existing bucket
}

// next is the sample time at most one step after now, on the grain's
// grid (rounded down: a late wake-up does not stretch the step), and
// after now; or the deadline itself, when that comes first.
func (w *watched) next(now uint64) uint64 {
	t := (now + w.step) / w.grain * w.grain
	return min(t, w.beatNs+w.limit())
}

// rearm sets the timerfd for the earliest deadline, if that changed.
// Called with mu held.
func (d *watchdog) rearm() {
	var at uint64
	if len(d.times) > 0 {
		at = d.times[0]
	}
	if at == d.armed || d.closed || d.manual {
		return
	}
	d.armed = at
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(at))}
	if _, _, e := unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, uintptr(d.fd), unix.TFD_TIMER_ABSTIME,
		uintptr(unsafe.Pointer(&spec)), 0, 0, 0); e != 0 {
		d.s.log.Error("watchdog: timerfd_settime", "err", e)
	}
}

// loop waits for the timerfd and checks what is due.
func (d *watchdog) loop() {
	defer close(d.done)
	var (
		buf   [8]byte
		errno syscall.Errno
	)
	// Raw system calls: neither the read nor timerfd_settime (rearm) can
	// block, and a plain one would wake the runtime's sysmon thread from
	// its sleep at every sample, which doubles the wake-ups of the process.
	// One closure for every read: not an allocation each.
	read := func(fd uintptr) bool {
		_, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		return errno != unix.EAGAIN
	}
	for {
		errno = 0
		err := d.raw.Read(read)
		if err == nil && errno != 0 {
			err = errno
		}
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			d.closeAll()
			d.file.Close()
			return
		}
		if err != nil {
			if !errors.Is(err, unix.EINTR) {
				d.s.log.Error("watchdog: read timerfd", "err", err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		for _, w := range d.check(d.clock()) {
			d.s.hang(w)
		}
	}
}

// check samples every incarnation whose sample time has come; one whose
// counter has not changed for a whole period is returned (hung), no longer
// watched. Incarnations that have exited are dropped.
//
// now is read before the counters and seen after them: a counter found
// unchanged was unchanged at now, and one found changed was changed by
// seen, so neither time overstates how long ago the last beat was.
func (d *watchdog) check(now uint64) (hung []*watched) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wakeups++
	for len(d.times) > 0 && d.times[0] <= now {
		t := heap.Pop(&d.times).(uint64)
		b := d.due[t]
		delete(d.due, t)
		for _, w := range b.ws {
			d.checks++
			if c := w.beats(); c != w.count {
				w.count, w.beaten = c, true
				d.seen = append(d.seen, w)
				continue
			}
			if w.inc.exited() {
				d.n--
				w.area.Close()
				continue
			}
			if now-w.beatNs >= w.limit() {
				d.n--
				hung = append(hung, w)
				continue
			}
			w.deadline = w.next(now)
			d.add(w)
		}
		clear(b.ws)
		b.ws = b.ws[:0]
		d.spare = append(d.spare, b)
	}
	if len(d.seen) > 0 {
		seen := d.clock()
		for _, w := range d.seen {
			w.beatNs = seen
			w.deadline = w.next(now)
			d.add(w)
		}
		clear(d.seen)
		d.seen = d.seen[:0]
	}
	d.armed = 0 // the timerfd has expired: set it again
	d.rearm()
	return hung
}

// limit is how long w may go without a change of its counter.
func (w *watched) limit() uint64 {
	if !w.beaten && w.first > w.period {
		return w.first
	}
	return w.period
}

// closeAll unmaps every beat area once the checker has stopped.
func (d *watchdog) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.due {
		for _, w := range b.ws {
			w.area.Close()
		}
	}
	d.due, d.times, d.n = nil, nil, 0
}

// stats returns how many wake-ups and checks the watchdog made, and how
// many incarnations it watches.
func (d *watchdog) stats() (wakeups, checks uint64, watching int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wakeups, d.checks, d.n
}

// hang acts on a missed deadline of w: the slot's PID word goes to 0 first
// (peers stop at once, docs/design.md#invariant-14), then the state hung,
// the EventHung, w.sig to the process and SIGKILL to its group after
// w.grace. The exit that follows is reaped and reported (Reason watchdog)
// and respawned by the usual path. An incarnation whose exit was detected
// meanwhile, or being stopped, is left to that.
func (s *Shim) hang(w *watched) {
	inc := w.inc
	defer w.area.Close()
	// Under mainMu: a change of main process (MAINPID=) is either done,
	// and its PID is the one cleared, or not begun, and sees hung.
	inc.mainMu.Lock()
	pid := inc.mainPID()
	cleared := !inc.stopping.Load() && s.w.ClearPID(inc.idx, uint32(pid))
	if cleared {
		inc.hung.Store(true)
	}
	inc.mainMu.Unlock()
	if !cleared {
		return
	}
	now := shm.MonotonicNs()
	s.w.SetStateOf(inc.idx, shm.StateHung, inc.gen)
	if s.opts.onHung != nil {
		s.opts.onHung(inc.idx, pid)
	}
	s.kickRecord()
	since := now - w.beatNs
	s.emit(plugin.Event{
		Kind: plugin.EventHung, Name: inc.svc.name, Slot: inc.idx, PID: pid, Generation: inc.gen,
		DetectedNs: now, SinceBeatNs: since,
		Message: "no beat for " + time.Duration(since).Round(time.Microsecond).String() +
			" (watchdog " + time.Duration(w.period).String() + ")",
	})
	s.log.Warn("watchdog: missed deadline; killing", "service", inc.svc.name, "pid", pid,
		"since_beat", time.Duration(since), "signal", w.sig)
	if err := inc.signal(w.sig, false); err != nil {
		s.log.Warn("watchdog: signal", "service", inc.svc.name, "pid", pid, "err", err)
	}
	time.AfterFunc(w.grace, func() {
		if inc.exited() {
			return
		}
		_ = inc.signal(unix.SIGKILL, true)
		_ = inc.signal(unix.SIGKILL, false) // a main process that left its group
	})
}

// planBeat gives the incarnation p plans a beat area, when its Spec asks
// for a watchdog: the memfd becomes the child's descriptor beatFD, named by
// HB_BEAT_FD in its environment.
func (p *startPlan) planBeat() error {
	if p.spec.Watchdog <= 0 {
		return nil
	}
	a, err := shm.NewBeatArea(p.spec.Name)
	if err != nil {
		return fmt.Errorf("spawn %q: watchdog: %w", p.spec.Name, err)
	}
	p.beat = a
	p.attr.extra = append(p.attr.extra, a.FD())
	p.attr.env = append(p.attr.env, shm.BeatFDEnv+"="+strconv.Itoa(beatFD+len(p.attr.extra)-1))
	return nil
}

// dropBeat releases a beat area the plan did not hand to an incarnation
// (its spawn failed, or did not happen).
func (p *startPlan) dropBeat() {
	if p == nil {
		return
	}
	if p.beat != nil {
		p.beat.Close()
		p.beat = nil
	}
	if p.readyR != nil {
		p.readyR.Close()
		p.readyW.Close()
		p.readyR, p.readyW = nil, nil
	}
}

// takeBeat moves p's beat area to inc: the descriptor is closed here (the
// child has its own), the mapping kept for the checks.
func (p *startPlan) takeBeat(inc *incarnation) {
	if p.beat != nil {
		p.beat.CloseFD()
		inc.beat, p.beat = p.beat, nil
	}
	if p.readyR != nil {
		p.readyW.Close() // the child has its own
		inc.readyR, p.readyR, p.readyW = p.readyR, nil, nil
	}
}

// startWatchdog puts inc under the watchdog: once its exit watch is armed
// and it is ready (at the spawn, or when it declares itself ready).
func (s *Shim) startWatchdog(inc *incarnation) {
	inc.mu.Lock()
	a := inc.beat
	inc.beat = nil
	inc.mu.Unlock()
	if a != nil {
		s.dog.watch(inc, a, inc.dogSpec)
	}
}

// exitReason is the Reason of inc's exit event.
func (inc *incarnation) exitReason() string {
	switch {
	case inc.hung.Load():
		return WatchdogReason
	case inc.readyTimedOut.Load():
		return ReadyTimeoutReason
	}
	return ""
}

// beats is inc's beat count as the watchdog samples it: the beat area's
// counter plus the WATCHDOG=1 messages.
func (w *watched) beats() uint64 { return w.area.Count() + w.inc.notifyBeats.Load() }
