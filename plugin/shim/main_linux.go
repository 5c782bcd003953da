package shim

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/plugin"
)

const pluginUsage = `Usage: hbd plugin --shm NAME --slots N --detector auto|connector|pidfd|tracepoint
                  [--detector-priority 0..99] --log FILE [--state-dir DIR]
                  [--cgroups auto|off] [--cgroup-root PATH] [--stdio-fds OUT,ERR]
                  [--log-pipes FD]

The hb plugin: hbd starts it (the same binary, in its own session) and talks
to it over go-plugin gRPC. It is not meant to be run by hand.

Environment (inherited from hbd):
  HB_CONNECTOR_RCVBUF=BYTES   receive buffer of the proc connector socket
                              (default 4 MiB; the kernel enforces a small
                              minimum). A testing and tuning knob: a tiny
                              buffer makes the kernel drop exit events
                              (ENOBUFS), which the plugin survives by
                              rescanning every watched process.
  HB_CONNECTOR_FILTER=off     deliver every exit on the machine to the proc
                              connector socket (by default a socket filter
                              passes only the exits of watched processes).
                              A testing knob, like the one above.
`

// ConnectorRcvbufEnv names the environment variable that sets the proc
// connector's receive buffer in bytes (connector.Options.ReadBuffer) for
// `hbd plugin`; hbd's environment is passed on to the plugin. Unset or 0
// means connector.DefaultReadBuffer; a negative value keeps the system
// default. It is a testing and tuning knob: the fault suite sets it tiny to
// force event loss (ENOBUFS) and check that no watched exit is missed.
const ConnectorRcvbufEnv = "HB_CONNECTOR_RCVBUF"

// ConnectorFilterEnv names the environment variable that, set to "off",
// keeps the proc connector socket unfiltered (shim.Options.NoFilter): every
// exit on the machine reaches the plugin. A testing knob: with it, a flood
// of unrelated exits can overflow the socket's buffer.
const ConnectorFilterEnv = "HB_CONNECTOR_FILTER"

// Main is the entry point of `hbd plugin`: it parses the flags hbd passes,
// opens the Shim and serves it to hbd over go-plugin until hbd shuts it down.
func Main(args []string) int {
	connector.ReserveProcs() // before any goroutine of the plugin's own
	fs := flag.NewFlagSet("hbd plugin", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	shmName := fs.String("shm", "hb", "")
	slots := fs.Int("slots", 1024, "")
	det := fs.String("detector", "auto", "")
	prio := fs.Int("detector-priority", 0, "")
	logPath := fs.String("log", "", "")
	stateDir := fs.String("state-dir", "", "")
	level := fs.String("log-level", "info", "")
	cgroups := fs.String("cgroups", "auto", "")
	cgroupRoot := fs.String("cgroup-root", "", "")
	headless := fs.Int("headless-respawns", DefaultHeadlessRespawns, "")
	stdioFds := fs.String("stdio-fds", "", "")
	logPipesFd := fs.Int("log-pipes", -1, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(pluginUsage)
			return 0
		}
		fmt.Fprintf(os.Stderr, "hbd plugin: %v\n\n%s", err, pluginUsage)
		return 2
	}
	detector, err := connector.ParseDetector(*det)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hbd plugin: %v\n", err)
		return 2
	}
	if *prio < 0 || *prio > 99 {
		fmt.Fprintf(os.Stderr, "hbd plugin: --detector-priority %d: out of range 0..99\n", *prio)
		return 2
	}
	if *cgroups != "auto" && *cgroups != "off" {
		fmt.Fprintf(os.Stderr, "hbd plugin: --cgroups %q: want \"auto\" or \"off\"\n", *cgroups)
		return 2
	}
	stdout, stderr, err := takeStdio(*stdioFds)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hbd plugin: --stdio-fds %q: %v\n", *stdioFds, err)
		return 2
	}
	var pipes []plugin.InheritedPipe
	if *logPipesFd >= 0 {
		if pipes, err = plugin.ReadInheritedPipes(*logPipesFd); err != nil {
			fmt.Fprintf(os.Stderr, "hbd plugin: --log-pipes %d: %v\n", *logPipesFd, err)
			return 2
		}
	}
	var logOut io.Writer = os.Stderr
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hbd plugin: %v\n", err)
			return 1
		}
		logOut = f
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(strings.ToLower(*level)))
	if v := os.Getenv(plugin.LogLevelEnv); v != "" {
		_ = lv.UnmarshalText([]byte(v))
	}
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: lv})).With("plugin_pid", os.Getpid())
	rcvbuf := 0
	if v := os.Getenv(ConnectorRcvbufEnv); v != "" {
		if rcvbuf, err = strconv.Atoi(strings.TrimSpace(v)); err != nil {
			fmt.Fprintf(os.Stderr, "hbd plugin: %s=%q: not a number of bytes\n", ConnectorRcvbufEnv, v)
			return 2
		}
	}
	noFilter := false
	switch v := strings.TrimSpace(os.Getenv(ConnectorFilterEnv)); v {
	case "", "on":
	case "off":
		noFilter = true
	default:
		fmt.Fprintf(os.Stderr, "hbd plugin: %s=%q: want \"on\" or \"off\"\n", ConnectorFilterEnv, v)
		return 2
	}
	impl, err := New(Options{ShmName: *shmName, StateDir: *stateDir, Slots: *slots, Detector: detector, Logger: log,
		ReadBuffer: rcvbuf, NoFilter: noFilter, DetectorPriority: *prio,
		Cgroups: *cgroups == "auto", CgroupRoot: *cgroupRoot, HeadlessRespawns: headlessOpt(*headless),
		Stdout: stdout, Stderr: stderr, LogPipes: pipes})
	if err != nil {
		log.Error("plugin start failed", "err", err)
		fmt.Fprintf(os.Stderr, "hbd plugin: %v\n", err)
		return 1
	}
	if err := plugin.Serve(impl, logOut, log); err != nil {
		log.Error("plugin serve", "err", err)
		fmt.Fprintf(os.Stderr, "hbd plugin: %v\n", err)
		return 1
	}
	log.Info("plugin exiting")
	return 0
}

// headlessOpt maps --headless-respawns (0: none) to Options.HeadlessRespawns
// (0: the default, negative: none).
func headlessOpt(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// takeStdio takes over the descriptors "OUT,ERR" hbd passed for the
// services with stdout or stderr = "inherit" (hbd's own stdout and stderr):
// each is duplicated close-on-exec above the standard ones and the original
// closed, so that no service gets it by accident. "" is none.
func takeStdio(spec string) (stdout, stderr *os.File, err error) {
	if spec == "" {
		return nil, nil, nil
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 2 {
		return nil, nil, errors.New("want two descriptors, OUT,ERR")
	}
	var files [2]*os.File
	for i, p := range parts {
		fd, err := strconv.Atoi(p)
		if err != nil || fd < 3 {
			return nil, nil, fmt.Errorf("%q is not a descriptor above 2", p)
		}
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return nil, nil, fmt.Errorf("descriptor %d: %w", fd, err)
		}
		unix.Close(fd)
		files[i] = os.NewFile(uintptr(nfd), []string{"hbd stdout", "hbd stderr"}[i])
	}
	return files[0], files[1], nil
}
