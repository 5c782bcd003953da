package connector

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Inode numbers of the initial namespaces (include/linux/proc_ns.h). Dynamic
// namespaces get inode numbers from 0xF0000000 up, so a match is proof. The
// initial network namespace has had a fixed number only since Linux 6.x; on
// older kernels it is dynamic and the self-test decides.
const (
	procUserInitIno = 0xEFFFFFFD
	procPidInitIno  = 0xEFFFFFFC
	procNetInitIno  = 0xEFFFFFF9
)

// selfTestTimeout bounds how long Available waits for its own test event.
const selfTestTimeout = time.Second

var availability struct {
	mu   sync.Mutex
	done bool  // result cached
	err  error // cached result
}

// Available reports whether the proc connector delivers exit events to this
// process: nil if it does, else an error wrapping ErrUnavailable that says why
// (not in the initial user, pid or network namespace; kernel without
// CONFIG_PROC_CONNECTOR; bind not permitted; no event arrived).
//
// The first call checks the namespaces, then subscribes a socket to exit
// events and ends one of its own threads, waiting up to a second for that
// thread's exit event; it starts no process. Definite answers are cached for
// the life of the process; transient failures (out of file descriptors or
// memory) are not. Safe for concurrent use.
func Available() error {
	availability.mu.Lock()
	defer availability.mu.Unlock()
	if availability.done {
		return availability.err
	}
	err, definite := probe()
	if definite {
		availability.done, availability.err = true, err
	}
	return err
}

// probe runs the checks behind Available. definite is false when the error
// may go away on a later try.
func probe() (err error, definite bool) {
	if err := checkNamespaces(); err != nil {
		return err, true
	}
	s, err := dialProc(256<<10, procEventExit)
	if err != nil {
		return err, errors.Is(err, ErrUnavailable)
	}
	defer func() { _ = s.close() }()
	if err := selfTest(s); err != nil {
		return err, errors.Is(err, ErrUnavailable)
	}
	return nil, true
}

// checkNamespaces fails when this process is provably outside the initial
// user, pid or network namespace, where the kernel ignores subscriptions (user,
// pid) or has no proc connector (net). The initial user and pid namespaces
// have fixed inode numbers; the network namespace is compared with PID 1's
// when that is readable (usually only as root). What it cannot prove is left
// to the self-test.
func checkNamespaces() error {
	for _, ns := range []struct {
		name    string
		initIno uint64
		fixed   bool // the initial namespace has had initIno on every kernel we run on
	}{
		{"user", procUserInitIno, true},
		{"pid", procPidInitIno, true},
		{"net", procNetInitIno, false},
	} {
		self, err := nsInode("/proc/self/ns/" + ns.name)
		if err != nil {
			continue // no /proc: the self-test decides
		}
		if self == ns.initIno {
			continue
		}
		if ns.fixed {
			return fmt.Errorf("connector: %w: not in the initial %s namespace (ns inode %d, the initial one is %d)", ErrUnavailable, ns.name, self, ns.initIno)
		}
		if init, err := nsInode("/proc/1/ns/" + ns.name); err == nil && self != init {
			return fmt.Errorf("connector: %w: not in the initial %s namespace (ns inode %d, PID 1 has %d)", ErrUnavailable, ns.name, self, init)
		}
	}
	return nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// selfTest ends one OS thread of this process and waits for its exit event on
// s. A thread rather than a child process: nothing to reap, and no surprise
// for a caller that reaps every child it sees. If events are lost meanwhile
// (ENOBUFS: a flood of other exits), it ends another thread and keeps
// waiting; a timeout after a loss is not a definite answer.
func selfTest(s *nlSocket) error {
	tid, err := exitOneThread()
	if err != nil {
		return err
	}
	tids := []uint32{uint32(tid)}
	pid := uint32(os.Getpid())
	deadline := time.Now().Add(selfTestTimeout)
	if err := s.conn.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("connector: self-test: set deadline: %w", err)
	}
	lost := false
	for {
		b, err := s.recv()
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if lost {
				return fmt.Errorf("connector: self-test: events lost, own thread's exit event not seen within %v: %w", selfTestTimeout, unix.ENOBUFS)
			}
			return fmt.Errorf("connector: %w: self-test: no exit event within %v of thread %d ending (outside the initial pid/user namespace?)", ErrUnavailable, selfTestTimeout, tid)
		case errors.Is(err, unix.ENOBUFS):
			// Ours may be among the lost events: end another thread.
			lost = true
			if tid, err := exitOneThread(); err == nil {
				tids = append(tids, uint32(tid))
			}
			continue
		default:
			return fmt.Errorf("connector: self-test: receive: %w", err)
		}
		for ev := range DecodeFrames(b) {
			if ev.TGID == pid && slices.Contains(tids, ev.PID) {
				return nil
			}
		}
	}
}

// exitOneThread makes the Go runtime end one OS thread of this process (a
// goroutine that exits while locked to its thread takes the thread with it)
// and returns the thread's id.
func exitOneThread() (int, error) {
	c := make(chan int, 1)
	go endThread(c)
	return <-c, nil
}

func endThread(c chan<- int) {
	runtime.LockOSThread()
	if tid := unix.Gettid(); tid != os.Getpid() {
		c <- tid
		return // still locked when the goroutine exits: the thread ends
	}
	// The runtime never ends the main thread. Hold it while another goroutine,
	// which must then run on another thread, does the job.
	done := make(chan struct{})
	go func() {
		endThread(c)
		close(done)
	}()
	<-done
	runtime.UnlockOSThread()
}
