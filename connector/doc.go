// Package connector tells a caller, as soon as the kernel knows, that a
// watched process has exited. It knows nothing of services: a watch is a
// caller-chosen key, a PID and the caller's pidfd for that PID.
//
// # Detectors
//
// Up to three detectors run side by side, and exactly one of them reports
// each exit:
//
//   - The exit tracepoint, the earliest (see trace_linux.go): an eBPF program
//     on the sched_process_exit raw tracepoint, which fires once the last
//     live thread of a process has entered do_exit (group_dead), before the
//     kernel tears the process down. It looks the TGID up in a hash map of
//     watched children and writes a record into a ring buffer that the epoll
//     goroutine waits on beside the pidfds. The proc connector's event and a
//     pidfd's readiness both come only after the teardown (exit_notify). The
//     tracepoint knows no exit status and sees the process before it is a
//     zombie: the parent of a child (WatchChild) reaps it and learns the
//     status there; for another process asked for with WatchTraced the
//     caller reads it from the pidfd (PIDFD_INFO_EXIT) once that process's
//     parent has reaped it; Watch leaves it to the connector. It needs CAP_BPF and CAP_PERFMON and
//     Linux 6.16+ (the tracepoint's group_dead argument); see
//     TraceAvailable. Each record carries its time, and a watch made after
//     it ignores it: the PID may be a new process's by then.
//   - The proc connector (NETLINK_CONNECTOR, group CN_IDX_PROC), the fast
//     path. The socket subscribes with the 8-byte proc_input{LISTEN,
//     PROC_EVENT_EXIT}, so the kernel queues exit events only (Linux 6.6+
//     filters per socket; no ACK is expected). Events are per thread, so an
//     event for any thread of a watched process only triggers a zero-timeout
//     poll of the process's pidfd: readable means the whole thread group is
//     gone and the exit is reported at once, with the event's exit status;
//     otherwise (a thread ended, the leader ended before its threads, a thread
//     called exec) nothing is reported and the status is kept for later.
//     The connector works only in the initial user, pid and network
//     namespaces (see Available); it needs no privilege on Linux 6.6+ and
//     CAP_NET_ADMIN before.
//   - A pidfd epoll loop, the loss-free safety net, which always runs: a
//     pidfd turns readable only when the whole process has exited.
//
// Connector events can be lost when the socket's receive buffer overflows.
// The kernel then fails the next receive with ENOBUFS; the Watcher keeps
// reading, polls every watched pidfd once and reports those that are
// readable (SourceResync), then calls Options.OnResync. NETLINK_NO_ENOBUFS,
// which would hide such losses, is never set.
//
// The Watcher never reaps a process and never closes a pidfd it was given.
// An exit is reported before the process is reaped — while it exits (the
// tracepoint) or as a zombie (the others) — so its PID cannot have been
// reused; the caller (its parent) reaps it afterwards.
//
// # Socket filter
//
// The proc connector sends every socket the exit of every task on the
// machine. A classic BPF program attached to the socket has the kernel drop,
// before queuing, the exit events of processes that are not watched, so a
// flood of unrelated exits costs the Watcher nothing. The program checks
// that a datagram is an exit event, then looks its process id up by binary
// search among the watched ones; it drops nothing else (thread exits of a
// watched process, ACKs, other event types pass). Filter and watched set need
// not agree at every instant: a process not yet in the filter is reported
// through its pidfd, one left in it only lets its events in. So updates are
// coalesced: Watch updates the filter at once when the Watcher is quiet;
// during a burst of Watch/Unwatch calls the connector goroutine does it at
// most every 10 ms (longer when an update is costly), and removals wait
// about a second. A set too large for one program (about 3,300 processes)
// leaves the socket without filter: every exit is delivered.
// Stats.FilterTGIDs and FilterUpdates show the filter's state.
//
// Children of the watching process, watched with WatchChild, are not in the
// set: while there is one, the program passes every exit event whose parent
// (exit.parent_tgid) is this process, a test that never changes. So spawning
// and respawning children costs no filter update; only the first child, the
// last one, and processes watched with Watch (adopted ones) change the
// program.
//
// # Goroutines and concurrency contract
//
// A Watcher owns at most three goroutines: the connector goroutine (none with
// DetectPidfd or DetectTracepoint, or when the connector is unavailable
// under DetectAuto) and one epoll goroutine for all pidfds and the exit
// tracepoint's ring buffer — not one goroutine or thread per process. When
// the tracepoint's reader runs real-time (Options.Priority), the pidfds get
// an epoll set and goroutine of their own on ordinary threads: real-time
// threads of higher priority that keep every CPU busy (busy-polling
// data-plane stages) never let the reader run, while the fair scheduler
// still gives ordinary threads a share (real-time throttling), so the
// pidfds report the exit then. Each goroutine may detect the same exit; a
// compare-and-swap on the watch makes exactly one of them report it, and
// the caller's OnExit runs once.
//
// Reporting an exit, on the goroutine that detected it, is in this order:
//
//  1. Options.OnExit is called synchronously, before anything else is done
//     (no allocation, logging, or channel operation comes first). It is the
//     place to record the death, e.g. to clear a liveness slot. It must not
//     block, must not call Close, and must not close the watched pidfd.
//  2. The watch is removed (epoll deregistration and lookup maps).
//  3. The Exit is sent on the Exits channel (capacity DefaultExitQueue). If
//     that channel is full the goroutine blocks until it is drained — exits
//     are never dropped, but detection stalls meanwhile — or until Close.
//
// All Watcher methods are safe for concurrent use, and Watch and Unwatch may
// be called from OnExit. OnExit, OnResync and OnError may run concurrently
// with each other (they come from two goroutines; OnError also from Watch,
// when the socket filter cannot be updated). After Unwatch returns, or
// after the Exit has been received from Exits, the Watcher no longer uses the
// pidfd and the caller may close it. Close stops both goroutines, then closes
// the Exits channel.
//
// To watch a child without any chance of missing its exit, start it with a
// pidfd (syscall.SysProcAttr.PidFD) and call Watch after starting it: a
// process that has already exited when Watch runs is reported at once
// through its pidfd.
//
// # Exit status
//
// Exit.Status is the exit code, or 128+signal, taken from a connector event
// (HaveStatus). A report by the pidfd loop carries the status of the latest
// connector event seen for the process, if any; when the leader thread ended
// before the others it can be that earlier thread's. Statuses are cleared
// after a resync. A parent's waitid is always the authority for its children.
//
// # Costs
//
// Per datagram the connector goroutine makes one non-blocking recvfrom,
// without allocation, and parks in the runtime poller when the queue is
// empty; only events of watched processes cost a clock read and one poll(2).
// With the socket filter on, exits of unwatched processes cost the Watcher
// nothing (the kernel runs the filter in the exiting task). Measured costs
// are in docs/perf-notes.md.
//
// # Debugging
//
// Options.Logger receives the detector choice, resyncs and survived errors
// (never anything on the exit path). Watcher.Stats counts datagrams, events,
// matches, exits, resyncs, errors and filter updates and shows the receive
// buffer the kernel granted and the size of the socket filter.
// Frames captured from the running kernel live in testdata/ and are rewritten
// by
//
//	go test ./connector -run TestCaptureFrames -capture
//
// and the decoder's fuzz target is
//
//	go test ./connector -run '^$' -fuzz FuzzDecodeFrame
//
// Only Linux is supported; elsewhere Available reports ErrUnavailable and
// NewWatcher fails.
package connector
