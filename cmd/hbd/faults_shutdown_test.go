package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
)

// TestFaultShutdownStrays: a service that leaves a process behind when its
// main process exits (here `sleep 1000 &` and one that ignores SIGTERM)
// does not keep it past hbd's clean stop: the plugin, their subreaper,
// stops and reaps them before it exits, so none is left running or as a
// zombie of init.
func TestFaultShutdownStrays(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "shutdown-strays")
	h := NewHarness(t, Options{})
	pidFile := h.Dir + "/strays"
	h.WriteConfig(fmt.Sprintf(`
[service.leaver]
command    = ["sh", "-c", "sleep 1000 & a=$!; sh -c 'trap \"\" TERM; exec sleep 1001' & echo $a $! > %[1]s.tmp; mv %[1]s.tmp %[1]s; exit 0"]
restart    = "never"
start_secs = "0s"
kill_mode  = "process-group" # in a cgroup the strays die with the main process
`, pidFile))
	d := h.Start()
	pluginPID(h)
	var strays []int
	h.Eventually("the strays' pids", func() (bool, string) {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false, err.Error()
		}
		strays = nil
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			strays = append(strays, n)
		}
		return len(strays) == 2, string(b)
	})
	for _, pid := range strays {
		h.Track(pid)
	}
	h.WaitService("leaver", "exited", func(st api.ServiceStatus) bool { return st.PID == 0 && st.Exits > 0 })
	rep.fault(t, func() {
		start := time.Now()
		d.Signal(syscall.SIGTERM)
		if code := d.Wait(); code != 0 {
			t.Fatalf("hbd exited %d after SIGTERM:\n%s", code, d.Log())
		}
		rep.note("stop_ms", time.Since(start).Milliseconds())
		for _, pid := range strays {
			if Alive(pid) || h.stillThere(pid) {
				st, _ := readStat(pid)
				t.Errorf("stray %d (%s) outlived hbd's stop: state %c, parent %d", pid, cmdline(pid), st.State, st.PPID)
			}
		}
		if l := Lines(h.PluginLog(), "outlived its service's stop"); len(l) != 1 || !strings.Contains(l[0], "sleep 1001") {
			t.Errorf("plugin log should name the one stray it had to SIGKILL: %q", l)
		}
		checkNothingLeft(h)
	})
}
