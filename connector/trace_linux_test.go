package connector

import (
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inMap reports whether tgid is in the exit tracepoint's map.
func (t *exitTrace) inMap(tgid int) bool {
	k, v := uint32(tgid), uint32(0)
	a := bpfElemAttr{fd: uint32(t.watched), key: uint64(uintptr(unsafe.Pointer(&k))), value: uint64(uintptr(unsafe.Pointer(&v)))}
	_, err := bpfCall(1 /* BPF_MAP_LOOKUP_ELEM */, unsafe.Pointer(&a), unsafe.Sizeof(a))
	return err == nil
}

// TestTracepointReportsKill: a SIGKILLed child watched with WatchChild is
// reported by the exit tracepoint alone. Its pidfd is swapped for one of a
// process that stays alive, so no other detector can report it; OnExit
// runs while the process exits or is a zombie, never after its reaping,
// and with no status.
func TestTracepointReportsKill(t *testing.T) {
	requireTrace(t)
	for _, mode := range []string{"sleep", "threads"} {
		t.Run(mode, func(t *testing.T) {
			rec := newRecorder()
			w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint}))
			if !w.Traced() {
				t.Fatal("Traced() = false under DetectTracepoint")
			}
			if conn, _ := w.Active(); conn {
				t.Error("DetectTracepoint opened the proc connector")
			}
			var c *child
			if mode == "threads" {
				c = startSelf(t, "threads", true, "HB_THREADS=8")
				if got := c.readLine(); got != "ready" {
					t.Fatalf("child said %q", got)
				}
			} else {
				c = startSelf(t, "sleep", false)
			}
			decoy := startSelf(t, "sleep", false)
			rec.expect(1, c)
			if err := w.WatchChild(1, c.pid, decoy.pidfd); err != nil {
				t.Fatal(err)
			}
			if !w.tr.inMap(c.pid) {
				t.Fatal("WatchChild did not put the process in the tracepoint's map")
			}
			c.kill(unix.SIGKILL)
			e := collect(t, w, 1)[1]
			want := Exit{Key: 1, PID: c.pid, Status: -1, Source: SourceTracepoint, DetectedNs: e.DetectedNs}
			if e != want {
				t.Errorf("exit:\n got %+v\nwant %+v", e, want)
			}
			if !rec.wasUnreaped(1) {
				t.Error("OnExit ran when the process was neither exiting nor an unreaped zombie")
			}
			if w.tr.inMap(c.pid) {
				t.Error("the reported process is still in the tracepoint's map")
			}
			if got := c.reap(); got != 137 {
				t.Errorf("waitid status %d, want 137", got)
			}
			if st := w.Stats(); st.Traced < 1 || st.Exits != 1 {
				t.Errorf("stats %+v: want Traced >= 1, Exits 1", st)
			}
			decoy.kill(unix.SIGKILL)
			decoy.reap()
			noExitQueued(t, w)
		})
	}
}

// TestTracepointOnlyChildren: Watch (not a child) leaves a process out of
// the tracepoint's map: its exit comes from the pidfd, with the status the
// connector would give.
func TestTracepointOnlyChildren(t *testing.T) {
	requireTrace(t)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint}))
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.Watch(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	if w.tr.inMap(c.pid) {
		t.Error("Watch put a process in the tracepoint's map")
	}
	c.kill(unix.SIGKILL)
	if e := collect(t, w, 1)[1]; e.Source != SourcePidfd {
		t.Errorf("exit %+v, want one from the pidfd", e)
	}
	c.reap()
}

// TestTracepointOlderRecord: a tracepoint record from before a watch began
// is of an earlier process that had the same PID, and is ignored; a later
// one is reported.
func TestTracepointOlderRecord(t *testing.T) {
	requireTrace(t)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint}))
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	since := w.byPID[int32(c.pid)].since
	w.mu.Unlock()
	w.traced(int32(c.pid), since-1)
	noExitQueued(t, w)
	if n := rec.total(); n != 0 {
		t.Fatalf("a record older than the watch was reported (%d OnExit calls)", n)
	}
	w.traced(int32(c.pid), monotonicNs())
	if e := collect(t, w, 1)[1]; e.Source != SourceTracepoint {
		t.Errorf("exit %+v, want one from the tracepoint", e)
	}
	c.kill(unix.SIGKILL)
	c.reap()
}

// TestTracepointUnavailableError: TraceAvailable's error, if any, wraps
// ErrTraceUnavailable, and NewWatcher with DetectTracepoint returns it.
func TestTracepointUnavailableError(t *testing.T) {
	err := TraceAvailable()
	t.Logf("TraceAvailable() = %v (uid %d)", err, unix.Getuid())
	if err == nil {
		return
	}
	if !errors.Is(err, ErrTraceUnavailable) {
		t.Fatalf("TraceAvailable() = %v, not wrapping ErrTraceUnavailable", err)
	}
	if w, err := NewWatcher(Options{Detector: DetectTracepoint}); err == nil || !errors.Is(err, ErrTraceUnavailable) {
		if w != nil {
			w.Close()
		}
		t.Fatalf("NewWatcher(DetectTracepoint) = %v, want ErrTraceUnavailable", err)
	}
}

// TestTracepointChildrenSkipConnector: with both the exit tracepoint and the
// proc connector, the socket filter drops the connector events of traced
// children (the tracepoint reports them first): only the exit of a process
// watched with Watch reaches the socket.
func TestTracepointChildrenSkipConnector(t *testing.T) {
	requireTrace(t)
	requireConnector(t)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectAuto}))
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	c.kill(unix.SIGKILL)
	if e := collect(t, w, 1)[1]; e.Source != SourceTracepoint {
		t.Errorf("child's exit %+v, want one from the tracepoint", e)
	}
	c.reap()
	// A sentinel watched by PID: once its event is in, any event of the
	// child, sent before it, would be too.
	s := startSelf(t, "sleep", false)
	rec.expect(2, s)
	if err := w.Watch(2, s.pid, s.pidfd); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sentinel in the socket filter", func() bool { return w.Stats().FilterTGIDs == 1 })
	s.kill(unix.SIGKILL)
	collect(t, w, 2)
	waitFor(t, "the sentinel's exit event", func() bool { return w.Stats().Events >= 1 })
	s.reap()
	if st := w.Stats(); st.Events != 1 {
		t.Errorf("stats %+v: want exactly 1 exit event (the sentinel's)", st)
	}
}
