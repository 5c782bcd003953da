package shim

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TestAdopt: a Shim that goes away without stopping its services (as a dying
// plugin does) leaves them in the table; the next Shim adopts them and
// reports their exit.
func TestAdopt(t *testing.T) {
	for _, det := range detectors {
		t.Run(det.String(), func(t *testing.T) {
			dir := t.TempDir()
			h1 := newHarness(t, det, dir)
			res := h1.spawn(h1.childSpec("adoptee", "sleep"))
			h1.cancel()
			if err := h1.s.Close(); err != nil {
				t.Fatal(err)
			}
			if gone(res.PID) {
				t.Fatal("Close killed the service")
			}

			h2 := newHarness(t, det, dir)
			info, err := h2.s.Info(context.Background())
			if err != nil || info.Adopted != 1 {
				t.Fatalf("Info = %+v, %v; want Adopted 1", info, err)
			}
			ev := h2.next(plugin.EventAdopt, "adoptee")
			if ev.PID != res.PID || ev.Generation != 1 || !ev.Adopted {
				t.Errorf("adopt event %+v", ev)
			}
			sl := h2.slot(res.Slot)
			if sl.PID != uint32(res.PID) || sl.Flags&shm.SlotAdopted == 0 {
				t.Errorf("slot after adoption = %+v; want pid %d, adopted flag", sl, res.PID)
			}

			if err := unix.Kill(res.PID, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			ev = h2.next(plugin.EventExit, "adoptee")
			// Still this process's child (same process), so it is reaped
			// with its real status.
			if ev.Status != 137 || !ev.Adopted || ev.PID != res.PID {
				t.Errorf("exit event %+v; want status 137, adopted", ev)
			}
			if sl := h2.slot(res.Slot); sl.PID != 0 || sl.State != shm.StateExited || sl.LastStatus != 137 {
				t.Errorf("slot after exit = %+v", sl)
			}
			waitFor(t, "reaped", func() bool { return gone(res.PID) })

			res2 := h2.spawn(h2.childSpec("adoptee", "sleep"))
			if sl := h2.slot(res2.Slot); res2.Generation != 2 || sl.Flags&shm.SlotAdopted != 0 {
				t.Errorf("respawn after adoption: %+v, slot %+v; want generation 2, adopted flag clear", res2, sl)
			}
		})
	}
}

// TestAdoptGoneOrReused: slots whose process died meanwhile, or whose PID
// names another process now, are cleared and reported with Source "adopt".
func TestAdoptGoneOrReused(t *testing.T) {
	dir := t.TempDir()
	h1 := newHarness(t, connector.DetectPidfd, dir)
	dead := h1.spawn(h1.childSpec("dead", "sleep"))
	reused := h1.spawn(h1.childSpec("reused", "sleep"))
	h1.cancel()
	if err := h1.s.Close(); err != nil {
		t.Fatal(err)
	}
	// "dead" dies and is reaped while no plugin runs.
	if err := unix.Kill(dead.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(dead.PID, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	// "reused": the slot's start time no longer matches the process.
	w, err := shm.Create("t", shm.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	w.Spawned(reused.Slot, uint32(reused.PID), reused.Generation, reused.StartTime+1, shm.StateRunning, 0)
	w.Close(false)

	h2 := newHarness(t, connector.DetectPidfd, dir)
	if info, _ := h2.s.Info(context.Background()); info.Adopted != 0 {
		t.Errorf("Adopted = %d; want 0", info.Adopted)
	}
	for _, r := range []struct {
		name string
		res  plugin.SpawnResult
	}{{"dead", dead}, {"reused", reused}} {
		ev := h2.next(plugin.EventExit, r.name)
		if ev.Source != "adopt" || ev.Status != -1 || ev.PID != r.res.PID {
			t.Errorf("%s: exit event %+v; want source adopt, status -1", r.name, ev)
		}
		sl := h2.slot(r.res.Slot)
		if sl.PID != 0 || sl.State != shm.StateExited || sl.Exits != 1 || sl.LastPID != uint32(r.res.PID) {
			t.Errorf("%s: slot %+v", r.name, sl)
		}
	}
	// The process now named by the reused PID was left alone.
	if ps, err := readProcStat(reused.PID); err != nil || ps.State == 'Z' {
		t.Fatalf("the unrelated process was harmed: %+v, %v", ps, err)
	}
	unix.Kill(reused.PID, unix.SIGKILL)
	waitFor(t, "the stray reaper to reap it", func() bool { return gone(reused.PID) })
}

// TestAdoptNonChild is a plugin restart as it happens for real: the adopted
// process is not the new plugin's child (here its parent is the old plugin,
// still alive), so it cannot be reaped; its status comes from the proc
// connector when that saw the exit first, else it is -1.
func TestAdoptNonChild(t *testing.T) {
	hA := newHarness(t, connector.DetectPidfd, "")
	dirB := t.TempDir()
	out := tempPath(t, "adoptee.pid")
	spec := hA.childSpec("oldplugin", "oldplugin", "HB_TEST_SHMDIR="+dirB, "HB_TEST_OUT="+out)
	spec.Stderr = "inherit"
	hA.spawn(spec)
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, out)))
	if err != nil {
		t.Fatal(err)
	}

	hB := newHarness(t, connector.DetectAuto, dirB)
	ev := hB.next(plugin.EventAdopt, "adoptee")
	if ev.PID != pid || !ev.Adopted {
		t.Fatalf("adopt event %+v; want pid %d", ev, pid)
	}
	if inc := hB.s.svcs["adoptee"].cur; inc == nil || inc.child {
		t.Fatalf("incarnation %+v; want a non-child", inc)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev = hB.next(plugin.EventExit, "adoptee")
	switch {
	case ev.Source == "connector" && ev.Status != 137:
		t.Errorf("exit %+v: the connector saw it but the status is not 137", ev)
	case ev.Status != 137 && ev.Status != -1:
		t.Errorf("exit %+v; want status 137 or -1 (unknown)", ev)
	}
	t.Logf("non-child exit: source %s status %d", ev.Source, ev.Status)
	if sl := hB.slot(ev.Slot); sl.PID != 0 || sl.State != shm.StateExited {
		t.Errorf("slot %+v", sl)
	}
	// The old plugin never reaped it; once the old plugin goes, its zombie
	// comes to this process (the subreaper) and is reaped as a stray.
	if gone(pid) {
		t.Errorf("pid %d was reaped by a process that is not its parent", pid)
	}
	if err := hA.s.Stop(context.Background(), "oldplugin", unix.SIGKILL, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the orphaned zombie to be reaped", func() bool { return gone(pid) })
}

// TestShutdownClean: a clean Shutdown leaves writer_pid 0; an unclean Close
// leaves this process's PID.
func TestShutdownClean(t *testing.T) {
	for _, clean := range []bool{true, false} {
		dir := t.TempDir()
		s, err := New(Options{ShmName: "t", ShmDir: dir, Slots: 4, Detector: connector.DetectPidfd})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(context.Background(), clean); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Spawn(context.Background(), plugin.Spec{Name: "x", Command: []string{"/bin/true"}}); err == nil {
			t.Error("Spawn after Shutdown succeeded")
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close after Shutdown: %v", err)
		}
		tab, err := shm.OpenPath(filepath.Join(dir, "t"))
		if err != nil {
			t.Fatal(err)
		}
		want := uint32(os.Getpid())
		if clean {
			want = 0
		}
		if got := tab.Header().WriterPID; got != want {
			t.Errorf("clean=%v: writer_pid %d; want %d", clean, got, want)
		}
		tab.Close()
	}
}
