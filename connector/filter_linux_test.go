package connector

import (
	"errors"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// kernelFilter attaches prog to the receiving end of an AF_UNIX datagram
// socket pair and returns a function that sends one datagram through it and
// reports whether it came out whole (true) or was dropped by the program
// (false). This runs the program in the kernel without privileges.
func kernelFilter(t testing.TB, prog []bpf.RawInstruction) func(frame []byte) bool {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if err := attachRaw(fds[1], prog); err != nil {
		t.Fatalf("attach a program of %d instructions: %v", len(prog), err)
	}
	buf := make([]byte, 2*FrameLen)
	return func(frame []byte) bool {
		t.Helper()
		if _, err := unix.Write(fds[0], frame); err != nil {
			t.Fatalf("send: %v", err)
		}
		n, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return false
		case err != nil:
			t.Fatalf("receive: %v", err)
		case n != len(frame):
			t.Fatalf("datagram of %d bytes came out as %d", len(frame), n)
		}
		return true
	}
}

// attachRaw attaches prog to fd with SO_ATTACH_FILTER.
func attachRaw(fd int, prog []bpf.RawInstruction) error {
	f := make([]unix.SockFilter, len(prog))
	for i, r := range prog {
		f[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]})
}

// TestFilterKernel runs the captured-frame cases through the kernel's own
// BPF (verifier, and JIT where enabled), and checks that it takes the
// largest program compileExitFilter makes.
func TestFilterKernel(t *testing.T) {
	runCapturedFilterCases(t, func(t testing.TB, prog []bpf.RawInstruction, frame []byte) bool {
		return kernelFilter(t, prog)(frame)
	})
	t.Run("largest program", func(t *testing.T) {
		exit := readFrame(t, "exit3.bin")
		n := largestFit()
		set := largeSet(n)
		prog, _ := compileExitFilter(set)
		t.Logf("%d TGIDs: %d instructions", n, len(prog))
		pass := kernelFilter(t, prog)
		for _, v := range []uint32{set[0], set[n/2], set[n-1]} {
			if !pass(withTGID(exit, v, true)) {
				t.Errorf("tgid %d dropped", v)
			}
			if pass(withTGID(exit, v+1, true)) {
				t.Errorf("tgid %d kept", v+1)
			}
		}
	})
}

// TestFilterDropsUnrelated: with one child watched, the exits of hundreds of
// unrelated processes reach a Watcher without the socket filter but not the
// filtered one, which still reports the watched child's exit from the
// connector.
func TestFilterDropsUnrelated(t *testing.T) {
	requireConnector(t)
	var sleepBin, shBin, trueBin string
	for _, p := range []struct {
		name string
		path *string
	}{{"sleep", &sleepBin}, {"sh", &shBin}, {"true", &trueBin}} {
		var err error
		if *p.path, err = exec.LookPath(p.name); err != nil {
			t.Skipf("needs %s: %v", p.name, err)
		}
	}
	hooks, g := stalledEpoll() // only the connector may report
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectConnector, hooks: hooks}), g)
	all := newWatcher(t, Options{Detector: DetectConnector, NoFilter: true})
	if st := all.Stats(); st.FilterTGIDs != -1 {
		t.Fatalf("unfiltered Watcher: FilterTGIDs = %d", st.FilterTGIDs)
	}
	if st := w.Stats(); st.FilterTGIDs != 0 {
		t.Fatalf("new Watcher: FilterTGIDs = %d, want 0 (every exit dropped)", st.FilterTGIDs)
	}

	c := startCmd(t, false, sleepBin, "1000") // one thread: one exit event
	rec.expect(1, c)
	if err := w.Watch(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	// The first Watch on a quiet Watcher updates the filter before it returns.
	if st := w.Stats(); st.FilterTGIDs != 1 {
		t.Fatalf("after Watch: FilterTGIDs = %d, want 1", st.FilterTGIDs)
	}

	// Unrelated short-lived processes: a shell's children, then the shell.
	const unrelated = 200
	before := all.Stats().Events
	sh := startCmd(t, false, shBin, "-c", "i=0; while [ $i -lt "+strconv.Itoa(unrelated)+" ]; do "+trueBin+"; i=$((i+1)); done")
	if got := sh.reap(); got != 0 {
		t.Fatalf("shell loop exited %d", got)
	}
	waitFor(t, "the unfiltered Watcher to receive the unrelated exits", func() bool { return all.Stats().Events >= before+unrelated })

	c.kill(unix.SIGKILL)
	e := collect(t, w, 1)[1]
	if e.Source != SourceConnector || e.Status != 137 {
		t.Errorf("exit %+v, want status 137 from the connector", e)
	}
	// Matched counts once the event has been handled, after the report.
	waitFor(t, "the watched child's event to be counted", func() bool { return w.Stats().Matched >= 1 })
	c.reap()
	st, sa := w.Stats(), all.Stats()
	t.Logf("filtered: %+v", st)
	t.Logf("unfiltered: %+v", sa)
	if st.Events != st.Matched {
		t.Errorf("filtered Watcher received %d exit events of unwatched processes (events %d, matched %d)",
			st.Events-st.Matched, st.Events, st.Matched)
	}
	if st.Matched != 1 {
		t.Errorf("filtered Watcher matched %d events, want 1 (the watched child's)", st.Matched)
	}
	if st.Resyncs != 0 || sa.Resyncs != 0 {
		t.Errorf("resyncs: %d filtered, %d unfiltered", st.Resyncs, sa.Resyncs)
	}
}

// TestFilterCoalesces: a burst of Watch calls costs a few filter updates, not
// one each, and the filter ends up holding every watched process.
func TestFilterCoalesces(t *testing.T) {
	requireConnector(t)
	w := newWatcher(t, Options{Detector: DetectConnector})
	c := startSelf(t, "sleep", false)
	const n = 500
	var err error
	start := time.Now()
	u0 := w.Stats().FilterUpdates
	for i := range n {
		pid, fd := c.pid, c.pidfd
		if i > 0 {
			// Other pids on the same pidfd: only the set matters here.
			pid = 1<<22 + i
			if fd, err = unix.Dup(c.pidfd); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
		}
		if err := w.Watch(uint64(i), pid, fd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the filter to hold every watched process", func() bool { return w.Stats().FilterTGIDs == n })
	elapsed := time.Since(start)
	updates := w.Stats().FilterUpdates - u0
	t.Logf("%d Watch calls in %v: %d filter updates", n, elapsed, updates)
	// Updates are decided at least filterInterval apart.
	if limit := 1 + uint64(elapsed/filterInterval); updates > limit {
		t.Errorf("%d updates in %v, more than one per %v", updates, elapsed, filterInterval)
	}
	if updates >= n {
		t.Errorf("%d updates for %d Watch calls", updates, n)
	}

	// Removals follow, later.
	for i := 1; i < n; i++ {
		w.Unwatch(uint64(i))
	}
	waitFor(t, "the filter to drop the unwatched processes", func() bool { return w.Stats().FilterTGIDs == 1 })
	c.kill(unix.SIGKILL)
	collect(t, w, 0)
	c.reap()
}

// TestFilterTooBig: past what one program holds, the filter is removed and
// every exit is delivered; it comes back when the set shrinks.
func TestFilterTooBig(t *testing.T) {
	requireConnector(t)
	w := newWatcher(t, Options{Detector: DetectConnector})
	c := startSelf(t, "sleep", false)
	n := largestFit() + 1
	for i := range n {
		fd, err := unix.Dup(c.pidfd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := w.Watch(uint64(i), 1<<22+i, fd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the filter to be removed", func() bool { st := w.Stats(); return st.FilterTGIDs == -1 && st.Watching == n })
	// Unrelated exits are delivered again.
	ev := w.Stats().Events
	f := startSelf(t, "exit3", false)
	f.waitDead()
	f.reap()
	waitFor(t, "an unrelated exit event", func() bool { return w.Stats().Events > ev })

	for i := 10; i < n; i++ {
		w.Unwatch(uint64(i))
	}
	waitFor(t, "the filter to come back", func() bool { return w.Stats().FilterTGIDs == 10 })
	t.Logf("%d watched, then 10: %+v", n, w.Stats())
}

// TestResyncAfterOverflowFiltered: as TestResyncAfterOverflow, with the
// socket filter on: the burst that overflows the buffer now has to come from
// a watched process (its threads' exits), since unrelated exits no longer
// reach the socket. The watched children killed meanwhile are reported by
// the rescan.
func TestResyncAfterOverflowFiltered(t *testing.T) {
	requireConnector(t)
	recvGate, epollGate := newGate(), newGate()
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{
		Detector:   DetectConnector,
		ReadBuffer: 1, // the kernel minimum
		// Every Watch updates the filter itself: the connector goroutine,
		// which would otherwise do it, is stalled.
		hooks: &testHooks{beforeRecv: recvGate.wait, beforeEpoll: epollGate.wait, filterEvery: time.Nanosecond},
	}), recvGate, epollGate)
	recvGate.waitParked(t)
	epollGate.waitParked(t)

	burst := startSelf(t, "threads", true, "HB_THREADS=64")
	if got := burst.readLine(); got != "ready" {
		t.Fatalf("child said %q", got)
	}
	if err := w.Watch(100, burst.pid, burst.pidfd); err != nil {
		t.Fatal(err)
	}
	const n = 4
	kids, keys := watchSleepers(t, w.Watch, rec, n)
	if st := w.Stats(); st.FilterTGIDs != n+1 {
		t.Fatalf("FilterTGIDs = %d, want %d", st.FilterTGIDs, n+1)
	}
	// 64 thread exits of a watched process, into a buffer that holds a
	// handful of events; the process lives on.
	if _, err := burst.stdin.WriteString("stop\n"); err != nil {
		t.Fatal(err)
	}
	if got := burst.readLine(); got != "stopped" {
		t.Fatalf("child said %q", got)
	}
	for _, c := range kids {
		c.kill(unix.SIGKILL)
	}
	for _, c := range kids {
		c.waitDead()
	}
	recvGate.release()
	got := collect(t, w, keys...)
	for k, e := range got {
		if e.Source != SourceResync || e.HaveStatus {
			t.Errorf("key %d: %+v, want an exit from the resync without status", k, e)
		}
		if !rec.wasZombie(k) {
			t.Errorf("key %d: OnExit ran while the process was not an unreaped zombie", k)
		}
	}
	if st := w.Stats(); st.Resyncs == 0 {
		t.Errorf("Stats %+v: no resync", st)
	}
	epollGate.release()
	for _, c := range kids {
		if got := c.reap(); got != 137 {
			t.Errorf("waitid status %d", got)
		}
	}
	if burst.dead() {
		t.Error("the burst process died")
	}
	noExitQueued(t, w)
}

// BenchmarkFilterUpdate measures one update of the socket filter for 1000
// watched processes: compile, then attach in place of the previous program
// (SO_ATTACH_FILTER), on a proc connector socket when there is one, and on
// an AF_UNIX socket.
func BenchmarkFilterUpdate(b *testing.B) {
	for _, n := range []int{8, 100, 1000} {
		b.Run("attach-"+strconv.Itoa(n), func(b *testing.B) {
			prog, _ := compileExitFilter(largeSet(n))
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			for b.Loop() {
				if err := attachRaw(fd, prog); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	set := largeSet(1000)
	b.Run("unix", func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		for i := 0; b.Loop(); i++ {
			set[0] = uint32(i) // a new set each time
			prog, ok := compileExitFilter(set)
			if !ok {
				b.Fatal("not compiled")
			}
			if err := attachRaw(fd, prog); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("connector", func(b *testing.B) {
		requireConnector(b)
		s, err := dialProc(0, procEventExit)
		if err != nil {
			b.Fatal(err)
		}
		defer s.close()
		for i := 0; b.Loop(); i++ {
			set[0] = uint32(i)
			prog, ok := compileExitFilter(set)
			if !ok {
				b.Fatal("not compiled")
			}
			if err := s.conn.SetBPF(prog); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestFilterChildren: children watched with WatchChild pass the filter by
// their parent, so watching and reporting them makes no filter update;
// their own children (grandchildren here) stay out.
func TestFilterChildren(t *testing.T) {
	requireConnector(t)
	shBin, err := exec.LookPath("sh")
	if err != nil {
		t.Skipf("needs sh: %v", err)
	}
	trueBin, err := exec.LookPath("true")
	if err != nil {
		t.Skipf("needs true: %v", err)
	}
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectConnector}))

	const n = 20
	kids, keys := watchSleepers(t, w.WatchChild, rec, n)
	st := w.Stats()
	if st.FilterUpdates > 2 || st.FilterTGIDs != 0 {
		t.Fatalf("after %d WatchChild: %d filter updates, %d TGIDs; want at most 2 (the empty set, then the parent) and none",
			n, st.FilterUpdates, st.FilterTGIDs)
	}
	updates := st.FilterUpdates

	// Grandchildren: a shell's children. The shell itself is a child and
	// passes (one unmatched event at most).
	const unrelated = 100
	sh := startCmd(t, false, shBin, "-c", "i=0; while [ $i -lt "+strconv.Itoa(unrelated)+" ]; do "+trueBin+"; i=$((i+1)); done")
	if got := sh.reap(); got != 0 {
		t.Fatalf("shell loop exited %d", got)
	}

	for _, c := range kids {
		c.kill(unix.SIGKILL)
	}
	collect(t, w, keys...) // reported by the connector or the pidfd, whichever first
	for _, c := range kids {
		c.reap()
	}
	// Every child's exit event reaches the socket, and the shell's; none of
	// the grandchildren's.
	waitFor(t, "every child's event to reach the socket", func() bool { return w.Stats().Events >= n })
	st = w.Stats()
	t.Logf("%+v", st)
	if st.Events > n+1 {
		t.Errorf("%d exit events reached the socket; want %d (the children's) and the shell's at most", st.Events, n)
	}
	// Removing the last child drops the parent from the filter: at most
	// one update more, and only once due.
	if st.FilterUpdates > updates+1 {
		t.Errorf("%d filter updates while children came and went, want at most %d", st.FilterUpdates, updates+1)
	}
}
