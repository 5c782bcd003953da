package config

import (
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/host/signame"
	"github.com/hbshim/hb/shm"
)

// DefaultDetectorPriority is [HBD].DetectorPriority's default: the lowest
// real-time priority, above every ordinary process and below any real-time
// one.
const DefaultDetectorPriority = 1

// Values of [HBD].Detector.
const (
	DetectorAuto       = "auto"       // every detector that works here: exit tracepoint, proc connector, pidfd
	DetectorConnector  = "connector"  // require the proc connector (pidfd stays on as the safety net)
	DetectorPidfd      = "pidfd"      // pidfd alone
	DetectorTracepoint = "tracepoint" // require the exit tracepoint (eBPF; pidfd stays on as the safety net)
)

// Detectors lists the values of [HBD].Detector. They are the plugin's
// --detector names (connector.Detector's String); a test holds the two
// lists equal, since the manager does not import the detectors.
var Detectors = []string{DetectorAuto, DetectorConnector, DetectorPidfd, DetectorTracepoint}

// Values of [Service].KillMode (the plugin's kill modes).
const (
	KillCgroup       = "cgroup"        // every process of the service's cgroup (process groups where there are no cgroups)
	KillProcessGroup = "process-group" // the main process's group
	KillProcess      = "process"       // the main process only
)

// Values of [Service].Type.
const (
	TypeSimple  = "simple"  // the first process is the main one
	TypeForking = "forking" // the first process daemonizes and exits 0; PIDFile names the main one
)

// Values of [Service].Stdout and Stderr.
const (
	OutputFile    = "file"    // LogDir/NAME.out.log or NAME.err.log, rotated
	OutputInherit = "inherit" // the plugin's log file (state_dir/plugin.log)
	OutputNull    = "null"    // /dev/null
)

// Limits checked by Validate.
const (
	// NameMax is the longest service name: the shared-memory slot holds 47
	// bytes and a NUL.
	NameMax = shm.NameMax
	// MaxSlots is the largest [hbd] slots.
	MaxSlots = 65536
	// SocketPathMax is the longest control socket path (sun_path is 108
	// bytes with the terminating NUL).
	SocketPathMax = 107
	// MaxSignal is the largest stop_signal number (SIGRTMAX on Linux).
	MaxSignal = signame.Max
	// MinWatchdog is the shortest watchdog period.
	MinWatchdog = time.Millisecond
	// DefaultWatchdogGrace is watchdog_grace's default.
	DefaultWatchdogGrace = 5 * time.Second
	// DefaultReadyTimeout is ready_timeout's default.
	DefaultReadyTimeout = 90 * time.Second
)

// Values of [Service].Ready.
const (
	ReadySpawn  = "spawn"  // up at the spawn
	ReadyNotify = "notify" // up when it sends READY=1 to $NOTIFY_SOCKET (sd_notify)
	// ReadyFD is the prefix of "fd:N": up when it writes a newline on its
	// descriptor N (s6's notification-fd), N in MinReadyFD..MaxReadyFD.
	ReadyFD    = "fd:"
	MinReadyFD = 3
	MaxReadyFD = 7
)

// ReadyFDNumber is N of a ready value "fd:N", or -1 if it is not one.
func ReadyFDNumber(ready string) int {
	v, ok := strings.CutPrefix(ready, ReadyFD)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < MinReadyFD || n > MaxReadyFD || strconv.Itoa(n) != v {
		return -1
	}
	return n
}

// DeclaresReady reports whether the service says when it is ready (ready
// "notify" or "fd:N") rather than being up at the spawn.
func (s *Service) DeclaresReady() bool { return s.Ready != ReadySpawn && s.Ready != "" }

// Config is a loaded, validated configuration: the main file plus its
// includes. A Config is not modified by this package after Load returns and
// is then safe for concurrent reads.
type Config struct {
	// Path is the main file as given to Load or Parse.
	Path string
	// Files are the files read: Path first, then the included files in the
	// order they were read.
	Files []string
	// HBD is the [hbd] table with defaults filled in and relative paths
	// made absolute. It is comparable with ==.
	HBD HBD
	// Services by name.
	Services map[string]*Service
	// Order holds every name in Services once, in definition order: the
	// main file's services in file order, then each included file's.
	Order []string
	// InstanceGroups maps each service with instances = N to its
	// instances' names, in order (hbctl restart NAME acts on all of them).
	InstanceGroups map[string][]string
	// Bridged are the programs of [bridge.MANAGER] tables by slot name, in
	// BridgedOrder (docs/bridges.md).
	Bridged      map[string]*Bridged
	BridgedOrder []string
	// BridgeSources are the [bridge.MANAGER] tables without programs:
	// every program of the manager, found by the plugin as they come and
	// go. A program found there whose name is a service's or a listed
	// program's is not bridged (the explicit one wins).
	BridgeSources []*BridgeSource

	hbdKeys writtenKeys // [hbd] keys as written, for line numbers
	hbdLine int         // line of the [hbd] table, 0 if absent
}

// HBD is the daemon's own settings, the [hbd] table.
type HBD struct {
	Shm      string // name of the table under /dev/shm
	Socket   string // control socket path
	StateDir string // plugin reattach info and other state
	LogDir   string // service logs (stdout/stderr = "file")
	Slots    int    // capacity of the shared-memory table
	Detector string // DetectorAuto, DetectorConnector, DetectorPidfd or DetectorTracepoint
	// DetectorPriority is the SCHED_FIFO priority (1..99) of the thread
	// that reads the exit tracepoint's ring buffer; 0 leaves it an
	// ordinary thread.
	DetectorPriority int
	SocketGroup      string // group (name or number) allowed on the socket besides root; "" = root only
	// CgroupRoot is where the services' cgroups go, a path in the cgroup
	// v2 hierarchy (CgroupRoot/Shm/NAME); "" = the plugin's own cgroup.
	CgroupRoot string
	// HeadlessRespawns is how many times in a row the plugin respawns a
	// service itself while no hbd is connected (0: never); then the
	// service stays down until an hbd connects.
	HeadlessRespawns int
	// MetricsListen is a TCP address ("127.0.0.1:9464") where hbd serves
	// GET /metrics and nothing else; "" = none (the control socket serves
	// /metrics too).
	MetricsListen string
}

// Service is one [service.NAME] table with defaults filled in.
type Service struct {
	Name string
	// File and Line locate the [service.NAME] table (Line is 0 for a
	// Service built in code). They are not part of Equal.
	File string
	Line int

	Command     []string          // argv; never empty once validated
	Directory   string            // working directory, absolute; "" = hbd's
	Environment map[string]string // added to (and overriding) the inherited environment; nil after Load when empty
	User        string            // name or number; "" = hbd's user
	Group       string            // name or number; "" = the user's primary group
	Restart     policy.Restart
	// RestartDelay, StartWindow, StartRetries, BackoffMax and ExitCodes are
	// the restart policy; see the policy package.
	RestartDelay time.Duration
	StartWindow  time.Duration
	StartRetries int
	BackoffMax   time.Duration
	ExitCodes    []int
	StopSignal   syscall.Signal
	StopTimeout  time.Duration // then SIGKILL to the process group
	Autostart    bool
	Stdout       string // OutputFile, OutputInherit or OutputNull
	Stderr       string
	LogMaxBytes  int64 // rotate a log file past this size; 0 = never rotate
	LogBackups   int   // rotated files kept; 0 = none (truncate in place)
	// LogTimestamps starts each line of the log files with its RFC 3339
	// time; LogDirect has the service write its files itself (no pipe).
	LogTimestamps bool
	LogDirect     bool
	// Watchdog, when not 0, is the heartbeat period: the service must beat
	// (shm.Beat, hb_beat) at least this often or it is hung.
	Watchdog       time.Duration
	WatchdogSignal syscall.Signal // sent to a hung service (default SIGABRT)
	WatchdogGrace  time.Duration  // then SIGKILL to its process group
	// Ready is when the service counts as up: ReadySpawn, or ReadyNotify
	// (it sends READY=1 by the sd_notify protocol); ReadyTimeout bounds
	// the wait.
	Ready        string
	ReadyTimeout time.Duration
	// After names the services this one starts after: at hbd's start it
	// is spawned only once each of them is running (ready, with ready =
	// "notify"). Validate rejects unknown names and cycles.
	After []string
	// KillMode is KillCgroup, KillProcessGroup or KillProcess: what stop
	// signals, and what is killed when the main process exits.
	KillMode string
	// Type is TypeSimple or TypeForking (the main process is the one
	// PIDFile names, an absolute path).
	Type    string
	PIDFile string
	// Placement and limits (see placement.go): CPUs as written ("2-3"),
	// Nice when SetNice, Sched as written ("fifo:10"), Rlimits by name,
	// Umask as written ("022"); "" and nil keep hbd's.
	CPUs    string
	SetNice bool
	Nice    int
	Sched   string
	Rlimits []RlimitSetting
	Umask   string
	// Limits of the service's cgroup (their controller must be in the
	// cgroup v2 hierarchy): MemoryMax bytes and PidsMax (0: not set, -1:
	// "max"), CPUWeight 1..10000 (0: not set).
	MemoryMax int64
	PidsMax   int64
	CPUWeight int

	// Instances (instances = N) and InstanceStart are what Load expands
	// into N services NAME-S … NAME-(S+N-1); each of those has InstanceOf
	// = NAME and Instance = its number (and Instances 0).
	Instances     int
	InstanceStart int
	InstanceOf    string
	Instance      int

	keys writtenKeys // keys as written ("environment.X" too), for line numbers
}

// DefaultHBD returns the [hbd] defaults. LogDir is StateDir + "/log".
func DefaultHBD() HBD {
	return HBD{
		Shm:      "hb",
		Socket:   "/run/hb/hbd.sock",
		StateDir: "/run/hb",
		LogDir:   "/run/hb/log",
		Slots:    1024,
		Detector: DetectorAuto,

		DetectorPriority: DefaultDetectorPriority,
		HeadlessRespawns: DefaultHeadlessRespawns,
	}
}

// DefaultHeadlessRespawns is [hbd] headless_respawns's default.
const DefaultHeadlessRespawns = 100

// DefaultService returns a service named name with every default filled in
// and no command.
func DefaultService(name string) *Service {
	p := policy.DefaultPolicy()
	return &Service{
		Name:         name,
		Environment:  map[string]string{},
		Restart:      p.Restart,
		RestartDelay: p.RestartDelay,
		StartWindow:  p.StartWindow,
		StartRetries: p.StartRetries,
		BackoffMax:   p.BackoffMax,
		ExitCodes:    p.ExitCodes,
		StopSignal:   syscall.SIGTERM,
		StopTimeout:  10 * time.Second,
		Autostart:    true,
		Stdout:       OutputFile,
		Stderr:       OutputFile,
		LogMaxBytes:  10 << 20,
		LogBackups:   3,

		WatchdogSignal: syscall.SIGABRT,
		WatchdogGrace:  DefaultWatchdogGrace,
		Ready:          ReadySpawn,
		ReadyTimeout:   DefaultReadyTimeout,
		KillMode:       KillCgroup,
		Type:           TypeSimple,
	}
}

// Policy returns the service's restart policy.
func (s *Service) Policy() policy.Policy {
	return policy.Policy{
		Restart:      s.Restart,
		RestartDelay: s.RestartDelay,
		StartWindow:  s.StartWindow,
		StartRetries: s.StartRetries,
		BackoffMax:   s.BackoffMax,
		ExitCodes:    slices.Clone(s.ExitCodes),
	}
}

// Env returns base (KEY=VALUE entries, typically hbd's os.Environ()) with
// the service's Environment applied: a variable set in both takes the
// service's value in base's position; the others follow, sorted by name.
func (s *Service) Env(base []string) []string {
	out := make([]string, 0, len(base)+len(s.Environment))
	done := make(map[string]bool, len(s.Environment))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if v, ok := s.Environment[k]; ok {
			if done[k] {
				continue
			}
			done[k] = true
			kv = k + "=" + v
		}
		out = append(out, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Environment)) {
		if !done[k] {
			out = append(out, k+"="+s.Environment[k])
		}
	}
	return out
}

// KeyLine returns the line of key (e.g. "command", "environment.PATH") in
// the file that defines the service, the line of the [service.NAME] table
// when the key is not written there, or 0 for a Service built in code.
func (s *Service) KeyLine(key string) int {
	if l := s.keys.line(key); l > 0 {
		return l
	}
	return s.Line
}

// Equal reports whether s and o configure the same service: every field but
// File and Line. A reload restarts a service whose configuration changed.
func (s *Service) Equal(o *Service) bool {
	return s.Name == o.Name &&
		slices.Equal(s.Command, o.Command) &&
		s.Directory == o.Directory &&
		maps.Equal(s.Environment, o.Environment) &&
		s.User == o.User &&
		s.Group == o.Group &&
		s.Restart == o.Restart &&
		s.RestartDelay == o.RestartDelay &&
		s.StartWindow == o.StartWindow &&
		s.StartRetries == o.StartRetries &&
		s.BackoffMax == o.BackoffMax &&
		slices.Equal(s.ExitCodes, o.ExitCodes) &&
		s.StopSignal == o.StopSignal &&
		s.StopTimeout == o.StopTimeout &&
		s.Autostart == o.Autostart &&
		s.Stdout == o.Stdout &&
		s.Stderr == o.Stderr &&
		s.LogMaxBytes == o.LogMaxBytes &&
		s.LogTimestamps == o.LogTimestamps && s.LogDirect == o.LogDirect &&
		s.LogBackups == o.LogBackups &&
		s.Watchdog == o.Watchdog &&
		s.WatchdogSignal == o.WatchdogSignal &&
		s.WatchdogGrace == o.WatchdogGrace &&
		s.Ready == o.Ready &&
		s.ReadyTimeout == o.ReadyTimeout &&
		slices.Equal(s.After, o.After) &&
		s.Instances == o.Instances && s.InstanceStart == o.InstanceStart &&
		s.InstanceOf == o.InstanceOf && s.Instance == o.Instance &&
		s.KillMode == o.KillMode &&
		s.Type == o.Type &&
		s.PIDFile == o.PIDFile &&
		s.CPUs == o.CPUs && s.SetNice == o.SetNice && s.Nice == o.Nice && s.Sched == o.Sched &&
		slices.Equal(s.Rlimits, o.Rlimits) && s.Umask == o.Umask &&
		s.MemoryMax == o.MemoryMax && s.PidsMax == o.PidsMax && s.CPUWeight == o.CPUWeight
}

// Diff compares two configurations for a reload: added are services only in
// next (in next's order), removed only in prev (in prev's order), changed in
// both but not Equal (in next's order). A nil prev has every service added.
// Changes to [hbd] are not reported here; compare HBD with ==.
func Diff(prev, next *Config) (added, removed, changed []string) {
	var old map[string]*Service
	if prev != nil {
		old = prev.Services
		for _, name := range prev.Order {
			if next == nil || next.Services[name] == nil {
				removed = append(removed, name)
			}
		}
	}
	if next == nil {
		return added, removed, changed
	}
	for _, name := range next.Order {
		o, ok := old[name]
		switch {
		case !ok:
			added = append(added, name)
		case !o.Equal(next.Services[name]):
			changed = append(changed, name)
		}
	}
	return added, removed, changed
}

// hbdKeyLine is the line of key in [hbd], of the [hbd] table when the key
// is not written, or 0.
func (c *Config) hbdKeyLine(key string) int {
	if l := c.hbdKeys.line(key); l > 0 {
		return l
	}
	return c.hbdLine
}

// sortErrors orders errs by file (in c.Files order) and line, keeping the
// relative order of errors on the same line.
func (c *Config) sortErrors(errs Errors) {
	rank := make(map[string]int, len(c.Files))
	for i, f := range c.Files {
		if _, ok := rank[f]; !ok {
			rank[f] = i + 1
		}
	}
	sort.SliceStable(errs, func(i, j int) bool {
		a, b := errs[i], errs[j]
		if ra, rb := rank[a.File], rank[b.File]; ra != rb {
			return ra < rb
		}
		return a.Line < b.Line
	})
}
