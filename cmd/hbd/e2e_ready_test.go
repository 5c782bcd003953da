package main

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// redisPing sends PING on redis's unix socket and reports whether it
// answered +PONG.
func redisPing(sock string) bool {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.TrimSpace(line) == "+PONG"
}

// TestReadyNotifyRedis: a real daemon with sd_notify support,
// redis-server --supervised systemd, under ready = "notify": its slot's
// PID appears only once it is ready, and a PING at that moment is
// answered; its STATUS= text shows in hbctl status.
func TestReadyNotifyRedis(t *testing.T) {
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (Debian: redis-server): skipping the sd_notify test with a real daemon")
	}
	t.Parallel()
	h := NewHarness(t, Options{})
	sock := filepath.Join(h.Dir, "redis.sock")
	h.WriteConfig(fmt.Sprintf(`
[service.redis]
command       = [%q, "--supervised", "systemd", "--port", "0", "--unixsocket", %q, "--save", "", "--appendonly", "no", "--dir", %q]
ready         = "notify"
ready_timeout = "30s"
start_secs    = "0s"
`, redis, sock, h.Dir))
	h.Start()
	pid := h.WaitSlot("redis", "redis's PID published", func(s shm.Slot) bool { return s.PID != 0 }).PID
	// The PID is published at READY=1: redis answers now, not later.
	if !redisPing(sock) {
		t.Fatalf("slot reads pid %d but redis does not answer PING on %s", pid, sock)
	}
	st := h.WaitService("redis", "running with its STATUS= text", func(st api.ServiceStatus) bool {
		return IsRunning(st) && st.StatusText != ""
	})
	if st.PID != int(pid) || !strings.Contains(st.StatusText, "Ready") {
		t.Errorf("status %+v; want pid %d and redis's STATUS= (Ready to accept connections)", st, pid)
	}
	if out := h.MustCtl("status", "redis"); !strings.Contains(out, "status: "+st.StatusText) {
		t.Errorf("hbctl status does not show the STATUS= text:\n%s", out)
	}
}

// TestReadyNotifyTool: a service that declares readiness with the
// systemd-notify tool after a second: until then the slot's PID word is 0
// and its state starting (a peer's one load says "not ready"), and hbctl
// status says it waits for READY=1; then the PID appears.
func TestReadyNotifyTool(t *testing.T) {
	tool, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Skip("systemd-notify not installed: skipping")
	}
	t.Parallel()
	h := NewHarness(t, Options{})
	flag := filepath.Join(h.Dir, "go")
	h.WriteConfig(fmt.Sprintf(`
[service.late]
command    = ["/bin/sh", "-c", "while [ ! -e %s ]; do sleep 0.01; done; %s --ready --status=warm; exec sleep infinity"]
ready      = "notify"
start_secs = "0s"
`, flag, tool))
	h.Start()
	st := h.WaitService("late", "spawned, waiting for READY=1", func(st api.ServiceStatus) bool {
		return st.State == "starting" && st.Reason == "waiting for readiness (notify)"
	})
	if st.PID != 0 {
		t.Errorf("not ready: status pid %d, want 0", st.PID)
	}
	if s := h.Slot("late"); s.PID != 0 || s.State != shm.StateStarting || s.Generation == 0 {
		t.Fatalf("not ready: slot %+v; want pid 0, starting, spawned", s)
	}
	_, wait := h.StartCtl("wait", "late", "--ready", "--timeout", "30s")
	h.WriteFile(flag, "")
	if r := wait(); r.Code != 0 {
		t.Errorf("hbctl wait late --ready: %v", r)
	}
	s := h.WaitSlot("late", "ready", func(s shm.Slot) bool { return s.PID != 0 })
	st = h.WaitService("late", "running, status warm", func(st api.ServiceStatus) bool { return IsRunning(st) && st.StatusText == "warm" })
	if st.PID != int(s.PID) {
		t.Errorf("status pid %d, slot pid %d", st.PID, s.PID)
	}
}

// TestAfterChain: a chain of three, c after b after a, where a takes its
// time to become ready (ready = "notify", READY=1 only once the test says
// so): b and c are held back, not spawned, until a is running; then b
// starts, and c once b runs.
func TestAfterChain(t *testing.T) {
	tool, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Skip("systemd-notify not installed: skipping")
	}
	t.Parallel()
	h := NewHarness(t, Options{})
	flag := filepath.Join(h.Dir, "go")
	h.WriteConfig(fmt.Sprintf(`
[service.c]
command    = "sleep infinity"
start_secs = "0s"
after      = ["b"]

[service.b]
command    = "sleep infinity"
start_secs = "200ms"
after      = ["a"]

[service.a]
command    = ["/bin/sh", "-c", "while [ ! -e %s ]; do sleep 0.01; done; %s --ready; exec sleep infinity"]
ready      = "notify"
start_secs = "0s"
`, flag, tool))
	h.Start()
	h.WaitService("a", "spawned, not ready", func(st api.ServiceStatus) bool { return st.Reason == "waiting for readiness (notify)" })
	for _, name := range []string{"b", "c"} {
		st := h.ServiceStatus(name)
		if st.Generation != 0 || st.PID != 0 || !strings.Contains(st.Reason, "(after)") {
			t.Fatalf("%s started before a was ready: %+v", name, st)
		}
	}
	h.WriteFile(flag, "")
	up := h.WaitRunning("a", "b", "c")
	h.SlotInState("a", shm.StateRunning)
	// b was spawned after a was running, c after b.
	if !up["b"].Since.After(up["a"].Since) || !up["c"].Since.After(up["b"].Since) {
		t.Errorf("running since: a %v, b %v, c %v; want in that order", up["a"].Since, up["b"].Since, up["c"].Since)
	}
}

// TestReadyNotifyMainPID: a launcher starts its daemon and exits 0 once
// the daemon has said MAINPID=<itself> and READY=1 (systemd-notify
// --pid): the slot and hbctl status name the daemon, never the launcher,
// whose exit is no exit of the service; the daemon's death is, and the
// policy restarts the service.
func TestReadyNotifyMainPID(t *testing.T) {
	tool, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Skip("systemd-notify not installed: skipping")
	}
	t.Parallel()
	h := NewHarness(t, Options{})
	flag := filepath.Join(h.Dir, "up")
	h.WriteConfig(fmt.Sprintf(`
[service.fork]
command    = ["/bin/sh", "-c", "rm -f %[1]s; sh -c '%[2]s --pid=$$ --ready; touch %[1]s; exec sleep infinity' & while [ ! -e %[1]s ]; do sleep 0.01; done; exit 0"]
ready      = "notify"
start_secs = "0s"
restart    = "always"
`, flag, tool))
	h.Start()
	s := h.WaitSlot("fork", "the daemon published", func(s shm.Slot) bool { return s.PID != 0 })
	h.Track(int(s.PID))
	// The daemon: the inner sh, which becomes sleep (the launcher never does).
	h.Eventually("the daemon to exec sleep", func() (bool, string) {
		cmd := cmdline(int(s.PID))
		return strings.HasPrefix(cmd, "sleep"), cmd
	})
	st := h.WaitService("fork", "running as the daemon", func(st api.ServiceStatus) bool {
		return IsRunning(st) && st.PID == int(s.PID)
	})
	// The launcher is gone (the daemon was re-parented to the plugin),
	// and its exit was none of the service's.
	h.Eventually("the launcher's exit", func() (bool, string) {
		ps, err := shm.ReadStat(int(s.PID))
		return err == nil && strings.Contains(cmdline(ps.PPID), "plugin"), fmt.Sprintf("daemon's parent %d %q", ps.PPID, cmdline(ps.PPID))
	})
	if st.Exits != 0 || st.Generation != s.Generation {
		t.Fatalf("status %+v; want no exit, generation %d", st, s.Generation)
	}
	h.Kill(int(s.PID), syscall.SIGKILL)
	s2 := h.WaitSlot("fork", "restarted", func(n shm.Slot) bool { return n.Generation > s.Generation && n.PID != 0 })
	h.Track(int(s2.PID))
	if n := h.Slot("fork"); n.LastPID != s.PID || n.LastStatus != 137 || n.Exits != 1 {
		t.Errorf("slot %+v; want one exit, the daemon's (pid %d, 137)", n, s.PID)
	}
}
