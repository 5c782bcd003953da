package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// childModeEnv selects a child mode when the test binary runs as a
// supervised child (see runChild).
const childModeEnv = "HB_SHIM_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// blockForever blocks until the process is killed. Not select{}: without
// cgo the runtime would call that a deadlock and crash the child.
// testParentEnv names the test binary that started a helper (its PID).
const testParentEnv = "HB_TEST_PARENT"

// blockForever blocks until the test binary that started this helper
// ($HB_TEST_PARENT) exits, so that no helper outlives the test run, not even
// one whose test failed before it stopped its services.
func blockForever() {
	if pid, err := strconv.Atoi(os.Getenv(testParentEnv)); err == nil {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			for {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if n, err := unix.Poll(fds, -1); n > 0 || (err != nil && err != unix.EINTR) {
					os.Exit(0)
				}
			}
		}
		os.Exit(0) // the test binary is gone already
	}
	for {
		time.Sleep(time.Hour)
	}
}

// runChild is the body of the test binary started as a child:
//
//	report     print "out-line" on stdout and "err-line" on stderr, write
//	           HB_* variables and ids to $HB_TEST_OUT, then block
//	sleep      block until killed
//	exit       exit $HB_EXIT_CODE
//	usr1       exit 42 on SIGUSR1; $HB_TEST_OUT is created once it is caught
//	mainpid    a launcher: with $HB_TEST_MAINPID "child", start a
//	           mainpid-daemon and exit 0 once it has written $HB_TEST_OUT;
//	           else send "MAINPID=$HB_TEST_MAINPID\nREADY=1" and block
//	mainpid-daemon  send "MAINPID=<its pid>\nREADY=1", write its PID to
//	           $HB_TEST_OUT, then block
//	oldplugin  be a plugin that dies: open a Shim on $HB_TEST_SHMDIR, spawn
//	           "adoptee" (/bin/sleep), write its PID to $HB_TEST_OUT, close
//	           the Shim without stopping it, then block (the adoptee stays
//	           this process's child, not the test's)
func runChild(mode string) int {
	switch mode {
	case "report":
		fmt.Fprintln(os.Stdout, "out-line")
		fmt.Fprintln(os.Stderr, "err-line")
		var b strings.Builder
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "HB_") && !strings.HasPrefix(kv, "HB_TEST") && !strings.HasPrefix(kv, childModeEnv) {
				b.WriteString(kv + "\n")
			}
		}
		groups, _ := os.Getgroups()
		sort.Ints(groups)
		fmt.Fprintf(&b, "pid=%d\npgid=%d\nuid=%d\ngid=%d\ngroups=%v\n",
			os.Getpid(), syscall.Getpgrp(), os.Getuid(), os.Getgid(), groups)
		if err := writeFileAtomic(os.Getenv("HB_TEST_OUT"), b.String()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		blockForever()
	case "sleep":
		blockForever()
	case "beat":
		return beatChild()
	case "notify":
		return notifyChild()
	case "mainpid":
		return mainPIDLauncher()
	case "mainpid-daemon":
		return mainPIDDaemon()
	case "exit":
		n, _ := strconv.Atoi(os.Getenv("HB_EXIT_CODE"))
		return n
	case "usr1":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR1)
		if err := writeFileAtomic(os.Getenv("HB_TEST_OUT"), "ready\n"); err != nil {
			return 2
		}
		<-c
		return 42
	case "oldplugin":
		s, err := New(Options{ShmName: "t", ShmDir: os.Getenv("HB_TEST_SHMDIR"), Slots: 8, Detector: connector.DetectPidfd})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		res, err := s.Spawn(context.Background(), plugin.Spec{
			Name: "adoptee", Command: []string{"/bin/sleep", "1000"}, UID: -1, GID: -1,
			Env: []string{"PATH=/usr/bin:/bin"}, Stdout: "null", Stderr: "null",
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		s.Close()
		if err := writeFileAtomic(os.Getenv("HB_TEST_OUT"), strconv.Itoa(res.PID)); err != nil {
			return 2
		}
		blockForever()
	}
	fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childModeEnv, mode)
	return 2
}

func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitFor polls cond until it holds, failing the test after 10 s. It bounds
// a wait for a state; it is not a timing assertion.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// harness is one Shim on a private table, with its event stream.
type harness struct {
	t      *testing.T
	s      *Shim
	dir    string
	events <-chan plugin.Event
	cancel context.CancelFunc
}

// detectors are the configurations the behavioural tests run under: the
// pidfd loop alone (works everywhere) and auto (the proc connector too when
// it is usable here).
var detectors = []connector.Detector{connector.DetectPidfd, connector.DetectAuto}

func newHarness(t *testing.T, det connector.Detector, dir string) *harness {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	return openHarness(t, Options{ShmName: "t", ShmDir: dir, Slots: 16, Detector: det}, dir)
}

func openHarness(t *testing.T, opts Options, dir string) *harness {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Events(ctx, 0)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	h := &harness{t: t, s: s, dir: dir, events: ch, cancel: cancel}
	t.Cleanup(h.close)
	return h
}

// close stops every service still running (so no process outlives the
// test), then closes the Shim.
func (h *harness) close() {
	if h.s.closed.Load() {
		return
	}
	slots, _ := h.s.List(context.Background())
	for _, sl := range slots {
		if sl.PID != 0 && sl.Flags&shm.SlotBridged == 0 { // a bridged program is its manager's
			if err := h.s.Stop(context.Background(), sl.Name, unix.SIGKILL, 5*time.Second); err != nil {
				h.t.Errorf("cleanup: stop %s: %v", sl.Name, err)
			}
		}
	}
	h.cancel()
	if err := h.s.Close(); err != nil {
		h.t.Errorf("Close: %v", err)
	}
}

// self is the test binary, started as a child in the given mode.
func self(t testing.TB) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// childSpec is a Spec running the test binary in mode.
func (h *harness) childSpec(name, mode string, env ...string) plugin.Spec {
	base := append(os.Environ(), childModeEnv+"="+mode)
	if os.Getenv(testParentEnv) == "" {
		base = append(base, testParentEnv+"="+strconv.Itoa(os.Getpid()))
	}
	return plugin.Spec{
		Name:    name,
		Command: []string{self(h.t), "-test.run=^$"},
		Env:     append(base, env...),
		UID:     -1,
		GID:     -1,
		Stdout:  "null",
		Stderr:  "null",
	}
}

func (h *harness) spawn(spec plugin.Spec) plugin.SpawnResult {
	h.t.Helper()
	res, err := h.s.Spawn(context.Background(), spec)
	if err != nil {
		h.t.Fatalf("Spawn %s: %v", spec.Name, err)
	}
	return res
}

// next returns the next event of kind for service name, skipping others.
func (h *harness) next(kind plugin.EventKind, name string) plugin.Event {
	h.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-h.events:
			if !ok {
				h.t.Fatalf("event stream closed while waiting for %v of %s", kind, name)
			}
			if ev.Kind == kind && ev.Name == name {
				return ev
			}
		case <-timeout:
			h.t.Fatalf("timed out waiting for %v event of %s", kind, name)
		}
	}
}

// nextOf returns the next event of service name, of any kind.
func (h *harness) nextOf(name string) plugin.Event {
	h.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-h.events:
			if !ok {
				h.t.Fatalf("event stream closed while waiting for an event of %s", name)
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			h.t.Fatalf("timed out waiting for an event of %s", name)
		}
	}
}

func (h *harness) slot(i int) shm.Slot { return h.s.w.Snapshot(i) }

// exiting reports whether process pid has started to exit (PF_EXITING in
// /proc/PID/stat, field 9) and is not reaped yet.
func exiting(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&0x4 != 0 // PF_EXITING
}

// killPending reports whether a SIGKILL is pending for process pid (its
// shared or main thread's pending set, /proc/PID/status): it has been killed
// and has not exited yet.
func killPending(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != "SigPnd" && k != "ShdPnd" {
			continue
		}
		if m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && m&(1<<(unix.SIGKILL-1)) != 0 {
			return true
		}
	}
	return false
}

// gone reports whether pid no longer exists, not even as a zombie.
func gone(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return errors.Is(err, os.ErrNotExist)
}

// deadOrDying: pid is a zombie, exiting or gone. Asked in that order: a
// reap after gone() said "there" would make exiting() fail to read and
// answer "alive".
func deadOrDying(pid int) bool { return exiting(pid) || gone(pid) }

func readFile(t testing.TB, path string) string {
	t.Helper()
	var b []byte
	waitFor(t, path, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil
	})
	return string(b)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (credentials / another user's processes); run the tests as root")
	}
}

// openFDs maps this process's open descriptors to what they refer to.
func openFDs(t testing.TB) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]string{}
	for _, e := range ents {
		// The descriptor ReadDir used is gone by now: Readlink fails.
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds[e.Name()] = target
		}
	}
	return fds
}

// newFDs lists the descriptors in after that were not open in before (a
// descriptor closed meanwhile, by a finalizer say, is not a leak).
func newFDs(before, after map[string]string) []string {
	var leaked []string
	for fd, target := range after {
		if before[fd] != target {
			leaked = append(leaked, fd+" → "+target)
		}
	}
	return leaked
}

func tempPath(t testing.TB, name string) string { return filepath.Join(t.TempDir(), name) }

// TestHelpersDieWithTheTestBinary: a blocking helper exits once the process
// named by HB_TEST_PARENT (the test binary) has exited, so a failed test
// leaves no helper running after the run.
func TestHelpersDieWithTheTestBinary(t *testing.T) {
	parent := exec.Command("/bin/sleep", "0.2")
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(self(t), "-test.run=^$")
	helper.Env = append(os.Environ(), childModeEnv+"=sleep", testParentEnv+"="+strconv.Itoa(parent.Process.Pid))
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- helper.Wait() }()
	parent.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("helper: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		helper.Process.Kill()
		t.Fatal("the helper outlived the process named by " + testParentEnv)
	}
}
