package shim

// Bridged programs: processes another manager (runit, s6, supervisord)
// starts and restarts, whose PIDs the plugin publishes and whose exits it
// detects (docs/bridges.md).
//
// Why here, in the plugin: the plugin is the table's only writer
// (docs/design.md#invariant-13) and runs the exit detectors. A bridged
// program's exit takes the same fast path as any other (Shim.onExit: the
// slot is set to 0 by compare-and-swap before anything else), so its slot
// reads 0 as soon as the kernel reports the death, without a round trip to
// hbd and whether or not hbd runs. The plugin also survives hbd
// (invariant 6), so a bridged slot stays watched while hbd restarts.
//
// One goroutine (bridgeLoop) waits in epoll for inotify events on the
// service directories' supervise/ (runit, s6: the status record is renamed
// into place at every change), for the managers' pidfds (a manager that
// exits: its slots read 0 and are flagged shm.SlotManagerGone) and for a
// wake-up; supervisord's event listener (`hbd supervisord-listener`)
// connects to a unix socket in the state directory and is served by a
// goroutine per connection. Nothing polls.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// ListenerSocket is the name, in the state directory, of the unix socket
// supervisord's event listener (`hbd supervisord-listener`) talks to.
const ListenerSocket = "supervisord.sock"

// bridges is the plugin's set of bridged programs; made by the first
// Bridge call.
type bridges struct {
	s *Shim

	mu    sync.Mutex // guards everything below
	progs map[string]*bprog
	byWd  map[int32]*bprog // inotify watch on DIR/supervise
	dirWd map[int32]*bprog // inotify watch on DIR, while supervise/ is missing
	mgrs  map[int]*bmgr    // by pidfd
	sups  map[string]*bsup // by server_url

	epfd, ino, wake int
	lis             net.Listener
	done            chan struct{}
	closed          bool
}

// bprog is one bridged program.
type bprog struct {
	spec  plugin.BridgeSpec
	svc   *service
	wd    int32 // -1: none
	dirWd int32
	mgr   *bmgr // nil while its manager is not known to run
	gone  string
}

// bmgr is one manager process (a runsv or s6-supervise per service
// directory, a supervisord per server_url), watched through its pidfd.
type bmgr struct {
	pid, pidfd int
	what       string
}

// bsup is one supervisord, by server_url.
type bsup struct {
	c   *bridge.Supervisor
	mgr *bmgr
}

func (s *Shim) startBridges() (*bridges, error) {
	b := &bridges{
		s: s, progs: map[string]*bprog{}, byWd: map[int32]*bprog{}, dirWd: map[int32]*bprog{},
		mgrs: map[int]*bmgr{}, sups: map[string]*bsup{}, done: make(chan struct{}),
	}
	var err error
	if b.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("bridge: epoll_create1: %w", err)
	}
	if b.ino, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
		unix.Close(b.epfd)
		return nil, fmt.Errorf("bridge: inotify_init1: %w", err)
	}
	if b.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(b.epfd)
		unix.Close(b.ino)
		return nil, fmt.Errorf("bridge: eventfd: %w", err)
	}
	for _, fd := range []int{b.ino, b.wake} {
		if err := unix.EpollCtl(b.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			b.closeFds()
			return nil, fmt.Errorf("bridge: epoll_ctl: %w", err)
		}
	}
	go b.loop()
	return b, nil
}

func (b *bridges) closeFds() {
	unix.Close(b.epfd)
	unix.Close(b.ino)
	unix.Close(b.wake)
}

// stop ends the loop and the listener; the slots stay as they are (a
// plugin restart adopts them, and the next Bridge call re-syncs).
func (b *bridges) stop() {
	b.mu.Lock()
	b.closed = true
	if b.lis != nil {
		b.lis.Close()
	}
	b.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(b.wake, one[:])
	<-b.done
	b.mu.Lock()
	for fd := range b.mgrs {
		unix.Close(fd)
	}
	b.mgrs = nil
	b.mu.Unlock()
	b.closeFds()
}

// Bridge implements plugin.Shim.
func (s *Shim) Bridge(ctx context.Context, specs []plugin.BridgeSpec) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for _, sp := range specs {
		if err := checkBridgeSpec(sp); err != nil {
			return &specError{msg: err.Error(), err: err}
		}
	}
	s.brOnce.Lock()
	if s.br == nil {
		if len(specs) == 0 && !s.hasBridgedSlots() {
			s.brOnce.Unlock()
			return nil
		}
		br, err := s.startBridges()
		if err != nil {
			s.brOnce.Unlock()
			return err
		}
		s.br = br
	}
	b := s.br
	s.brOnce.Unlock()
	return b.set(specs)
}

func (s *Shim) hasBridgedSlots() bool {
	for sl := range s.w.Used() {
		if sl.Flags&shm.SlotBridged != 0 {
			return true
		}
	}
	return false
}

func checkBridgeSpec(sp plugin.BridgeSpec) error {
	if p := shm.NameProblem(sp.Name); p != "" {
		return fmt.Errorf("bridge %q: %s", sp.Name, p)
	}
	switch sp.Manager {
	case bridge.Runit, bridge.S6:
		if !filepath.IsAbs(sp.Dir) {
			return fmt.Errorf("bridge %q: service directory %q is not absolute", sp.Name, sp.Dir)
		}
	case bridge.Supervisord:
		if _, err := bridge.NewSupervisor(sp.URL); err != nil {
			return fmt.Errorf("bridge %q: %w", sp.Name, err)
		}
		if !strings.Contains(sp.Process, ":") {
			return fmt.Errorf("bridge %q: process %q is not group:name", sp.Name, sp.Process)
		}
	default:
		return fmt.Errorf("bridge %q: unknown manager %q", sp.Name, sp.Manager)
	}
	return nil
}

// set makes specs the set of bridged programs and reads each one's
// status once.
func (b *bridges) set(specs []plugin.BridgeSpec) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return plugin.ErrShutdown
	}
	want := map[string]plugin.BridgeSpec{}
	for _, sp := range specs {
		want[sp.Name] = sp
	}
	for name, p := range b.progs {
		if sp, ok := want[name]; !ok || sp != p.spec {
			b.drop(p)
		}
	}
	// Bridged slots an earlier plugin left (adopted at this one's start)
	// that are no longer in the set.
	var stale []string
	for sl := range b.s.w.Used() {
		if _, ok := want[sl.Name]; !ok && sl.Flags&shm.SlotBridged != 0 {
			stale = append(stale, sl.Name)
		}
	}
	for _, name := range stale {
		if svc, err := b.s.service(name, false); err == nil {
			b.drop(&bprog{spec: plugin.BridgeSpec{Name: name}, svc: svc, wd: -1, dirWd: -1})
		}
	}
	var errs []error
	needListener := false
	for _, sp := range specs {
		if sp.Manager == bridge.Supervisord {
			needListener = true
		}
		if b.progs[sp.Name] != nil {
			continue
		}
		svc, err := b.s.service(sp.Name, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cur := b.s.current(svc); cur != nil && cur.child {
			errs = append(errs, fmt.Errorf("bridge %q: a service of hb's own runs under that name (pid %d)", sp.Name, cur.pid))
			continue
		}
		svc.op.Lock()
		svc.bridged = sp.Manager
		svc.op.Unlock()
		p := &bprog{spec: sp, svc: svc, wd: -1, dirWd: -1}
		b.progs[sp.Name] = p
		b.s.mu.Lock()
		if inc := svc.cur; inc != nil {
			inc.manager = sp.Manager // adopted by this plugin at its start
		}
		b.s.mu.Unlock()
		b.setFlags(p)
		if sp.Manager != bridge.Supervisord {
			b.syncDir(p)
		}
	}
	if needListener && b.lis == nil && b.s.opts.StateDir != "" {
		if err := b.listen(); err != nil {
			errs = append(errs, err)
		}
	}
	for url := range b.supURLs() {
		b.syncSupervisord(url)
	}
	return errors.Join(errs...)
}

func (b *bridges) supURLs() map[string]bool {
	m := map[string]bool{}
	for _, p := range b.progs {
		if p.spec.Manager == bridge.Supervisord {
			m[p.spec.URL] = true
		}
	}
	return m
}

// drop stops watching p and frees its slot. Called with b.mu held.
func (b *bridges) drop(p *bprog) {
	delete(b.progs, p.spec.Name)
	b.unwatchDir(p)
	b.forget(p, "no longer bridged")
	p.svc.op.Lock()
	p.svc.bridged = ""
	p.svc.op.Unlock()
	b.s.w.SetFlags(p.svc.idx, 0)
	b.free(p.svc)
	b.releaseMgr(p.mgr)
	p.mgr = nil
}

// free releases svc's slot, as Free does (without entering the Shim
// again: Bridge has).
func (b *bridges) free(svc *service) {
	s := b.s
	svc.op.Lock()
	defer svc.op.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.w.Free(svc.idx); err != nil {
		s.log.Warn("bridge: free", "program", svc.name, "err", err)
		return
	}
	svc.freed = true
	if s.svcs[svc.name] == svc {
		delete(s.svcs, svc.name)
	}
}

func (b *bridges) unwatchDir(p *bprog) {
	for _, wd := range []*int32{&p.wd, &p.dirWd} {
		if *wd >= 0 {
			_, _ = unix.InotifyRmWatch(b.ino, uint32(*wd))
			delete(b.byWd, *wd)
			delete(b.dirWd, *wd)
			*wd = -1
		}
	}
}

// setFlags writes p's slot flags: bridged, and gone while its manager is.
func (b *bridges) setFlags(p *bprog) {
	f := shm.SlotBridged
	if p.gone != "" {
		f |= shm.SlotManagerGone
	}
	b.s.w.SetFlags(p.svc.idx, f)
}

// superviseDir is p's DIR/supervise, resolved if it is a symlink (Debian's
// runit links it into /run), vetted with bridge.CheckTrusted.
func superviseDir(dir string) (string, error) {
	if err := bridge.CheckTrusted(dir); err != nil {
		return "", err
	}
	sup := filepath.Join(dir, "supervise")
	fi, err := os.Lstat(sup)
	if err != nil {
		return "", err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if sup, err = filepath.EvalSymlinks(sup); err != nil {
			return "", err
		}
	}
	if err := bridge.CheckTrusted(sup); err != nil {
		return "", err
	}
	return sup, nil
}

// syncDir reads a runit or s6 program's status and brings its slot in
// line. Called with b.mu held, at the start, on an inotify event and when
// the manager exits.
func (b *bridges) syncDir(p *bprog) {
	sup, err := superviseDir(p.spec.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			b.watchServiceDir(p)
			b.managerGone(p, fmt.Sprintf("%s: no supervise directory (%s not started)", p.spec.Dir, b.supervisorName(p)))
			return
		}
		b.managerGone(p, err.Error())
		return
	}
	if p.wd < 0 {
		wd, err := unix.InotifyAddWatch(b.ino, sup, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
		if err != nil {
			b.managerGone(p, fmt.Sprintf("inotify on %s: %v", sup, err))
			return
		}
		p.wd = int32(wd)
		b.byWd[int32(wd)] = p
	}
	// Who holds supervise/lock is the manager; no holder: it is not running.
	holder, err := bridge.LockHolder(filepath.Join(sup, "lock"))
	if err != nil {
		b.managerGone(p, fmt.Sprintf("%s not running (%v)", b.supervisorName(p), err))
		return
	}
	if p.mgr == nil || p.mgr.pid != holder {
		b.releaseMgr(p.mgr)
		p.mgr = nil
		m, err := b.watchMgr(holder, b.supervisorName(p)+" "+p.spec.Dir)
		if err != nil {
			b.managerGone(p, err.Error())
			return
		}
		p.mgr = m
	}
	data, err := bridge.ReadStatusFile(filepath.Join(sup, "status"), bridge.S6StatusSizePgid)
	if err != nil {
		b.s.log.Warn("bridge: status", "program", p.spec.Name, "err", err)
		return
	}
	st, err := bridge.Decode(p.spec.Manager, data)
	if err != nil {
		b.s.log.Warn("bridge: status", "program", p.spec.Name, "file", filepath.Join(sup, "status"), "err", err)
		return
	}
	b.managerBack(p)
	if st.Up {
		b.learn(p, st.PID)
	} else if !st.WantUp {
		b.s.w.SetStateOf(p.svc.idx, shm.StateStopped, 0)
	}
}

func (b *bridges) supervisorName(p *bprog) string {
	switch p.spec.Manager {
	case bridge.Runit:
		return "runsv"
	case bridge.S6:
		return "s6-supervise"
	}
	return "supervisord"
}

// watchServiceDir waits for DIR/supervise to appear (the manager's first
// start makes it).
func (b *bridges) watchServiceDir(p *bprog) {
	if p.dirWd >= 0 {
		return
	}
	wd, err := unix.InotifyAddWatch(b.ino, p.spec.Dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
	if err != nil {
		b.s.log.Warn("bridge: inotify", "program", p.spec.Name, "dir", p.spec.Dir, "err", err)
		return
	}
	p.dirWd = int32(wd)
	b.dirWd[int32(wd)] = p
}

// watchMgr opens a pidfd for the manager pid and adds it to the epoll set.
func (b *bridges) watchMgr(pid int, what string) (*bmgr, error) {
	for _, m := range b.mgrs {
		if m.pid == pid {
			return m, nil
		}
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("%s (pid %d): pidfd_open: %w", what, pid, err)
	}
	if err := unix.EpollCtl(b.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: epoll_ctl: %w", what, err)
	}
	m := &bmgr{pid: pid, pidfd: fd, what: what}
	b.mgrs[fd] = m
	return m, nil
}

// releaseMgr closes m's pidfd once no program uses it.
func (b *bridges) releaseMgr(m *bmgr) {
	if m == nil || b.mgrs[m.pidfd] != m {
		return
	}
	for _, p := range b.progs {
		if p.mgr == m {
			return
		}
	}
	for _, s := range b.sups {
		if s.mgr == m {
			return
		}
	}
	_ = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, m.pidfd, nil)
	unix.Close(m.pidfd)
	delete(b.mgrs, m.pidfd)
}

// learn publishes pid as p's process if it is the one p's manager started:
// its parent is the manager, checked after pidfd_open, so a recycled PID is
// never published (its parent would be another process). The slot gets a
// new generation, the process's start time, state running, and the PID
// last; the exit is then watched as an adopted process's.
func (b *bridges) learn(p *bprog, pid int) {
	s := b.s
	svc := p.svc
	s.mu.Lock()
	cur := svc.cur
	s.mu.Unlock()
	if cur != nil && cur.pid == pid && !cur.exited() {
		return // already published
	}
	if p.mgr == nil {
		return
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		s.log.Info("bridge: the process the manager names is gone", "program", p.spec.Name, "pid", pid, "err", err)
		return
	}
	ps, err := readProcStat(pid)
	if err == nil && ps.PPID != p.mgr.pid {
		err = fmt.Errorf("its parent is pid %d, not the manager (%s, pid %d)", ps.PPID, p.mgr.what, p.mgr.pid)
	}
	if err == nil && pollReadable(pidfd, 0) {
		err = errors.New("exited")
	}
	if err != nil {
		unix.Close(pidfd)
		s.log.Warn("bridge: not published", "program", p.spec.Name, "pid", pid, "reason", err)
		return
	}
	svc.op.Lock()
	defer svc.op.Unlock()
	gen := s.w.Snapshot(svc.idx).Generation + 1
	key := watchKey(svc.idx, gen)
	inc := &incarnation{
		svc: svc, idx: svc.idx, key: key, pid: pid, gen: gen, startTime: ps.StartTime,
		adopted: true, manager: p.spec.Manager, pidfd: pidfd, done: make(chan struct{}),
		killMode: KillProcess,
	}
	inc.ready.Store(true)
	s.mu.Lock()
	svc.cur = inc
	s.incs[key] = inc
	s.mu.Unlock()
	f := shm.SlotBridged
	if p.gone != "" {
		f |= shm.SlotManagerGone
	}
	s.w.Spawned(svc.idx, uint32(pid), gen, ps.StartTime, shm.StateRunning, f)
	s.emit(plugin.Event{
		Kind: plugin.EventSpawn, Name: svc.name, Slot: svc.idx, PID: pid, Generation: gen,
		DetectedNs: shm.MonotonicNs(), Adopted: true, Manager: p.spec.Manager, Source: "bridge",
	})
	if err := s.watcher.WatchTraced(key, pid, pidfd); err != nil {
		s.mu.Lock()
		delete(s.incs, key)
		svc.cur = nil
		s.mu.Unlock()
		s.w.ClearPID(svc.idx, uint32(pid))
		unix.Close(pidfd)
		s.log.Error("bridge: cannot watch; not published", "program", p.spec.Name, "pid", pid, "err", err)
		return
	}
	s.log.Info("bridge: published", "program", p.spec.Name, "manager", p.spec.Manager, "pid", pid, "generation", gen)
}

// forget stops watching p's current process, if any, and sets its slot to
// 0 (the manager is gone, or p is no longer bridged): the process may live
// on, but nobody who would restart it or report its exit is there.
func (b *bridges) forget(p *bprog, why string) {
	s := b.s
	s.mu.Lock()
	inc := p.svc.cur
	if inc != nil && s.incs[inc.key] == inc {
		delete(s.incs, inc.key)
	} else {
		inc = nil
	}
	s.mu.Unlock()
	if inc == nil {
		return
	}
	s.w.ClearPID(inc.idx, uint32(inc.pid))
	s.watcher.Unwatch(inc.key)
	inc.mu.Lock()
	if inc.pidfd >= 0 {
		unix.Close(inc.pidfd)
		inc.pidfd = -1
	}
	inc.reaped = true
	inc.mu.Unlock()
	s.w.RecordExit(inc.idx, uint32(inc.pid), -1, shm.MonotonicNs(), shm.StateExited)
	close(inc.done)
	s.log.Info("bridge: no longer watched", "program", p.spec.Name, "pid", inc.pid, "why", why)
}

// managerGone sets p's slot to 0 and flags it SlotManagerGone.
func (b *bridges) managerGone(p *bprog, why string) {
	if p.gone != "" {
		return
	}
	p.gone = why
	b.forget(p, why)
	b.releaseMgr(p.mgr)
	p.mgr = nil
	b.setFlags(p)
	b.s.log.Warn("bridge: manager gone; slot reads 0", "program", p.spec.Name, "why", why)
	b.s.emit(plugin.Event{
		Kind: plugin.EventManager, Name: p.spec.Name, Slot: p.svc.idx, Manager: p.spec.Manager,
		Message: why, DetectedNs: shm.MonotonicNs(),
	})
}

func (b *bridges) managerBack(p *bprog) {
	if p.gone == "" {
		return
	}
	p.gone = ""
	b.setFlags(p)
	b.s.log.Info("bridge: manager back", "program", p.spec.Name, "manager", p.spec.Manager)
	b.s.emit(plugin.Event{
		Kind: plugin.EventManager, Name: p.spec.Name, Slot: p.svc.idx, Manager: p.spec.Manager,
		DetectedNs: shm.MonotonicNs(),
	})
}

// loop waits for inotify events, managers' exits and the wake-up.
func (b *bridges) loop() {
	defer close(b.done)
	evs := make([]unix.EpollEvent, 16)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.EpollWait(b.epfd, evs, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			b.s.log.Error("bridge: epoll_wait", "err", err)
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return
		}
		for _, ev := range evs[:n] {
			switch fd := int(ev.Fd); fd {
			case b.ino:
				b.inotify(buf)
			case b.wake:
				var v [8]byte
				_, _ = unix.Read(b.wake, v[:])
			default:
				if m := b.mgrs[fd]; m != nil {
					b.mgrExited(m)
				}
			}
		}
		b.mu.Unlock()
	}
}

// inotify drains the inotify descriptor and re-syncs every program whose
// supervise/status (or supervise/ itself) changed. Called with b.mu held.
func (b *bridges) inotify(buf []byte) {
	dirty := map[*bprog]bool{}
	for {
		n, err := unix.Read(b.ino, buf)
		if n <= 0 || err != nil {
			break
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			name := strings.TrimRight(string(nameBytes), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				for _, p := range b.progs {
					dirty[p] = true
				}
				continue
			}
			if p := b.byWd[ev.Wd]; p != nil {
				if ev.Mask&unix.IN_IGNORED != 0 { // supervise/ removed
					delete(b.byWd, ev.Wd)
					p.wd = -1
					dirty[p] = true
				} else if name == "status" {
					dirty[p] = true
				}
			}
			if p := b.dirWd[ev.Wd]; p != nil {
				if ev.Mask&unix.IN_IGNORED != 0 {
					delete(b.dirWd, ev.Wd)
					p.dirWd = -1
				} else if name == "supervise" {
					dirty[p] = true
				}
			}
		}
	}
	for p := range dirty {
		if b.progs[p.spec.Name] != p {
			continue
		}
		b.syncDir(p)
		if p.wd >= 0 && p.dirWd >= 0 {
			_, _ = unix.InotifyRmWatch(b.ino, uint32(p.dirWd))
			delete(b.dirWd, p.dirWd)
			p.dirWd = -1
		}
	}
}

// mgrExited: a manager's pidfd turned readable. Called with b.mu held.
func (b *bridges) mgrExited(m *bmgr) {
	why := fmt.Sprintf("%s (pid %d) exited", m.what, m.pid)
	for _, p := range b.progs {
		if p.mgr == m {
			p.mgr = nil
			b.managerGone(p, why)
		}
	}
	for _, s := range b.sups {
		if s.mgr == m {
			s.mgr = nil
		}
	}
	_ = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, m.pidfd, nil)
	unix.Close(m.pidfd)
	delete(b.mgrs, m.pidfd)
	// A runsv or s6-supervise started again before this ran has already
	// renamed a status into place; read it now, as its event may be merged
	// with this wake-up.
	for _, p := range b.progs {
		if p.spec.Manager != bridge.Supervisord && p.mgr == nil {
			b.syncDir(p)
		}
	}
}

// syncSupervisord asks the supervisord at url for its PID and every
// bridged program's state. Called with b.mu held: at Bridge, when the
// listener (re)connects.
func (b *bridges) syncSupervisord(url string) {
	sup := b.sups[url]
	if sup == nil {
		c, err := bridge.NewSupervisor(url)
		if err != nil {
			return
		}
		sup = &bsup{c: c}
		b.sups[url] = sup
	}
	var progs []*bprog
	for _, p := range b.progs {
		if p.spec.Manager == bridge.Supervisord && p.spec.URL == url {
			progs = append(progs, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	pid, err := sup.c.PID(ctx)
	if err == nil && (sup.mgr == nil || sup.mgr.pid != pid) {
		old := sup.mgr
		sup.mgr, err = b.watchMgr(pid, "supervisord "+url)
		b.releaseMgr(old)
	}
	var infos []bridge.ProcessInfo
	if err == nil {
		infos, err = sup.c.AllProcessInfo(ctx)
	}
	if err != nil {
		for _, p := range progs {
			b.managerGone(p, err.Error())
		}
		return
	}
	byName := map[string]bridge.ProcessInfo{}
	for _, in := range infos {
		byName[in.FullName()] = in
	}
	for _, p := range progs {
		in, ok := byName[p.spec.Process]
		if !ok {
			b.managerGone(p, fmt.Sprintf("supervisord %s has no process %s", url, p.spec.Process))
			continue
		}
		p.mgr = sup.mgr
		b.managerBack(p)
		b.supervisordState(p, in)
	}
}

// supervisordState brings p's slot in line with what supervisord said.
func (b *bridges) supervisordState(p *bprog, in bridge.ProcessInfo) {
	switch in.State {
	case 10, 20, 40: // STARTING, RUNNING, STOPPING
		if in.PID > 0 {
			b.learn(p, in.PID)
		}
	case 0: // STOPPED
		b.s.w.SetStateOf(p.svc.idx, shm.StateStopped, 0)
	case 200: // FATAL
		b.s.w.SetStateOf(p.svc.idx, shm.StateFatal, 0)
	}
}

// listen opens StateDir/supervisord.sock for `hbd supervisord-listener`.
func (b *bridges) listen() error {
	path := filepath.Join(b.s.opts.StateDir, ListenerSocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bridge: %w", err)
	}
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("bridge: listener socket: %w", err)
	}
	b.lis = l
	go b.accept(l)
	return nil
}

func (b *bridges) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go b.serveListener(c.(*net.UnixConn))
	}
}

// serveListener reads `hbd supervisord-listener`'s lines: "hello URL"
// once, then one "EVENTNAME PAYLOAD" per event, and answers each with "ok".
// Only a peer of hb's own uid (or root) is served.
func (b *bridges) serveListener(c *net.UnixConn) {
	defer func() { _ = c.Close() }()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		credErr = err
	}
	if err = credErr; err != nil || (cred.Uid != 0 && int(cred.Uid) != unix.Geteuid()) {
		b.s.log.Warn("bridge: listener connection refused", "err", err)
		return
	}
	r := bufio.NewReader(c)
	url := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		kind, rest, _ := strings.Cut(line, " ")
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return
		}
		if kind == "hello" {
			url = b.matchURL(rest)
			b.s.log.Info("bridge: supervisord event listener connected", "url", url, "pid", cred.Pid)
			if url != "" {
				b.syncSupervisord(url)
			}
		} else if url != "" {
			b.supervisordEvent(url, kind, rest)
		}
		b.mu.Unlock()
		if _, err := c.Write([]byte("ok\n")); err != nil {
			return
		}
	}
}

// matchURL is the configured server_url the listener's supervisord goes
// by: the same text, else the only supervisord bridged.
func (b *bridges) matchURL(u string) string {
	urls := b.supURLs()
	if urls[u] {
		return u
	}
	if len(urls) == 1 {
		for k := range urls {
			return k
		}
	}
	return ""
}

// supervisordEvent acts on one PROCESS_STATE_* event: on STARTING (the
// process has just been forked) and RUNNING the PID is asked for at once.
// An exit needs nothing: the exit detectors have cleared the slot.
func (b *bridges) supervisordEvent(url, kind, payload string) {
	state, ok := strings.CutPrefix(kind, "PROCESS_STATE_")
	if !ok {
		return
	}
	tok := map[string]string{}
	for _, t := range strings.Fields(payload) {
		if k, v, ok := strings.Cut(t, ":"); ok {
			tok[k] = v
		}
	}
	name := tok["groupname"] + ":" + tok["processname"]
	var p *bprog
	for _, q := range b.progs {
		if q.spec.Manager == bridge.Supervisord && q.spec.URL == url && q.spec.Process == name {
			p = q
		}
	}
	if p == nil {
		return
	}
	sup := b.sups[url]
	if sup == nil || sup.mgr == nil {
		b.syncSupervisord(url)
		return
	}
	switch state {
	case "STARTING", "RUNNING":
		if pid, _ := strconv.Atoi(tok["pid"]); pid > 0 && state == "RUNNING" {
			p.mgr = sup.mgr
			b.learn(p, pid)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		in, err := sup.c.ProcessInfo(ctx, name)
		cancel()
		if err != nil {
			b.s.log.Warn("bridge: getProcessInfo", "program", p.spec.Name, "err", err)
			return
		}
		p.mgr = sup.mgr
		b.supervisordState(p, in)
	case "STOPPED":
		b.s.w.SetStateOf(p.svc.idx, shm.StateStopped, 0)
	case "FATAL":
		b.s.w.SetStateOf(p.svc.idx, shm.StateFatal, 0)
	}
}
