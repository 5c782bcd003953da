package shim

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TestRespawnByPlugin: with Spec.Respawn the plugin starts the next
// incarnation itself; the exit event says so and the spawn event follows.
// Exits the policy leaves to the host (a successful status under on-failure,
// a run shorter than start_secs, a requested stop) are not respawned.
func TestRespawnByPlugin(t *testing.T) {
	for _, det := range detectors {
		t.Run(det.String(), func(t *testing.T) {
			h := newHarness(t, det, "")

			spec := h.childSpec("rs", "sleep")
			spec.Respawn = plugin.Respawn{Enabled: true}
			first := h.spawn(spec)
			h.next(plugin.EventSpawn, "rs")
			if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			ex := h.next(plugin.EventExit, "rs")
			if !ex.Respawned || ex.PID != first.PID || ex.Status != 128+9 {
				t.Fatalf("exit event %+v; want respawned, pid %d, status 137", ex, first.PID)
			}
			sp := h.nextOf("rs")
			if sp.Kind != plugin.EventSpawn || sp.Generation != first.Generation+1 || sp.PID == first.PID {
				t.Fatalf("event after the exit %+v; want the spawn of generation %d", sp, first.Generation+1)
			}
			if sl := h.slot(first.Slot); int(sl.PID) != sp.PID || sl.Generation != sp.Generation || sl.Exits != 1 ||
				sl.State != shm.StateStarting {
				t.Fatalf("slot %+v; want pid %d generation %d exits 1, starting", sl, sp.PID, sp.Generation)
			}

			// A requested stop is never respawned.
			if err := h.s.Stop(context.Background(), "rs", unix.SIGTERM, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if ex := h.next(plugin.EventExit, "rs"); ex.Respawned {
				t.Fatalf("stop: exit %+v was respawned", ex)
			}
			if sl := h.slot(first.Slot); sl.PID != 0 {
				t.Fatalf("after stop: slot pid %d", sl.PID)
			}

			// on-failure with a success status, and a run shorter than
			// start_secs: left to the host.
			for _, tc := range []struct {
				name string
				r    plugin.Respawn
				code string
			}{
				{"ok", plugin.Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0}}, "0"},
				{"quick", plugin.Respawn{Enabled: true, StartSecs: time.Hour}, "1"},
				{"off", plugin.Respawn{}, "1"},
			} {
				spec := h.childSpec(tc.name, "exit", "HB_EXIT_CODE="+tc.code)
				spec.Respawn = tc.r
				h.spawn(spec)
				if ex := h.next(plugin.EventExit, tc.name); ex.Respawned {
					t.Errorf("%s: exit %+v was respawned", tc.name, ex)
				}
			}
		})
	}
}

func TestRespawnWants(t *testing.T) {
	for _, tc := range []struct {
		name   string
		r      plugin.Respawn
		runFor time.Duration
		status int
		want   bool
	}{
		{"disabled", plugin.Respawn{}, time.Hour, 1, false},
		{"always", plugin.Respawn{Enabled: true}, 0, 0, true},
		{"too quick", plugin.Respawn{Enabled: true, StartSecs: time.Second}, time.Millisecond, 1, false},
		{"on-failure success", plugin.Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0, 2}}, 0, 2, false},
		{"on-failure failure", plugin.Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0}}, 0, 137, true},
		{"on-failure unknown", plugin.Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0}}, 0, -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.Wants(tc.runFor, tc.status); got != tc.want {
				t.Errorf("Wants(%v, %d) = %v; want %v", tc.runFor, tc.status, got, tc.want)
			}
		})
	}
}

// TestRunningAtSpawn: with Spec.RunningAtSpawn (start_secs 0) the slot reads
// running from the spawn on, for the host's spawn and for the plugin's own
// respawn alike, so the host has no state to correct.
func TestRunningAtSpawn(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	spec := h.childSpec("up", "sleep")
	spec.Respawn = plugin.Respawn{Enabled: true}
	spec.RunningAtSpawn = true
	first := h.spawn(spec)
	if sl := h.slot(first.Slot); sl.State != shm.StateRunning || int(sl.PID) != first.PID {
		t.Fatalf("after the spawn: slot %+v; want running, pid %d", sl, first.PID)
	}
	h.next(plugin.EventSpawn, "up")
	if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.next(plugin.EventExit, "up")
	sp := h.next(plugin.EventSpawn, "up")
	if sl := h.slot(first.Slot); sl.State != shm.StateRunning || int(sl.PID) != sp.PID || sl.Exits != 1 {
		t.Fatalf("after the respawn: slot %+v; want running, pid %d, exits 1", sl, sp.PID)
	}
}
