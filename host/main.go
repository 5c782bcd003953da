package host

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/config"
	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/logdir"
	"github.com/hbshim/hb/shm"
)

// DefaultConfig is the configuration file when neither -c nor $HB_CONFIG is given.
const DefaultConfig = "/etc/hb/hb.toml"

const usage = `Usage: hbd [-c FILE] [--check] [--log-level LEVEL]

hbd starts the services defined in FILE (TOML), records their PIDs in the
shared-memory table /dev/shm/<shm>, and respawns them when they exit. It runs
in the foreground and logs to stderr.

Options:
  -c, --config FILE   configuration (default $HB_CONFIG, else /etc/hb/hb.toml)
  --check             validate FILE (syntax, values, users, executables, bridge
                      scan directories) and exit:
                      0 if it is good, else 1 with one line per error
  --log-level LEVEL   debug, info (default), warn or error
  --version           print the version and exit

Signals:
  SIGHUP              reload FILE (a bad file is rejected; the running config stays)
  SIGTERM, SIGINT     stop every service (reverse order), then the plugin; a
                      second one stops them at once with SIGKILL
  SIGQUIT             exit and leave the plugin and every service running; the
                      next hbd reattaches to them

Control it with hbctl (hbctl --help).
`

// Main is hbd's entry point; it returns the exit status.
func Main(args []string) int {
	fs := flag.NewFlagSet("hbd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := os.Getenv("HB_CONFIG")
	if cfgPath == "" {
		cfgPath = DefaultConfig
	}
	fs.StringVar(&cfgPath, "c", cfgPath, "")
	fs.StringVar(&cfgPath, "config", cfgPath, "")
	check := fs.Bool("check", false, "")
	level := fs.String("log-level", "info", "")
	version := fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(usage)
			return 0
		}
		fmt.Fprintf(os.Stderr, "hbd: %v\n\n%s", err, usage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "hbd: unexpected argument %q\n\n%s", fs.Arg(0), usage)
		return 2
	}
	if *version {
		fmt.Println("hbd", api.BuildVersion())
		return 0
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "hbd: --log-level: %v\n", err)
		return 2
	}

	cfg, err := config.Load(cfgPath)
	if err == nil && *check {
		err = cfg.Check()
	}
	if err != nil {
		printConfigErrors(os.Stderr, err)
		return 1
	}
	if *check {
		fmt.Printf("%s: ok (%d services)\n", cfgPath, len(cfg.Services))
		for _, n := range cfg.BridgeNotes() {
			fmt.Println(n)
		}
		return 0
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if err := Run(cfg, log); err != nil {
		log.Error("hbd failed", "err", err)
		var se *startError
		if errors.As(err, &se) {
			// The last line: what is wrong, where, and the fix.
			fmt.Fprintln(os.Stderr, StartFailure(se.err, cfg))
		}
		return 1
	}
	return 0
}

// printConfigErrors prints one line per configuration error.
func printConfigErrors(w io.Writer, err error) {
	var ce config.Errors
	if errors.As(err, &ce) {
		for _, e := range ce {
			fmt.Fprintln(w, e.Error())
		}
		return
	}
	fmt.Fprintln(w, err)
}

// startError is an error that kept hbd from starting (StartFailure says
// how to fix it).
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// Run supervises cfg's services until a signal ends it. An error before
// hbd is ready is a *startError.
func Run(cfg *config.Config, log *slog.Logger) error {
	exe, err := os.Executable()
	if err != nil {
		return &startError{fmt.Errorf("find own executable: %w", err)}
	}
	h := cfg.HBD
	// The state directory must be hbd's own (see plugin.PrepareStateDir).
	stateDir, err := plugin.PrepareStateDir(h.StateDir)
	if err != nil {
		return &startError{fmt.Errorf("[hbd] state_dir: %w", err)}
	}
	// The plugin writes the services' logs there as hbd's user: a log_dir
	// that anyone else can change is refused before anything is started or
	// attached to, so nothing running is lost.
	if err := logdir.Prepare(h.LogDir); err != nil {
		return &startError{err}
	}
	d := newDaemon(cfg, log, exe)
	d.self = selfPath(exe)
	if isInit() {
		// As PID 1 every orphan of the namespace is hbd's child: the
		// stray reaper of becomeSubreaper reaps those no service owns.
		log.Info("hbd is PID 1 of its PID namespace: it reaps every orphan; SIGTERM stops every service, and SIGQUIT does too (hbd's exit would kill them)")
	}
	d.becomeSubreaper()

	// Signals first, so that a SIGTERM during startup is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	// The socket before the plugin: a second hbd on the same socket stops
	// here instead of fighting over the plugin.
	srv, err := api.Listen(h.Socket, h.SocketGroup, d, log.With("component", "api"))
	if err != nil {
		return &startError{err}
	}
	defer func() { _ = srv.Close() }() // its errors at exit change nothing
	// One hbd per state directory, for its whole life: a second hbd with
	// another socket stops here, before it could reach the plugin.
	lock, err := plugin.LockStateDir(stateDir)
	if err != nil {
		return &startError{err}
	}
	defer lock.Release()
	if h.MetricsListen != "" {
		stop, err := serveMetrics(h.MetricsListen, d, log.With("component", "metrics"))
		if err != nil {
			return err
		}
		defer stop()
	}

	d.mu.Lock()
	err = d.connect()
	d.mu.Unlock()
	if err != nil {
		return &startError{err}
	}
	log.Info("hbd ready", "pid", os.Getpid(), "config", cfg.Path, "services", len(cfg.Services), "socket", h.Socket)
	releaseMemory()

	for {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-d.reexecCh:
			log.Info("re-executing hbd; leaving the plugin and the services running", "exe", d.self)
			d.detach()
			_ = srv.Close()
			lock.Release()
			signal.Stop(sigs)
			err := syscall.Exec(d.self, os.Args, os.Environ())
			// Detached already: exit, and the next hbd reattaches.
			return fmt.Errorf("re-exec %s: %w", d.self, err)
		}
		switch sig {
		case syscall.SIGHUP:
			go func() {
				if _, err := d.Reload(); err != nil {
					log.Error("reload", "err", err)
				}
			}()
		case syscall.SIGQUIT:
			if isInit() {
				// The namespace dies with its init: nothing can be left running.
				log.Warn("SIGQUIT as PID 1: stopping every service (hbd's exit ends the namespace)")
				return d.shutdown(sigs)
			}
			log.Info("SIGQUIT: leaving the plugin and the services running")
			d.detach()
			return nil
		default:
			log.Info("stopping every service", "signal", sig.String())
			return d.shutdown(sigs)
		}
	}
}

// serveMetrics listens on addr ([hbd] metrics_listen) and serves GET
// /metrics there, and nothing else: the control API stays on the unix
// socket, behind its peer check.
func serveMetrics(addr string, d *Daemon, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("[hbd] metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", api.MetricsHandler(d))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics: serve failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
	log.Info("metrics: listening", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

// releaseMemory gives the heap memory hbd no longer uses back to the system
// at once. Loading the configuration, and at start spawning every service,
// is a burst of short-lived allocations (over 10 MiB at a thousand
// services) that the runtime would otherwise return only gradually over the
// following seconds, later still on a busy machine, while what hbd keeps is
// a small fraction of it. It costs one collection of that small heap; it is
// called after a start or a reload, never on an exit's way.
func releaseMemory() { debug.FreeOSMemory() }

// detach ends hbd's side and leaves the plugin and services running.
func (d *Daemon) detach() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closing = true
	d.pluginGen++
	for _, s := range d.svcs {
		s.cancelTimer()
	}
	d.saveSeq()
	if d.evCancel != nil {
		d.evCancel()
	}
	if d.conn != nil {
		_ = d.conn.Detach()
	}
}

// shutdown stops every service in reverse start order (startOrder), then the plugin. A
// second SIGTERM or SIGINT makes the remaining stops immediate (SIGKILL).
func (d *Daemon) shutdown(sigs <-chan os.Signal) error {
	d.mu.Lock()
	d.closing = true
	names := d.startOrderLocked()
	for _, s := range d.svcs {
		s.cancelTimer()
		if s.pid != 0 {
			// Tell the plugin first, so that a service that exits on its
			// own before its turn to be stopped is not respawned.
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			_ = d.shim.SetState(ctx, s.cfg.Name, shm.StateStopping, 0)
			cancel()
		}
	}
	d.mu.Unlock()
	slices.Reverse(names)

	done := make(chan error, 1)
	go func() { done <- d.Stop(names) }()
	var stopErr error
wait:
	for {
		select {
		case stopErr = <-done:
			break wait
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				continue
			}
			d.log.Warn("second signal: killing every service now", "signal", sig.String())
			d.force()
		}
	}
	if stopErr != nil {
		d.log.Error("stop services", "err", stopErr)
	}

	// A clean shutdown leaves an empty table: the next hbd starts from the
	// configuration, not from the states this one recorded.
	d.mu.Lock()
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		if err := d.shim.Free(ctx, name); err != nil && !errors.Is(err, plugin.ErrNotFound) {
			d.log.Warn("free slot", "service", name, "err", err)
		}
		cancel()
	}
	conn := d.conn
	d.pluginGen++
	if d.evCancel != nil {
		d.evCancel()
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := conn.Kill(ctx, true); err != nil {
		return fmt.Errorf("stop plugin: %w", err)
	}
	_ = os.Remove(d.cfg.HBD.StateDir + "/" + seqFile)
	d.log.Info("hbd stopped")
	return stopErr
}

// force makes stops immediate: every live service gets SIGKILL now. The one
// whose stop is under way is signalled (its Stop holds the service in the
// plugin, and the plugin never respawns a stopping service); the others are
// stopped with SIGKILL and no grace, so the plugin does not take their death
// for a crash and respawn them (Spec.Respawn) on the way out.
func (d *Daemon) force() {
	d.mu.Lock()
	d.forced = true
	var stopping, live []string
	for _, name := range d.order {
		s := d.svcs[name]
		switch {
		case s.pid == 0:
		case s.state() == policy.StateStopping:
			stopping = append(stopping, name)
		default:
			live = append(live, name)
		}
	}
	sh := d.shim
	d.mu.Unlock()
	for _, name := range stopping {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		_ = sh.Signal(ctx, name, syscall.SIGKILL)
		cancel()
	}
	var wg sync.WaitGroup
	for _, name := range live {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			defer cancel()
			if err := sh.Stop(ctx, name, syscall.SIGKILL, 0); err != nil && !errors.Is(err, plugin.ErrNotRunning) {
				d.log.Warn("forced stop", "service", name, "err", err)
			}
		})
	}
	wg.Wait()
}

// pluginLogger gives go-plugin's host side hbd's own logger, at warnings
// and above.
func (d *Daemon) pluginLogger() hclog.Logger {
	return plugin.HCLogger(d.log, hclog.Warn).Named("go-plugin")
}

// selfPath is the program hbd re-executes (hbctl reexec): the path it was
// started as, so that an upgrade installed there since is what runs next;
// exe (the running binary) when that cannot be found.
func selfPath(exe string) string {
	p := os.Args[0]
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return exe
		}
		p = lp
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return exe
	}
	return abs
}

// Reexec implements api.Reexecer: hbd detaches from the plugin, leaving it
// and every service running, and executes itself again (same PID, same
// arguments), so that a new binary takes over without a service noticing.
func (d *Daemon) Reexec() error {
	if fi, err := os.Stat(d.self); err != nil || fi.Mode()&0o111 == 0 || !fi.Mode().IsRegular() {
		return api.Errorf(api.ErrConflict, "cannot re-execute %s: not an executable file", d.self)
	}
	d.mu.RLock()
	closing := d.closing
	d.mu.RUnlock()
	if closing {
		return api.Errorf(api.ErrConflict, "hbd is shutting down")
	}
	select {
	case d.reexecCh <- struct{}{}:
	default: // one is under way
	}
	return nil
}
