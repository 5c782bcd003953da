package shim

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
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
				{"quick", plugin.Respawn{Enabled: true, StartWindow: time.Hour}, "1"},
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
		{"too quick", plugin.Respawn{Enabled: true, StartWindow: time.Second}, time.Millisecond, 1, false},
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

// TestRespawnOfAReplacementThatExitsAtOnce: the replacement the plugin
// started for an exit exits before the exit path that started it has
// returned, and the other exit worker takes that exit. It is respawned too:
// the exit path that started the replacement has let go of the service by
// the time the replacement's exit can be seen, so the other worker is not
// turned away and the exit is not left to a host that may be gone.
func TestRespawnOfAReplacementThatExitsAtOnce(t *testing.T) {
	for _, det := range detectors {
		t.Run(det.String(), func(t *testing.T) {
			var shim atomic.Pointer[Shim]
			var once sync.Once
			dir := t.TempDir()
			h := openHarness(t, Options{ShmName: "t", ShmDir: dir, Slots: 16, Detector: det,
				onRespawned: func(idx int, gen uint64) {
					once.Do(func() {
						// Hold this exit path until the replacement's exit
						// (generation gen) is recorded by the other worker.
						s := shim.Load()
						deadline := time.Now().Add(10 * time.Second)
						for s.w.Snapshot(idx).Exits < gen {
							if time.Now().After(deadline) {
								t.Errorf("the exit of generation %d was not recorded while its respawner waited: %+v",
									gen, s.w.Snapshot(idx))
								return
							}
							time.Sleep(time.Millisecond)
						}
					})
				}}, dir)
			shim.Store(h.s)

			// The first incarnation waits to be killed: one that exited at
			// once could be seen while the host's Spawn still holds the
			// service, and then its exit is the host's to decide. Every
			// replacement exits at once.
			gate := filepath.Join(dir, "go")
			spec := plugin.Spec{Name: "loop", Command: []string{"/bin/sh", "-c", `[ -e "$1" ] && exit 1; exec sleep 1000`, "sh", gate},
				UID: -1, GID: -1, Stdout: "null", Stderr: "null", Respawn: plugin.Respawn{Enabled: true}, RunningAtSpawn: true}
			first := h.spawn(spec)
			h.next(plugin.EventSpawn, "loop")
			// The gate only once the first has looked for it (and become
			// sleep): a shell still starting would find it and exit.
			comm := "/proc/" + strconv.Itoa(first.PID) + "/comm"
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				if b, err := os.ReadFile(comm); err == nil && string(b) == "sleep\n" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the first incarnation (pid %d) never became sleep", first.PID)
				}
			}
			if err := os.WriteFile(gate, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for gen := first.Generation; gen < first.Generation+2; gen++ {
				ex := h.next(plugin.EventExit, "loop")
				if ex.Generation != gen || !ex.Respawned {
					t.Fatalf("exit event %+v; want generation %d, respawned by the plugin (slot %+v)",
						ex, gen, h.slot(first.Slot))
				}
				if sp := h.nextOf("loop"); sp.Kind != plugin.EventSpawn || sp.Generation != gen+1 {
					t.Fatalf("event after the exit of generation %d: %+v; want the spawn of generation %d", gen, sp, gen+1)
				}
			}
			if err := h.s.Stop(context.Background(), "loop", unix.SIGKILL, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}
