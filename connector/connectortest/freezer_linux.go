// Package connectortest has helpers for tests of exit detection.
package connectortest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freezerV1 is the cgroup v1 freezer's mount point.
const freezerV1 = "/sys/fs/cgroup/freezer"

// FrozenV1 puts pid in a new cgroup v1 freezer group of its own and freezes
// it. A task frozen by the v1 freezer does not run even for a SIGKILL: the
// signal is delivered, and the task exits only once thawed. The returned
// func thaws it; the group is removed when the test ends. Skips without a
// writable v1 freezer.
func FrozenV1(t testing.TB, pid int) (thaw func()) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(freezerV1, "cgroup.procs")); err != nil {
		t.Skipf("needs the cgroup v1 freezer at %s: %v", freezerV1, err)
	}
	dir := filepath.Join(freezerV1, "hbtest-"+strconv.Itoa(os.Getpid())+"-"+strconv.Itoa(pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("needs a writable cgroup v1 freezer (root): %v", err)
	}
	state := filepath.Join(dir, "freezer.state")
	set := func(s string) {
		if err := os.WriteFile(state, []byte(s), 0o644); err != nil {
			t.Errorf("%s: %v", state, err)
		}
	}
	t.Cleanup(func() {
		set("THAWED")
		// What is still in the group leaves it for the root group before
		// the group is removed: only what the group lists, never a number
		// read earlier (a reaped child's PID may be another's by now).
		// A child that is thawed and dying may keep it busy a moment.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			for _, p := range strings.Fields(string(b)) {
				_ = os.WriteFile(filepath.Join(freezerV1, "cgroup.procs"), []byte(p), 0o644)
			}
			err := os.Remove(dir)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove %s: %v", dir, err)
				return
			}
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	set("FROZEN")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(state)
		if err == nil && strings.TrimSpace(string(b)) == "FROZEN" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q, %v: not frozen", state, b, err)
		}
	}
	return func() { set("THAWED") }
}
