package host

import (
	"path/filepath"
	"slices"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/host/policy"
)

// service is the host's view of one configured service. Every field is
// guarded by Daemon.mu.
type service struct {
	cfg *config.Service
	// logDir is [hbd] log_dir, where the plugin writes its log files.
	logDir string
	m      *policy.Machine

	slot       int
	pid        int
	generation uint64
	startedAt  time.Time // spawn time of the current incarnation (monotonic reading)
	since      time.Time // last state change (wall clock)
	exits      uint64
	lastStatus int
	lastExit   time.Time
	reason     string
	reasonAt   time.Time // when reason was recorded (wall clock)
	adopted    bool
	// logError is the plugin's last word on the service's log files
	// (plugin.EventLog): why they cannot be written, "" when they can.
	logError string
	// hung is the plugin's word (plugin.EventHung) on the current
	// incarnation: it missed its watchdog deadline and is being killed;
	// "" otherwise. Cleared by its exit.
	hung string
	// statusText is the service's last STATUS= (sd_notify); readyGen the
	// generation that declared itself ready (ready = "notify").
	statusText string
	readyGen   uint64
	// afterWait: held back at hbd's start until the services of its after
	// list run (after.go).
	afterWait bool
	// exitNote is what the plugin said about the last exit (plugin.Event's
	// Message: it left processes behind), added to the reason of the state
	// that exit led to; guarded by Daemon.mu.
	exitNote string

	failedStarts int
	nextStart    time.Time

	// wantDown is set by a requested stop: the next exit is expected and
	// is not respawned.
	wantDown bool
	// timer is the pending delayed start (backoff / restart_delay) or the
	// start_secs promotion; timerSeq invalidates a timer that fired after
	// it was superseded.
	timer    *time.Timer
	timerSeq uint64
	// down is closed when the current incarnation's exit has been
	// processed; Stop waits on it.
	down chan struct{}
}

func newService(cfg *config.Service, logDir string) *service {
	return &service{
		cfg:        cfg,
		logDir:     logDir,
		m:          policy.NewMachine(policy.StateStopped),
		slot:       -1,
		lastStatus: -1,
		since:      time.Now(),
		down:       closedChan(),
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// state is the service's current state.
func (s *service) state() policy.State { return s.m.State() }

// cancelTimer drops a pending delayed start or promotion.
func (s *service) cancelTimer() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.timerSeq++
	s.nextStart = time.Time{}
}

// status renders the service for the control API.
// output is ServiceStatus.Stdout or Stderr for a stream of mode m.
func (s *service) output(m, suffix string) string {
	if m == config.OutputFile && s.logDir != "" {
		return filepath.Join(s.logDir, s.cfg.Name+suffix)
	}
	return m
}

func (s *service) status() api.ServiceStatus {
	st := api.ServiceStatus{
		Name:         s.cfg.Name,
		State:        s.state().String(),
		PID:          s.pid,
		Slot:         s.slot,
		Generation:   s.generation,
		Exits:        s.exits,
		LastStatus:   s.lastStatus,
		LastExit:     s.lastExit,
		Since:        s.since,
		Restart:      s.cfg.Restart.String(),
		Reason:       s.reason,
		Adopted:      s.adopted,
		NextStart:    s.nextStart,
		FailedStarts: s.failedStarts,
		LogError:     s.logError,
		StatusText:   s.statusText,
		Stdout:       s.output(s.cfg.Stdout, ".out.log"),
		Stderr:       s.output(s.cfg.Stderr, ".err.log"),
	}
	st.ReasonAt = s.reasonAt
	st.InstanceOf, st.Instance = s.cfg.InstanceOf, s.cfg.Instance
	if s.pid != 0 && !s.startedAt.IsZero() {
		st.Uptime = time.Since(s.startedAt).Round(time.Second).String()
		st.StartedAt = time.Now().Add(-time.Since(s.startedAt)).Round(time.Millisecond)
	}
	st.Wanted, st.OK = s.wanted()
	if s.cfg.DeclaresReady() && s.pid != 0 && s.readyGen != s.generation {
		// The slot's PID word is 0 until the service sends READY=1.
		st.PID, st.Uptime, st.Reason = 0, "", "waiting for readiness ("+s.cfg.Ready+")"
	}
	if s.hung != "" {
		// The slot reads 0 and hung from the missed deadline to the exit.
		st.State, st.PID, st.Reason, st.Uptime = api.StateHung, 0, s.hung, ""
	}
	return st
}

// wanted says which state hbd wants s in (api.WantedUp or WantedDown) and
// whether s is in it: wanted up, it is starting or running (and not hung);
// wanted down (stopped on request, or never started), it is stopped, or
// exited with a success status. Any other state (fatal, backoff, an exit
// with a failure status, stopping) is not what is wanted.
func (s *service) wanted() (string, bool) {
	st := s.state()
	if s.wantDown || st == policy.StateStopped || st == policy.StateStopping {
		return api.WantedDown, st == policy.StateStopped || st == policy.StateExited
	}
	switch st {
	case policy.StateStarting, policy.StateRunning:
		return api.WantedUp, s.hung == ""
	case policy.StateExited:
		// The restart policy kept it down: fine after a success.
		return api.WantedUp, s.lastStatus >= 0 && slices.Contains(s.cfg.Policy().ExitCodes, s.lastStatus)
	}
	return api.WantedUp, false
}
