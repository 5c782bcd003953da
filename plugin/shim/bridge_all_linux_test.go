package shim

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/bridge/bridgetest"
	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// trustedDir is a new root-owned 0755 directory (hb trusts nothing else).
func trustedDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: hb trusts only directories root owns")
	}
	d := t.TempDir()
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func serviceDir(t *testing.T, dir string, withRun bool) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if withRun {
		writeRun(t, dir)
	}
}

func writeRun(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte("#!/bin/sh\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// bridgeEvent waits for the EventBridge of name with reason.
func (h *harness) bridgeEvent(name, reason string) plugin.Event {
	h.t.Helper()
	for {
		ev := h.next(plugin.EventBridge, name)
		if ev.Reason == reason {
			return ev
		}
		h.t.Logf("bridge event %+v (waiting for %s)", ev, reason)
	}
}

func (h *harness) bridgedNames() []string {
	h.t.Helper()
	specs, err := h.s.Bridged(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, sp := range specs {
		out = append(out, sp.Manager+":"+sp.Name)
	}
	return out
}

// TestBridgeScanDir: without programs, every service directory of a
// runit (or s6) scan directory is bridged, as it is there at the start or
// comes later (mkdir then ./run, rename in, ln -s), and dropped when it
// goes (slot freed; the name gets its slot back when it returns). Names
// that are hbd's, untrusted directories, dot names and files are not
// bridged; a name two sources have goes to the first, and to the other
// once the first drops it. No manager runs: the slots read 0, flagged
// manager gone.
func TestBridgeScanDir(t *testing.T) {
	root := trustedDir(t)
	scan, store, scan2 := filepath.Join(root, "scan"), filepath.Join(root, "sv"), filepath.Join(root, "scan2")
	for _, d := range []string{scan, store, scan2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	serviceDir(t, filepath.Join(scan, "a"), true)
	serviceDir(t, filepath.Join(scan, "b"), false) // no ./run yet
	serviceDir(t, filepath.Join(scan, ".hidden"), true)
	serviceDir(t, filepath.Join(scan, "svc"), true) // hbd's name
	os.WriteFile(filepath.Join(scan, "notes"), nil, 0o644)

	h := newHarness(t, connector.DetectAuto, "")
	src := plugin.BridgeSpec{Manager: bridge.Runit, Dir: scan, All: true}
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src}, []string{"svc"}); err != nil {
		t.Fatal(err)
	}
	a := h.bridgeEvent("a", plugin.BridgeAdded)
	if a.Manager != bridge.Runit || a.Message != filepath.Join(scan, "a") {
		t.Fatalf("added %+v", a)
	}
	if g := h.next(plugin.EventManager, "a"); !strings.Contains(g.Message, "no supervise directory") {
		t.Fatalf("manager event %+v", g)
	}
	if sl := h.slot(a.Slot); sl.PID != 0 || sl.Flags != shm.SlotBridged|shm.SlotManagerGone || sl.Name != "a" {
		t.Fatalf("slot of a %+v", sl)
	}
	if ev := h.bridgeEvent("svc", plugin.BridgeSkipped); !strings.Contains(ev.Message, "hbd's services") {
		t.Fatalf("skipped %+v", ev)
	}
	if got := strings.Join(h.bridgedNames(), " "); got != "runit:a" {
		t.Fatalf("Bridged: %s, want runit:a", got)
	}

	// ./run written into a directory that was there without one.
	writeRun(t, filepath.Join(scan, "b"))
	h.bridgeEvent("b", plugin.BridgeAdded)
	// Renamed in, linked in.
	serviceDir(t, filepath.Join(store, "c"), true)
	serviceDir(t, filepath.Join(store, "d"), true)
	if err := os.Rename(filepath.Join(store, "c"), filepath.Join(scan, "c")); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("c", plugin.BridgeAdded)
	if err := os.Symlink(filepath.Join(store, "d"), filepath.Join(scan, "d")); err != nil {
		t.Fatal(err)
	}
	if d := h.bridgeEvent("d", plugin.BridgeAdded); d.Message != filepath.Join(scan, "d") {
		t.Fatalf("added %+v", d)
	}
	// Made in place, ./run last.
	serviceDir(t, filepath.Join(scan, "e"), false)
	writeRun(t, filepath.Join(scan, "e"))
	h.bridgeEvent("e", plugin.BridgeAdded)
	// A link to a directory others can write: never read.
	serviceDir(t, filepath.Join(store, "open"), true)
	os.Chmod(filepath.Join(store, "open"), 0o777)
	if err := os.Symlink(filepath.Join(store, "open"), filepath.Join(scan, "open")); err != nil {
		t.Fatal(err)
	}
	if ev := h.bridgeEvent("open", plugin.BridgeSkipped); !strings.Contains(ev.Message, "writable by group or others") {
		t.Fatalf("skipped %+v", ev)
	}
	// A directory others can write, made safe by chmod: its entry's
	// IN_ATTRIB has it looked at again.
	serviceDir(t, filepath.Join(store, "f"), true)
	os.Chmod(filepath.Join(store, "f"), 0o777)
	if err := os.Rename(filepath.Join(store, "f"), filepath.Join(scan, "f")); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("f", plugin.BridgeSkipped)
	os.Chmod(filepath.Join(scan, "f"), 0o755)
	h.bridgeEvent("f", plugin.BridgeAdded)
	if err := os.RemoveAll(filepath.Join(scan, "f")); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("f", plugin.BridgeDropped)
	if got := strings.Join(h.bridgedNames(), " "); got != "runit:a runit:b runit:c runit:d runit:e" {
		t.Fatalf("Bridged: %s", got)
	}

	// Removed: dropped, slot freed; back: the same slot.
	if err := os.RemoveAll(filepath.Join(scan, "a")); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("a", plugin.BridgeDropped)
	if _, err := h.s.w.Lookup("a"); err == nil {
		t.Fatal("the slot of a removed service directory is still allocated")
	}
	serviceDir(t, filepath.Join(scan, "a"), true)
	if again := h.bridgeEvent("a", plugin.BridgeAdded); again.Slot != a.Slot {
		t.Fatalf("a came back in slot %d, was %d", again.Slot, a.Slot)
	}
	if err := os.Remove(filepath.Join(scan, "d")); err != nil { // the link
		t.Fatal(err)
	}
	h.bridgeEvent("d", plugin.BridgeDropped)
	if err := os.Rename(filepath.Join(scan, "c"), filepath.Join(store, "c")); err != nil { // renamed out
		t.Fatal(err)
	}
	h.bridgeEvent("c", plugin.BridgeDropped)

	// A second source with a name the first has: skipped until the first
	// drops it.
	serviceDir(t, filepath.Join(scan2, "b"), true)
	src2 := plugin.BridgeSpec{Manager: bridge.S6, Dir: scan2, All: true}
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src, src2}, []string{"svc"}); err != nil {
		t.Fatal(err)
	}
	if ev := h.bridgeEvent("b", plugin.BridgeSkipped); ev.Manager != bridge.S6 || !strings.Contains(ev.Message, "bridged already, from runit "+filepath.Join(scan, "b")) {
		t.Fatalf("skipped %+v", ev)
	}
	if err := os.RemoveAll(filepath.Join(scan, "b")); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("b", plugin.BridgeDropped)
	if ev := h.bridgeEvent("b", plugin.BridgeAdded); ev.Manager != bridge.S6 {
		t.Fatalf("added %+v, want s6's b", ev)
	}

	// The reserved name freed by a reload: bridged.
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src, src2}, nil); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("svc", plugin.BridgeAdded)
	if got := strings.Join(h.bridgedNames(), " "); got != "runit:a s6:b runit:e runit:svc" {
		t.Fatalf("Bridged: %s", got)
	}

	// No more sources: every slot freed.
	if err := h.s.Bridge(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "e", "svc"} {
		if _, err := h.s.w.Lookup(n); err == nil {
			t.Errorf("slot of %s still allocated", n)
		}
	}
}

// TestBridgeScanDirMadeWhileLooking: a ./run made after the plugin looked
// for it in a new service directory but before it watched the directory
// for one, and a supervise/ made likewise, are not missed: the directory
// is looked at again once watched (neither has an event of its own).
func TestBridgeScanDirMadeWhileLooking(t *testing.T) {
	root := trustedDir(t)
	scan := filepath.Join(root, "scan")
	if err := os.Mkdir(scan, 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, connector.DetectAuto, "")
	src := plugin.BridgeSpec{Manager: bridge.Runit, Dir: scan, All: true}
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src}, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(scan, "x")
	made := map[string]bool{}
	b := h.s.br
	b.mu.Lock()
	b.missing = func(path string) { // the other side's step, in the gap
		switch path {
		case filepath.Join(dir, "run"):
			writeRun(t, dir)
		case filepath.Join(dir, "supervise"):
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Error(err)
			}
		default:
			return
		}
		made[path] = true
	}
	b.mu.Unlock()

	serviceDir(t, dir, false)
	h.bridgeEvent("x", plugin.BridgeAdded)
	if g := h.next(plugin.EventManager, "x"); strings.Contains(g.Message, "no supervise directory") {
		t.Fatalf("manager event %+v: supervise/ was made", g)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(made) != 2 {
		t.Fatalf("the hook made %v, want run and supervise", made)
	}
}

// TestBridgeScanDirManager: a program found in a scan directory gets its
// PID from its runsv, as a named one does.
func TestBridgeScanDirManager(t *testing.T) {
	m := bridgetest.Runit(t, "prog", bridgetest.RunScript("sleep 1000"))
	pid := m.WaitUp()
	h := newHarness(t, connector.DetectAuto, "")
	src := plugin.BridgeSpec{Manager: bridge.Runit, Dir: filepath.Dir(m.Dir), All: true}
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src}, nil); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("prog", plugin.BridgeAdded)
	ev := h.next(plugin.EventSpawn, "prog")
	if ev.PID != pid || ev.Manager != bridge.Runit {
		t.Fatalf("spawn %+v, want pid %d", ev, pid)
	}
	if sl := h.slot(ev.Slot); sl.PID != uint32(pid) || sl.Flags != shm.SlotBridged {
		t.Fatalf("slot %+v", sl)
	}
}

// listenerConn is the plugin's end of `hbd supervisord-listener`, played
// by the test.
type listenerConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialListener(t *testing.T, stateDir string) *listenerConn {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(stateDir, ListenerSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &listenerConn{t: t, c: c, r: bufio.NewReader(c)}
}

// send sends one line and waits for the plugin's "ok" (it answers once it
// has acted on it).
func (l *listenerConn) send(format string, args ...any) {
	l.t.Helper()
	if _, err := fmt.Fprintf(l.c, format+"\n", args...); err != nil {
		l.t.Fatal(err)
	}
	if ans, err := l.r.ReadString('\n'); err != nil || ans != "ok\n" {
		l.t.Fatalf("plugin answered %q, %v", ans, err)
	}
}

// TestBridgeSupervisordAll: without programs, every process supervisord
// has is bridged but hb's event listener (its command runs
// supervisord-listener); a program added later is bridged when the
// listener relays its group's addition or its first state, or says hello;
// one removed is dropped at its group's removal. Another event listener
// is bridged (nothing tells it from a program) until it says hello.
func TestBridgeSupervisordAll(t *testing.T) {
	m := bridgetest.Supervisord(t, "prog", "/bin/sleep 1000", `/bin/sh -c "exec sleep 1000" supervisord-listener`)
	first := m.WaitUp()
	dir := t.TempDir()
	h := openHarness(t, Options{ShmName: "t", ShmDir: dir, StateDir: dir, Slots: 16, Detector: connector.DetectAuto}, dir)
	src := plugin.BridgeSpec{Manager: bridge.Supervisord, URL: m.URL, All: true}
	if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{src}, nil); err != nil {
		t.Fatal(err)
	}
	h.bridgeEvent("prog", plugin.BridgeAdded)
	if ev := h.next(plugin.EventSpawn, "prog"); ev.PID != first || ev.Manager != bridge.Supervisord {
		t.Fatalf("spawn %+v, want pid %d", ev, first)
	}
	if _, err := h.s.w.Lookup("hb"); err == nil {
		t.Fatal("hb's event listener got a slot")
	}

	l := dialListener(t, dir)
	l.send("hello %s", m.URL)

	m.AddProgram("late", "/bin/sleep 1000")
	l.send("PROCESS_GROUP_ADDED groupname:late")
	h.bridgeEvent("late", plugin.BridgeAdded)
	pid := m.WaitProcess("late:late")
	// The state event that follows names its PID (or supervisord has it
	// running by the time getAllProcessInfo was read).
	l.send("PROCESS_STATE_RUNNING processname:late groupname:late from_state:STARTING pid:%d", pid)
	waitFor(t, "late's pid in its slot", func() bool {
		i, err := h.s.w.Lookup("late")
		return err == nil && h.slot(i).PID == uint32(pid)
	})

	m.AddProgram("late2", "/bin/sleep 1000")
	l.send("PROCESS_STATE_STARTING processname:late2 groupname:late2 from_state:STOPPED tries:0")
	h.bridgeEvent("late2", plugin.BridgeAdded)

	m.RemoveProgram("late")
	l.send("PROCESS_GROUP_REMOVED groupname:late")
	h.bridgeEvent("late", plugin.BridgeDropped)
	if _, err := h.s.w.Lookup("late"); err == nil {
		t.Fatal("the slot of a removed program is still allocated")
	}

	m.AddEventListener("other", "/bin/sleep 1000")
	l.send("PROCESS_GROUP_ADDED groupname:other")
	h.bridgeEvent("other", plugin.BridgeAdded)
	l2 := dialListener(t, dir)
	l2.send("hello %s self=other:other", m.URL)
	h.bridgeEvent("other", plugin.BridgeDropped)
	if got := strings.Join(h.bridgedNames(), " "); got != "supervisord:late2 supervisord:prog" {
		t.Fatalf("Bridged: %s", got)
	}
}
