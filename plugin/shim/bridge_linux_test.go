package shim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/bridge/bridgetest"
	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TestBridgeDir: a program runsv (or s6-supervise) runs gets its PID in a
// slot flagged bridged; kill -9 → the slot reads 0 (the exit detectors,
// not the status file) and then holds the manager's replacement; the
// manager killed → 0 and flagged gone; started again → the new PID.
func TestBridgeDir(t *testing.T) {
	for _, kind := range []string{bridge.Runit, bridge.S6} {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, connector.DetectAuto, "")
			var m *bridgetest.Manager
			if kind == bridge.Runit {
				m = bridgetest.Runit(t, "prog", bridgetest.RunScript("sleep 1000"))
			} else {
				m = bridgetest.S6(t, "prog", bridgetest.RunScript("sleep 1000"))
			}
			first := m.WaitUp()
			spec := plugin.BridgeSpec{Name: "prog", Manager: kind, Dir: m.Dir}
			if err := h.s.Bridge(context.Background(), []plugin.BridgeSpec{spec}, nil); err != nil {
				t.Fatal(err)
			}
			ev := h.next(plugin.EventSpawn, "prog")
			if ev.PID != first || ev.Manager != kind || !ev.Adopted {
				t.Fatalf("spawn event %+v, want pid %d from %s", ev, first, kind)
			}
			sl := h.slot(ev.Slot)
			if sl.PID != uint32(first) || sl.Flags&shm.SlotBridged == 0 || sl.State != shm.StateRunning {
				t.Fatalf("slot %+v", sl)
			}
			if st, _ := readProcStat(first); sl.StartTime != st.StartTime {
				t.Fatalf("slot start time %d, process %d", sl.StartTime, st.StartTime)
			}

			// kill -9: 0 first, then the manager's replacement.
			if err := unix.Kill(first, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			ex := h.next(plugin.EventExit, "prog")
			if ex.PID != first || ex.Manager != kind {
				t.Fatalf("exit event %+v", ex)
			}
			t.Logf("exit seen by %s, status %d", ex.Source, ex.Status)
			if kernelAtLeast(6, 15) && ex.Status != 137 {
				// The connector's status, or PIDFD_INFO_EXIT once the
				// manager has reaped it.
				t.Errorf("exit status %d, want 137 (SIGKILL)", ex.Status)
			}
			if p := h.slot(ev.Slot).PID; p == uint32(first) {
				t.Fatalf("slot still names the dead pid %d", first)
			}
			re := h.next(plugin.EventSpawn, "prog")
			if re.PID == first || re.PID == 0 || re.Generation <= ev.Generation {
				t.Fatalf("replacement %+v after %+v", re, ev)
			}
			if got, _ := m.ProgramPID(); got != re.PID {
				t.Fatalf("manager says pid %d, hb published %d", got, re.PID)
			}
			if h.slot(re.Slot).PID != uint32(re.PID) {
				t.Fatalf("slot %+v, want pid %d", h.slot(re.Slot), re.PID)
			}

			// Spawn and Stop are the manager's.
			if _, err := h.s.Spawn(context.Background(), plugin.Spec{Name: "prog", Command: []string{"/bin/true"}}); err == nil {
				t.Fatal("Spawn of a bridged program was accepted")
			}
			if err := h.s.Stop(context.Background(), "prog", unix.SIGTERM, 0); err == nil {
				t.Fatal("Stop of a bridged program was accepted")
			}

			// The manager killed: 0 and flagged; back: the new PID.
			m.Kill()
			g := h.next(plugin.EventManager, "prog")
			if g.Message == "" {
				t.Fatalf("manager event %+v: want why", g)
			}
			sl = h.slot(re.Slot)
			if sl.PID != 0 || sl.Flags&shm.SlotManagerGone == 0 {
				t.Fatalf("slot after the manager's death %+v", sl)
			}
			m.Start()
			back := h.next(plugin.EventManager, "prog")
			if back.Message != "" {
				t.Fatalf("manager back %+v", back)
			}
			again := h.next(plugin.EventSpawn, "prog")
			if got := m.WaitUp(); got != again.PID || again.PID == re.PID {
				t.Fatalf("after the manager's restart: manager says %d, hb published %+v (before %d)", got, again, re.PID)
			}
			sl = h.slot(again.Slot)
			if sl.PID != uint32(again.PID) || sl.Flags != shm.SlotBridged {
				t.Fatalf("slot %+v", sl)
			}
			// Dropped from the set: no longer watched, slot freed.
			m.Close()
			waitFor(t, "the slot to read 0", func() bool { return h.slot(again.Slot).PID == 0 })
			if err := h.s.Bridge(context.Background(), nil, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := h.s.w.Lookup("prog"); err == nil {
				t.Fatal("the slot of a program no longer bridged is still allocated")
			}
		})
	}
}

// TestBridgeAcrossPluginRestart: a new plugin adopts a bridged slot as it
// is (same PID, still bridged, not one of its process groups), sees its
// program's death, and frees the slot when the set no longer has it.
func TestBridgeAcrossPluginRestart(t *testing.T) {
	m := bridgetest.Runit(t, "prog", bridgetest.RunScript("sleep 1000"))
	pid := m.WaitUp()
	hA := newHarness(t, connector.DetectAuto, "")
	if err := hA.s.Bridge(context.Background(), []plugin.BridgeSpec{{Name: "prog", Manager: bridge.Runit, Dir: m.Dir}}, nil); err != nil {
		t.Fatal(err)
	}
	hA.next(plugin.EventSpawn, "prog")
	hA.close()

	hB := newHarness(t, connector.DetectAuto, hA.dir)
	ev := hB.next(plugin.EventAdopt, "prog")
	sl := hB.slot(ev.Slot)
	if ev.PID != pid || sl.PID != uint32(pid) || sl.Flags != shm.SlotBridged {
		t.Fatalf("adopted %+v, slot %+v; want pid %d, flags bridged only", ev, sl, pid)
	}
	hB.s.mu.Lock()
	_, grouped := hB.s.groups[pid]
	hB.s.mu.Unlock()
	if grouped {
		t.Fatal("an adopted bridged program is one of the plugin's process groups (a clean shutdown would signal it)")
	}
	if err := hB.s.Bridge(context.Background(), []plugin.BridgeSpec{{Name: "prog", Manager: bridge.Runit, Dir: m.Dir}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ex := hB.next(plugin.EventExit, "prog"); ex.PID != pid || ex.Manager != bridge.Runit {
		t.Fatalf("exit %+v", ex)
	}
	next := hB.next(plugin.EventSpawn, "prog")
	if err := hB.s.Bridge(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := hB.s.w.Lookup("prog"); err == nil {
		t.Fatal("a bridged slot the set no longer has is still allocated")
	}
	if gone(next.PID) {
		t.Fatalf("dropping the bridge touched runsv's program %d", next.PID)
	}
}

// TestBridgeCallDuringAdoptedExit: a plugin that adopted a bridged slot
// at its start learns the slot's manager from hbd's first Bridge call,
// which may come while the adopted program's exit is being finished (the
// exit path reads the manager to know how to get the status). Under -race
// this failed while the manager was a plain field.
func TestBridgeCallDuringAdoptedExit(t *testing.T) {
	m := bridgetest.Runit(t, "prog", bridgetest.RunScript("sleep 1000"))
	pid := m.WaitUp()
	spec := []plugin.BridgeSpec{{Name: "prog", Manager: bridge.Runit, Dir: m.Dir}}
	hA := newHarness(t, connector.DetectAuto, "")
	if err := hA.s.Bridge(context.Background(), spec, nil); err != nil {
		t.Fatal(err)
	}
	hA.next(plugin.EventSpawn, "prog")
	hA.close()

	hB := newHarness(t, connector.DetectAuto, hA.dir)
	ev := hB.next(plugin.EventAdopt, "prog")
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); hB.slot(ev.Slot).PID != 0; time.Sleep(10 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatalf("slot %+v still names the killed pid %d", hB.slot(ev.Slot), pid)
		}
	}
	// The exit path runs now: the call lands in it.
	if err := hB.s.Bridge(context.Background(), spec, nil); err != nil {
		t.Fatal(err)
	}
	if ex := hB.next(plugin.EventExit, "prog"); ex.PID != pid {
		t.Fatalf("exit %+v, want pid %d's", ex, pid)
	}
}

// kernelAtLeast reports whether the running kernel is at least major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var a, b int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &a, &b); err != nil {
		return false
	}
	return a > major || a == major && b >= minor
}
