package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// exitWatch follows one plugin process through a pidfd: exited is closed as
// soon as the process exits, and signals go through the pidfd, so they can
// never reach a process that later got the same PID.
type exitWatch struct {
	pid    int
	logger hclog.Logger
	// f is the pidfd, nonblocking, registered with the runtime's poller;
	// waiting on it parks a goroutine, not a thread.
	f        *os.File
	exited   chan struct{} // closed when the process has exited
	detached chan struct{} // closed by close: the watch ends
	once     sync.Once
}

// newExitWatch takes over pidfd (on success only) and starts watching.
func newExitWatch(pid, pidfd int, logger hclog.Logger) (*exitWatch, error) {
	// A nonblocking pidfd is accepted by the runtime poller (epoll), which
	// reports it readable when the process exits.
	if err := unix.SetNonblock(pidfd, true); err != nil {
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	w := &exitWatch{
		pid:      pid,
		logger:   logger,
		f:        os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(pid)),
		exited:   make(chan struct{}),
		detached: make(chan struct{}),
	}
	go w.run()
	return w, nil
}

func (w *exitWatch) run() {
	rc, err := w.f.SyscallConn()
	if err == nil {
		err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
		if err == nil {
			close(w.exited)
			return
		}
		select {
		case <-w.detached:
			return // close ended the watch
		default:
		}
	}
	// The poller refused the pidfd: block a thread in poll(2) on a copy,
	// which outlives close.
	w.logger.Debug("pidfd not pollable by the runtime; polling it on a thread", "pid", w.pid, "error", err)
	var dup int
	if cerr := w.control(func(fd int) error {
		var derr error
		dup, derr = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return derr
	}); cerr != nil {
		w.logger.Error("cannot watch the plugin's exit", "pid", w.pid, "error", cerr)
		return
	}
	defer unix.Close(dup)
	fds := []unix.PollFd{{Fd: int32(dup), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if err == nil && n > 0 {
			close(w.exited)
			return
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			w.logger.Error("cannot watch the plugin's exit", "pid", w.pid, "error", err)
			return
		}
	}
}

// close ends the watch and releases the pidfd. exited stays open unless the
// exit was already seen.
func (w *exitWatch) close() {
	w.once.Do(func() {
		close(w.detached)
		_ = w.f.Close()
	})
}

func (w *exitWatch) control(fn func(fd int) error) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// kill sends SIGKILL to the process; one that has already exited is not an
// error.
func (w *exitWatch) kill() error {
	err := w.control(func(fd int) error { return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) })
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pidfd_send_signal(%d, SIGKILL): %w", w.pid, err)
	}
	return nil
}

// killAndWait sends SIGKILL and waits, at most exitGrace, for the exit.
func (w *exitWatch) killAndWait() bool {
	if err := w.kill(); err != nil {
		w.logger.Warn("kill plugin", "pid", w.pid, "error", err)
	}
	return waitClosed(context.Background(), w.exited, exitGrace)
}

// runner is the go-plugin AttachedRunner of a reattached plugin: it waits
// and kills through the pidfd instead of polling kill(pid, 0) every second
// and signalling a bare PID.
func (w *exitWatch) runner() *pidfdRunner { return &pidfdRunner{w: w} }

type pidfdRunner struct{ w *exitWatch }

// Wait returns when the plugin has exited or the watch was closed (Detach).
func (r *pidfdRunner) Wait(ctx context.Context) error {
	select {
	case <-r.w.exited:
	case <-r.w.detached:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (r *pidfdRunner) Kill(context.Context) error { return r.w.kill() }

func (r *pidfdRunner) ID() string { return strconv.Itoa(r.w.pid) }

func (r *pidfdRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *pidfdRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// pidfdExited reports whether the process behind pidfd has exited (the
// pidfd is readable).
func pidfdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
	}
}
