package host

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/shm"
	"golang.org/x/sys/unix"
)

// rpcTimeout bounds a plugin call that is not a Stop.
const rpcTimeout = 10 * time.Second

// Daemon is the host process manager: it owns the configuration, the
// per-service state machines and the restart policy, and drives the plugin.
// It implements api.Backend. All service state is guarded by mu (see
// stateLock): a change holds it throughout, a plugin call on a change's way
// is made with mu's view released, so readers never wait for the plugin.
type Daemon struct {
	log  *slog.Logger
	exe  string // executable re-run as the plugin
	self string // what hbctl reexec executes (selfPath)
	// reexecCh asks Run to re-execute hbd (Reexec).
	reexecCh chan struct{}
	cfgPath  string
	// dial connects to the plugin; dialPlugin unless a test hands in a fake.
	dial func(h config.HBD) (conn pluginConn, reattached bool, err error)

	mu      stateLock
	cfg     *config.Config      // guarded by mu
	svcs    map[string]*service // guarded by mu
	bridged map[string]*bridged // programs other managers run (bridge.go); guarded by mu
	// bridgedOrder lists bridged: the listed programs in config order,
	// then those the plugin found, by name; guarded by mu.
	bridgedOrder []string
	// bridgeSent: the last Bridge call named programs, so an empty set must
	// be sent too; guarded by mu.
	bridgeSent bool
	order      []string    // config order; guarded by mu
	conn       pluginConn  // current plugin; guarded by mu
	shim       plugin.Shim // conn.Shim(); guarded by mu
	// attaching: connect runs. It lets go of mu around each call to the
	// plugin, so until it ends the services' states are not yet the
	// table's; health says so (PluginInfo). Guarded by mu.
	attaching bool
	// afterHeld counts the services held back for their after lists
	// (service.afterWait), at most: releaseAfter recounts. Guarded by mu.
	afterHeld int
	info      plugin.Info // guarded by mu
	// pipes are hbd's copies of the services' log pipes, by pipeKey
	// (logpipes.go); guarded by mu.
	pipes map[string]*heldPipe
	// trim gives the memory of a burst of events (a start, a kill of
	// many) back once it has settled.
	trim     plugin.BurstTrim
	closing  bool   // shutting down or detaching: no respawns; guarded by mu
	forced   bool   // a second SIGTERM: stop without grace; guarded by mu
	lastSeq  uint64 // last plugin event handled; guarded by mu
	seqDirty bool   // lastSeq not yet saved; guarded by mu
	// eventsMissed counts plugin events never received (gaps in Seq
	// between two subscriptions); guarded by mu.
	eventsMissed uint64

	bus *bus

	// subreaper: hbd is a child subreaper and reaps the services a dead
	// plugin left (orphans.go). Set before the plugin starts.
	subreaper bool
	// tools is held (read) while hbd runs a program of its own and waits
	// for it (a bridged manager's sv, s6-svc, s6-svstat), and (write) by
	// the stray reaper, which would otherwise reap that program's zombie
	// before its Wait.
	tools   sync.RWMutex
	tableMu sync.Mutex
	table   *shm.Table // read-only mapping of the table; opened on first use (peerTable)

	// pluginGen counts plugin connections; an event stream or exit watcher
	// of an older connection ignores itself.
	pluginGen uint64 // guarded by mu
	evCancel  context.CancelFunc
	evCtx     context.Context // the current event subscription's; guarded by mu
}

// stateLock is the Daemon's lock, in two parts. op serialises the changes:
// a change (an event, a request, a timer, a reconnection) holds it from
// start to end, plugin calls included, so changes never interleave. view
// guards the memory of the state: a change holds it too, except while it
// waits for the plugin (Spawn, a launch or reattach, Info, Events, List,
// SetState through outside), when it writes nothing. A reader (List, Get,
// Names, Signal, PluginInfo) takes view only, so it sees the state between
// two steps of a change and never waits for the plugin.
type stateLock struct {
	op   sync.Mutex
	view sync.RWMutex
}

// Lock begins a change.
func (l *stateLock) Lock() { l.op.Lock(); l.view.Lock() }

// Unlock ends a change.
func (l *stateLock) Unlock() { l.view.Unlock(); l.op.Unlock() }

// RLock begins a read; it never waits for a plugin call.
func (l *stateLock) RLock() { l.view.RLock() }

// RUnlock ends a read.
func (l *stateLock) RUnlock() { l.view.RUnlock() }

// outside runs call, a plugin call of the change under way, with view
// released: readers proceed meanwhile. call may read the state but must not
// write it. Called with the lock held.
func (l *stateLock) outside(call func()) {
	l.view.Unlock()
	defer l.view.Lock()
	call()
}

// pluginConn is the daemon's connection to a plugin process: a
// *plugin.Conn, or in tests a plugintest.Conn.
type pluginConn interface {
	Shim() plugin.Shim
	PID() int
	Exited() <-chan struct{}
	Detach() error
	Kill(ctx context.Context, clean bool) error
}

// newDaemon loads nothing; Run does.
func newDaemon(cfg *config.Config, log *slog.Logger, exe string) *Daemon {
	d := &Daemon{
		attaching: true, // until the first connect has read the table
		trim:      plugin.BurstTrim{Burst: 64, Quiet: time.Second},
		log:       log,
		exe:       exe,
		cfgPath:   cfg.Path,
		cfg:       cfg,
		svcs:      map[string]*service{},
		bus:       newBus(),

		reexecCh: make(chan struct{}, 1),
	}
	for _, name := range cfg.Order {
		d.svcs[name] = newService(cfg.Services[name], cfg.HBD.LogDir)
	}
	d.order = slices.Clone(cfg.Order)
	d.setBridged(cfg)
	d.dial = d.dialPlugin
	return d
}

// dialPlugin reattaches to the plugin recorded in the state directory, or
// launches a new one.
func (d *Daemon) dialPlugin(h config.HBD) (pluginConn, bool, error) {
	conn, err := plugin.Reattach(h.StateDir, d.pluginLogger())
	if err == nil {
		return conn, true, nil
	}
	switch {
	case errors.Is(err, plugin.ErrHostConnected):
		return nil, false, err
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, plugin.ErrNoPlugin):
		d.log.Warn("not reattaching to the recorded plugin; starting a new one", "err", err)
	default:
		d.log.Warn("cannot reattach to the plugin; starting a new one", "err", err)
	}
	// A new plugin would adopt an existing table with its own size and
	// ignore [hbd] slots: refuse that, saying how to resize.
	if err := checkSlots(h, d.cfgPath); err != nil {
		return nil, false, err
	}
	args, stdio := pluginArgs(h), inheritedStdio()
	if len(stdio) == 2 {
		// stdout and stderr = "inherit": hbd's own, as descriptors 3 and 4.
		args = append(args, "--stdio-fds", "3,4")
	}
	// The log pipes of running services, which the last plugin read.
	pipes, listFD, err := d.pipesForLaunch(3 + len(stdio))
	if err != nil {
		d.log.Warn("not handing the log pipes to the new plugin", "err", err)
	}
	if listFD >= 0 {
		args = append(args, "--log-pipes", strconv.Itoa(listFD))
	}
	defer func() {
		for _, f := range pipes {
			f.Close() // the plugin has its own copies now
		}
	}()
	conn, err = plugin.Launch(plugin.LaunchConfig{
		Path:       d.exe,
		Args:       args,
		ExtraFiles: append(stdio, pipes...),
		StateDir:   h.StateDir,
		Logger:     d.pluginLogger(),
		// Until it serves, the plugin's stderr is its only way to say
		// why it could not start (e.g. the table is another writer's).
		Stderr: os.Stderr,
	})
	if err != nil {
		return nil, false, fmt.Errorf("start plugin: %w", err)
	}
	return conn, false, nil
}

// connect attaches to the running plugin or starts a new one, then brings
// every service in line with the table. Called with mu held.
func (d *Daemon) connect() (err error) {
	// Cleared only on success: after a failed attempt d.shim may be a new
	// plugin whose table was never read (watchPlugin tries again).
	d.attaching = true
	defer func() {
		if err == nil {
			d.attaching = false
		}
	}()
	h := d.cfg.HBD
	var (
		conn       pluginConn
		reattached bool
	)
	d.mu.outside(func() { conn, reattached, err = d.dial(h) })
	if err != nil {
		return err
	}
	d.conn, d.shim = conn, conn.Shim()
	d.pluginGen++
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	var info plugin.Info
	d.mu.outside(func() { info, err = d.shim.Info(ctx) })
	if err != nil {
		return fmt.Errorf("plugin info: %w", err)
	}
	d.info = info
	d.keepPipes(info.LogPipes)
	d.holdPipes(info.LogPipes)
	if h.Slots > 0 && info.Slots > 0 && info.Slots != h.Slots {
		// A reattached plugin keeps its table's size.
		d.log.Error("the table's size is not the configuration's; leaving the plugin and the services running", "table_slots", info.Slots, "slots", h.Slots)
		_ = conn.Detach()
		d.conn, d.shim = nil, nil
		return slotsError(h, d.cfgPath, info.Slots, h.Slots)
	}
	if info.KillNote != "" {
		d.log.Warn(info.KillNote)
	}
	if info.ConnectorNote != "" {
		d.log.Warn(info.ConnectorNote)
	}
	d.log.Info("plugin ready", "pid", info.PID, "reattached", reattached, "shm", info.ShmName,
		"tracepoint", info.Tracepoint, "kill", info.KillTracepoint, "connector", info.Connector, "pidfd", info.Pidfd, "adopted", info.Adopted)

	// Events after this point are acted on; those up to info.LastSeq are
	// already reflected in the table and are only reported.
	after := uint64(0)
	if saved, ok := loadSeq(h.StateDir, info.PID); ok && saved <= info.LastSeq {
		after = saved
	}
	d.lastSeq = after
	evctx, evcancel := context.WithCancel(context.Background())
	var events <-chan plugin.Event
	d.mu.outside(func() { events, err = d.shim.Events(evctx, after) })
	if err != nil {
		evcancel()
		return fmt.Errorf("plugin events: %w", err)
	}
	if d.evCancel != nil {
		d.evCancel()
	}
	d.evCancel, d.evCtx = evcancel, evctx
	if err := d.reconcile(); err != nil {
		return err
	}
	d.syncBridges()
	go d.consume(d.pluginGen, events, info.LastSeq)
	go d.watchPlugin(d.pluginGen, conn)
	return nil
}

// inheritedStdio is hbd's stdout and stderr for the plugin to give the
// services with stdout or stderr = "inherit" (under systemd: the journal),
// or nil when either is not open.
func inheritedStdio() []*os.File {
	var st syscall.Stat_t
	if syscall.Fstat(1, &st) != nil || syscall.Fstat(2, &st) != nil {
		return nil
	}
	return []*os.File{os.Stdout, os.Stderr}
}

// pluginArgs are the arguments of `hbd plugin` for this configuration.
func pluginArgs(h config.HBD) []string {
	args := []string{"plugin",
		"--shm", h.Shm,
		"--slots", fmt.Sprint(h.Slots),
		"--detector", h.Detector,
		"--detector-priority", fmt.Sprint(h.DetectorPriority),
		"--log", h.StateDir + "/plugin.log",
		"--state-dir", h.StateDir,
		"--headless-respawns", fmt.Sprint(h.HeadlessRespawns),
	}
	if h.CgroupRoot != "" {
		args = append(args, "--cgroup-root", h.CgroupRoot)
	}
	return args
}

// reconcile brings each configured service in line with the table: a live
// slot is taken as is (never a second instance), a slot that died while hbd
// or the plugin was away goes through the restart policy, a service without
// a slot is started if autostart. Slots of services no longer configured
// are stopped and freed. Called with mu held.
func (d *Daemon) reconcile() error {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	var slots []shm.Slot
	var err error
	d.mu.outside(func() { slots, err = d.shim.List(ctx) })
	if err != nil {
		return fmt.Errorf("plugin list: %w", err)
	}
	byName := map[string]shm.Slot{}
	for _, sl := range slots {
		byName[sl.Name] = sl
	}
	saved := loadRecord(d.cfg.HBD.StateDir).Reasons
	var autostart []*service
	for _, name := range d.order {
		s := d.svcs[name]
		sl, ok := byName[name]
		delete(byName, name)
		if !ok {
			if s.cfg.Autostart && !s.wantDown {
				autostart = append(autostart, s)
			}
			continue
		}
		s.slot, s.generation, s.exits = sl.Index, sl.Generation, sl.Exits
		s.lastStatus = int(sl.LastStatus)
		s.adopted = sl.Flags&shm.SlotAdopted != 0
		st := policy.State(sl.State)
		switch {
		case sl.PID != 0:
			s.pid = int(sl.PID)
			s.down = make(chan struct{})
			if st != policy.StateStarting && st != policy.StateRunning && st != policy.StateStopping {
				st = policy.StateRunning
			}
			if st == policy.StateStopping {
				st = policy.StateRunning // the stop was hbd's; it is gone with it
			}
			s.m = policy.NewMachine(st)
			// The incarnation's own start, from the table: its uptime
			// does not restart with hbd.
			s.startedAt = slotStart(sl.StartTime)
			restoreReason(s, saved[name])
			if st == policy.StateStarting {
				if s.startedAt.IsZero() {
					s.startedAt = time.Now()
				}
				d.armPromotion(s)
			}
			d.mirror(s)
		case st == policy.StateStopped || st == policy.StateFatal:
			s.m = policy.NewMachine(st) // down on purpose: keep it down
			s.pid = 0
			if !restoreReason(s, saved[name]) {
				s.reason, s.reasonAt = st.String()+" before hbd started (reason not recorded)", time.Now()
			}
		default:
			// It died while nobody was deciding: apply the policy now.
			// That includes exited: the plugin records every exit it does
			// not respawn itself as exited, so exited here may be an exit
			// hbd never saw. One hbd did see and kept down is kept down
			// again, since the policy answers the same for the same status.
			s.pid = 0
			if sl.LastExitNs != 0 {
				if now := shm.MonotonicNs(); now >= sl.LastExitNs {
					s.lastExit = time.Now().Add(-time.Duration(now - sl.LastExitNs))
				}
			}
			s.m = policy.NewMachine(policy.StateRunning)
			d.decide(s, int(sl.LastStatus), time.Time{})
		}
	}
	d.spawnMany(d.holdAfter(autostart), d.info.Slots-len(slots), "autostart")
	for name, sl := range byName {
		if d.bridged[name] != nil || sl.Flags&shm.SlotBridged != 0 {
			continue // the plugin's bridge set (syncBridges) owns it
		}
		d.log.Info("removing a slot no service is configured for", "service", name, "pid", sl.PID)
		go d.dropOrphan(name, sl)
	}
	return nil
}

// dropOrphan stops and frees the slot of a service that is no longer in the
// configuration.
func (d *Daemon) dropOrphan(name string, sl shm.Slot) {
	d.mu.Lock()
	sh := d.shim
	d.mu.Unlock()
	if sl.PID != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := sh.Stop(ctx, name, syscall.SIGTERM, 10*time.Second)
		cancel()
		if err != nil {
			d.log.Warn("stop orphan slot", "service", name, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if err := sh.Free(ctx, name); err != nil {
		d.log.Warn("free orphan slot", "service", name, "err", err)
	}
	d.mu.Lock()
	d.dropPipes(name)
	d.mu.Unlock()
}

// consume handles the plugin's event stream until it ends. Events with
// Seq <= replayed happened before this connection and are only reported.
func (d *Daemon) consume(gen uint64, events <-chan plugin.Event, replayed uint64) {
	gap := false // events may have been dropped between two subscriptions
	for {
		for ev := range events {
			d.mu.Lock()
			if gen != d.pluginGen {
				d.mu.Unlock()
				return
			}
			if gap && ev.Seq > d.lastSeq+1 {
				// Fell behind by more than the plugin keeps: take the
				// services' state from the table instead.
				d.log.Warn("missed plugin events; reconciling with the table", "from", d.lastSeq+1, "to", ev.Seq-1)
				d.eventsMissed += ev.Seq - 1 - d.lastSeq
				if err := d.reconcile(); err != nil {
					d.log.Error("reconcile", "err", err)
				}
			}
			gap = false
			switch {
			case ev.Seq <= replayed:
				d.report(ev) // before this connection: already in the table
			case ev.Seq <= d.lastSeq:
				// handled before a resubscription
			default:
				d.handle(ev)
			}
			if ev.Seq > d.lastSeq {
				d.lastSeq = ev.Seq
				d.markSeqDirty()
			}
			d.mu.Unlock()
			d.trim.Note()
			if ev.Kind == plugin.EventExit && d.subreaper && isChild(ev.PID) {
				go d.reapOrphan(ev)
			}
		}
		// The stream ended: the plugin died (watchPlugin takes over), hbd
		// is closing, or this subscriber fell too far behind and the plugin
		// dropped it. In the last case, resubscribe from the last event
		// handled.
		for {
			d.mu.Lock()
			if gen != d.pluginGen || d.closing {
				d.mu.Unlock()
				return
			}
			select {
			case <-d.conn.Exited():
				d.mu.Unlock()
				return
			default:
			}
			var err error
			d.mu.outside(func() { events, err = d.shim.Events(d.evCtx, d.lastSeq) })
			d.mu.Unlock()
			if err == nil {
				gap = true
				break
			}
			d.log.Warn("resubscribe to plugin events", "err", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// report publishes an event that happened while hbd was away.
func (d *Daemon) report(ev plugin.Event) {
	switch ev.Kind {
	case plugin.EventExit:
		d.log.Info("exited while hbd was away", "service", ev.Name, "pid", ev.PID, "status", ev.Status,
			"source", ev.Source, "at", time.Unix(0, ev.TimeUnixNs))
		d.publish(api.Event{Kind: api.EventExit, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
			Status: ev.Status, Source: ev.Source, Reason: "while hbd was away", Time: time.Unix(0, ev.TimeUnixNs)})
	case plugin.EventAdopt:
		if ev.Message != "" {
			// The service named another of its processes its main one
			// (MAINPID=): the plugin watches that one now.
			d.log.Info("main process moved", "service", ev.Name, "pid", ev.PID, "generation", ev.Generation, "why", ev.Message)
		} else {
			d.log.Info("adopted by the plugin", "service", ev.Name, "pid", ev.PID)
		}
		d.publish(api.Event{Kind: api.EventAdopt, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
			Reason: ev.Message, Time: time.Unix(0, ev.TimeUnixNs)})
	case plugin.EventLog:
		d.logProblem(ev)
	case plugin.EventHung:
		d.hung(ev)
	case plugin.EventReady, plugin.EventStatus:
		d.notified(ev)
	}
}

// notified records a service's readiness (plugin.EventReady: from here its
// start_secs count) and STATUS= text (EventStatus, and EventReady's
// Message). Called with mu held.
func (d *Daemon) notified(ev plugin.Event) {
	s := d.svcs[ev.Name]
	if s == nil || ev.Generation != s.generation {
		return
	}
	if ev.Kind == plugin.EventReady && s.pid != 0 && ev.PID != 0 {
		s.pid = ev.PID // the PID published: the main process it named, if it did (MAINPID=)
	}
	if ev.Message != "" || ev.Kind == plugin.EventStatus {
		s.statusText = ev.Message
	}
	if ev.Kind != plugin.EventReady || s.readyGen == s.generation {
		return
	}
	s.readyGen = s.generation
	d.log.Info("ready", "service", ev.Name, "pid", ev.PID, "generation", ev.Generation, "status", ev.Message)
	d.publish(api.Event{Kind: api.EventReady, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
		Reason: ev.Message, Time: time.Unix(0, ev.TimeUnixNs)})
	if s.pid != 0 && s.state() == policy.StateStarting {
		d.armPromotion(s)
	}
}

// hung records and publishes that the current incarnation of ev's service
// missed its watchdog deadline (plugin.EventHung). Called with mu held.
func (d *Daemon) hung(ev plugin.Event) {
	if s := d.svcs[ev.Name]; s != nil && ev.Generation == s.generation && s.pid == ev.PID {
		s.hung = ev.Message
	}
	d.log.Warn("hung: missed its watchdog deadline; killing", "service", ev.Name, "pid", ev.PID,
		"generation", ev.Generation, "since_beat", time.Duration(ev.SinceBeatNs))
	d.publish(api.Event{Kind: api.EventHung, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
		State: api.StateHung, Reason: ev.Message, Time: time.Unix(0, ev.TimeUnixNs)})
}

// logProblem records what a log event says about its service's log files
// (ServiceStatus.LogError). Called with mu held.
func (d *Daemon) logProblem(ev plugin.Event) {
	s := d.svcs[ev.Name]
	if s == nil || s.logError == ev.Message {
		return
	}
	s.logError = ev.Message
	if ev.Message != "" {
		d.log.Warn("log files", "service", ev.Name, "problem", ev.Message)
	} else {
		d.log.Info("log files writable again", "service", ev.Name)
	}
}

// handle acts on one live plugin event. Called with mu held.
func (d *Daemon) handle(ev plugin.Event) {
	if ev.Kind == plugin.EventBridge {
		d.bridgeChanged(ev)
		return
	}
	if b := d.bridged[ev.Name]; b != nil && (ev.Manager != "" || ev.Kind == plugin.EventManager) {
		d.bridgedEvent(b, ev)
		return
	}
	s := d.svcs[ev.Name]
	switch ev.Kind {
	case plugin.EventExit:
		if s == nil || ev.Generation != s.generation || s.pid == 0 {
			// An incarnation this hbd no longer tracks (a removed service,
			// or an exit already accounted for by reconcile).
			d.report(ev)
			return
		}
		s.pid = 0
		s.hung = ""
		s.exits++
		s.lastStatus = ev.Status
		s.lastExit = time.Unix(0, ev.TimeUnixNs)
		close(s.down)
		d.log.Info("exited", "service", s.cfg.Name, "pid", ev.PID, "status", ev.Status, "source", ev.Source,
			"generation", ev.Generation, "respawned", ev.Respawned, "reason", ev.Reason)
		d.publish(api.Event{Kind: api.EventExit, Name: ev.Name, PID: ev.PID, Generation: ev.Generation,
			Status: ev.Status, Source: ev.Source, Reason: ev.Reason, Time: s.lastExit})
		if ev.Respawned {
			// The plugin applied this policy decision itself (Spec.Respawn):
			// a run of at least start_secs, respawned at once. Its spawn
			// event follows.
			s.failedStarts = 0
			return
		}
		s.exitNote = ev.Message
		startedAt := s.startedAt
		if ev.Reason == plugin.ReasonReadyTimeout {
			startedAt = time.Now() // never ready: a failed start, however long it took
		}
		d.decide(s, ev.Status, startedAt)
	case plugin.EventAdopt, plugin.EventLog, plugin.EventHung, plugin.EventReady, plugin.EventStatus:
		if ev.Kind == plugin.EventAdopt && s != nil && ev.Generation == s.generation && s.pid != 0 {
			s.pid = ev.PID // the incarnation's main process now (MAINPID=)
		}
		d.report(ev)
	case plugin.EventSpawn:
		// hbd's own spawns are recorded when Spawn returns; a newer
		// generation is a respawn by the plugin.
		if s == nil || ev.Generation <= s.generation {
			return
		}
		s.slot, s.pid, s.generation = ev.Slot, ev.PID, ev.Generation
		s.exitNote = ""
		s.startedAt = time.Now()
		s.adopted = false
		s.down = make(chan struct{})
		d.log.Info("spawned", "service", s.cfg.Name, "pid", ev.PID, "generation", ev.Generation, "by", "plugin")
		if s.wantDown {
			// The respawn raced a stop (the exit came before the plugin
			// saw the Stop, or hbd took the service for down while the
			// plugin had respawned it): the plugin's Stop took this
			// incarnation down too, and its exit follows. Stopping until then.
			if s.state() != policy.StateStopping {
				d.setState(s, policy.StateStarting, "")
				d.setState(s, policy.StateStopping, "respawned by the plugin while stopping")
			}
			d.publish(api.Event{Kind: api.EventSpawn, Name: s.cfg.Name, PID: ev.PID, Generation: ev.Generation,
				Reason: "respawned by the plugin while stopping"})
			return
		}
		d.setState(s, policy.StateStarting, "respawned at once by the plugin")
		d.publish(api.Event{Kind: api.EventSpawn, Name: s.cfg.Name, PID: ev.PID, Generation: ev.Generation,
			Reason: "respawned by the plugin"})
		d.armPromotion(s)
	}
}

// decide applies the restart policy to the exit of s's incarnation started
// at startedAt (zero: unknown, counts as a long run). Called with mu held.
func (d *Daemon) decide(s *service, status int, startedAt time.Time) {
	if d.closing && !s.wantDown {
		s.wantDown = true
	}
	dec := policy.Decide(s.cfg.Policy(), policy.History{StartedAt: startedAt, FailedStarts: s.failedStarts},
		policy.ExitInfo{Status: status, Expected: s.wantDown}, time.Now())
	s.failedStarts = dec.FailedStarts
	s.cancelTimer()
	switch dec.Action {
	case policy.ActionRespawn:
		if dec.Delay <= 0 {
			d.spawn(s, dec.Reason)
			return
		}
		// Scheduled before the mirror lets go of mu: a status read then
		// shows the backoff with its next start.
		d.setState(s, policy.StateBackoff, dec.Reason)
		d.schedule(s, dec.Delay)
		d.mirror(s)
	default:
		if dec.NextState == policy.StateStopped {
			if st := s.state(); st == policy.StateStarting || st == policy.StateRunning {
				// Killed by a forced stop before its own stop began.
				d.setState(s, policy.StateStopping, "")
			}
		}
		d.setState(s, dec.NextState, dec.Reason)
		d.mirror(s)
	}
}

// schedule starts s after delay unless something else happens first.
// Called with mu held.
func (d *Daemon) schedule(s *service, delay time.Duration) {
	s.cancelTimer()
	seq := s.timerSeq
	s.nextStart = time.Now().Add(delay)
	s.timer = time.AfterFunc(delay, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if s.timerSeq != seq || d.closing || s.wantDown || d.svcs[s.cfg.Name] != s {
			return
		}
		s.timer, s.nextStart = nil, time.Time{}
		d.spawn(s, "backoff elapsed")
	})
}

// armPromotion moves s from starting to running once it has stayed up for
// start_secs. Called with mu held.
func (d *Daemon) armPromotion(s *service) {
	s.cancelTimer()
	gen := s.generation
	if s.cfg.DeclaresReady() && s.readyGen != gen {
		return // start_secs count from READY=1 (notified)
	}
	promote := func(mirror bool) {
		if s.generation != gen || s.pid == 0 || s.state() != policy.StateStarting {
			return
		}
		s.failedStarts = 0
		// The reason stays what started it (and when): "up for 1s" would
		// read as the uptime.
		d.setState(s, policy.StateRunning, "")
		if mirror {
			d.mirror(s)
		}
	}
	if s.cfg.StartWindow <= 0 {
		// The plugin wrote "running" into the slot at the spawn
		// (Spec.RunningAtSpawn) if it is recent enough: no call needed,
		// which at every respawn had cost the plugin a fifth of its CPU
		// in an exit flood.
		promote(!d.pluginSetsRunning() || s.cfg.DeclaresReady())
		return
	}
	seq := s.timerSeq
	s.timer = time.AfterFunc(s.cfg.StartWindow, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if s.timerSeq == seq {
			s.timer = nil
			promote(true)
		}
	})
}

// pluginSetsRunning reports whether the plugin writes "running" into a slot
// at the spawn when the Spec asks (Spec.RunningAtSpawn: plugin FeatureVersion
// FeatureRunningAtSpawn and later). A plugin reattached across an upgrade of hbd may be older.
// Called with mu held.
func (d *Daemon) pluginSetsRunning() bool {
	return d.info.FeatureVersion >= plugin.FeatureRunningAtSpawn
}

// spawn starts a new incarnation of s. A spawn that cannot work (no such
// executable, bad user) makes the service fatal at once; other failures
// count as failed starts. Called with mu held.
func (d *Daemon) spawn(s *service, why string) {
	s.cancelTimer()
	if d.closing {
		return
	}
	spec, err := d.specFor(s)
	var res plugin.SpawnResult
	if err == nil {
		d.mu.outside(func() { res, err = spawnRPC(d.shim, spec) })
	}
	d.spawned(s, why, res, err)
}

// spawnParallel is how many Spawn calls hbd has in flight when it starts
// many services together (autostart): each call mostly waits for the
// kernel to exec, so a few at once use both the machine's CPUs.
const spawnParallel = 4

// spawnMany is spawn for several services at once, spawnParallel calls at a
// time; the results are applied in the order of svcs. The plugin gives a new
// service the first free slot as its Spawn arrives, so the slots of services
// started together follow the order of svcs only roughly; when they might
// not all fit in the table (free is the number of free slots), they are
// started one by one, so that the first in order get the slots. Called with
// mu held; the calls are made outside it.
func (d *Daemon) spawnMany(svcs []*service, free int, why string) {
	if d.closing {
		return
	}
	if len(svcs) < 2 || len(svcs) > free {
		for _, s := range svcs {
			d.spawn(s, why)
		}
		return
	}
	type result struct {
		res plugin.SpawnResult
		err error
	}
	results := make([]result, len(svcs))
	specs := make([]plugin.Spec, len(svcs))
	for i, s := range svcs {
		s.cancelTimer()
		specs[i], results[i].err = d.specFor(s)
	}
	shim := d.shim
	many, _ := shim.(plugin.ManySpawner)
	if d.info.FeatureVersion < plugin.FeatureSpawnMany {
		many = nil
	}
	d.mu.outside(func() {
		if many != nil {
			spawnBatches(many, specs, func(i int, res plugin.SpawnResult, err error) {
				if results[i].err == nil {
					results[i].res, results[i].err = res, err
				}
			}, func(i int) bool { return results[i].err == nil })
			return
		}
		sem := make(chan struct{}, spawnParallel)
		var wg sync.WaitGroup
		for i := range svcs {
			if results[i].err != nil {
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				results[i].res, results[i].err = spawnRPC(shim, specs[i])
			})
		}
		wg.Wait()
	})
	for i, s := range svcs {
		d.spawned(s, why, results[i].res, results[i].err)
	}
}

// spawnBatch is how many services one SpawnMany call starts, and
// batchesInFlight how many such calls are in flight: the plugin starts a
// batch's services on a worker per CPU, so two batches keep as many spawns
// under way as spawnParallel Spawn calls did, with one call per batch
// instead of one per service.
const (
	spawnBatch      = 64
	batchesInFlight = 2
)

// spawnBatches starts the specs i with want(i) through m, spawnBatch at a
// time, and calls set with each outcome. A batch whose call failed sets
// that error for each of its specs.
func spawnBatches(m plugin.ManySpawner, specs []plugin.Spec, set func(i int, res plugin.SpawnResult, err error), want func(i int) bool) {
	var idx []int
	for i := range specs {
		if want(i) {
			idx = append(idx, i)
		}
	}
	sem := make(chan struct{}, batchesInFlight)
	var wg sync.WaitGroup
	for start := 0; start < len(idx); start += spawnBatch {
		batch := idx[start:min(start+spawnBatch, len(idx))]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			part := make([]plugin.Spec, len(batch))
			for j, i := range batch {
				part[j] = specs[i]
			}
			// Each spawn of the batch gets the time a Spawn call would.
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout*time.Duration(1+len(part)/2))
			outs, err := m.SpawnMany(ctx, part)
			cancel()
			for j, i := range batch {
				if err != nil {
					set(i, plugin.SpawnResult{}, err)
					continue
				}
				set(i, outs[j].Result, outs[j].Err)
			}
		})
	}
	wg.Wait()
}

// spawnRPC is one Spawn call to the plugin.
func spawnRPC(shim plugin.Shim, spec plugin.Spec) (plugin.SpawnResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	return shim.Spawn(ctx, spec)
}

// spawned records the outcome of a Spawn of s: starting, or the error's
// consequence (fatal, or a backoff). Called with mu held.
func (d *Daemon) spawned(s *service, why string, res plugin.SpawnResult, err error) {
	d.holdPipes(res.LogPipes)
	if err == nil {
		s.slot, s.pid, s.generation = res.Slot, res.PID, res.Generation
		s.exitNote = ""
		s.startedAt = time.Now()
		s.adopted = false
		s.down = make(chan struct{})
		d.setState(s, policy.StateStarting, why)
		d.log.Info("spawned", "service", s.cfg.Name, "pid", res.PID, "generation", res.Generation, "why", why)
		d.publish(api.Event{Kind: api.EventSpawn, Name: s.cfg.Name, PID: res.PID, Generation: res.Generation,
			Reason: why})
		d.armPromotion(s)
		return
	}
	reason := "spawn failed: " + err.Error()
	d.log.Error("spawn failed", "service", s.cfg.Name, "err", err)
	if permanentSpawnError(err) {
		s.failedStarts++
		d.setState(s, policy.StateFatal, reason)
		d.mirror(s)
		return
	}
	s.failedStarts++
	p := s.cfg.Policy()
	if p.StartRetries > 0 && s.failedStarts >= p.StartRetries {
		d.setState(s, policy.StateFatal, reason)
		d.mirror(s)
		return
	}
	d.setState(s, policy.StateBackoff, reason)
	d.schedule(s, policy.Backoff(p, s.failedStarts))
	d.mirror(s)
}

// permanentSpawnError reports whether retrying cannot help.
func permanentSpawnError(err error) bool {
	var ce config.Errors
	return errors.As(err, &ce) || errors.Is(err, plugin.ErrBadSpec) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EACCES) ||
		errors.Is(err, syscall.ENOEXEC) || errors.Is(err, plugin.ErrFull)
}

// specFor builds the plugin Spec of s, resolving its user, group and
// executable on this machine.
func (d *Daemon) specFor(s *service) (plugin.Spec, error) {
	c := s.cfg
	r, err := config.Resolve(c)
	if err != nil {
		return plugin.Spec{}, err
	}
	env := c.Env(os.Environ())
	if r.Username != "" {
		env = setEnv(env, "USER", r.Username)
		env = setEnv(env, "LOGNAME", r.Username)
		env = setEnv(env, "HOME", r.Home)
	}
	argv := slices.Clone(c.Command)
	if r.Executable != "" {
		argv[0] = r.Executable
	}
	logMax, backups := logLimits(c)
	spec, err := placementSpec(c)
	if err != nil {
		return plugin.Spec{}, err
	}
	p := c.Policy()
	respawn := plugin.Respawn{
		// Only what the policy answers with "respawn at once": the plugin
		// does it without a round trip. Never while hbd wants it down.
		Enabled:     p.Restart != policy.RestartNever && p.RestartDelay <= 0 && !s.wantDown && !d.closing,
		OnFailure:   p.Restart == policy.RestartOnFailure,
		ExitCodes:   p.ExitCodes,
		StartWindow: p.StartWindow,
	}
	spec.Respawn = respawn
	return plugin.Spec{
		CPUs: spec.CPUs, SetNice: spec.SetNice, Nice: spec.Nice, SetSched: spec.SetSched,
		SchedPolicy: spec.SchedPolicy, SchedPriority: spec.SchedPriority, Rlimits: spec.Rlimits,
		SetUmask: spec.SetUmask, Umask: spec.Umask,
		MemoryMax: c.MemoryMax, PidsMax: c.PidsMax, CPUWeight: c.CPUWeight,
		Respawn: respawn,
		// promote's immediate case, done by the plugin in the slot.
		RunningAtSpawn: p.StartWindow <= 0 && !c.DeclaresReady(),
		Name:           c.Name, Command: argv, Dir: c.Directory, Env: env,
		UID: r.UID, GID: r.GID, Groups: r.Groups,
		Stdout: c.Stdout, Stderr: c.Stderr,
		LogDir: d.cfg.HBD.LogDir, LogMaxBytes: logMax, LogBackups: backups,
		LogTimestamps: c.LogTimestamps, LogDirect: c.LogDirect,
		Watchdog: c.Watchdog, WatchdogSignal: c.WatchdogSignal, WatchdogGrace: c.WatchdogGrace,
		Ready: c.Ready, ReadyTimeout: c.ReadyTimeout,
		KillMode: c.KillMode,
		Type:     forkingType(c), PIDFile: c.PIDFile,
	}, nil
}

// logLimits are c's log_max_bytes and log_backups as a Spec has them: the
// config's 0 means "never" / "none", the Spec's 0 "the default".
func logLimits(c *config.Service) (max int64, backups int) {
	max, backups = c.LogMaxBytes, c.LogBackups
	if max == 0 {
		max = -1
	}
	if backups == 0 {
		backups = -1
	}
	return max, backups
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// setState moves s's machine, recording why. An invalid move is a bug in
// the manager: it is logged and the state is set anyway so that the service
// keeps being supervised. Called with mu held.
func (d *Daemon) setState(s *service, st policy.State, reason string) {
	from := s.state()
	if from != st || st == policy.StateStarting {
		if err := s.m.To(st); err != nil {
			d.log.Error("state machine", "service", s.cfg.Name, "err", err)
			s.m = policy.NewMachine(st)
		}
		s.since = time.Now()
	}
	if reason != "" {
		s.reason, s.reasonAt = reason, time.Now()
		d.markSeqDirty()
		if s.exitNote != "" && s.pid == 0 {
			s.reason += "; " + s.exitNote
		}
	}
	if st != policy.StateBackoff {
		s.nextStart = time.Time{} // a backoff's is set by schedule
	}
	d.publish(api.Event{Kind: api.EventState, Name: s.cfg.Name, PID: s.pid, Generation: s.generation,
		State: st.String(), Reason: reason})
	if st == policy.StateRunning {
		d.afterRunning()
	}
}

// mirror writes s's state into its slot, so that peers reading the table see
// what hbd decided. Called with mu held.
func (d *Daemon) mirror(s *service) {
	if s.slot < 0 || d.shim == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	var err error
	// Read under mu: the call runs without it.
	name, st, gen, sh := s.cfg.Name, shm.State(s.state()), s.generation, d.shim
	d.mu.outside(func() { err = sh.SetState(ctx, name, st, gen) })
	if errors.Is(err, plugin.ErrStale) {
		// The plugin has seen the incarnation exit (or replaced it) since:
		// its event is on the way, and the decision it brings is mirrored.
		d.log.Debug("state not recorded: the slot has moved on", "service", s.cfg.Name, "err", err)
		return
	}
	if err != nil && !errors.Is(err, plugin.ErrNotFound) {
		d.log.Warn("record state in table", "service", s.cfg.Name, "err", err)
	}
}

// watchPlugin replaces a plugin that died: the new plugin adopts every live
// client from the table and reports those that died meanwhile.
func (d *Daemon) watchPlugin(gen uint64, conn pluginConn) {
	<-conn.Exited()
	// The kernel has marked writer_alive already; wake every peer blocked
	// on the table so that it looks (the dead plugin cannot).
	if t := d.peerTable(); t != nil {
		t.Wake()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if gen != d.pluginGen || d.closing {
		return
	}
	d.log.Error("plugin died; starting a new one to adopt the services", "pid", conn.PID())
	_ = conn.Detach()
	for attempt := 1; ; attempt++ {
		err := d.connect()
		if err == nil {
			return
		}
		d.log.Error("restart plugin", "attempt", attempt, "err", err)
		// A failed connect counts a generation too; only a change made by
		// someone else while the lock is out means another took over.
		mine := d.pluginGen
		d.mu.Unlock()
		time.Sleep(min(time.Duration(attempt)*200*time.Millisecond, 5*time.Second))
		d.mu.Lock()
		if d.closing || d.pluginGen != mine {
			return
		}
	}
}

// publish sends an event to control API subscribers. Called with mu held,
// after the state Get reports reflects the event.
func (d *Daemon) publish(ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	d.bus.publish(ev)
}

// markSeqDirty saves lastSeq within a second; idle hbd writes nothing.
// Called with mu held.
func (d *Daemon) markSeqDirty() {
	if d.seqDirty {
		return
	}
	d.seqDirty = true
	time.AfterFunc(time.Second, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.saveSeq()
	})
}

// saveSeq writes lastSeq now. Called with mu held.
func (d *Daemon) saveSeq() {
	if !d.seqDirty {
		return
	}
	d.seqDirty = false
	r := seqRecord{PluginPID: d.info.PID, LastSeq: d.lastSeq, Reasons: map[string]savedReason{}}
	for name, s := range d.svcs {
		if s.reason != "" {
			r.Reasons[name] = savedReason{Generation: s.generation, State: s.state().String(),
				Reason: s.reason, At: s.reasonAt, Since: s.since}
		}
	}
	if err := storeRecord(d.cfg.HBD.StateDir, r); err != nil {
		d.log.Warn("save event position", "err", err)
	}
}

// forkingType is the Spec's Type of c: "forking", or "" for a simple
// service (what plugins before the field understand).
func forkingType(c *config.Service) string {
	if c.Type == config.TypeForking {
		return c.Type
	}
	return ""
}

// placementSpec is the placement and limits part of c's Spec (cpus,
// nice, sched, rlimits, umask), parsed; Load has checked them.
func placementSpec(c *config.Service) (plugin.Spec, error) {
	var sp plugin.Spec
	var err error
	if c.CPUs != "" {
		if sp.CPUs, err = config.ParseCPUs(c.CPUs); err != nil {
			return sp, fmt.Errorf("%w: cpus: %w", plugin.ErrBadSpec, err)
		}
	}
	sp.SetNice, sp.Nice = c.SetNice, c.Nice
	if c.Sched != "" {
		sp.SetSched = true
		if sp.SchedPolicy, sp.SchedPriority, err = config.ParseSched(c.Sched); err != nil {
			return sp, fmt.Errorf("%w: sched: %w", plugin.ErrBadSpec, err)
		}
	}
	for _, l := range c.Rlimits {
		sp.Rlimits = append(sp.Rlimits, plugin.Rlimit{Resource: config.RlimitNames[l.Name], Cur: l.Value, Max: l.Value})
	}
	if c.Umask != "" {
		sp.SetUmask = true
		if sp.Umask, err = config.ParseUmask(c.Umask); err != nil {
			return sp, fmt.Errorf("%w: umask: %w", plugin.ErrBadSpec, err)
		}
	}
	return sp, nil
}

// restoreReason takes a reason the previous hbd saved, if it is about the
// incarnation and state s now has. Called with mu held.
func restoreReason(s *service, r savedReason) bool {
	if r.Reason == "" || r.Generation != s.generation || r.State != s.state().String() {
		return false
	}
	s.reason, s.reasonAt = r.Reason, r.At
	if !r.Since.IsZero() {
		s.since = r.Since
	}
	return true
}

// slotStart converts a slot's start time (clock ticks after boot, as
// /proc/PID/stat's field 22) into a wall-clock time; zero when unknown.
func slotStart(ticks uint64) time.Time {
	if ticks == 0 {
		return time.Time{}
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	const userHZ = 100 // USER_HZ, what /proc reports start times in on every Linux
	sinceBoot := time.Duration(ts.Nano())
	started := time.Duration(ticks) * (time.Second / userHZ)
	if started > sinceBoot {
		return time.Time{}
	}
	return time.Now().Add(-(sinceBoot - started))
}
