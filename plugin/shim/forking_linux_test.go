package shim

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
)

func (h *harness) forkingSpec(name, script, pidFile string) plugin.Spec {
	spec := h.shSpec(name, script)
	spec.Type, spec.PIDFile = TypeForking, pidFile
	return spec
}

// TestForking: a program that daemonizes (its first process exits 0) runs
// as the process its PID file names, which is in the service's cgroup and
// goes into the slot; its death clears the slot and kills what it left.
func TestForking(t *testing.T) {
	h := cgroupHarness(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "d.pid")
	spec := h.forkingSpec("fk", "sleep 1000 & sleep 1001 & echo $! > "+pidFile+"; exit 0", pidFile)
	res := h.spawn(spec)
	b, _ := os.ReadFile(pidFile)
	if want, _ := strconv.Atoi(strings.TrimSpace(string(b))); res.PID != want {
		t.Fatalf("spawned pid %d; the pid file names %d", res.PID, want)
	}
	if sl := h.slot(res.Slot); int(sl.PID) != res.PID || sl.StartTime != res.StartTime {
		t.Fatalf("slot %+v; want pid %d", sl, res.PID)
	}
	h.next(plugin.EventSpawn, "fk")
	other := h.members("fk", 2)
	if err := unix.Kill(res.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ex := h.next(plugin.EventExit, "fk")
	if ex.PID != res.PID || ex.Respawned {
		t.Fatalf("exit %+v", ex)
	}
	if sl := h.slot(res.Slot); sl.PID != 0 {
		t.Fatalf("slot pid %d after the exit", sl.PID)
	}
	if err := h.svcCgroup("fk").waitEmpty(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, pid := range other {
		if !deadOrDying(pid) {
			t.Errorf("pid %d outlived the main process", pid)
		}
	}
	// Started again, stopped: nothing left.
	res = h.spawn(spec)
	h.members("fk", 2)
	if err := h.s.Stop(context.Background(), "fk", unix.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if pop, _ := h.svcCgroup("fk").populated(); pop {
		t.Error("cgroup populated after stop")
	}
}

// TestForkingRefused: a PID file that names a process outside the
// service's cgroup, a symlink, a file another user owns, a first process
// that fails or never exits: each fails the spawn with an error that says
// so, and leaves nothing running.
func TestForkingRefused(t *testing.T) {
	h := cgroupHarness(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "d.pid")
	target := filepath.Join(dir, "target")
	for _, tc := range []struct {
		name, script, want string
		setup              func()
	}{
		{"other", "echo " + strconv.Itoa(os.Getpid()) + " > " + pidFile + "; exit 0", "not a process of the service's cgroup", nil},
		{"symlink", "sleep 1000 & echo $! > " + target + "; exit 0", "symlink", func() {
			os.Remove(pidFile)
			if err := os.Symlink(target, pidFile); err != nil {
				t.Fatal(err)
			}
		}},
		{"foreign", "sleep 1000 & echo $! > " + pidFile + "; chown 65534 " + pidFile + "; exit 0", "belongs to uid 65534", nil},
		{"fails", "exit 3", "exited 3 before the service was up", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(pidFile)
			if tc.setup != nil {
				tc.setup()
			}
			_, err := h.s.Spawn(context.Background(), h.forkingSpec(tc.name, tc.script, pidFile))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Spawn: %v; want an error saying %q", err, tc.want)
			}
			if pop, _ := h.svcCgroup(tc.name).populated(); pop {
				left, _ := h.svcCgroup(tc.name).pids()
				t.Errorf("processes left in the cgroup: %v", left)
			}
			if sl := h.slot(h.s.svcs[tc.name].idx); sl.PID != 0 {
				t.Errorf("slot pid %d", sl.PID)
			}
		})
	}
}
