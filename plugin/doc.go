// Package plugin is the process boundary between hbd (the host: config,
// restart policy, control socket) and the plugin (the shim that spawns,
// reaps and records services in the shared-memory table). The two are the
// same binary: hbd re-executes itself with a plugin subcommand.
//
// # The boundary
//
// The Shim interface (types.go) is the whole contract. The plugin serves an
// implementation with Serve; the host gets a Shim from Launch or Reattach
// whose every method is a gRPC call (hb.proto, package hb.v1) carried by
// hashicorp/go-plugin over a unix socket. Errors keep their meaning across
// the boundary: an implementation wraps ErrNotFound, ErrRunning,
// ErrNotRunning, ErrFull, ErrBadSpec or ErrShutdown; the server sends a gRPC
// status code with an ErrorInfo reason; the host gets a *RemoteError whose
// message is the plugin's and for which errors.Is matches the same sentinel.
// A call that cannot reach the plugin fails with an error wrapping
// ErrUnavailable. Events is a server-streaming call: the host asks for
// everything after the last sequence number it has seen, so a host that
// reconnects loses nothing still buffered by the plugin.
//
// Only gRPC is offered (go-plugin defaults to net/rpc). AutoMTLS, SecureConfig
// and GRPCBrokerMultiplex are not used: go-plugin forbids reattaching with
// them.
//
// # Who may connect
//
// The state directory is hbd's own: PrepareStateDir creates it 0700, or
// refuses one that another user owns, that group or others may write, or
// below a directory others may write (not sticky). plugin.json is read
// without following symlinks and only as a regular file of hbd's uid. The
// plugin's socket lives there and is created 0600 (Serve binds it under
// umask 0177). Every connection is checked with SO_PEERCRED: only hbd's
// uid (the plugin's euid) gets a gRPC transport; others are closed and
// logged ("refused a connection to the plugin socket"; see docs/security.md). And the plugin
// serves one hbd process at a time: while one is connected and alive, calls
// from any other process fail with ErrHostConnected. LockStateDir gives
// one hbd the state directory for its life (flock on hbd.lock).
//
// # Lifecycle
//
// Launch starts the plugin in its own session (signals to hbd's process
// group do not reach it), unmanaged by go-plugin, and records its address,
// PID, start time, executable and arguments in StateDir/plugin.json (written
// atomically, mode 0600). A plugin outlives its host: when hbd exits or
// crashes the plugin and its services keep running.
//
// Conn.Detach closes the host's side without stopping the plugin; hbd does
// this before it exits for a restart or upgrade. Reattach reads plugin.json,
// requires every identity field (a record without one is stale and its PID
// is never signalled), checks that the PID is alive and is that plugin
// (start time, executable, arguments — never trusting a bare PID), that the
// socket is served by it (SO_PEERCRED), and that it answers; then it
// connects. A plugin serving another live hbd is left alone (the error wraps
// ErrHostConnected). Every other Reattach failure wraps ErrNoPlugin and
// guarantees no plugin of that record is left running:
// a live plugin that cannot be used (another protocol version, an
// unreachable socket) is SIGKILLed through its pidfd first. Its services live
// on, and the plugin hbd launches next adopts them from the table. So a host
// starts with:
//
//	conn, err := plugin.Reattach(dir, logger)
//	if errors.Is(err, plugin.ErrNoPlugin) {
//		conn, err = plugin.Launch(plugin.LaunchConfig{Args: []string{"plugin"}, StateDir: dir, Logger: logger})
//	}
//
// Conn.Exited is closed as soon as the plugin process exits: the Conn holds a
// pidfd registered with the Go runtime's poller (no polling, no extra
// thread), which also makes Kill's SIGKILL immune to PID reuse. Conn.Kill
// asks the plugin to Shutdown, waits for it to exit (SIGKILL after a few
// seconds) and removes plugin.json. On the plugin side, Serve returns once
// the gRPC server has stopped after Shutdown (or go-plugin's own kill, or
// SIGTERM), having called the implementation's Shutdown exactly once; the
// caller then exits.
//
// # Logging
//
// The plugin never logs to the stderr it inherited: that is a pipe to an
// hbd that may be gone, and a write to a broken pipe on descriptor 1 or 2
// kills a Go program unless SIGPIPE is handled. Serve therefore takes the
// plugin's own log writer (a file) and logger, writes go-plugin's and gRPC's
// log through that logger (HCLogger: one JSON format in plugin.log, "pid"
// always a service's, "plugin_pid" the plugin's own), points descriptor 2 at that file when it is an *os.File (so
// the standard log package and runtime crash reports go there too), and
// catches SIGPIPE (caught, not ignored, so the services it execs get the
// default disposition). Descriptor 1 stays the pipe go-plugin's handshake
// line went to; nothing writes to it afterwards.
//
// Knobs: HB_PLUGIN_LOG_LEVEL (trace, debug, info, warn, error) sets the
// plugin's go-plugin/gRPC log level; LaunchConfig.Logger receives the
// host-side go-plugin log.
//
// # Concurrency
//
// A Conn and the Shim it returns are safe for concurrent use. Serve runs
// once per process.
package plugin
