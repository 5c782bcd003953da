package shim

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/connector/connectortest"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// TestKillClearsTheSlotAtTheKill: with the exit tracepoint's kill program, a
// SIGKILL clears the service's slot when the kernel delivers it, before the
// process runs again. The service is frozen, so while its slot already reads
// 0 it has not begun to exit, and no exit is reported. Thawed, it exits and
// is respawned, and the slot's time of death (last_exit_ns) is the kill's,
// from before the thaw.
func TestKillClearsTheSlotAtTheKill(t *testing.T) {
	if err := connector.TraceAvailable(); err != nil {
		t.Skipf("needs the exit tracepoint (root): %v", err)
	}
	h := newHarness(t, connector.DetectTracepoint, "")
	if ok, err := h.s.watcher.KillTraced(); !ok {
		t.Skipf("the kill program does not run here: %v", err)
	}
	spec := h.childSpec("k", "sleep")
	spec.Respawn = plugin.Respawn{Enabled: true}
	first := h.spawn(spec)
	h.next(plugin.EventSpawn, "k")
	thaw := connectortest.FrozenV1(t, first.PID)
	if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); h.slot(first.Slot).PID != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("slot %+v: the PID of a SIGKILLed process stayed", h.slot(first.Slot))
		}
	}
	if exiting(first.PID) {
		t.Fatal("the frozen service has begun to exit: the slot was not cleared at the kill")
	}
	select {
	case ev := <-h.events:
		if ev.Kind == plugin.EventExit {
			t.Fatalf("exit %+v reported while the process is frozen", ev)
		}
	default:
	}
	thawed := shm.MonotonicNs()
	thaw()
	ex := h.next(plugin.EventExit, "k")
	if !ex.Respawned || ex.PID != first.PID || ex.Status != 128+9 {
		t.Fatalf("exit %+v; want pid %d, status 137, respawned", ex, first.PID)
	}
	sl := h.slot(first.Slot)
	if sl.LastPID != uint32(first.PID) || sl.LastExitNs == 0 || sl.LastExitNs >= thawed {
		t.Errorf("slot %+v: want last_pid %d and last_exit_ns before the thaw (%d)", sl, first.PID, thawed)
	}
}
