package connector

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrUnavailable wraps every reason the proc connector cannot be used
	// here (returned by Available, and by NewWatcher with DetectConnector).
	ErrUnavailable = errors.New("proc connector unavailable")
	// ErrTraceUnavailable wraps every reason the exit tracepoint cannot be
	// used here (returned by TraceAvailable, and by NewWatcher with
	// DetectTracepoint).
	ErrTraceUnavailable = errors.New("exit tracepoint unavailable")
	// ErrClosed is returned by Watch after Close.
	ErrClosed = errors.New("watcher closed")
	// ErrDuplicate is returned by Watch for a key, or a live process, that is
	// already being watched.
	ErrDuplicate = errors.New("already watched")
)

// Source says which detector saw an exit first.
type Source uint8

// Sources of an Exit.
const (
	// SourceConnector: a proc connector event for the process arrived and its
	// pidfd was readable at that moment (the fast path).
	SourceConnector Source = 1
	// SourcePidfd: the process's pidfd turned readable in the epoll loop.
	SourcePidfd Source = 2
	// SourceResync: connector events were lost (ENOBUFS) and the rescan of
	// every watched pidfd found the process gone.
	SourceResync Source = 3
	// SourceReaper: the exit was learnt by reaping (waitid). The Watcher
	// never produces it; it exists so that callers who also reap can label
	// such exits with the same type.
	SourceReaper Source = 4
	// SourceTracepoint: the eBPF program on the sched_process_exit
	// tracepoint saw the last thread of the process start to exit (the
	// earliest detector; the process is then past running user code but
	// not yet a zombie, and no status is known).
	SourceTracepoint Source = 5
)

// String returns "connector", "pidfd", "resync", "reaper", "tracepoint", or
// "source(N)".
func (s Source) String() string {
	switch s {
	case SourceConnector:
		return "connector"
	case SourcePidfd:
		return "pidfd"
	case SourceResync:
		return "resync"
	case SourceReaper:
		return "reaper"
	case SourceTracepoint:
		return "tracepoint"
	}
	return fmt.Sprintf("source(%d)", uint8(s))
}

// Detector selects how a Watcher learns of exits.
type Detector int

// Detectors. The zero value is DetectAuto.
const (
	// DetectAuto uses every detector that works here: the exit tracepoint
	// (for children, see WatchChild), the proc connector, and always the
	// pidfd epoll loop.
	DetectAuto Detector = iota
	// DetectConnector requires the proc connector: NewWatcher fails (with
	// ErrUnavailable) when it does not work here.
	DetectConnector
	// DetectPidfd uses the pidfd epoll loop only and opens no netlink socket.
	DetectPidfd
	// DetectTracepoint requires the exit tracepoint (NewWatcher fails with
	// ErrTraceUnavailable when it cannot be loaded here) and uses the pidfd
	// epoll loop beside it; it opens no netlink socket.
	DetectTracepoint
)

// String returns "auto", "connector", "pidfd", "tracepoint", or
// "detector(N)".
func (d Detector) String() string {
	switch d {
	case DetectAuto:
		return "auto"
	case DetectConnector:
		return "connector"
	case DetectPidfd:
		return "pidfd"
	case DetectTracepoint:
		return "tracepoint"
	}
	return fmt.Sprintf("detector(%d)", int(d))
}

// Detectors lists every Detector, in the order the documentation names them.
var Detectors = []Detector{DetectAuto, DetectConnector, DetectPidfd, DetectTracepoint}

// ParseDetector parses a Detector's String ("" means auto).
func ParseDetector(s string) (Detector, error) {
	if s == "" {
		return DetectAuto, nil
	}
	for _, d := range Detectors {
		if d.String() == s {
			return d, nil
		}
	}
	return DetectAuto, fmt.Errorf("connector: unknown detector %q (want auto, connector, pidfd or tracepoint)", s)
}

// MarshalText implements encoding.TextMarshaler.
func (d Detector) MarshalText() ([]byte, error) {
	switch d {
	case DetectAuto, DetectConnector, DetectPidfd, DetectTracepoint:
		return []byte(d.String()), nil
	}
	return nil, fmt.Errorf("connector: invalid detector %d", int(d))
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseDetector.
func (d *Detector) UnmarshalText(b []byte) error {
	v, err := ParseDetector(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Exit reports that a watched process (the whole thread group) has exited.
// The process has not been reaped by the Watcher: it stays a zombie, and its
// PID cannot be reused, until its parent reaps it.
type Exit struct {
	Key uint64 // the key given to Watch
	PID int    // the pid given to Watch

	// Status is the exit code, or 128+signal, when HaveStatus; else -1.
	Status int
	// WaitStatus is the wait(2)-style status Status was derived from (0 when
	// !HaveStatus).
	WaitStatus uint32
	// HaveStatus is true when a proc connector event for the process gave
	// its status. It is best effort: a pidfd detection that beat the
	// connector event carries no status, and a parent's waitid is always
	// the authority for its own children.
	HaveStatus bool

	Source Source // which detector fired
	// DetectedNs is CLOCK_MONOTONIC nanoseconds taken when the detecting
	// goroutine learnt of the exit, before OnExit was called.
	DetectedNs uint64
	// KilledNs is the DetectedNs of the Kill reported for this process
	// (OnKill) before its exit; 0 when there was none.
	KilledNs uint64
}

// Kill is a SIGKILL the kernel delivered to a watched process (OnKill).
type Kill struct {
	Key uint64 // the watch's key
	PID int
	// DetectedNs is CLOCK_MONOTONIC nanoseconds taken when the record was
	// read, before OnKill was called.
	DetectedNs uint64
}

// Options configures a Watcher. The zero value is usable: DetectAuto, a
// 4 MiB receive buffer, no callbacks.
type Options struct {
	// Detector selects the detectors (default DetectAuto).
	Detector Detector
	// Priority, when 1..99 and the exit tracepoint is on, makes the
	// goroutine that reads its ring buffer (and stores the 0 through
	// OnExit) run on an OS thread of its own with that SCHED_FIFO
	// priority, so a burst of ordinary processes (an exit flood) cannot
	// keep it off a CPU for tens of milliseconds. It needs CAP_SYS_NICE;
	// without it the thread stays ordinary (logged once). 0: ordinary.
	//
	// What it costs: a real-time thread of higher (or equal) priority that
	// keeps a CPU busy keeps this one off it for as long as it spins, and
	// real-time throttling (kernel.sched_rt_runtime_us) stops every
	// real-time thread, this one included, when it gives the fair class its
	// share. So with Priority set the pidfds are waited on by a goroutine
	// of their own on ordinary threads, which the fair scheduler always
	// serves (50 ms per second under the default throttling): under such
	// load an exit is reported by its pidfd, within about a second, rather
	// than when the load ends. Without real-time load the reader reports
	// first, as before, and the pidfd goroutine is not woken.
	Priority int

	// ReadBuffer is the proc connector socket's receive buffer in bytes.
	// 0 means DefaultReadBuffer; a negative value keeps the system default.
	// As root (CAP_NET_ADMIN) it is set with SO_RCVBUFFORCE, above
	// net.core.rmem_max; otherwise with SO_RCVBUF, capped by it. The kernel
	// doubles the value and enforces a small minimum. A full buffer loses
	// events; the Watcher then resyncs (see OnResync).
	ReadBuffer int

	// OnExit is called exactly once per watch whose process exits, on the
	// goroutine that detected the exit, before the exit is queued on
	// Exits() or anything else is done about it: a caller clears its
	// liveness record here. It must be quick and must not block; it must not
	// call Close, and must not close the watched pidfd (do that after the
	// Exit is received from Exits(), or after Unwatch). It may call Watch
	// and Unwatch. Nil means no callback.
	OnExit func(Exit)

	// OnKill is called when the kernel delivers a SIGKILL to a process in
	// the exit tracepoint's map (WatchChild, WatchTraced), on the goroutine
	// that reads the tracepoint, at most once per watch and only while the
	// exit is not yet reported. The process cannot run user code again,
	// but it may take a while to exit (it must first get a CPU): a caller
	// clears its liveness record here. The watch stays armed: OnExit
	// follows, once, when the exit is seen. The same rules as for OnExit
	// apply. Called only when the kill program runs (KillTraced).
	OnKill func(Kill)

	// OnResync is called on the connector goroutine after the kernel
	// reported lost events (ENOBUFS) and every watched pidfd has been
	// rescanned (the exits found were already reported). reason wraps
	// unix.ENOBUFS. Must not block. Nil means no callback.
	OnResync func(reason error)

	// OnError is called with receive or epoll errors that the Watcher
	// survives (it keeps working, backing off on a repeated error), and
	// with failures to update the proc connector socket's filter (the
	// socket is then left without one: every exit event is delivered); the
	// latter can come from within Watch. Must not block. Nil means no
	// callback.
	OnError func(error)

	// Logger receives rare diagnostics (detector choice, resyncs, errors);
	// nothing is logged on the exit path. Nil discards.
	Logger *slog.Logger

	// NoFilter leaves the proc connector socket without the socket filter
	// that has the kernel drop the exit events of unwatched processes (see
	// the package documentation): every exit on the machine is then
	// received and decoded, as when the watched set is too large for the
	// filter. For diagnosis, and for tests that need unrelated exits to
	// reach the socket, e.g. to overflow its receive buffer on purpose.
	NoFilter bool

	// hooks lets the package's tests stall the goroutines; nil in normal use.
	hooks *testHooks
}

// DefaultReadBuffer is the receive buffer requested when Options.ReadBuffer is 0.
const DefaultReadBuffer = 4 << 20

// DefaultExitQueue is the capacity of the channel returned by Watcher.Exits.
const DefaultExitQueue = 4096

// Stats are cumulative counters of a Watcher.
type Stats struct {
	Frames  uint64 // datagrams read from the proc connector socket, whatever they hold (what passed the socket filter)
	Events  uint64 // exit events received from the proc connector (any process, any thread)
	Matched uint64 // of Events, those for a watched process (any of its threads)
	Exits   uint64 // exits reported (OnExit calls)
	Resyncs uint64 // ENOBUFS episodes, each followed by a rescan of every watched pidfd
	Errors  uint64 // other receive/epoll errors, and failed socket filter updates, passed to OnError

	// FilterUpdates counts the socket filter programs attached to the proc
	// connector socket, and their removals when the watched set grew too
	// large for one program.
	FilterUpdates uint64

	// Traced counts the records read from the exit tracepoint's ring
	// buffer: exits of watched children (whichever detector reported them).
	Traced uint64
	// Kills counts, of Traced, the SIGKILLs delivered to watched processes.
	Kills uint64
	// RealTime: the exit tracepoint's reader runs at Options.Priority.
	RealTime bool

	Watching   int // processes watched now
	ReadBuffer int // receive buffer the kernel granted (SO_RCVBUF), 0 without connector

	// FilterTGIDs is the number of processes in the socket filter now
	// attached to the proc connector socket, which has the kernel drop the
	// exit events of every other process; -1 when no filter is attached
	// (every exit event is delivered) or there is no connector. It lags
	// behind the watched set: an addition by up to a few tens of
	// milliseconds, a removal by about a second.
	FilterTGIDs int
}

// testHooks are stall points for tests, called at the top of each loop, and
// settings of the socket filter.
type testHooks struct {
	beforeRecv  func() // connector goroutine, before each receive
	beforeEpoll func() // epoll goroutine, before each epoll_wait
	beforePidfd func() // pidfd goroutine (when the reader runs real-time), before each epoll_wait
	exitQueue   int    // overrides DefaultExitQueue when > 0

	filterEvery time.Duration // overrides filterInterval when != 0
}
