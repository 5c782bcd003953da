package shim

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
)

// Log pipes (Stdout/Stderr "file" without Spec.LogDirect). A service's
// processes write into a pipe; the plugin reads it and writes whole lines
// into the log file, with an RFC 3339 time first when Spec.LogTimestamps
// asks for it, and rotates the file by rename at a line boundary once it is
// past LogMaxBytes: a line is never split between two files, nothing is
// copied or truncated under a reader, and tail -F sees one rename per
// rotation.
//
// The pipe belongs to the service, not to an incarnation: it is made at
// the first spawn and every later incarnation gets the same write end, so
// what a stray descendant of an old incarnation writes still lands. The
// read end must outlive the plugin, or a plugin that dies would leave every
// service's next write to SIGPIPE: hbd holds a copy of both ends of every
// pipe (it takes them with pidfd_getfd from the plugin, whose descriptors
// SpawnResult.LogPipes and Info.LogPipes name), and hands them to the next
// plugin it launches (inheritedPipes). While no plugin reads, a service's
// writes fill the pipe (1 MiB where the kernel allows) and then wait. Only
// when hbd and the plugin are both gone is the reader gone.
//
// One goroutine reads every pipe (logPoller: one epoll set, not a goroutine
// per pipe), and the exit path drains a service's pipes before it reports
// the exit, so whatever an incarnation wrote before it died is in the file
// when its exit event is seen.

// pipeSize is the capacity asked for each log pipe (F_SETPIPE_SZ): what a
// service can write while the plugin is away or slow before a write waits.
const pipeSize = 1 << 20

// maxPending bounds a line kept back for its newline: a longer one is
// written as it is (and rotation waits for its end).
const maxPending = 64 << 10

// stampLayout is the time written before each line with LogTimestamps: RFC
// 3339 in UTC, to the microsecond.
const stampLayout = "2006-01-02T15:04:05.000000Z07:00"

var readBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// logPipe is one service stream's pipe.
type logPipe struct {
	l      *logFile
	name   string // service
	stream string // "out" or "err"
	r, w   int    // read end (O_NONBLOCK) and write end, both close-on-exec
	ino    uint64

	// reported: hbd has been told of the pipe (SpawnResult.LogPipes) or
	// handed it to this plugin; guarded by logFile.mu.
	reported bool

	// mu serialises drains (the poller and the exit path) and guards the
	// rest.
	mu     sync.Mutex
	pend   []byte    // the start of a line whose newline has not come
	pendAt time.Time // when pend's first byte was read
	mid    bool      // the file's last byte is not a newline
	stamps bool      // this drain stamps lines (logFile.stamped)
	out    []byte    // scratch for one batch
	closed bool
}

// newLogPipe makes a pipe for l.
func newLogPipe(l *logFile, name, stream string) (*logPipe, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("log pipe: %w", err)
	}
	_, _ = unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, pipeSize)
	lp, err := adoptLogPipe(l, name, stream, p[0], p[1])
	if err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
	}
	return lp, err
}

// adoptLogPipe makes a logPipe of descriptors r and w, which must be the
// two ends of one pipe.
func adoptLogPipe(l *logFile, name, stream string, r, w int) (*logPipe, error) {
	var sr, sw unix.Stat_t
	if err := unix.Fstat(r, &sr); err != nil {
		return nil, fmt.Errorf("log pipe %d: %w", r, err)
	}
	if err := unix.Fstat(w, &sw); err != nil {
		return nil, fmt.Errorf("log pipe %d: %w", w, err)
	}
	if sr.Mode&unix.S_IFMT != unix.S_IFIFO || sr.Ino != sw.Ino || sr.Dev != sw.Dev {
		return nil, fmt.Errorf("log pipe: descriptors %d and %d are not the ends of one pipe", r, w)
	}
	if err := unix.SetNonblock(r, true); err != nil {
		return nil, fmt.Errorf("log pipe: %w", err)
	}
	return &logPipe{l: l, name: name, stream: stream, r: r, w: w, ino: sr.Ino}, nil
}

// info describes lp for hbd.
func (lp *logPipe) info() plugin.LogPipe {
	return plugin.LogPipe{Name: lp.name, Stream: lp.stream, ReadFD: lp.r, WriteFD: lp.w, Ino: lp.ino}
}

// drain reads what is in the pipe into the log file. final (the exit path)
// reads what the pipe held when it was called, no more (a descendant that
// keeps writing cannot hold the exit path), and writes a partial last line
// too, ended with a newline; the poller reads at most a few buffers (epoll reports the rest, and
// one busy writer does not starve the other pipes).
func (lp *logPipe) drain(final bool) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.closed {
		return
	}
	lp.stamps = lp.l.stamped()
	left := 4 * len(buf) // the poller's share per wake-up
	if final {
		n, err := unix.IoctlGetInt(lp.r, unix.TIOCINQ) // FIONREAD: bytes in the pipe
		if err != nil {
			n = pipeSize
		}
		left = n
	}
	for left > 0 {
		n, err := unix.Read(lp.r, buf[:min(len(buf), left)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 {
			break
		}
		left -= n
		lp.consume(buf[:n], time.Now())
		if !final && n < len(buf) {
			break
		}
	}
	if final && len(lp.pend) > 0 {
		// The last line of a writer that is gone ends here: the next
		// incarnation's first line starts on a line of its own.
		lp.pend = append(lp.pend, '\n')
		lp.out = lp.appendLine(lp.out[:0], lp.pend, lp.pendAt)
		lp.pend = lp.pend[:0]
		lp.l.writeOut(lp.out)
	}
}

// consume turns one read into whole lines in the file; a line without its
// newline yet is kept back (up to maxPending).
func (lp *logPipe) consume(b []byte, now time.Time) {
	out := lp.out[:0]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(lp.pend) == 0 {
				lp.pendAt = now
			}
			lp.pend = append(lp.pend, b...)
			if len(lp.pend) >= maxPending {
				out = lp.appendLine(out, lp.pend, lp.pendAt)
				lp.pend = lp.pend[:0]
			}
			break
		}
		line := b[:i+1]
		b = b[i+1:]
		if len(lp.pend) > 0 {
			lp.pend = append(lp.pend, line...)
			out = lp.appendLine(out, lp.pend, lp.pendAt)
			lp.pend = lp.pend[:0]
		} else {
			out = lp.appendLine(out, line, now)
		}
	}
	lp.out = out
	if len(out) > 0 {
		lp.l.writeOut(out)
	}
}

// appendLine appends b (a line, or the start of one) to out, with the time
// first when it starts a line and the log is stamped.
func (lp *logPipe) appendLine(out, b []byte, at time.Time) []byte {
	if !lp.mid && lp.stamps {
		out = at.UTC().AppendFormat(out, stampLayout)
		out = append(out, ' ')
	}
	out = append(out, b...)
	lp.mid = b[len(b)-1] != '\n'
	return out
}

// close drains lp one last time and closes both ends.
func (lp *logPipe) close() {
	lp.drain(true)
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if !lp.closed {
		lp.closed = true
		unix.Close(lp.r)
		unix.Close(lp.w)
	}
}

// logPoller reads every log pipe from one goroutine.
type logPoller struct {
	epfd, wake int
	mu         sync.Mutex
	pipes      map[int]*logPipe // by read end; guarded by mu
}

func newLogPoller() (*logPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("log pipes: epoll: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("log pipes: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("log pipes: epoll: %w", err)
	}
	return &logPoller{epfd: epfd, wake: wake, pipes: map[int]*logPipe{}}, nil
}

func (p *logPoller) add(lp *logPipe) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lp.r)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, lp.r, &ev); err != nil {
		return fmt.Errorf("log pipe: epoll: %w", err)
	}
	p.pipes[lp.r] = lp
	return nil
}

// remove stops reading lp (before it is closed).
func (p *logPoller) remove(lp *logPipe) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pipes[lp.r] == lp {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, lp.r, nil)
		delete(p.pipes, lp.r)
	}
}

// all lists the pipes being read.
func (p *logPoller) all() []*logPipe {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*logPipe, 0, len(p.pipes))
	for _, lp := range p.pipes {
		out = append(out, lp)
	}
	return out
}

// run reads pipes as they become readable until stop.
func (p *logPoller) run() {
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(p.epfd, evs, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := range n {
			fd := int(evs[i].Fd)
			if fd == p.wake {
				return
			}
			p.mu.Lock()
			lp := p.pipes[fd]
			p.mu.Unlock()
			if lp == nil {
				continue
			}
			lp.drain(false)
			if evs[i].Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 && evs[i].Events&unix.EPOLLIN == 0 {
				p.remove(lp) // no writer left and nothing to read (not while the plugin holds the write end)
			}
		}
	}
}

// stop ends run (which must then be waited for) and closes the epoll set;
// the pipes stay open (close closes them).
func (p *logPoller) stop() {
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(p.wake, one[:])
}

func (p *logPoller) closeFDs() {
	unix.Close(p.epfd)
	unix.Close(p.wake)
}

// takeInherited makes the pipes hbd handed over for svc (an earlier
// plugin's) svc's, before svc's adopted incarnation is watched: its exit
// drains them. Called from New while no call is served.
func (s *Shim) takeInherited(svc *service) {
	pipes := s.inherited[svc.name]
	delete(s.inherited, svc.name)
	for _, ip := range pipes {
		if err := s.takePipe(svc, ip); err != nil {
			s.log.Warn("log pipe from hbd not used", "service", ip.Name, "stream", ip.Stream, "err", err)
			unix.Close(ip.R)
			unix.Close(ip.W)
		}
	}
}

// flushInherited writes what the pipes of services that are not running
// (they died while no plugin read, or were stopped) still hold into their
// log files, and closes them. Called from New after adoptAll.
func (s *Shim) flushInherited() {
	for name, pipes := range s.inherited {
		for _, ip := range pipes {
			l := newLogFile(ip.Dir, name+"."+ip.Stream+".log", ip.MaxBytes, ip.Backups)
			l.kick = s.kickChores
			l.setMode(ip.Timestamps, false)
			lp, err := adoptLogPipe(l, name, ip.Stream, ip.R, ip.W)
			if err != nil {
				s.log.Warn("log pipe from hbd not used", "service", name, "stream", ip.Stream, "err", err)
				unix.Close(ip.R)
				unix.Close(ip.W)
				continue
			}
			lp.close() // drains, then closes both ends
			l.close()
		}
	}
	s.inherited = nil
}

// takePipe makes ip the pipe of svc's stream. Called with svc.op held, or
// from New.
func (s *Shim) takePipe(svc *service, ip plugin.InheritedPipe) error {
	name := svc.name + "." + ip.Stream + ".log"
	lf := s.logFileOf(svc, ip.Stream, ip.Dir, name, ip.MaxBytes, ip.Backups, ip.Timestamps, false)
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.pipe != nil {
		return errors.New("the service has a log pipe already")
	}
	lp, err := adoptLogPipe(lf, svc.name, ip.Stream, ip.R, ip.W)
	if err != nil {
		return err
	}
	lp.reported = true
	if err := s.pipes.add(lp); err != nil {
		return err
	}
	lf.pipe = lp
	return nil
}

// logFileOf returns svc's log file for stream, made or reconfigured. Called
// with svc.op held; the file's own lock is taken without Shim.mu (a slow
// write under it must not hold up the other services).
func (s *Shim) logFileOf(svc *service, stream, dir, name string, max int64, backups int, stamps, direct bool) *logFile {
	s.mu.Lock()
	lf := &svc.stdout
	if stream == "err" {
		lf = &svc.stderr
	}
	made := false
	if *lf == nil {
		*lf = newLogFile(dir, name, max, backups)
		(*lf).kick = s.kickChores
		s.logged[svc] = struct{}{}
		made = true
	}
	l := *lf
	s.mu.Unlock()
	if !made {
		l.configure(dir, name, max, backups)
	}
	l.setMode(stamps, direct)
	return l
}

// pipeFD returns the write end of l's pipe, making the pipe (and reading
// it) at the first call. Called with svc.op held.
func (s *Shim) pipeFD(svc *service, stream string, l *logFile) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pipe == nil {
		lp, err := newLogPipe(l, svc.name, stream)
		if err != nil {
			return -1, err
		}
		if err := s.pipes.add(lp); err != nil {
			unix.Close(lp.r)
			unix.Close(lp.w)
			return -1, err
		}
		l.pipe = lp
	}
	return l.pipe.w, nil
}

// newPipes lists svc's pipes hbd has not been told of, marking them told.
func (s *Shim) newPipes(svc *service) []plugin.LogPipe {
	var out []plugin.LogPipe
	for _, l := range svc.logFiles() {
		l.mu.Lock()
		if lp := l.pipe; lp != nil && !lp.reported {
			lp.reported = true
			out = append(out, lp.info())
		}
		l.mu.Unlock()
	}
	return out
}

// allPipes lists every log pipe, for Info.
func (s *Shim) allPipes() []plugin.LogPipe {
	var out []plugin.LogPipe
	for _, lp := range s.pipes.all() {
		out = append(out, lp.info())
	}
	return out
}

// drainLogs writes what svc's processes have written so far into its log
// files (the exit path, before it reports an exit).
func (s *Shim) drainLogs(svc *service) {
	s.mu.Lock()
	logs := svc.logFiles()
	s.mu.Unlock()
	for _, l := range logs {
		l.mu.Lock()
		lp := l.pipe
		l.mu.Unlock()
		if lp != nil {
			lp.drain(true)
		}
	}
}

// logFiles lists svc's log files. Called with svc.op or Shim.mu held.
// logsDirect reports whether svc writes a log file itself (log_direct),
// which the log pass trims while svc runs. Called with Shim.mu held.
func (svc *service) logsDirect() bool {
	for _, l := range svc.logFiles() {
		if l.directMode.Load() {
			return true
		}
	}
	return false
}

func (svc *service) logFiles() []*logFile {
	var out []*logFile
	if svc.stdout != nil {
		out = append(out, svc.stdout)
	}
	if svc.stderr != nil {
		out = append(out, svc.stderr)
	}
	return out
}
