package api

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

// Event kinds, the values of Event.Kind.
const (
	EventSpawn  = "spawn"  // a new incarnation started; PID and Generation name it
	EventExit   = "exit"   // an incarnation exited; Status is its exit code or 128+signal, -1 if unknown
	EventState  = "state"  // the service's state changed to State; Reason says why
	EventAdopt  = "adopt"  // a running process was adopted from the shm table after a restart, or (Reason "main pid N (MAINPID=) …") became the incarnation's main process
	EventReload = "reload" // the configuration was reloaded; Name is empty, Reason summarises
	EventHung   = "hung"   // an incarnation missed its watchdog deadline; Reason says how long since its last beat
	EventReady  = "ready"  // an incarnation declared itself ready (ready = "notify"); its PID is now in the slot
)

// StateHung is ServiceStatus.State of a service that missed its watchdog
// deadline and is being killed (the shm slot's state hung).
const StateHung = "hung"

// ServiceStatus is the manager's view of one service, as returned by
// GET /v1/services and GET /v1/services/{name}.
type ServiceStatus struct {
	Name string `json:"name"`
	// State is the lower-case shm state name: stopped, starting, running,
	// backoff, exited, fatal or stopping.
	State string `json:"state"`
	// PID is the running incarnation's PID, 0 when none runs (the shm slot's PID).
	PID int `json:"pid"`
	// Slot is the service's index in the shm table.
	Slot int `json:"slot"`
	// Generation counts spawns; it names the current (or last) incarnation.
	Generation uint64 `json:"generation"`
	// Exits counts exits seen.
	Exits uint64 `json:"exits"`
	// LastStatus is the last exit's code, or 128+signal; -1 when unknown or no exit yet.
	LastStatus int `json:"last_status"`
	// LastExit is the wall-clock time of the last exit; absent before the first.
	LastExit time.Time `json:"last_exit,omitzero"`
	// Since is when the service entered State.
	Since time.Time `json:"since,omitzero"`
	// Uptime is how long the current incarnation has run, as a Go duration
	// rounded to the second ("1h2m3s"). The server fills it in from Since when
	// the backend leaves it empty and State is starting, running or stopping.
	Uptime string `json:"uptime,omitempty"`
	// Restart is the service's restart policy ("always", "on-failure", "never").
	Restart string `json:"restart,omitempty"`
	// Reason says why the service is in State when that is not obvious: why it
	// is fatal or backing off, or the last start error.
	Reason string `json:"reason,omitempty"`
	// Adopted is true when the process is not the plugin's child (adopted from
	// the shm table after a plugin restart).
	Adopted bool `json:"adopted,omitempty"`
	// Manager names the process manager that runs a bridged program
	// ("runit", "s6", "supervisord"; docs/bridges.md); empty for hb's own
	// services.
	Manager string `json:"manager,omitempty"`
	// NextStart is when the next start attempt is due, in state backoff only.
	NextStart time.Time `json:"next_start,omitzero"`
	// FailedStarts counts consecutive starts that failed or exited too quickly.
	FailedStarts int `json:"failed_starts"`
	// LogError says why the service's log files cannot be written (its
	// log_dir is full, so its output is being lost); absent when they can.
	LogError string `json:"log_error,omitempty"`
	// StatusText is the service's last STATUS= text (sd_notify), if any.
	StatusText string `json:"status_text,omitempty"`
	// ReasonAt is when Reason was recorded (what happened, and when).
	ReasonAt time.Time `json:"reason_at,omitzero"`
	// StartedAt is when the current incarnation started (from the table's
	// start time, so it survives restarts of hbd); absent without a process.
	StartedAt time.Time `json:"started_at,omitzero"`
	// Wanted is the state hbd wants the service in: "up" (it should run) or
	// "down" (stopped on request, or not autostart and never started).
	Wanted string `json:"wanted,omitempty"`
	// OK is true when the service is in its wanted state: up and starting
	// or running, or down and stopped (or exited with an exit code that is
	// a success). `hbctl status` exits 3 when a listed service is not.
	OK bool `json:"ok"`
	// InstanceOf is, for an instance NAME-i of a service with instances =
	// N, NAME; Instance is i.
	InstanceOf string `json:"instance_of,omitempty"`
	Instance   int    `json:"instance,omitempty"`
	// Error is set in the answer of a start, stop or restart on the
	// services the action failed for: why, in words.
	Error string `json:"error,omitempty"`
	// Stdout and Stderr say where the service's output goes: the log
	// file's path (stdout/stderr = "file"; rotated files are PATH.1, PATH.2,
	// …), "inherit" (hbd's own stdout or stderr) or "null".
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// Wanted states (ServiceStatus.Wanted).
const (
	WantedUp   = "up"
	WantedDown = "down"
)

// Event is one line of GET /v1/events.
type Event struct {
	// Seq increases by one per event for the life of the hbd process.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Kind is one of EventSpawn, EventExit, EventState, EventAdopt, EventReload.
	Kind       string `json:"kind"`
	Name       string `json:"name,omitempty"`
	PID        int    `json:"pid,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	// Status is the exit code or 128+signal (-1 unknown); exit events only.
	Status int `json:"status"`
	// Source names the detector that saw an exit first: tracepoint, connector, pidfd, resync, reaper.
	Source string `json:"source,omitempty"`
	// State is the new state, for state events (and the state after spawn/exit when known).
	State  string `json:"state,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// ReloadResult lists what POST /v1/reload changed, each in config order.
type ReloadResult struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
	// Details holds one line per underlying problem, e.g. each configuration
	// error of a rejected reload.
	Details []string `json:"details,omitempty"`
	// Services is, for a start, stop or restart that failed for some of
	// the services, the status of every selected service afterwards (those
	// it failed for with Error set).
	Services []ServiceStatus `json:"services,omitempty"`
}

// Health is the body of GET /v1/health.
type Health struct {
	// OK is false when hbd runs but cannot serve (e.g. its plugin is gone);
	// Error then says why and the status is 503.
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	PID     int    `json:"pid"`     // hbd's PID
	Version string `json:"version"` // hbd's version
	// Started is when the hbd process (this execution of it) started.
	Started time.Time `json:"started,omitzero"`
	// Plugin describes the plugin, when the backend implements PluginInfoer.
	Plugin *PluginInfo `json:"plugin,omitempty"`
	// Fatal names the services hbd has given up on (state fatal); health is
	// not ok while there is one.
	Fatal []string `json:"fatal,omitempty"`
	// Attaching: hbd is attaching to its plugin and reading the table (it
	// just started, or its plugin was replaced). Health is not ok, and the
	// services' states are what hbd started with, until it is done: a
	// client waiting for hbd asks again.
	Attaching bool `json:"attaching,omitempty"`
}

// ErrAttaching is what a PluginInfoer answers while hbd attaches to its
// plugin (Health.Attaching).
var ErrAttaching = errors.New("hbd is attaching to its plugin and reading the table; the services' states are not known yet: ask again")

// PluginInfo describes the running hb plugin (GET /v1/health).
type PluginInfo struct {
	PID        int    `json:"pid"`
	Shm        string `json:"shm"`        // shm table name (/dev/shm/<shm>)
	Slots      int    `json:"slots"`      // table capacity
	Tracepoint bool   `json:"tracepoint"` // the exit tracepoint (eBPF) detector runs
	// DetectorPriority is the SCHED_FIFO priority of the tracepoint's
	// reader; 0: an ordinary thread.
	DetectorPriority int    `json:"detector_priority"`
	Connector        bool   `json:"connector"`                 // the proc connector is the fast exit detector
	Pidfd            bool   `json:"pidfd"`                     // the pidfd safety net is active
	Adopted          int    `json:"adopted"`                   // clients adopted when the plugin started
	LastSeq          uint64 `json:"last_seq"`                  // sequence number of the plugin's last event
	Version          string `json:"version,omitempty"`         // the plugin's build version
	FeatureVersion   int    `json:"feature_version,omitempty"` // what the plugin honours
	// ShmRepairs are the plugin's repairs of the table (a file truncated
	// under it, its name removed), newest last, at most 8.
	ShmRepairs []string `json:"shm_repairs,omitempty"`
	// ShmProblem is what the plugin cannot repair in the table; health is
	// not ok while it is set.
	ShmProblem string `json:"shm_problem,omitempty"`
	// Cgroups says how services are contained: "cgroup DIR" (a cgroup per
	// service under DIR) or "process-group: REASON" (no cgroups, and why).
	Cgroups string `json:"cgroups,omitempty"`
	// ConnectorNote says why the proc connector cannot work where hbd
	// runs (a container's PID or user namespace); absent otherwise.
	ConnectorNote string `json:"connector_note,omitempty"`
	// KillTracepoint: a SIGKILL clears the slot when the kernel delivers
	// it, before the killed process runs its exit. KillNote says why not
	// where the exit tracepoint runs without it; absent otherwise.
	KillTracepoint bool   `json:"kill_tracepoint"`
	KillNote       string `json:"kill_note,omitempty"`
}

// Sentinel errors. The backend wraps them (fmt.Errorf("%w: ...")) and the
// server maps them to HTTP statuses; the client's *APIError matches them with
// errors.Is, so callers on both sides test with errors.Is only.
var (
	// ErrNotFound: no such service (404).
	ErrNotFound = errors.New("not found")
	// ErrBadRequest: the request cannot be carried out as asked (400).
	ErrBadRequest = errors.New("bad request")
	// ErrConflict: the service's state forbids it now, e.g. signal a stopped service (409).
	ErrConflict = errors.New("not possible now")
	// ErrInvalidConfig: a reload was rejected because the configuration is invalid (422).
	// Wrap the configuration error with InvalidConfig to get one Details line per problem.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrUnreachable: the client could not talk to hbd at all (socket missing,
	// refused, permission denied, connection lost).
	ErrUnreachable = errors.New("cannot reach hbd")
	// ErrSocketInUse: Listen found another server answering on the socket path.
	ErrSocketInUse = errors.New("socket in use")
)

// Errorf returns an error whose text is the formatted message alone (no
// sentinel's words: hbctl shows it to a person) and that matches kind, one
// of the sentinels, with errors.Is. Wrapped errors (%w) match too.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

type kindError struct {
	kind, err error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// ServiceError is the failure of an action (start, stop, restart) on one
// service. The server answers it with the service's status, Error set.
type ServiceError struct {
	Name string
	Err  error
}

func (e *ServiceError) Error() string { return e.Err.Error() }
func (e *ServiceError) Unwrap() error { return e.Err }

// Detailer is implemented by errors that carry one line per underlying
// problem; the server sends them as Error.Details.
type Detailer interface {
	Details() []string
}

// InvalidConfig wraps a configuration error so that the server answers 422
// with one Details line per problem: each error of an errors.Join (any error
// with Unwrap() []error), otherwise each line of err.Error(). The result
// matches ErrInvalidConfig and err with errors.Is. nil stays nil.
func InvalidConfig(err error) error {
	if err == nil {
		return nil
	}
	return &invalidConfigError{err: err}
}

type invalidConfigError struct{ err error }

func (e *invalidConfigError) Error() string {
	d := e.Details()
	switch len(d) {
	case 0:
		return ErrInvalidConfig.Error()
	case 1:
		return ErrInvalidConfig.Error() + ": " + d[0]
	}
	return fmt.Sprintf("%s: %s (and %d more)", ErrInvalidConfig, d[0], len(d)-1)
}

func (e *invalidConfigError) Unwrap() []error { return []error{ErrInvalidConfig, e.err} }

func (e *invalidConfigError) Details() []string { return errorLines(e.err) }

// errorLines flattens err into lines: the members of a joined error, each
// split on newlines, empty lines dropped.
func errorLines(err error) []string {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var lines []string
	for _, e := range errs {
		if e == nil {
			continue
		}
		for l := range strings.SplitSeq(e.Error(), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// APIError is an error answer from hbd, as the Client returns it. It matches
// the sentinel of its status with errors.Is (404 ErrNotFound, 400
// ErrBadRequest, 409 ErrConflict, 422 ErrInvalidConfig).
type APIError struct {
	Status  int      // HTTP status
	Message string   // Error.Error
	Details []string // Error.Details
	// Services is Error.Services: the status of every service a partly
	// failed start, stop or restart selected.
	Services []ServiceStatus
}

func (e *APIError) Error() string { return e.Message }

// Is reports whether target is the sentinel for e's status.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == 404
	case ErrBadRequest:
		return e.Status == 400
	case ErrConflict:
		return e.Status == 409
	case ErrInvalidConfig:
		return e.Status == 422
	}
	return false
}

// Version is the version hbd and hbctl report. make sets it at link time
// from git describe (-ldflags "-X github.com/hbshim/hb/host/api.Version=v1.2.3");
// a plain go build leaves it empty, and BuildVersion falls back on the build
// information.
var Version = ""

// Revision is the VCS revision of the build, set by make at link time like
// Version; empty, BuildVersion reads vcs.revision from the build information
// (go build -buildvcs).
var Revision = ""

// BuildVersion returns the version: Version, or else the main module's
// version from the build information (a tagged or pseudo-version for go
// install, "(devel)" for a plain go build), followed by the VCS revision
// when it is known and not already part of it: "v1.2.0 (rev 0123abcd4567)",
// "(devel) (rev 0123abcd4567, modified)".
func BuildVersion() string {
	return buildVersion(Version, Revision, readBuildInfo)
}

var readBuildInfo = debug.ReadBuildInfo

func buildVersion(version, revision string, read func() (*debug.BuildInfo, bool)) string {
	modified := false
	bi, ok := read()
	if ok {
		if version == "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if revision == "" {
					revision = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	if len(revision) > 12 {
		revision = revision[:12]
	}
	if revision == "" || strings.Contains(version, revision) || (len(revision) >= 7 && strings.Contains(version, revision[:7])) {
		return version
	}
	if modified {
		return version + " (rev " + revision + ", modified)"
	}
	return version + " (rev " + revision + ")"
}
