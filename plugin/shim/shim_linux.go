package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
)

var _ plugin.Shim = (*Shim)(nil)

// FeatureVersion is what this plugin honours, reported in plugin.Info.
const FeatureVersion = plugin.FeatureSpawnMany

// trimBurst spawns, then trimQuiet without one, and the plugin gives the
// memory of the burst back (plugin.BurstTrim).
const (
	trimBurst = 64
	trimQuiet = time.Second
)

// beatInterval is the period of writer_beat_ns (readers use it to tell that
// the watcher itself is alive and not stopped) and of the chores (beatLoop):
// log trimming, a failed adoption record written again, and, where the
// native beat thread or the table watch are missing, the beat and the
// table's Check. Nothing on the exit path depends on it.
const beatInterval = time.Second

// reapWait bounds how long the exit path waits for a detected exit's zombie
// to become waitable (see reapPidfd).
const reapWait = time.Second

// errClosed is returned by methods called after Shutdown or Close.
var errClosed = fmt.Errorf("shim: closed: %w", plugin.ErrShutdown)

// Options configures New.
type Options struct {
	// ShmName is the table's name under ShmDir (default shm.DefaultName).
	ShmName string
	// ShmDir is the directory of the table (default /dev/shm; tests use a
	// temporary directory).
	ShmDir string
	// StateDir, when set, holds RecordFile, the second source of adoption
	// (see RecordFile). It must be owned by the effective user and not
	// writable by group or others.
	StateDir string
	// Slots is the table's capacity when it is created (default
	// shm.DefaultSlots); an existing table keeps its own.
	Slots int
	// Detector selects the exit detectors (default connector.DetectAuto).
	Detector connector.Detector
	// DetectorPriority is connector.Options.Priority.
	DetectorPriority int
	// Logger receives the shim's diagnostics; nil discards them.
	Logger *slog.Logger
	// ReadBuffer is the proc connector's receive buffer (see connector.Options).
	ReadBuffer int
	// NoFilter keeps the proc connector socket unfiltered: every exit on
	// the machine is delivered (see connector.Options.NoFilter).
	NoFilter bool

	// Cgroups puts each service in a cgroup of its own when the plugin is
	// root and a cgroup v2 hierarchy is mounted (see docs/cgroups.md);
	// CgroupRoot is where the subtree CgroupRoot/ShmName goes, a path in
	// the hierarchy ("" the plugin's own cgroup). Without it, or where
	// cgroups cannot be used, process groups as before; Info.Cgroups says
	// which and why.
	Cgroups    bool
	CgroupRoot string

	// HeadlessRespawns is how many times in a row the plugin respawns a
	// service itself while no hbd is subscribed to its events (hbd is
	// gone): after that the service stays down (exited, PID 0) until an
	// hbd subscribes, which resets the count and applies its policy. 0:
	// DefaultHeadlessRespawns; negative: none.
	HeadlessRespawns int
	// Stdout and Stderr are where the streams of a service with stdout or
	// stderr = "inherit" go: hbd's own stdout and stderr, handed to the
	// plugin (--stdio-fds). nil: descriptor 2, the plugin's log. The Shim
	// does not close them.
	Stdout, Stderr *os.File
	// LogPipes are the log pipes of running services that hbd handed to
	// this plugin (an earlier plugin made them; see logpipe_linux.go).
	LogPipes []plugin.InheritedPipe

	// onCleared, when set (tests only), runs on the detecting goroutine right
	// after the exit fast path stored 0 in the slot.
	onCleared func(idx, pid int, cleared bool)
	// onRespawned, when set (tests only), runs on the exit path once the
	// plugin's own respawn of slot idx (generation gen) is announced and
	// watched, before that exit path returns.
	onRespawned func(idx int, gen uint64)
	// onNotifyRead, when set (tests only), runs on the goroutine of a
	// notify socket each time before it reads the socket.
	onNotifyRead func()
	// onHung, when set (tests only), runs on the watchdog's goroutine once
	// a missed deadline has set slot idx's PID to 0 and its state to hung,
	// before the event and the signal.
	onHung func(idx, pid int)
}

// Shim spawns services, records them in the shared-memory table, learns of
// their exits and reports them. It implements plugin.Shim and is safe for
// concurrent use. See the package documentation for its contract.
type Shim struct {
	opts    Options
	log     *slog.Logger
	w       *shm.Writer
	watcher *connector.Watcher
	events  *eventLog
	dog     *watchdog // the heartbeat checker (watchdog_linux.go)
	// detectToStore and respawnLatency are the latency histograms of
	// Info.Metrics (metrics.go); written on the exit path, lock-free.
	detectToStore, respawnLatency *latency
	devnull                       *os.File
	shmPath                       string
	adopted                       int // clients adopted by New; set before New returns

	// mu guards svcs, incs, groups, ended and logged. It is never taken on the exit fast path.
	mu   sync.Mutex
	svcs map[string]*service     // by name
	incs map[uint64]*incarnation // by watch key, while watched
	// groups are the process groups of the incarnations this shim spawned
	// or adopted (each leads its own), kept while the group has members
	// (the beat prunes empty ones): a clean close reaps their strays.
	groups map[int]struct{}
	// ended are the groups in groups whose leader has exited: the beat
	// drops each from both once it is empty (a running leader's group never
	// is, so it is not looked at).
	ended map[int]struct{}
	// logged are the services with a log file (stdout or stderr "file"):
	// the only ones the beat's log work looks at.
	logged map[*service]struct{}

	recordKick chan struct{} // wakes recordLoop; nil without StateDir
	// recordRetry: the last write of RecordFile failed; the beat kicks
	// recordLoop again (otherwise only spawns and exits do).
	recordRetry atomic.Bool

	cg cgroupMode // set by New

	// shmMu guards shmNotes and shmErr, the last Check of the table.
	shmMu    sync.Mutex
	shmNotes []string
	shmErr   string

	quit chan struct{} // closed by close
	// pipes reads the services' log pipes (logpipe_linux.go).
	pipes *logPoller
	// logProblems counts the services whose last EventLog named a
	// problem; written by logLoop.
	logProblems atomic.Int32
	// trim gives a burst of spawns' memory back once it has settled.
	trim plugin.BurstTrim
	// inherited are the log pipes hbd handed over (Options.LogPipes), by
	// service, until adopt takes them; used by New only.
	inherited map[string][]plugin.InheritedPipe
	// logKick: the beat asks logLoop to trim log files.
	logKick chan struct{}
	// choreKick asks beatLoop to arm its timer: some chore is due at the
	// next beat (kickChores). An idle plugin's timer is not armed at all.
	choreKick chan struct{}
	// nbeat refreshes writer_beat_ns outside the Go runtime (nativeBeat);
	// nil without cgo or when its thread could not start, and then the
	// chores timer beats.
	nbeat *nativeBeat
	// tableWatch tells of changes to the table's name and files (inotify);
	// nil when it could not be set up, and then the chores timer checks
	// the table every beat.
	tableWatch *tableWatch
	// life is held shared by every method that uses the table or the
	// watcher (enter/leave) and exclusively by close, which must not unmap
	// the table under them.
	life      sync.RWMutex
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
	// br is the set of bridged programs (bridge_linux.go), made by the
	// first Bridge call; brOnce guards br.
	br     *bridges
	brOnce sync.Mutex
	wg     sync.WaitGroup // beat, log and exit loops
}

// service is one named service known to this shim (spawned by it, or found
// in the table).
type service struct {
	name string
	idx  int

	// op serialises Spawn, Stop and Free of this service.
	op sync.Mutex
	// freed: Free released the slot; a new service must be made. Written
	// with both op and Shim.mu held.
	freed bool
	// cur is the newest incarnation, nil if none; guarded by Shim.mu.
	cur *incarnation
	// stdout and stderr are the log files when the Spec asks for "file".
	// Written with both op and Shim.mu held; read under either.
	stdout, stderr *logFile
	// spec is the Spec of the last spawn, for respawns by the plugin;
	// written with op held, read by the exit path with op held (TryLock).
	spec plugin.Spec
	// exe is spec's executable as resolved for the last spawn (same
	// locking as spec): a respawn by the plugin execs it directly.
	exe string
	// logProblem is what the last EventLog said; used by logLoop only.
	logProblem string
	// notify is the service's sd_notify socket (Spec.Ready "notify"),
	// made at its first such spawn; guarded by op.
	notify *notifySocket
	// cg is the service's cgroup once it has one; written with op held
	// and Shim.mu, read under either.
	cg *svcCgroup
	// headless counts the respawns by the plugin while no hbd was
	// subscribed, since the subscription of epoch headlessEpoch; guarded
	// by op.
	headless      int
	headlessEpoch uint64
	// bridged is the manager of a bridged program ("" for a service of
	// the plugin's own); Spawn, Stop and Signal refuse it (control goes
	// to the manager). Written with op held.
	bridged string
}

// DefaultHeadlessRespawns is Options.HeadlessRespawns's default.
const DefaultHeadlessRespawns = 100

// incarnation is one run of a service: one generation, one main process
// at a time (the one spawned, unless the service named another with
// sd_notify's MAINPID=: followMain, mainpid_linux.go).
type incarnation struct {
	svc *service
	idx int
	key uint64
	// pid is the process spawned (or adopted): the process group the
	// incarnation leads. It never changes; the main process is mainPID.
	pid int
	// main is the main process when followMain moved it from pid (0:
	// pid is). Stored with mainMu, Shim.mu and mu held.
	main atomic.Int32
	gen  uint64
	// startTime is the main process's start time; child: the main
	// process is our child, we reap it with waitid. Both change with the
	// main process (followMain, with Shim.mu and mu held; child also on
	// the exit path, with mu held): read them with either held, or on the
	// exit path once takeIncarnation has returned the incarnation.
	startTime uint64
	adopted   bool      // not spawned by this shim
	child     bool      // see startTime
	started   time.Time // spawn time (monotonic); zero when adopted
	startNs   uint64    // spawn time (shm.MonotonicNs); zero when adopted
	// armed is closed once the watch of the spawned process is armed (or
	// could not be): followMain waits for it. nil: armed from the start.
	armed chan struct{}
	// notify is the service's sd_notify socket when the incarnation was
	// spawned with ready "notify" (the exit path reads it: drainNotify).
	notify *notifySocket
	// mainMu serialises a change of the main process (followMain) with
	// the watchdog's hang, which clears the main process's PID from the
	// slot.
	mainMu sync.Mutex

	stopping atomic.Bool // Stop is under way: the group is killed before reaping
	// hung: the watchdog declared it hung (its exit's Reason is "watchdog").
	hung atomic.Bool
	// beat is the beat area from the spawn until the watchdog takes it
	// (startWatchdog); nil without a watchdog.
	beat *shm.BeatArea
	// dogSpec is the Spec the watchdog is armed with, kept from the spawn
	// for startWatchdog (at the spawn, or when declared ready).
	dogSpec plugin.Spec
	// ready: the PID is published in the slot (at the spawn unless the
	// Spec declares readiness; then on READY=1). readyTimedOut: killed for
	// not being ready in time.
	ready, readyTimedOut atomic.Bool
	// notifyBeats counts WATCHDOG=1 messages: beats by the sd_notify way.
	notifyBeats atomic.Uint64
	// status is the last STATUS= text, nil if none.
	status atomic.Pointer[string]
	// readyR is the read end of the notification pipe (ready "fd:N"),
	// handed to readLine by armReady.
	readyR *os.File

	// killMode is what Stop signals and what is killed after the main
	// process's exit (KillCgroup, KillProcessGroup, KillProcess); cg is
	// the service's cgroup with KillCgroup (the process is in it), else
	// nil. leftovers: how many processes the exit path found (and
	// killed) in cg after the main process; written under mu.
	killMode  string
	cg        *svcCgroup
	leftovers int
	forking   bool // the main process came from a PID file (Spec.Type "forking")
	// manager is a bridged program's manager (bridge_linux.go), "" otherwise.
	// Set at the watch, or later by a Bridge call for a slot this plugin
	// adopted at its start, while the exit path may be reading it: read it
	// with managerName.
	manager atomic.Pointer[string]

	// mu guards pidfd against use after close: signals are sent under the
	// read lock; the exit path reaps and closes under the write lock.
	mu    sync.RWMutex
	pidfd int // -1 once closed
	// reaped: the PID (and process group ID) may be reused now; guarded by mu.
	reaped bool

	done chan struct{} // closed once the exit is recorded
}

// managerName is inc's manager (see incarnation.manager).
func (inc *incarnation) managerName() string {
	if m := inc.manager.Load(); m != nil {
		return *m
	}
	return ""
}

// setManager records inc's manager.
func (inc *incarnation) setManager(m string) { inc.manager.Store(&m) }

// mainPID is the incarnation's main process: the one spawned, or the one
// it named with MAINPID= (followMain).
func (inc *incarnation) mainPID() int {
	if m := inc.main.Load(); m != 0 {
		return int(m)
	}
	return inc.pid
}

// exited reports whether the incarnation's exit has been recorded.
func (inc *incarnation) exited() bool {
	select {
	case <-inc.done:
		return true
	default:
		return false
	}
}

// watchKey names an incarnation in the Watcher: slot index in the high half,
// generation in the low half. The exit fast path decodes the slot from it,
// so it needs no lookup.
func watchKey(idx int, gen uint64) uint64 { return uint64(idx)<<32 | uint64(uint32(gen)) }

// New opens (or creates) the table, starts the detectors and adopts the
// clients a previous plugin left running. The process becomes a child
// subreaper, so descendants that double-fork stay reapable by it.
func New(opts Options) (*Shim, error) {
	if opts.ShmName == "" {
		opts.ShmName = shm.DefaultName
	}
	if opts.ShmDir == "" {
		opts.ShmDir = shm.DefaultDir
	}
	if opts.Slots == 0 {
		opts.Slots = shm.DefaultSlots
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Shim{
		opts:          opts,
		log:           log,
		events:        newEventLog(),
		detectToStore: newDetectToStore(), respawnLatency: newRespawnLatency(),
		svcs:      map[string]*service{},
		incs:      map[uint64]*incarnation{},
		groups:    map[int]struct{}{},
		ended:     map[int]struct{}{},
		logged:    map[*service]struct{}{},
		quit:      make(chan struct{}),
		logKick:   make(chan struct{}, 1),
		choreKick: make(chan struct{}, 1),
		trim:      plugin.BurstTrim{Burst: trimBurst, Quiet: trimQuiet},

		inherited: map[string][]plugin.InheritedPipe{},
	}
	if opts.StateDir != "" {
		s.recordKick = make(chan struct{}, 1)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("shim: prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	s.devnull = devnull
	w, err := shm.Create(opts.ShmName, shm.Options{Slots: opts.Slots, Dir: opts.ShmDir})
	if err != nil {
		devnull.Close()
		return nil, fmt.Errorf("shim: %w", err)
	}
	s.w = w
	s.shmPath = w.Path()
	if s.dog, err = newWatchdog(s); err != nil {
		w.Close(false)
		devnull.Close()
		return nil, err
	}
	watcher, err := connector.NewWatcher(connector.Options{
		Detector:   opts.Detector,
		Priority:   opts.DetectorPriority,
		ReadBuffer: opts.ReadBuffer,
		NoFilter:   opts.NoFilter,
		OnExit:     s.onExit,
		OnKill:     s.onKill,
		OnResync: func(reason error) {
			s.log.Warn("exit events were lost; every watched process was rescanned", "reason", reason)
		},
		OnError: func(err error) { s.log.Error("exit watcher", "err", err) },
		Logger:  log,
	})
	if err != nil {
		w.Close(false)
		devnull.Close()
		return nil, fmt.Errorf("shim: %w", err)
	}
	s.watcher = watcher
	if s.pipes, err = newLogPoller(); err != nil {
		_ = watcher.Close()
		w.Close(false)
		devnull.Close()
		return nil, fmt.Errorf("shim: %w", err)
	}
	s.cg = cgroupMode{reason: "cgroups are off (--cgroups off)"}
	if opts.Cgroups {
		s.cg = openCgroups(opts.CgroupRoot, opts.ShmName)
	}
	if s.cg.tree != nil {
		log.Info("services run in cgroups of their own", "cgroups", s.cg.tree.dir)
	} else {
		log.Warn("services are contained by process groups only: a process that leaves its group outlives stop", "reason", s.cg.reason)
	}
	conn, pidfd := watcher.Active()
	var flags uint32
	if conn {
		flags |= shm.FlagConnector
	}
	if pidfd {
		flags |= shm.FlagPidfd
	}
	if watcher.Traced() {
		flags |= shm.FlagTracepoint
	}
	w.SetHeaderFlags(flags)
	w.Beat()
	if nb, err := startNativeBeat(beatInterval); err != nil {
		log.Debug("writer_beat_ns on the chores timer", "why", err)
	} else {
		s.nbeat = nb
		nb.set(w.BeatWords())
	}
	if tw, err := newTableWatch(w.Path()); err != nil {
		log.Warn("the table's file and name are checked every second instead of on change", "err", err)
	} else {
		s.tableWatch = tw
	}
	startReaper(log)

	s.wg.Add(3 + exitWorkers)
	for range exitWorkers {
		go s.exitLoop()
	}
	go s.beatLoop()
	go s.logLoop()
	go func() {
		defer s.wg.Done()
		s.pipes.run()
	}()

	restored := s.restoreRecords()
	for _, ip := range opts.LogPipes {
		s.inherited[ip.Name] = append(s.inherited[ip.Name], ip)
	}
	s.adoptAll()
	s.flushInherited()
	// Every slot is validated now: the table may say that its writer lives
	// (a robust futex the kernel marks if this process dies).
	if err := w.MarkAlive(); err != nil {
		log.Error("the table cannot say that its writer lives; peers that check writer_alive distrust it", "err", err)
	}
	if s.recordKick != nil {
		s.wg.Add(1)
		go s.recordLoop()
		s.kickRecord()
	}
	log.Info("shim started", "shm", s.shmPath, "slots", w.Len(), "tracepoint", watcher.Traced(), "connector", conn, "pidfd", pidfd,
		"rcvbuf", watcher.Stats().ReadBuffer, "adopted", s.adopted, "table_adopted", w.Adopted(), "restored_from_record", restored)
	return s, nil
}

// beatLoop runs the shim's chores (see beatInterval) on a timer that is
// armed only while one is due: writer_beat_ns when no native beat thread
// refreshes it, the table's Check when no tableWatch tells of changes, a
// failed adoption record to write again, or work for the log pass. An idle
// plugin arms nothing: its only periodic wake is the native beat thread's.
// Changes to the table run Check at once. It hands log trimming to logLoop
// and never waits for it: a slow filesystem under log_dir must not hold up
// the chores.
func (s *Shim) beatLoop() {
	defer s.wg.Done()
	t := time.NewTimer(beatInterval)
	armed := true
	var tableChanged chan struct{}
	if s.tableWatch != nil {
		tableChanged = s.tableWatch.changed
	}
	for {
		select {
		case <-s.quit:
			t.Stop()
			return
		case <-s.choreKick:
			if !armed {
				t.Reset(beatInterval)
				armed = true
			}
			continue
		case <-tableChanged:
			s.checkTable()
			if s.tableWatch.lost.Load() && !armed {
				t.Reset(beatInterval) // the watch is gone: the timer checks
				armed = true
			}
			continue
		case <-t.C:
			armed = false
		}
		if s.nbeat == nil {
			s.w.Beat()
		}
		if !s.tableWatched() {
			s.checkTable()
		}
		if s.recordRetry.Load() {
			s.kickRecord()
		}
		if s.logPassWanted() {
			select {
			case s.logKick <- struct{}{}:
			default: // logLoop is still at the last beat's work
			}
		}
		if s.choresDue() {
			t.Reset(beatInterval)
			armed = true
		}
	}
}

// choresDue reports whether beatLoop has work at the next beat.
func (s *Shim) choresDue() bool {
	return s.nbeat == nil || !s.tableWatched() || s.recordRetry.Load() || s.logPassWanted()
}

// tableWatched reports whether tableWatch tells of changes to the table.
func (s *Shim) tableWatched() bool { return s.tableWatch != nil && !s.tableWatch.lost.Load() }

// kickChores arms beatLoop's timer: call it when something makes a chore
// due (a process group to watch until it empties, a log that failed or
// that its service writes itself, an adoption record to write again).
func (s *Shim) kickChores() {
	select {
	case s.choreKick <- struct{}{}:
	default:
	}
}

// logPassWanted reports whether logLoop has work this beat: process groups
// whose leader has exited, a log a running service writes itself
// (log_direct: trimmed on the beat, its room checked), a piped log whose
// last write failed, or a log problem to clear. An idle plugin whose
// services log through pipes wakes nothing but the beat.
func (s *Shim) logPassWanted() bool {
	if s.logProblems.Load() > 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ended) > 0 {
		return true
	}
	for svc := range s.logged {
		for _, l := range svc.logFiles() {
			if l.failed.Load() || (l.directMode.Load() && svc.cur != nil && !svc.cur.exited()) {
				return true
			}
		}
	}
	return false
}

// logLoop trims the log files of running services (logFile.check) each
// time the beat kicks it, and reports a log_dir that is full: once in the
// plugin's log per directory when it fills up (and again when it has room),
// and to the host as an EventLog per service when that service's state
// changes (hbctl status shows it).
func (s *Shim) logLoop() {
	defer s.wg.Done()
	fullDirs := map[string]bool{}
	for {
		select {
		case <-s.quit:
			return
		case <-s.logKick:
		}
		type svcLogs struct {
			svc  *service
			logs []*logFile
		}
		var work []svcLogs
		s.mu.Lock()
		for svc := range s.logged {
			w := svcLogs{svc: svc, logs: svc.logFiles()}
			if len(w.logs) == 0 {
				continue
			}
			if svc.logProblem == "" && !slices.ContainsFunc(w.logs, func(l *logFile) bool {
				// A piped log is looked at when a write failed; a direct one
				// while a running incarnation makes it grow.
				return l.failed.Load() || (l.directMode.Load() && svc.cur != nil && !svc.cur.exited())
			}) {
				continue
			}
			work = append(work, w)
		}
		for g := range s.ended {
			if errors.Is(unix.Kill(-g, 0), unix.ESRCH) {
				delete(s.groups, g)
				delete(s.ended, g)
			}
		}
		s.mu.Unlock()
		nowFull := map[string]bool{}
		// One statfs per log directory and pass, not one per file: with
		// 1000 services that was half of what an idle plugin did.
		dirFull := map[string]bool{}
		for _, w := range work {
			problem := ""
			for _, l := range w.logs {
				err := l.check()
				if err != nil && !errors.Is(err, unix.ENOSPC) {
					s.log.Warn("log rotation", "service", w.svc.name, "err", err)
				}
				dir := l.logDir()
				full, seen := dirFull[dir]
				if !seen || dir == "" || errors.Is(err, unix.ENOSPC) {
					full = l.full()
					dirFull[dir] = full
				}
				if !full {
					l.failed.Store(false) // room there: the next line is written
				}
				if full {
					nowFull[dir] = true
					problem = "log_dir " + dir + " is full: the service's output is lost until space is freed there"
				}
			}
			if problem != w.svc.logProblem {
				switch {
				case w.svc.logProblem == "":
					s.logProblems.Add(1)
				case problem == "":
					s.logProblems.Add(-1)
				}
				w.svc.logProblem = problem
				s.emit(plugin.Event{Kind: plugin.EventLog, Name: w.svc.name, Slot: w.svc.idx, Message: problem})
			}
		}
		for dir := range nowFull {
			if !fullDirs[dir] {
				s.log.Error("log_dir is full: services' output written there is lost until space is freed", "log_dir", dir)
			}
		}
		for dir := range fullDirs {
			if !nowFull[dir] {
				s.log.Info("log_dir has room again", "log_dir", dir)
			}
		}
		fullDirs = nowFull
		if s.logProblems.Load() > 0 {
			s.kickChores() // look again at the next beat
		}
	}
}

// checkTable repairs the table files (shm.Writer.Check: truncated, name
// removed) and keeps what it found for Info; it logs each repair, and an
// error each time it changes.
func (s *Shim) checkTable() {
	notes, err := s.w.Check()
	for _, n := range notes {
		s.log.Warn("table repaired", "what", n)
	}
	if len(notes) > 0 {
		if s.nbeat != nil {
			s.nbeat.set(s.w.BeatWords()) // a new file to beat into
		}
		if s.tableWatch != nil && err == nil {
			// The name is this table's file again (a new one if it was
			// removed): watch it for truncation too.
			if werr := s.tableWatch.watchFile(s.w.Path()); werr != nil {
				s.log.Warn("the table's new file is checked only on changes of its name", "err", werr)
			}
		}
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.shmMu.Lock()
	changed := msg != s.shmErr
	s.shmNotes = append(s.shmNotes, notes...)
	if len(s.shmNotes) > 8 {
		s.shmNotes = s.shmNotes[len(s.shmNotes)-8:]
	}
	s.shmErr = msg
	s.shmMu.Unlock()
	if changed && err != nil {
		s.log.Error("table", "err", err)
	}
}

// groupEnded notes that the leader of process group pid has exited: the
// beat looks at the group until it is empty.
func (s *Shim) groupEnded(pid int) {
	s.mu.Lock()
	if _, ok := s.groups[pid]; ok {
		s.ended[pid] = struct{}{}
	}
	s.mu.Unlock()
	s.kickChores()
}

// TableHealth returns the repairs of the table the plugin made (newest last,
// at most 8) and what it could not repair ("" if nothing).
func (s *Shim) TableHealth() (repairs []string, problem string) {
	s.shmMu.Lock()
	defer s.shmMu.Unlock()
	return append([]string(nil), s.shmNotes...), s.shmErr
}

// Info implements plugin.Shim.
func (s *Shim) Info(ctx context.Context) (plugin.Info, error) {
	if err := s.enter(); err != nil {
		return plugin.Info{}, err
	}
	defer s.leave()
	conn, pidfd := s.watcher.Active()
	prio := 0
	if s.watcher.Stats().RealTime {
		prio = s.opts.DetectorPriority
	}
	repairs, problem := s.TableHealth()
	killTraced, killNote := killInfo(s.watcher)
	return plugin.Info{
		ShmRepairs:       repairs,
		ShmProblem:       problem,
		DetectorPriority: prio,
		PID:              os.Getpid(),
		ShmName:          s.opts.ShmName,
		Slots:            s.w.Len(),
		Tracepoint:       s.watcher.Traced(),
		Connector:        conn,
		Pidfd:            pidfd,
		Adopted:          s.adopted,
		LastSeq:          s.events.lastSeq(),
		Version:          api.BuildVersion(),
		FeatureVersion:   FeatureVersion,
		Cgroups:          s.cg.String(),
		ConnectorNote:    connectorNote(s.watcher.ConnectorNote()),
		KillTracepoint:   killTraced,
		KillNote:         killNote,
		LogPipes:         s.allPipes(),
		Metrics: plugin.Metrics{
			Resyncs:            s.watcher.Stats().Resyncs,
			SubscribersDropped: s.events.droppedSubscribers(),
			DetectToStore:      s.detectToStore.snapshot(),
			Respawn:            s.respawnLatency.snapshot(),
		},
	}, nil
}

// ShmPath is the path of the table (also given to children as HB_SHM).
func (s *Shim) ShmPath() string { return s.shmPath }

// Stats are the exit watcher's counters.
func (s *Shim) Stats() connector.Stats { return s.watcher.Stats() }

// Shutdown implements plugin.Shim: it stops the beat and the detectors and
// closes the table, marking it cleanly closed (writer_pid 0) when clean is
// set. Running services are left running; the host stops them first.
func (s *Shim) Shutdown(ctx context.Context, clean bool) error {
	return s.close(clean)
}

// Close releases everything like an unclean Shutdown: running services keep
// running and a later Shim on the same table adopts them. Calling it again,
// or after Shutdown, does nothing.
func (s *Shim) Close() error { return s.close(false) }

// enter admits a method call unless the shim is closed; leave ends it.
func (s *Shim) enter() error {
	s.life.RLock()
	if s.closed.Load() {
		s.life.RUnlock()
		return errClosed
	}
	return nil
}

func (s *Shim) leave() { s.life.RUnlock() }

func (s *Shim) close(clean bool) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.quit) // Stop and Spawn waiters give up
		s.pipes.stop()
		s.brOnce.Lock()
		if s.br != nil {
			s.br.stop() // before the detectors: it arms watches
		}
		s.brOnce.Unlock()
		s.life.Lock() // wait for calls in flight
		defer s.life.Unlock()
		var errs []error
		// Stop the detectors first: no OnExit after this returns.
		if err := s.watcher.Close(); err != nil {
			errs = append(errs, err)
		}
		s.wg.Wait()
		<-s.dog.done // no hang after this: the table stays mapped until then
		// Finish the exits that were detected but not yet processed, so
		// the table records them.
		for {
			select {
			case ex, ok := <-s.watcher.Exits():
				if ok {
					s.finish(ex)
					continue
				}
			default:
			}
			break
		}
		s.events.close()
		if clean {
			// What the stopped services wrote last goes in, before the
			// log files close. Otherwise it waits in the pipes, which hbd
			// holds, for the next plugin.
			for _, lp := range s.pipes.all() {
				lp.close()
			}
		}
		s.mu.Lock()
		for key, inc := range s.incs {
			delete(s.incs, key)
			inc.mu.Lock()
			if inc.pidfd >= 0 {
				unix.Close(inc.pidfd)
				inc.pidfd = -1
			}
			inc.mu.Unlock()
			if inc.child || inc.main.Load() != 0 {
				untrackPID(inc.mainPID()) // a MAINPID= process is tracked, child or not
			}
		}
		for _, svc := range s.svcs {
			svc.closeNotify() // calls are over: nothing holds op
			if svc.cur == nil || svc.cur.exited() {
				continue // only a running incarnation makes its log grow
			}
			if svc.stdout != nil {
				svc.stdout.close()
			}
			if svc.stderr != nil {
				svc.stderr.close()
			}
		}
		s.mu.Unlock()
		s.pipes.closeFDs()
		stopReaper()
		if clean {
			s.mu.Lock()
			groups := maps.Clone(s.groups)
			s.mu.Unlock()
			drainStrays(s.log, drainTimeout, groups)
		}
		s.closeCgroups(clean)
		if s.nbeat != nil {
			s.nbeat.stop() // it stores into the table's mappings
		}
		if s.tableWatch != nil {
			s.tableWatch.close()
		}
		if err := s.w.Close(clean); err != nil {
			errs = append(errs, err)
		}
		s.devnull.Close()
		s.closeErr = errors.Join(errs...)
		s.log.Info("shim closed", "clean", clean)
	})
	return s.closeErr
}

// emit stamps ev with the wall clock and publishes it.
func (s *Shim) emit(ev plugin.Event) plugin.Event {
	ev.TimeUnixNs = time.Now().UnixNano()
	return s.events.emit(ev)
}

// Events implements plugin.Shim. Each subscriber has its own buffer, which
// grows with its backlog (up to subBuffer live events beyond its replay) and
// shrinks back once it has caught up; one that falls further behind is
// dropped (it receives what was queued for it, then its channel is closed)
// rather than slowing the exit path, and should resubscribe with the last
// Seq it received.
func (s *Shim) Events(ctx context.Context, afterSeq uint64) (<-chan plugin.Event, error) {
	return s.events.subscribe(ctx, afterSeq)
}

// killInfo is plugin.Info's KillTracepoint and KillNote for the watcher.
func killInfo(w *connector.Watcher) (bool, string) {
	ok, err := w.KillTraced()
	if ok || !w.Traced() {
		return ok, ""
	}
	return false, "SIGKILLs are seen at the exit, not at the kill (" + err.Error() + ")"
}

// connectorNote is plugin.Info.ConnectorNote for the watcher's reason.
func connectorNote(reason string) string {
	if reason == "" {
		return ""
	}
	return "the proc connector is unusable here (" + reason + "); exits are detected by pidfds" +
		" (and the exit tracepoint where it loads)"
}
