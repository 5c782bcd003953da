package policy

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestParseRestart(t *testing.T) {
	tests := []struct {
		in   string
		want Restart
		ok   bool
	}{
		{"always", RestartAlways, true},
		{"on-failure", RestartOnFailure, true},
		{"never", RestartNever, true},
		{"on_failure", 0, false},
		{"Always", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRestart(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("ParseRestart(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
			if tt.ok && got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		name     string
		p        Policy
		failures int
		want     time.Duration
	}{
		{"no failure: restart delay", Policy{RestartDelay: 2 * time.Second, BackoffMax: time.Minute}, 0, 2 * time.Second},
		{"no failure, no delay", Policy{BackoffMax: time.Minute}, 0, 0},
		{"first failure floors at MinBackoff", Policy{BackoffMax: 30 * time.Second}, 1, 100 * time.Millisecond},
		{"second failure doubles", Policy{BackoffMax: 30 * time.Second}, 2, 200 * time.Millisecond},
		{"fifth failure", Policy{BackoffMax: 30 * time.Second}, 5, 1600 * time.Millisecond},
		{"starts from restart delay", Policy{RestartDelay: time.Second, BackoffMax: 30 * time.Second}, 3, 4 * time.Second},
		{"capped", Policy{BackoffMax: 30 * time.Second}, 12, 30 * time.Second},
		{"capped at huge counts", Policy{BackoffMax: 30 * time.Second}, 1 << 30, 30 * time.Second},
		{"cap below floor wins", Policy{BackoffMax: 50 * time.Millisecond}, 1, 50 * time.Millisecond},
		{"zero cap: no backoff", Policy{}, 3, 0},
		{"huge cap does not overflow", Policy{BackoffMax: time.Duration(1<<63 - 1)}, 200, time.Duration(1<<63 - 1)},
		{"negative values are zero", Policy{RestartDelay: -time.Second, BackoffMax: -time.Second}, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Backoff(tt.p, tt.failures); got != tt.want {
				t.Errorf("Backoff(%+v, %d) = %v, want %v", tt.p, tt.failures, got, tt.want)
			}
		})
	}
}

func TestBackoffIsMonotonic(t *testing.T) {
	p := DefaultPolicy()
	prev := time.Duration(0)
	for n := 1; n < 100; n++ {
		d := Backoff(p, n)
		if d < prev || d > p.BackoffMax {
			t.Fatalf("Backoff(default, %d) = %v after %v; want non-decreasing and <= %v", n, d, prev, p.BackoffMax)
		}
		prev = d
	}
}

// The default curve, as documented: failed starts wait 100ms doubling up
// to 30s, for ever. A service whose dependency needs 10s is up at the 8th
// attempt (12.7s of waits), and the default never makes a service fatal.
func TestDefaultCurve(t *testing.T) {
	p := DefaultPolicy()
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond,
		12800 * time.Millisecond, 25600 * time.Millisecond, 30 * time.Second, 30 * time.Second}
	var waited time.Duration
	upAt := 0
	for i, w := range want {
		n := i + 1
		if got := Backoff(p, n); got != w {
			t.Errorf("Backoff(default, %d) = %v, want %v", n, got, w)
		}
		waited += w
		if upAt == 0 && waited >= 10*time.Second {
			upAt = n + 1
		}
		d := Decide(p, History{StartedAt: time.Unix(0, 0), FailedStarts: n - 1}, ExitInfo{Status: 1}, time.Unix(0, 0))
		if d.Action != ActionRespawn || d.Delay != w {
			t.Errorf("failed start %d with the defaults: %v after %v, want respawn after %v", n, d.Action, d.Delay, w)
		}
	}
	if upAt != 8 {
		t.Errorf("a dependency ready after 10s is first met by attempt %d, want 8", upAt)
	}
	if d := Decide(p, History{StartedAt: time.Unix(0, 0), FailedStarts: 1 << 20}, ExitInfo{Status: 1}, time.Unix(0, 0)); d.Action != ActionRespawn {
		t.Errorf("the defaults gave up after 2^20 failed starts: %v", d.Action)
	}
}

func TestDecide(t *testing.T) {
	def := DefaultPolicy()
	onFailure := DefaultPolicy()
	onFailure.Restart = RestartOnFailure
	onFailure.ExitCodes = []int{0, 2}
	never := DefaultPolicy()
	never.Restart = RestartNever
	delayed := DefaultPolicy()
	delayed.RestartDelay = 3 * time.Second
	forever := DefaultPolicy() // the default never gives up
	five := DefaultPolicy()
	five.StartRetries = 5
	instant := DefaultPolicy()
	instant.StartWindow = 0

	tests := []struct {
		name    string
		p       Policy
		h       History
		ex      ExitInfo
		ranFor  time.Duration
		want    Decision
		inWords string // must appear in Reason
	}{
		{
			name: "requested stop never respawns", p: def,
			h: History{FailedStarts: 3}, ex: ExitInfo{Status: 143, Expected: true}, ranFor: time.Hour,
			want:    Decision{Action: ActionStopped, NextState: StateStopped},
			inWords: "stopped on request; exit status 143",
		},
		{
			name: "requested stop during a failed start", p: def,
			h: History{FailedStarts: 4}, ex: ExitInfo{Status: 1, Expected: true}, ranFor: time.Millisecond,
			want:    Decision{Action: ActionStopped, NextState: StateStopped},
			inWords: "stopped on request",
		},
		{
			name: "stable run respawns at once", p: def,
			ex: ExitInfo{Status: 137}, ranFor: time.Minute,
			want:    Decision{Action: ActionRespawn, NextState: StateStarting},
			inWords: "exited with status 137 after 1m0s; restarting",
		},
		{
			name: "stable run resets failures", p: def,
			h: History{FailedStarts: 4}, ex: ExitInfo{Status: 1}, ranFor: 10 * time.Second,
			want:    Decision{Action: ActionRespawn, NextState: StateStarting},
			inWords: "restarting",
		},
		{
			name: "run of exactly start_secs is stable", p: def,
			h: History{FailedStarts: 2}, ex: ExitInfo{Status: 1}, ranFor: time.Second,
			want: Decision{Action: ActionRespawn, NextState: StateStarting},
		},
		{
			name: "stable run waits restart_delay in backoff", p: delayed,
			ex: ExitInfo{Status: 1}, ranFor: time.Minute,
			want:    Decision{Action: ActionRespawn, Delay: 3 * time.Second, NextState: StateBackoff},
			inWords: "restarting in 3s",
		},
		{
			name: "first failed start backs off 100ms", p: five,
			ex: ExitInfo{Status: 1}, ranFor: 20 * time.Millisecond,
			want:    Decision{Action: ActionRespawn, Delay: 100 * time.Millisecond, NextState: StateBackoff, FailedStarts: 1},
			inWords: "failed start 1 of 5; retrying in 100ms",
		},
		{
			name: "third failed start backs off 400ms", p: def,
			h: History{FailedStarts: 2}, ex: ExitInfo{Status: 1}, ranFor: 20 * time.Millisecond,
			want: Decision{Action: ActionRespawn, Delay: 400 * time.Millisecond, NextState: StateBackoff, FailedStarts: 3},
		},
		{
			name: "failed start backoff starts at restart_delay", p: delayed,
			h: History{FailedStarts: 1}, ex: ExitInfo{Status: 1}, ranFor: 0,
			want: Decision{Action: ActionRespawn, Delay: 6 * time.Second, NextState: StateBackoff, FailedStarts: 2},
		},
		{
			name: "fifth failed start is fatal", p: five,
			h: History{FailedStarts: 4}, ex: ExitInfo{Status: 1}, ranFor: 10 * time.Millisecond,
			want:    Decision{Action: ActionFatal, NextState: StateFatal, FailedStarts: 5},
			inWords: "exited too quickly 5 times; last status 1",
		},
		{
			name: "fatal with unknown status", p: five,
			h: History{FailedStarts: 4}, ex: ExitInfo{Status: -1}, ranFor: 10 * time.Millisecond,
			want:    Decision{Action: ActionFatal, NextState: StateFatal, FailedStarts: 5},
			inWords: "last status unknown",
		},
		{
			name: "start_retries 0 never gives up", p: forever,
			h: History{FailedStarts: 1000}, ex: ExitInfo{Status: 1}, ranFor: 0,
			want:    Decision{Action: ActionRespawn, Delay: 30 * time.Second, NextState: StateBackoff, FailedStarts: 1001},
			inWords: "failed start 1001; retrying in 30s",
		},
		{
			name: "start_secs 0: every run is stable", p: instant,
			h: History{FailedStarts: 4}, ex: ExitInfo{Status: 1}, ranFor: 0,
			want: Decision{Action: ActionRespawn, NextState: StateStarting},
		},
		{
			name: "clock before start is a failed start", p: def,
			ex: ExitInfo{Status: 1}, ranFor: -time.Second,
			want: Decision{Action: ActionRespawn, Delay: 100 * time.Millisecond, NextState: StateBackoff, FailedStarts: 1},
		},
		{
			name: "never stays down", p: never,
			ex: ExitInfo{Status: 1}, ranFor: time.Minute,
			want:    Decision{Action: ActionStay, NextState: StateExited},
			inWords: `exited with status 1; restart is "never"`,
		},
		{
			name: "never stays down after a quick exit and counts it", p: never,
			h: History{FailedStarts: 1}, ex: ExitInfo{Status: 0}, ranFor: time.Millisecond,
			want: Decision{Action: ActionStay, NextState: StateExited, FailedStarts: 2},
		},
		{
			name: "on-failure stays down on an expected code", p: onFailure,
			ex: ExitInfo{Status: 2}, ranFor: time.Minute,
			want:    Decision{Action: ActionStay, NextState: StateExited},
			inWords: `exited with status 2, an expected exit code; restart is "on-failure"`,
		},
		{
			name: "on-failure one-shot exiting 0 at once stays down", p: onFailure,
			ex: ExitInfo{Status: 0}, ranFor: time.Millisecond,
			want: Decision{Action: ActionStay, NextState: StateExited, FailedStarts: 1},
		},
		{
			name: "on-failure respawns on another code", p: onFailure,
			ex: ExitInfo{Status: 1}, ranFor: time.Minute,
			want: Decision{Action: ActionRespawn, NextState: StateStarting},
		},
		{
			name: "on-failure respawns on a signal death", p: onFailure,
			ex: ExitInfo{Status: 128 + 9}, ranFor: time.Minute,
			want: Decision{Action: ActionRespawn, NextState: StateStarting},
		},
		{
			name: "on-failure treats unknown status as failure", p: onFailure,
			ex: ExitInfo{Status: -1}, ranFor: time.Minute,
			want: Decision{Action: ActionRespawn, NextState: StateStarting},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			h.StartedAt = t0
			got := Decide(tt.p, h, tt.ex, t0.Add(tt.ranFor))
			if !strings.Contains(got.Reason, tt.inWords) {
				t.Errorf("Reason = %q, want it to contain %q", got.Reason, tt.inWords)
			}
			if got.Reason == "" {
				t.Error("Reason is empty")
			}
			got.Reason = ""
			if got != tt.want {
				t.Errorf("Decide() =\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}

// Decide's next state is always reachable from the state the service was in
// when it exited.
func TestDecideNextStateIsAllowed(t *testing.T) {
	policies := map[string]Policy{"default": DefaultPolicy(), "never": {Restart: RestartNever, StartWindow: time.Second}}
	for pname, p := range policies {
		for _, from := range []State{StateStarting, StateRunning, StateStopping} {
			for _, ran := range []time.Duration{0, 10 * time.Millisecond, time.Second, time.Hour} {
				for _, failures := range []int{0, 3, 4, 10} {
					ex := ExitInfo{Status: 1, Expected: from == StateStopping}
					if from == StateRunning && ran < p.StartWindow {
						continue // running implies it was up for start_secs
					}
					d := Decide(p, History{StartedAt: t0, FailedStarts: failures}, ex, t0.Add(ran))
					if !CanTransition(from, d.NextState) {
						t.Errorf("%s: exit in %s after %v with %d failures: Decide -> %s, which %s cannot reach",
							pname, from, ran, failures, d.NextState, from)
					}
				}
			}
		}
	}
}

func TestFastRespawn(t *testing.T) {
	def := DefaultPolicy()
	delayed := DefaultPolicy()
	delayed.RestartDelay = time.Second
	onFailure := DefaultPolicy()
	onFailure.Restart = RestartOnFailure
	never := DefaultPolicy()
	never.Restart = RestartNever
	noBackoff := DefaultPolicy()
	noBackoff.BackoffMax = 0

	tests := []struct {
		name   string
		p      Policy
		runFor time.Duration
		status int
		want   bool
	}{
		{"stable crash", def, time.Minute, 137, true},
		{"exactly start_secs", def, time.Second, 1, true},
		{"failed start needs the host", def, 999 * time.Millisecond, 1, false},
		{"failed start with no backoff still needs the host", noBackoff, 0, 1, false},
		{"restart delay", delayed, time.Minute, 1, false},
		{"on-failure, failure", onFailure, time.Minute, 1, true},
		{"on-failure, expected code", onFailure, time.Minute, 0, false},
		{"never", never, time.Minute, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FastRespawn(tt.p, tt.runFor, tt.status); got != tt.want {
				t.Fatalf("FastRespawn(%v, %d) = %v, want %v", tt.runFor, tt.status, got, tt.want)
			}
			// When it says yes, Decide agrees for any history.
			for _, failures := range []int{0, 1, 4, 100} {
				d := Decide(tt.p, History{StartedAt: t0, FailedStarts: failures}, ExitInfo{Status: tt.status}, t0.Add(tt.runFor))
				fast := d.Action == ActionRespawn && d.Delay == 0 && d.NextState == StateStarting
				if tt.want && !fast {
					t.Errorf("FastRespawn true but Decide(failures=%d) = %+v", failures, d)
				}
				if !tt.want && fast && failures == 0 && tt.runFor >= tt.p.StartWindow {
					t.Errorf("FastRespawn false for a stable run but Decide = %+v", d)
				}
			}
		})
	}
}
