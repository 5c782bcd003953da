package shim

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

// onExit is the exit fast path, called by the Watcher on the goroutine that
// detected the exit. It stores 0 in the slot and nothing else: no lookup (the
// slot index is in the key), no lock, no allocation, no logging. The process
// is not reaped yet here (still exiting, or a zombie), so its PID cannot have
// been reused: the slot never names a recycled process (docs/design.md#invariant-1). Everything else
// happens in finish, after the Exit is queued on Watcher.Exits.
func (s *Shim) onExit(ex connector.Exit) {
	// After a kill, onKill has cleared the slot and told the test hook.
	s.storeDeath(int(ex.Key>>32), ex.PID, ex.DetectedNs, ex.KilledNs == 0)
}

// onKill is onExit for a SIGKILL the kernel has delivered to a watched
// process (connector.Options.OnKill): the process will not run again, so
// its slot goes to 0 now, before it even gets a CPU to exit on. The exit
// follows through onExit and finish as for any other death.
func (s *Shim) onKill(k connector.Kill) {
	s.storeDeath(int(k.Key>>32), k.PID, k.DetectedNs, true)
}

// storeDeath clears slot idx if it holds pid, times the store from
// detectedNs, and tells the test hook (onCleared) when hook is set.
func (s *Shim) storeDeath(idx, pid int, detectedNs uint64, hook bool) {
	cleared := s.w.ClearPID(idx, uint32(pid))
	if cleared {
		if d, ok := elapsedSince(detectedNs, shm.MonotonicNs()); ok {
			s.detectToStore.observe(d)
		}
	}
	if hook && s.opts.onCleared != nil {
		s.opts.onCleared(idx, pid, cleared)
	}
}

// gone reports whether inc's main process has exited or been SIGKILLed: a
// slot must not be given its PID then. The caller holds inc.mu, so a child
// that has exited is not reaped meanwhile.
func (s *Shim) gone(inc *incarnation) bool {
	return pollReadable(inc.pidfd, 0) || s.watcher.Killed(inc.key)
}

// exitWorkers is how many exits are reaped (and respawned) at once.
const exitWorkers = 2

// exitLoop runs finish for exits; exitWorkers of them share the queue, so
// a kill of many services is reaped and respawned a few at a time without
// starving the detectors of CPU.
//
// Exits of one service can overlap. The replacement a finish starts is
// watched before that finish returns, and one that exits at once (a crash
// loop) is taken by the other worker while the first is still in its tail.
// Invariant: by the time a replacement's watch is armed, the exit path that
// started it no longer holds the service's op lock (announce releases it
// just before WatchChild). So the op lock, when a finish cannot take it in
// planRespawn, is held by a host call (Spawn, Stop, Free), which then owns
// the decision, never by the exit path of the incarnation before. Were it
// held up to the end of finish, the other worker would leave the exit to
// the host, and with hbd away nobody would ever respawn the service.
func (s *Shim) exitLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.quit:
			return
		case ex, ok := <-s.watcher.Exits():
			if !ok {
				return
			}
			s.finish(ex)
		}
	}
}

// finish is the exit slow path: reap, record, report, respawn. The slot
// already reads 0 (onExit). One exit's path, in order:
//  1. planRespawn: when the plugin respawns the service itself
//     (Spec.Respawn), set the respawn up first (locks, the next
//     incarnation's attributes), so that the replacement starts the moment
//     the old one is reaped;
//  2. reapExited: if Stop is under way, SIGKILL what is left of the process
//     group while the zombie still pins the group ID; reap exactly once
//     with waitid(P_PIDFD) — the only wait on a spawned child anywhere in
//     the process (docs/design.md#invariant-2) — and start the replacement
//     on the same thread (reapRespawn);
//  3. startedReplacement: the replacement's PID goes into the slot;
//  4. exitStatus: the reaped status, else the connector's, else -1 (an
//     adopted process that is not our child);
//  5. recordExit: stop watching, close the pidfd, record the exit in the
//     slot, wake Stop;
//  6. report: emit EventExit then the replacement's EventSpawn, or start
//     the replacement now if reapRespawn did not (respawn), or EventExit
//     alone.
func (s *Shim) finish(ex connector.Exit) {
	if ex.KilledNs != 0 && ex.KilledNs < ex.DetectedNs {
		// The death was seen at the kill, and the slot went to 0 then:
		// that is its time (the slot's last_exit_ns, the event's).
		ex.DetectedNs = ex.KilledNs
	}
	// What the service said before this exit comes first: a MAINPID= sent
	// by its daemon before the launcher exited moves the main process,
	// and then this is not the service's exit.
	s.drainNotifyOf(ex)
	inc, former := s.takeIncarnation(ex)
	if inc == nil {
		if former {
			// A main process the service replaced (MAINPID=): no death.
			// It is no longer tracked, so the stray reaper reaps it if it
			// is our child; a pass now rather than at the next beat.
			s.log.Debug("exit of a former main process", "pid", ex.PID, "source", ex.Source.String())
			kickReaper()
		}
		return // already finished (by close, or a failed spawn)
	}
	plan := s.planRespawn(inc)
	if plan != nil {
		defer plan.release()
	}
	r, pidfd := s.reapExited(inc, plan)
	next := s.startedReplacement(inc, plan, r)
	status := s.exitStatus(inc, ex, r, pidfd)
	s.recordExit(inc, pidfd, status, ex.DetectedNs)
	s.report(inc, ex, status, plan, r, next)
	if inc.child || inc.main.Load() != 0 {
		// After reaping: from here the stray reaper may take the PID (if it
		// was not reaped above) and look past it for strays. A main
		// process named by MAINPID= is tracked whether or not it is our
		// child: it may have become one since (its launcher exited).
		untrackPID(inc.mainPID())
	}
	s.log.Debug("exit", "service", inc.svc.name, "pid", inc.mainPID(), "status", status,
		"source", ex.Source.String(), "reaped", r.ok)
}

// takeIncarnation removes the incarnation whose exit ex reports from the
// live set and returns it; nil when another path (close, a failed spawn)
// has already taken it, or when ex is the exit of a process that is no
// longer its main process (former: the service named another with
// MAINPID=, followMain; the incarnation lives on). Exactly one finish runs
// per incarnation, and a change of main process either comes before
// this (then ex is a former main's) or finds the incarnation taken.
func (s *Shim) takeIncarnation(ex connector.Exit) (inc *incarnation, former bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc = s.incs[ex.Key]
	if inc != nil && inc.mainPID() != ex.PID {
		return nil, true
	}
	delete(s.incs, ex.Key)
	return inc, false
}

// reapExited reaps inc (our child) once and, with a plan, starts the
// replacement on the same thread. It returns the reap's result and inc's
// pidfd, which the caller closes: from here nothing else uses it, since
// inc.reaped is set.
func (s *Shim) reapExited(inc *incarnation, plan *respawnPlan) (reaped, int) {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	if !inc.child && inc.main.Load() != 0 {
		// A main process named by MAINPID= becomes our child when its
		// launcher exits (the plugin is a child subreaper): then it is
		// reaped here, as any child, and only here (it is tracked).
		if ps, err := readProcStat(inc.mainPID()); err == nil && ps.PPID == os.Getpid() && ps.StartTime == inc.startTime {
			inc.child = true
		}
	}
	inc.killRestAtStop()
	var r reaped
	pidfd := inc.pidfd
	if inc.child {
		var a *procAttr
		var pol plugin.Respawn
		if plan != nil {
			a, pol = &plan.attr, plan.spec.Respawn
			// A spawn is open from here until the replacement is in the
			// slot (startedReplacement): the stray reaper's kick, if it
			// has one, comes after.
			beginSpawn()
		}
		r = reapRespawn(pidfd, reapWait, a, pol, &inc.stopping)
	}
	s.afterReap(inc, &r)
	inc.pidfd = -1
	inc.reaped = true
	return r, pidfd
}

// startedReplacement puts the replacement reapRespawn started (if any) in
// the slot and returns it as the service's current incarnation, and closes
// the spawn reapExited opened.
func (s *Shim) startedReplacement(inc *incarnation, plan *respawnPlan, r reaped) *incarnation {
	var next *incarnation
	if r.spawned() {
		trackPID(r.c.pid)
		var err error
		if next, err = s.started(plan.startPlan, r.c); err != nil {
			s.log.Warn("respawn", "service", inc.svc.name, "err", err)
		}
	}
	if plan != nil && inc.child {
		endSpawn()
	}
	return next
}

// zombieWait bounds how long the exit path waits for an adopted process
// that is exiting to become a zombie, to read its exit status.
const zombieWait = 500 * time.Millisecond

// exitStatus is inc's wait status as reaped, else as the connector saw it,
// else -1. For an adopted process (not our child) it is read from the
// zombie's /proc/PID/stat when the zombie is still there with inc's start
// time: hbd, a child subreaper, holds the zombies of the services a dead
// plugin left and reaps one only after this plugin reported its exit. A
// bridged program's is what its pidfd tells once its manager has reaped it.
func (s *Shim) exitStatus(inc *incarnation, ex connector.Exit, r reaped, pidfd int) int {
	status := -1
	if ex.HaveStatus {
		status = ex.Status
	}
	if !inc.child {
		if inc.managerName() != "" {
			// A bridged program is traced (WatchTraced), so the connector
			// has not spoken; its manager reaps it at once: wait for that.
			if status == -1 {
				status = pidfdExitStatus(pidfd, nonChildReapWait)
			}
			return status
		}
		if pidfd >= 0 && pollReadable(pidfd, zombieWait) {
			if st, err := readProcStat(inc.mainPID()); err == nil && st.State == 'Z' && st.StartTime == inc.startTime && st.HaveExitCode {
				return shm.ExitStatus(st.ExitCode)
			}
		}
		if status == -1 {
			status = pidfdExitStatus(pidfd, 0)
		}
		return status
	}
	switch {
	case r.ok:
		status = r.status
	case errors.Is(r.err, unix.ECHILD):
		// Reaped elsewhere, or not ours after all: keep the connector's word.
	case r.err != nil:
		s.log.Warn("reap", "service", inc.svc.name, "pid", inc.mainPID(), "err", r.err)
	default:
		s.log.Warn("reap: exited process is not waitable yet; left to the stray reaper",
			"service", inc.svc.name, "pid", inc.mainPID())
	}
	return status
}

// recordExit ends inc's watch, closes its pidfd, records the exit in the
// slot (stopped when Stop asked for it, else exited), drains the service's
// log pipes and wakes Stop.
func (s *Shim) recordExit(inc *incarnation, pidfd, status int, detectedNs uint64) {
	s.watcher.Unwatch(inc.key)
	unix.Close(pidfd)
	state := shm.StateExited
	if inc.stopping.Load() {
		state = shm.StateStopped
	}
	s.w.RecordExit(inc.idx, uint32(inc.mainPID()), int32(status), detectedNs, state)
	s.kickRecord()
	s.groupEnded(inc.pid)
	// What it wrote is in its log before its exit is told (and before a
	// Stop waiting on done returns).
	s.drainLogs(inc.svc)
	close(inc.done)
}

// report emits inc's EventExit: marked Respawned just before the spawn
// event of the replacement (started by reapRespawn, or now by respawn), or
// alone.
func (s *Shim) report(inc *incarnation, ex connector.Exit, status int, plan *respawnPlan, r reaped, next *incarnation) {
	ev := plugin.Event{
		Kind:       plugin.EventExit,
		Name:       inc.svc.name,
		Slot:       inc.idx,
		PID:        inc.mainPID(),
		Generation: inc.gen,
		Status:     status,
		Source:     ex.Source.String(),
		DetectedNs: ex.DetectedNs,
		Adopted:    inc.adopted,
		Reason:     inc.exitReason(),
		Message:    inc.exitNote(status),
		Manager:    inc.managerName(),
	}
	emitted := false
	switch {
	case next != nil:
		var err error
		if _, emitted, err = s.announce(next, &ev, plan.releaseOp); err != nil {
			s.log.Warn("respawn", "service", inc.svc.name, "err", err)
		}
	case plan != nil && !r.spawned():
		emitted = s.respawn(plan, r, status, &ev)
	}
	if !emitted {
		s.emit(ev)
	} else if plan != nil {
		if d, ok := elapsedSince(ex.DetectedNs, shm.MonotonicNs()); ok {
			s.respawnLatency.observe(d)
		}
	}
	if s.opts.onRespawned != nil && plan != nil && emitted {
		s.opts.onRespawned(plan.idx, plan.gen)
	}
}

// respawnPlan is a respawn by the plugin, set up before the exit is reaped.
// It holds the Shim's life lock (shared) until release, and the service's
// op lock until releaseOp or release, whichever comes first. It is used by
// the finish that made it only.
type respawnPlan struct {
	*startPlan
	s      *Shim
	old    *incarnation // the one that exited
	opHeld bool         // svc.op is held
}

// releaseOp lets go of the service's op lock: the replacement is in the
// slot and is the service's current incarnation, and its watch is about to
// be armed (see exitLoop).
func (p *respawnPlan) releaseOp() {
	if p.opHeld {
		p.opHeld = false
		p.svc.op.Unlock()
	}
}

func (p *respawnPlan) release() {
	p.dropBeat()
	p.releaseOp()
	p.s.life.RUnlock()
}

// planRespawn sets up the next incarnation of inc's service when the
// plugin is to start it itself (plugin.Respawn) — the host's policy would
// decide the same, so the round trip to the host is skipped. It never
// competes with the host: a stop under way, or any Spawn, Stop or Free
// holding the service, or a closing shim, leaves the exit to the host, as
// does an exit before StartWindow. The exit path of the incarnation before
// never holds the service here (see exitLoop). The exit status is checked
// once known (respawn). nil: no respawn by the plugin.
func (s *Shim) planRespawn(inc *incarnation) *respawnPlan {
	svc := inc.svc
	if inc.stopping.Load() || inc.started.IsZero() || !inc.ready.Load() {
		return nil // (not ready: a failed start, the host's to judge)
	}
	if !s.life.TryRLock() {
		return nil
	}
	if s.closed.Load() || !svc.op.TryLock() {
		s.life.RUnlock()
		return nil
	}
	p := &respawnPlan{s: s, old: inc}
	pol := svc.spec.Respawn
	s.mu.Lock()
	current := svc.cur == inc
	s.mu.Unlock()
	if current && !svc.freed && pol.Enabled && time.Since(inc.started) >= pol.StartWindow && s.headlessAllows(svc) {
		var err error
		if p.startPlan, err = s.planStart(svc, svc.spec, true); err != nil {
			s.log.Warn("respawn", "service", svc.name, "err", err)
		}
	}
	if p.startPlan == nil {
		svc.op.Unlock()
		s.life.RUnlock()
		return nil
	}
	p.opHeld = true
	return p
}

// respawn starts the planned incarnation when reapRespawn did not try to
// and the policy wants status respawned, or reports why reapRespawn's try
// failed. exit is emitted, marked Respawned, just before the new
// incarnation's spawn event; respawn reports whether it was.
func (s *Shim) respawn(p *respawnPlan, r reaped, status int, exit *plugin.Event) bool {
	if r.tried {
		s.log.Warn("respawn", "service", p.svc.name, "err", p.spawnError(r.spawnErr))
		return false
	}
	if !p.spec.Respawn.WantsStatus(status) || p.old.stopping.Load() {
		return false
	}
	_, emitted, err := s.launch(p.startPlan, exit, p.releaseOp)
	if err != nil {
		s.log.Warn("respawn", "service", p.svc.name, "err", err)
	}
	return emitted
}

// signal sends sig to inc's process group (group true) or main process. The
// main process is signalled through its pidfd, which cannot reach a recycled
// PID. The group is signalled by number, so only while the number is known to
// be pinned by the main process, a member: our child is not reaped before
// inc.mu is write-locked; a non-child is reaped by someone else, so its
// group is signalled only while its pidfd says it is alive.
func (inc *incarnation) signal(sig syscall.Signal, group bool) error {
	inc.mu.RLock()
	defer inc.mu.RUnlock()
	if inc.reaped {
		return nil
	}
	if group && (inc.child || !pollReadable(inc.pidfd, 0)) && inc.inGroup() {
		return killGroup(inc.pid, sig)
	}
	return pidfdSignal(inc.pidfd, sig)
}

// inGroup reports whether the main process is in the process group the
// spawned process leads (inc.pid): the spawned one is, as its leader
// (Setpgid), unless it moved since; one named by MAINPID= is when it
// stayed in its launcher's group.
func (inc *incarnation) inGroup() bool {
	pgid, err := unix.Getpgid(inc.mainPID())
	return err == nil && pgid == inc.pid
}

// headlessAllows reports whether the plugin may respawn svc itself: always
// while an hbd is subscribed to the events; while none is (hbd is gone),
// Options.HeadlessRespawns times in a row, counted from the last
// subscription. Past that the exit is left for the next hbd, which finds
// the service exited and applies its policy. Called with svc.op held.
func (s *Shim) headlessAllows(svc *service) bool {
	headless, epoch := s.events.headless()
	if !headless {
		return true
	}
	if svc.headlessEpoch != epoch {
		svc.headlessEpoch, svc.headless = epoch, 0
	}
	limit := s.opts.HeadlessRespawns
	if limit == 0 {
		limit = DefaultHeadlessRespawns
	}
	if svc.headless >= limit {
		if svc.headless == limit {
			s.log.Warn("no hbd: leaving the service down until one connects", "service", svc.name, "headless_respawns", limit)
			svc.headless++
		}
		return false
	}
	svc.headless++
	return true
}
