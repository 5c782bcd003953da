package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/shm"
)

// Exit statuses of hbctl.
const (
	ExitOK          = 0 // success
	ExitFailed      = 1 // the operation failed: no such service, reload rejected, ...
	ExitUsage       = 2 // bad command line
	ExitUnreachable = 3 // hbd cannot be reached: socket missing, refused, not permitted
	ExitTimeout     = 4 // wait timed out
	// ExitNotWanted (status) is 3 as systemctl is-active's and LSB's "not
	// running": a listed service is not in its wanted state. status exits
	// ExitUnknown (LSB's "status unknown") when hbd cannot be reached.
	ExitNotWanted   = 3
	ExitUnknown     = 4
	ExitInterrupted = 130 // SIGINT or SIGTERM before the command finished (watch exits 0)
)

// DefaultSocket is hbd's control socket when neither -s nor $HB_SOCKET is set.
const DefaultSocket = "/run/hb/hbd.sock"

// Usage is hbctl's help text.
const Usage = `usage: hbctl [-s SOCKET] COMMAND [ARGS] [FLAGS]

hbctl controls and inspects hbd, the hb process-liveness shim.

Commands:
  status [NAME...] [--json] [--quiet]    show services (all, or those named); exit 3 if one is not as wanted
  start NAME... | --all [--json]         start services
  stop NAME... | --all [--json]          stop services (--all: reverse config order)
  restart NAME... | --all [--json]       restart services
  signal SIG NAME                        send SIG (HUP, SIGUSR1, 10) to a service's main process
  reload [--json]                        make hbd re-read its configuration
  reexec [--timeout D]                   restart hbd in place (same PID), services kept
  watch [NAME...] [--json]               print events as they happen, until interrupted
  wait NAME... --up|--down [--timeout D] wait until services are up (running) or down (no process)
  shm [--name TABLE] [--json] [NAME...]  read the shared-memory table directly (works without hbd)
  logs NAME [--stderr] [-f] [-n N]       print (and follow) a service's log
  health [--json]                        hbd's and its plugin's health
  version                                hbctl's version, and hbd's when it is reachable
  completion bash|zsh|fish               print a shell completion script
  help [COMMAND]                         this text, or a command's

Flags:
  -s, --socket PATH   hbd's control socket (default $HB_SOCKET, else /run/hb/hbd.sock)
  -h, --help          help; also after any command
      --version       print hbctl's version and exit (the version command also asks hbd)
Flags may follow the arguments: hbctl status rx --json

Exit status:
  0    success
  1    the operation failed (no such service, reload rejected: each error is printed, ...)
  2    usage error
  3    hbd cannot be reached (socket missing, connection refused, permission denied);
       status: a listed service is not in its wanted state (fatal, backoff, failed, ...)
  4    wait timed out; status: hbd cannot be reached (state unknown)
  130  interrupted (watch exits 0)
`

// Env is what a run of hbctl reads and writes besides its arguments.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// Main runs hbctl with the process's arguments (without the program name),
// standard streams and environment, and returns its exit status. SIGINT and
// SIGTERM cancel the running command.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}

// opts holds every flag of every command; each command registers its own.
type opts struct {
	socket  string
	json    bool
	all     bool
	up      bool
	down    bool
	timeout time.Duration
	shmName string
	shmPath string
	quiet   bool
	stderr  bool // logs --stderr
	follow  bool // logs -f
	lines   int  // logs -n
}

type command struct {
	name     string
	synopsis string // after "hbctl NAME"
	help     string
	flags    func(fs *flag.FlagSet, o *opts)
	run      func(ctx context.Context, c *cli, args []string) int
}

// cli is one run of hbctl.
type cli struct {
	Env
	o      opts
	cmd    *command
	client *api.Client
}

func jsonFlag(fs *flag.FlagSet, o *opts) { fs.BoolVar(&o.json, "json", false, "print JSON") }

var commands []*command

func init() {
	commands = []*command{
		{name: "status", synopsis: "[NAME...] [--json] [--quiet]", run: runStatus, flags: statusFlags, help: `Show every service, or those named, as hbd sees them: state, PID, generation
(spawn count), exits, the last exit status (code, or 128+signal), the
incarnation's uptime (from its start, whatever hbd restarts came since) or
the time of the last state change, and what last happened to it, and when.
Exits 0 when every listed service is in its wanted state (up: starting or
running; down: stopped), 3 when one is not (fatal, backoff, hung, exited
with a failure, stopping), 1 if a named service does not exist, 4 when hbd
cannot be reached. --quiet prints nothing: only the exit status tells.`},
		{name: "start", synopsis: "NAME... | --all [--json]", run: runAction, flags: actionFlags, help: `Start the named services (or every service); running ones are left alone.`},
		{name: "stop", synopsis: "NAME... | --all [--json]", run: runAction, flags: actionFlags, help: `Stop the named services (or every service, in reverse config order) and
return once they have exited.`},
		{name: "restart", synopsis: "NAME... | --all [--json]", run: runAction, flags: actionFlags, help: `Stop, then start the named services (or every service).`},
		{name: "signal", synopsis: "SIG NAME [--json]", run: runSignal, flags: jsonFlag, help: `Send SIG to the service's main process. SIG is a name with or without SIG
(HUP, SIGUSR1) or a number (10, -10).`},
		{name: "reload", synopsis: "[--json]", run: runReload, flags: jsonFlag, help: `Make hbd re-read its configuration and apply it: services added, removed or
changed. An invalid configuration is rejected as a whole and hbd keeps the
running one; each error is printed and hbctl exits 1.`},
		{name: "reexec", synopsis: "[--timeout D]", run: runReexec, flags: reexecFlags, help: `Make hbd execute its program again, in place: it detaches from the plugin,
leaving it and every service running, executes the file it was started as
(an upgrade installed there takes over) with the same PID and arguments,
and the new hbd reattaches. Waits until the new hbd answers (--timeout,
default 30s). Service changes in the configuration are not applied by it:
run 'hbctl reload' first. This is "restart hbd, keep the services" for
every manager: systemctl reload hbd runs it.`},
		{name: "watch", synopsis: "[NAME...] [--json]", run: runWatch, flags: jsonFlag, help: `Print hbd's events (spawn, exit, state, adopt, reload) as they happen, for
every service or those named, until interrupted (exit 0). Exits 3 if hbd goes
away.`},
		{name: "wait", synopsis: "NAME... --up|--down [--timeout D]", run: runWait, flags: waitFlags, help: `Wait until every named service is up (state running with a process) or down
(no process: the shm slot's PID is 0). Event-driven, no polling. --timeout
takes a Go duration (500ms, 10s, 2m); 0 or none waits for ever. Exits 4 on
timeout, 1 if a service does not exist. --ready is --up: a service with ready
= "notify" or "fd:N" is up only once it has declared itself ready.`},
		{name: "shm", synopsis: "[--name TABLE] [--json] [NAME...]", run: runShm, flags: shmFlags, help: `Read the shared-memory table /dev/shm/TABLE directly, as any peer does (TABLE
defaults to $HB_SHM, else hb). Works when hbd is down. Shows the writer (the
hb plugin) and whether it is alive, stalled (its process exists but has not
refreshed writer_beat_ns for 3 s: stopped, hung or starved, so the table may
be stale), gone or stopped, then every used slot, or those named.`},
		{name: "logs", synopsis: "NAME [--stderr] [-f] [-n N]", run: runLogs, flags: logsFlags, help: `Print the last N lines (default 10) of the service's stdout log, or with
--stderr of its stderr log, reaching into the rotated files (NAME.out.log.1,
…) when the current one has fewer. -f (--follow) then prints what is
written as it comes, until interrupted (exit 0), following the file's name
across rotations as tail -F does. hbctl reads the files itself (log_dir's
files are readable by all unless log_dir says otherwise); hbd tells it
where they are. A service with stdout = "inherit" writes to hbd's own
output (the journal under systemd) and one with "null" nowhere: logs says
so and exits 1.`},
		{name: "health", synopsis: "[--json]", run: runHealth, flags: jsonFlag, help: `Ask hbd whether it and its plugin are healthy. Exits 1 if not.`},
		{name: "version", synopsis: "", run: runVersion, help: `Print hbctl's version, and hbd's when it is reachable.`},
		{name: "completion", synopsis: "bash|zsh|fish", run: runCompletion, help: `Print a completion script for the shell: commands, flags and, from the
running hbd, service names. bash: hbctl completion bash > /etc/bash_completion.d/hbctl
(or source <(hbctl completion bash) in ~/.bashrc); zsh: write it as _hbctl in
a directory of $fpath; fish: ~/.config/fish/completions/hbctl.fish. make
install installs all three.`},
		{name: "help", synopsis: "[COMMAND]", run: runHelp, help: `Print the usage, or a command's.`},
		{name: "__services", run: runServices, help: `Print the service names, one a line (for the completion scripts).`},
	}
}

func statusFlags(fs *flag.FlagSet, o *opts) {
	fs.BoolVar(&o.quiet, "quiet", false, "print nothing; the exit status tells")
	fs.BoolVar(&o.quiet, "q", false, "the same as --quiet")
	jsonFlag(fs, o)
}

func actionFlags(fs *flag.FlagSet, o *opts) {
	fs.BoolVar(&o.all, "all", false, "every service")
	jsonFlag(fs, o)
}

func reexecFlags(fs *flag.FlagSet, o *opts) {
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
}

func waitFlags(fs *flag.FlagSet, o *opts) {
	fs.BoolVar(&o.up, "up", false, "wait until up")
	fs.BoolVar(&o.up, "ready", false, "the same as --up")
	fs.BoolVar(&o.down, "down", false, "wait until down")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after this long")
}

func shmFlags(fs *flag.FlagSet, o *opts) {
	fs.StringVar(&o.shmName, "name", "", "table name")
	fs.StringVar(&o.shmPath, "path", "", "table file (hidden: tests)")
	jsonFlag(fs, o)
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (c *command) usage() string {
	s := "usage: hbctl [-s SOCKET] " + c.name
	if c.synopsis != "" {
		s += " " + c.synopsis
	}
	return s + "\n\n" + c.help + "\n"
}

// Run runs hbctl with args (without the program name) and returns its exit
// status. ctx ending interrupts the command.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	c := &cli{Env: env}
	global := newFlagSet("hbctl", &c.o)
	showVersion := global.Bool("version", false, "print hbctl's version")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.Stdout, Usage)
			return ExitOK
		}
		return c.usageErr(nil, err.Error())
	}
	rest := global.Args()
	if *showVersion {
		fmt.Fprintf(c.Stdout, "hbctl %s\n", api.BuildVersion())
		return ExitOK
	}
	if len(rest) == 0 {
		fmt.Fprint(c.Stderr, Usage)
		return ExitUsage
	}
	c.cmd = lookup(rest[0])
	if c.cmd == nil {
		return c.usageErr(nil, fmt.Sprintf("unknown command %q", rest[0]))
	}
	fs := newFlagSet("hbctl "+c.cmd.name, &c.o)
	if c.cmd.flags != nil {
		c.cmd.flags(fs, &c.o)
	}
	pos, err := parseArgs(fs, rest[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.Stdout, c.cmd.usage())
			return ExitOK
		}
		return c.usageErr(c.cmd, err.Error())
	}
	if c.o.socket == "" {
		c.o.socket = env.Getenv("HB_SOCKET")
	}
	if c.o.socket == "" {
		c.o.socket = DefaultSocket
	}
	c.client = api.NewClient(c.o.socket)
	return c.cmd.run(ctx, c, pos)
}

func newFlagSet(name string, o *opts) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.socket, "s", o.socket, "control socket")
	fs.StringVar(&o.socket, "socket", o.socket, "control socket")
	return fs
}

var negNumber = regexp.MustCompile(`^-[0-9]+$`)

// parseArgs parses flags anywhere among args and returns the positional
// arguments in order. "--" ends the flags; "-10" is an argument (a signal).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		// Hand the flag package everything up to the next argument.
		i := 0
		for i < len(args) && (!strings.HasPrefix(args[i], "-") || args[i] == "-" || negNumber.MatchString(args[i])) {
			i++
		}
		pos = append(pos, args[:i]...)
		args = args[i:]
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		consumed := len(args) - len(fs.Args())
		ended := consumed > 0 && args[consumed-1] == "--"
		args = fs.Args()
		if ended {
			pos = append(pos, args...)
			break
		}
	}
	return pos, nil
}

func (c *cli) usageErr(cmd *command, msg string) int {
	if cmd == nil {
		fmt.Fprintf(c.Stderr, "hbctl: %s\nrun 'hbctl help' for usage\n", msg)
	} else {
		fmt.Fprintf(c.Stderr, "hbctl %s: %s\nusage: hbctl %s %s\nrun 'hbctl help %s' for more\n", cmd.name, msg, cmd.name, cmd.synopsis, cmd.name)
	}
	return ExitUsage
}

// fail reports err and returns the exit status for it.
func (c *cli) fail(err error) int {
	name := c.cmd.name
	var ae *api.APIError
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(c.Stderr, "hbctl: %s: interrupted\n", name)
		return ExitInterrupted
	case errors.Is(err, api.ErrUnreachable):
		fmt.Fprintf(c.Stderr, "hbctl: %s: %v\n", name, err)
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			fmt.Fprintf(c.Stderr, "hbctl: run as root, as hbd's user, or as a member of hbd's socket group\n")
		} else {
			fmt.Fprintf(c.Stderr, "hbctl: is hbd running? set -s or HB_SOCKET to its socket\n")
		}
		return ExitUnreachable
	case errors.As(err, &ae):
		msg := ae.Message
		if !strings.HasPrefix(msg, name+":") && !strings.HasPrefix(msg, name+" ") {
			msg = name + ": " + msg // hbd's message names the action itself, mostly
		}
		fmt.Fprintf(c.Stderr, "hbctl: %s\n", msg)
		for _, d := range ae.Details {
			fmt.Fprintf(c.Stderr, "  %s\n", d)
		}
		return ExitFailed
	}
	fmt.Fprintf(c.Stderr, "hbctl: %s: %v\n", name, err)
	return ExitFailed
}

func runHelp(_ context.Context, c *cli, args []string) int {
	switch len(args) {
	case 0:
		fmt.Fprint(c.Stdout, Usage)
		return ExitOK
	case 1:
		cmd := lookup(args[0])
		if cmd == nil {
			return c.usageErr(nil, fmt.Sprintf("unknown command %q", args[0]))
		}
		fmt.Fprint(c.Stdout, cmd.usage())
		return ExitOK
	}
	return c.usageErr(c.cmd, "too many arguments")
}

func runVersion(ctx context.Context, c *cli, args []string) int {
	if len(args) > 0 {
		return c.usageErr(c.cmd, "no arguments expected")
	}
	fmt.Fprintf(c.Stdout, "hbctl %s\n", api.BuildVersion())
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	h, err := c.client.Health(ctx)
	if err != nil && h.PID == 0 {
		fmt.Fprintf(c.Stdout, "hbd   not reachable at %s\n", c.o.socket)
		return ExitOK
	}
	fmt.Fprintf(c.Stdout, "hbd   %s (pid %d) at %s\n", h.Version, h.PID, c.o.socket)
	if p := h.Plugin; p != nil {
		fmt.Fprintf(c.Stdout, "plugin %s (features %d, pid %d)\n", p.Version, p.FeatureVersion, p.PID)
	}
	return ExitOK
}

func runHealth(ctx context.Context, c *cli, args []string) int {
	if len(args) > 0 {
		return c.usageErr(c.cmd, "no arguments expected")
	}
	h, err := c.client.Health(ctx)
	if err != nil && h.PID == 0 {
		return c.fail(err)
	}
	if c.o.json {
		writeJSON(c.Stdout, h)
	} else {
		state := "ok"
		if !h.OK {
			state = "NOT OK: " + h.Error
		}
		if len(h.Fatal) > 0 && !strings.Contains(state, h.Fatal[0]) {
			state += "; fatal: " + strings.Join(h.Fatal, ", ")
		}
		fmt.Fprintf(c.Stdout, "hbd %s (pid %d, %s): %s\n", c.o.socket, h.PID, h.Version, state)
		if p := h.Plugin; p != nil {
			var det []string
			if p.KillTracepoint {
				det = append(det, "kill")
			}
			if p.Tracepoint {
				det = append(det, "tracepoint")
			}
			if p.Connector {
				det = append(det, "connector")
			}
			if p.Pidfd {
				det = append(det, "pidfd")
			}
			if len(det) == 0 {
				det = append(det, "none")
			}
			rt := ""
			if p.DetectorPriority > 0 {
				rt = fmt.Sprintf(" (tracepoint reader SCHED_FIFO %d)", p.DetectorPriority)
			}
			fmt.Fprintf(c.Stdout, "plugin pid %d, table /dev/shm/%s (%d slots), detectors %s%s, adopted %d\n",
				p.PID, p.Shm, p.Slots, strings.Join(det, "+"), rt, p.Adopted)
			if p.Cgroups != "" {
				fmt.Fprintf(c.Stdout, "services contained by %s\n", p.Cgroups)
			}
			if p.KillNote != "" {
				fmt.Fprintln(c.Stdout, p.KillNote)
			}
			if p.ConnectorNote != "" {
				fmt.Fprintln(c.Stdout, p.ConnectorNote)
			}
		}
	}
	if !h.OK {
		return ExitFailed
	}
	return ExitOK
}

// shmTableName returns the table name for `shm`: --name, $HB_SHM, "hb".
func (c *cli) shmTableName() string {
	switch {
	case c.o.shmName != "":
		return c.o.shmName
	case c.Getenv("HB_SHM") != "":
		return c.Getenv("HB_SHM")
	}
	return shm.DefaultName
}
