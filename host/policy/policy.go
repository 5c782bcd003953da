package policy

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Restart says which exits are followed by a new start.
type Restart uint8

// The restart modes. The zero value is RestartAlways.
const (
	RestartAlways    Restart = iota // every exit
	RestartOnFailure                // exits whose status is not in ExitCodes
	RestartNever                    // none: the service stays exited
)

// String returns the configuration spelling: "always", "on-failure", "never".
func (r Restart) String() string {
	switch r {
	case RestartAlways:
		return "always"
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "never"
	}
	return fmt.Sprintf("restart(%d)", uint8(r))
}

// Valid reports whether r is one of the three modes.
func (r Restart) Valid() bool { return r <= RestartNever }

// ParseRestart is the inverse of [Restart.String].
func ParseRestart(s string) (Restart, error) {
	switch s {
	case "always":
		return RestartAlways, nil
	case "on-failure":
		return RestartOnFailure, nil
	case "never":
		return RestartNever, nil
	}
	return 0, fmt.Errorf("policy: unknown restart mode %q (want \"always\", \"on-failure\" or \"never\")", s)
}

// MinBackoff is the first delay after a failed start when RestartDelay is
// shorter: a service that dies at once is not respawned in a tight loop.
const MinBackoff = 100 * time.Millisecond

// Policy is one service's restart configuration. Negative durations and
// counts are taken as 0.
type Policy struct {
	Restart Restart
	// RestartDelay is the wait before respawning after a run of at least
	// StartWindow (0 = at once), and the floor of the failed-start backoff.
	RestartDelay time.Duration
	// StartWindow is how long an incarnation must stay up to count as started;
	// a shorter run is a failed start. 0 = every run counts as started.
	StartWindow time.Duration
	// StartRetries is how many failed starts in a row make the service
	// fatal. 0 = never give up.
	StartRetries int
	// BackoffMax caps the failed-start backoff.
	BackoffMax time.Duration
	// ExitCodes are the statuses RestartOnFailure treats as success.
	ExitCodes []int
}

// DefaultPolicy returns the configuration defaults: restart always, no
// restart delay, start_secs 1s, start_retries 0 (never give up),
// backoff_max 30s, exit codes [0]. With them a failed start waits 100ms,
// 200ms, 400ms, … doubling up to 30s, and retries for ever: a service whose
// dependency takes a while comes up by itself (one that needs 10s is
// started at about 12.7s, the 8th attempt), and a crash loop settles at one
// spawn every 30s. fatal comes only from an explicit start_retries (or a
// spawn that cannot work: no such program, bad user).
func DefaultPolicy() Policy {
	return Policy{
		Restart:      RestartAlways,
		StartWindow:  time.Second,
		StartRetries: 0,
		BackoffMax:   30 * time.Second,
		ExitCodes:    []int{0},
	}
}

// WantsRestart reports whether the Restart mode asks for a new start after an
// exit with this status (exit code, 128+signal, or -1 when unknown; an
// unknown status is a failure).
func (p Policy) WantsRestart(status int) bool {
	switch p.Restart {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return Restarts(true, p.ExitCodes, status)
	}
	return false
}

// Restarts is hb's one rule for the statuses a restart mode restarts: every
// status, or with onFailure one that is unknown (-1) or not in exitCodes.
// The plugin applies it through plugin.Respawn.WantsStatus, and the C
// spawner's copy is tested against that.
func Restarts(onFailure bool, exitCodes []int, status int) bool {
	return !onFailure || status < 0 || !slices.Contains(exitCodes, status)
}

// History is what the host remembers of the incarnation that just exited.
type History struct {
	// StartedAt is when the incarnation was spawned. Use the same clock as
	// Decide's now; a monotonic reading (time.Now) is best.
	StartedAt time.Time
	// FailedStarts is how many failed starts in a row came before this
	// incarnation (Decision.FailedStarts of the previous exit).
	FailedStarts int
}

// ExitInfo is one exit.
type ExitInfo struct {
	// Status is the exit code, 128+signal for a signal death, or -1 if unknown.
	Status int
	// Expected is true when the host asked for the stop.
	Expected bool
}

// Action is what to do after an exit.
type Action uint8

// The actions. The zero value is not an action.
const (
	ActionRespawn Action = iota + 1 // start again after Decision.Delay
	ActionStay                      // stay down in StateExited
	ActionFatal                     // give up: StateFatal until started by hand
	ActionStopped                   // the stop the host asked for is complete
)

// String returns "respawn", "stay", "fatal" or "stopped".
func (a Action) String() string {
	switch a {
	case ActionRespawn:
		return "respawn"
	case ActionStay:
		return "stay"
	case ActionFatal:
		return "fatal"
	case ActionStopped:
		return "stopped"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Decision is Decide's answer.
type Decision struct {
	Action Action
	// Delay is the wait before the next start (ActionRespawn only).
	Delay time.Duration
	// NextState is the state to enter now: StateStarting for a respawn at
	// once, StateBackoff for a respawn after a delay, StateExited,
	// StateFatal or StateStopped.
	NextState State
	// FailedStarts is the failed-start count to keep in History for the next
	// incarnation: 0 after a run of at least StartWindow or a requested stop.
	FailedStarts int
	// Reason is one line for logs and status output.
	Reason string
}

// Backoff returns the delay before the next start after failedStarts failed
// starts in a row: max(RestartDelay, MinBackoff) doubled failedStarts-1
// times, capped at BackoffMax (the cap wins even when it is below
// MinBackoff). failedStarts < 1 returns RestartDelay, the delay after a
// stable run.
func Backoff(p Policy, failedStarts int) time.Duration {
	delay := max(p.RestartDelay, 0)
	if failedStarts < 1 {
		return delay
	}
	limit := max(p.BackoffMax, 0)
	d := max(delay, MinBackoff)
	for i := 1; i < failedStarts && d < limit; i++ {
		d *= 2 // d < limit <= MaxInt64 before doubling, so at most 2*limit: no overflow past the cap test
		if d <= 0 {
			return limit
		}
	}
	return min(d, limit)
}

// Decide says what to do after an exit, given the policy, the history of the
// incarnation that exited, and the time of the exit. It is pure.
//
//   - A requested stop (ex.Expected) is ActionStopped, never a respawn.
//   - If the Restart mode does not want a restart for ex.Status: ActionStay.
//   - A run of at least StartWindow: ActionRespawn after RestartDelay, failed
//     starts reset to 0.
//   - A shorter run is a failed start: failed starts + 1; ActionFatal once it
//     reaches StartRetries (when > 0), else ActionRespawn after
//     Backoff(p, failedStarts) in StateBackoff.
func Decide(p Policy, h History, ex ExitInfo, now time.Time) Decision {
	status := statusText(ex.Status)
	if ex.Expected {
		return Decision{
			Action:    ActionStopped,
			NextState: StateStopped,
			Reason:    "stopped on request; exit status " + status,
		}
	}
	ran := now.Sub(h.StartedAt)
	ranText := round(ran).String()
	if h.StartedAt.IsZero() {
		// The start was not seen (an exit found after a restart of hbd):
		// counted as a long run.
		ran, ranText = max(p.StartWindow, 0), "an unknown time"
	}
	failed := ran < p.StartWindow
	failures := 0
	if failed {
		failures = max(h.FailedStarts, 0) + 1
	}

	if !p.WantsRestart(ex.Status) {
		reason := fmt.Sprintf("exited with status %s; restart is %q", status, p.Restart.String())
		if p.Restart == RestartOnFailure {
			reason = fmt.Sprintf("exited with status %s, an expected exit code; restart is %q", status, p.Restart.String())
		}
		return Decision{Action: ActionStay, NextState: StateExited, FailedStarts: failures, Reason: reason}
	}

	if !failed {
		d := Decision{Action: ActionRespawn, Delay: max(p.RestartDelay, 0), NextState: StateStarting}
		if d.Delay > 0 {
			d.NextState = StateBackoff
			d.Reason = fmt.Sprintf("exited with status %s after %s; restarting in %s", status, ranText, d.Delay)
		} else {
			d.Reason = fmt.Sprintf("exited with status %s after %s; restarting", status, ranText)
		}
		return d
	}

	if p.StartRetries > 0 && failures >= p.StartRetries {
		return Decision{
			Action:       ActionFatal,
			NextState:    StateFatal,
			FailedStarts: failures,
			Reason:       fmt.Sprintf("exited too quickly %d times; last status %s", failures, status),
		}
	}
	delay := Backoff(p, failures)
	of := ""
	if p.StartRetries > 0 {
		of = " of " + strconv.Itoa(p.StartRetries)
	}
	return Decision{
		Action:       ActionRespawn,
		Delay:        delay,
		NextState:    StateBackoff,
		FailedStarts: failures,
		Reason: fmt.Sprintf("exited with status %s after %s (start_secs %s): failed start %d%s; retrying in %s",
			status, ranText, p.StartWindow, failures, of, delay),
	}
}

// FastRespawn reports whether an unrequested exit with this status after a
// run of runFor is respawned at once whatever the history: the run counts as
// started (runFor >= StartWindow), the Restart mode wants a restart, and
// RestartDelay is 0. When it is true, Decide returns ActionRespawn with no
// delay and StateStarting, so the plugin may respawn without asking the host.
// It is conservative: a failed start is never fast, because only the host
// knows how many came before.
func FastRespawn(p Policy, runFor time.Duration, status int) bool {
	return runFor >= p.StartWindow && p.RestartDelay <= 0 && p.WantsRestart(status)
}

func statusText(s int) string {
	if s < 0 {
		return "unknown"
	}
	return strconv.Itoa(s)
}

// round shortens a run time for a log line.
func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Millisecond)
	}
	if d >= time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d
}
