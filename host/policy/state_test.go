package policy

import (
	"errors"
	"testing"

	"github.com/hbshim/hb/shm"
)

func TestStateStringAndParse(t *testing.T) {
	tests := []struct {
		state State
		name  string
	}{
		{StateFree, "free"},
		{StateStopped, "stopped"},
		{StateStarting, "starting"},
		{StateRunning, "running"},
		{StateBackoff, "backoff"},
		{StateExited, "exited"},
		{StateFatal, "fatal"},
		{StateStopping, "stopping"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if uint32(tt.state) != uint32(i) {
				t.Fatalf("State %s = %d, want ABI number %d", tt.name, tt.state, i)
			}
			if got := tt.state.String(); got != tt.name {
				t.Errorf("String() = %q, want %q", got, tt.name)
			}
			got, err := ParseState(tt.name)
			if err != nil || got != tt.state {
				t.Errorf("ParseState(%q) = %v, %v; want %v, nil", tt.name, got, err, tt.state)
			}
		})
	}
	if got := State(9).String(); got != "state(9)" {
		t.Errorf("State(9).String() = %q, want %q", got, "state(9)")
	}
	if CanTransition(shm.StateHung, StateStopped) || CanTransition(StateRunning, shm.StateHung) {
		t.Error("the machine moves to or from hung, a state only the plugin sets")
	}
	if _, err := ParseState("up"); err == nil {
		t.Error(`ParseState("up") succeeded, want an error`)
	}
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name     string
		from, to State
		ok       bool
	}{
		{"define", StateFree, StateStopped, true},
		{"start", StateStopped, StateStarting, true},
		{"remove", StateStopped, StateFree, true},
		{"start whose spawn failed, retry", StateStopped, StateBackoff, true},
		{"start whose spawn failed for good", StateStopped, StateFatal, true},
		{"up for start_secs", StateStarting, StateRunning, true},
		{"failed start", StateStarting, StateBackoff, true},
		{"respawn before promotion", StateStarting, StateStarting, true},
		{"quick exit stays down", StateStarting, StateExited, true},
		{"retries exhausted on exit", StateStarting, StateFatal, true},
		{"stop while starting", StateStarting, StateStopping, true},
		{"respawn at once", StateRunning, StateStarting, true},
		{"respawn after delay", StateRunning, StateBackoff, true},
		{"exit stays down", StateRunning, StateExited, true},
		{"stop while running", StateRunning, StateStopping, true},
		{"respawn whose spawn failed for good", StateRunning, StateFatal, true},
		{"delay elapsed", StateBackoff, StateStarting, true},
		{"retries exhausted in backoff", StateBackoff, StateFatal, true},
		{"stop in backoff", StateBackoff, StateStopped, true},
		{"start exited", StateExited, StateStarting, true},
		{"stop exited", StateExited, StateStopped, true},
		{"start exited, spawn failed", StateExited, StateBackoff, true},
		{"start exited, spawn failed for good", StateExited, StateFatal, true},
		{"manual start clears fatal", StateFatal, StateStarting, true},
		{"stop fatal", StateFatal, StateStopped, true},
		{"manual start of fatal, spawn failed", StateFatal, StateBackoff, true},
		{"stop complete", StateStopping, StateStopped, true},

		{"free cannot start", StateFree, StateStarting, false},
		{"stopped cannot run", StateStopped, StateRunning, false},
		{"stopped to stopped", StateStopped, StateStopped, false},
		{"running to running", StateRunning, StateRunning, false},
		{"running cannot stay down without exiting", StateRunning, StateStopped, false},
		{"backoff to backoff", StateBackoff, StateBackoff, false},
		{"fatal to fatal", StateFatal, StateFatal, false},
		{"fatal cannot run", StateFatal, StateRunning, false},
		{"exited cannot run", StateExited, StateRunning, false},
		{"stopping cannot be fatal", StateStopping, StateFatal, false},
		{"stopping cannot exit on its own", StateStopping, StateExited, false},
		{"running cannot be freed", StateRunning, StateFree, false},
		{"backoff cannot run", StateBackoff, StateRunning, false},
		{"stopping cannot respawn", StateStopping, StateStarting, false},
		{"stopping cannot back off", StateStopping, StateBackoff, false},
		{"fatal cannot be freed", StateFatal, StateFree, false},
		{"unknown from", State(9), StateStopped, false},
		{"unknown to", StateStopped, State(9), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CanTransition(tt.from, tt.to); got != tt.ok {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.ok)
			}
			m := NewMachine(tt.from)
			err := m.To(tt.to)
			if tt.ok {
				if err != nil {
					t.Fatalf("To(%s) from %s: %v", tt.to, tt.from, err)
				}
				if m.State() != tt.to {
					t.Errorf("State() = %s after To(%s), want %s", m.State(), tt.to, tt.to)
				}
				return
			}
			if err == nil {
				t.Fatalf("To(%s) from %s succeeded, want an error", tt.to, tt.from)
			}
			if !errors.Is(err, ErrInvalidTransition) {
				t.Errorf("errors.Is(%v, ErrInvalidTransition) = false", err)
			}
			var te *TransitionError
			if !errors.As(err, &te) || te.From != tt.from || te.To != tt.to {
				t.Errorf("error %#v does not name %s -> %s", err, tt.from, tt.to)
			}
			if m.State() != tt.from {
				t.Errorf("State() = %s after a refused move, want %s unchanged", m.State(), tt.from)
			}
		})
	}
}

func TestTransitionErrorMessage(t *testing.T) {
	m := NewMachine(StateStopping)
	err := m.To(StateBackoff)
	const want = `invalid state transition "stopping" to "backoff"`
	if err == nil || err.Error() != want {
		t.Fatalf("To(backoff) from stopping = %v, want %q", err, want)
	}
}

func TestMachineZeroValueIsFree(t *testing.T) {
	var m Machine
	if m.State() != StateFree {
		t.Fatalf("zero Machine is %s, want free", m.State())
	}
	for _, s := range []State{StateStopped, StateStarting, StateRunning, StateStopping, StateStopped} {
		if err := m.To(s); err != nil {
			t.Fatalf("lifecycle step to %s: %v", s, err)
		}
	}
}

// Every state but free can eventually reach stopped: a stop request never
// leaves a service stuck.
func TestEveryStateCanBeStopped(t *testing.T) {
	for s := StateStopped; int(s) < len(transitions); s++ {
		t.Run(s.String(), func(t *testing.T) {
			seen := map[State]bool{s: true}
			queue := []State{s}
			for len(queue) > 0 {
				cur := queue[0]
				queue = queue[1:]
				if cur == StateStopped {
					return
				}
				for next := StateFree; int(next) < len(transitions); next++ {
					if CanTransition(cur, next) && !seen[next] {
						seen[next] = true
						queue = append(queue, next)
					}
				}
			}
			t.Errorf("no path from %s to stopped", s)
		})
	}
}
