// Package policy holds hb's restart policy and the per-service state machine.
//
// Everything here is pure: no goroutines, no timers, no sleeps, no clock
// reads. The host feeds in what happened (an exit, the time the incarnation
// started, how many starts in a row failed) and gets back what to do
// ([Decide]) and which state to enter; it then moves the service's [Machine]
// and arms its own timers.
//
// # Restart rules
//
// A run shorter than the policy's StartWindow is a failed start. Consecutive
// failed starts back off exponentially ([Backoff]) from
// max(RestartDelay, [MinBackoff]), doubling, capped at BackoffMax; after
// StartRetries of them in a row the service goes fatal (0 = never give up).
// A run of at least StartWindow resets the count, so a service that was stable
// for a while and then crashes is respawned after RestartDelay only (0 = at
// once), never after a stale, grown backoff. Whether an exit is followed by a
// restart at all is the Restart mode: always, on-failure (status not in
// ExitCodes) or never. A stop the host asked for never respawns.
//
// # States
//
// [State] numbers are the shared-memory ABI's slot states (0 free … 7
// stopping), so a State converts to and from the shm package's state with a
// plain conversion. The allowed moves are listed in [CanTransition]'s table;
// anything else is refused with a [*TransitionError] that names it.
//
// # Concurrency
//
// Functions are safe for concurrent use. A [Machine] is not: the host
// guards each service's Machine with that service's lock.
package policy
