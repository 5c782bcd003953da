package shim

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// errReused: the PID in the slot now names another process.
var errReused = errors.New("pid reused (start time differs)")

// adoptAll takes over the clients a previous plugin left in the table
// (docs/design.md#invariant-7). A slot whose process still runs (same PID and same
// start time) is watched again through a new pidfd and flagged adopted; a
// slot whose process is gone, or whose PID now names another process, is
// cleared and reported as an exit with Source "adopt" and status -1.
func (s *Shim) adoptAll() {
	var slots []shm.Slot
	for sl := range s.w.Used() {
		if sl.PID != 0 {
			slots = append(slots, sl)
		}
	}
	for _, sl := range slots {
		s.adopt(sl)
	}
}

func (s *Shim) adopt(sl shm.Slot) {
	pid := int(sl.PID)
	// Hold off the stray reaper: if the process happens to be our child
	// (a plugin restarted in the same process) it must stay unreaped until
	// tracked.
	beginSpawn()
	pidfd, ps, err := openVerified(pid, sl.StartTime)
	child := err == nil && ps.PPID == os.Getpid()
	if child {
		trackPID(pid)
	}
	endSpawn()
	if err != nil {
		s.w.ClearPID(sl.Index, sl.PID)
		now := shm.MonotonicNs()
		s.w.RecordExit(sl.Index, sl.PID, -1, now, shm.StateExited)
		s.log.Info("adopt: process gone", "service", sl.Name, "pid", pid, "reason", err)
		s.emit(plugin.Event{
			Kind: plugin.EventExit, Name: sl.Name, Slot: sl.Index, PID: pid,
			Generation: sl.Generation, Status: -1, Source: "adopt", DetectedNs: now, Adopted: true,
		})
		return
	}

	key := watchKey(sl.Index, sl.Generation)
	svcCg, incCg := s.adoptCgroup(sl.Name, pid)
	s.mu.Lock()
	svc := s.svcs[sl.Name]
	if svc == nil {
		svc = &service{name: sl.Name, idx: sl.Index}
		s.svcs[sl.Name] = svc
	}
	if svc.cg == nil {
		svc.cg = svcCg
	} else {
		svcCg.close()
		incCg = nil
		if svc.cg.contains(pid) {
			incCg = svc.cg
		}
	}
	inc := &incarnation{
		svc: svc, idx: sl.Index, key: key, pid: pid, gen: sl.Generation,
		startTime: sl.StartTime, adopted: true, child: child, pidfd: pidfd,
		done: make(chan struct{}), killMode: KillProcessGroup, cg: incCg,
	}
	bridged := sl.Flags&shm.SlotBridged != 0
	switch {
	case bridged:
		// Another manager's program (bridge_linux.go): never signalled by
		// a stop or a clean shutdown of hb, so not one of hb's groups.
		inc.killMode, inc.cg = KillProcess, nil
	case incCg != nil:
		inc.killMode = KillCgroup
	}
	svc.cur = inc
	if svc.logsDirect() {
		s.kickChores() // the log pass trims what it writes
	}
	s.incs[key] = inc
	if incCg == nil && !bridged {
		s.groups[pid] = struct{}{} // as in started
	}
	delete(s.ended, pid)
	s.mu.Unlock()

	if !bridged {
		s.w.SetFlags(sl.Index, sl.Flags|shm.SlotAdopted)
	}
	// Its output, read by the plugin before this one, is read on: its
	// exit, from the watch on, drains it.
	s.takeInherited(svc)
	// Emitted before the watch is armed: an exit reported at once must not
	// overtake it in the event stream.
	s.emit(plugin.Event{
		Kind: plugin.EventAdopt, Name: sl.Name, Slot: sl.Index, PID: pid,
		Generation: sl.Generation, DetectedNs: shm.MonotonicNs(), Adopted: true,
	})
	if err := s.watcher.Watch(key, pid, pidfd); err != nil {
		// Alive but unwatchable: leave it in the table, say so loudly.
		s.mu.Lock()
		delete(s.incs, key)
		svc.cur = nil
		s.mu.Unlock()
		unix.Close(pidfd)
		if child {
			untrackPID(pid)
		}
		s.log.Error("adopt: cannot watch; its exit will not be detected", "service", sl.Name, "pid", pid, "err", err)
		return
	}
	s.adopted++
	s.log.Info("adopted", "service", sl.Name, "pid", pid, "generation", sl.Generation, "child", child)
}

// openVerified opens a pidfd for pid if pid still names the process that
// started at startTime. The start time is checked again after pidfd_open, so
// the pidfd cannot refer to a process that took over the PID in between.
func openVerified(pid int, startTime uint64) (int, procStat, error) {
	ps, err := readProcStat(pid)
	if err != nil {
		return -1, ps, fmt.Errorf("pid %d: %w", pid, unwrapPath(err))
	}
	if ps.StartTime != startTime {
		return -1, ps, fmt.Errorf("pid %d: %w", pid, errReused)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, ps, fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
	}
	ps, err = readProcStat(pid)
	if err != nil || ps.StartTime != startTime {
		unix.Close(pidfd)
		if err == nil {
			err = errReused
		}
		return -1, ps, fmt.Errorf("pid %d: %w", pid, unwrapPath(err))
	}
	return pidfd, ps, nil
}
