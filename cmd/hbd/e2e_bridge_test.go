package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/bridge/bridgetest"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// TestBridgeE2E runs hbd beside a real runsv, s6-supervise and supervisord
// (each started here on a scratch directory) and checks, per manager:
// the program's PID in a bridged slot; kill -9 → the slot reads 0, then
// the manager's replacement; hbctl restart through the manager; the
// manager killed → 0 and flagged, started again → its new program's PID.
// Then, per manager, a [bridge.MANAGER] without programs (bridgeEvery):
// every program bridged, one added later (a service directory put into
// runsvdir's or s6-svscan's scan directory, a supervisord program added by
// supervisorctl reread and update) in the table with its PID, one removed
// gone from it.
func TestBridgeE2E(t *testing.T) {
	for _, kind := range []string{bridge.Runit, bridge.S6, bridge.Supervisord} {
		t.Run(kind, func(t *testing.T) {
			h := NewHarness(t, Options{})
			var m *bridgetest.Manager
			var table string
			switch kind {
			case bridge.Runit:
				m = bridgetest.Runit(t, "prog", bridgetest.RunScript("sleep 1000"))
				table = fmt.Sprintf("[bridge.runit]\ndir = %q\nprograms = [\"prog\"]\n", filepath.Dir(m.Dir))
			case bridge.S6:
				m = bridgetest.S6(t, "prog", bridgetest.RunScript("sleep 1000"))
				table = fmt.Sprintf("[bridge.s6]\ndir = %q\n", filepath.Dir(m.Dir)) // every service directory there
			case bridge.Supervisord:
				listener := fmt.Sprintf("%s supervisord-listener --socket %s", h.HBD, filepath.Join(h.StateDir, "supervisord.sock"))
				m = bridgetest.Supervisord(t, "prog", "/bin/sleep 1000", listener)
				table = fmt.Sprintf("[bridge.supervisord]\nserver_url = %q\nprograms = [\"prog\"]\n", m.URL)
			}
			h.WriteConfig(table)
			d := h.Start()

			first := m.WaitUp()
			sl := h.WaitSlot("prog", fmt.Sprintf("pid %d, bridged", first), func(s shm.Slot) bool {
				return s.PID == uint32(first) && s.Flags&shm.SlotBridged != 0 && s.State == shm.StateRunning
			})
			h.WaitService("prog", fmt.Sprintf("pid %d from %s", first, kind), func(s api.ServiceStatus) bool {
				return s.Manager == kind && s.PID == first && s.State == "running"
			})
			if out := h.MustCtl("status"); !strings.Contains(out, "bridged: "+kind) {
				t.Fatalf("hbctl status does not name the manager:\n%s", out)
			}

			// kill -9: 0 first, then the manager's replacement.
			h.Kill(first, syscall.SIGKILL)
			next, sawZero := h.WatchPID(sl.Index, uint32(first))
			if !sawZero {
				t.Errorf("slot went from %d to %d without reading 0", first, next)
			}
			if got := m.WaitUp(); uint32(got) != next {
				t.Fatalf("manager reports pid %d, slot %d", got, next)
			}
			h.WaitService("prog", "one exit recorded", func(s api.ServiceStatus) bool { return s.Exits >= 1 && s.PID == int(next) })

			// hbctl restart goes to the manager, which answers.
			out := h.MustCtl("restart", "prog")
			if !strings.Contains(out, kind+" restart:") {
				t.Errorf("hbctl restart printed %q; want the manager's answer", out)
			}
			restarted, _ := h.WatchPID(sl.Index, next)
			if got := m.WaitUp(); uint32(got) != restarted {
				t.Fatalf("after restart: manager reports pid %d, slot %d", got, restarted)
			}
			if r := h.Ctl("stop", "nosuch"); r.Code == 0 {
				t.Errorf("stop of an unknown name succeeded: %v", r)
			}

			// The manager killed: 0 and flagged; started again: re-synced.
			m.Kill()
			h.WaitSlot("prog", "0 and manager gone", func(s shm.Slot) bool {
				return s.PID == 0 && s.Flags&shm.SlotManagerGone != 0
			})
			h.WaitService("prog", "manager gone", func(s api.ServiceStatus) bool {
				return s.PID == 0 && strings.HasPrefix(s.Reason, "manager gone")
			})
			m.Start()
			// Its status names the program left behind until the new
			// manager writes its own: wait for a PID that is neither.
			back := h.WaitSlot("prog", "a new pid after the manager's return", func(s shm.Slot) bool {
				return s.PID != 0 && s.PID != restarted && s.Flags == shm.SlotBridged
			})
			if got := m.WaitUp(); uint32(got) != back.PID {
				t.Fatalf("after the manager's return: manager reports pid %d, slot %d", got, back.PID)
			}

			// The plugin killed: the next one adopts the bridged slot as it
			// is, and still sees its program's death.
			plug := h.Health().Plugin.PID
			h.Kill(plug, syscall.SIGKILL)
			h.Eventually("a new plugin writing the table", func() (bool, string) {
				w := h.Table().Header().WriterPID
				return w != 0 && int(w) != plug && Alive(int(w)), fmt.Sprint("writer ", w)
			})
			h.WaitService("prog", "status again", func(s api.ServiceStatus) bool { return s.PID == int(back.PID) })
			if sl := h.Slot("prog"); sl.PID != back.PID || sl.Flags != shm.SlotBridged {
				t.Fatalf("after a plugin restart: slot %+v, want pid %d bridged", sl, back.PID)
			}
			h.Kill(int(back.PID), syscall.SIGKILL)
			last, sawZero := h.WatchPID(sl.Index, back.PID)
			if !sawZero {
				t.Errorf("after a plugin restart: slot went from %d to %d without reading 0", back.PID, last)
			}
			h.WaitService("prog", "the adopted program's exit recorded", func(s api.ServiceStatus) bool { return s.PID == int(last) })

			// A clean stop of hbd stops hb's services, never the manager's.
			d.Stop()
			if !Alive(int(last)) {
				t.Errorf("hbd's clean stop killed %s's program %d", kind, last)
			}
		})
	}
	for _, kind := range []string{bridge.Runit, bridge.S6, bridge.Supervisord} {
		t.Run("every-"+kind, func(t *testing.T) { bridgeEvery(t, kind) })
	}
}

// bridgeEvery is TestBridgeE2E's part for a [bridge.MANAGER] without
// programs, on a real runsvdir, s6-svscan or supervisord.
func bridgeEvery(t *testing.T, kind string) {
	h := NewHarness(t, Options{})
	var (
		scan  *bridgetest.ScanDir
		sup   *bridgetest.Manager
		table string
	)
	switch kind {
	case bridge.Runit, bridge.S6:
		if kind == bridge.Runit {
			scan = bridgetest.Runsvdir(t)
		} else {
			scan = bridgetest.S6Svscan(t)
		}
		scan.Add("prog", bridgetest.RunScript("sleep 1000"), bridgetest.Rename)
		// A name hb's own [service.dup] has: the service wins.
		scan.Add("dup", bridgetest.RunScript("sleep 1000"), bridgetest.Rename)
		table = fmt.Sprintf("[service.dup]\ncommand = [\"sleep\", \"1000\"]\n\n[bridge.%s]\ndir = %q\n", kind, scan.Dir)
	case bridge.Supervisord:
		listener := fmt.Sprintf("%s supervisord-listener --socket %s", h.HBD, filepath.Join(h.StateDir, "supervisord.sock"))
		sup = bridgetest.Supervisord(t, "prog", "/bin/sleep 1000", listener)
		table = fmt.Sprintf("[bridge.supervisord]\nserver_url = %q\n", sup.URL)
	}
	h.WriteConfig(table)
	if r := h.run(h.HBD, "--check", "-c", h.Config); r.Code != 0 || (scan != nil && !strings.Contains(r.Stdout, "dup is not bridged: [service.dup]")) {
		t.Errorf("hbd --check: %v", r)
	}
	d := h.Start()

	programPID := func(name string) int {
		if scan != nil {
			return scan.WaitUp(name)
		}
		return sup.WaitProcess(name + ":" + name)
	}
	waitBridged := func(name string, pid int) shm.Slot {
		sl := h.WaitSlot(name, fmt.Sprintf("pid %d, bridged", pid), func(s shm.Slot) bool {
			return s.PID == uint32(pid) && s.Flags == shm.SlotBridged && s.State == shm.StateRunning
		})
		h.WaitService(name, fmt.Sprintf("pid %d from %s", pid, kind), func(s api.ServiceStatus) bool {
			return s.Manager == kind && s.PID == pid && s.State == "running"
		})
		return sl
	}
	waitDropped := func(name string, slot int) {
		h.Eventually(name+"'s slot freed", func() (bool, string) {
			_, err := h.Table().Lookup(name)
			s := h.Table().Snapshot(slot)
			return err != nil && s.PID == 0, fmt.Sprintf("lookup %v, slot %+v", err, s)
		})
		h.Eventually("hbctl status without "+name, func() (bool, string) {
			st, err := h.Get(name)
			return err != nil, fmt.Sprintf("%+v", st)
		})
	}

	first := programPID("prog")
	progSlot := waitBridged("prog", first)
	if scan != nil {
		st := h.WaitService("dup", "hb's own dup running", IsRunning)
		if st.Manager != "" {
			t.Fatalf("dup is %+v; want hb's own service", st)
		}
		d.WaitLog("[service.dup]")
		if !strings.Contains(d.Log(), "has the name and wins") {
			t.Errorf("hbd does not say why the %s dup is not bridged:\n%s", kind, d.Log())
		}
	}

	// Added after hbd started.
	switch kind {
	case bridge.Runit:
		scan.Add("late", bridgetest.RunScript("sleep 1000"), bridgetest.Symlink)
	case bridge.S6:
		scan.Add("late", bridgetest.RunScript("sleep 1000"), bridgetest.Mkdir)
	default:
		sup.AddProgram("late", "/bin/sleep 1000")
	}
	late := programPID("late")
	lateSlot := waitBridged("late", late)
	if out := h.MustCtl("status"); !strings.Contains(out, "late") || !strings.Contains(out, "bridged: "+kind) {
		t.Fatalf("hbctl status does not show the program found later:\n%s", out)
	}
	// Watched as any bridged program: kill -9 → 0, then the replacement.
	h.Kill(late, syscall.SIGKILL)
	next, sawZero := h.WatchPID(lateSlot.Index, uint32(late))
	if !sawZero {
		t.Errorf("slot went from %d to %d without reading 0", late, next)
	}
	if got := programPID("late"); uint32(got) != next {
		t.Fatalf("%s reports pid %d, slot %d", kind, got, next)
	}

	// Removed: the slot reads 0 and is freed, hbctl no longer lists it.
	if scan != nil {
		scan.Remove("prog")
		waitDropped("prog", progSlot.Index)
	} else {
		sup.RemoveProgram("late")
		waitDropped("late", lateSlot.Index)
	}
	if _, err := h.Table().Lookup("hb"); err == nil {
		t.Error("hb's supervisord event listener has a slot")
	}
	d.Stop()
}
