package shim

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// Readiness (docs/watchdog.md#readiness). A service with Spec.Ready
// "notify" is spawned with its PID withheld from the slot (state
// starting, PID word 0) and tells the plugin it is ready with the sd_notify
// protocol: a datagram "READY=1" on the unix socket NOTIFY_SOCKET names,
// one per service in StateDir/notify. The kernel attaches the sender's
// credentials (SO_PASSCRED); a message from a process that is not the
// service's is dropped. READY=1 publishes the PID (shm.Writer.Publish);
// STATUS= texts are reported; WATCHDOG=1 counts as a beat; MAINPID=N
// makes N, a live process of the service, its main process (followMain,
// mainpid_linux.go).

const (
	// defaultReadyTimeout is Spec.ReadyTimeout's default.
	defaultReadyTimeout = 90 * time.Second
	// notifyDir is the directory of the notify sockets under StateDir.
	notifyDir = "notify"
	// notifyMax is the largest notify datagram read (sd_notify's are a
	// few lines).
	notifyMax = 4096
)

// ReadyTimeoutReason is an exit event's Reason when the plugin killed a
// service that did not declare itself ready in time.
const ReadyTimeoutReason = plugin.ReasonReadyTimeout

// notifySocket is one service's NOTIFY_SOCKET.
type notifySocket struct {
	path string
	conn *net.UnixConn
	// mu serialises reading the socket and acting on what was read:
	// readNotify and the exit path (drainNotifyOf) read only with it
	// held, and act on each datagram before they let go. So once the
	// exit path holds it, every message the service sent before the exit
	// it is about to judge has been acted on, or is read now.
	mu       sync.Mutex
	buf, oob []byte // guarded by mu
}

// needsReady reports whether spec's service declares its readiness.
func needsReady(spec plugin.Spec) bool {
	return spec.Ready == plugin.ReadyNotify || readyFD(spec.Ready) >= 0
}

// readyFD is N of Spec.Ready "fd:N" (3 ≤ N < 3+maxExtraFDs), else -1.
func readyFD(ready string) int {
	v, ok := strings.CutPrefix(ready, plugin.ReadyFDPrefix)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 3 || n >= 3+maxExtraFDs || strconv.Itoa(n) != v {
		return -1
	}
	return n
}

// planReady sets p up for the readiness its Spec asks for: with "notify",
// the service's socket (made at its first spawn, kept while the service
// is known) and NOTIFY_SOCKET (and WATCHDOG_USEC with a watchdog) in the
// environment.
func (s *Shim) planReady(p *startPlan) error {
	spec := p.spec
	switch spec.Ready {
	case "", plugin.ReadySpawn:
		return nil
	case plugin.ReadyNotify:
	default:
		n := readyFD(spec.Ready)
		if n < 0 {
			return badSpec(errors.New(`want "spawn", "notify" or "fd:N" (3 ≤ N ≤ 7)`), "spawn %q: ready %q", spec.Name, spec.Ready)
		}
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("spawn %q: ready %q: %w", spec.Name, spec.Ready, err)
		}
		for len(p.attr.extra) < n-3 {
			p.attr.extra = append(p.attr.extra, -1)
		}
		p.attr.extra = append(p.attr.extra, int(w.Fd()))
		p.readyR, p.readyW = r, w
		return nil
	}
	ns, err := s.notifySocketOf(p.svc)
	if err != nil {
		return err
	}
	p.attr.env = append(p.attr.env, "NOTIFY_SOCKET="+ns.path)
	if spec.Watchdog > 0 {
		p.attr.env = append(p.attr.env, "WATCHDOG_USEC="+strconv.FormatInt(spec.Watchdog.Microseconds(), 10))
	}
	return nil
}

// notifySocketOf returns svc's notify socket, making it (and its reader)
// on first use. Called with svc.op held.
func (s *Shim) notifySocketOf(svc *service) (*notifySocket, error) {
	if svc.notify != nil {
		return svc.notify, nil
	}
	if s.opts.StateDir == "" {
		return nil, badSpec(errors.New("the plugin has no state directory for its socket"), "spawn %q: ready \"notify\"", svc.name)
	}
	dir := filepath.Join(s.opts.StateDir, notifyDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("spawn %q: ready \"notify\": %w", svc.name, err)
	}
	if _, err := checkStateDir(dir); err != nil {
		return nil, fmt.Errorf("spawn %q: ready \"notify\": %w", svc.name, err)
	}
	path := filepath.Join(dir, svc.name)
	if len(path) > 107 {
		return nil, badSpec(errors.New("socket path longer than 107 bytes"), "spawn %q: ready \"notify\": %s", svc.name, path)
	}
	_ = os.Remove(path) // a socket left by an earlier plugin
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("spawn %q: ready \"notify\": %w", svc.name, err)
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("spawn %q: ready \"notify\": SO_PASSCRED: %w", svc.name, err)
	}
	ns := &notifySocket{path: path, conn: conn, buf: make([]byte, notifyMax), oob: make([]byte, unix.CmsgSpace(unix.SizeofUcred))}
	svc.notify = ns
	go s.readNotify(svc, ns)
	return ns, nil
}

// closeNotify closes svc's notify socket, if it has one, and removes its
// name. Called with svc.op held, or by close.
func (svc *service) closeNotify() {
	if ns := svc.notify; ns != nil {
		_ = ns.conn.Close()
		_ = os.Remove(ns.path)
		svc.notify = nil
	}
}

// readNotify handles the datagrams of svc's notify socket until it is
// closed: each time the socket is readable, drainNotify.
func (s *Shim) readNotify(svc *service, ns *notifySocket) {
	raw, err := ns.conn.SyscallConn()
	if err == nil {
		err = raw.Read(func(fd uintptr) bool {
			if s.opts.onNotifyRead != nil {
				s.opts.onNotifyRead()
			}
			if !s.drainNotify(svc, ns, int(fd)) {
				time.Sleep(10 * time.Millisecond)
			}
			return false // wait until it is readable again
		})
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Error("notify socket: no longer read", "service", svc.name, "err", err)
	}
}

// drainNotify reads and acts on every datagram waiting on ns (fd is its
// descriptor), with ns.mu held. It returns false after an error other than
// "nothing more to read".
func (s *Shim) drainNotify(svc *service, ns *notifySocket, fd int) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, ns.buf, ns.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return true
		case err != nil:
			s.log.Warn("notify socket", "service", svc.name, "err", err)
			return false
		}
		pid := senderPID(ns.oob[:oobn])
		inc := s.current(svc)
		if inc == nil || pid <= 0 || !s.belongsTo(inc, pid) {
			s.log.Warn("notify: message dropped: not from a process of the service", "service", svc.name, "sender_pid", pid)
			continue
		}
		s.notified(inc, pid, ns.buf[:n])
	}
}

// drainNotifyOf acts on the sd_notify messages waiting on the socket of
// the incarnation whose exit ex reports, before the exit path judges that
// exit: a message sent before the exit is acted on first, whichever the
// plugin happened to see first (a daemon's MAINPID= sent just before its
// launcher exits makes the launcher's exit no death). It costs one
// recvmsg, and only services with ready "notify".
func (s *Shim) drainNotifyOf(ex connector.Exit) {
	s.mu.Lock()
	inc := s.incs[ex.Key]
	s.mu.Unlock()
	if inc == nil || inc.notify == nil || inc.mainPID() != ex.PID {
		return
	}
	ns := inc.notify
	raw, err := ns.conn.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) { s.drainNotify(inc.svc, ns, int(fd)) })
}

// senderPID is the PID of the SCM_CREDENTIALS in oob, or 0.
func senderPID(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for i := range msgs {
		if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}

// belongsTo reports whether pid is a process of inc's service: its main
// process, or one inService says is the service's.
func (s *Shim) belongsTo(inc *incarnation, pid int) bool {
	return pid == inc.mainPID() || inService(inc, pid)
}

// inService reports whether pid is now a process of inc's service: a
// member of the service's cgroup where the incarnation runs in one, else
// of the process group its spawned process leads (each service leads its
// own; the group ID stays pinned while the group has a member).
func inService(inc *incarnation, pid int) bool {
	if inc.cg != nil {
		return inc.cg.contains(pid)
	}
	pgid, err := unix.Getpgid(pid)
	return err == nil && pgid == inc.pid
}

// notified acts on one sd_notify message of inc's service from pid: a
// MAINPID= first, so that a READY=1 beside it publishes the new main
// process, then STATUS=, then READY=1. Called with the socket's mu held.
func (s *Shim) notified(inc *incarnation, pid int, msg []byte) {
	ready := false
	status, haveStatus := "", false
	mainPID, haveMain := "", false
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		k, v, _ := strings.Cut(string(line), "=")
		switch k {
		case "READY":
			ready = v == "1"
		case "STATUS":
			status, haveStatus = v, true
		case "WATCHDOG":
			if v == "1" {
				inc.notifyBeats.Add(1)
			}
		case "MAINPID":
			mainPID, haveMain = v, true
		}
	}
	if haveMain {
		s.mainPIDNotified(inc, pid, mainPID)
	}
	if haveStatus {
		inc.status.Store(&status)
		s.emit(plugin.Event{Kind: plugin.EventStatus, Name: inc.svc.name, Slot: inc.idx, PID: inc.mainPID(),
			Generation: inc.gen, Message: status})
	}
	if ready {
		s.declareReady(inc)
	}
}

// declareReady publishes the PID of inc's main process in its slot
// (once): from here a peer's one load says it is ready. An incarnation
// whose exit (or SIGKILL) came first is not published (or is cleared again
// at once: its zombie pins the PID until it is reaped under inc.mu, which is
// held here).
func (s *Shim) declareReady(inc *incarnation) {
	if !inc.ready.CompareAndSwap(false, true) {
		return
	}
	inc.mu.RLock()
	pid := inc.mainPID()
	ok := !inc.reaped && s.w.Publish(inc.idx, uint32(pid), inc.gen)
	if ok && s.gone(inc) {
		s.w.ClearPID(inc.idx, uint32(pid))
		ok = false
	}
	inc.mu.RUnlock()
	if !ok {
		return
	}
	s.kickRecord()
	msg := ""
	if p := inc.status.Load(); p != nil {
		msg = *p
	}
	s.emit(plugin.Event{Kind: plugin.EventReady, Name: inc.svc.name, Slot: inc.idx, PID: pid,
		Generation: inc.gen, DetectedNs: shm.MonotonicNs(), Message: msg})
	s.log.Debug("ready", "service", inc.svc.name, "pid", pid, "generation", inc.gen)
	s.startWatchdog(inc)
}

// readLine waits for a newline on inc's notification pipe (ready "fd:N",
// s6's notification-fd) and declares inc ready; EOF (every writer gone)
// leaves it to the ready timeout or the exit.
func (s *Shim) readLine(inc *incarnation, r *os.File) {
	defer r.Close()
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if bytes.IndexByte(buf[:n], '\n') >= 0 {
			s.declareReady(inc)
			return
		}
		if err != nil {
			return
		}
	}
}

// armReady starts inc's ready timeout when its Spec declares readiness:
// not ready by then, it is killed (exit Reason ReadyTimeoutReason).
func (s *Shim) armReady(inc *incarnation, spec plugin.Spec) {
	if inc.ready.Load() {
		return
	}
	if r := inc.readyR; r != nil {
		inc.readyR = nil
		go s.readLine(inc, r)
	}
	timeout := spec.ReadyTimeout
	if timeout <= 0 {
		timeout = defaultReadyTimeout
	}
	time.AfterFunc(timeout, func() {
		if inc.ready.Load() || inc.exited() || inc.stopping.Load() {
			return
		}
		inc.readyTimedOut.Store(true)
		s.log.Warn("not ready in time; killing", "service", inc.svc.name, "pid", inc.mainPID(), "ready_timeout", timeout)
		_ = inc.signal(unix.SIGKILL, true)
		_ = inc.signal(unix.SIGKILL, false)
	})
}
