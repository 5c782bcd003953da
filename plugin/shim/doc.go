// Package shim is the implementation behind hb's plugin boundary: it spawns
// services, records each incarnation in the shared-memory table, learns of
// every exit from the connector package's Watcher, sets the slot's PID to 0
// first, then reaps, records and reports. *Shim implements plugin.Shim; the
// plugin package serves it over gRPC. It is Linux-only.
//
// # Spawning
//
// Spawn never uses os/exec. In cgo builds on linux/amd64 it uses hb's own
// spawner (spawn_clone3_linux_amd64.c): clone3 with CLONE_VM|CLONE_VFORK,
// CLONE_PIDFD and CLONE_CLEAR_SIGHAND, the child on a small stack of its own
// making raw system calls only, the parent resuming once the child has
// exec'd; a failed step in the child reports its errno through shared
// memory. Elsewhere, or where clone3 is refused (kernels before 5.5,
// seccomp), syscall.ForkExec with CLONE_PIDFD, with the same behaviour. Both
// restore the RLIMIT_NOFILE the plugin was started with. The child gets its
// own process group (its PID), stdin /dev/null, the Spec's credentials,
// directory and environment plus HB_SERVICE, HB_SLOT, HB_SHM (the table's
// path, e.g. /dev/shm/hb) and HB_GENERATION. Command[0] without a slash is
// looked up in the Spec's PATH (else the plugin's). Errors the host should
// show the user (missing or non-executable program, bad directory, bad
// stdout mode) wrap plugin.ErrBadSpec and read like
//
//	spawn "rx": exec "/nope": no such file or directory
//
// and leave the slot with PID 0.
//
// With cgroups (Options.Cgroups, root, a cgroup v2 hierarchy) each child
// starts in its service's cgroup (CLONE_INTO_CGROUP in both spawners), a
// spawn first kills what an earlier incarnation left there and waits for
// the cgroup to empty, and Stop and the exit path act per Spec.KillMode;
// Spec.Type "forking" takes the main process from a PID file; the Spec's
// placement and limits are set in the child before exec. See
// docs/cgroups.md.
//
// The order is: fork+exec → shm Writer.Spawned (generation+1, start time,
// state starting; the PID is stored last; the start time is the boot-clock
// tick read around the clone when it did not change, else read from
// /proc/PID/stat) → Watcher.WatchChild(key, pid, pidfd). A child that dies before the watch has a readable pidfd, which the
// Watcher reports at once, so the exit is in effect subscribed to before the
// child starts (docs/design.md#invariant-2). The host moves the state to
// running with SetState, unless Spec.RunningAtSpawn had the spawn write it.
//
// # The exit path
//
// Watcher.OnExit → onExit, on the detecting goroutine: Writer.ClearPID
// (compare-and-swap PID → 0), nothing else. The watch key carries the slot
// index (index<<32 | low 32 bits of the generation), so there is no lookup,
// lock, allocation or log line before the store. The process is not reaped
// at that moment — it is still exiting (the exit tracepoint reports it as
// its last thread enters the kernel's exit path) or an unreaped zombie (the
// connector and the pidfds) — and its PID cannot be reused before it is
// reaped, so a non-zero slot never names a recycled process
// (docs/design.md#invariant-1).
//
// Then, on the exit goroutine reading Watcher.Exits (finish): if Stop is under
// way, SIGKILL the rest of the process group while the zombie still pins the
// group ID; reap exactly once with waitid(P_PIDFD, WEXITED|WNOHANG) (polling
// the pidfd up to 1 s if the zombie is not waitable yet); Writer.RecordExit
// (last_status, last_pid, exits+1, state exited or stopped); Unwatch; close
// the pidfd; wake Stop; emit EventExit; hand the PID back to the stray
// reaper.
//
// # One reaper
//
// Wait status is per process, so ownership of waiting is too. The exit path
// reaps the children it spawned, by pidfd; nothing in the plugin process may
// call exec.Cmd.Wait, os.Process.Wait or start children with os/exec or
// os.StartProcess (docs/design.md#invariant-2). The plugin is a child subreaper
// (PR_SET_CHILD_SUBREAPER), so descendants that double-fork come back to it;
// one stray-reaper goroutine per process, kicked by the exit path after
// every exit and by the shim's beat, peeks with waitid(P_ALL, WNOWAIT) and
// reaps with wait4 every exited child that no exit path is waiting for,
// stopping at the first tracked one (the exit path reaps it, then kicks the stray reaper
// again). A child is tracked from fork until its exit is recorded, and the
// stray reaper reaps nothing while a spawn is under way (it is kicked again
// when the last one ends), so a child that dies at once is never taken for a
// stray; it never makes a spawn wait. SIGCHLD is not caught (see reapLoop):
// a stray's zombie waits for the next beat at most.
//
// # Respawn by the plugin
//
// When the service's policy lets the plugin respawn it (plugin.Respawn), the
// exit path sets the next incarnation up (locks, attributes, environment)
// as soon as the exit is detected — the exit tracepoint reports it while the
// process is still being torn down — and then makes one call into C that
// waits for the zombie, reaps it and spawns the replacement on the same
// thread, as a bare supervisor's waitpid-then-vfork loop does. The new PID
// goes into the slot before anything else (the old exit's record, events,
// watch).
//
// The exit path holds the service (as Spawn, Stop and Free do) from the
// respawn's set-up until the replacement is its current incarnation, and
// lets go before the replacement's watch is armed. A replacement that
// exits at once (a crash loop) is taken by the other exit worker while the
// first is still finishing, and is respawned in turn: an exit is left to
// the host only when a host call holds the service or the policy says so,
// so a crash loop goes on while hbd is away.
//
// # Adoption
//
// A plugin that dies leaves its clients running (they are re-parented) and
// their PIDs in the table (docs/design.md#invariant-7). New adopts every
// used slot with a PID: if /proc/PID/stat's start time equals the slot's, it opens a
// pidfd (and checks the start time again, so the pidfd cannot name a process
// that took the PID over), watches it, sets the slot's adopted flag and emits
// EventAdopt; Info.Adopted counts them. Otherwise the slot is cleared and an
// EventExit with Source "adopt" and status -1 is emitted. An adopted process
// is normally not our child: it is never reaped here (waitid would fail), and
// its status is the proc connector's when that saw the exit first, else -1.
// The generation continues from the slot's.
//
// The table is the first source of adoption; Options.StateDir/RecordFile
// (incarnations.json: name, slot, PID, generation and start time of every
// running incarnation, rewritten with O_EXCL|O_NOFOLLOW and renamed into
// place after each spawn and exit and on the beat) is the second. A plugin
// that finds the table without a running incarnation the record names (the
// table's name was removed while no plugin ran, and New made an empty one)
// puts it back into the table if /proc/PID/stat still shows the recorded
// start time, and adopts it like the others: a service whose previous
// incarnation still runs is never started a second time. A record in a state
// directory not owned by the plugin's user, or writable by group or others,
// is not used.
//
// # The table under attack
//
// The table is a file anyone with the owner's rights can truncate or remove.
// The Writer keeps a private copy of it (shm.Writer) and the beat calls
// shm.Writer.Check: a table truncated under the plugin (a store into it
// would raise SIGBUS; the Writer turns that fault into a skipped store) gets
// its size, pages and contents back; a table whose name was removed is
// published again under its name, and readers still mapping the removed file
// keep receiving every update. Each repair is logged and reported in
// Info.ShmRepairs; what cannot be repaired (another file under the table's
// name, a full file system) in Info.ShmProblem, which makes hbd's health not
// ok.
//
// # Log files
//
// With Stdout/Stderr "file", a service's processes write into a pipe of the
// service's, and the plugin writes whole lines into LogDir/NAME.out.log
// (NAME.err.log), stamped with the time with Spec.LogTimestamps, and rotates
// the file by rename at a line's end (logpipe_linux.go). A pipe alone would
// lose its reader with the plugin (SIGPIPE for every service at its next
// write): hbd holds both ends of every log pipe and hands them to the next
// plugin, so only the loss of both hbd and the plugin takes the reader away.
// While no plugin reads, a service that fills the pipe waits; Spec.LogDirect
// is the other way for a process that must never wait on a write: the child
// writes straight into the file through an O_APPEND descriptor, no pipe, no
// copying.
//
// The plugin writes there as its own user (root), so LogDir must be a
// directory nobody else can change (see package logdir; logdir.Prepare is
// the check hbd runs at start, and every spawn runs it again): reached from
// / without a symlink, owned by the plugin's euid and not writable by group
// or others, every directory above it root's or the plugin's and not
// writable by others unless sticky; missing ones are created 0755. Every log
// name is opened relative to LogDir's descriptor with O_NOFOLLOW|O_NONBLOCK
// (a planted symlink is refused, a FIFO fails at once instead of waiting for
// a reader), and only a regular file with one link, owned by the plugin's
// euid, is written; renames and removals are renameat/unlinkat on the same
// descriptor. A refused file fails the spawn with an logdir.ErrUnsafe error
// (a plugin.ErrBadSpec) that names it and the fix.
//
// Rotation with LogDirect (through a pipe, the writer rotates by rename as
// above):
//   - at each spawn, a file larger than LogMaxBytes is renamed to NAME….log.1
//     (older backups shift, LogBackups are kept) and a new one is opened;
//   - on the 1 s beat (in a goroutine of its own: a slow log_dir never delays
//     writer_beat_ns), the file of a running incarnation that has grown past
//     LogMaxBytes is trimmed in place and keeps its name (tail -F keeps
//     working): its head is copied to .1 (through NAME….log.rotating, made
//     anew with O_EXCL), then cut out with
//     fallocate(FALLOC_FL_COLLAPSE_RANGE). O_APPEND writes land after the
//     cut, so nothing is lost or duplicated. The cut is block-aligned, so a
//     line may straddle .1 and the live file. Filesystems without range
//     collapse (tmpfs, where log_dir is by default, btrfs, …) are trimmed by
//     copying the whole file to .1 and truncating it: the copy catches up
//     with the writer first, and what it writes between the copy's last read
//     and the truncation (microseconds) is lost.
//
// A log_dir with no room left (its filesystem has no block available, or a
// trim failed with ENOSPC) is said once in the plugin's log per directory,
// and each service writing there gets a plugin.EventLog naming the problem
// (and another, with an empty Message, once there is room again); hbd shows
// it in the service's status.
//
// An adopted incarnation's log is not trimmed (the new plugin learns the log
// settings only with the next Spawn).
//
// # Timers
//
// The only timer is the 1 s beat: it stores writer_beat_ns in the table
// (readers use it to see that the watcher is alive), checks and repairs the
// table files, trims log files of running services, kicks the adoption
// record's writer and the stray reaper. Nothing on the exit path
// waits for it; everything else is driven by the kernel (exit tracepoint,
// pidfd epoll, proc connector) or by calls.
//
// # Watchdog and readiness
//
// With Spec.Watchdog the child gets a beat area (a sealed memfd, HB_BEAT_FD)
// and the watchdog (watchdog_linux.go) samples its counter every twentieth
// of the period from one timerfd for all services; a whole period without
// a change sets the PID word to 0 and the state hung, emits EventHung, and
// signals (Spec.WatchdogSignal, then SIGKILL after Spec.WatchdogGrace); the
// exit's Reason is "watchdog" (docs/design.md#invariant-14). With Spec.Ready
// "notify" or "fd:N" (ready_linux.go) the spawn records the slot with PID
// word 0 and the PID is published when the service declares itself ready
// (docs/design.md#invariant-15); not ready within Spec.ReadyTimeout, it is
// killed (Reason "ready_timeout") and never respawned by the plugin. A
// "notify" service may name another of its live processes its main process
// with MAINPID= (mainpid_linux.go, docs/design.md#invariant-19): the slot
// moves to it in one compare-and-swap, and the old one's exit is no death.
//
// # Concurrency
//
// A Shim is safe for concurrent use. Spawn, Stop and Free of one service are
// serialised (a Stop holds off a Spawn of the same service until the exit is
// recorded); different services proceed in parallel. Spawn of a running
// service fails with plugin.ErrRunning; if its exit was already detected
// (PID 0) but not yet recorded, Spawn waits for the record. Events has any
// number of subscribers, each with a buffered channel: one that falls behind
// by more than its buffer is dropped (its channel closed) rather than slowing
// the exit path; it resubscribes with the last Seq it saw. The last 4096
// events are kept for replay; a Seq gap tells a subscriber it missed older
// ones. Shutdown and Close wait for calls in flight, stop the beat and the
// Watcher, record exits already detected, and close the table; they never
// signal services.
//
// # Debugging
//
// Options.Logger receives spawn/exit lines at debug level, adoption and
// rotation at info/warn; nothing is logged on the fast path.
package shim
