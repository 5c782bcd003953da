package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hbshim/hb/bridge"
)

// Bridged is one program another process manager runs that hb watches
// (docs/bridges.md): from [bridge.runit], [bridge.s6] or
// [bridge.supervisord].
type Bridged struct {
	Name    string // the slot's name
	Manager string // bridge.Runit, bridge.S6, bridge.Supervisord
	Dir     string // runit, s6: the service directory
	URL     string // supervisord: server_url
	Process string // supervisord: group:name
	File    string // the file and line of its [bridge.MANAGER] table
	Line    int
}

// BridgeSource is a [bridge.MANAGER] table without programs: every program
// of the manager, as they come and go (docs/bridges.md). The plugin finds
// them: the service directories in Dir (runit, s6), the processes
// supervisord at URL has.
type BridgeSource struct {
	Manager string
	Dir     string // runit, s6: the scan directory
	URL     string // supervisord: server_url
	File    string // the file and line of its [bridge.MANAGER] table
	Line    int
}

// Where is the source's directory or server_url.
func (s *BridgeSource) Where() string { return s.Dir + s.URL }

// bridges decodes the [bridge] table: [bridge.runit], [bridge.s6],
// [bridge.supervisord].
func (l *loader) bridges(src *source, r keyRef, absDir string) {
	tables, names, ok := src.table(r)
	if !ok {
		l.addField(src, r, "", "bridge", typeErr("a table of [bridge.MANAGER] tables", src.value(r)))
		return
	}
	for _, mgr := range names {
		tr := tables[mgr]
		if !bridge.Known(mgr) {
			l.unknown(src, tr, "", "bridge."+mgr, "want [bridge.runit], [bridge.s6] or [bridge.supervisord]")
			continue
		}
		l.bridge(src, mgr, tr, absDir)
	}
}

func (l *loader) bridge(src *source, mgr string, r keyRef, absDir string) {
	line := src.line(r)
	keys, names, ok := src.table(r)
	if !ok {
		l.addField(src, r, "", "bridge."+mgr, typeErr("a table", src.value(r)))
		return
	}
	var dir, url string
	var programs []string
	havePrograms := false
	programsLine := line
	fail := func(kr keyRef, key string, err error) { l.addField(src, kr, "", "bridge."+mgr+"."+key, err) }
	for _, k := range names {
		kr := keys[k]
		v := src.value(kr)
		var err error
		switch {
		case k == "dir" && mgr != bridge.Supervisord:
			dir, err = wantPath(v, absDir)
		case k == "server_url" && mgr == bridge.Supervisord:
			if url, err = wantString(v); err == nil {
				if !strings.HasPrefix(url, "unix:///") && !strings.HasPrefix(url, "http://") {
					err = valueErr("%q: want unix:///PATH (supervisord's [unix_http_server] file) or http://HOST:PORT", url)
				} else if _, serr := bridge.NewSupervisor(url); serr != nil {
					err = valueErr("%v", serr)
				}
			}
		case k == "programs":
			programs, err = wantStrings(v)
			havePrograms, programsLine = err == nil, src.line(kr)
		default:
			want := "dir, programs"
			if mgr == bridge.Supervisord {
				want = "server_url, programs"
			}
			l.unknown(src, kr, "", "bridge."+mgr+"."+k, "[bridge."+mgr+"] takes "+want)
			continue
		}
		if err != nil {
			fail(kr, k, err)
			return
		}
	}
	at := func(ln int, key, format string, args ...any) {
		l.add(&Error{File: src.file, Line: ln, Key: "bridge." + mgr + "." + key, Msg: fmt.Sprintf(format, args...), Err: ErrValue})
	}
	switch mgr {
	case bridge.Supervisord:
		if url == "" {
			at(line, "server_url", "missing: supervisord's serverurl, e.g. \"unix:///run/supervisor.sock\"")
			return
		}
		if havePrograms && len(programs) == 0 {
			at(programsLine, "programs", "empty: name the supervisord programs hb watches, as \"name\" or \"group:name\", or leave programs out to watch every one")
			return
		}
		if !havePrograms {
			l.cfg.BridgeSources = append(l.cfg.BridgeSources, &BridgeSource{Manager: mgr, URL: url, File: src.file, Line: line})
			return
		}
	default:
		if dir == "" {
			at(line, "dir", "missing: the directory that holds the service directories (e.g. /etc/service)")
			return
		}
		if !havePrograms {
			// Every service directory there, as they come and go: the
			// plugin watches dir.
			if _, err := os.ReadDir(dir); err != nil {
				at(line, "dir", "%v (list programs = [...] to bridge a directory that is not there yet)", err)
				return
			}
			for _, o := range l.cfg.BridgeSources {
				if o.Dir == dir {
					at(line, "dir", "%s is also [bridge.%s]'s dir (%s:%d): one scan directory has one manager", dir, o.Manager, o.File, o.Line)
					return
				}
			}
			l.cfg.BridgeSources = append(l.cfg.BridgeSources, &BridgeSource{Manager: mgr, Dir: dir, File: src.file, Line: line})
			return
		}
	}
	for _, p := range programs {
		b := &Bridged{Name: p, Manager: mgr, File: src.file, Line: programsLine}
		if mgr == bridge.Supervisord {
			group, name, ok := strings.Cut(p, ":")
			if !ok {
				group, name = p, p
			}
			b.Name, b.URL, b.Process = name, url, group+":"+name
		} else {
			if strings.ContainsRune(p, '/') || p == "." || p == ".." {
				at(programsLine, "programs", "%q is not a service directory's name", p)
				continue
			}
			b.Dir = filepath.Join(dir, p)
		}
		if msg := validName(b.Name); msg != "" {
			at(programsLine, "programs", "%q cannot name a slot: %s", b.Name, msg)
			continue
		}
		if o := l.cfg.Bridged[b.Name]; o != nil {
			at(programsLine, "programs", "%q is bridged twice (also from [bridge.%s] at %s:%d)", b.Name, o.Manager, o.File, o.Line)
			continue
		}
		l.cfg.Bridged[b.Name] = b
		l.cfg.BridgedOrder = append(l.cfg.BridgedOrder, b.Name)
	}
}

func wantStrings(v any) ([]string, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, typeErr("an array of strings", v)
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok || s == "" {
			return nil, valueErr("element %d: want a non-empty string, got %s", i, describe(e))
		}
		out = append(out, s)
	}
	return out, nil
}

// validateBridged reports a bridged program that has the name of a
// service: both would own one slot.
func (c *Config) validateBridged() Errors {
	var errs Errors
	for _, name := range c.BridgedOrder {
		b := c.Bridged[name]
		if s := c.Services[name]; s != nil {
			errs = append(errs, &Error{File: b.File, Line: b.Line, Key: "bridge." + b.Manager + ".programs",
				Msg: fmt.Sprintf("%q is also [service.%s] (%s:%d): a slot has one owner; rename one of them", name, name, s.File, s.Line),
				Err: ErrValue})
		}
	}
	return errs
}

// checkBridges vets, for --check, each scan directory of a [bridge.runit]
// or [bridge.s6] without programs as the plugin will: root's (or hbd's
// user's) and writable by nobody else, nor any directory above it.
func (c *Config) checkBridges() Errors {
	var errs Errors
	for _, s := range c.BridgeSources {
		if s.Dir == "" {
			continue
		}
		if err := bridge.CheckTrusted(s.Dir); err != nil {
			errs = append(errs, &Error{File: s.File, Line: s.Line, Key: "bridge." + s.Manager + ".dir",
				Msg: fmt.Sprintf("%v (hb would bridge nothing from it)", err), Err: ErrValue})
		}
	}
	return errs
}

// BridgeNotes says, for --check, what the [bridge.runit] and [bridge.s6]
// tables without programs find in their scan directories now: how many
// service directories, and each one not bridged because a [service.NAME]
// or a listed program has its name (the explicit one wins).
func (c *Config) BridgeNotes() []string {
	var notes []string
	for _, s := range c.BridgeSources {
		if s.Dir == "" {
			notes = append(notes, fmt.Sprintf("%s:%d: [bridge.%s] watches every program of %s", s.File, s.Line, s.Manager, s.URL))
			continue
		}
		ents, err := os.ReadDir(s.Dir)
		if err != nil {
			continue
		}
		var names []string
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, ".") {
				continue
			}
			if fi, err := os.Stat(filepath.Join(s.Dir, n)); err != nil || !fi.IsDir() {
				continue
			}
			if _, err := os.Lstat(filepath.Join(s.Dir, n, "run")); err != nil {
				continue
			}
			names = append(names, n)
		}
		sort.Strings(names)
		notes = append(notes, fmt.Sprintf("%s:%d: [bridge.%s] watches %s: %d service directories there now", s.File, s.Line, s.Manager, s.Dir, len(names)))
		for _, n := range names {
			if svc := c.Services[n]; svc != nil {
				notes = append(notes, fmt.Sprintf("%s:%d: [bridge.%s] %s is not bridged: [service.%s] (%s:%d) has the name and wins",
					s.File, s.Line, s.Manager, filepath.Join(s.Dir, n), n, svc.File, svc.Line))
			} else if b := c.Bridged[n]; b != nil {
				notes = append(notes, fmt.Sprintf("%s:%d: [bridge.%s] %s is not bridged: [bridge.%s] lists %q (%s:%d) and wins",
					s.File, s.Line, s.Manager, filepath.Join(s.Dir, n), b.Manager, n, b.File, b.Line))
			}
		}
	}
	return notes
}
