package shim

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
)

// The process groups the shim remembers (for the last sweep of strays at a
// clean close) are dropped by the beat once their leader has exited and
// they are empty; a running service's group is kept and never looked at.
func TestGroupsDroppedWhenEmpty(t *testing.T) {
	h := newHarness(t, connector.DetectPidfd, "")
	gone := h.spawn(h.childSpec("gone", "sleep"))
	stays := h.spawn(h.childSpec("stays", "sleep"))
	has := func(m map[int]struct{}, pid int) bool {
		h.s.mu.Lock()
		defer h.s.mu.Unlock()
		_, ok := m[pid]
		return ok
	}
	if !has(h.s.groups, gone.PID) || !has(h.s.groups, stays.PID) {
		t.Fatal("spawned services' groups are not remembered")
	}
	if err := h.s.Stop(context.Background(), "gone", unix.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stopped service's empty group to be dropped", func() bool {
		return !has(h.s.groups, gone.PID) && !has(h.s.ended, gone.PID)
	})
	if !has(h.s.groups, stays.PID) || has(h.s.ended, stays.PID) {
		t.Error("a running service's group was dropped or marked ended")
	}
}
