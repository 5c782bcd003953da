package host

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/shm"
)

// TestIsChild: a child of this process is one while it runs and as a
// zombie, and isChild reaps nothing; other processes are not.
func TestIsChild(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "read x; exit 0")
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !isChild(pid) {
		t.Error("a running child is not a child")
	}
	w.Close() // it exits
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !isChild(pid) {
		t.Error("a zombie child is not a child")
	}
	if err := cmd.Wait(); err != nil { // still there to reap: isChild reaped nothing
		t.Fatalf("reap the child after isChild: %v", err)
	}
	if isChild(pid) {
		t.Error("a reaped child is still a child")
	}
	if isChild(1) || isChild(os.Getpid()) || isChild(0) {
		t.Error("PID 1, this process or 0 taken for a child")
	}
}

// TestStrayReaperSparesToolChildren: a program hbd runs and waits for
// itself (withTools: a bridged manager's tool) is not reaped by the stray
// reaper, even as a zombie while a SIGCHLD has it run: its own Wait gets its
// status. Not parallel: the stray reaper reaps any zombie child of the test
// process.
func TestStrayReaperSparesToolChildren(t *testing.T) {
	d := newDaemon(&config.Config{}, slog.New(slog.DiscardHandler), "/nonexistent/hbd")
	d.withTools(func() {
		cmd := exec.Command("/bin/sh", "-c", "exit 3")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if st, err := shm.ReadStat(cmd.Process.Pid); err == nil && st.State == 'Z' {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the tool never became a zombie")
			}
		}
		reaped := make(chan struct{})
		go func() { d.reapStrays(); close(reaped) }()
		select {
		case <-reaped:
			t.Error("the stray reaper ran while a tool was in flight")
		case <-time.After(100 * time.Millisecond):
		}
		var ee *exec.ExitError
		if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("the tool's Wait: %v, want exit status 3", err)
		}
	})
}
