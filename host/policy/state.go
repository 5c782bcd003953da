package policy

import (
	"errors"
	"fmt"

	"github.com/hbshim/hb/shm"
)

// State is a service's state: the shared-memory ABI's slot state
// (docs/abi.md, slot offset 4), so what hbd decides is what peers read.
type State = shm.State

// The states, as in the shm ABI v1.
const (
	StateFree     = shm.StateFree     // no service: the slot is unused
	StateStopped  = shm.StateStopped  // not running and not meant to run until started
	StateStarting = shm.StateStarting // spawned; not yet up for StartWindow
	StateRunning  = shm.StateRunning  // up for at least StartWindow
	StateBackoff  = shm.StateBackoff  // exited; waiting for a delay before the next start
	StateExited   = shm.StateExited   // exited and the restart policy keeps it down
	StateFatal    = shm.StateFatal    // gave up: too many failed starts, or it cannot be spawned
	StateStopping = shm.StateStopping // a stop was requested; waiting for the exit
)

// ParseState is the inverse of State.String.
func ParseState(name string) (State, error) { return shm.ParseState(name) }

// ErrInvalidTransition is matched (errors.Is) by every [*TransitionError].
var ErrInvalidTransition = errors.New("invalid state transition")

// TransitionError is a move the state machine refuses.
type TransitionError struct {
	From, To State
}

// Error names the move: `invalid state transition "running" to "stopped"`.
func (e *TransitionError) Error() string {
	return fmt.Sprintf("invalid state transition %q to %q", e.From.String(), e.To.String())
}

// Is makes errors.Is(err, ErrInvalidTransition) true.
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// transitions[from] is the set of states reachable from `from`, as a bit mask
// indexed by the target state. Each entry says what causes the move. A start
// whose spawn fails moves straight from the state the start was tried in to
// backoff (retry later) or fatal (retrying cannot help, or retries are
// exhausted), since there never was a process in starting.
var transitions = [...]uint16{
	StateFree: bits(
		StateStopped, // service defined (slot allocated)
	),
	StateStopped: bits(
		StateStarting, // start
		StateBackoff,  // start: spawn failed, retry later
		StateFatal,    // start: spawn failed for good (e.g. no such program)
		StateFree,     // service removed
	),
	StateStarting: bits(
		StateRunning,  // up for start_secs
		StateBackoff,  // failed start (or a respawn delay)
		StateStarting, // respawn at once: it exited after start_secs but before the host promoted it
		StateExited,   // exited; the restart policy keeps it down
		StateFatal,    // retries exhausted, or the spawn itself failed
		StateStopping, // stop
	),
	StateRunning: bits(
		StateStarting, // respawn at once
		StateBackoff,  // respawn after restart_delay, or the respawn's spawn failed
		StateExited,   // exited; the restart policy keeps it down
		StateFatal,    // the respawn's spawn failed for good
		StateStopping, // stop
	),
	StateBackoff: bits(
		StateStarting, // delay elapsed
		StateFatal,    // retries exhausted, or the spawn failed for good
		StateStopped,  // stop while waiting: there is no process to signal
	),
	StateExited: bits(
		StateStarting, // start
		StateBackoff,  // start: spawn failed, retry later
		StateFatal,    // start: spawn failed for good
		StateStopped,  // stop (marks it down on purpose)
	),
	StateFatal: bits(
		StateStarting, // manual start clears the failure
		StateBackoff,  // manual start: spawn failed, retry later
		StateStopped,  // stop
	),
	StateStopping: bits(
		StateStopped, // the process exited
	),
}

func bits(states ...State) uint16 {
	var m uint16
	for _, s := range states {
		m |= 1 << s
	}
	return m
}

// CanTransition reports whether the machine allows the move from -> to:
//
//	free     -> stopped
//	stopped  -> starting, backoff*, fatal*, free
//	starting -> running, backoff, starting, exited, fatal, stopping
//	running  -> starting, backoff, exited, fatal*, stopping
//	backoff  -> starting, fatal, stopped
//	exited   -> starting, backoff*, fatal*, stopped
//	fatal    -> starting, backoff*, stopped
//	stopping -> stopped
//
// (* a start whose spawn failed.) Moves to the same state are refused,
// except starting -> starting.
func CanTransition(from, to State) bool {
	// States past the table (hung) are the plugin's, never the machine's.
	if !from.Valid() || !to.Valid() || int(from) >= len(transitions) || int(to) >= len(transitions) {
		return false
	}
	return transitions[from]&(1<<to) != 0
}

// Machine is one service's state with guarded transitions. The zero value is
// in [StateFree]. A Machine is not safe for concurrent use.
type Machine struct {
	state State
}

// NewMachine returns a Machine in state s, taken as is (no transition is
// checked). The host starts a newly defined service in [StateStopped], and a
// reattached one in the state the shared-memory table recorded.
func NewMachine(s State) *Machine { return &Machine{state: s} }

// State returns the current state.
func (m *Machine) State() State { return m.state }

// To moves the machine to next, or returns a [*TransitionError] and leaves the
// state unchanged when [CanTransition] refuses the move.
func (m *Machine) To(next State) error {
	if !CanTransition(m.state, next) {
		return &TransitionError{From: m.state, To: next}
	}
	m.state = next
	return nil
}
