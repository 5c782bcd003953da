package connector_test

import (
	"fmt"
	"log"
	"os/exec"
	"sync/atomic"
	"syscall"

	"github.com/hbshim/hb/connector"
	"golang.org/x/sys/unix"
)

// Watch a child started with a pidfd: OnExit clears a liveness word first,
// then the parent reaps the child and reads the Exit.
func Example() {
	var alive atomic.Int32 // what a peer would read

	w, err := connector.NewWatcher(connector.Options{
		OnExit: func(e connector.Exit) { alive.Store(0) }, // first, before anything else
	})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	pidfd := -1
	cmd := exec.Command("sleep", "1")
	cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &pidfd}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer unix.Close(pidfd)
	defer cmd.Process.Release()
	alive.Store(int32(cmd.Process.Pid))
	// Watching after Start is safe: an exit that came first is reported at once.
	if err := w.Watch(1, cmd.Process.Pid, pidfd); err != nil {
		log.Fatal(err)
	}

	e := <-w.Exits()
	// The child is a zombie until its parent reaps it.
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &si, unix.WEXITED, nil); err != nil {
		log.Fatal(err)
	}
	fmt.Println(e.Key, e.PID == cmd.Process.Pid, alive.Load(), e.Source)
}
