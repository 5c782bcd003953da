package shim

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TestStopCrashLoop: Stop of a service the plugin respawns in a tight loop
// (it exits at once), at any moment of the loop, ends it: the slot reads
// stopped with PID 0 and nothing respawns it afterwards.
func TestStopCrashLoop(t *testing.T) {
	for _, mk := range []struct {
		name string
		h    func(t *testing.T) *harness
	}{
		{"process-group", func(t *testing.T) *harness { return newHarness(t, 0, "") }},
		{"cgroup", cgroupHarness},
	} {
		t.Run(mk.name, func(t *testing.T) {
			h := mk.h(t)
			spec := plugin.Spec{Name: "loop", Command: []string{"/bin/false"}, UID: -1, GID: -1,
				Stdout: "null", Stderr: "null", Respawn: plugin.Respawn{Enabled: true}, RunningAtSpawn: true}
			for round := range 50 {
				res := h.spawn(spec)
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				if err := h.s.Stop(context.Background(), "loop", unix.SIGTERM, 5*time.Second); err != nil {
					t.Fatalf("round %d: Stop: %v", round, err)
				}
				s := h.slot(res.Slot)
				time.Sleep(5 * time.Millisecond)
				later := h.slot(res.Slot)
				if s.PID != 0 || s.State != shm.StateStopped || later.Generation != s.Generation {
					t.Fatalf("round %d: after Stop the slot is %+v, then %+v; want stopped, PID 0, nothing respawned",
						round, s, later)
				}
			}
		})
	}
}
