package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/execpath"
	"github.com/hbshim/hb/plugin/logdir"
	"github.com/hbshim/hb/shm"
)

// specError is a bad Spec: its message names the service and the problem,
// and it matches both plugin.ErrBadSpec and the underlying error.
type specError struct {
	msg string
	err error
}

func (e *specError) Error() string   { return e.msg }
func (e *specError) Unwrap() []error { return []error{plugin.ErrBadSpec, e.err} }

func badSpec(err error, format string, args ...any) error {
	return &specError{msg: fmt.Sprintf(format, args...) + ": " + err.Error(), err: err}
}

// SpawnMany implements plugin.ManySpawner: each spec as Spawn, by as many
// workers as the machine has CPUs (at least two), taking the specs in their
// order.
func (s *Shim) SpawnMany(ctx context.Context, specs []plugin.Spec) ([]plugin.SpawnOutcome, error) {
	outs := make([]plugin.SpawnOutcome, len(specs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(specs), max(2, runtime.NumCPU())) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(specs) {
					return
				}
				outs[i].Result, outs[i].Err = s.Spawn(ctx, specs[i])
			}
		})
	}
	wg.Wait()
	return outs, nil
}

// Spawn implements plugin.Shim. Order: fork+exec (vfork-style, with a pidfd)
// → Spawned in the slot (PID stored last) → Watch. A child that dies before
// Watch leaves a readable pidfd, so the watch fires at once: the exit is
// subscribed to, in effect, before the child starts (docs/design.md#invariant-2).
// On any error the slot is left with PID 0.
func (s *Shim) Spawn(ctx context.Context, spec plugin.Spec) (plugin.SpawnResult, error) {
	if err := s.enter(); err != nil {
		return plugin.SpawnResult{}, err
	}
	defer s.leave()
	if err := shm.ValidName(spec.Name); err != nil {
		return plugin.SpawnResult{}, &specError{msg: err.Error(), err: err}
	}
	if len(spec.Command) == 0 || spec.Command[0] == "" {
		return plugin.SpawnResult{}, badSpec(errors.New("empty command"), "spawn %q", spec.Name)
	}
	svc, err := s.lockService(spec.Name, true)
	if err != nil {
		return plugin.SpawnResult{}, err
	}
	defer svc.op.Unlock()
	if svc.bridged != "" {
		return plugin.SpawnResult{}, badSpec(errors.New("a bridged program is started by its manager"), "spawn %q (%s)", spec.Name, svc.bridged)
	}
	if err := s.awaitNotRunning(ctx, svc); err != nil {
		return plugin.SpawnResult{}, err
	}
	var res plugin.SpawnResult
	if spec.Type == TypeForking {
		res, err = s.startForking(ctx, svc, spec)
	} else {
		res, err = s.start(svc, spec)
	}
	if err == nil {
		// A failed spawn's pipe is told with the next one that works, or
		// by Info.
		res.LogPipes = s.newPipes(svc)
	}
	return res, err
}

// start starts one incarnation of svc for the host: spawnProc, slot, spawn
// event, watch. It remembers spec for respawns by the plugin
// (Spec.Respawn). Called with svc.op held and no incarnation of svc running.
func (s *Shim) start(svc *service, spec plugin.Spec) (res plugin.SpawnResult, err error) {
	p, err := s.planStart(svc, spec, false)
	if err != nil {
		return plugin.SpawnResult{}, err
	}
	res, _, err = s.launch(p, nil, nil)
	return res, err
}

// launch spawns what p planned, records it (started) and announces it,
// with exit and unlock as for announce.
func (s *Shim) launch(p *startPlan, exit *plugin.Event, unlock func()) (res plugin.SpawnResult, emitted bool, err error) {
	if err := s.emptyCgroup(p); err != nil {
		return plugin.SpawnResult{}, false, err
	}
	c, err := spawnTracked(&p.attr)
	if err != nil {
		p.dropBeat()
		return plugin.SpawnResult{}, false, p.spawnError(err)
	}
	inc, err := s.started(p, c)
	if err != nil {
		p.dropBeat()
		return plugin.SpawnResult{}, false, err
	}
	return s.announce(inc, exit, unlock)
}

// startPlan is an incarnation about to be started: what spawnProc needs,
// worked out beforehand.
type startPlan struct {
	svc   *service
	spec  plugin.Spec
	argv0 string // resolved executable
	idx   int
	gen   uint64
	attr  procAttr
	beat  *shm.BeatArea // the watchdog's beat area, until takeBeat or dropBeat
	// readyR, readyW: the notification pipe of ready "fd:N" (readyW is
	// the child's N), until takeBeat or dropBeat.
	readyR, readyW *os.File
	// killMode is the incarnation's kill mode (Spec.KillMode as in force).
	killMode string
}

// planStart works out how to start the next incarnation of svc. A respawn
// by the plugin runs the Spec of the last spawn again: its executable is
// already resolved, and exec itself reports one that has gone. Called with
// svc.op held.
func (s *Shim) planStart(svc *service, spec plugin.Spec, respawn bool) (*startPlan, error) {
	argv0 := svc.exe
	if !respawn || argv0 == "" {
		var err error
		argv0, _, err = execpath.Look(spec.Command[0], spec.Dir, envValue(spec.Env, "PATH"))
		if err != nil {
			return nil, badSpec(errors.New(execReason(err)), "spawn %q: exec %q", spec.Name, spec.Command[0])
		}
		if spec.Dir != "" {
			if st, err := os.Stat(spec.Dir); err != nil {
				return nil, badSpec(unwrapPath(err), "spawn %q: dir %q", spec.Name, spec.Dir)
			} else if !st.IsDir() {
				return nil, badSpec(syscall.ENOTDIR, "spawn %q: dir %q", spec.Name, spec.Dir)
			}
		}
	}
	var cred *syscall.Credential
	if spec.UID >= 0 || spec.GID >= 0 {
		cred = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
		if spec.UID >= 0 {
			cred.Uid = uint32(spec.UID)
		}
		if spec.GID >= 0 {
			cred.Gid = uint32(spec.GID)
		}
		for _, g := range spec.Groups {
			cred.Groups = append(cred.Groups, uint32(g))
		}
	}
	stdout, err := s.stdio(svc, spec, spec.Stdout, "out")
	if err != nil {
		return nil, err
	}
	stderr, err := s.stdio(svc, spec, spec.Stderr, "err")
	if err != nil {
		return nil, err
	}
	idx := svc.idx
	gen := s.w.Snapshot(idx).Generation + 1
	p := &startPlan{
		svc: svc, spec: spec, argv0: argv0, idx: idx, gen: gen,
		attr: procAttr{
			path: argv0, argv: spec.Command, env: childEnv(spec.Env, spec.Name, idx, s.shmPath, gen), dir: spec.Dir,
			files: [3]int{int(s.devnull.Fd()), stdout, stderr}, cred: cred,
		},
	}
	if err := s.planReady(p); err != nil {
		return nil, err
	}
	if err := p.planBeat(); err != nil {
		return nil, err
	}
	if err := s.planContainment(p); err != nil {
		return nil, err
	}
	return p, nil
}

// spawnError is the error of a failed spawnProc of p: a bad Spec when exec
// refused the executable or a setting.
func (p *startPlan) spawnError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC),
		errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.EPERM),
		errors.Is(err, syscall.EINVAL):
		return badSpec(err, "spawn %q: exec %q", p.spec.Name, p.argv0)
	}
	return fmt.Errorf("spawn %q: exec %q: %w", p.spec.Name, p.argv0, err)
}

// started records the child c that p started as svc's current incarnation
// and puts it in the slot (PID stored last). announce must follow.
func (s *Shim) started(p *startPlan, c child) (*incarnation, error) {
	s.trim.Note()
	svc, spec, idx, gen, pid, pidfd := p.svc, p.spec, p.idx, p.gen, c.pid, c.pidfd
	startNs := shm.MonotonicNs()
	if pidfd < 0 {
		// The kernel gave no pidfd (pre-5.2): without it there is no safe
		// exit detection. Undo the spawn.
		unix.Kill(-pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
		untrackPID(pid)
		return nil, fmt.Errorf("spawn %q: the kernel returned no pidfd", spec.Name)
	}
	// The kernel stamps the child's start time (in clock ticks since boot)
	// inside clone: when the clock did not cross a tick boundary around
	// the spawn, that tick is the start time, and /proc need not be read.
	// Otherwise read it: the child cannot be reaped before finish runs, so
	// /proc/PID stays readable (a zombie still has its start time).
	startTime := c.tick0
	if c.tick0 != c.tick1 {
		var err error
		if startTime, err = shm.StartTime(pid); err != nil {
			s.log.Warn("spawn: start time", "service", spec.Name, "pid", pid, "err", err)
		}
	}

	inc := &incarnation{
		svc: svc, idx: idx, key: watchKey(idx, gen), pid: pid, gen: gen,
		startTime: startTime, child: true, pidfd: pidfd, done: make(chan struct{}),
		killMode: p.killMode, armed: make(chan struct{}),
	}
	if spec.Ready == plugin.ReadyNotify {
		inc.notify = svc.notify
	}
	if p.attr.intoCgroup {
		inc.cg = svc.cg
	}
	p.takeBeat(inc)
	s.mu.Lock()
	svc.cur = inc
	if svc.logsDirect() {
		s.kickChores() // the log pass trims what it writes
	}
	s.incs[inc.key] = inc
	if inc.cg == nil {
		// In a cgroup, what outlives the main process is killed at its
		// exit: there is no group to drain at a clean close, whose number
		// could by then name someone else's.
		s.groups[pid] = struct{}{}
	}
	delete(s.ended, pid)
	s.mu.Unlock()

	state := shm.StateStarting
	if spec.RunningAtSpawn && !needsReady(spec) {
		state = shm.StateRunning
	}
	inc.dogSpec = spec
	published := uint32(pid)
	if needsReady(spec) {
		published = 0 // until READY=1 (declareReady)
	} else {
		inc.ready.Store(true)
	}
	s.w.Spawned(idx, published, gen, startTime, state, 0)
	s.kickRecord()
	svc.spec, svc.exe = spec, p.argv0
	inc.started = time.Now()
	inc.startNs = startNs
	return inc, nil
}

// announce emits the spawn event of inc, which started just put in the
// slot, and arms its watch. When exit is not nil it is the previous
// incarnation's exit event, emitted (marked Respawned) just before the
// spawn event; emitted says whether it was. unlock, when not nil, is
// called just before the watch is armed: the exit path's respawn lets go
// of the service there (see exitLoop). Called with svc.op held.
func (s *Shim) announce(inc *incarnation, exit *plugin.Event, unlock func()) (res plugin.SpawnResult, emitted bool, err error) {
	svc, idx, gen, pid, pidfd := inc.svc, inc.idx, inc.gen, inc.pid, inc.pidfd
	spec := svc.spec // written under svc.op: read while it is held
	if inc.armed != nil {
		// From here followMain may move the main process: the watch is
		// armed, or the spawn undone.
		defer close(inc.armed)
	}
	if exit != nil {
		exit.Respawned = true
		s.emit(*exit)
		emitted = true
	}
	// Emitted before the watch is armed: an exit reported at once must not
	// overtake it in the event stream.
	s.emit(plugin.Event{
		Kind: plugin.EventSpawn, Name: spec.Name, Slot: idx, PID: pid,
		Generation: gen, DetectedNs: inc.startNs,
	})
	if unlock != nil {
		// From here a host call may hold the service; it finds inc
		// current and running (its PID is in the slot until the watch
		// reports its exit).
		unlock()
	}
	if err := s.watcher.WatchChild(inc.key, pid, pidfd); err != nil {
		// Without a watch nobody would learn of the exit: undo the spawn.
		if inc.beat != nil {
			inc.beat.Close()
		}
		s.abortSpawn(inc)
		return plugin.SpawnResult{}, emitted, fmt.Errorf("spawn %q: watch pid %d: %w", spec.Name, pid, err)
	}
	if inc.ready.Load() {
		s.startWatchdog(inc)
	} else {
		s.armReady(inc, spec)
	}
	s.log.Debug("spawned", "service", spec.Name, "pid", pid, "slot", idx, "generation", gen)
	return plugin.SpawnResult{Slot: idx, PID: pid, Generation: gen, StartTime: inc.startTime}, emitted, nil
}

// abortSpawn kills and reaps a child whose watch could not be armed, and
// records and reports the exit.
func (s *Shim) abortSpawn(inc *incarnation) {
	s.mu.Lock()
	delete(s.incs, inc.key)
	s.mu.Unlock()
	s.w.ClearPID(inc.idx, uint32(inc.pid))
	inc.mu.Lock()
	_ = killGroup(inc.pid, unix.SIGKILL)
	var ci childInfo
	status := -1
	if err := waitid(unix.P_PIDFD, inc.pidfd, &ci, unix.WEXITED); err == nil {
		status = ci.status()
	}
	unix.Close(inc.pidfd)
	inc.pidfd = -1
	inc.reaped = true
	inc.mu.Unlock()
	now := shm.MonotonicNs()
	s.w.RecordExit(inc.idx, uint32(inc.pid), int32(status), now, shm.StateExited)
	s.kickRecord()
	s.groupEnded(inc.pid)
	close(inc.done)
	s.emit(plugin.Event{
		Kind: plugin.EventExit, Name: inc.svc.name, Slot: inc.idx, PID: inc.pid,
		Generation: inc.gen, Status: status, Source: connector.SourceReaper.String(), DetectedNs: now,
	})
	untrackPID(inc.pid)
}

// awaitNotRunning returns nil when svc has no live incarnation. One whose
// exit was detected (slot PID already 0) but not yet recorded is waited
// for; a live one is plugin.ErrRunning. Called with svc.op held.
func (s *Shim) awaitNotRunning(ctx context.Context, svc *service) error {
	s.mu.Lock()
	inc := svc.cur
	s.mu.Unlock()
	if inc == nil {
		return nil
	}
	select {
	case <-inc.done:
		return nil
	default:
	}
	if s.w.PID(inc.idx) != 0 {
		return fmt.Errorf("service %q: %w (pid %d)", svc.name, plugin.ErrRunning, inc.mainPID())
	}
	select {
	case <-inc.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("service %q: waiting for the exit of pid %d to be recorded: %w", svc.name, inc.mainPID(), ctx.Err())
	case <-s.quit:
		return errClosed
	}
}

// stdio returns the descriptor for one of the child's output streams.
func (s *Shim) stdio(svc *service, spec plugin.Spec, mode, stream string) (int, error) {
	switch mode {
	case "", "inherit":
		// hbd's own stdout or stderr (under systemd: the journal), which
		// hbd handed to the plugin when it launched it; the plugin keeps
		// them for as long as it runs, across restarts of hbd. Without
		// them, descriptor 2, which plugin.Serve points at the plugin's log
		// file. Never os.Stdout/os.Stderr: while go-plugin serves, those
		// are its pipes to the hbd that launched it, gone once that hbd
		// exits.
		f := s.opts.Stdout
		if stream == "err" {
			f = s.opts.Stderr
		}
		if f != nil {
			return int(f.Fd()), nil
		}
		return 2, nil
	case "null":
		return int(s.devnull.Fd()), nil
	case "file":
	default:
		return -1, badSpec(errors.New(`want "file", "inherit" or "null"`), "spawn %q: std%s %q", spec.Name, stream, mode)
	}
	if spec.LogDir == "" {
		return -1, badSpec(errors.New("no log directory"), "spawn %q: std%s \"file\"", spec.Name, stream)
	}
	name := spec.Name + "." + stream + ".log"
	l := s.logFileOf(svc, stream, spec.LogDir, name, spec.LogMaxBytes, spec.LogBackups, spec.LogTimestamps, spec.LogDirect)
	// Only this service's op and l.mu are held here, and nothing in
	// spawnFD waits for another process (see package logdir).
	fd, err := l.spawnFD()
	if err == nil && fd < 0 {
		fd, err = s.pipeFD(svc, stream, l)
	}
	if err != nil {
		if errors.Is(err, logdir.ErrUnsafe) {
			return -1, badSpec(err, "spawn %q: std%s \"file\"", spec.Name, stream)
		}
		return -1, fmt.Errorf("spawn %q: std%s \"file\": %w", spec.Name, stream, err)
	}
	return fd, nil
}

// childEnv is env without any HB_* variables the shim sets, plus those.
func childEnv(env []string, name string, idx int, shmPath string, gen uint64) []string {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		switch {
		case strings.HasPrefix(kv, "HB_SERVICE="), strings.HasPrefix(kv, "HB_SLOT="),
			strings.HasPrefix(kv, "HB_SHM="), strings.HasPrefix(kv, "HB_GENERATION="):
			continue
		}
		out = append(out, kv)
	}
	return append(out,
		"HB_SERVICE="+name,
		"HB_SLOT="+strconv.Itoa(idx),
		"HB_SHM="+shmPath,
		"HB_GENERATION="+strconv.FormatUint(gen, 10))
}

// envValue is the value of the last KEY=… in env, or os.Getenv(key) if env
// has none.
func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return os.Getenv(key)
}

// execReason is what execpath.Look found wrong, without the path the
// caller names itself.
func execReason(err error) string {
	var e *execpath.Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	return err.Error()
}

// unwrapPath drops the *fs.PathError around err: callers name the path
// themselves.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
