package connector

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stalledEpoll returns hooks that keep the epoll goroutine from ever
// reporting, so that only the connector (and its resync) can.
func stalledEpoll() (*testHooks, *gate) {
	g := newGate()
	return &testHooks{beforeEpoll: g.wait}, g
}

// TestConnectorReportsKill: a SIGKILLed child is reported by the connector
// fast path with status 128+9, while still an unreaped zombie.
func TestConnectorReportsKill(t *testing.T) {
	requireConnector(t)
	for _, mode := range []string{"sleep", "threads"} {
		t.Run(mode, func(t *testing.T) {
			hooks, g := stalledEpoll()
			rec := newRecorder()
			w := newWatcher(t, rec.options(Options{Detector: DetectConnector, hooks: hooks}), g)
			c := startKillable(t, mode)
			rec.expect(1, c)
			if err := w.Watch(1, c.pid, c.pidfd); err != nil {
				t.Fatal(err)
			}
			c.kill(unix.SIGKILL)
			e := collect(t, w, 1)[1]
			want := Exit{Key: 1, PID: c.pid, Status: 137, WaitStatus: 9, HaveStatus: true, Source: SourceConnector, DetectedNs: e.DetectedNs}
			if e != want {
				t.Errorf("exit:\n got %+v\nwant %+v", e, want)
			}
			if e.DetectedNs == 0 {
				t.Error("DetectedNs is 0")
			}
			if !rec.wasZombie(1) {
				t.Error("OnExit ran while the process was not an unreaped zombie")
			}
			if got := c.reap(); got != 137 {
				t.Errorf("waitid status %d, want 137", got)
			}
			if n := rec.count(1); n != 1 {
				t.Errorf("OnExit called %d times", n)
			}
		})
	}
}

// TestConnectorReportsExitCode: a clean exit 3 gives status 3.
func TestConnectorReportsExitCode(t *testing.T) {
	requireConnector(t)
	hooks, g := stalledEpoll()
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectConnector, hooks: hooks}), g)
	c := startSelf(t, "wait-exit", true)
	rec.expect(7, c)
	if err := w.Watch(7, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	c.stdin.Close() // the child exits 3
	e := collect(t, w, 7)[7]
	if e.Status != 3 || e.WaitStatus != 3<<8 || !e.HaveStatus || e.Source != SourceConnector || e.PID != c.pid {
		t.Errorf("exit %+v, want status 3 (ws 0x300) from the connector", e)
	}
	if !rec.wasZombie(7) {
		t.Error("OnExit ran while the process was not an unreaped zombie")
	}
	if got := c.reap(); got != 3 {
		t.Errorf("waitid status %d, want 3", got)
	}
}

// detectors runs f for each detector that works here.
func detectors(t *testing.T, f func(t *testing.T, d Detector)) {
	for _, d := range []Detector{DetectConnector, DetectPidfd, DetectTracepoint} {
		t.Run(d.String(), func(t *testing.T) {
			switch d {
			case DetectConnector:
				requireConnector(t)
			case DetectTracepoint:
				requireTrace(t)
			}
			f(t, d)
		})
	}
}

// watchFn is how tests under detector d watch their children: WatchChild
// for the exit tracepoint (which then leaves their events to the parent's
// reap), Watch otherwise.
func watchFn(w *Watcher, d Detector) func(key uint64, pid, pidfd int) error {
	if d == DetectTracepoint {
		return w.WatchChild
	}
	return w.Watch
}

// checkUnreaped fails t unless OnExit for key ran before the process was
// reaped: as a zombie, or (exit tracepoint) while its last thread exits.
func checkUnreaped(t *testing.T, rec *recorder, key uint64, d Detector) {
	t.Helper()
	if d == DetectTracepoint {
		if !rec.wasUnreaped(key) {
			t.Error("OnExit ran when the process was neither exiting nor an unreaped zombie")
		}
		return
	}
	if !rec.wasZombie(key) {
		t.Error("OnExit ran while the process was not an unreaped zombie")
	}
}

// TestThreadExitsNotReported: threads ending in a live process report
// nothing; the process's own exit later does.
func TestThreadExitsNotReported(t *testing.T) {
	detectors(t, func(t *testing.T, d Detector) {
		rec := newRecorder()
		w := newWatcher(t, rec.options(Options{Detector: d}))
		const extra = 6
		c := startSelf(t, "threads", true, "HB_THREADS="+strconv.Itoa(extra))
		if got := c.readLine(); got != "ready" {
			t.Fatalf("child said %q", got)
		}
		rec.expect(1, c)
		if err := watchFn(w, d)(1, c.pid, c.pidfd); err != nil {
			t.Fatal(err)
		}
		matched := w.Stats().Matched
		if _, err := c.stdin.WriteString("stop\n"); err != nil {
			t.Fatal(err)
		}
		if got := c.readLine(); got != "stopped" { // its threads have ended
			t.Fatalf("child said %q", got)
		}
		if d == DetectConnector {
			// Every thread's exit event has been handled (Matched counts
			// after the decision).
			waitFor(t, "the thread exit events", func() bool { return w.Stats().Matched >= matched+extra })
		}
		if c.dead() {
			t.Fatal("child died")
		}
		noExitQueued(t, w)
		if n := rec.total(); n != 0 {
			t.Fatalf("OnExit called %d times for thread exits", n)
		}
		c.stdin.Close()
		e := collect(t, w, 1)[1]
		if e.Source == SourceConnector && e.Status != 3 {
			t.Errorf("status %d, want 3", e.Status)
		}
		checkUnreaped(t, rec, 1, d)
		if got := c.reap(); got != 3 {
			t.Errorf("waitid status %d, want 3", got)
		}
	})
}

// buildLeaderExit compiles testdata/leaderexit.c.
func buildLeaderExit(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("needs gcc to build the thread-leader helper")
	}
	bin := filepath.Join(t.TempDir(), "leaderexit")
	out, err := exec.Command(gcc, "-O2", "-pthread", "-o", bin, "testdata/leaderexit.c").CombinedOutput()
	if err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// leaderState is the state letter of pid's leader thread.
func leaderState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// TestLeaderExitsFirst: the thread-group leader ends (pthread_exit, or raw
// SYS_exit) while another thread runs: not dead yet. The last thread's exit
// then reports the process.
func TestLeaderExitsFirst(t *testing.T) {
	bin := buildLeaderExit(t)
	for _, how := range []string{"pthread", "raw"} {
		t.Run(how, func(t *testing.T) {
			detectors(t, func(t *testing.T, d Detector) {
				rec := newRecorder()
				w := newWatcher(t, rec.options(Options{Detector: d}))
				matched := w.Stats().Matched
				c := startCmd(t, true, bin, how)
				rec.expect(1, c)
				if err := watchFn(w, d)(1, c.pid, c.pidfd); err != nil {
					t.Fatal(err)
				}
				if _, err := c.stdin.WriteString("go\n"); err != nil {
					t.Fatal(err)
				}
				if got := c.readLine(); got != "leader-exiting" {
					t.Fatalf("helper said %q", got)
				}
				waitFor(t, "the leader thread to become a zombie", func() bool { return leaderState(c.pid) == "Z" })
				if d == DetectConnector {
					waitFor(t, "the leader's exit event", func() bool { return w.Stats().Matched >= matched+1 })
				}
				if c.dead() {
					t.Fatal("pidfd readable while a thread still runs")
				}
				noExitQueued(t, w)
				if n := rec.total(); n != 0 {
					t.Fatalf("OnExit called %d times after the leader's exit", n)
				}
				c.stdin.Close() // the other thread calls exit(5)
				e := collect(t, w, 1)[1]
				// The status is the exit event's when the connector reports;
				// a pidfd report carries an earlier thread's, if any.
				if e.Source == SourceConnector && e.Status != 5 {
					t.Errorf("status %d, want 5", e.Status)
				}
				checkUnreaped(t, rec, 1, d)
				if got := c.reap(); got != 5 {
					t.Errorf("waitid status %d, want 5", got)
				}
			})
		})
	}
}

// TestResyncAfterOverflow: with both loops stalled, a burst of exits overflows
// a tiny receive buffer; the watched children die meanwhile (their events are
// dropped). The connector then gets ENOBUFS, rescans, and reports each of
// them once, as SourceResync. The burst comes from an unrelated process, so
// the socket filter, which would drop it, is off here (as when the watched
// set is too large for it); TestResyncAfterOverflowFiltered has it on.
func TestResyncAfterOverflow(t *testing.T) {
	requireConnector(t)
	recvGate, epollGate := newGate(), newGate()
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{
		Detector:   DetectConnector,
		ReadBuffer: 1, // the kernel minimum
		NoFilter:   true,
		hooks:      &testHooks{beforeRecv: recvGate.wait, beforeEpoll: epollGate.wait},
	}), recvGate, epollGate)
	recvGate.waitParked(t)
	epollGate.waitParked(t)

	const n = 4
	kids, _ := watchSleepers(t, w.Watch, rec, n)
	// The burst: 64 threads ending at once, into a buffer that holds a
	// handful of events.
	f := startSelf(t, "flood", false, "HB_THREADS=64")
	f.waitDead()
	f.reap()
	for _, c := range kids {
		c.kill(unix.SIGKILL)
	}
	for _, c := range kids {
		c.waitDead()
	}
	recvGate.release()
	got := collect(t, w, 0, 1, 2, 3)
	for k, e := range got {
		if e.Source != SourceResync || e.HaveStatus || e.Status != -1 {
			t.Errorf("key %d: %+v, want an exit from the resync without status", k, e)
		}
		if !rec.wasZombie(k) {
			t.Errorf("key %d: OnExit ran while the process was not an unreaped zombie", k)
		}
	}
	// OnResync is called after the rescan has reported what it found, so
	// it may come just after the exits.
	var resyncs []error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		rec.mu.Lock()
		resyncs = append([]error(nil), rec.resyncs...)
		rec.mu.Unlock()
		if len(resyncs) > 0 {
			break
		}
	}
	st := w.Stats()
	if st.Resyncs == 0 {
		t.Errorf("Stats %+v: no resync", st)
	}
	if len(resyncs) == 0 || !errors.Is(resyncs[0], unix.ENOBUFS) {
		t.Errorf("OnResync calls %v, want one with ENOBUFS", resyncs)
	}
	// The stale epoll events must not report anything again.
	epollGate.release()
	for i, c := range kids {
		if got := c.reap(); got != 137 {
			t.Errorf("kid %d: waitid status %d", i, got)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for e := range w.Exits() {
		t.Errorf("reported again: %+v", e)
	}
	for i := range n {
		if c := rec.count(uint64(i)); c != 1 {
			t.Errorf("key %d: OnExit called %d times", i, c)
		}
	}
}

// TestFloodNoMissedExits: watched children killed during floods of unrelated
// exits into a tiny buffer are all reported, once.
func TestFloodNoMissedExits(t *testing.T) {
	requireConnector(t)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectConnector, ReadBuffer: 1}))
	const n = 12
	kids, keys := watchSleepers(t, w.Watch, rec, n)
	done := make(chan struct{})
	floodErr := make(chan error, 1)
	go func() {
		defer close(floodErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=flood", "HB_THREADS=64")
			if err := cmd.Run(); err != nil {
				floodErr <- err
				return
			}
		}
	}()
	for _, c := range kids {
		c.kill(unix.SIGKILL)
		time.Sleep(time.Millisecond) // spread the kills over the flood
	}
	got := collect(t, w, keys...)
	close(done)
	if err := <-floodErr; err != nil {
		t.Fatalf("flood: %v", err)
	}
	for _, c := range kids {
		c.reap()
	}
	for k := range got {
		if !rec.wasZombie(k) {
			t.Errorf("key %d: OnExit ran while the process was not an unreaped zombie", k)
		}
	}
	t.Logf("stats %+v; sources %v", w.Stats(), sources(got))
}

func sources(m map[uint64]Exit) map[Source]int {
	s := map[Source]int{}
	for _, e := range m {
		s[e.Source]++
	}
	return s
}

// TestPidfdOnly: without netlink the epoll loop reports exits, without status.
func TestPidfdOnly(t *testing.T) {
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectPidfd}))
	if conn, pidfd := w.Active(); conn || !pidfd {
		t.Fatalf("Active() = %v, %v; want false, true", conn, pidfd)
	}
	c := startSelf(t, "sleep", false)
	rec.expect(9, c)
	if err := w.Watch(9, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	c.kill(unix.SIGTERM)
	e := collect(t, w, 9)[9]
	want := Exit{Key: 9, PID: c.pid, Status: -1, Source: SourcePidfd, DetectedNs: e.DetectedNs}
	if e != want {
		t.Errorf("exit:\n got %+v\nwant %+v", e, want)
	}
	if !rec.wasZombie(9) {
		t.Error("OnExit ran while the process was not an unreaped zombie")
	}
	if got := c.reap(); got != 128+int(unix.SIGTERM) {
		t.Errorf("waitid status %d", got)
	}
	if st := w.Stats(); st.Events != 0 || st.Exits != 1 || st.Watching != 0 || st.ReadBuffer != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestWatchAlreadyExited: watching a process that has already exited reports
// it at once.
func TestWatchAlreadyExited(t *testing.T) {
	detectors(t, func(t *testing.T, d Detector) {
		rec := newRecorder()
		w := newWatcher(t, rec.options(Options{Detector: d}))
		c := startSelf(t, "exit3", false)
		c.waitDead()
		rec.expect(3, c)
		if err := watchFn(w, d)(3, c.pid, c.pidfd); err != nil {
			t.Fatal(err)
		}
		e := collect(t, w, 3)[3]
		// The pidfd reports it; with the connector, a late event of one of
		// the child's threads may get there first.
		if e.PID != c.pid || (e.Source != SourcePidfd && e.Source != SourceConnector) {
			t.Errorf("exit %+v, want one from the pidfd or the connector", e)
		}
		checkUnreaped(t, rec, 3, d)
		if got := c.reap(); got != 3 {
			t.Errorf("waitid status %d, want 3", got)
		}
	})
}

// TestUnwatch: an unwatched process's exit is not reported.
func TestUnwatch(t *testing.T) {
	detectors(t, func(t *testing.T, d Detector) {
		rec := newRecorder()
		w := newWatcher(t, rec.options(Options{Detector: d}))
		a, b := startSelf(t, "sleep", false), startSelf(t, "sleep", false)
		if err := watchFn(w, d)(1, a.pid, a.pidfd); err != nil {
			t.Fatal(err)
		}
		if err := watchFn(w, d)(2, b.pid, b.pidfd); err != nil {
			t.Fatal(err)
		}
		w.Unwatch(1)
		w.Unwatch(1)   // again: ignored
		w.Unwatch(999) // unknown: ignored
		if st := w.Stats(); st.Watching != 1 {
			t.Errorf("Watching = %d, want 1", st.Watching)
		}
		a.kill(unix.SIGKILL)
		a.waitDead()
		a.reap()
		b.kill(unix.SIGKILL)
		collect(t, w, 2)
		b.reap()
		if n := rec.count(1); n != 0 {
			t.Errorf("unwatched key reported %d times", n)
		}
		noExitQueued(t, w)
		// The key can be used again.
		c := startSelf(t, "sleep", false)
		if err := watchFn(w, d)(1, c.pid, c.pidfd); err != nil {
			t.Fatal(err)
		}
		c.kill(unix.SIGKILL)
		collect(t, w, 1)
		c.reap()
	})
}

// TestWatchErrors: invalid arguments and duplicates are refused.
func TestWatchErrors(t *testing.T) {
	w := newWatcher(t, Options{Detector: DetectPidfd})
	c := startSelf(t, "sleep", false)
	if err := w.Watch(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "regular"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name       string
		key        uint64
		pid, pidfd int
		is         error
	}{
		{"same key", 1, c.pid, c.pidfd, ErrDuplicate},
		{"same pid", 2, c.pid, c.pidfd, ErrDuplicate},
		{"zero pid", 3, 0, c.pidfd, nil},
		{"negative pidfd", 3, 12345, -1, nil},
		{"regular file", 3, 12345, int(f.Fd()), unix.EPERM},
		{"closed fd", 3, 12345, 1 << 20, unix.EBADF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := w.Watch(tc.key, tc.pid, tc.pidfd)
			if err == nil {
				t.Fatal("Watch succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want one matching %v", err, tc.is)
			}
			t.Log(err)
		})
	}
	if st := w.Stats(); st.Watching != 1 {
		t.Errorf("Watching = %d, want 1", st.Watching)
	}
}

// openFds counts this process's open file descriptors.
func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestClose: Close ends both goroutines (Exits is closed after they return),
// releases the Watcher's descriptors, keeps the caller's pidfd, and is
// idempotent; Watch then fails with ErrClosed.
func TestClose(t *testing.T) {
	for _, d := range []Detector{DetectAuto, DetectPidfd} {
		t.Run(d.String(), func(t *testing.T) {
			c := startSelf(t, "sleep", false)
			fds := openFds(t)
			w, err := NewWatcher(Options{Detector: d})
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Watch(1, c.pid, c.pidfd); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case _, ok := <-w.Exits():
				if ok {
					t.Fatal("exit reported for a live process")
				}
			case <-time.After(waitLimit):
				t.Fatal("Exits not closed")
			}
			if err := w.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if got := openFds(t); got != fds {
				t.Errorf("%d fds open after Close, %d before NewWatcher", got, fds)
			}
			if err := w.Watch(2, c.pid, c.pidfd); !errors.Is(err, ErrClosed) {
				t.Errorf("Watch after Close: %v, want ErrClosed", err)
			}
			if c.dead() {
				t.Error("child died")
			}
			if _, err := unix.FcntlInt(uintptr(c.pidfd), unix.F_GETFD, 0); err != nil {
				t.Errorf("caller's pidfd closed: %v", err)
			}
		})
	}
}

// TestCloseWithFullQueue: a detector blocked on a full Exits channel is
// released by Close.
func TestCloseWithFullQueue(t *testing.T) {
	rec := newRecorder()
	w, err := NewWatcher(rec.options(Options{Detector: DetectPidfd, hooks: &testHooks{exitQueue: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c := startSelf(t, "exit3", false)
		if err := w.Watch(uint64(i), c.pid, c.pidfd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two exits (one queued, one blocked)", func() bool { return rec.total() >= 2 })
	closed := make(chan error, 1)
	go func() { closed <- w.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close blocked")
	}
}

// TestAutoDetector: DetectAuto uses the connector exactly when Available,
// and the exit tracepoint exactly when TraceAvailable.
func TestAutoDetector(t *testing.T) {
	w := newWatcher(t, Options{})
	conn, pidfd := w.Active()
	if want := Available() == nil; conn != want || !pidfd {
		t.Errorf("Active() = %v, %v; want %v, true (Available: %v)", conn, pidfd, want, Available())
	}
	if err := TraceAvailable(); w.Traced() != (err == nil) {
		t.Errorf("Traced() = %v; TraceAvailable: %v", w.Traced(), err)
	}
	if conn && w.Stats().ReadBuffer < DefaultReadBuffer {
		t.Logf("granted receive buffer %d < %d requested (not root?)", w.Stats().ReadBuffer, DefaultReadBuffer)
	}
}

// TestAvailable: the answer is nil or wraps ErrUnavailable, and is cached.
func TestAvailable(t *testing.T) {
	err := Available()
	if err != nil && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Available() = %v, not wrapping ErrUnavailable", err)
	}
	t.Logf("Available() = %v (uid %d)", err, os.Getuid())
	if err2 := Available(); err2 != err {
		t.Errorf("second call %v, first %v", err2, err)
	}
	if err := checkNamespaces(); err != nil {
		t.Logf("namespaces: %v", err)
	}
}

// TestHotPathAllocs: handling an event, for an unwatched process or a
// watched live one, does not allocate.
func TestHotPathAllocs(t *testing.T) {
	w := newWatcher(t, Options{Detector: DetectPidfd})
	c := startSelf(t, "sleep", false)
	if err := w.Watch(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	other := testFrame(frameArgs{pid: 424242, tgid: 424242, ws: 0x300})
	watched := testFrame(frameArgs{pid: uint32(c.pid) + 1, tgid: uint32(c.pid), ws: 0, exitSignal: ThreadExitSignal})
	if n := testing.AllocsPerRun(1000, func() { w.handleDatagram(other) }); n != 0 {
		t.Errorf("unwatched event: %v allocs", n)
	}
	if n := testing.AllocsPerRun(1000, func() { w.handleDatagram(watched) }); n != 0 {
		t.Errorf("watched live process event: %v allocs", n)
	}
	if c.dead() || w.Stats().Exits != 0 {
		t.Fatal("live process reported")
	}
}

// TestRecvAllocs: receiving a datagram does not allocate.
func TestRecvAllocs(t *testing.T) {
	requireConnector(t)
	s, err := dialProc(0, procEventExit)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const runs = 10
	for range runs + 1 { // AllocsPerRun makes one extra warm-up call
		if _, err := exitOneThread(); err != nil {
			t.Fatal(err)
		}
	}
	n := testing.AllocsPerRun(runs, func() {
		if _, err := s.recv(); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("recv: %v allocs per datagram", n)
	}
}

// BenchmarkKillToOnExit measures SIGKILL (pidfd_send_signal) of a sleep(1)
// child to the OnExit call, per detector; the spawn is not timed. Metrics:
// p50 and p99 of kill→DetectedNs, in µs.
func BenchmarkKillToOnExit(b *testing.B) {
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		b.Skip("needs sleep(1)")
	}
	for _, d := range []Detector{DetectConnector, DetectPidfd} {
		b.Run(d.String(), func(b *testing.B) {
			if d == DetectConnector {
				requireConnector(b)
			}
			got := make(chan uint64, 1)
			w, err := NewWatcher(Options{Detector: d, OnExit: func(e Exit) { got <- e.DetectedNs }})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			go func() {
				for range w.Exits() {
				}
			}()
			var lat []time.Duration
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				c := startCmd(b, false, sleepBin, "1000")
				if err := w.Watch(uint64(i), c.pid, c.pidfd); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t0 := monotonicNs()
				c.kill(unix.SIGKILL)
				det := <-got
				b.StopTimer()
				lat = append(lat, time.Duration(det-t0))
				c.reap()
				b.StartTimer()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}

// BenchmarkHandleEvent measures the connector goroutine's work for one
// datagram, after the receive: decode and the tgid lookup among 1000
// watches (unwatched: the common case in a flood), and for a thread of a
// watched live process (adds the clock read and the pidfd poll).
func BenchmarkHandleEvent(b *testing.B) {
	w, err := NewWatcher(Options{Detector: DetectPidfd})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	c := startSelf(b, "sleep", false)
	// 999 more watches on the same pidfd under other pids: only the map size
	// matters here.
	if err := w.Watch(0, c.pid, c.pidfd); err != nil {
		b.Fatal(err)
	}
	for i := 1; i < 1000; i++ {
		dup, err := unix.Dup(c.pidfd)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(dup)
		if err := w.Watch(uint64(i), 1<<22+i, dup); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name  string
		frame []byte
	}{
		{"unwatched", testFrame(frameArgs{pid: 424242, tgid: 424242, ws: 9})},
		{"watched-thread", testFrame(frameArgs{pid: uint32(c.pid) + 1, tgid: uint32(c.pid), exitSignal: ThreadExitSignal})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w.handleDatagram(bc.frame)
			}
		})
	}
}
