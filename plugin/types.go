package plugin

import (
	"context"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/shm"
)

// Spec describes one service to spawn. The host resolves names (users, groups,
// paths) before it sends a Spec, so the plugin only executes.
type Spec struct {
	Name    string   // service name; also the shm slot name (shm.ValidName)
	Command []string // argv; Command[0] is resolved with PATH of Env if it has no slash
	Dir     string   // working directory; "" keeps the plugin's
	Env     []string // complete environment, KEY=VALUE; the plugin adds HB_SERVICE, HB_SLOT, HB_SHM, HB_GENERATION
	UID     int      // -1 keeps the plugin's user
	GID     int      // -1 keeps the plugin's group
	Groups  []int    // supplementary groups when UID/GID are set
	Stdout  string   // "file" | "inherit" | "null"
	Stderr  string   // "file" | "inherit" | "null"
	// LogDir holds NAME.out.log / NAME.err.log when Stdout/Stderr is "file".
	LogDir string
	// LogMaxBytes rotates a log file once it grows past this size (0: 10 MiB;
	// negative: never rotate).
	LogMaxBytes int64
	// LogBackups is how many rotated files (NAME.out.log.1 …) are kept (0: 3;
	// negative: none, the file is cut in place).
	LogBackups int
	// LogTimestamps prefixes each line of the log files with the RFC 3339
	// time (UTC, microseconds) the plugin read it at.
	LogTimestamps bool
	// LogDirect has the service write its log files itself, through an
	// O_APPEND descriptor, instead of through a pipe the plugin reads: no
	// write ever waits for the plugin, but a running service's file is
	// trimmed in place on the beat and lines get no time.
	LogDirect bool
	// Respawn lets the plugin restart the service itself the moment it
	// exits, when the host's policy would do so anyway.
	Respawn Respawn
	// RunningAtSpawn: the host counts an incarnation as running the moment
	// it is spawned (start_secs 0), so its slot reads StateRunning from the
	// spawn on rather than StateStarting; the host has nothing to correct
	// afterwards (plugins of FeatureVersion FeatureRunningAtSpawn and later).
	RunningAtSpawn bool
	// Watchdog, when not 0, arms the heartbeat watchdog: the service gets
	// a beat area (HB_BEAT_FD) and must change its counter (shm.Beat,
	// hb_beat) at least once per Watchdog. A period without a beat sets
	// the slot's PID word to 0 and its state to hung, emits EventHung,
	// sends WatchdogSignal to the process and SIGKILL to its group after
	// WatchdogGrace; the exit is then handled as any other, with Reason
	// "watchdog" (plugins of FeatureVersion FeatureWatchdog and later).
	Watchdog time.Duration
	// WatchdogSignal is sent to a hung service's main process (0: SIGABRT,
	// so that a core dump shows where it hung).
	WatchdogSignal syscall.Signal
	// WatchdogGrace is how long after WatchdogSignal the process group is
	// SIGKILLed (0: 5s).
	WatchdogGrace time.Duration
	// Ready says when the service is ready: "" or ReadySpawn at the spawn;
	// ReadyNotify when it sends READY=1 by the sd_notify protocol to the
	// socket named by NOTIFY_SOCKET (plugins of FeatureVersion
	// FeatureReady and later). Until then the slot's PID word stays 0 and
	// its state starting, so a peer's one load means "ready"; EventReady
	// marks the moment.
	Ready string
	// ReadyTimeout: a service not ready this long after its spawn is
	// killed (its exit's Reason is ReasonReadyTimeout; 0: 90s).
	ReadyTimeout time.Duration
	// KillMode is what Stop signals and what is killed of an incarnation
	// after its main process exits: "cgroup" (every process of the
	// service's cgroup; the default where the plugin has cgroups),
	// "process-group" (the main process's group, as without cgroups) or
	// "process" (the main process alone). See docs/cgroups.md.
	KillMode string
	// Type "forking": the first process daemonizes and exits 0; the main
	// process is the one PIDFile (absolute) names, which must be in the
	// service's cgroup. "" (or "simple"): the first process is the main
	// one.
	Type    string
	PIDFile string
	// Placement and limits, set in the child before exec (and before its
	// credentials change): CPUs is its CPU affinity (nil keeps the
	// plugin's); Nice with SetNice its nice value; SchedPolicy
	// (SCHED_OTHER, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE) and
	// SchedPriority with SetSched its scheduling; Rlimits its resource
	// limits; Umask with SetUmask its umask.
	CPUs          []int
	SetNice       bool
	Nice          int
	SetSched      bool
	SchedPolicy   int
	SchedPriority int
	Rlimits       []Rlimit
	SetUmask      bool
	Umask         int
	// Limits of the service's cgroup, which need its controller (memory,
	// pids, cpu) in the cgroup v2 hierarchy: memory.max in bytes and
	// pids.max (0: not set; -1: "max"), cpu.weight 1..10000 (0: not set).
	MemoryMax int64
	PidsMax   int64
	CPUWeight int
}

// Rlimit is one resource limit (setrlimit(2)): Resource is RLIMIT_*, Cur
// and Max the soft and hard limits (RLIM_INFINITY: unlimited).
type Rlimit struct {
	Resource int
	Cur, Max uint64
}

// Values of Spec.Ready.
const (
	ReadySpawn  = "spawn"
	ReadyNotify = "notify"
	// ReadyFDPrefix: "fd:N", ready when the service writes a newline on
	// its descriptor N (s6's notification-fd), 3 ≤ N ≤ 7.
	ReadyFDPrefix = "fd:"
)

// Reasons of exit events.
const (
	// ReasonWatchdog: killed for missing the watchdog deadline.
	ReasonWatchdog = "watchdog"
	// ReasonReadyTimeout: killed for not declaring itself ready within
	// Spec.ReadyTimeout; the host counts it as a failed start.
	ReasonReadyTimeout = "ready_timeout"
)

// Respawn is the part of the host's restart policy the plugin applies on
// its own: an exit after a run of at least StartWindow whose status the policy
// wants restarted (any status, or with OnFailure one not in ExitCodes) is
// respawned at once, with no round trip to the host. The host enables it
// only when its policy would respawn such an exit without delay; everything
// else (failed starts, backoff, giving up) stays the host's decision. Exits
// during a Stop are never respawned.
type Respawn struct {
	Enabled     bool
	OnFailure   bool
	ExitCodes   []int
	StartWindow time.Duration
}

// Wants reports whether an exit with status after a run of runFor is
// respawned by the plugin.
func (r Respawn) Wants(runFor time.Duration, status int) bool {
	return r.Enabled && runFor >= r.StartWindow && r.WantsStatus(status)
}

// WantsStatus reports whether the policy respawns an exit with status
// (-1: unknown), leaving aside Enabled and StartWindow.
func (r Respawn) WantsStatus(status int) bool {
	return policy.Restarts(r.OnFailure, r.ExitCodes, status)
}

// SpawnResult is what Spawn started.
type SpawnResult struct {
	Slot       int
	PID        int
	Generation uint64
	StartTime  uint64 // field 22 of /proc/PID/stat
	// LogPipes are the log pipes this spawn made (the service's first
	// with a log file): hbd takes a copy of both ends (pidfd_getfd), so
	// that they outlive the plugin.
	LogPipes []LogPipe
}

// LogPipe is a service stream's log pipe in the plugin: descriptors ReadFD
// and WriteFD of the plugin process, the ends of the pipe whose inode is
// Ino.
type LogPipe struct {
	Name    string
	Stream  string // "out" or "err"
	ReadFD  int
	WriteFD int
	Ino     uint64
}

// Feature versions: what a plugin honours, so that hbd attached to a plugin
// started by an older hbd asks only for what it can do.
const (
	// FeatureRunningAtSpawn: the plugin honours Spec.RunningAtSpawn.
	FeatureRunningAtSpawn = 2
	// FeatureWatchdog: the plugin honours Spec.Watchdog.
	FeatureWatchdog = 3
	// FeatureReady: the plugin honours Spec.Ready.
	FeatureReady = 4
	// FeatureBridgeAll: the plugin takes BridgeSpec.All and the reserved
	// names of Bridge, answers Bridged and sends EventBridge.
	FeatureBridgeAll = 5
	// FeatureLogPipes: the plugin honours Spec.LogTimestamps and
	// Spec.LogDirect and reports its log pipes.
	FeatureLogPipes = 6
	// FeatureSpawnMany: the plugin answers SpawnMany (ManySpawner).
	FeatureSpawnMany = 7
)

// SpawnOutcome is the result of one Spawn of a SpawnMany, or its error.
type SpawnOutcome struct {
	Result SpawnResult
	Err    error
}

// ManySpawner is a Shim that starts several services in one call: each as
// Spawn would, in parallel, the outcomes in the order of specs. One call
// instead of one per service is most of what a start of many services costs
// the host and the plugin beyond the spawns themselves (the RPC's framing,
// scheduling and marshalling each way). A Shim without it, or a plugin of a
// feature version before FeatureSpawnMany, gets one Spawn per service.
type ManySpawner interface {
	SpawnMany(ctx context.Context, specs []Spec) ([]SpawnOutcome, error)
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventSpawn: a new incarnation is running and its PID is in the slot.
	EventSpawn EventKind = 1
	// EventExit: an incarnation has exited; its slot PID was already 0 when this was sent.
	EventExit EventKind = 2
	// EventAdopt: a new plugin found a live client in the table and watches it.
	// With a Message ("main pid N (MAINPID=), was M"): the service named
	// another of its processes, PID, its main process (sd_notify's
	// MAINPID=); the plugin watches that one now, in the same Generation,
	// and the slot names it once the service is ready.
	EventAdopt EventKind = 3
	// EventLog: the service's log files became unwritable (Message says
	// why: its log_dir is full) or writable again (Message empty). Sent
	// once per change; hosts that do not know it ignore it.
	EventLog EventKind = 4
	// EventHung: the service missed its watchdog deadline (Spec.Watchdog):
	// its slot's PID word is already 0 and its state hung; SinceBeatNs says
	// how long it had not beaten. Its EventExit (Reason "watchdog")
	// follows once it is killed. Hosts that do not know it ignore it.
	EventHung EventKind = 5
	// EventReady: the service declared itself ready (Spec.Ready); its PID
	// is now in the slot. Message is its last STATUS= text, if any.
	EventReady EventKind = 6
	// EventStatus: the service sent a STATUS= text (Message).
	EventStatus EventKind = 7
	// EventManager: the manager of a bridged program (Manager) went away
	// (Message says why; the slot reads 0 and is flagged
	// shm.SlotManagerGone) or came back (Message empty).
	EventManager EventKind = 8
	// EventBridge: a program a BridgeSpec with All found was added to the
	// bridged set (Reason BridgeAdded; its EventSpawn, if it runs, comes
	// after), dropped from it (BridgeDropped: its service directory or
	// supervisord program is gone; its slot reads 0 and is freed) or not
	// taken (BridgeSkipped: its name is reserved or bridged already).
	// Message says why; Manager names the manager. The host asks Bridged
	// for the set. Hosts that do not know it ignore it.
	EventBridge EventKind = 9
)

// EventBridge reasons.
const (
	BridgeAdded   = "added"
	BridgeDropped = "dropped"
	BridgeSkipped = "skipped"
)

func (k EventKind) String() string {
	switch k {
	case EventSpawn:
		return "spawn"
	case EventExit:
		return "exit"
	case EventAdopt:
		return "adopt"
	case EventLog:
		return "log"
	case EventHung:
		return "hung"
	case EventReady:
		return "ready"
	case EventStatus:
		return "status"
	case EventManager:
		return "manager"
	case EventBridge:
		return "bridge"
	}
	return "unknown"
}

// Event is one entry of the plugin's event stream. Seq increases by one per
// event for the life of a plugin process, so a host that reconnects can ask
// for what it missed.
type Event struct {
	Seq        uint64
	Kind       EventKind
	Name       string
	Slot       int
	PID        int
	Generation uint64
	// Status is the exit code, or 128+signal; -1 when unknown. Exit events only.
	Status int
	// Source names the detector that saw the exit first: "tracepoint", "connector", "pidfd", "resync", "reaper", "adopt".
	Source string
	// DetectedNs is CLOCK_MONOTONIC at detection (exit: at the SIGKILL when
	// the plugin saw it, the time its slot went to 0) or at start (spawn).
	DetectedNs uint64
	// TimeUnixNs is the wall-clock time of the event.
	TimeUnixNs int64
	Adopted    bool // the process is not the plugin's child (adopted after a plugin restart)
	// Respawned (exit events): the plugin has already started the next
	// incarnation (Spec.Respawn); its EventSpawn follows.
	Respawned bool
	// Message (log events) says what is wrong with the service's log
	// files; empty when the problem has cleared. On an exit event, what
	// the exit left behind, when that says something about the service
	// (e.g. "exited 0 and left 3 processes: does it daemonize? …").
	Message string
	// Reason (exit events) is "watchdog" when the plugin killed the
	// process for missing its watchdog deadline; empty otherwise.
	Reason string
	// SinceBeatNs (hung events) is the time from the last beat the plugin
	// saw (or the spawn, before the first) to the check that found none.
	SinceBeatNs uint64
	// Manager is the manager of a bridged program ("runit", "s6",
	// "supervisord"), "" for the plugin's own services.
	Manager string
}

// Info describes a running plugin.
type Info struct {
	PID        int
	ShmName    string
	Slots      int
	Tracepoint bool // the exit tracepoint (eBPF) detector runs: the earliest, for children
	// DetectorPriority is the SCHED_FIFO priority the tracepoint's reader
	// runs at; 0 when it is an ordinary thread.
	DetectorPriority int
	Connector        bool // the proc connector is the fast detector
	Pidfd            bool // the pidfd epoll safety net is active
	Adopted          int  // clients adopted from the table when this plugin started
	LastSeq          uint64
	// Version is the plugin's build version (as hbd's); FeatureVersion is
	// what it honours: see the Feature constants.
	Version        string
	FeatureVersion int
	// ShmRepairs are the repairs of the table the plugin made (a file
	// truncated under it, its name removed), newest last, at most 8.
	ShmRepairs []string
	// ShmProblem is what the plugin cannot repair in the table ("" if
	// nothing): e.g. another file under the table's name.
	ShmProblem string
	// Cgroups says how services are contained: "cgroup DIR" (one cgroup
	// per service under DIR), or "process-group: REASON" (no cgroups, and
	// why). "" from a plugin before the field.
	Cgroups string
	// Metrics are the plugin's counters and latency histograms; zero from a
	// plugin before the field.
	Metrics Metrics
	// ConnectorNote says why the proc connector is not in use when it was
	// asked for (detector "auto" or "connector") and cannot work here, e.g.
	// outside the initial namespaces; "" otherwise.
	ConnectorNote string
	// KillTracepoint: a SIGKILL clears the slot when the kernel delivers
	// it (the exit tracepoint's kill program runs); KillNote says why not
	// when the exit tracepoint runs without it, e.g. no kernel BTF.
	KillTracepoint bool
	KillNote       string
	// LogPipes are every log pipe the plugin reads (see SpawnResult).
	LogPipes []LogPipe
}

// Shim is the service the plugin offers to the host. Every method returns an
// error: the plugin is another process and may be gone.
type Shim interface {
	// Info describes the plugin.
	Info(ctx context.Context) (Info, error)
	// Spawn allocates (or reuses) the slot named spec.Name, starts the
	// process, stores its PID in the slot, then arms the exit watch (a child
	// that died in between is caught at once: its pidfd is already readable).
	// The implementation may keep spec (for respawns) but must not modify
	// its slices: the plugin's server lets Specs share them (one copy of an
	// environment common to many services).
	Spawn(ctx context.Context, spec Spec) (SpawnResult, error)
	// Stop sends sig to the service's process group and, if it has not exited
	// after timeout, SIGKILL. It returns once the exit has been recorded.
	Stop(ctx context.Context, name string, sig syscall.Signal, timeout time.Duration) error
	// Signal sends sig to the service's main process.
	Signal(ctx context.Context, name string, sig syscall.Signal) error
	// SetState records the host's view of the service's state in its slot,
	// about incarnation gen (0: whichever is in the slot). The plugin owns
	// the slot and keeps the state in agreement with the PID word: a live
	// state (starting, running, stopping) only while the PID is not 0, any
	// other only while it is 0, and either only while gen is the slot's
	// generation; otherwise the slot is left alone and the error wraps
	// ErrStale. StateStopping also tells the plugin a stop is coming: the
	// current incarnation's exit is not respawned by the plugin
	// (Spec.Respawn).
	SetState(ctx context.Context, name string, st shm.State, gen uint64) error
	// Free releases the slot of a removed service. The service must not be running.
	Free(ctx context.Context, name string) error
	// List returns every used slot.
	List(ctx context.Context) ([]shm.Slot, error)
	// Events replays buffered events with Seq > afterSeq, then streams new
	// ones until ctx ends or the plugin goes away (the channel is closed).
	Events(ctx context.Context, afterSeq uint64) (<-chan Event, error)
	// Shutdown stops the plugin. With clean set, the table is marked cleanly
	// closed (writer_pid 0); running services are left as they are, so the
	// host stops them first.
	Shutdown(ctx context.Context, clean bool) error
	// Bridge sets the whole set of programs another process manager runs
	// that the plugin is to watch (docs/bridges.md): each gets a slot named
	// after it, flagged shm.SlotBridged, with the PID the manager's status
	// names (identity checked) and 0 from its exit on. Programs of an
	// earlier call not in specs are no longer watched and their slots are
	// freed. A spec with All stands for every program of its manager, as
	// they come and go (EventBridge); such a program whose name is in
	// reserved (the host's own services) or is bridged already is skipped.
	// It returns once every program's status has been read once.
	Bridge(ctx context.Context, specs []BridgeSpec, reserved []string) error
	// Bridged returns the programs bridged now, by name, one spec each
	// (the programs of a spec with All as specs of their own).
	Bridged(ctx context.Context) ([]BridgeSpec, error)
}

// BridgeSpec is one program another process manager runs, or with All
// every program of one manager.
type BridgeSpec struct {
	Name    string // the slot's name (shm.ValidName); "" with All
	Manager string // "runit", "s6" or "supervisord"
	// Dir is, for runit and s6, the service directory (absolute); with
	// All, the directory that holds the service directories (runsvdir's
	// or s6-svscan's), watched for directories added and removed.
	Dir     string
	URL     string // supervisord: its server_url
	Process string // supervisord: the program's group:name; "" with All
	// All: every program of the manager at Dir or URL, found as they are
	// added (a service directory appears in Dir; supervisord's
	// getAllProcessInfo names it) and dropped as they are removed.
	All bool
}

// Histogram is a snapshot of a latency histogram the plugin keeps: Counts[i]
// is the number of observations at most BoundsNs[i] and above
// BoundsNs[i-1] (not cumulative); Count includes those above the last bound.
type Histogram struct {
	BoundsNs []uint64
	Counts   []uint64
	Count    uint64
	SumNs    uint64
}

// Metrics are the plugin's counters since it started (Info.Metrics).
type Metrics struct {
	// Resyncs counts the proc connector's ENOBUFS episodes, each followed
	// by a rescan of every watched pidfd.
	Resyncs uint64
	// SubscribersDropped counts event subscribers (hbd's event stream) the
	// plugin dropped for falling too far behind; hbd then resubscribes
	// and reconciles with the table.
	SubscribersDropped uint64
	// DetectToStore: from an exit's detection (the detector's timestamp)
	// to the store of 0 in its slot, for each exit that cleared a slot.
	DetectToStore Histogram
	// Respawn: from an exit's detection to its replacement, started by the
	// plugin itself (Spec.Respawn), being in the slot and announced.
	Respawn Histogram
}
