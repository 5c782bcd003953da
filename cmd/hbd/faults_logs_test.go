package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/host/api"
)

// The faults of this file attack the log files: links and pipes planted
// under a log name, a log_dir someone else owns, a log_dir on tmpfs and a
// full one.

// victimFile makes a file (root's, when the test runs as root) outside the
// harness's log_dir that a planted link points at.
func victimFile(t *testing.T) (path, content string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "victim")
	content = "root:x:0:0:root:/root:/bin/sh\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, content
}

func wantUntouched(t *testing.T, path, content string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != content {
		head := b[:min(len(b), 64)]
		t.Errorf("victim %s: %d bytes starting %q, %v; want it untouched (%q)", path, len(b), head, err, content)
	}
}

// TestFaultLogSymlink: a symlink planted as a log file, or as the
// rotation's temporary file, is never followed: its target is untouched and
// a spawn that would write through it is refused with an error naming it.
func TestFaultLogSymlink(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "log-symlink")
	h := NewHarness(t, Options{})
	victim, content := victimFile(t)
	if err := os.MkdirAll(h.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(h.LogDir, "linked.out.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(h.LogDir, "chatty.out.log.rotating")); err != nil {
		t.Fatal(err)
	}
	h.WriteConfig(`
[service.linked]
command    = ["sh", "-c", "echo planted-output; exec sleep infinity"]
start_secs = "100ms"

[service.chatty]
command       = ["sh", "-c", "while :; do head -c 8192 /dev/zero | tr '\\0' y; echo; sleep 0.05; done"]
start_secs    = "100ms"
log_max_bytes = "64KiB"
log_backups   = 1

[service.plain]
command    = "sleep infinity"
start_secs = "100ms"
`)
	h.Start()
	h.WaitRunning("plain", "chatty")
	rep.attack(t, "symlink planted as linked.out.log pointing to "+victim, func() {
		st := h.WaitService("linked", "refused", func(st api.ServiceStatus) bool { return st.State == "fatal" })
		for _, want := range []string{filepath.Join(h.LogDir, "linked.out.log") + " is a symlink", "fix: remove"} {
			if !strings.Contains(st.Reason, want) {
				t.Errorf("linked: reason %q; want it to say %q", st.Reason, want)
			}
		}
		r := h.Ctl("status", "linked")
		out := r.Stdout
		if r.Code != 3 {
			t.Errorf("hbctl status of a fatal service: %v; want exit 3", r)
		}
		if !strings.Contains(out, "is a symlink") {
			t.Errorf("hbctl status does not say why linked is refused:\n%s", out)
		}
		wantUntouched(t, victim, content)
	})
	rep.attack(t, "symlink planted as chatty.out.log.rotating (the trim's temporary file) pointing to "+victim, func() {
		backup := filepath.Join(h.LogDir, "chatty.out.log.1")
		h.Eventually("chatty's log to be trimmed into "+backup, func() (bool, string) {
			_, err := os.Lstat(backup)
			return err == nil, fmt.Sprint(err)
		})
		wantUntouched(t, victim, content)
		if st, err := os.Lstat(backup); err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: %v, %v; want a regular file", backup, st.Mode(), err)
		}
	})
}

// TestFaultLogDirOwner: a log_dir the service user owns (and so could plant
// links in) is refused when hbd starts, with the directory and the fix in
// the message, and the plugin and services it left running are untouched;
// once fixed, hbd attaches to them again.
func TestFaultLogDirOwner(t *testing.T) {
	RequireRoot(t, "chown the log_dir to uid 65534")
	t.Parallel()
	rep := newFaultReport(t, "log-dir-owner")
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.app]
command    = "sleep infinity"
start_secs = "100ms"
`)
	d := h.Start()
	pid := h.WaitRunning("app")["app"].PID
	d.Signal(syscall.SIGQUIT)
	d.Wait()
	rep.attack(t, "log_dir chowned to the service user (uid 65534)", func() {
		if err := os.Chown(h.LogDir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		d := h.StartProcess()
		if code := d.Wait(); code == 0 {
			t.Fatalf("hbd started on a log_dir owned by uid 65534:\n%s", d.Log())
		}
		for _, want := range []string{"log_dir " + h.LogDir, "owned by uid 65534", "chown root:root " + h.LogDir} {
			if !strings.Contains(d.Log(), want) {
				t.Errorf("hbd's refusal does not say %q:\n%s", want, d.Log())
			}
		}
		if !Alive(pid) {
			t.Errorf("app (pid %d) died when hbd refused to start", pid)
		}
	})
	rep.attack(t, "log_dir made group-writable (mode 0775)", func() {
		if err := os.Chown(h.LogDir, 0, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(h.LogDir, 0o775); err != nil {
			t.Fatal(err)
		}
		d := h.StartProcess()
		if code := d.Wait(); code == 0 || !strings.Contains(d.Log(), "chmod go-w "+h.LogDir) {
			t.Errorf("hbd on a group-writable log_dir: exit %d, want a refusal naming the fix:\n%s", code, d.Log())
		}
	})
	if err := os.Chmod(h.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.Start()
	if got := h.WaitRunning("app")["app"].PID; got != pid {
		t.Errorf("after the fix, app runs as pid %d; want the same incarnation, %d", got, pid)
	}
}

// TestFaultLogFIFO: a named pipe planted as a log file (nobody reads it) is
// refused at once; it holds up neither another service's respawns nor
// status. (Before, the open waited for a reader: hbd stalled for its 10 s
// call timeout per spawn.)
func TestFaultLogFIFO(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "log-fifo")
	h := NewHarness(t, Options{})
	if err := os.MkdirAll(h.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(h.LogDir, "piped.out.log")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// Runs before the harness's cleanup: a writer still waiting on the
	// pipe (as before the fix) gets its reader and lets hbd stop.
	t.Cleanup(func() {
		if fd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			time.AfterFunc(30*time.Second, func() { unix.Close(fd) })
		}
	})
	h.WriteConfig(`
[service.piped]
command    = "sleep infinity"
start_secs = "100ms"

[service.crasher]
command       = ["sh", "-c", "sleep 0.1; exit 1"]
start_secs    = "0s"
restart_delay = "0s"
start_retries = 0
`)
	h.Start()
	rep.attack(t, "FIFO planted as piped.out.log", func() {
		st := h.WaitService("piped", "refused", func(st api.ServiceStatus) bool { return st.State == "fatal" })
		if !strings.Contains(st.Reason, "named pipe (FIFO)") {
			t.Errorf("piped: reason %q; want it to name the FIFO", st.Reason)
		}
		// The bound: the stall was 10 s (hbd's call timeout) for each
		// call; 3 s leaves ample room for a loaded 2-CPU machine (hbctl
		// start itself may wait up to 1 s for the spawn's outcome).
		const bound = 3 * time.Second
		first := h.ServiceStatus("crasher").Generation
		var slowest time.Duration
		for i := 0; i < 5; i++ {
			// A new spawn through the FIFO each time, then status.
			for _, args := range [][]string{{"start", "piped"}, {"status"}} {
				start := time.Now()
				r := h.Ctl(args...)
				if el := time.Since(start); el > slowest {
					slowest = el
				}
				if args[0] == "status" && r.Code != 3 { // piped is fatal: not as wanted
					t.Fatalf("%v", r)
				}
				if args[0] == "start" && !strings.Contains(r.Stderr+r.Stdout, "named pipe (FIFO)") {
					t.Errorf("hbctl start piped does not say why it failed:\n%v", r)
				}
			}
		}
		if slowest > bound {
			t.Errorf("hbctl start/status took up to %v with a FIFO as a log file; want under %v", slowest, bound)
		}
		start := time.Now()
		h.WaitService("crasher", "respawned 5 more times", func(st api.ServiceStatus) bool { return st.Generation >= first+5 })
		if el := time.Since(start); el > 5*bound {
			t.Errorf("5 respawns of crasher (0.1 s runs) took %v; want under %v", el, 5*bound)
		}
		rep.note("status_slowest", slowest.Round(time.Millisecond))
	})
}

// tmpfsLogDir points the harness's log_dir at a new directory on /dev/shm
// (tmpfs), removed after the test. Call before WriteConfig.
func tmpfsLogDir(t *testing.T, h *Harness) {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skipf("/dev/shm is not a tmpfs here (%v)", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "hbe-log-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h.LogDir = dir
}

// TestFaultLogTmpfs: log_max_bytes holds on tmpfs (where log_dir is by
// default): a running service's log is trimmed on the beat, as on disk.
func TestFaultLogTmpfs(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "log-tmpfs")
	h := NewHarness(t, Options{})
	tmpfsLogDir(t, h)
	const max = 256 << 10
	h.WriteConfig(fmt.Sprintf(`
[service.chatty]
command       = ["sh", "-c", "while :; do head -c 16384 /dev/zero | tr '\\0' z; echo; sleep 0.1; done"]
start_secs    = "100ms"
log_max_bytes = %d
`, max))
	h.Start()
	h.WaitRunning("chatty")
	rep.fault(t, func() {
		live := filepath.Join(h.LogDir, "chatty.out.log")
		h.Eventually("chatty's log on tmpfs to be trimmed (chatty.out.log.2 to appear)", func() (bool, string) {
			st, _ := os.Stat(live)
			_, err := os.Stat(live + ".2")
			return err == nil, fmt.Sprintf("live %d bytes; .2: %v", st.Size(), err)
		})
		// It writes about 160 KiB/s and is trimmed every second: the file
		// stays near the limit, and well under 4 times it.
		var biggest int64
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if st, err := os.Stat(live); err == nil && st.Size() > biggest {
				biggest = st.Size()
			}
		}
		if biggest > 4*max {
			t.Errorf("chatty.out.log reached %d bytes on tmpfs; log_max_bytes = %d", biggest, max)
		}
		rep.note("largest_live_bytes", biggest)
	})
}

// TestFaultLogDirFull: a full log_dir (a 64 KiB tmpfs) is said once in the
// plugin's log and in hbctl status, and cleared when space is freed.
func TestFaultLogDirFull(t *testing.T) {
	RequireRoot(t, "mount a small tmpfs")
	t.Parallel()
	rep := newFaultReport(t, "log-dir-full")
	mnt, err := os.MkdirTemp("", "hbe-full-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k,mode=0755"); err != nil {
		os.Remove(mnt)
		t.Skipf("mount tmpfs: %v", err)
	}
	// Registered before NewHarness, so it runs after hbd and its services
	// are gone (nothing holds a file there any more).
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
		os.Remove(mnt)
	})
	h := NewHarness(t, Options{})
	h.LogDir = mnt
	h.WriteConfig(`
[service.filler]
command       = ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' f; exec sleep infinity"]
start_secs    = "100ms"
log_max_bytes = "1MiB"

[service.quiet]
command    = "sleep infinity"
start_secs = "100ms"
stdout     = "null"
stderr     = "null"
`)
	h.Start()
	h.WaitRunning("filler", "quiet")
	rep.fault(t, func() {
		h.Eventually("hbctl status to say that filler's log_dir is full", func() (bool, string) {
			out := h.Ctl("status", "filler").Stdout
			return strings.Contains(out, "log_dir "+mnt+" is full"), out
		})
		if st := h.ServiceStatus("quiet"); st.LogError != "" {
			t.Errorf("quiet writes no log file, but status says %q", st.LogError)
		}
		time.Sleep(3 * time.Second) // a few more beats: it is said once
		if n := strings.Count(h.PluginLog(), "log_dir is full"); n != 1 {
			t.Errorf("the plugin's log says %d times that the log_dir is full; want once:\n%s", n, tail(h.PluginLog(), 10))
		}
		if err := os.Truncate(filepath.Join(mnt, "filler.out.log"), 0); err != nil {
			t.Fatal(err)
		}
		h.WaitService("filler", "its log_dir to have room again", func(st api.ServiceStatus) bool { return st.LogError == "" })
	})
}
