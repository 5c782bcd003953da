package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/cgroupfs"
)

// This file is how the Shim uses the service cgroups of cgroup_linux.go:
// where a spawn puts the child, what Stop signals, what is killed after a
// main process exits, and what is removed when (docs/cgroups.md).

// planContainment sets up the next incarnation's containment in p: its
// placement and limits (Spec.CPUs … Umask), and with kill mode "cgroup"
// (and cgroups in use) the service's cgroup, made if need be, which the
// child starts in. Called with svc.op held.
func (s *Shim) planContainment(p *startPlan) error {
	p.attr.place = specPlacement(p.spec)
	p.killMode = s.cg.killMode(p.spec)
	if p.killMode != KillCgroup {
		return s.applyCgroupLimits(p.svc, p.spec)
	}
	svc := p.svc
	if svc.cg != nil {
		if _, err := svc.cg.populated(); err != nil {
			// Removed under the plugin (rmdir while empty): made anew.
			s.log.Warn("spawn: the service's cgroup is gone; making it again", "service", svc.name, "err", err)
			s.mu.Lock()
			old := svc.cg
			svc.cg = nil
			s.mu.Unlock()
			old.close()
		}
	}
	if svc.cg == nil {
		cg, err := s.cg.tree.service(svc.name)
		if errors.Is(err, unix.ENOENT) {
			// The tree itself was removed: open (and make) it again.
			if err = s.reopenTree(); err == nil {
				cg, err = s.cg.tree.service(svc.name)
			}
		}
		if err != nil {
			return fmt.Errorf("spawn %q: %w", svc.name, err)
		}
		s.mu.Lock()
		svc.cg = cg
		s.mu.Unlock()
	}
	p.attr.intoCgroup, p.attr.cgroup, p.attr.cgEvents = true, svc.cg.dirfd, svc.cg.events
	return s.applyCgroupLimits(svc, p.spec)
}

// emptyCgroup kills what is left in the cgroup p's child is to start in
// and waits for it to empty (cgroupEmptyWait at most): a replacement never
// starts beside processes of an earlier incarnation (docs/design.md, the
// invariant on service cgroups). With no process there it costs one read
// of cgroup.events.
func (s *Shim) emptyCgroup(p *startPlan) error {
	if !p.attr.intoCgroup {
		return nil
	}
	n, err := p.svc.cg.empty(cgroupEmptyWait)
	if err != nil {
		if errors.Is(err, errNotEmpty) {
			return fmt.Errorf("spawn %q: %d processes of the previous incarnation were killed, but %w", p.svc.name, n, err)
		}
		return fmt.Errorf("spawn %q: %w", p.svc.name, err)
	}
	if n > 0 {
		s.log.Info("spawn: killed what the previous incarnation left in its cgroup", "service", p.svc.name, "processes", n)
	}
	return nil
}

// killRestAtStop runs on the exit path just before inc's main process,
// our child, is reaped during a Stop: in kill mode "process-group" the
// members of its group that outlive it are SIGKILLed while its zombie,
// a member of the group, still pins the group ID (a non-child's zombie
// is reaped by someone else at any time, so its group ID is not ours to
// signal then). Kill mode "cgroup" kills after the reap (afterReap);
// "process" leaves them. Called with inc.mu held.
func (inc *incarnation) killRestAtStop() {
	if inc.stopping.Load() && inc.child && !inc.reaped && inc.killMode == KillProcessGroup && inc.inGroup() {
		_ = killGroup(inc.pid, unix.SIGKILL)
	}
}

// afterReap runs on the exit path once inc's main process is reaped (or
// found not to be ours): in kill mode "cgroup", whatever is left in the
// service's cgroup is killed (svcCgroup.kill) — at every exit, as a unit's
// processes die with its main process. A replacement already started by r
// is in the cgroup too: then the cgroup was empty when it started, and
// nothing is killed.
func (s *Shim) afterReap(inc *incarnation, r *reaped) {
	if inc.cg == nil || r.spawned() {
		return
	}
	if !r.cgBusy {
		if pop, err := inc.cg.populated(); err != nil || !pop {
			return
		}
	}
	pids, _ := inc.cg.pids()
	inc.leftovers = len(pids)
	if err := inc.cg.kill(); err != nil {
		s.log.Warn("exit: killing what the main process left", "service", inc.svc.name, "pid", inc.mainPID(), "err", err)
		return
	}
	s.log.Info("exit: killed what the main process left in its cgroup", "service", inc.svc.name, "pid", inc.mainPID(),
		"processes", len(pids), "stopping", inc.stopping.Load())
}

// exitNote is what inc's exit with status left behind, for the exit
// event: a main process that exits 0 and leaves processes in its cgroup
// most likely daemonizes. "" otherwise.
func (inc *incarnation) exitNote(status int) string {
	inc.mu.RLock()
	n := inc.leftovers
	inc.mu.RUnlock()
	if status != 0 || n == 0 || inc.stopping.Load() || inc.forking {
		return ""
	}
	return fmt.Sprintf("exited 0 and left %d processes, killed with it: does it daemonize? run it in the foreground", n)
}

// stopSignal sends Stop's sig per inc's kill mode: to every process of its
// cgroup, to its process group, or to the main process.
func (inc *incarnation) stopSignal(sig syscall.Signal) error {
	switch inc.killMode {
	case KillProcess:
		return inc.signal(sig, false)
	case KillCgroup:
		if inc.cg != nil {
			n, err := inc.cg.signal(sig)
			if err == nil && n > 0 {
				return nil
			}
			// The cgroup cannot be read, or the main process is not
			// listed (yet): it is signalled alone.
			if e := inc.signal(sig, false); e != nil || err != nil {
				return errors.Join(err, e)
			}
			return nil
		}
	}
	return inc.signal(sig, true)
}

// stopKill is Stop's SIGKILL after stop_timeout, per inc's kill mode:
// a SIGKILL to every process of the cgroup, or the process group and the main process, or the main
// process alone.
func (inc *incarnation) stopKill() error {
	switch inc.killMode {
	case KillProcess:
		return inc.signal(unix.SIGKILL, false)
	case KillCgroup:
		if inc.cg != nil {
			err := inc.cg.kill()
			_ = inc.signal(unix.SIGKILL, false)
			return err
		}
	}
	err := inc.signal(unix.SIGKILL, true)
	// The group may have been left by the main process: kill it too.
	_ = inc.signal(unix.SIGKILL, false)
	return err
}

// awaitCgroupEmpty is the end of a Stop in kill mode "cgroup": the exit
// path has killed what the main process left, and Stop returns once the
// cgroup is empty (bounded by ctx and cgroupEmptyWait).
func (inc *incarnation) awaitCgroupEmpty(ctx context.Context) error {
	if inc.cg == nil {
		return nil
	}
	d := cgroupEmptyWait
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		d = time.Until(dl)
	}
	_, err := inc.cg.empty(d)
	return err
}

// freeCgroup removes the cgroup of svc, which Free is releasing (nothing
// of it runs: Free refuses a running service; stragglers are killed).
// Called with svc.op held.
func (s *Shim) freeCgroup(svc *service) {
	s.mu.Lock()
	cg := svc.cg
	svc.cg = nil
	s.mu.Unlock()
	if cg == nil {
		return
	}
	if err := cg.remove(cgroupEmptyWait); err != nil {
		s.log.Warn("free: cgroup", "service", svc.name, "err", err)
	}
	cg.close()
}

// closeCgroups releases the cgroups at close. A clean close (hbd stopped
// every service first) removes the empty ones and the tree; a cgroup that
// still holds a process stays, for the next plugin to adopt.
func (s *Shim) closeCgroups(clean bool) {
	s.mu.Lock()
	var cgs []*svcCgroup
	for _, svc := range s.svcs {
		if svc.cg != nil {
			cgs = append(cgs, svc.cg)
		}
	}
	s.mu.Unlock()
	for _, cg := range cgs {
		if clean {
			if pop, err := cg.populated(); err == nil && !pop {
				if err := unix.Rmdir(cg.path); err != nil && !errors.Is(err, unix.ENOENT) {
					s.log.Warn("close: cgroup", "cgroup", cg.path, "err", err)
				}
			} else {
				s.log.Info("close: cgroup left in place: it holds processes", "cgroup", cg.path)
			}
		}
		cg.close()
	}
	if t := s.cg.tree; t != nil {
		if clean {
			// Cgroups of services this plugin never spawned nor adopted
			// (made by a plugin before it): rmdir removes the empty ones
			// and fails on the others.
			ents, _ := os.ReadDir(t.dir)
			t.mu.Lock()
			for _, e := range ents {
				if e.IsDir() {
					_ = unix.Unlinkat(t.fd, e.Name(), unix.AT_REMOVEDIR)
				}
			}
			t.mu.Unlock()
			if err := t.remove(); err != nil {
				s.log.Info("close: cgroup tree left in place", "err", err)
			}
		}
		t.close()
	}
}

// adoptCgroup finds the cgroup of an adopted process: the service's, when
// the process is in it (a plugin with cgroups spawned it); nil otherwise
// (the process is then contained by its process group).
func (s *Shim) adoptCgroup(name string, pid int) (*svcCgroup, *svcCgroup) {
	if s.cg.tree == nil {
		return nil, nil
	}
	cg, err := s.cg.tree.service(name)
	if err != nil {
		s.log.Warn("adopt: cgroup", "service", name, "err", err)
		return nil, nil
	}
	if cg.contains(pid) {
		return cg, cg
	}
	return cg, nil
}

// specPlacement is spec's placement and limits; nil when it sets none.
func specPlacement(spec plugin.Spec) *placement {
	if len(spec.CPUs) == 0 && !spec.SetNice && !spec.SetSched && len(spec.Rlimits) == 0 && !spec.SetUmask {
		return nil
	}
	return &placement{
		cpus: spec.CPUs, setNice: spec.SetNice, nice: spec.Nice,
		setSched: spec.SetSched, policy: spec.SchedPolicy, priority: spec.SchedPriority,
		rlimits: spec.Rlimits, setUmask: spec.SetUmask, umask: spec.Umask,
	}
}

// cgroupLimits are spec's limits of its cgroup: key (as the configuration
// names it), controller, interface file, value.
func cgroupLimits(spec plugin.Spec) [][4]string {
	var out [][4]string
	max := func(n int64) string {
		if n < 0 {
			return "max"
		}
		return strconv.FormatInt(n, 10)
	}
	if spec.MemoryMax != 0 {
		out = append(out, [4]string{"memory_max", "memory", "memory.max", max(spec.MemoryMax)})
	}
	if spec.PidsMax != 0 {
		out = append(out, [4]string{"pids_max", "pids", "pids.max", max(spec.PidsMax)})
	}
	if spec.CPUWeight != 0 {
		out = append(out, [4]string{"cpu_weight", "cpu", "cpu.weight", strconv.Itoa(spec.CPUWeight)})
	}
	return out
}

// applyCgroupLimits writes spec's cgroup limits (memory_max, pids_max,
// cpu_weight) into svc's cgroup, enabling each controller for the tree
// first (ROOT's and ROOT/SHM's cgroup.subtree_control). A controller the
// hierarchy does not offer, or cannot give the tree (ROOT holds processes
// and is not the hierarchy's root), fails the spawn naming the key and
// why. Called with svc.op held, before the spawn.
func (s *Shim) applyCgroupLimits(svc *service, spec plugin.Spec) error {
	lims := cgroupLimits(spec)
	if len(lims) == 0 {
		return nil
	}
	if svc.cg == nil {
		return badSpec(fmt.Errorf("needs the service's cgroup (%s)", s.cg), "spawn %q: %s", spec.Name, lims[0][0])
	}
	t := s.cg.tree
	for _, l := range lims {
		key, ctrl, file, val := l[0], l[1], l[2], l[3]
		avail, err := cgroupfs.Controllers(t.dir)
		if err != nil {
			return fmt.Errorf("spawn %q: %s: %w", spec.Name, key, err)
		}
		if !slices.Contains(avail, ctrl) {
			parent := filepath.Dir(t.dir)
			have, _ := cgroupfs.Controllers(parent)
			if !slices.Contains(have, ctrl) {
				return badSpec(fmt.Errorf("the %s controller is not offered here: %s offers %q (a hybrid host keeps it in cgroup v1)",
					ctrl, parent, strings.Join(have, " ")), "spawn %q: %s", spec.Name, key)
			}
			if err := writeCgroupFile(parent, "cgroup.subtree_control", "+"+ctrl); err != nil {
				return badSpec(fmt.Errorf("the %s controller cannot be given to %s: %w (a cgroup with processes, such as hbd's own, cannot enable controllers for its children: set cgroup_root to an empty cgroup)",
					ctrl, t.dir, err), "spawn %q: %s", spec.Name, key)
			}
		}
		if err := writeCgroupFile(t.dir, "cgroup.subtree_control", "+"+ctrl); err != nil {
			return badSpec(fmt.Errorf("enable the %s controller in %s: %w", ctrl, t.dir, err), "spawn %q: %s", spec.Name, key)
		}
		if err := writeCgroupFile(svc.cg.path, file, val); err != nil {
			return badSpec(fmt.Errorf("%s/%s = %s: %w", svc.cg.path, file, val, err), "spawn %q: %s", spec.Name, key)
		}
	}
	return nil
}

// writeCgroupFile writes val to the interface file name of the cgroup dir.
func writeCgroupFile(dir, name, val string) error {
	fd, err := unix.Open(filepath.Join(dir, name), unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(val))
	return err
}

// reopenTree opens the cgroup tree again after its directory was removed
// under the plugin, making it anew.
func (s *Shim) reopenTree() error {
	m := openCgroups(s.opts.CgroupRoot, s.opts.ShmName)
	if m.tree == nil {
		return errors.New(m.reason)
	}
	s.cg.tree.replaceFD(m.tree)
	return nil
}
