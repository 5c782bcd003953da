package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hbshim/hb/shm"
)

// StateFile is the name, inside the state directory, of the record that lets
// a restarted hbd reattach to its running plugin.
const StateFile = "plugin.json"

const (
	// defaultStartTimeout bounds the plugin's handshake when
	// LaunchConfig.StartTimeout is 0.
	defaultStartTimeout = 30 * time.Second
	// reattachTimeout bounds Reattach's health check of the recorded plugin.
	reattachTimeout = 10 * time.Second
	// exitGrace is how long Kill (and Reattach's cleanup) wait for the plugin
	// to exit before SIGKILL, and after it.
	exitGrace = 5 * time.Second
	// maxSocketDir keeps the plugin's socket path (dir + "/plugin" + up to 10
	// digits) under the 108-byte sun_path limit.
	maxSocketDir = 90
)

// LaunchConfig says how to start the plugin process.
type LaunchConfig struct {
	// Path is the executable; "" means os.Executable() (hbd re-executes itself).
	Path string
	// Args are the arguments after argv[0], e.g. ["plugin", "--shm", "hb"].
	// They are recorded and checked again by Reattach.
	Args []string
	// Env is added to hbd's environment (later entries win).
	Env []string
	// StateDir holds plugin.json and the plugin's unix socket (created 0700
	// if missing; refused unless it passes PrepareStateDir's checks). Keep
	// it off /tmp, whose cleaners may delete the socket of a long-running
	// plugin.
	StateDir string
	// Logger receives go-plugin's host-side log. nil: discarded.
	Logger hclog.Logger
	// Stderr receives the plugin's raw stderr while this hbd runs. The
	// plugin points its stderr at its own log file early, so this normally
	// sees nothing. nil: discarded.
	Stderr io.Writer
	// StartTimeout bounds the handshake; 0 means 30s.
	StartTimeout time.Duration
	// ExtraFiles are passed to the plugin as descriptors 3, 4, … (hbd's
	// own stdout and stderr, for the services with stdout or stderr =
	// "inherit"; the plugin's --stdio-fds says which they are).
	ExtraFiles []*os.File
}

// record is the JSON content of plugin.json.
type record struct {
	Protocol        string   `json:"protocol"`
	ProtocolVersion int      `json:"protocol_version"`
	Network         string   `json:"network"`
	Addr            string   `json:"addr"`
	PID             int      `json:"pid"`
	StartTime       uint64   `json:"start_time"` // field 22 of /proc/PID/stat: identity against PID reuse
	Exe             string   `json:"exe"`        // /proc/PID/exe at launch
	Args            []string `json:"args"`       // argv[1:]
}

// Conn is hbd's handle on a running plugin process: the Shim to call, the
// process's identity, and its exit. A Conn is safe for concurrent use. It ends
// with exactly one of Detach (leave the plugin running) or Kill (stop it).
type Conn struct {
	client   *goplugin.Client
	rpc      *goplugin.GRPCClient
	shim     Shim
	pid      int
	stateDir string
	logger   hclog.Logger

	// w watches the process through its pidfd.
	w *exitWatch
	// child: this hbd launched the process, so go-plugin's cmd.Wait reaps
	// it (a reattached plugin is some other process's child).
	child bool

	mu     sync.Mutex
	closed bool // Detach or Kill has run; guarded by mu
}

// Shim returns the plugin's Shim. Every call is an RPC; once the plugin is
// gone calls fail with an error wrapping ErrUnavailable.
func (c *Conn) Shim() Shim { return c.shim }

// PID returns the plugin's process ID.
func (c *Conn) PID() int { return c.pid }

// Exited returns a channel closed as soon as the plugin process has exited
// (its pidfd became readable). After Detach or Kill it is closed only if the
// exit was seen before.
func (c *Conn) Exited() <-chan struct{} { return c.w.exited }

// Detach closes hbd's side of the connection and leaves the plugin running,
// so hbd can exit and a later hbd can Reattach. It does not touch
// plugin.json. Detach after Detach or Kill does nothing.
func (c *Conn) Detach() error {
	if !c.markClosed() {
		return nil
	}
	c.w.close()
	// Not c.rpc.Close(): go-plugin's Close also tells the plugin to stop.
	if err := c.rpc.Conn.Close(); err != nil {
		return fmt.Errorf("plugin: detach from pid %d: %w", c.pid, err)
	}
	return nil
}

// Kill stops the plugin: it calls Shutdown(clean), closes the connection and
// waits for the process to exit, sending SIGKILL (through the pidfd, so never
// to a recycled PID) if it has not exited within a few seconds or when ctx
// ends. Once the process is gone plugin.json is removed. The error is
// Shutdown's, if it failed; the process is gone either way unless the error
// says otherwise.
func (c *Conn) Kill(ctx context.Context, clean bool) error {
	if !c.markClosed() {
		return fmt.Errorf("plugin: kill pid %d: connection already detached or killed", c.pid)
	}
	shutErr := c.shim.Shutdown(ctx, clean)
	_ = c.rpc.Conn.Close()
	defer c.w.close()

	if !waitClosed(ctx, c.w.exited, exitGrace) {
		c.logger.Warn("plugin did not exit after Shutdown; killing it", "pid", c.pid)
		if !c.w.killAndWait() {
			return fmt.Errorf("plugin: kill pid %d: still running %v after SIGKILL", c.pid, exitGrace)
		}
	}
	if c.child {
		// The pidfd turns readable at the exit, before the reap: wait
		// for go-plugin's cmd.Wait too, or an hbd exiting right after
		// Kill would leave its plugin a zombie for init to collect.
		c.waitReaped()
	}
	removeRecord(c.stateDir, c.pid)
	if shutErr != nil {
		return fmt.Errorf("plugin: shutdown pid %d: %w", c.pid, shutErr)
	}
	return nil
}

// waitReaped waits, at most exitGrace, until go-plugin has reaped the
// exited plugin. It polls: go-plugin offers no channel for it, and the reap
// follows the exit within microseconds.
func (c *Conn) waitReaped() {
	for deadline := time.Now().Add(exitGrace); !c.client.Exited(); time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			c.logger.Warn("plugin exited but was not reaped", "pid", c.pid)
			return
		}
	}
}

func (c *Conn) markClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.closed = true
	return true
}

// Launch starts a new plugin process and connects to it. The process runs
// in its own session (signals sent to hbd's process group do not reach it)
// and is not managed by go-plugin, so it outlives hbd. Its reattach record is
// written to StateDir/plugin.json (atomically, mode 0600), replacing any
// previous one: call Reattach first, and Launch only when it returns
// ErrNoPlugin.
func Launch(cfg LaunchConfig) (*Conn, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("plugin: launch: no state directory")
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("plugin: launch: state directory %s: %w", cfg.StateDir, err)
	}
	if stateDir, err = PrepareStateDir(stateDir); err != nil {
		return nil, fmt.Errorf("plugin: launch: %w", err)
	}
	path := cfg.Path
	if path == "" {
		if path, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("plugin: launch: find own executable: %w", err)
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}

	cmd := exec.Command(path, cfg.Args...)
	cmd.Env = append(os.Environ(), cfg.Env...)
	if len(stateDir) <= maxSocketDir {
		cmd.Env = append(cmd.Env, goplugin.EnvUnixSocketDir+"="+stateDir)
	}
	pidfd := -1
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd}
	cmd.ExtraFiles = cfg.ExtraFiles

	logger, launched := demoteWhileLaunching(logger)
	lastWords := &fatalLine{w: cfg.Stderr}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          pluginSet(nil, nil),
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		SkipHostEnv:      true, // cmd.Env already has it, with cfg.Env winning
		Logger:           logger,
		Stderr:           lastWords,
		SyncStdout:       io.Discard,
		SyncStderr:       io.Discard,
		StartTimeout:     timeout,
	})
	fail := func(err error) (*Conn, error) {
		client.Kill()
		if pidfd >= 0 {
			_ = unix.Close(pidfd)
		}
		if why := lastWords.last(); why != "" {
			// The plugin said why it exited; go-plugin's text about
			// architectures and handshakes would hide it.
			return nil, fmt.Errorf("plugin: launch %s: the plugin exited before serving: %s", path, why)
		}
		if msg := err.Error(); strings.Contains(msg, "architecture") || strings.Contains(msg, "Unrecognized remote plugin message") ||
			strings.Contains(msg, "plugin exited before we could connect") {
			// go-plugin's guesses (a wrong architecture, missing
			// libraries) are wrong here: it is hb's own binary.
			logger.Debug("go-plugin's error", "err", err)
			return nil, fmt.Errorf("plugin: launch %s: the plugin exited before serving, without saying why (see %s)",
				path, filepath.Join(stateDir, "plugin.log"))
		}
		return nil, fmt.Errorf("plugin: launch %s: %w", path, err)
	}

	proto, err := client.Client()
	if err != nil {
		return fail(err)
	}
	rc := client.ReattachConfig()
	if rc == nil || rc.Addr == nil || rc.Pid <= 0 {
		return fail(errors.New("go-plugin gave no reattach information"))
	}
	pid := rc.Pid
	// The watch needs a nonblocking pidfd, but the one clone gave shares its
	// open file description with the copy os/exec keeps for cmd.Wait:
	// O_NONBLOCK on it would make go-plugin's cmd.Wait (waitid P_PIDFD)
	// fail with EAGAIN instead of reaping, leaving a dead plugin a zombie.
	// So the watch gets a description of its own, opened while the
	// clone-time pidfd shows the process alive (an unexited child's PID
	// cannot have been reused).
	wfd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return fail(fmt.Errorf("pidfd_open(%d): %w", pid, err))
	}
	if pidfd >= 0 {
		gone := pidfdExited(pidfd)
		_ = unix.Close(pidfd)
		if gone {
			_ = unix.Close(wfd)
			pidfd = -1
			return fail(fmt.Errorf("pid %d exited right after its handshake", pid))
		}
	}
	pidfd = wfd
	rec := record{
		Protocol:        string(rc.Protocol),
		ProtocolVersion: client.NegotiatedVersion(),
		Network:         rc.Addr.Network(),
		Addr:            rc.Addr.String(),
		PID:             pid,
		Exe:             procExe(pid),
		Args:            append([]string{}, cfg.Args...),
	}
	if rec.StartTime, err = shm.StartTime(pid); err != nil {
		return fail(err)
	}
	if err := rec.check(); err != nil {
		return fail(fmt.Errorf("pid %d: %v", pid, err))
	}
	if err := checkSocketFile(rec.Addr); err != nil {
		return fail(err)
	}
	w, err := newExitWatch(pid, pidfd, logger)
	if err != nil {
		return fail(err)
	}
	pidfd = -1 // owned by w
	c, err := newConn(client, proto, w, stateDir, logger)
	if err == nil {
		err = writeRecord(stateDir, rec)
	}
	if err != nil {
		w.close()
		return fail(err)
	}
	c.child = true
	launched()
	logger.Info("plugin launched", "pid", pid, "addr", rec.Addr)
	return c, nil
}

// Reattach connects to the plugin recorded in stateDir/plugin.json by an
// earlier Launch. It checks that the recorded PID is alive and is that
// plugin (same start time, executable and arguments), that the socket is
// served by that PID, and that the plugin answers a health check.
//
// The state directory must pass CheckStateDir and the record must name
// every identity field; a record that does not is stale, and its PID is
// never signalled. When the plugin is serving another live hbd process,
// the error wraps ErrHostConnected (not ErrNoPlugin) and the plugin is left
// running. Every other failure wraps ErrNoPlugin, and then no plugin of that
// record is running: when the process is ours but cannot be used (unreachable, another
// protocol version, not answering), Reattach SIGKILLs it (through its pidfd)
// and waits for it to die, so a fresh Launch never runs beside it. The
// services it started live on and the new plugin adopts them. A stale record
// is removed.
func Reattach(stateDir string, logger hclog.Logger) (*Conn, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if stateDir == "" {
		return nil, fmt.Errorf("plugin: reattach: %w: no state directory", ErrNoPlugin)
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("plugin: reattach: %w: state directory: %v", ErrNoPlugin, err)
	}
	file := filepath.Join(stateDir, StateFile)
	if err := CheckStateDir(stateDir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("plugin: reattach: %w: %w", ErrNoPlugin, err)
		}
		return nil, fmt.Errorf("plugin: reattach: %w", err)
	}
	rec, err := readRecord(stateDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("plugin: reattach: %w: %s does not exist: %w", ErrNoPlugin, file, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("plugin: reattach: %w: %v", ErrNoPlugin, err)
	}
	stale := func(why string) (*Conn, error) {
		removeRecord(stateDir, rec.PID)
		removeSocket(stateDir, rec.Addr)
		return nil, fmt.Errorf("plugin: reattach: %w: %s: %s", ErrNoPlugin, file, why)
	}
	// No process is looked at, let alone signalled, on an incomplete
	// record: only a verified start time ties the PID to the plugin.
	if err := rec.check(); err != nil {
		return stale(err.Error() + "; not touching pid " + strconv.Itoa(rec.PID))
	}
	pidfd, err := unix.PidfdOpen(rec.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return stale(fmt.Sprintf("pid %d is gone", rec.PID))
		}
		return nil, fmt.Errorf("plugin: reattach: %w: pidfd_open(%d): %v", ErrNoPlugin, rec.PID, err)
	}
	if err := checkIdentity(rec, pidfd); err != nil {
		_ = unix.Close(pidfd)
		return stale(err.Error())
	}
	// From here pidfd is the recorded plugin, alive: use it, or kill it.
	w, err := newExitWatch(rec.PID, pidfd, logger)
	if err != nil {
		_ = unix.Close(pidfd)
		return nil, fmt.Errorf("plugin: reattach: %w: %v", ErrNoPlugin, err)
	}
	var proto goplugin.ClientProtocol
	unusable := func(err error) (*Conn, error) {
		logger.Warn("recorded plugin is alive but unusable; killing it", "pid", rec.PID, "error", err)
		if gc, ok := proto.(*goplugin.GRPCClient); ok {
			_ = gc.Conn.Close()
		}
		killed := w.killAndWait()
		w.close()
		if !killed {
			return nil, fmt.Errorf("plugin: reattach: pid %d unusable (%v) and still running %v after SIGKILL", rec.PID, err, exitGrace)
		}
		removeRecord(stateDir, rec.PID)
		removeSocket(stateDir, rec.Addr)
		return nil, fmt.Errorf("plugin: reattach: %w: pid %d killed: %v", ErrNoPlugin, rec.PID, err)
	}
	if rec.Protocol != string(goplugin.ProtocolGRPC) || rec.Network != "unix" {
		return unusable(fmt.Errorf("unsupported transport %s/%s", rec.Protocol, rec.Network))
	}
	if rec.ProtocolVersion != int(Handshake.ProtocolVersion) {
		return unusable(fmt.Errorf("protocol version %d, want %d", rec.ProtocolVersion, Handshake.ProtocolVersion))
	}
	addr := &net.UnixAddr{Net: "unix", Name: rec.Addr}
	if err := checkPeer(addr, rec.PID); err != nil {
		return unusable(err)
	}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: Handshake,
		Plugins:         pluginSet(nil, nil),
		Reattach: &goplugin.ReattachConfig{
			Protocol:        goplugin.ProtocolGRPC,
			ProtocolVersion: rec.ProtocolVersion,
			Addr:            addr,
			Pid:             rec.PID,
			ReattachFunc:    func() (runner.AttachedRunner, error) { return w.runner(), nil },
		},
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           logger,
		SyncStdout:       io.Discard,
		SyncStderr:       io.Discard,
	})
	if proto, err = client.Client(); err != nil {
		return unusable(err)
	}
	gc, ok := proto.(*goplugin.GRPCClient)
	if !ok {
		return unusable(fmt.Errorf("go-plugin protocol %T, want gRPC", proto))
	}
	ctx, cancel := context.WithTimeout(context.Background(), reattachTimeout)
	defer cancel()
	if _, err := grpc_health_v1.NewHealthClient(gc.Conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{
		Service: goplugin.GRPCServiceName,
	}); err != nil {
		if rerr := fromStatus("health check", err); errors.Is(rerr, ErrHostConnected) {
			// Serving another hbd is no fault of the plugin's: leave it be.
			_ = gc.Conn.Close()
			w.close()
			return nil, fmt.Errorf("plugin: reattach to pid %d: %w; stop the other hbd first", rec.PID, rerr)
		}
		return unusable(fmt.Errorf("health check: %w", err))
	}
	c, err := newConn(client, proto, w, stateDir, logger)
	if err != nil {
		return unusable(err)
	}
	logger.Info("plugin reattached", "pid", rec.PID, "addr", rec.Addr)
	return c, nil
}

// newConn dispenses the Shim. The Conn takes over w.
func newConn(client *goplugin.Client, proto goplugin.ClientProtocol, w *exitWatch, stateDir string, logger hclog.Logger) (*Conn, error) {
	gc, ok := proto.(*goplugin.GRPCClient)
	if !ok {
		return nil, fmt.Errorf("go-plugin protocol %T, want gRPC", proto)
	}
	raw, err := proto.Dispense(PluginName)
	if err != nil {
		return nil, fmt.Errorf("dispense %q: %w", PluginName, err)
	}
	shim, ok := raw.(Shim)
	if !ok {
		return nil, fmt.Errorf("dispense %q: got %T, not a Shim", PluginName, raw)
	}
	return &Conn{
		client:   client,
		rpc:      gc,
		shim:     shim,
		pid:      w.pid,
		stateDir: stateDir,
		logger:   logger,
		w:        w,
	}, nil
}

// waitClosed waits for ch to be closed, at most d and until ctx ends.
func waitClosed(ctx context.Context, ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// checkIdentity verifies that the live process behind pidfd is the plugin
// rec describes. pidfd was opened first, so if it is still not readable
// after the /proc reads, those reads were of that same process.
func checkIdentity(rec record, pidfd int) error {
	st, err := shm.StartTime(rec.PID)
	if err != nil {
		return fmt.Errorf("pid %d: %v", rec.PID, err)
	}
	if rec.StartTime == 0 || st != rec.StartTime {
		return fmt.Errorf("pid %d was reused (start time %d, recorded %d)", rec.PID, st, rec.StartTime)
	}
	if exe := procExe(rec.PID); rec.Exe == "" || exe != rec.Exe {
		return fmt.Errorf("pid %d runs %q, recorded %q", rec.PID, exe, rec.Exe)
	}
	args, err := procArgs(rec.PID)
	if err != nil {
		return fmt.Errorf("pid %d: %v", rec.PID, err)
	}
	if !slices.Equal(args, rec.Args) {
		return fmt.Errorf("pid %d has arguments %q, recorded %q", rec.PID, args, rec.Args)
	}
	if pidfdExited(pidfd) {
		return fmt.Errorf("pid %d is gone", rec.PID)
	}
	return nil
}

// procExe returns /proc/PID/exe without the " (deleted)" mark an upgraded
// binary leaves, or "" if it cannot be read.
func procExe(pid int) string {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(exe, " (deleted)")
}

// procArgs returns argv[1:] of pid.
func procArgs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, fmt.Errorf("empty command line")
	}
	argv := strings.Split(string(b), "\x00")
	return argv[1:], nil
}

// checkSocketFile verifies that the plugin's socket at path is a socket
// owned by this euid that nobody else may connect to (mode 0600 or
// stricter), as Serve creates it.
func checkSocketFile(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("plugin socket %s: %w", path, err)
	}
	euid := uint32(unix.Geteuid())
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFSOCK:
		return fmt.Errorf("plugin socket %s: not a socket", path)
	case st.Uid != euid:
		return fmt.Errorf("plugin socket %s: owned by uid %d, not %d", path, st.Uid, euid)
	case st.Mode&0o077 != 0:
		return fmt.Errorf("plugin socket %s: mode %04o lets group or others connect, want 0600", path, st.Mode&0o7777)
	}
	return nil
}

// checkPeer verifies that the unix socket at addr is served by pid.
func checkPeer(addr *net.UnixAddr, pid int) error {
	conn, err := net.DialUnix("unix", nil, addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr.Name, err)
	}
	defer func() { _ = conn.Close() }()
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("SO_PEERCRED on %s: %w", addr.Name, cerr)
	}
	if int(cred.Pid) != pid {
		return fmt.Errorf("socket %s is served by pid %d, not %d", addr.Name, cred.Pid, pid)
	}
	return nil
}

// readRecord reads stateDir/plugin.json (see readRecordFile).
func readRecord(stateDir string) (record, error) {
	var rec record
	b, err := readRecordFile(stateDir)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %w", filepath.Join(stateDir, StateFile), err)
	}
	return rec, nil
}

// check reports the first identity field rec lacks. Every one is required:
// a record that leaves one out cannot tell its plugin from another process.
func (rec record) check() error {
	switch {
	case rec.PID <= 0:
		return errors.New("no pid")
	case rec.StartTime == 0:
		return errors.New("no start_time: the pid's identity cannot be verified")
	case rec.Exe == "":
		return errors.New("no exe: the pid's identity cannot be verified")
	case rec.Args == nil:
		return errors.New("no args: the pid's identity cannot be verified")
	case rec.Addr == "":
		return errors.New("no addr")
	}
	return nil
}

// writeRecord replaces stateDir/plugin.json atomically (temporary file,
// fsync, rename), mode 0600.
func writeRecord(stateDir string, rec record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(stateDir, StateFile+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", StateFile, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	dst := filepath.Join(stateDir, StateFile)
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if d, err := os.Open(stateDir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// removeRecord removes stateDir/plugin.json if it still records pid (a
// newer plugin's record is left alone).
func removeRecord(stateDir string, pid int) {
	if rec, err := readRecord(stateDir); err == nil && rec.PID != pid {
		return
	}
	_ = os.Remove(filepath.Join(stateDir, StateFile))
}

// removeSocket removes a dead plugin's socket file, only inside stateDir
// and only if it is a socket.
func removeSocket(stateDir, path string) {
	if path == "" || filepath.Dir(path) != stateDir {
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		_ = os.Remove(path)
	}
}

// fatalLine passes the plugin's stderr on to w (nil: discarded) and keeps
// the last line starting with "hbd plugin: ", the plugin's own account of a
// failed start.
type fatalLine struct {
	w    io.Writer
	mu   sync.Mutex
	part []byte // an unfinished line
	line string
}

func (f *fatalLine) Write(p []byte) (int, error) {
	f.mu.Lock()
	f.part = append(f.part, p...)
	for {
		i := bytes.IndexByte(f.part, '\n')
		if i < 0 {
			break
		}
		if l := string(bytes.TrimSpace(f.part[:i])); strings.HasPrefix(l, "hbd plugin: ") {
			f.line = strings.TrimPrefix(l, "hbd plugin: ")
		}
		f.part = f.part[i+1:]
	}
	if len(f.part) > 64<<10 {
		f.part = f.part[:0]
	}
	f.mu.Unlock()
	if f.w == nil {
		return len(p), nil
	}
	return f.w.Write(p)
}

func (f *fatalLine) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.line
}
