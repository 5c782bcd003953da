// Package host is hbd, the process manager side of hb: it loads the
// configuration (host/config), keeps one state machine per service and
// applies the restart policy (host/policy), serves the control socket
// (host/api), and drives the plugin (package plugin) that spawns and
// watches the services.
//
// Lifecycle. Run vets state_dir (hbd's own, see plugin.PrepareStateDir),
// listens on the control socket (a second hbd on the same socket stops
// there), takes the state directory's lock (a second hbd on the same
// state_dir with another socket stops there, naming the first's PID), then
// reattaches to a running plugin from
// state_dir/plugin.json or launches a new one (`hbd plugin`, the same
// binary in its own session), and reconciles every service with the
// shared-memory table: a live slot is taken as is, never started twice; a
// slot that died while nobody was deciding goes through the policy; a
// service without a slot starts if autostart. A plugin that dies is
// replaced at once and the new one adopts the live services. SIGHUP
// reloads, SIGTERM/SIGINT stop everything (a second one forces), SIGQUIT
// detaches and leaves plugin and services running.
//
// Exits. The plugin reports each exit after the slot already reads 0.
// When the policy's answer is "respawn at once" the plugin has already
// respawned the service (plugin.Spec.Respawn) and hbd only records it;
// otherwise hbd decides (policy.Decide): back off, stay down, or give up.
// Events are acted on in the plugin's order; a subscription the plugin
// dropped for lagging is resumed from the last event handled.
//
// Concurrency. Daemon's state is guarded by one lock in two parts
// (stateLock). Changes (a plugin event, a control request, a timer, a
// plugin replacement) are serialised and each holds the lock from start to
// end, including the plugin calls on its way: the plugin launch or
// reattach, Info, Events, List, Spawn (spawnMany's parallel ones too) and
// SetState. A Stop is never made under it: stopOne waits for the exit with
// the lock released. During those calls the change writes nothing and lets
// readers in: List, Get, Names, Signal and PluginInfo answer while a Spawn
// or a plugin launch is under way, and show the state as it was before that
// call. Free (Reload, shutdown) and shutdown's SetState are still made with
// readers held out. hbd never polls: timers exist only for a pending
// backoff, a start_secs promotion, and saving the event position.
package host
