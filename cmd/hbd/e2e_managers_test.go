package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
)

// manager is how one service manager runs the bundled hbd unit: start it,
// restart hbd keeping the services, stop hbd, and end the manager.
type manager struct {
	name  string
	bins  []string
	setup func(h *Harness, root string) (start *exec.Cmd, keep, stop, end []string)
}

// bundled reads a file of contrib/ with the installed paths replaced by the
// test's binaries and configuration.
func bundled(t *testing.T, h *Harness, rel string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "contrib", rel))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "/usr/local/bin/hbd -c /etc/hb/hb.toml", h.HBD+" -c "+h.Config)
	s = strings.ReplaceAll(s, "/usr/local/bin/hbctl -s /run/hb/hbd.sock", h.HBCtl+" -s "+h.Socket)
	if strings.Contains(s, "/usr/local/bin/") || strings.Contains(s, "/etc/hb/") {
		t.Fatalf("contrib/%s: an installed path is left after the replacement:\n%s", rel, s)
	}
	return s
}

func serviceDir(t *testing.T, h *Harness, root, rel string) string {
	dir := filepath.Join(root, "hbd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(bundled(t, h, rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

var managers = []manager{
	{name: "runit", bins: []string{"runsv", "sv"}, setup: func(h *Harness, root string) (*exec.Cmd, []string, []string, []string) {
		dir := serviceDir(h.T, h, root, "runit/hbd/run")
		return exec.Command("runsv", dir), []string{"sv", "quit", dir}, []string{"sv", "-w", "60", "down", dir}, []string{"sv", "exit", dir}
	}},
	{name: "s6", bins: []string{"s6-supervise", "s6-svc"}, setup: func(h *Harness, root string) (*exec.Cmd, []string, []string, []string) {
		dir := serviceDir(h.T, h, root, "s6/hbd/run")
		return exec.Command("s6-supervise", dir), []string{"s6-svc", "-q", dir}, []string{"s6-svc", "-wD", "-T", "60000", "-d", dir}, []string{"s6-svc", "-x", dir}
	}},
	{name: "supervisord", bins: []string{"supervisord", "supervisorctl"}, setup: func(h *Harness, root string) (*exec.Cmd, []string, []string, []string) {
		if err := os.MkdirAll(root, 0o755); err != nil {
			h.T.Fatal(err)
		}
		conf := filepath.Join(root, "supervisord.conf")
		prog := strings.ReplaceAll(bundled(h.T, h, "supervisord/hbd.conf"), "/var/log/hbd.log", filepath.Join(root, "hbd.log"))
		text := fmt.Sprintf(`[unix_http_server]
file=%[1]s/sup.sock
[supervisord]
nodaemon=true
logfile=%[1]s/supervisord.log
pidfile=%[1]s/supervisord.pid
childlogdir=%[1]s
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://%[1]s/sup.sock
%[2]s`, root, prog)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			h.T.Fatal(err)
		}
		ctl := []string{"supervisorctl", "-c", conf}
		return exec.Command("supervisord", "-n", "-c", conf), append(ctl, "signal", "QUIT", "hbd"),
			append(ctl, "stop", "hbd"), append(ctl, "shutdown")
	}},
}

// TestManagers: under runit, s6 and supervisord, with the bundled files,
// "stop" stops every service in reverse order (then the plugin), and the
// documented restarts (the manager's SIGQUIT, and hbctl reexec) keep every
// service running. The systemd unit is checked by systemd-analyze verify.
func TestManagers(t *testing.T) {
	for _, m := range managers {
		t.Run(m.name, func(t *testing.T) {
			for _, b := range m.bins {
				if _, err := exec.LookPath(b); err != nil {
					t.Skipf("%s not installed (Debian: %s)", b, m.name)
				}
			}
			t.Parallel()
			testManager(t, m)
		})
	}
	t.Run("systemd", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze not installed")
		}
		h := NewHarness(t, Options{})
		unit := filepath.Join(h.Dir, "hbd.service")
		text := bundled(t, h, "systemd/hbd.service")
		if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"KillSignal=SIGTERM", "KillMode=process", "reexec", "TimeoutStopSec=300"} {
			if !strings.Contains(text, want) {
				t.Errorf("hbd.service lacks %q", want)
			}
		}
		out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
}

func testManager(t *testing.T, m manager) {
	h := NewHarness(t, Options{})
	order := filepath.Join(h.Dir, "stop-order")
	var svcs strings.Builder
	names := []string{"first", "second", "third"}
	for _, n := range names {
		fmt.Fprintf(&svcs, "[service.%s]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'echo %s >> %s; exit 0' TERM; while :; do sleep 0.05; done\"]\nstart_secs = \"100ms\"\nstop_timeout = \"5s\"\n\n", n, n, order)
	}
	h.WriteConfig(svcs.String())
	root := filepath.Join(h.Dir, m.name)
	start, keep, stop, end := m.setup(h, root)
	start.Env = append(os.Environ(), "HB_SHM="+h.Shm)
	start.Stdout, start.Stderr = os.Stderr, os.Stderr
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { start.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			start.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				start.Process.Kill()
				<-done
			}
		}
	})
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
	}
	health := func(what string, ok func(api.Health) bool) api.Health {
		var last api.Health
		h.Eventually(what, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			hl, err := h.Client().Health(ctx)
			if err != nil || hl.Plugin == nil {
				return false, fmt.Sprint(err)
			}
			last = hl
			return ok(hl), fmt.Sprintf("%+v", hl)
		})
		h.Track(last.PID)
		h.Track(last.Plugin.PID)
		return last
	}
	first := health("hbd under "+m.name, func(api.Health) bool { return true })
	before := h.WaitRunning(names...)

	kept := func(how string) {
		t.Helper()
		for _, n := range names {
			// The new hbd answers before it has reconciled every service
			// with the table: wait for the PID it reports.
			st := h.WaitService(n, fmt.Sprintf("%s: pid %d kept", how, before[n].PID),
				func(st api.ServiceStatus) bool { return st.PID == before[n].PID })
			if !Alive(st.PID) {
				t.Errorf("%s: %s is pid %d, not alive", how, n, st.PID)
			}
		}
	}
	run(keep...)
	second := health("a new hbd after "+strings.Join(keep, " "), func(hl api.Health) bool { return hl.PID != first.PID })
	if second.Plugin.PID != first.Plugin.PID {
		t.Errorf("plugin pid %d after the restart, want %d", second.Plugin.PID, first.Plugin.PID)
	}
	kept(strings.Join(keep, " "))

	if r := h.Ctl("reexec"); r.Code != 0 || !strings.Contains(r.Stdout, "hbd re-executed") {
		t.Errorf("hbctl reexec: %v", r)
	}
	third := health("the re-executed hbd", func(hl api.Health) bool { return !hl.Started.Equal(second.Started) })
	if third.PID != second.PID {
		t.Errorf("hbctl reexec: hbd pid %d, want the same %d", third.PID, second.PID)
	}
	kept("hbctl reexec")

	run(stop...)
	b, _ := os.ReadFile(order)
	if got := strings.Fields(string(b)); strings.Join(got, " ") != "third second first" {
		t.Errorf("%q: services stopped in the order %q, want third second first", stop, got)
	}
	for _, n := range names {
		h.WaitGone(before[n].PID)
	}
	h.WaitGone(third.Plugin.PID)
	if hdr := h.Table().Header(); hdr.WriterPID != 0 {
		t.Errorf("writer_pid %d after the stop, want 0 (a clean stop)", hdr.WriterPID)
	}
	run(end...)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not exit after %q", m.name, end)
	}
}
