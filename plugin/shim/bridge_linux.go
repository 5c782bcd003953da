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
// into place at every change) and on the scan directories of specs with
// All (runsvdir's, s6-svscan's: service directories added and removed),
// for the managers' pidfds (a manager that exits: its slots read 0 and are
// flagged shm.SlotManagerGone) and for a wake-up; supervisord's event
// listener (`hbd supervisord-listener`) connects to a unix socket in the
// state directory and is served by a goroutine per connection; its
// PROCESS_GROUP_* events and states of unknown programs make a spec with
// All for supervisord read getAllProcessInfo again. Nothing polls.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
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

	mu       sync.Mutex // guards everything below
	progs    map[string]*bprog
	srcs     map[string]*bsource // specs with All, by srcKey
	reserved map[string]bool     // names a spec with All must not take
	wds      map[int32]*watch    // inotify watches
	mgrs     map[int]*bmgr       // by pidfd
	sups     map[string]*bsup    // by server_url
	// retry: sources that skipped a name bridged elsewhere until a drop
	// freed it, to look at again (flushRetry).
	retry map[*bsource]map[string]bool

	epfd, ino, wake int
	lis             net.Listener
	done            chan struct{}
	closed          bool

	// missing: test hook: path was looked for and is not there; its
	// directory is about to be watched for it.
	missing func(path string)
}

// bprog is one bridged program.
type bprog struct {
	spec  plugin.BridgeSpec
	src   *bsource // the spec with All that found it; nil for a named one
	svc   *service
	wd    int32 // inotify watch on DIR/supervise; -1: none
	dirWd int32 // inotify watch on DIR, while supervise/ is missing
	mgr   *bmgr // nil while its manager is not known to run
	gone  string
}

// bsource is a spec with All: every program of one manager.
type bsource struct {
	spec plugin.BridgeSpec
	key  string
	// runit, s6: the watch on the scan directory (-1: none), and the
	// service directories there without ./run yet, each watched for it.
	wd   int32
	pend map[string]int32
	// skipped are the names not taken, with why (logged once per why);
	// for supervisord, the process (group:name) too.
	skipped map[string]skip
	// supervisord: the groups of hb's event listener (never bridged):
	// self from its hello, listeners from getAllConfigInfo.
	self, listeners map[string]bool
	bad             string // the scan directory is not to be trusted: why
}

type skip struct{ process, why string }

// watch is what an inotify watch descriptor is for. One inode has one
// descriptor however often it is added (inotify_add_watch with
// IN_MASK_ADD), so several programs or sources may share it.
type watch struct {
	sup  []*bprog   // DIR/supervise of these programs: their status
	dir  []*bprog   // these programs' DIR: waiting for supervise/
	src  []*bsource // a scan directory: service directories come and go
	pend []pending  // a service directory without ./run yet
}

// pending is one entry of a scan directory: a service directory without
// ./run yet (watched for one), or one an inotify event named.
type pending struct {
	src  *bsource
	name string
}

func (w *watch) empty() bool {
	return len(w.sup) == 0 && len(w.dir) == 0 && len(w.src) == 0 && len(w.pend) == 0
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

func srcKey(sp plugin.BridgeSpec) string { return sp.Manager + " " + sp.Dir + sp.URL }

func (s *Shim) startBridges() (*bridges, error) {
	b := &bridges{
		s: s, progs: map[string]*bprog{}, srcs: map[string]*bsource{}, reserved: map[string]bool{},
		wds: map[int32]*watch{}, mgrs: map[int]*bmgr{}, sups: map[string]*bsup{},
		retry: map[*bsource]map[string]bool{}, done: make(chan struct{}),
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
func (s *Shim) Bridge(ctx context.Context, specs []plugin.BridgeSpec, reserved []string) error {
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
	return b.set(specs, reserved)
}

// Bridged implements plugin.Shim.
func (s *Shim) Bridged(ctx context.Context) ([]plugin.BridgeSpec, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	s.brOnce.Lock()
	b := s.br
	s.brOnce.Unlock()
	if b == nil {
		return nil, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]plugin.BridgeSpec, 0, len(b.progs))
	for _, p := range b.progs {
		out = append(out, p.spec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
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
	what := fmt.Sprintf("bridge %q", sp.Name)
	if sp.All {
		what = "bridge of every " + sp.Manager + " program"
		if sp.Name != "" || sp.Process != "" {
			return fmt.Errorf("%s: a spec with All names no program (name %q, process %q)", what, sp.Name, sp.Process)
		}
	} else if p := shm.NameProblem(sp.Name); p != "" {
		return fmt.Errorf("%s: %s", what, p)
	}
	switch sp.Manager {
	case bridge.Runit, bridge.S6:
		if !filepath.IsAbs(sp.Dir) {
			return fmt.Errorf("%s: directory %q is not absolute", what, sp.Dir)
		}
	case bridge.Supervisord:
		if _, err := bridge.NewSupervisor(sp.URL); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if !sp.All && !strings.Contains(sp.Process, ":") {
			return fmt.Errorf("%s: process %q is not group:name", what, sp.Process)
		}
	default:
		return fmt.Errorf("%s: unknown manager %q", what, sp.Manager)
	}
	return nil
}

// set makes specs the set of bridged programs and reads each one's
// status once.
func (b *bridges) set(specs []plugin.BridgeSpec, reserved []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return plugin.ErrShutdown
	}
	b.reserved = map[string]bool{}
	for _, n := range reserved {
		b.reserved[n] = true
	}
	want := map[string]plugin.BridgeSpec{}
	wantSrc := map[string]plugin.BridgeSpec{}
	for _, sp := range specs {
		if sp.All {
			wantSrc[srcKey(sp)] = sp
		} else {
			want[sp.Name] = sp
		}
	}
	for name, p := range b.progs {
		if p.src != nil {
			if _, ok := wantSrc[p.src.key]; !ok {
				b.drop(p, "no longer bridged")
			} else if _, named := want[name]; named || b.reserved[name] {
				b.drop(p, "the name is taken by hbd's configuration now")
			}
			continue
		}
		if sp, ok := want[name]; !ok || sp != p.spec {
			b.drop(p, "no longer bridged")
		}
	}
	for key, src := range b.srcs {
		if _, ok := wantSrc[key]; !ok {
			b.closeSource(src)
		}
	}
	var errs []error
	needListener := false
	for _, sp := range specs {
		if sp.Manager == bridge.Supervisord {
			needListener = true
		}
		if sp.All || b.progs[sp.Name] != nil {
			continue
		}
		if _, err := b.add(sp, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sp := range specs {
		if !sp.All {
			continue
		}
		src := b.srcs[srcKey(sp)]
		if src == nil {
			src = &bsource{spec: sp, key: srcKey(sp), wd: -1, pend: map[string]int32{}, skipped: map[string]skip{},
				self: map[string]bool{}, listeners: map[string]bool{}}
			b.srcs[src.key] = src
		}
		if sp.Manager != bridge.Supervisord {
			b.scanSource(src)
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
	// Bridged slots an earlier plugin left (adopted at this one's start)
	// that the set, now that every source was read, no longer has.
	var stale []string
	for sl := range b.s.w.Used() {
		if b.progs[sl.Name] == nil && sl.Flags&shm.SlotBridged != 0 {
			stale = append(stale, sl.Name)
		}
	}
	for _, name := range stale {
		if svc, err := b.s.service(name, false); err == nil {
			b.drop(&bprog{spec: plugin.BridgeSpec{Name: name}, svc: svc, wd: -1, dirWd: -1}, "no longer bridged")
		}
	}
	b.retry = map[*bsource]map[string]bool{} // every source was read just now
	return errors.Join(errs...)
}

// add bridges sp (found by src, or named when src is nil): its slot,
// flagged bridged, and a first look at its manager's record (runit, s6;
// syncSupervisord reads supervisord's). Called with b.mu held.
func (b *bridges) add(sp plugin.BridgeSpec, src *bsource) (*bprog, error) {
	svc, err := b.s.service(sp.Name, true)
	if err != nil {
		return nil, err
	}
	if cur := b.s.current(svc); cur != nil && cur.child {
		return nil, fmt.Errorf("bridge %q: a service of hb's own runs under that name (pid %d)", sp.Name, cur.pid)
	}
	svc.op.Lock()
	svc.bridged = sp.Manager
	svc.op.Unlock()
	p := &bprog{spec: sp, src: src, svc: svc, wd: -1, dirWd: -1}
	b.progs[sp.Name] = p
	b.s.mu.Lock()
	if inc := svc.cur; inc != nil {
		inc.setManager(sp.Manager) // adopted by this plugin at its start
	}
	b.s.mu.Unlock()
	b.setFlags(p)
	if src != nil {
		delete(src.skipped, sp.Name)
		b.s.log.Info("bridge: found", "program", sp.Name, "manager", sp.Manager, "where", where(sp))
		b.s.emit(plugin.Event{
			Kind: plugin.EventBridge, Name: sp.Name, Slot: svc.idx, Manager: sp.Manager,
			Reason: plugin.BridgeAdded, Message: where(sp), DetectedNs: shm.MonotonicNs(),
		})
	}
	if sp.Manager != bridge.Supervisord {
		b.syncDir(p)
	}
	return p, nil
}

// where names a program as hbctl status does: its service directory, or
// supervisord's URL and group:name.
func where(sp plugin.BridgeSpec) string {
	if sp.Manager == bridge.Supervisord {
		if sp.Process == "" {
			return sp.URL
		}
		return sp.URL + " " + sp.Process
	}
	return sp.Dir
}

// claim bridges sp, found by src, unless its name is hbd's (reserved: a
// [service.NAME] wins), bridged already (by a named spec, which wins, or
// first by another source) or no slot's name. Called with b.mu held.
func (b *bridges) claim(src *bsource, sp plugin.BridgeSpec) *bprog {
	if p := b.progs[sp.Name]; p != nil {
		if p.src == src && p.spec == sp {
			return p
		}
		b.skip(src, sp, "the name is bridged already, from "+p.spec.Manager+" "+where(p.spec))
		return nil
	}
	if b.reserved[sp.Name] {
		b.skip(src, sp, "the name is one of hbd's services (the [service] table wins)")
		return nil
	}
	if msg := shm.NameProblem(sp.Name); msg != "" {
		b.skip(src, sp, "the name cannot name a slot: "+msg)
		return nil
	}
	p, err := b.add(sp, src)
	if err != nil {
		b.skip(src, sp, err.Error())
		return nil
	}
	return p
}

// skip records that src does not bridge sp, and says so once per reason.
func (b *bridges) skip(src *bsource, sp plugin.BridgeSpec, why string) {
	if old, ok := src.skipped[sp.Name]; ok && old.why == why && old.process == sp.Process {
		return
	}
	src.skipped[sp.Name] = skip{process: sp.Process, why: why}
	b.s.log.Warn("bridge: not bridged", "program", sp.Name, "manager", sp.Manager, "where", where(sp), "why", why)
	b.s.emit(plugin.Event{
		Kind: plugin.EventBridge, Name: sp.Name, Slot: -1, Manager: sp.Manager, Reason: plugin.BridgeSkipped,
		Message: where(sp) + ": " + why, DetectedNs: shm.MonotonicNs(),
	})
}

func (b *bridges) supURLs() map[string]bool {
	m := map[string]bool{}
	for _, p := range b.progs {
		if p.spec.Manager == bridge.Supervisord {
			m[p.spec.URL] = true
		}
	}
	for _, src := range b.srcs {
		if src.spec.Manager == bridge.Supervisord {
			m[src.spec.URL] = true
		}
	}
	return m
}

// drop stops watching p and frees its slot (a removed service's slot: the
// slot remembers the name, which gets it back if it returns). A program a
// source found is announced (EventBridge), and sources that skipped its
// name look at it again (flushRetry). Called with b.mu held.
func (b *bridges) drop(p *bprog, why string) {
	name := p.spec.Name
	if b.progs[name] == p {
		delete(b.progs, name)
	}
	b.unwatchDir(p)
	b.forget(p, why)
	p.svc.op.Lock()
	p.svc.bridged = ""
	p.svc.op.Unlock()
	b.s.w.SetFlags(p.svc.idx, 0)
	b.free(p.svc)
	b.releaseMgr(p.mgr)
	p.mgr = nil
	if p.src != nil {
		b.s.log.Info("bridge: dropped", "program", name, "manager", p.spec.Manager, "where", where(p.spec), "why", why)
		b.s.emit(plugin.Event{
			Kind: plugin.EventBridge, Name: name, Slot: p.svc.idx, Manager: p.spec.Manager,
			Reason: plugin.BridgeDropped, Message: why, DetectedNs: shm.MonotonicNs(),
		})
	}
	for _, src := range b.srcs {
		if _, ok := src.skipped[name]; ok && src != p.src {
			if b.retry[src] == nil {
				b.retry[src] = map[string]bool{}
			}
			b.retry[src][name] = true
		}
	}
}

// flushRetry looks again at the names sources skipped because another
// held them, now that a drop freed them. Called with b.mu held, at the end
// of a change.
func (b *bridges) flushRetry() {
	for len(b.retry) > 0 {
		retry := b.retry
		b.retry = map[*bsource]map[string]bool{}
		for src, names := range retry {
			if b.srcs[src.key] != src {
				continue
			}
			if src.spec.Manager == bridge.Supervisord {
				b.syncSupervisord(src.spec.URL)
				continue
			}
			for name := range names {
				b.scanName(src, name, false)
			}
		}
	}
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

// addWatch adds an inotify watch on path (IN_MASK_ADD: the inode's watch
// may be another's too) and returns its descriptor and what it is for.
func (b *bridges) addWatch(path string, mask uint32) (int32, *watch, error) {
	wd, err := unix.InotifyAddWatch(b.ino, path, mask|unix.IN_MASK_ADD)
	if err != nil {
		return -1, nil, err
	}
	w := b.wds[int32(wd)]
	if w == nil {
		w = &watch{}
		b.wds[int32(wd)] = w
	}
	return int32(wd), w, nil
}

// releaseWatch removes the watch wd once nothing needs it.
func (b *bridges) releaseWatch(wd int32) {
	if w := b.wds[wd]; w != nil && w.empty() {
		_, _ = unix.InotifyRmWatch(b.ino, uint32(wd))
		delete(b.wds, wd)
	}
}

func without[T comparable](list []T, x T) []T {
	out := list[:0]
	for _, e := range list {
		if e != x {
			out = append(out, e)
		}
	}
	return out
}

func (b *bridges) unwatchDir(p *bprog) {
	if p.wd >= 0 {
		if w := b.wds[p.wd]; w != nil {
			w.sup = without(w.sup, p)
		}
		b.releaseWatch(p.wd)
		p.wd = -1
	}
	b.unwatchServiceDir(p)
}

func (b *bridges) unwatchServiceDir(p *bprog) {
	if p.dirWd >= 0 {
		if w := b.wds[p.dirWd]; w != nil {
			w.dir = without(w.dir, p)
		}
		b.releaseWatch(p.dirWd)
		p.dirWd = -1
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

// inDontFollow is IN_DONTFOLLOW (<sys/inotify.h>), which x/sys/unix lacks.
const inDontFollow = 0x2000000

// scanMask is what a scan directory is watched for: entries added
// (mkdir, ln -s, rename into it), removed (rmdir, rm, rename out of it),
// their owner or mode changed, and the directory itself going away.
const scanMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_ATTRIB |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | inDontFollow | unix.IN_EXCL_UNLINK

// scanSource brings a runit or s6 source in line with its scan directory:
// every service directory there (a directory, or a symlink to one, whose
// name does not start with a dot, with a ./run) is bridged, the others
// not. The directory is watched first, then listed, so nothing added in
// between is missed. Called with b.mu held.
func (b *bridges) scanSource(src *bsource) {
	dir := src.spec.Dir
	if err := bridge.CheckTrusted(dir); err != nil {
		if src.bad != err.Error() {
			src.bad = err.Error()
			b.s.log.Error("bridge: scan directory not trusted; nothing new is bridged from it", "manager", src.spec.Manager, "dir", dir, "err", err)
			b.s.emit(plugin.Event{
				Kind: plugin.EventBridge, Slot: -1, Manager: src.spec.Manager, Reason: plugin.BridgeSkipped,
				Message: err.Error(), DetectedNs: shm.MonotonicNs(),
			})
		}
		b.unwatchSource(src)
		return
	}
	src.bad = ""
	if src.wd < 0 {
		wd, w, err := b.addWatch(dir, scanMask)
		if err != nil {
			b.s.log.Error("bridge: inotify on the scan directory", "manager", src.spec.Manager, "dir", dir, "err", err)
			return
		}
		src.wd = wd
		w.src = append(w.src, src)
	}
	names := map[string]bool{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.s.log.Error("bridge: scan directory", "manager", src.spec.Manager, "dir", dir, "err", err)
	}
	for _, e := range ents {
		names[e.Name()] = true
	}
	for name, p := range b.progs {
		if p.src == src {
			names[name] = true
		}
	}
	for name := range src.pend {
		names[name] = true
	}
	for name := range src.skipped {
		names[name] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		b.scanName(src, n, false)
	}
}

// scanName brings one entry of a runit or s6 scan directory in line:
// bridged if it is a trusted service directory with a ./run, waited for
// (pend) if it has no ./run yet, dropped if it is gone. changed: the entry
// itself changed (an inotify event named it), so a bridged program's path
// is resolved again. Called with b.mu held.
func (b *bridges) scanName(src *bsource, name string, changed bool) {
	if name == "" || strings.HasPrefix(name, ".") || strings.ContainsRune(name, '/') {
		return // runsvdir and s6-svscan skip dot names (.s6-svscan)
	}
	path := filepath.Join(src.spec.Dir, name)
	p := b.progs[name]
	if p != nil && p.src != src {
		p = nil
	}
	sp := plugin.BridgeSpec{Name: name, Manager: src.spec.Manager, Dir: path}
	resolved, err := bridge.TrustedServiceDir(path)
	if err == nil {
		var st unix.Stat_t
		if serr := unix.Stat(resolved, &st); serr != nil {
			err = &os.PathError{Op: "stat", Path: resolved, Err: serr}
		} else if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			err = fs.ErrNotExist // a file: not a service directory
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b.unpend(src, name)
		delete(src.skipped, name)
		if p != nil {
			b.drop(p, path+" removed")
		}
		return
	case err != nil:
		b.unpend(src, name)
		if p != nil {
			b.syncDir(p) // it says why, with the manager gone
			return
		}
		b.skip(src, sp, err.Error())
		return
	}
	run := filepath.Join(resolved, "run")
	if _, err := os.Lstat(run); err != nil && p == nil {
		// Watched, then looked at again: a ./run made between the first
		// look and the watch (mkdir, then the file) has no event.
		b.missed(run)
		b.pend(src, name, resolved)
		if _, err := os.Lstat(run); err != nil {
			return
		}
	}
	b.unpend(src, name)
	if p != nil {
		if changed {
			b.unwatchDir(p) // it may lead elsewhere now
			b.syncDir(p)
		}
		return
	}
	b.claim(src, sp)
}

// pend watches a service directory that has no ./run yet for one.
func (b *bridges) pend(src *bsource, name, resolved string) {
	if _, ok := src.pend[name]; ok {
		return
	}
	wd, w, err := b.addWatch(resolved, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR|inDontFollow)
	if err != nil {
		b.s.log.Warn("bridge: inotify", "dir", resolved, "err", err)
		return
	}
	src.pend[name] = wd
	w.pend = append(w.pend, pending{src, name})
}

func (b *bridges) unpend(src *bsource, name string) {
	wd, ok := src.pend[name]
	if !ok {
		return
	}
	delete(src.pend, name)
	if w := b.wds[wd]; w != nil {
		w.pend = without(w.pend, pending{src, name})
	}
	b.releaseWatch(wd)
}

func (b *bridges) unwatchSource(src *bsource) {
	if src.wd >= 0 {
		if w := b.wds[src.wd]; w != nil {
			w.src = without(w.src, src)
		}
		b.releaseWatch(src.wd)
		src.wd = -1
	}
	for name := range src.pend {
		b.unpend(src, name)
	}
}

// closeSource drops a source and every program it found.
func (b *bridges) closeSource(src *bsource) {
	for _, p := range b.progs {
		if p.src == src {
			b.drop(p, "no longer bridged")
		}
	}
	b.unwatchSource(src)
	delete(b.srcs, src.key)
	delete(b.retry, src)
}

// sourceGone: the scan directory was removed or moved away. Its programs
// are dropped; a reload watches it again.
func (b *bridges) sourceGone(src *bsource, why string) {
	b.s.log.Error("bridge: scan directory gone; its programs are dropped (hbctl reload watches it again)",
		"manager", src.spec.Manager, "dir", src.spec.Dir, "why", why)
	b.unwatchSource(src)
	for _, p := range b.progs {
		if p.src == src {
			b.drop(p, src.spec.Dir+" "+why)
		}
	}
}

// superviseDir is a service directory's supervise/, vetted with
// bridge.TrustedServiceDir (the service directory may be a symlink, as
// runit's /etc/service/NAME usually is) and bridge.CheckTrusted, and
// resolved if it is a symlink (Debian's runit links it into /run).
func superviseDir(dir string) (string, error) {
	resolved, err := bridge.TrustedServiceDir(dir)
	if err != nil {
		return "", err
	}
	sup := filepath.Join(resolved, "supervise")
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
	if errors.Is(err, fs.ErrNotExist) && p.dirWd < 0 {
		// Watched, then looked at again: a supervise/ made between the
		// first look and the watch (the manager's first start) has no
		// event.
		b.missed(filepath.Join(p.spec.Dir, "supervise"))
		b.watchServiceDir(p)
		sup, err = superviseDir(p.spec.Dir)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			b.managerGone(p, fmt.Sprintf("%s: no supervise directory (%s not started)", p.spec.Dir, b.supervisorName(p)))
			return
		}
		b.managerGone(p, err.Error())
		return
	}
	if p.wd < 0 {
		wd, w, err := b.addWatch(sup, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
		if err != nil {
			b.managerGone(p, fmt.Sprintf("inotify on %s: %v", sup, err))
			return
		}
		p.wd = wd
		w.sup = append(w.sup, p)
	}
	if p.dirWd >= 0 { // supervise/ is there and watched
		b.unwatchServiceDir(p)
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

// missed calls the test hook missing, if set.
func (b *bridges) missed(path string) {
	if b.missing != nil {
		b.missing(path)
	}
}

// watchServiceDir waits for DIR/supervise to appear (the manager's first
// start makes it).
func (b *bridges) watchServiceDir(p *bprog) {
	if p.dirWd >= 0 {
		return
	}
	dir := p.spec.Dir
	if resolved, err := bridge.TrustedServiceDir(dir); err == nil {
		dir = resolved
	}
	wd, w, err := b.addWatch(dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
	if err != nil {
		b.s.log.Warn("bridge: inotify", "program", p.spec.Name, "dir", p.spec.Dir, "err", err)
		return
	}
	p.dirWd = wd
	w.dir = append(w.dir, p)
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
		adopted: true, pidfd: pidfd, done: make(chan struct{}),
		killMode: KillProcess,
	}
	inc.setManager(p.spec.Manager)
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
// supervise/status (or supervise/ itself) changed, and every entry of a
// scan directory that changed. Called with b.mu held.
func (b *bridges) inotify(buf []byte) {
	dirty := map[*bprog]bool{}
	var entries []pending // scan directory entries to look at
	changed := map[pending]bool{}
	full := map[*bsource]bool{}
	gone := map[*bsource]string{}
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
				for _, src := range b.srcs {
					full[src] = true
				}
				continue
			}
			w := b.wds[ev.Wd]
			if w == nil {
				continue
			}
			if ev.Mask&unix.IN_IGNORED != 0 { // the inode is gone: so is the watch
				delete(b.wds, ev.Wd)
				for _, p := range w.sup {
					p.wd = -1
					dirty[p] = true
				}
				for _, p := range w.dir {
					p.dirWd = -1
				}
				for _, src := range w.src {
					src.wd = -1
					gone[src] = "removed"
				}
				for _, pe := range w.pend {
					delete(pe.src.pend, pe.name)
					entries = append(entries, pe)
				}
				continue
			}
			for _, p := range w.sup {
				if name == "status" {
					dirty[p] = true
				}
			}
			for _, p := range w.dir {
				if name == "supervise" {
					dirty[p] = true
				}
			}
			for _, src := range w.src {
				switch {
				case ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
					gone[src] = "removed or moved"
				case name == "":
					full[src] = true // the directory's own owner or mode
				default:
					e := pending{src, name}
					entries = append(entries, e)
					changed[e] = true
				}
			}
			for _, pe := range w.pend {
				if name == "run" {
					entries = append(entries, pe)
				}
			}
		}
	}
	for src, why := range gone {
		if b.srcs[src.key] == src {
			b.sourceGone(src, why)
		}
	}
	for src := range full {
		if b.srcs[src.key] == src && gone[src] == "" {
			b.scanSource(src)
		}
	}
	for _, e := range entries {
		if b.srcs[e.src.key] == e.src && gone[e.src] == "" && !full[e.src] {
			b.scanName(e.src, e.name, changed[e])
		}
	}
	for p := range dirty {
		if b.progs[p.spec.Name] != p {
			continue
		}
		b.syncDir(p)
	}
	b.flushRetry()
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
// bridged program's state; with a spec with All for url, the programs
// supervisord has are bridged and those it no longer has dropped. Called
// with b.mu held: at Bridge, when the listener (re)connects, when it
// relays an event about a program or group hb does not know.
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
	if err == nil {
		if src := b.srcs[srcKey(plugin.BridgeSpec{Manager: bridge.Supervisord, URL: url})]; src != nil {
			b.supervisordSet(ctx, src, sup, infos)
		}
	}
	var progs []*bprog
	for _, p := range b.progs {
		if p.spec.Manager == bridge.Supervisord && p.spec.URL == url {
			progs = append(progs, p)
		}
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

// supervisordSet makes src's programs the processes supervisord has
// (getAllProcessInfo's infos), but for hb's event listener: its group is
// the one whose command runs `hbd supervisord-listener`
// (getAllConfigInfo), or the one the listener named in its hello. Two
// processes of one name in different groups: the first (getAllProcessInfo
// sorts by group) is bridged, the other skipped.
func (b *bridges) supervisordSet(ctx context.Context, src *bsource, sup *bsup, infos []bridge.ProcessInfo) {
	listeners := map[string]bool{}
	for g := range src.self {
		listeners[g] = true
	}
	if cfgs, err := sup.c.AllConfigInfo(ctx); err == nil {
		for _, c := range cfgs {
			if bridge.IsListenerCommand(c.Command) {
				listeners[c.Group] = true
			}
		}
	} else {
		b.s.log.Warn("bridge: getAllConfigInfo (to tell hb's event listener from the programs)", "url", src.spec.URL, "err", err)
	}
	src.listeners = listeners
	present := map[string]bool{}
	for _, in := range infos {
		if !listeners[in.Group] {
			present[in.FullName()] = true
		}
	}
	for _, p := range b.progs {
		if p.src == src && !present[p.spec.Process] {
			b.drop(p, fmt.Sprintf("supervisord %s no longer has %s", src.spec.URL, p.spec.Process))
		}
	}
	for name, sk := range src.skipped {
		if !present[sk.process] {
			delete(src.skipped, name)
		}
	}
	for _, in := range infos {
		if listeners[in.Group] {
			continue
		}
		b.claim(src, plugin.BridgeSpec{Name: in.Name, Manager: bridge.Supervisord, URL: src.spec.URL, Process: in.FullName()})
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
			given, self := "", ""
			for _, f := range strings.Fields(rest) {
				if v, ok := strings.CutPrefix(f, "self="); ok {
					self = v
				} else {
					given = f
				}
			}
			url = b.matchURL(given)
			b.s.log.Info("bridge: supervisord event listener connected", "url", url, "pid", cred.Pid, "self", self)
			if url != "" {
				if src := b.srcs[srcKey(plugin.BridgeSpec{Manager: bridge.Supervisord, URL: url})]; src != nil && self != "" {
					group, _, _ := strings.Cut(self, ":")
					src.self[group] = true
				}
				b.syncSupervisord(url)
			}
		} else if url != "" {
			b.supervisordEvent(url, kind, rest)
		}
		b.flushRetry()
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
// An exit needs nothing: the exit detectors have cleared the slot. With a
// spec with All for url, an event about a process hb does not know (added
// by supervisorctl update), and PROCESS_GROUP_ADDED or _REMOVED, make it
// read supervisord's programs again.
func (b *bridges) supervisordEvent(url, kind, payload string) {
	tok := map[string]string{}
	for _, t := range strings.Fields(payload) {
		if k, v, ok := strings.Cut(t, ":"); ok {
			tok[k] = v
		}
	}
	src := b.srcs[srcKey(plugin.BridgeSpec{Manager: bridge.Supervisord, URL: url})]
	if kind == "PROCESS_GROUP_ADDED" || kind == "PROCESS_GROUP_REMOVED" {
		if src != nil && b.groupChanged(src, tok["groupname"], kind == "PROCESS_GROUP_ADDED") {
			b.syncSupervisord(url)
		}
		return
	}
	state, ok := strings.CutPrefix(kind, "PROCESS_STATE_")
	if !ok {
		return
	}
	name := tok["groupname"] + ":" + tok["processname"]
	var p *bprog
	for _, q := range b.progs {
		if q.spec.Manager == bridge.Supervisord && q.spec.URL == url && q.spec.Process == name {
			p = q
		}
	}
	if p == nil {
		if src != nil && !src.listeners[tok["groupname"]] && !src.self[tok["groupname"]] &&
			src.skipped[tok["processname"]].process != name {
			b.syncSupervisord(url) // a program added since the last look
		}
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

// groupChanged reports whether a group supervisord added or removed may
// change src's programs: an added group none of whose processes hb knows
// (not hb's listener), a removed group some of whose processes it bridges
// or skipped. Supervisord announces every group at its start; those the
// listener's hello re-sync found need nothing.
func (b *bridges) groupChanged(src *bsource, group string, added bool) bool {
	if group == "" || src.listeners[group] || src.self[group] {
		return false
	}
	known := false
	for _, p := range b.progs {
		if p.src == src && strings.HasPrefix(p.spec.Process, group+":") {
			known = true
		}
	}
	for _, sk := range src.skipped {
		if strings.HasPrefix(sk.process, group+":") {
			known = true
		}
	}
	return added != known
}
