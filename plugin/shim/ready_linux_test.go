package shim

import (
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// notifyChild is the "notify" helper: it sends STATUS=loading to
// $NOTIFY_SOCKET, waits for $HB_TEST_GO to exist, then sends READY=1 with
// STATUS=serving and blocks.
func notifyChild() int {
	send := func(msg string) bool {
		c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		return err == nil
	}
	if !send("STATUS=loading") {
		return 3
	}
	for {
		if _, err := os.Stat(os.Getenv("HB_TEST_GO")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !send("READY=1\nSTATUS=serving") {
		return 3
	}
	blockForever()
	return 0
}

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func readyHarness(t *testing.T) (*harness, *lockedBuffer) {
	dir := t.TempDir()
	logs := &lockedBuffer{}
	return openHarness(t, Options{ShmName: "t", ShmDir: dir, StateDir: dir, Slots: 16, Detector: connector.DetectPidfd,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}, dir), logs
}

// TestReadyNotify: a service with ready "notify" runs with PID word 0 and
// state starting until it sends READY=1; a READY=1 from another process is
// dropped; STATUS= texts are reported; then the PID is published.
func TestReadyNotify(t *testing.T) {
	h, logs := readyHarness(t)
	goFile := tempPath(t, "go")
	spec := h.childSpec("nt", "notify", "HB_TEST_GO="+goFile)
	spec.Ready = plugin.ReadyNotify
	res := h.spawn(spec)
	if st := h.next(plugin.EventStatus, "nt"); st.Message != "loading" || st.PID != res.PID {
		t.Fatalf("status event %+v; want loading from pid %d", st, res.PID)
	}
	if sl := h.slot(res.Slot); sl.PID != 0 || sl.State != shm.StateStarting || sl.Generation != res.Generation {
		t.Fatalf("not yet ready: slot %+v; want pid word 0, starting, generation %d", sl, res.Generation)
	}
	if gone(res.PID) {
		t.Fatalf("pid %d is not running", res.PID)
	}

	// Another process (this test) claims readiness: dropped.
	c, err := net.Dial("unixgram", h.s.svcs["nt"].notify.path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("READY=1")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, "the forged READY=1 dropped", func() bool { return strings.Contains(logs.String(), "message dropped") })
	if sl := h.slot(res.Slot); sl.PID != 0 {
		t.Fatalf("a READY=1 from another process published pid %d", sl.PID)
	}

	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ev := h.next(plugin.EventReady, "nt")
	if ev.PID != res.PID || ev.Message != "serving" {
		t.Fatalf("ready event %+v; want pid %d, status serving", ev, res.PID)
	}
	if sl := h.slot(res.Slot); int(sl.PID) != res.PID {
		t.Fatalf("ready: slot pid %d, want %d", sl.PID, res.PID)
	}
}

// TestReadyTimeout: a service that never says READY=1 is killed after
// ready_timeout, with exit Reason ready_timeout, and is not respawned by
// the plugin (a failed start is the host's to judge).
func TestReadyTimeout(t *testing.T) {
	h, _ := readyHarness(t)
	spec := h.childSpec("late", "sleep")
	spec.Ready = plugin.ReadyNotify
	spec.ReadyTimeout = 200 * time.Millisecond
	spec.Respawn = plugin.Respawn{Enabled: true}
	res := h.spawn(spec)
	ex := h.next(plugin.EventExit, "late")
	if ex.PID != res.PID || ex.Reason != ReadyTimeoutReason || ex.Respawned || ex.Status != 128+9 {
		t.Fatalf("exit %+v; want pid %d killed (137), reason ready_timeout, not respawned", ex, res.PID)
	}
	if sl := h.slot(res.Slot); sl.PID != 0 || sl.State != shm.StateExited {
		t.Fatalf("slot %+v; want pid 0, exited", sl)
	}
}

// TestReadyFD: with ready "fd:3" (s6's notification-fd) the PID word stays
// 0 until the service writes a newline on its descriptor 3; the beat area
// then comes on 4.
func TestReadyFD(t *testing.T) {
	h, _ := readyHarness(t)
	goFile := tempPath(t, "go")
	out := tempPath(t, "beatfd")
	spec := plugin.Spec{Name: "s6", UID: -1, GID: -1, Stdout: "null", Stderr: "null",
		Env: []string{"PATH=/usr/bin:/bin"}, Ready: "fd:3", Watchdog: time.Hour,
		Command: []string{"/bin/sh", "-c", `echo "$HB_BEAT_FD" > "$2"; while [ ! -e "$1" ]; do sleep 0.01; done; echo >&3; exec sleep 1000`,
			"sh", goFile, out}}
	res := h.spawn(spec)
	waitFor(t, "the child's report", func() bool { b, _ := os.ReadFile(out); return len(b) > 0 })
	if got := strings.TrimSpace(readFile(t, out)); got != "4" {
		t.Errorf("HB_BEAT_FD=%q beside ready fd:3, want 4", got)
	}
	if sl := h.slot(res.Slot); sl.PID != 0 || sl.State != shm.StateStarting {
		t.Fatalf("not yet ready: slot %+v; want pid word 0, starting", sl)
	}
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if ev := h.next(plugin.EventReady, "s6"); ev.PID != res.PID {
		t.Fatalf("ready event %+v; want pid %d", ev, res.PID)
	}
	if sl := h.slot(res.Slot); int(sl.PID) != res.PID {
		t.Fatalf("ready: slot pid %d, want %d", sl.PID, res.PID)
	}
}
