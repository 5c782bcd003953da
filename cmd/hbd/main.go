// Command hbd is the hb host: it reads the TOML service definitions, starts
// the hb plugin (`hbd plugin`, the same binary re-executed in its own
// session), and supervises the services through it.
//
//	hbd [-c FILE]            run in the foreground, logging to stderr
//	hbd --check [-c FILE]    validate FILE and exit 0, or print every error and exit 1
//	hbd plugin [flags]       the plugin side; started by hbd itself, not by hand
//
// Signals: SIGHUP reloads the configuration; SIGTERM or SIGINT stops every
// service (in reverse order) and the plugin, a second one forces it; SIGQUIT
// exits leaving the plugin and every service running, for the next hbd to
// reattach to.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/hbshim/hb/bridge"
	"github.com/hbshim/hb/host"
	"github.com/hbshim/hb/plugin/shim"
)

// gcPercent is hbd's and the plugin's garbage-collection goal: they hold
// little live memory, and a goal of half the live heap instead of all of it
// keeps them about 3 MiB smaller together with 1000 services, at no cost an
// idle or respawning plugin can measure. GOGC in the environment wins.
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if len(os.Args) > 1 && os.Args[1] == "supervisord-listener" {
		os.Exit(supervisordListener(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "plugin" {
		os.Exit(shim.Main(os.Args[2:]))
	}
	os.Exit(host.Main(os.Args[1:]))
}

// supervisordListener runs `hbd supervisord-listener --socket PATH`, the
// [eventlistener:hb] of contrib/supervisord (docs/bridges.md).
func supervisordListener(args []string) int {
	fs := flag.NewFlagSet("hbd supervisord-listener", flag.ContinueOnError)
	socket := fs.String("socket", "/run/hb/"+shim.ListenerSocket, "the plugin's listener socket: [hbd] state_dir/"+shim.ListenerSocket)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := bridge.RunListener(*socket, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "hbd supervisord-listener:", err)
		return 1
	}
	return 0
}
