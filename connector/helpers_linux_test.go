package connector

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// waitLimit bounds every wait for a state in these tests. It is a limit, not
// a timing assertion: on a healthy machine every wait ends in milliseconds.
const waitLimit = 10 * time.Second

// requireConnector skips the test unless the proc connector works here.
func requireConnector(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("needs the proc connector (root, or Linux 6.6+, in the initial user/pid/net namespaces): %v", err)
	}
}

// requireTrace skips the test unless the exit tracepoint works here.
func requireTrace(t testing.TB) {
	t.Helper()
	if err := TraceAvailable(); err != nil {
		t.Skipf("needs the exit tracepoint (eBPF: CAP_BPF and CAP_PERFMON, Linux 6.16+); the pidfd tests cover this case: %v", err)
	}
}

// exiting reports whether process pid has started to exit (PF_EXITING in
// /proc/PID/stat) and has not been reaped.
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
	flags, err := strconv.ParseUint(f[6], 10, 64) // field 9: flags
	return err == nil && flags&0x4 != 0           // PF_EXITING
}

// startKillable starts a child that waits to be killed: "sleep" (one
// thread) or "threads" (nine threads, started before it returns).
func startKillable(t testing.TB, mode string) *child {
	t.Helper()
	if mode != "threads" {
		return startSelf(t, "sleep", false)
	}
	c := startSelf(t, "threads", true, "HB_THREADS=8")
	if got := c.readLine(); got != "ready" {
		t.Fatalf("child said %q", got)
	}
	return c
}

// child is a process started by a test, with a pidfd. The test reaps it.
type child struct {
	t      testing.TB
	cmd    *exec.Cmd
	pid    int
	pidfd  int
	stdin  *os.File // write end of the child's stdin, if asked for
	stdout *bufio.Reader
	reaped bool
}

// startSelf starts the test binary as a child in mode (see runChild).
func startSelf(t testing.TB, mode string, withStdin bool, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	return start(t, cmd, withStdin)
}

// startCmd starts an arbitrary program as a child.
func startCmd(t testing.TB, withStdin bool, name string, args ...string) *child {
	t.Helper()
	return start(t, exec.Command(name, args...), withStdin)
}

func start(t testing.TB, cmd *exec.Cmd, withStdin bool) *child {
	t.Helper()
	c := &child{t: t, cmd: cmd, pidfd: -1}
	cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &c.pidfd}
	cmd.Stderr = os.Stderr
	var inR, outW *os.File
	if withStdin {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		inR, c.stdin = r, w
		cmd.Stdin = r
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = outW
	c.stdout = bufio.NewReader(outR)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	if inR != nil {
		inR.Close()
	}
	outW.Close()
	c.pid = cmd.Process.Pid
	t.Cleanup(func() {
		if !c.reaped {
			_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
			c.reapNow()
		}
		if c.stdin != nil {
			c.stdin.Close()
		}
		outR.Close()
		unix.Close(c.pidfd)
		_ = cmd.Process.Release()
	})
	return c
}

// readLine waits for one line from the child's stdout.
func (c *child) readLine() string {
	c.t.Helper()
	s, err := c.stdout.ReadString('\n')
	if err != nil {
		c.t.Fatalf("pid %d: read stdout: %v", c.pid, err)
	}
	return strings.TrimSpace(s)
}

func (c *child) kill(sig unix.Signal) {
	c.t.Helper()
	if err := unix.PidfdSendSignal(c.pidfd, sig, nil, 0); err != nil {
		c.t.Fatalf("signal pid %d: %v", c.pid, err)
	}
}

// dead reports whether the child has exited (its pidfd is readable).
func (c *child) dead() bool {
	fds := []unix.PollFd{{Fd: int32(c.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 1
}

// waitDead waits until the child has exited, without reaping it.
func (c *child) waitDead() {
	c.t.Helper()
	fds := []unix.PollFd{{Fd: int32(c.pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(waitLimit/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			c.t.Fatalf("pid %d did not exit within %v (err %v)", c.pid, waitLimit, err)
		}
		return
	}
}

// siginfoChld is the SIGCHLD layout of siginfo_t (x86-64, arm64, ...).
type siginfoChld struct {
	Signo, Errno, Code, _ int32
	Pid                   int32
	UID                   uint32
	Status                int32
	_                     [100]byte
}

func waitid(pidfd, options int) (siginfoChld, error) {
	var si siginfoChld
	for {
		_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PIDFD, uintptr(pidfd), uintptr(unsafe.Pointer(&si)), uintptr(options), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return si, e
		}
		return si, nil
	}
}

// zombie reports whether the process behind pidfd has exited and is still
// waitable (not reaped), without reaping it.
func zombie(pidfd int) bool {
	si, err := waitid(pidfd, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG)
	return err == nil && si.Pid != 0
}

// reap reaps the child and returns its status as a shell shows it.
func (c *child) reap() int {
	c.t.Helper()
	si, err := waitid(c.pidfd, unix.WEXITED)
	if err != nil {
		c.t.Fatalf("waitid pid %d: %v", c.pid, err)
	}
	c.reaped = true
	switch si.Code {
	case 1: // CLD_EXITED
		return int(si.Status)
	case 2, 3: // CLD_KILLED, CLD_DUMPED
		return 128 + int(si.Status)
	}
	c.t.Fatalf("waitid pid %d: unexpected si_code %d", c.pid, si.Code)
	return -1
}

func (c *child) reapNow() {
	if _, err := waitid(c.pidfd, unix.WEXITED); err == nil || errors.Is(err, unix.ECHILD) {
		c.reaped = true
	}
}

// waitFor waits until cond holds, failing the test after waitLimit.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recorder collects OnExit calls, checking at each call that the process is
// dead and not yet reaped (pidfds registered with expect).
type recorder struct {
	mu       sync.Mutex
	calls    []Exit
	pidfds   map[uint64]int
	zombies  map[uint64]bool // the process was an unreaped zombie during OnExit
	unreaped map[uint64]bool // ... or exiting (PF_EXITING), not reaped
	resyncs  []error
}

func newRecorder() *recorder {
	return &recorder{pidfds: map[uint64]int{}, zombies: map[uint64]bool{}, unreaped: map[uint64]bool{}}
}

func (r *recorder) expect(key uint64, c *child) {
	r.mu.Lock()
	r.pidfds[key] = c.pidfd
	r.mu.Unlock()
}

func (r *recorder) onExit(e Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, e)
	if fd, ok := r.pidfds[e.Key]; ok {
		r.zombies[e.Key] = zombie(fd)
		r.unreaped[e.Key] = r.zombies[e.Key] || exiting(e.PID)
	}
}

func (r *recorder) onResync(err error) {
	r.mu.Lock()
	r.resyncs = append(r.resyncs, err)
	r.mu.Unlock()
}

func (r *recorder) count(key uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.calls {
		if e.Key == key {
			n++
		}
	}
	return n
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func (r *recorder) wasZombie(key uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.zombies[key]
}

func (r *recorder) wasUnreaped(key uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreaped[key]
}

func (r *recorder) options(opt Options) Options {
	opt.OnExit = r.onExit
	opt.OnResync = r.onResync
	return opt
}

// newWatcher starts a Watcher that is closed when the test ends, after the
// gates stalling its loops are opened.
func newWatcher(t testing.TB, opt Options, gates ...*gate) *Watcher {
	t.Helper()
	w, err := NewWatcher(opt)
	if err != nil {
		for _, g := range gates {
			g.release()
		}
		t.Fatalf("NewWatcher(%+v): %v", opt, err)
	}
	t.Cleanup(func() {
		for _, g := range gates {
			g.release()
		}
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// collect reads Exits until one for each key has arrived, failing on a
// duplicate or after waitLimit.
func collect(t testing.TB, w *Watcher, keys ...uint64) map[uint64]Exit {
	t.Helper()
	want := map[uint64]bool{}
	for _, k := range keys {
		want[k] = true
	}
	got := map[uint64]Exit{}
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	for len(got) < len(want) {
		select {
		case e, ok := <-w.Exits():
			if !ok {
				t.Fatalf("Exits closed; got %v, want keys %v", got, keys)
			}
			if !want[e.Key] {
				t.Fatalf("unexpected exit %+v (want keys %v)", e, keys)
			}
			if prev, dup := got[e.Key]; dup {
				t.Fatalf("key %d reported twice: %+v and %+v", e.Key, prev, e)
			}
			got[e.Key] = e
		case <-timer.C:
			t.Fatalf("after %v got exits %v, want keys %v (stats %+v)", waitLimit, got, keys, w.Stats())
		}
	}
	return got
}

// noExitQueued fails if an exit is waiting on w.Exits().
func noExitQueued(t testing.TB, w *Watcher) {
	t.Helper()
	select {
	case e := <-w.Exits():
		t.Fatalf("unexpected exit %+v", e)
	default:
	}
}

// gate stalls a loop (through testHooks) while closed is false.
type gate struct {
	mu     sync.Mutex
	open   bool
	cond   *sync.Cond
	parked int // goroutines waiting at the gate
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gate) wait() {
	g.mu.Lock()
	g.parked++
	g.cond.Broadcast()
	for !g.open {
		g.cond.Wait()
	}
	g.parked--
	g.mu.Unlock()
}

func (g *gate) release() {
	g.mu.Lock()
	g.open = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

// waitParked waits until a goroutine is stalled at the gate.
func (g *gate) waitParked(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.parked == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("loop did not reach its gate within %v", waitLimit)
		}
		g.mu.Unlock()
		time.Sleep(time.Millisecond)
		g.mu.Lock()
	}
}

// watchSleepers starts n sleeping children, expected by rec, and watches
// them with watch (a Watcher's Watch or WatchChild) under keys 0..n-1.
func watchSleepers(t *testing.T, watch func(key uint64, pid, pidfd int) error, rec *recorder, n int) ([]*child, []uint64) {
	t.Helper()
	var kids []*child
	var keys []uint64
	for i := range n {
		c := startSelf(t, "sleep", false)
		rec.expect(uint64(i), c)
		if err := watch(uint64(i), c.pid, c.pidfd); err != nil {
			t.Fatal(err)
		}
		kids, keys = append(kids, c), append(keys, uint64(i))
	}
	return kids, keys
}
