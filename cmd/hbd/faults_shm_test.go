package main

// Fault tests of the shm table as a target: a table squatted by another user
// before hb starts, a table whose name is removed (with and without a plugin
// death), a table truncated under the running plugin.
//
//	TestFaultShmSquat     /dev/shm/<name> created first by uid 65534 with forged slots
//	TestFaultShmUnlinked  the table's name removed, then also the plugin killed
//	TestFaultShmTruncated the table truncated to 0 bytes under a running plugin

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// forgedTable returns the bytes of a valid table whose slot "a" claims that
// pid 1 runs.
func forgedTable(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	w, err := shm.Create("forged", shm.Options{Slots: 4, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	i, err := w.Alloc("a")
	if err != nil {
		t.Fatal(err)
	}
	w.Spawned(i, 1, 1, 1, shm.StateRunning, 0)
	w.Close(false)
	b, err := os.ReadFile(filepath.Join(dir, "forged"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFaultShmSquat: an unprivileged user creates /dev/shm/<name> before hb
// does, mode 0644, with forged slots ("a pid 1 running"). The Go reader
// (shm.Open), the C reader (hbpeek) and hbd refuse it, each naming the file,
// its owner and the fix.
func TestFaultShmSquat(t *testing.T) {
	t.Parallel()
	RequireRoot(t, "a table file owned by another user")
	rep := newFaultReport(t, "shm-squat")
	h := NewHarness(t, Options{})
	h.WriteConfig("[service.a]\ncommand = \"sleep infinity\"\nstart_secs = \"100ms\"\n")
	rep.attack(t, "uid 65534 creates "+h.ShmPath+" first (mode 0644, slot a: pid 1 running)", func() {
		rep.addInputs(1)
		if err := os.WriteFile(h.ShmPath, forgedTable(t), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(h.ShmPath, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		before := readFileState(t, h.ShmPath)

		if tb, err := shm.Open(h.Shm); !errors.Is(err, shm.ErrOwner) || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("shm.Open of the squatted table: %v; want ErrOwner naming uid 65534", err)
			if err == nil {
				t.Logf("shm.Open believed it: %+v", tb.Snapshot(0))
				tb.Close()
			}
		}
		out, err := exec.Command(h.HBPeek, h.Shm).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "owned by uid 65534") ||
			!strings.Contains(string(out), "rm "+h.ShmPath) {
			t.Errorf("hbpeek %s: %v\n%s\nwant exit 1 naming uid 65534 and rm %s", h.Shm, err, out, h.ShmPath)
		} else {
			t.Logf("hbpeek: %s", strings.TrimSpace(string(out)))
		}
		refusedStart(h, h.ShmPath, "uid 65534", "rm "+h.ShmPath)
		if after := readFileState(t, h.ShmPath); after != before {
			t.Errorf("the squatted file was touched: %+v -> %+v", before, after)
		}
	})

	h2 := NewHarness(t, Options{})
	h2.WriteConfig(shmServices)
	d := h2.Start()
	census := watchInstances(h2)
	defer func() { rep.note("census_scans", census.Stop(t)) }()
	all := []string{"sleeper", "shell"}
	running := h2.WaitRunning(all...)
	plugin := pluginPID(h2)
	rep.attack(t, "the plugin dies; meanwhile uid 65534 replaces "+h2.ShmPath+" with a forged table", func() {
		rep.addInputs(1)
		h2.StopProcess(plugin)
		if err := os.Remove(h2.ShmPath); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h2.ShmPath, forgedTable(t), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(h2.ShmPath, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		h2.Kill(plugin, syscall.SIGKILL)
		h2.Eventually("hbd to say why the new plugin cannot start", func() (bool, string) {
			for _, l := range Lines(d.Log(), `msg="restart plugin"`) {
				if strings.Contains(l, "owned by uid 65534") && strings.Contains(l, "rm "+h2.ShmPath) {
					if strings.Contains(l, "not compiled for this architecture") {
						t.Errorf("hbd's error hides the cause behind go-plugin's text: %s", l)
					}
					return true, ""
				}
			}
			return false, tail(d.Log(), 5)
		})
		// The operator follows the advice: the next plugin makes a new
		// table and adopts the services from the state directory's record.
		if err := os.Remove(h2.ShmPath); err != nil {
			t.Fatal(err)
		}
		plugin = waitNewPlugin(h2, plugin)
		for name, b := range running {
			st := h2.WaitService(name, "adopted", func(st api.ServiceStatus) bool { return st.Adopted || st.PID != b.PID })
			if st.PID != b.PID || !IsRunning(st) {
				t.Errorf("%s after the squat was removed: %+v; want pid %d, running", name, st, b.PID)
			}
		}
		rep.addRestarted(countRestarted(h2, running, all...))
	})
}

// shmServices is the configuration of the unlinked and truncated tests.
const shmServices = `
[service.sleeper]
command    = "sleep infinity"
start_secs = "100ms"

[service.shell]
command    = ["sh", "-c", "while :; do sleep 1; done"]
start_secs = "100ms"
`

// freshSlots opens the table by its name now (not the harness's mapping,
// which may be of a removed file) and returns each service's PID.
func freshSlots(h *Harness) (map[string]uint32, error) {
	tb, err := shm.OpenPath(h.ShmPath)
	if err != nil {
		return nil, err
	}
	defer tb.Close()
	out := map[string]uint32{}
	for sl := range tb.Used() {
		out[sl.Name] = sl.PID
	}
	return out, nil
}

// waitTableBack waits until the table at its name shows each service of
// want with want's PID.
func waitTableBack(h *Harness, want map[string]int) {
	h.T.Helper()
	h.Eventually("the table back at "+h.ShmPath+" with the same PIDs", func() (bool, string) {
		got, err := freshSlots(h)
		if err != nil {
			return false, err.Error()
		}
		for name, pid := range want {
			if got[name] != uint32(pid) {
				return false, fmt.Sprintf("slots %v", got)
			}
		}
		return true, ""
	})
}

// checkRepairReported waits for health (the plugin's shm_repairs) and the
// plugin's log to report a repair of the table saying what.
func checkRepairReported(h *Harness, what string) {
	h.T.Helper()
	h.Eventually("health to report the table's repair ("+what+")", func() (bool, string) {
		hl := h.Health()
		if hl.Plugin == nil || !hl.OK {
			return false, fmt.Sprintf("%+v", hl)
		}
		for _, r := range hl.Plugin.ShmRepairs {
			if strings.Contains(r, what) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("shm_repairs %q", hl.Plugin.ShmRepairs)
	})
	if !strings.Contains(h.PluginLog(), what) {
		h.T.Errorf("plugin.log does not report the repair (%s)", what)
	}
}

// TestFaultShmUnlinked: the table's name is removed under a running plugin,
// which publishes it again with the same slots; then the name is removed and
// the plugin killed before it can look: the new plugin finds no table,
// restores the running incarnations from the state directory's record and
// adopts them. No service ever runs twice.
func TestFaultShmUnlinked(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "shm-unlink")
	h := NewHarness(t, Options{})
	h.WriteConfig(shmServices)
	all := []string{"sleeper", "shell"}
	h.Start()
	census := watchInstances(h)
	defer func() { rep.note("census_scans", census.Stop(t)) }()
	before := h.WaitRunning(all...)
	pids := map[string]int{}
	for n, st := range before {
		pids[n] = st.PID
	}
	plugin := pluginPID(h)

	rep.attack(t, "rm "+h.ShmPath+" under the running plugin", func() {
		if err := os.Remove(h.ShmPath); err != nil {
			t.Fatal(err)
		}
		waitTableBack(h, pids)
		checkRepairReported(h, "had been removed")
		if got := pluginPID(h); got != plugin {
			t.Errorf("plugin changed: %d -> %d", plugin, got)
		}
		rep.addRestarted(countRestarted(h, before, all...))
	})

	rep.attack(t, "rm "+h.ShmPath+", then SIGKILL the (stopped) plugin before it can look", func() {
		h.StopProcess(plugin)
		if err := os.Remove(h.ShmPath); err != nil {
			t.Fatal(err)
		}
		h.Kill(plugin, syscall.SIGKILL)
		old := plugin
		plugin = waitNewPlugin(h, old)
		for name, b := range before {
			st := h.WaitService(name, "adopted", func(st api.ServiceStatus) bool { return st.Adopted || st.PID != b.PID })
			if st.PID != b.PID || !IsRunning(st) {
				t.Errorf("%s after the table's removal and the plugin's death: %+v; want pid %d, running", name, st, b.PID)
			}
		}
		waitTableBack(h, pids)
		h.waitReaped(old, "the killed plugin")
		rep.addRestarted(countRestarted(h, before, all...))
	})
}

// TestFaultShmTruncated: the table is truncated to 0 bytes under a running
// plugin, and a service is killed (so the plugin writes into the truncated
// mapping at once). The plugin survives (no SIGBUS), the service is
// respawned, the table gets its size and contents back, and SIGTERM still
// stops every service.
func TestFaultShmTruncated(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "shm-trunc")
	h := NewHarness(t, Options{})
	h.WriteConfig(shmServices)
	all := []string{"sleeper", "shell"}
	d := h.Start()
	before := h.WaitRunning(all...)
	plugin := pluginPID(h)

	var now map[string]int
	rep.attack(t, "truncate "+h.ShmPath+" to 0 bytes, then kill a service", func() {
		if err := os.Truncate(h.ShmPath, 0); err != nil {
			t.Fatal(err)
		}
		h.Kill(before["sleeper"].PID, syscall.SIGKILL)
		h.WaitService("sleeper", "respawned", func(st api.ServiceStatus) bool {
			return IsRunning(st) && st.PID != before["sleeper"].PID
		})
		if got := pluginPID(h); got != plugin {
			t.Errorf("plugin changed: %d -> %d (it died)", plugin, got)
		}
		now = map[string]int{}
		for _, n := range all {
			now[n] = h.ServiceStatus(n).PID
		}
		waitTableBack(h, now)
		checkRepairReported(h, "was truncated to 0 bytes")
		if st, err := os.Stat(h.ShmPath); err != nil || st.Size() != int64(shm.HeaderSize+h.Opt.Slots*shm.SlotSize) {
			t.Errorf("table size after the repair: %v %v", st, err)
		}
		if err := syscall.Kill(plugin, 0); err != nil {
			t.Errorf("plugin %d: %v", plugin, err)
		}
	})

	rep.attack(t, "truncate "+h.ShmPath+" to 0 bytes, then SIGTERM hbd", func() {
		if err := os.Truncate(h.ShmPath, 0); err != nil {
			t.Fatal(err)
		}
		d.Signal(syscall.SIGTERM)
		if code := d.Wait(); code != 0 {
			t.Errorf("hbd exit %d after SIGTERM:\n%s", code, tail(d.Log(), 40))
		}
		for name, pid := range now {
			if Alive(pid) {
				t.Errorf("%s (pid %d) still runs after hbd's SIGTERM", name, pid)
			}
		}
	})
}
