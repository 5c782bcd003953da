package host

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
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
