package main

// Fault tests of what hbd trusts in its state directory and who may talk
// to its plugin: the plugin's socket (mode, SO_PEERCRED, one hbd at a
// time), the plugin.json record (complete identity before any signal), the
// state directory's owner and mode, and the one-hbd-per-state-dir lock.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/shm"
)

// buildPluginCall builds testdata/plugincall (a gRPC client that asks the
// plugin to Spawn) into dir and returns its path.
func buildPluginCall(t *testing.T, dir string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "plugincall")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/hbd/testdata/plugincall")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build plugincall: %v\n%s", err, b)
	}
	return out
}

// pluginRecord reads the harness's plugin.json.
func pluginRecord(t *testing.T, h *Harness) (pid int, addr string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.StateDir, "plugin.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		PID  int    `json:"pid"`
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("plugin.json: %v", err)
	}
	return rec.PID, rec.Addr
}

// umaskHbd makes the harness run hbd through a shell that sets umask
// first, as an operator's shell or unit file might.
func umaskHbd(t *testing.T, h *Harness, umask string) {
	t.Helper()
	wrapper := filepath.Join(h.Dir, "hbd-umask")
	script := fmt.Sprintf("#!/bin/sh\numask %s\nexec %q \"$@\"\n", umask, h.HBD)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	h.HBD = wrapper
}

// waitStartOrExit waits until hbd d exits or logs that it is ready, and
// reports whether it exited.
func waitStartOrExit(h *Harness, d *Hbd) (exited bool) {
	h.T.Helper()
	h.Eventually("hbd to exit or be ready", func() (bool, string) {
		return d.Exited() || strings.Contains(d.Log(), "hbd ready"), ""
	})
	return !strings.Contains(d.Log(), "hbd ready")
}

// TestFaultPluginSocket: the plugin's gRPC socket runs any command as root
// for whoever may call Spawn on it; it must be hbd's alone even when hbd
// runs under umask 000, and the plugin must refuse other users itself.
func TestFaultPluginSocket(t *testing.T) {
	t.Parallel()
	RequireRoot(t, "running a client as uid 65534")
	rep := newFaultReport(t, "plugin-socket")
	h := NewHarness(t, Options{})
	umaskHbd(t, h, "000")
	h.WriteConfig(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"
`)
	// uid 65534 may enter the harness directory and run plugincall.
	if err := os.Chmod(h.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	call := buildPluginCall(t, filepath.Join(h.Dir, "pub"))
	h.Start()
	h.WaitRunning("a")
	_, sock := pluginRecord(t, h)

	rep.attack(t, "hbd started under umask 000: state_dir and the plugin socket must not open to others", func() {
		for path, want := range map[string]os.FileMode{h.StateDir: 0o700, sock: 0o600} {
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: mode %04o under umask 000; want %04o", path, fi.Mode().Perm(), want)
			}
		}
	})

	const nobody = 65534
	marker := filepath.Join(h.Dir, "pub", "owned")
	rep.attack(t, "uid 65534 calls Spawn on the plugin socket, its file modes opened to everyone", func() {
		// What the modes keep out is tested above; here the plugin's own
		// SO_PEERCRED check must hold.
		if err := os.Chmod(h.StateDir, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(h.StateDir, 0o700)
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(sock, 0o600)
		out, stderr, code := runAs(t, nobody, nobody, call, sock, "intruder",
			"/bin/sh", "-c", "/usr/bin/id -u > "+marker)
		t.Logf("plugincall as uid %d: exit %d: %s%s", nobody, code, out, stderr)
		if code == 0 {
			t.Errorf("uid %d had the plugin spawn a command: %s", nobody, out)
		}
		h.Eventually("the plugin to log the refused peer", func() (bool, string) {
			return strings.Contains(h.PluginLog(), "refused a connection to the plugin socket"), tail(h.PluginLog(), 5)
		})
		if b, err := os.ReadFile(marker); err == nil {
			t.Errorf("the command of uid %d ran, as uid %s", nobody, strings.TrimSpace(string(b)))
		}
	})
	if _, ok := statusByName(h)["intruder"]; ok {
		t.Errorf("hbd's status lists the intruder's service")
	}
	h.WaitRunning("a")
}

// TestFaultStateDir: what hbd reads from state_dir can make it signal a
// PID at start, so a forged record must never kill a process, and a
// state_dir that others can write is refused.
func TestFaultStateDir(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "state-dir")
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"
`)

	rep.attack(t, "forged plugin.json names an innocent process (public argv; start_time and exe left out)", func() {
		innocent := exec.Command("sleep", "1000")
		if err := innocent.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { innocent.Process.Kill(); innocent.Wait() }()
		pid := innocent.Process.Pid
		start, err := shm.StartTime(pid)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(h.StateDir, 0o700); err != nil {
			t.Fatal(err)
		}
		forged := fmt.Sprintf(`{"protocol":"grpc","protocol_version":1,"network":"unix","addr":%q,"pid":%d,"args":["1000"]}`,
			filepath.Join(h.StateDir, "plugin1"), pid)
		if err := os.WriteFile(filepath.Join(h.StateDir, "plugin.json"), []byte(forged), 0o600); err != nil {
			t.Fatal(err)
		}
		d := h.Start()
		h.WaitRunning("a")
		if now, err := shm.StartTime(pid); err != nil || now != start || !live(pid) {
			t.Errorf("the innocent sleep (pid %d) was killed at hbd's start (%v)", pid, err)
		}
		if ppid, _ := pluginRecord(t, h); ppid == pid {
			t.Errorf("hbd took the innocent pid %d for its plugin", pid)
		}
		want := "not reattaching to the recorded plugin; starting a new one"
		if !strings.Contains(d.Log(), want) || !strings.Contains(d.Log(), "no start_time") {
			t.Errorf("hbd's log lacks %q with the missing field:\n%s", want, tail(d.Log(), 10))
		}
		d.Stop()
	})

	rep.attack(t, "state_dir made group-writable (mode 0770) before hbd starts", func() {
		if err := os.Chmod(h.StateDir, 0o770); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(h.StateDir, 0o700)
		d := h.StartProcess()
		if !waitStartOrExit(h, d) {
			t.Errorf("hbd started on a group-writable state_dir:\n%s", tail(d.Log(), 10))
			return
		}
		if code := d.Wait(); code == 0 {
			t.Errorf("hbd exited 0 on a group-writable state_dir")
		}
		for _, want := range []string{h.StateDir, "writable by group or others", "chmod 0700"} {
			if !strings.Contains(d.Log(), want) {
				t.Errorf("hbd's error lacks %q:\n%s", want, tail(d.Log(), 10))
			}
		}
	})

	h.Run("state_dir of another user", func(t *testing.T) {
		RequireRoot(t, "chown to uid 65534")
		rep.attack(t, "state_dir owned by uid 65534", func() {
			if err := os.Chown(h.StateDir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			defer os.Chown(h.StateDir, 0, 0)
			d := h.StartProcess()
			if !waitStartOrExit(h, d) {
				t.Errorf("hbd started on a state_dir owned by uid 65534:\n%s", tail(d.Log(), 10))
				return
			}
			if code := d.Wait(); code == 0 || !strings.Contains(d.Log(), "owned by uid 65534") {
				t.Errorf("hbd on a state_dir owned by uid 65534: exit %d:\n%s", code, tail(d.Log(), 10))
			}
		})
	})
}

// TestFaultTwoHbd: two hbd on one state_dir (with different control
// sockets) would both drive the same plugin and undo each other; the
// second must stop at once, and the plugin serves one hbd at a time.
func TestFaultTwoHbd(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "two-hbd")
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"
`)
	first := h.Start()
	before := h.WaitRunning("a")["a"]
	pluginPID, sock := pluginRecord(t, h)

	rep.attack(t, "a second hbd with another control socket on the same state_dir", func() {
		socket2 := filepath.Join(h.Dir, "hbd2.sock")
		config2 := filepath.Join(h.Dir, "hb2.toml")
		text := strings.Replace(h.ConfigText(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"
`), fmt.Sprintf("socket    = %q", h.Socket), fmt.Sprintf("socket    = %q", socket2), 1)
		h.WriteFile(config2, text)
		saved := h.Config
		h.Config = config2
		second := h.StartProcess()
		h.Config = saved
		if !waitStartOrExit(h, second) {
			t.Errorf("a second hbd started on %s beside hbd %d:\n%s", h.StateDir, first.PID, tail(second.Log(), 10))
			second.Signal(syscall.SIGQUIT) // leave the plugin to the first
			second.Wait()
			return
		}
		if code := second.Wait(); code == 0 {
			t.Errorf("the second hbd exited 0")
		}
		want := fmt.Sprintf("state directory %s is in use by another hbd (pid %d)", h.StateDir, first.PID)
		if !strings.Contains(second.Log(), want) {
			t.Errorf("the second hbd's error lacks %q:\n%s", want, tail(second.Log(), 10))
		}
	})
	if first.Exited() {
		t.Fatalf("the first hbd exited:\n%s", first.Log())
	}
	if after := h.ServiceStatus("a"); after.PID != before.PID || !IsRunning(after) {
		t.Errorf("service a: %+v after the second hbd, was pid %d", after, before.PID)
	}
	if now, _ := pluginRecord(t, h); now != pluginPID || h.Health().Plugin.PID != pluginPID {
		t.Errorf("plugin pid %d after the second hbd, was %d", now, pluginPID)
	}

	h.Run("second host connection", func(t *testing.T) {
		RequireRoot(t, "the plugin socket is root's")
		call := buildPluginCall(t, t.TempDir())
		rep.attack(t, "another process of hbd's uid calls Spawn on the plugin while hbd is connected", func() {
			ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, call, sock, "intruder", "/bin/true").CombinedOutput()
			t.Logf("plugincall as root: %v: %s", err, out)
			if err == nil {
				t.Errorf("a second host had the plugin spawn a command: %s", out)
			} else if !strings.Contains(string(out), fmt.Sprintf("another hbd is connected to the plugin (hbd pid %d)", first.PID)) {
				t.Errorf("plugincall's error does not name the connected hbd %d: %s", first.PID, out)
			}
		})
		if h.Health().Plugin.PID != pluginPID || !h.Health().OK {
			t.Errorf("hbd's health after the second host: %+v", h.Health())
		}
	})
}
