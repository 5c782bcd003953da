package connector

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/shm"
)

// Watch states. A watch is live in stateArmed and stateKilled (armed, and a
// SIGKILL to it was seen: OnKill's, once, by compare-and-swap from
// stateArmed). It leaves the live states exactly once, by compare-and-swap:
// the winner of a live state→stateFired is the one detector that reports
// it.
const (
	stateArmed uint32 = iota
	stateFired
	stateUnwatched
	stateKilled
)

// live reports whether a watch in state s is still armed.
func live(s uint32) bool { return s == stateArmed || s == stateKilled }

// leave moves wt from a live state to to; it returns the state it left, and
// false when wt was not live (another detector, or Unwatch, came first).
func (wt *watch) leave(to uint32) (uint32, bool) {
	for {
		s := wt.state.Load()
		if !live(s) {
			return s, false
		}
		if wt.state.CompareAndSwap(s, to) {
			return s, true
		}
	}
}

// haveStatus marks watch.last as holding a status.
const haveStatus = 1 << 32

// Epoll data of the Watcher's own descriptors; watch ids start at 1.
const (
	wakeID  = 0          // the eventfd
	traceID = ^uint64(0) // the exit tracepoint's ring buffer
)

// watch is one watched process.
type watch struct {
	key    uint64
	pid    int32
	pidfd  int
	id     uint64        // epoll data; unique for the Watcher's life
	child  bool          // a child of this process (WatchChild): the socket filter passes it by its parent
	traced atomic.Bool   // in the exit tracepoint's map (WatchChild, WatchTraced): a child's events the socket filter need not pass
	since  uint64        // CLOCK_MONOTONIC ns when watched: older tracepoint records are of another process
	killed atomic.Uint64 // CLOCK_MONOTONIC ns when a SIGKILL to it was seen (OnKill); 0 before

	state atomic.Uint32 // stateArmed, stateKilled, stateFired, stateUnwatched
	// last is the wait status from the latest connector event for any thread
	// of the process, with haveStatus set; 0 when none (or after a resync).
	last atomic.Uint64
}

// byParent reports whether the socket filter passes wt's events by their
// parent: a child the exit tracepoint does not watch (it reports children
// first, and their parent reaps them for the status).
func (wt *watch) byParent() bool { return wt.child && !wt.traced.Load() }

// status returns the stored connector status, if any.
func (wt *watch) status() (uint32, bool) {
	v := wt.last.Load()
	return uint32(v), v&haveStatus != 0
}

// Watcher reports the exit of watched processes. See the package
// documentation for its goroutines and concurrency contract.
type Watcher struct {
	opt Options
	log *slog.Logger
	// connNote: why the proc connector was asked for and is not used.
	connNote string
	exits    chan Exit
	done     chan struct{} // closed by Close

	nl *nlSocket  // nil without the connector
	tr *exitTrace // nil without the exit tracepoint
	// onTrace is w.traced, made once: a method value allocates.
	onTrace func(tgid int32, kind uint32, ns uint64)
	epfd    int // the epoll goroutine's set: the eventfd, the ring buffer, and the pidfds unless pfd is its own
	// pfd is the epoll set of the watched pidfds. It is epfd, except when
	// the exit tracepoint's reader runs real-time (Options.Priority): then
	// the pidfds have a set of their own, waited on by an ordinary
	// goroutine (pidfdLoop), so that real-time threads of higher priority
	// that keep every CPU busy cannot keep the safety net from running.
	pfd  int
	evfd int // eventfd that wakes the epoll goroutines for Close

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex
	closed bool              // guarded by mu
	nextID uint64            // guarded by mu
	byKey  map[uint64]*watch // key -> watch, guarded by mu
	// byPID: tgid -> watch. Written with mu held; the tracepoint's reader
	// reads it without (pidIndex).
	byPID pidIndex
	byID  map[uint64]*watch // epoll data -> watch; present = registered in epfd; guarded by mu
	// children counts the watches in byPID made with WatchChild and not in
	// the exit tracepoint's map (byParent); while it is not 0 the socket
	// filter passes every exit whose parent is this process. Guarded by mu.
	children int

	// The socket filter (see filter.go and updateFilter). A change of the
	// watched set bumps setGen; the filter is then brought up to date at
	// once by Watch, or later by the connector goroutine, woken by the
	// socket's read deadline, so that bursts of changes cost one update.
	filtering   bool          // a filter is kept on the socket; set before the goroutines start
	filterEvery time.Duration // least time between two updates; set before the goroutines start
	filterFixed bool          // filterPause is always filterEvery (tests); set before the goroutines start
	filterPause time.Duration // least time from the last update to the next, guarded by mu
	setGen      uint64        // bumped at each change of byPID, guarded by mu
	filterGen   uint64        // setGen of the last update, guarded by mu
	filterLast  time.Time     // when the last update was decided, guarded by mu
	filterWake  time.Time     // read deadline set for a deferred update, zero if none; guarded by mu
	filterMu    sync.Mutex    // serializes updates; taken before mu, never while holding it
	filterOn    bool          // a program is attached; guarded by filterMu
	filterSet   []uint32      // TGIDs of the update being made; guarded by filterMu

	// Connector goroutine only.
	pollOne  [1]unix.PollFd
	rescan   []*watch
	rescanFd []unix.PollFd

	events, matched, fired, resyncs, errs atomic.Uint64
	frames, filterUpdates                 atomic.Uint64
	filterTGIDs                           atomic.Int64 // TGIDs in the attached program, -1 with none
	rt                                    atomic.Bool  // the epoll goroutine's thread runs SCHED_FIFO (Options.Priority)
}

// NewWatcher starts a Watcher: the epoll goroutine always, and the connector
// goroutine under DetectConnector, or DetectAuto when Available. The exit
// tracepoint is loaded under DetectTracepoint, or DetectAuto when it can be.
// With DetectConnector (DetectTracepoint), an unusable connector
// (tracepoint) is an error wrapping ErrUnavailable (ErrTraceUnavailable).
func NewWatcher(opt Options) (*Watcher, error) {
	w := &Watcher{
		opt:   opt,
		log:   opt.Logger,
		done:  make(chan struct{}),
		epfd:  -1,
		pfd:   -1,
		evfd:  -1,
		byKey: make(map[uint64]*watch),
		byID:  make(map[uint64]*watch),

		filterEvery: filterInterval,
	}
	w.filterTGIDs.Store(-1)
	w.onTrace = w.traced
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	q := DefaultExitQueue
	if opt.hooks != nil && opt.hooks.exitQueue > 0 {
		q = opt.hooks.exitQueue
	}
	w.exits = make(chan Exit, q)

	if opt.Detector == DetectAuto || opt.Detector == DetectTracepoint {
		var err error
		if w.tr, err = openExitTrace(); err != nil {
			if opt.Detector == DetectTracepoint {
				return nil, err
			}
			w.log.Info("exit tracepoint not used", "reason", err)
		} else if w.tr.killErr != nil {
			w.log.Info("SIGKILLs are seen at the exit, not at the kill", "reason", w.tr.killErr)
		}
	}
	switch opt.Detector {
	case DetectPidfd, DetectTracepoint:
	case DetectAuto, DetectConnector:
		err := Available()
		if err == nil {
			w.nl, err = dialProc(opt.ReadBuffer, procEventExit)
		}
		if err != nil {
			if opt.Detector == DetectConnector {
				w.closeFds()
				return nil, err
			}
			w.log.Info("proc connector not used; detecting exits by pidfd only", "reason", err)
			w.connNote = err.Error()
		}
	default:
		return nil, fmt.Errorf("connector: invalid detector %d", int(opt.Detector))
	}

	var err error
	if w.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("connector: epoll_create1: %w", err)
	}
	if w.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("connector: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEpollData(&ev, wakeID)
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, w.evfd, &ev); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("connector: epoll_ctl add eventfd: %w", err)
	}
	w.pfd = w.epfd
	if w.tr != nil && opt.Priority > 0 {
		if w.pfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
			w.closeFds()
			return nil, fmt.Errorf("connector: epoll_create1 for the pidfds: %w", err)
		}
		// The eventfd stays readable once written: Close wakes both sets.
		if err := unix.EpollCtl(w.pfd, unix.EPOLL_CTL_ADD, w.evfd, &ev); err != nil {
			w.closeFds()
			return nil, fmt.Errorf("connector: epoll_ctl add eventfd: %w", err)
		}
	}
	if w.tr != nil {
		// Level-triggered: readable while records wait.
		ev := unix.EpollEvent{Events: unix.EPOLLIN}
		setEpollData(&ev, traceID)
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, w.tr.ring, &ev); err != nil {
			w.closeFds()
			return nil, fmt.Errorf("connector: epoll_ctl add the exit tracepoint's ring buffer: %w", err)
		}
	}

	if w.nl != nil {
		w.startFilter()
	}

	w.wg.Add(1)
	started := make(chan struct{})
	go w.epollLoop(started)
	<-started // its priority is settled: Stats.RealTime is final
	if w.pfd != w.epfd {
		w.wg.Add(1)
		go w.pidfdLoop()
	}
	if w.nl != nil {
		w.log.Debug("proc connector subscribed", "rcvbuf", w.nl.rcvbuf, "filter", w.filtering)
		w.wg.Add(1)
		go w.connectorLoop()
	}
	return w, nil
}

func (w *Watcher) closeFds() {
	if w.nl != nil {
		_ = w.nl.close()
	}
	if w.tr != nil {
		w.tr.close()
	}
	if w.pfd >= 0 && w.pfd != w.epfd {
		_ = unix.Close(w.pfd)
	}
	if w.epfd >= 0 {
		_ = unix.Close(w.epfd)
	}
	if w.evfd >= 0 {
		_ = unix.Close(w.evfd)
	}
}

func setEpollData(ev *unix.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func epollData(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Watch starts watching process pid through pidfd, a pidfd for the whole
// process (not PIDFD_THREAD), under key. The caller keeps
// ownership of pidfd: the Watcher never closes it and never waits on it, and
// the caller must keep it open until Unwatch returns or the Exit has been
// received from Exits(). A process that has already exited is reported at
// once (through the pidfd), so a caller can watch a child it has just started
// without missing its exit. Watch fails with ErrDuplicate if key, or pid, is
// watched and not yet reported, and with ErrClosed after Close.
//
// With the proc connector, Watch also adds pid to the socket filter: at once
// (a compile and a setsockopt, before Watch returns), unless the last update
// was too recent (at least 10 ms, and 50 times what it took, separate two);
// then the connector goroutine does it when due, together with every other
// change made meanwhile. An exit that happens before the filter holds pid is
// reported through the pidfd.
func (w *Watcher) Watch(key uint64, pid, pidfd int) error {
	return w.watch(key, pid, pidfd, false, false)
}

// WatchTraced is Watch with the exit tracepoint too, for a process that is
// not a child whose death must be seen as early as a child's (a bridged
// program, whose manager reaps it at once). The tracepoint reports it with
// no status, and its connector event then comes after the watch has fired:
// the caller finds the status elsewhere (the pidfd's PIDFD_INFO_EXIT once
// the parent has reaped it).
func (w *Watcher) WatchTraced(key uint64, pid, pidfd int) error {
	return w.watch(key, pid, pidfd, false, true)
}

// WatchChild is Watch for a child of the calling process. The socket filter
// passes every exit whose parent is this process, so watching (and
// unwatching) a child never changes the filter: spawns and respawns cost no
// filter update. Watching with WatchChild a process that is not a child
// costs its connector events (its pidfd still reports the exit).
//
// Only children are watched by the exit tracepoint, which reports an exit
// with no status (the caller reaps its child and learns it there), and as
// soon as the process's last thread starts to exit: before it is a zombie,
// so a waitid right after the report may have to wait for it.
func (w *Watcher) WatchChild(key uint64, pid, pidfd int) error {
	return w.watch(key, pid, pidfd, true, true)
}

// watch is Watch and WatchChild: addWatch, then the filter update it asks
// for (a new process, or the first child: the filter starts passing
// children).
func (w *Watcher) watch(key uint64, pid, pidfd int, child, trace bool) error {
	update, err := w.addWatch(key, pid, pidfd, child, trace)
	if update {
		w.updateFilter()
	}
	return err
}

// addWatch does the work of Watch but for the filter update, which it asks
// for by returning update.
func (w *Watcher) addWatch(key uint64, pid, pidfd int, child, trace bool) (update bool, err error) {
	if pid <= 0 || pid > 1<<31-1 {
		return false, fmt.Errorf("connector: watch key %d: invalid pid %d", key, pid)
	}
	if pidfd < 0 {
		return false, fmt.Errorf("connector: watch key %d pid %d: invalid pidfd %d", key, pid, pidfd)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false, fmt.Errorf("connector: watch key %d pid %d: %w", key, pid, ErrClosed)
	}
	if old := w.byKey[key]; old != nil && live(old.state.Load()) {
		return false, fmt.Errorf("connector: watch key %d pid %d: key %w (pid %d)", key, pid, ErrDuplicate, old.pid)
	}
	old := w.byPID.get(int32(pid))
	if old != nil && live(old.state.Load()) {
		return false, fmt.Errorf("connector: watch key %d pid %d: pid %w under key %d", key, pid, ErrDuplicate, old.key)
	}
	w.nextID++
	wt := &watch{key: key, pid: int32(pid), pidfd: pidfd, id: w.nextID, child: child, since: monotonicNs()}
	// One-shot: a pidfd turns readable once and stays so; one report is all
	// that is needed, and a registration left behind by a misused pidfd can
	// never spin the loop.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT}
	setEpollData(&ev, wt.id)
	if err := unix.EpollCtl(w.pfd, unix.EPOLL_CTL_ADD, pidfd, &ev); err != nil {
		return false, fmt.Errorf("connector: watch key %d pid %d: epoll_ctl add pidfd %d: %w", key, pid, pidfd, err)
	}
	w.byKey[key] = wt
	// In byPID before the tracepoint's map: a record of the process can
	// come as soon as the map holds its TGID, and the reader finds the
	// watch without the mutex held here. A full map leaves this one to the
	// other detectors. The map takes any TGID: a process that is not a
	// child (WatchTraced) keeps its place in the socket filter too.
	wt.traced.Store(trace && w.tr != nil)
	w.byPID.set(wt)
	w.byID[wt.id] = wt
	if wt.traced.Load() && w.tr.add(wt.pid) != nil {
		wt.traced.Store(false)
	}
	if old != nil {
		// A reported (or unwatched) watch of a process that has not been
		// reaped yet: its pid stays in the filter, so the set is unchanged.
		if old.byParent() {
			w.children--
		}
		if wt.byParent() {
			w.children++
		}
		if old.traced.Load() && !wt.traced.Load() {
			w.tr.del(wt.pid)
		}
		return false, nil
	}
	if wt.byParent() {
		// The filter passes children by their parent while there is one.
		w.children++
		return w.children == 1 && w.filterChangedLocked(true), nil
	}
	if child {
		return false, nil // traced: the filter drops its connector events
	}
	return w.filterChangedLocked(true), nil
}

// Unwatch stops watching key; unknown keys are ignored. Once Unwatch returns
// the Watcher no longer uses the pidfd, and OnExit will not be called for the
// key unless that call had already begun (then its Exit is still queued).
func (w *Watcher) Unwatch(key uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := w.byKey[key]
	if wt == nil {
		return
	}
	w.removeLocked(wt)
	wt.leave(stateUnwatched)
}

// removeLocked drops wt from the maps and from epoll if it is still there.
// Whoever removes the registration does the EPOLL_CTL_DEL, under mu, so a
// later Watch that reuses the pidfd's number is never deregistered by mistake.
func (w *Watcher) removeLocked(wt *watch) {
	if w.byKey[wt.key] == wt {
		delete(w.byKey, wt.key)
	}
	if w.byPID.get(wt.pid) == wt {
		w.byPID.del(wt)
		if wt.traced.Load() {
			w.tr.del(wt.pid)
		}
		if wt.byParent() {
			w.children--
		}
		if !wt.child || wt.byParent() && w.children == 0 {
			w.filterChangedLocked(false)
		}
	}
	if w.byID[wt.id] == wt {
		delete(w.byID, wt.id)
		_ = unix.EpollCtl(w.pfd, unix.EPOLL_CTL_DEL, wt.pidfd, nil)
	}
}

// Exits returns the channel on which every reported exit is sent, after its
// OnExit call. Its capacity is DefaultExitQueue; when it is full the detecting
// goroutine blocks (no exit is dropped), which stalls detection until the
// channel is drained. It is closed by Close.
func (w *Watcher) Exits() <-chan Exit { return w.exits }

// Active reports which detectors run: the proc connector fast path, and the
// pidfd epoll loop (always true).
func (w *Watcher) Active() (connector, pidfd bool) { return w.nl != nil, true }

// ConnectorNote says why the proc connector is not used although the
// detector asked for it ("" when it runs, or was not asked for).
func (w *Watcher) ConnectorNote() string { return w.connNote }

// Traced reports whether the exit tracepoint runs (for children).
func (w *Watcher) Traced() bool { return w.tr != nil }

// KillTraced reports whether the kill program runs beside the exit
// tracepoint, so that OnKill is called; when not, the error says why.
func (w *Watcher) KillTraced() (bool, error) {
	switch {
	case w.tr == nil:
		return false, ErrTraceUnavailable
	case w.tr.killErr != nil:
		return false, w.tr.killErr
	}
	return true, nil
}

// Killed reports whether a SIGKILL to the process watched under key was
// seen (OnKill) while its watch is armed: it is as good as gone, though its
// pidfd may not be readable yet. False for an unknown key.
func (w *Watcher) Killed(key uint64) bool {
	w.mu.Lock()
	wt := w.byKey[key]
	w.mu.Unlock()
	return wt != nil && wt.state.Load() == stateKilled
}

// Stats returns the Watcher's counters.
func (w *Watcher) Stats() Stats {
	w.mu.Lock()
	n := len(w.byKey)
	w.mu.Unlock()
	s := Stats{
		Frames:        w.frames.Load(),
		Events:        w.events.Load(),
		Matched:       w.matched.Load(),
		Exits:         w.fired.Load(),
		Resyncs:       w.resyncs.Load(),
		Errors:        w.errs.Load(),
		FilterUpdates: w.filterUpdates.Load(),
		Watching:      n,
		FilterTGIDs:   int(w.filterTGIDs.Load()),
	}
	if w.tr != nil {
		s.Traced = w.tr.events.Load()
		s.Kills = w.tr.kills.Load()
		s.RealTime = w.rt.Load()
	}
	if w.nl != nil {
		s.ReadBuffer = w.nl.rcvbuf
	}
	return s
}

// Close stops both goroutines, closes the Watcher's own descriptors (never
// the watched pidfds) and then the Exits channel. Exits detected during Close
// may be dropped from the channel (their OnExit has run). Close must not be
// called from OnExit. It is idempotent.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.done)
		if w.nl != nil {
			if err := w.nl.close(); err != nil {
				w.closeErr = fmt.Errorf("connector: close netlink socket: %w", err)
			}
		}
		var one = [8]byte{1}
		if _, err := unix.Write(w.evfd, one[:]); err != nil && w.closeErr == nil {
			w.closeErr = fmt.Errorf("connector: wake epoll loop: %w", err)
		}
		w.wg.Wait()
		if w.pfd != w.epfd {
			_ = unix.Close(w.pfd)
		}
		_ = unix.Close(w.epfd)
		_ = unix.Close(w.evfd)
		if w.tr != nil {
			w.tr.close()
		}
		close(w.exits)
	})
	return w.closeErr
}

func (w *Watcher) isDone() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// fire reports wt's exit if no other detector has. OnExit comes first, before
// any other work: it is where the caller records the death (the liveness slot
// goes to 0), so nothing may delay it.
func (w *Watcher) fire(wt *watch, src Source, ws uint32, have bool, detectedNs uint64) {
	was, ok := wt.leave(stateFired)
	if !ok {
		return
	}
	ex := Exit{Key: wt.key, PID: int(wt.pid), Status: -1, Source: src, DetectedNs: detectedNs}
	if was == stateKilled {
		ex.KilledNs = wt.killed.Load() // stored before the kill's compare-and-swap
	}
	if have {
		ex.Status, ex.WaitStatus, ex.HaveStatus = ExitStatus(ws), ws, true
	}
	if f := w.opt.OnExit; f != nil {
		f(ex)
	}
	w.mu.Lock()
	w.removeLocked(wt)
	w.mu.Unlock()
	w.fired.Add(1)
	idle := len(w.exits) == 0 // the receiver is probably parked on it
	select {
	case w.exits <- ex:
	case <-w.done:
	}
	if idle && src != SourceTracepoint {
		// The receiver was made runnable on this P. Let it run now: this
		// goroutine is about to block in epoll_wait without giving the P
		// up, and the receiver would wait until the runtime takes the P
		// back (up to milliseconds when it is otherwise idle). Not when
		// exits queue up (a mass kill): then detecting comes first. Not
		// for a tracepoint report either: the process is still being torn
		// down, the receiver can only wait for its zombie, and running it
		// here, on the CPU where the kernel woke this thread (often the
		// dying process's), delays that teardown (docs/perf-notes.md).
		runtime.Gosched()
	}
}

// connectorLoop reads exit events. For an event of a watched process (any
// thread) it polls the process's pidfd: readable means the whole thread group
// is gone and the exit is reported at once with the event's status; not
// readable (a thread, a leader that ended before its threads, an exec by a
// thread) leaves it to the epoll loop, with the status kept for it.
func (w *Watcher) connectorLoop() {
	defer w.wg.Done()
	var (
		lastErr syscall.Errno
		backoff time.Duration
	)
	for {
		if h := w.opt.hooks; h != nil && h.beforeRecv != nil {
			h.beforeRecv()
		}
		b, err := w.nl.recv()
		if err != nil {
			if w.isDone() {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Not an error: the wake-up for a filter update.
				w.filterDue()
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				w.resync(err)
				lastErr, backoff = 0, 0
				continue
			}
			var errno syscall.Errno
			errors.As(err, &errno)
			backoff = w.survive(err, errno == lastErr && errno != 0, backoff)
			lastErr = errno
			continue
		}
		lastErr, backoff = 0, 0
		w.frames.Add(1)
		w.handleDatagram(b)
	}
}

// handleDatagram processes every exit event in one datagram. No allocation.
func (w *Watcher) handleDatagram(b []byte) {
	for len(b) > 0 {
		msg, rest, ok := nextMessage(b)
		if !ok {
			return
		}
		b = rest
		if ev, ok := decodeMessage(msg); ok {
			w.handleEvent(&ev)
		}
	}
}

func (w *Watcher) handleEvent(ev *Event) {
	w.events.Add(1)
	w.mu.Lock()
	wt := w.byPID.get(int32(ev.TGID))
	w.mu.Unlock()
	if wt == nil {
		return
	}
	now := monotonicNs()
	wt.last.Store(uint64(ev.WaitStatus) | haveStatus)
	if w.readable(wt.pidfd) {
		w.fire(wt, SourceConnector, ev.WaitStatus, true, now)
	}
	w.matched.Add(1)
}

// readable polls one pidfd without waiting.
func (w *Watcher) readable(pidfd int) bool {
	w.pollOne[0] = unix.PollFd{Fd: int32(pidfd), Events: unix.POLLIN}
	for {
		n, err := unix.Poll(w.pollOne[:], 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && w.pollOne[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0
	}
}

// resync handles lost events: statuses gathered so far may be stale, and any
// watched process may have exited unseen, so every watched pidfd is polled
// once (one poll(2) for all) and the readable ones are reported. OnResync
// runs after those reports, so it never delays one.
func (w *Watcher) resync(reason error) {
	w.resyncs.Add(1)
	now := monotonicNs()
	w.mu.Lock()
	w.rescan = w.rescan[:0]
	w.rescanFd = w.rescanFd[:0]
	for _, wt := range w.byKey {
		wt.last.Store(0)
		w.rescan = append(w.rescan, wt)
		w.rescanFd = append(w.rescanFd, unix.PollFd{Fd: int32(wt.pidfd), Events: unix.POLLIN})
	}
	w.mu.Unlock()
	if len(w.rescanFd) > 0 {
		var err error
		for {
			_, err = unix.Poll(w.rescanFd, 0)
			if err != unix.EINTR {
				break
			}
		}
		if err != nil {
			w.survive(fmt.Errorf("connector: resync: poll %d pidfds: %w", len(w.rescanFd), err), false, 0)
		} else {
			for i, pfd := range w.rescanFd {
				if pfd.Revents&(unix.POLLIN|unix.POLLHUP) != 0 {
					w.fire(w.rescan[i], SourceResync, 0, false, now)
				}
			}
		}
		clear(w.rescan) // drop references for the GC
	}
	w.log.Warn("proc connector events lost; rescanned watched processes", "watching", len(w.rescanFd), "reason", reason)
	if f := w.opt.OnResync; f != nil {
		f(reason)
	}
}

// survive counts and reports an error the loop outlives. When the same error
// repeats it sleeps (10 ms doubling to 1 s, cut short by Close) and returns
// the next delay.
func (w *Watcher) survive(err error, repeated bool, backoff time.Duration) time.Duration {
	w.errs.Add(1)
	w.log.Warn("exit detection error", "err", err)
	if f := w.opt.OnError; f != nil {
		f(err)
	}
	if !repeated {
		return 0
	}
	if backoff == 0 {
		backoff = 10 * time.Millisecond
	}
	t := time.NewTimer(backoff)
	select {
	case <-t.C:
	case <-w.done:
		t.Stop()
	}
	return min(2*backoff, time.Second)
}

// epollLoop waits on the exit tracepoint's ring buffer and, unless they have
// a set of their own (Watcher.pfd), on every watched pidfd. A readable pidfd
// means the whole process has exited; it is reported with the status of the
// latest connector event for it, if any.
func (w *Watcher) epollLoop(started chan<- struct{}) {
	defer w.wg.Done()
	if p := w.opt.Priority; p > 0 && w.tr != nil {
		// Locked, and never unlocked: the thread ends with the goroutine
		// (or, if it is the main thread, the runtime parks it for good)
		// rather than serving other goroutines; it is made ordinary again
		// first.
		runtime.LockOSThread()
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(p)}
		if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
			w.log.Info("exit tracepoint reader left at an ordinary priority", "priority", p, "err", err)
		} else {
			w.rt.Store(true)
			w.log.Info("exit tracepoint reader runs SCHED_FIFO", "priority", p)
			defer func() {
				_ = unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: 0 /* SCHED_OTHER */}, 0)
				w.rt.Store(false)
			}()
		}
	}
	close(started)
	w.waitLoop(w.epfd)
}

// pidfdLoop waits on the watched pidfds, on an ordinary thread, when the
// epoll goroutine runs real-time (see Watcher.pfd). It reports an exit
// only when the tracepoint's reader has not: the watch's compare-and-swap
// in fire makes exactly one of them report it. In normal operation the
// reader has reported the exit, and removed the pidfd from this set, before
// the pidfd turns readable, so this goroutine is not even woken.
func (w *Watcher) pidfdLoop() {
	defer w.wg.Done()
	w.waitLoop(w.pfd)
}

// waitLoop serves one epoll set until Close: the eventfd, the ring buffer
// and pidfds, whichever epfd holds.
func (w *Watcher) waitLoop(epfd int) {
	var (
		events  [128]unix.EpollEvent
		lastErr syscall.Errno
		backoff time.Duration
	)
	for {
		if h := w.opt.hooks; h != nil {
			if f := h.beforeEpoll; f != nil && epfd == w.epfd {
				f()
			}
			if f := h.beforePidfd; f != nil && epfd != w.epfd {
				f()
			}
		}
		n, err := unix.EpollWait(epfd, events[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			if w.isDone() {
				return
			}
			errno, _ := err.(syscall.Errno)
			backoff = w.survive(os.NewSyscallError("epoll_wait", err), errno == lastErr, backoff)
			lastErr = errno
			continue
		}
		lastErr, backoff = 0, 0
		if w.tr != nil && epfd == w.epfd {
			// The ring first, whatever the order of the events: a record
			// committed before a pidfd turned readable (a kill, the start
			// of an exit) is in the ring now, and is handled before that
			// pidfd is. So a traced death is reported by the tracepoint,
			// with its kill's stamp, even when the pidfd's event comes
			// first in the batch.
			w.tr.drain(w.onTrace)
		}
		now := monotonicNs()
		for i := range n {
			id := epollData(&events[i])
			if id == wakeID {
				if w.isDone() {
					return
				}
				continue
			}
			if id == traceID {
				continue // drained above
			}
			w.mu.Lock()
			wt := w.byID[id]
			w.mu.Unlock()
			if wt == nil {
				continue // reported or unwatched meanwhile
			}
			ws, have := wt.status()
			w.fire(wt, SourcePidfd, ws, have, now)
		}
	}
}

// traced handles one tracepoint record. recExit: the last thread of process
// tgid started to exit at ns. recKill: a SIGKILL was delivered to it at ns;
// the watch stays armed for the exit. A watch made after ns is of a later
// process that reuses the PID (the record waited in the ring while the first
// was reaped), and is left alone.
func (w *Watcher) traced(tgid int32, kind uint32, ns uint64) {
	now := monotonicNs()
	wt := w.byPID.get(tgid) // no lock between the record and the store of 0
	if wt == nil || !wt.traced.Load() || wt.since >= ns {
		return
	}
	if kind != recKill {
		w.fire(wt, SourceTracepoint, 0, false, now)
		return
	}
	// The stamp first, then the state: a fire that leaves stateKilled
	// finds the stamp. One that came first (the exit reported) leaves the
	// kill unreported, as does a second kill.
	if !wt.killed.CompareAndSwap(0, now) || !wt.state.CompareAndSwap(stateArmed, stateKilled) {
		return
	}
	if f := w.opt.OnKill; f != nil {
		f(Kill{Key: wt.key, PID: int(wt.pid), DetectedNs: now})
	}
}

// monotonicNs is CLOCK_MONOTONIC in nanoseconds (bpf_ktime_get_ns's
// clock), without a system call on the exit path.
func monotonicNs() uint64 { return shm.MonotonicNs() }
