package connector

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector/connectortest"
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
			c := startKillable(t, mode)
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
			want := Exit{Key: 1, PID: c.pid, Status: -1, Source: SourceTracepoint, DetectedNs: e.DetectedNs, KilledNs: e.KilledNs}
			if e != want {
				t.Errorf("exit:\n got %+v\nwant %+v", e, want)
			}
			if ok, _ := w.KillTraced(); ok && (e.KilledNs == 0 || e.KilledNs > e.DetectedNs) {
				t.Errorf("exit %+v: the kill program runs, want the kill's stamp before the exit's", e)
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

// TestTracepointWatchTraced: WatchTraced puts a process that is not a
// child (a bridged program) in the tracepoint's map, so its death is
// reported as early as a child's, and takes it out once reported.
func TestTracepointWatchTraced(t *testing.T) {
	requireTrace(t)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint}))
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchTraced(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	if !w.tr.inMap(c.pid) {
		t.Error("WatchTraced left a process out of the tracepoint's map")
	}
	c.kill(unix.SIGKILL)
	if e := collect(t, w, 1)[1]; e.Source != SourceTracepoint {
		t.Errorf("exit %+v, want one from the tracepoint", e)
	}
	c.reap()
	if w.tr.inMap(c.pid) {
		t.Error("a reported watch left its pid in the tracepoint's map")
	}
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
	since := w.byPID.get(int32(c.pid)).since
	w.mu.Unlock()
	w.traced(int32(c.pid), recExit, since-1)
	noExitQueued(t, w)
	if n := rec.total(); n != 0 {
		t.Fatalf("a record older than the watch was reported (%d OnExit calls)", n)
	}
	w.traced(int32(c.pid), recExit, monotonicNs())
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
	// child, sent before it, would be too. It has one thread, so one exit
	// event: the test binary has several, whose events pass the filter as
	// their process's and arrive one by one.
	s := startCmd(t, false, "sleep", "1000")
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

// fakeRing is an exitTrace whose ring buffer is plain memory laid out as
// the kernel maps it: a consumer page, then a producer page followed by the
// data area mapped twice (here: written twice).
type fakeRing struct {
	t    *exitTrace
	prod uint64
}

func newFakeRing() *fakeRing {
	ps := 4096
	t := &exitTrace{pageSize: ps, consumerPage: make([]byte, ps), dataPages: make([]byte, ps+2*traceRingSize)}
	return &fakeRing{t: t}
}

// put writes one record at the producer position: hdr flags (busy,
// discard) plus a 16-byte body {tgid, ns}, and publishes it unless busy.
func (f *fakeRing) put(tgid uint32, ns uint64, flags uint32) {
	data := f.t.dataPages[f.t.pageSize:]
	off := f.prod & (traceRingSize - 1)
	var rec [24]byte
	*(*uint32)(unsafe.Pointer(&rec[0])) = 16 | flags
	*(*uint32)(unsafe.Pointer(&rec[8])) = tgid
	*(*uint64)(unsafe.Pointer(&rec[16])) = ns
	for i, b := range rec {
		data[off+uint64(i)] = b
		data[(off+uint64(i)+traceRingSize)%(2*traceRingSize)] = b // the second mapping
	}
	f.prod += 24
	*(*uint64)(unsafe.Pointer(&f.t.dataPages[0])) = f.prod
}

func (f *fakeRing) consumer() uint64 { return *(*uint64)(unsafe.Pointer(&f.t.consumerPage[0])) }

func (f *fakeRing) drain() (got []uint32) {
	f.t.drain(func(tgid int32, _ uint32, ns uint64) {
		if ns != uint64(tgid)*10 {
			panic("record body read wrong")
		}
		got = append(got, uint32(tgid))
	})
	return got
}

// TestTraceDrain: the ring buffer consumer reads committed records in
// order, across the end of the data area, skips discarded ones, stops at a
// record still being written, and advances the consumer position past
// exactly what it read.
func TestTraceDrain(t *testing.T) {
	f := newFakeRing()
	if got := f.drain(); len(got) != 0 {
		t.Fatalf("empty ring gave %v", got)
	}
	f.put(1, 10, 0)
	f.put(2, 20, unix.BPF_RINGBUF_DISCARD_BIT)
	f.put(3, 30, 0)
	if got := f.drain(); len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("got %v, want [1 3]", got)
	}
	if f.consumer() != 72 {
		t.Fatalf("consumer at %d, want 72", f.consumer())
	}
	// Fill up to just before the end of the data area, then wrap.
	var want []uint32
	for i := uint32(4); f.prod+24 <= traceRingSize+24*3; i++ {
		f.put(i, uint64(i)*10, 0)
		want = append(want, i)
		if len(want) == 1000 { // drain now and then, as the epoll loop does
			if got := f.drain(); len(got) != len(want) {
				t.Fatalf("drained %d records, want %d", len(got), len(want))
			}
			want = want[:0]
		}
	}
	if got := f.drain(); len(got) != len(want) || got[len(got)-1] != want[len(want)-1] {
		t.Fatalf("across the wrap: got %d records ending %v, want %d ending %d", len(got), got[len(got)-1:], len(want), want[len(want)-1])
	}
	if f.consumer() != f.prod {
		t.Fatalf("consumer %d, producer %d", f.consumer(), f.prod)
	}
	// A busy record stops the drain; the records after it wait for it.
	busyAt := f.prod
	f.put(7000, 70000, unix.BPF_RINGBUF_BUSY_BIT)
	f.put(7001, 70010, 0)
	if got := f.drain(); len(got) != 0 || f.consumer() != busyAt {
		t.Fatalf("past a busy record: got %v, consumer %d, want none and %d", got, f.consumer(), busyAt)
	}
	// Its commit clears the busy bit.
	data := f.t.dataPages[f.t.pageSize:]
	*(*uint32)(unsafe.Pointer(&data[busyAt&(traceRingSize-1)])) = 16
	if got := f.drain(); len(got) != 2 || got[0] != 7000 || got[1] != 7001 {
		t.Fatalf("after the commit: got %v, want [7000 7001]", got)
	}
}

// TestTraceDrainReleasesEachRecord: each record is released before the
// next header is read. The kernel wakes the reader at a commit only if the
// consumer position is then that record's, so a record found still being
// written behind records not yet released would be committed without a
// wake-up and wait in the ring.
func TestTraceDrainReleasesEachRecord(t *testing.T) {
	f := newFakeRing()
	var at []uint64
	for i := uint32(1); i <= 4; i++ {
		at = append(at, f.prod)
		f.put(i, uint64(i)*10, 0)
	}
	var seen []uint64
	f.t.drain(func(int32, uint32, uint64) { seen = append(seen, f.consumer()) })
	if !slices.Equal(seen, at) {
		t.Fatalf("consumer position when each record was read: %v; want each record's own, %v", seen, at)
	}
	// A record still being written behind a released one: the consumer
	// position is the busy record's when the drain stops at it.
	busyAt := f.prod + 24
	f.put(5, 50, 0)
	f.put(6, 60, unix.BPF_RINGBUF_BUSY_BIT)
	if got := f.drain(); len(got) != 1 || f.consumer() != busyAt {
		t.Fatalf("got %v, consumer %d; want [5] and %d", got, f.consumer(), busyAt)
	}
}

// fifoThreads lists the threads of this process that run SCHED_FIFO, with
// their priorities (fields 40 and 41 of /proc/self/task/TID/stat).
func fifoThreads(t testing.TB) map[int]int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, d := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + d.Name() + "/stat")
		if err != nil {
			continue // ended meanwhile
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		// f[0] is field 3; rt_priority is field 40, policy field 41.
		if len(f) > 38 && f[38] == "1" {
			tid, _ := strconv.Atoi(d.Name())
			out[tid], _ = strconv.Atoi(f[37])
		}
	}
	return out
}

// TestTracepointReaderPriority: with Options.Priority the exit tracepoint's
// reader runs on a thread of its own at that SCHED_FIFO priority, and the
// thread ends with the Watcher; without it no thread of the process is
// real-time.
func TestTracepointReaderPriority(t *testing.T) {
	requireTrace(t)
	if n := len(fifoThreads(t)); n != 0 {
		t.Fatalf("%d SCHED_FIFO threads before the test", n)
	}
	plain := newWatcher(t, Options{Detector: DetectTracepoint})
	w := newWatcher(t, Options{Detector: DetectTracepoint, Priority: 3})
	waitFor(t, "the reader to run SCHED_FIFO", func() bool { return w.Stats().RealTime })
	if plain.Stats().RealTime {
		t.Error("a Watcher without Priority reports a real-time reader")
	}
	fifo := fifoThreads(t)
	if len(fifo) != 1 {
		t.Fatalf("SCHED_FIFO threads %v; want exactly one", fifo)
	}
	for tid, prio := range fifo {
		if prio != 3 {
			t.Errorf("thread %d: priority %d; want 3", tid, prio)
		}
	}
	// It still reports exits.
	c := startSelf(t, "sleep", false)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	c.kill(unix.SIGKILL)
	collect(t, w, 1)
	c.reap()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the real-time thread to end with the Watcher", func() bool { return len(fifoThreads(t)) == 0 })
}

// TestTracepointStarvedReader: with Options.Priority the pidfds are waited
// on by a goroutine of their own, so an exit is still reported while the
// real-time reader cannot run (a busy real-time thread of higher priority
// holds its CPU; here its loop is stalled), through the pidfd, exactly once.
// The reader, let go afterwards, reports nothing more.
func TestTracepointStarvedReader(t *testing.T) {
	requireTrace(t)
	reader := newGate()
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint, Priority: 1,
		hooks: &testHooks{beforeEpoll: reader.wait}}), reader)
	reader.waitParked(t)
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	c.kill(unix.SIGKILL)
	e := collect(t, w, 1)[1]
	if e.Source != SourcePidfd {
		t.Errorf("exit %+v: source %v, want pidfd (the reader is stalled)", e, e.Source)
	}
	reader.release()
	waitFor(t, "the reader to drain the tracepoint's record", func() bool { return w.Stats().Traced >= 1 })
	c.reap()
	noExitQueued(t, w)
	if n := rec.count(1); n != 1 {
		t.Errorf("OnExit ran %d times; want 1", n)
	}
	if st := w.Stats(); st.Exits != 1 {
		t.Errorf("stats %+v: want Exits 1", st)
	}
}

// killWatcher is a Watcher with the exit tracepoint whose OnKill calls go
// to kills; it skips where the kill program does not run.
func killWatcher(t *testing.T) (*Watcher, *recorder, chan Kill) {
	t.Helper()
	requireTrace(t)
	kills := make(chan Kill, 4)
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint, OnKill: func(k Kill) { kills <- k }}))
	if ok, err := w.KillTraced(); !ok {
		t.Skipf("the kill program does not run here: %v", err)
	}
	return w, rec, kills
}

// TestTracepointKillBeforeExit: a SIGKILL to a watched child is reported
// (OnKill) when the kernel delivers it, before the child runs at all: the
// child is frozen, so it has not started to exit. The watch stays armed;
// the exit follows once the child is thawed, carrying the kill's stamp. A
// SIGTERM, fatal as it may be, is not reported as a kill.
func TestTracepointKillBeforeExit(t *testing.T) {
	w, rec, kills := killWatcher(t)
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	thaw := connectortest.FrozenV1(t, c.pid)
	c.kill(unix.SIGKILL)
	var k Kill
	select {
	case k = <-kills:
	case <-time.After(waitLimit):
		t.Fatal("no OnKill for a SIGKILL to a watched child")
	}
	if k.Key != 1 || k.PID != c.pid || k.DetectedNs == 0 {
		t.Errorf("kill %+v, want key 1, pid %d, a stamp", k, c.pid)
	}
	if exiting(c.pid) {
		t.Error("the frozen child has started to exit: the kill was not seen before the exit")
	}
	noExitQueued(t, w)
	thaw()
	e := collect(t, w, 1)[1]
	if e.KilledNs != k.DetectedNs || e.DetectedNs < e.KilledNs {
		t.Errorf("exit %+v: want KilledNs %d, not after DetectedNs", e, k.DetectedNs)
	}
	if got := c.reap(); got != 137 {
		t.Errorf("waitid status %d, want 137", got)
	}
	if st := w.Stats(); st.Kills != 1 {
		t.Errorf("stats %+v: want Kills 1", st)
	}

	term := startSelf(t, "sleep", false)
	rec.expect(2, term)
	if err := w.WatchChild(2, term.pid, term.pidfd); err != nil {
		t.Fatal(err)
	}
	term.kill(unix.SIGTERM)
	if e := collect(t, w, 2)[2]; e.KilledNs != 0 {
		t.Errorf("a SIGTERM's exit %+v carries a kill stamp", e)
	}
	term.reap()
	select {
	case k := <-kills:
		t.Errorf("OnKill %+v for a SIGTERM", k)
	default:
	}
}

// TestTracepointKillRecords: the kill records' rules, fed to the reader
// directly. The first kill of an armed watch calls OnKill, once (a second
// kill does not), Killed says so, and the exit carries its stamp; a kill
// record read after the exit was reported calls nothing.
func TestTracepointKillRecords(t *testing.T) {
	requireTrace(t)
	var kills []Kill
	rec := newRecorder()
	w := newWatcher(t, rec.options(Options{Detector: DetectTracepoint, OnKill: func(k Kill) { kills = append(kills, k) }}))
	// The records below are made up. The processes get no signal until
	// the end, so the programs write none of their own meanwhile.
	c := startSelf(t, "sleep", false)
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	w.traced(int32(c.pid), recKill, monotonicNs())
	w.traced(int32(c.pid), recKill, monotonicNs())
	if len(kills) != 1 || kills[0].Key != 1 || kills[0].PID != c.pid {
		t.Fatalf("OnKill calls %+v; want one, for key 1", kills)
	}
	if !w.Killed(1) {
		t.Error("Killed(1) = false after a kill record")
	}
	noExitQueued(t, w)
	w.traced(int32(c.pid), recExit, monotonicNs())
	if e := collect(t, w, 1)[1]; e.KilledNs != kills[0].DetectedNs || e.Source != SourceTracepoint {
		t.Errorf("exit %+v; want the tracepoint's, with the kill's stamp %d", e, kills[0].DetectedNs)
	}
	if w.Killed(1) {
		t.Error("Killed(1) = true after the exit was reported")
	}

	d := startSelf(t, "sleep", false)
	rec.expect(2, d)
	if err := w.WatchChild(2, d.pid, d.pidfd); err != nil {
		t.Fatal(err)
	}
	w.traced(int32(d.pid), recExit, monotonicNs())
	if e := collect(t, w, 2)[2]; e.KilledNs != 0 {
		t.Errorf("exit %+v carries a kill stamp without a kill", e)
	}
	w.mu.Lock()
	stale := &watch{key: 2, pid: int32(d.pid)} // as if the record raced the removal
	stale.traced.Store(true)
	stale.state.Store(stateFired)
	w.byPID.set(stale)
	w.mu.Unlock()
	w.traced(int32(d.pid), recKill, monotonicNs())
	if len(kills) != 1 {
		t.Errorf("OnKill called for a watch whose exit was reported: %+v", kills)
	}
	w.mu.Lock()
	w.byPID.del(stale)
	w.mu.Unlock()
	for _, p := range []*child{c, d} {
		p.kill(unix.SIGKILL)
		p.reap()
	}
}

// TestTracepointKillOfAThread: a SIGKILL sent to one live thread (tgkill)
// kills the whole process, and is reported as a kill of it.
func TestTracepointKillOfAThread(t *testing.T) {
	w, rec, kills := killWatcher(t)
	c := startKillable(t, "threads")
	rec.expect(1, c)
	if err := w.WatchChild(1, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(c.pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	tid := 0
	for _, e := range tasks {
		if n, _ := strconv.Atoi(e.Name()); n != c.pid && n > 0 {
			tid = n
		}
	}
	if tid == 0 {
		t.Fatalf("no thread but the leader in %v", tasks)
	}
	if err := unix.Tgkill(c.pid, tid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-kills:
		if k.PID != c.pid {
			t.Errorf("kill %+v, want pid %d", k, c.pid)
		}
	case <-time.After(waitLimit):
		t.Fatal("no OnKill for a SIGKILL to one of the process's threads")
	}
	if e := collect(t, w, 1)[1]; e.KilledNs == 0 {
		t.Errorf("exit %+v without the kill's stamp", e)
	}
	if got := c.reap(); got != 137 {
		t.Errorf("waitid status %d, want 137", got)
	}
}

// TestTracepointReaderSpareProc: with ReserveProcs, the real-time reader
// reports a SIGKILL while as many Ps as the runtime's default are held by
// goroutines that cannot give them up (here: blocked in raw system calls,
// as a thread preempted by the kernel holds its P). Without spare Ps the
// reader, woken at once, would wait for one of them.
func TestTracepointReaderSpareProc(t *testing.T) {
	requireTrace(t)
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment: ReserveProcs keeps it")
	}
	// No collection (its stop-the-world would wait for the holders) and no
	// GOMAXPROCS change while they hold their Ps.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	held := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(held)
	if n := ReserveProcs(); n != held+SpareProcs {
		t.Fatalf("ReserveProcs: %d; want %d", n, held+SpareProcs)
	}
	// The death's first report, the SIGKILL's or the exit's (either stores
	// the 0 in the plugin).
	var killedNs atomic.Uint64
	w := newWatcher(t, Options{Detector: DetectTracepoint, Priority: 1,
		OnKill: func(Kill) { killedNs.CompareAndSwap(0, monotonicNs()) },
		OnExit: func(Exit) { killedNs.CompareAndSwap(0, monotonicNs()) }})
	waitFor(t, "the reader to run SCHED_FIFO", func() bool { return w.Stats().RealTime })

	// The holders' release comes from another process, 3 s on: nothing in
	// this one may need a P for it.
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	release := exec.Command("sh", "-c", fmt.Sprintf("sleep 3; head -c %d /dev/zero", held))
	release.Stdout = wr
	// The watched child kills itself 1 s on, once the holders hold.
	victim := exec.Command("sh", "-c", "sleep 1; kill -KILL $$")
	if err := release.Start(); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	defer release.Wait()
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer victim.Wait()
	pidfd, err := unix.PidfdOpen(victim.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	if err := w.WatchChild(1, victim.Process.Pid, pidfd); err != nil {
		t.Fatal(err)
	}
	var (
		wg         sync.WaitGroup
		releasedNs atomic.Uint64
	)
	for range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			_, _, _ = unix.RawSyscall(unix.SYS_READ, r.Fd(), uintptr(unsafe.Pointer(&b[0])), 1)
			releasedNs.CompareAndSwap(0, monotonicNs())
		}()
	}
	wg.Wait()
	k := killedNs.Load()
	if k == 0 {
		waitFor(t, "the death's report", func() bool { return killedNs.Load() != 0 })
		k = killedNs.Load()
	}
	if rel := releasedNs.Load(); k >= rel {
		t.Fatalf("the death was reported %v after the %d Ps were given back; want before", time.Duration(k-rel), held)
	}
	collect(t, w, 1)
}

// TestTracepointReaderTakesNoLock: the reader finds a record's watch
// without the Watcher's mutex, so a SIGKILL is reported while another
// goroutine holds it (a thread preempted in Watch or Unwatch would
// otherwise hold up the store of 0 for as long).
func TestTracepointReaderTakesNoLock(t *testing.T) {
	requireTrace(t)
	kills := make(chan Kill, 1)
	w := newWatcher(t, Options{Detector: DetectTracepoint, OnKill: func(k Kill) { kills <- k }})
	c := startSelf(t, "sleep", false)
	if err := w.WatchChild(7, c.pid, c.pidfd); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	c.kill(unix.SIGKILL)
	var got Kill
	select {
	case got = <-kills:
	case <-time.After(10 * time.Second):
	}
	w.mu.Unlock()
	if got.Key != 7 {
		t.Fatalf("no SIGKILL reported within 10 s while the Watcher's mutex was held (got %+v)", got)
	}
	collect(t, w, 7)
	c.reap()
}
