package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/hbshim/hb/host/policy"
	"github.com/hbshim/hb/host/signame"
)

// Load reads, decodes and validates the configuration at path and the files
// it includes. A file that cannot be read is a plain error wrapping the
// os error; every problem in the files themselves is reported at once as
// [Errors]. Load does not look up users, groups or executables: see Check.
func Load(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for a main file already in memory; name is its path, used
// in errors, to find the includes (relative to filepath.Dir(name)) and to
// make the relative paths in it absolute.
func Parse(name string, data []byte) (*Config, error) {
	return parse(name, data, osFS{})
}

// fileSystem is what parse reads includes from; tests and the fuzzer use
// an in-memory one.
type fileSystem interface {
	ReadFile(name string) ([]byte, error)
	Glob(pattern string) ([]string, error)
}

type osFS struct{}

func (osFS) ReadFile(name string) ([]byte, error)  { return readConfigFile(name) }
func (osFS) Glob(pattern string) ([]string, error) { return filepath.Glob(pattern) }

// Top-level keys, [hbd] keys and service keys, for "did you mean".
var (
	topKeys     = []string{"include", "hbd", "service", "bridge"}
	hbdKeyNames = []string{"shm", "socket", "state_dir", "log_dir", "slots", "detector", "detector_priority", "socket_group", "cgroup_root", "headless_respawns", "metrics_listen"}
)

// source is one decoded file, kept to find the line of a key on demand.
type source struct {
	file  string
	lines keyLines // from scanKeys; nil when the scan disagreed with the decoder

	mu sync.Mutex // guards md: PrimitiveDecode writes its decoding context
	md toml.MetaData
}

// keyRef is a key of a source: its decoded Primitive and its path.
type keyRef struct {
	p    toml.Primitive
	path toml.Key
}

// child returns the reference to the sub-key name of r, decoded as p.
func (r keyRef) child(name string, p toml.Primitive) keyRef {
	return keyRef{p: p, path: append(append(toml.Key{}, r.path...), name)}
}

// line returns the line where r's key is written, or for a table only
// implied by its sub-keys (a.b.c = 1), the line of the first of those; 0 if
// unknown.
func (s *source) line(r keyRef) int {
	if l := s.lines[r.path.String()]; l > 0 {
		return l
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probe(r.p, 0)
}

// linePin fails on purpose: decoding a Primitive into it makes the TOML
// decoder return a ParseError positioned at that Primitive's key.
type linePin struct{}

var errLinePin = errors.New("line pin")

func (linePin) UnmarshalTOML(any) error { return errLinePin }

// probe finds p's line with the decoder (see lines.go); s.mu is held.
func (s *source) probe(p toml.Primitive, depth int) int {
	var pe toml.ParseError
	if err := s.md.PrimitiveDecode(p, linePin{}); errors.As(err, &pe) && pe.Position.Line > 0 {
		return pe.Position.Line
	}
	var sub map[string]toml.Primitive
	if depth > 8 || s.md.PrimitiveDecode(p, &sub) != nil {
		return 0
	}
	best := 0
	for _, c := range sub {
		if l := s.probe(c, depth+1); l > 0 && (best == 0 || l < best) {
			best = l
		}
	}
	return best
}

// value decodes r as a plain Go value: string, int64, float64, bool,
// time.Time, []any, []map[string]any or map[string]any.
func (s *source) value(r keyRef) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v any
	if err := s.md.PrimitiveDecode(r.p, &v); err != nil {
		return nil
	}
	return v
}

// table decodes r into its sub-keys, and returns their names sorted.
func (s *source) table(r keyRef) (map[string]keyRef, []string, bool) {
	if _, ok := s.value(r).(map[string]any); !ok {
		return nil, nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var m map[string]toml.Primitive
	if err := s.md.PrimitiveDecode(r.p, &m); err != nil {
		return nil, nil, false
	}
	out := make(map[string]keyRef, len(m))
	names := make([]string, 0, len(m))
	for k, p := range m {
		out[k] = r.child(k, p)
		names = append(names, k)
	}
	sort.Strings(names)
	return out, names, true
}

// loader carries one Parse.
type loader struct {
	fsys  fileSystem
	cfg   *Config
	errs  Errors
	bad   map[string]bool // keys that failed to decode: badKey(service, key)
	read  map[string]bool // fileKey of the files read
	logOK bool            // [hbd] log_dir was written
}

func badKey(service, key string) string { return service + "\x00" + key }

// parse decodes and validates, then lets go of what only decoding needed
// (see writtenKeys).
func parse(name string, data []byte, fsys fileSystem) (*Config, error) {
	cfg, err := decode(name, data, fsys)
	if err != nil {
		return nil, err
	}
	cfg.settle()
	return cfg, nil
}

// decode is parse without settle: every key's line is still
// found through the decoder's state.
func decode(name string, data []byte, fsys fileSystem) (*Config, error) {
	l := &loader{
		fsys: fsys,
		cfg: &Config{
			Path:     name,
			Files:    []string{name},
			HBD:      DefaultHBD(),
			Services: map[string]*Service{},
			Bridged:  map[string]*Bridged{},
		},
		bad:  map[string]bool{},
		read: map[string]bool{fileKey(name): true},
	}
	absDir := filepath.Dir(name)
	if a, err := filepath.Abs(absDir); err == nil {
		absDir = a
	}
	h := &l.cfg.HBD
	h.StateDir = absPath(absDir, h.StateDir)
	h.Socket = absPath(absDir, h.Socket)

	l.file(name, data, true)
	l.expandInstances()

	if !l.logOK {
		h.LogDir = filepath.Join(h.StateDir, "log")
	}
	errs := append(l.errs, l.cfg.validate(l.bad)...)
	errs = append(errs, l.cfg.validateBridged()...)
	if len(errs) > 0 {
		l.cfg.sortErrors(errs)
		return nil, errs
	}
	return l.cfg, nil
}

func (l *loader) add(e *Error) { l.errs = append(l.errs, e) }

// addField records a decoding problem err with key of service svc ("" for
// top-level keys) in file src at r's line.
func (l *loader) addField(src *source, r keyRef, svc, key string, err error) {
	l.bad[badKey(svc, key)] = true
	e := &Error{File: src.file, Line: src.line(r), Service: svc, Key: key, Msg: err.Error(), Err: err}
	var fe *fieldError
	if errors.As(err, &fe) {
		e.Err = fe.err
	}
	l.add(e)
}

func (l *loader) unknown(src *source, r keyRef, svc, key, hint string) {
	l.add(&Error{File: src.file, Line: src.line(r), Service: svc, Key: key, Msg: hint, Err: ErrUnknownKey})
}

// file decodes one file: the main one, or an include (services only).
func (l *loader) file(name string, data []byte, main bool) {
	var raw map[string]toml.Primitive
	if line := checkNesting(data); line > 0 {
		l.add(&Error{File: name, Line: line, Msg: fmt.Sprintf("nested more than %d levels deep", MaxNesting), Err: ErrSyntax})
		return
	}
	doc := string(data)
	md, err := toml.Decode(doc, &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			l.add(&Error{File: name, Line: pe.Position.Line, Msg: pe.Message, Err: ErrSyntax})
		} else {
			l.add(&Error{File: name, Msg: err.Error(), Err: ErrSyntax})
		}
		return
	}
	src := &source{file: name, md: md, lines: newKeyLines(doc, md)}
	dir := filepath.Dir(name)
	absDir := dir
	if a, err := filepath.Abs(dir); err == nil {
		absDir = a
	}

	// Top-level keys in the order they first appear.
	var order []string
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if !seen[k[0]] {
			seen[k[0]] = true
			order = append(order, k[0])
		}
	}
	var includes keyRef
	haveIncludes := false
	for _, key := range order {
		r := keyRef{p: raw[key], path: toml.Key{key}}
		switch {
		case key == "service":
			l.services(src, r, absDir)
		case main && key == "include":
			includes, haveIncludes = r, true
		case main && key == "hbd":
			l.hbd(src, r, absDir)
		case main && key == "bridge":
			l.bridges(src, r, absDir)
		case !main:
			l.unknown(src, r, "", key, "an included file holds [service.NAME] tables only")
		default:
			l.unknown(src, r, "", key, suggest(key, topKeys))
		}
	}
	if haveIncludes {
		l.includes(src, includes, dir)
	}
}

// includes reads the files matched by the include globs, in order; a file
// matched twice (or the main file) is read once. Included files cannot
// include further.
func (l *loader) includes(src *source, r keyRef, dir string) {
	var patterns []string
	switch v := src.value(r).(type) {
	case string:
		patterns = []string{v}
	case []any:
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				l.addField(src, r, "", "include", typeErr(fmt.Sprintf("a string at element %d", i), e))
				return
			}
			patterns = append(patterns, s)
		}
	default:
		l.addField(src, r, "", "include", typeErr("an array of glob strings", v))
		return
	}
	for _, pat := range patterns {
		if pat == "" {
			l.addField(src, r, "", "include", valueErr("empty glob"))
			continue
		}
		if !filepath.IsAbs(pat) {
			pat = filepath.Join(dir, pat)
		}
		matches, err := l.fsys.Glob(pat)
		if err != nil {
			l.addField(src, r, "", "include", &fieldError{ErrInclude, fmt.Sprintf("glob %q: %v", pat, err)})
			continue
		}
		sort.Strings(matches)
		for _, m := range matches {
			if l.read[fileKey(m)] {
				continue
			}
			l.read[fileKey(m)] = true
			data, err := l.fsys.ReadFile(m)
			if errors.Is(err, syscall.EISDIR) {
				continue
			}
			if err != nil {
				l.addField(src, r, "", "include", &fieldError{ErrInclude, err.Error()})
				continue
			}
			l.cfg.Files = append(l.cfg.Files, m)
			l.file(m, data, false)
		}
	}
}

// fileKey identifies a file for "read once": its absolute, clean path.
func fileKey(name string) string {
	if a, err := filepath.Abs(name); err == nil {
		return a
	}
	return filepath.Clean(name)
}

func absPath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

func (l *loader) hbd(src *source, r keyRef, absDir string) {
	keys, names, ok := src.table(r)
	if !ok {
		l.addField(src, r, "", "hbd", typeErr("a table", src.value(r)))
		return
	}
	c := l.cfg
	c.hbdKeys = newWrittenKeys(src, keys)
	c.hbdLine = src.line(r)
	h := &c.HBD
	for _, k := range names {
		kr := keys[k]
		v := src.value(kr)
		var err error
		switch k {
		case "shm":
			h.Shm, err = wantString(v)
		case "socket":
			h.Socket, err = wantPath(v, absDir)
		case "state_dir":
			h.StateDir, err = wantPath(v, absDir)
		case "log_dir":
			h.LogDir, err = wantPath(v, absDir)
			l.logOK = err == nil
		case "slots":
			var n int64
			if n, err = wantInt(v); err == nil {
				if n < 1 || n > MaxSlots {
					err = valueErr("%d is out of range 1..%d", n, MaxSlots)
				} else {
					h.Slots = int(n)
				}
			}
		case "detector_priority":
			var n int64
			if n, err = wantInt(v); err == nil {
				if n < 0 || n > 99 {
					err = valueErr("%d is out of range 0..99 (0: an ordinary thread)", n)
				} else {
					h.DetectorPriority = int(n)
				}
			}
		case "headless_respawns":
			var n int64
			if n, err = wantInt(v); err == nil {
				if n < 0 || n > math.MaxInt32 {
					err = valueErr("%d is out of range 0..%d (0: none)", n, math.MaxInt32)
				} else {
					h.HeadlessRespawns = int(n)
				}
			}
		case "detector":
			h.Detector, err = wantString(v)
		case "socket_group":
			h.SocketGroup, err = wantID(v)
		case "cgroup_root":
			h.CgroupRoot, err = wantString(v)
		case "metrics_listen":
			if h.MetricsListen, err = wantString(v); err == nil {
				err = checkListen(h.MetricsListen)
			}
		default:
			c.hbdKeys.remove(k)
			l.unknown(src, kr, "", "hbd."+k, suggest(k, hbdKeyNames))
			continue
		}
		if err != nil {
			l.addField(src, kr, "", "hbd."+k, err)
		}
	}
}

// services decodes the [service] table: one [service.NAME] table each.
func (l *loader) services(src *source, r keyRef, absDir string) {
	tables, _, ok := src.table(r)
	if !ok {
		l.addField(src, r, "", "service", typeErr("a table of [service.NAME] tables", src.value(r)))
		return
	}
	// Definition order: first appearance of service.NAME in the file.
	var order []string
	seen := map[string]bool{}
	for _, k := range src.md.Keys() {
		if len(k) >= 2 && k[0] == "service" && !seen[k[1]] {
			seen[k[1]] = true
			order = append(order, k[1])
		}
	}
	for _, name := range order {
		if tr, ok := tables[name]; ok {
			l.service(src, name, tr, absDir)
		}
	}
}

// serviceKeyNames are the keys of a [service.NAME] table.
var serviceKeyNames = []string{
	"command", "directory", "environment", "user", "group", "restart", "restart_delay",
	"start_secs", "start_retries", "backoff_max", "exit_codes", "stop_signal", "stop_timeout",
	"autostart", "stdout", "stderr", "log_max_bytes", "log_backups",
	"log_timestamps", "log_direct", "watchdog", "watchdog_signal", "watchdog_grace", "ready", "ready_timeout", "after",
	"kill_mode", "type", "pid_file", "cpus", "nice", "sched", "rlimits", "umask",
	"memory_max", "pids_max", "cpu_weight", "instances", "instance_start",
}

func (l *loader) service(src *source, name string, r keyRef, absDir string) {
	line := src.line(r)
	keys, names, ok := src.table(r)
	if !ok {
		l.bad[badKey(name, "")] = true
		l.add(&Error{File: src.file, Line: line, Service: name,
			Msg: "want a [service." + name + "] table, got " + describe(src.value(r)), Err: ErrType})
		return
	}
	if prev, dup := l.cfg.Services[name]; dup {
		l.add(&Error{File: src.file, Line: line, Service: name, Err: ErrDuplicate,
			Msg: fmt.Sprintf("defined twice: here and at %s:%d", prev.File, prev.Line)})
		return
	}
	s := DefaultService(name)
	s.File, s.Line, s.keys = src.file, line, newWrittenKeys(src, keys)
	l.cfg.Services[name] = s
	l.cfg.Order = append(l.cfg.Order, name)

	for _, k := range names {
		kr := keys[k]
		if k == "environment" {
			l.environment(src, s, kr)
			continue
		}
		v := src.value(kr)
		var err error
		switch k {
		case "instances":
			if s.Instances, err = wantCount(v); err == nil && (s.Instances < 1 || s.Instances > MaxInstances) {
				err = valueErr("%d is out of range 1..%d", s.Instances, MaxInstances)
			}
		case "instance_start":
			if s.InstanceStart, err = wantCount(v); err == nil && s.InstanceStart < 0 {
				err = valueErr("%d is negative", s.InstanceStart)
			}
		case "command":
			s.Command, err = wantCommand(v)
		case "directory":
			s.Directory, err = wantPath(v, absDir)
		case "user":
			s.User, err = wantID(v)
		case "group":
			s.Group, err = wantID(v)
		case "restart":
			var str string
			if str, err = wantString(v); err == nil {
				s.Restart, err = policy.ParseRestart(str)
				if err != nil {
					err = valueErr("want \"always\", \"on-failure\" or \"never\", got %q", str)
				}
			}
		case "restart_delay":
			s.RestartDelay, err = wantDuration(v)
		case "start_secs":
			s.StartWindow, err = wantDuration(v)
		case "backoff_max":
			s.BackoffMax, err = wantDuration(v)
		case "stop_timeout":
			s.StopTimeout, err = wantDuration(v)
		case "start_retries":
			s.StartRetries, err = wantCount(v)
		case "log_backups":
			s.LogBackups, err = wantCount(v)
		case "exit_codes":
			s.ExitCodes, err = wantInts(v)
		case "stop_signal":
			s.StopSignal, err = wantSignal(v)
		case "autostart":
			s.Autostart, err = wantBool(v)
		case "stdout":
			s.Stdout, err = wantString(v)
		case "stderr":
			s.Stderr, err = wantString(v)
		case "log_max_bytes":
			s.LogMaxBytes, err = wantSize(v)
		case "log_timestamps":
			s.LogTimestamps, err = wantBool(v)
		case "log_direct":
			s.LogDirect, err = wantBool(v)
		case "watchdog":
			s.Watchdog, err = wantDuration(v)
		case "watchdog_signal":
			s.WatchdogSignal, err = wantSignal(v)
		case "watchdog_grace":
			s.WatchdogGrace, err = wantDuration(v)
		case "ready":
			s.Ready, err = wantString(v)
		case "ready_timeout":
			s.ReadyTimeout, err = wantDuration(v)
		case "after":
			s.After, err = wantNames(v)
		case "kill_mode":
			s.KillMode, err = wantString(v)
		case "type":
			s.Type, err = wantString(v)
		case "pid_file":
			s.PIDFile, err = wantPath(v, absDir)
		case "cpus":
			s.CPUs, err = wantString(v)
		case "nice":
			var n int64
			if n, err = wantInt(v); err == nil {
				s.Nice, s.SetNice = int(n), true
			}
		case "sched":
			s.Sched, err = wantString(v)
		case "rlimits":
			s.Rlimits, err = wantRlimits(v)
		case "umask":
			s.Umask, err = wantString(v)
		case "memory_max":
			s.MemoryMax, err = wantMax(v, true)
		case "pids_max":
			s.PidsMax, err = wantMax(v, false)
		case "cpu_weight":
			var n int64
			if n, err = wantInt(v); err == nil {
				if n < 1 || n > 10000 {
					err = valueErr("%d is out of range 1..10000", n)
				} else {
					s.CPUWeight = int(n)
				}
			}
		default:
			s.keys.remove(k)
			l.unknown(src, kr, name, k, suggest(k, serviceKeyNames))
			continue
		}
		if err != nil {
			l.addField(src, kr, name, k, err)
		}
	}
}

// environment decodes environment = { NAME = "value", ... }, keeping each
// variable's reference as keys["environment.NAME"].
func (l *loader) environment(src *source, s *Service, r keyRef) {
	vars, names, ok := src.table(r)
	if !ok {
		l.addField(src, r, s.Name, "environment", typeErr("a table of strings", src.value(r)))
		return
	}
	for _, k := range names {
		vr := vars[k]
		s.keys.add("environment."+k, vr)
		v, err := wantString(src.value(vr))
		if err != nil {
			l.addField(src, vr, s.Name, "environment."+k, err)
			continue
		}
		s.Environment[k] = v
	}
}

// checkListen accepts "" or a TCP address HOST:PORT with a numeric port
// (HOST may be empty: every address; port 0: any free port, which hbd's
// log names).
func checkListen(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return valueErr("%q is not HOST:PORT (\"127.0.0.1:9464\", \"[::1]:9464\")", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return valueErr("%q: port %q is not a number 0..65535", addr, port)
	}
	return nil
}

func wantString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", typeErr("a string", v)
	}
	return s, nil
}

func wantBool(v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, typeErr("a boolean (true or false)", v)
	}
	return b, nil
}

func wantInt(v any) (int64, error) {
	n, ok := v.(int64)
	if !ok {
		return 0, typeErr("an integer", v)
	}
	return n, nil
}

// wantCount decodes a non-negative count; the range is checked by Validate.
func wantCount(v any) (int, error) {
	n, err := wantInt(v)
	if err != nil {
		return 0, err
	}
	if n > math.MaxInt32 || n < math.MinInt32 {
		return 0, valueErr("%d is out of range", n)
	}
	return int(n), nil
}

// wantPath decodes a path, made absolute against dir when relative.
func wantPath(v any, dir string) (string, error) {
	s, err := wantString(v)
	if err != nil {
		return "", err
	}
	return absPath(dir, s), nil
}

// wantID decodes a user or group: a name, or a number written either way.
func wantID(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		if v < 0 || v > math.MaxUint32-1 {
			return "", valueErr("id %d is out of range 0..%d", v, uint32(math.MaxUint32-1))
		}
		return strconv.FormatInt(v, 10), nil
	}
	return "", typeErr("a name or a number", v)
}

// wantDuration decodes a duration string ("1.5s", "100ms", "2m").
func wantDuration(v any) (time.Duration, error) {
	s, ok := v.(string)
	if !ok {
		if n, isInt := v.(int64); isInt {
			return 0, typeErr(fmt.Sprintf("a duration string such as \"%ds\"", n), v)
		}
		return 0, typeErr("a duration string such as \"1s\" or \"250ms\"", v)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, valueErr("%q is not a duration (use a number with a unit: ns, us, ms, s, m, h)", s)
	}
	return d, nil
}

func wantCommand(v any) ([]string, error) {
	switch v := v.(type) {
	case string:
		return splitCommand(v)
	case []any:
		argv := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, typeErr(fmt.Sprintf("strings only, element %d", i), e)
			}
			argv[i] = s
		}
		return argv, nil
	}
	return nil, typeErr("an array of strings or a command line string", v)
}

// wantNames decodes an array of service names.
func wantNames(v any) ([]string, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, typeErr("an array of service names", v)
	}
	out := make([]string, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			return nil, typeErr(fmt.Sprintf("service names (strings) only, element %d", i), e)
		}
		out[i] = s
	}
	return out, nil
}

func wantInts(v any) ([]int, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, typeErr("an array of integers", v)
	}
	out := make([]int, len(a))
	for i, e := range a {
		n, ok := e.(int64)
		if !ok {
			return nil, typeErr(fmt.Sprintf("integers only, element %d", i), e)
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return nil, valueErr("element %d: %d is out of range 0..255", i, n)
		}
		out[i] = int(n)
	}
	return out, nil
}

// wantSignal decodes "TERM", "SIGTERM", "term", "15" or 15.
func wantSignal(v any) (syscall.Signal, error) {
	switch v := v.(type) {
	case int64:
		if v < 1 || v > MaxSignal {
			return 0, valueErr("signal %d is out of range 1..%d", v, MaxSignal)
		}
		return syscall.Signal(v), nil
	case string:
		return ParseSignal(v)
	}
	return 0, typeErr("a signal name such as \"TERM\" or a number", v)
}

// ParseSignal parses a signal as stop_signal accepts it (signame.Parse).
func ParseSignal(s string) (syscall.Signal, error) {
	sig, err := signame.Parse(s)
	if err != nil {
		return 0, valueErr("%s", strings.TrimPrefix(err.Error(), signame.ErrSyntax.Error()+": "))
	}
	return sig, nil
}

// sizeUnits are log_max_bytes suffixes, case-insensitive; all are powers of 1024.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30},
	{"b", 1},
}

// wantSize decodes a byte count: an integer, or a string such as "10MiB".
func wantSize(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		return v, nil
	case string:
		return ParseSize(v)
	}
	return 0, typeErr("a byte count (integer) or a size string such as \"10MiB\"", v)
}

// ParseSize parses a size as log_max_bytes accepts it: a whole number of
// bytes with an optional unit B, KiB, MiB or GiB (also K/KB, M/MB, G/GB,
// any case; every multiple is a power of 1024), e.g. "10MiB", "512k", "4096".
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, valueErr("%q is not a size (use a whole number of bytes, or with KiB, MiB or GiB: \"10MiB\")", s)
	}
	if n > math.MaxInt64/mult {
		return 0, valueErr("%q is too large", s)
	}
	return n * mult, nil
}

// MaxInstances is the largest instances of a service.
const MaxInstances = 4096

// InstanceVar is the environment variable that holds an instance's number.
const InstanceVar = "HB_INSTANCE"

// expandInstances replaces every service with instances = N by N services
// NAME-S … NAME-(S+N-1) (S: instance_start), each with HB_INSTANCE and
// {instance} replaced by its number in command, environment and directory,
// in the place of NAME in the start order. An after naming NAME means all
// of its instances.
func (l *loader) expandInstances() {
	c := l.cfg
	var order []string
	for _, name := range c.Order {
		s := c.Services[name]
		if s == nil || !s.keys.has("instances") {
			if s != nil && s.keys.has("instance_start") && !l.bad[badKey(name, "instance_start")] {
				l.add(&Error{File: s.File, Line: s.KeyLine("instance_start"), Service: name, Key: "instance_start",
					Msg: "instance_start without instances", Err: ErrValue})
			}
			order = append(order, name)
			continue
		}
		if l.bad[badKey(name, "instances")] {
			order = append(order, name)
			continue
		}
		delete(c.Services, name)
		if c.InstanceGroups == nil {
			c.InstanceGroups = map[string][]string{}
		}
		for i := s.InstanceStart; i < s.InstanceStart+s.Instances; i++ {
			n := fmt.Sprintf("%s-%d", name, i)
			if prev, dup := c.Services[n]; dup {
				l.add(&Error{File: s.File, Line: s.KeyLine("instances"), Service: name, Key: "instances", Err: ErrDuplicate,
					Msg: fmt.Sprintf("instance %q is also defined at %s:%d", n, prev.File, prev.Line)})
				continue
			}
			c.Services[n] = s.instance(n, i)
			for k := range l.bad {
				if svc, key, _ := strings.Cut(k, "\x00"); svc == name {
					l.bad[badKey(n, key)] = true
				}
			}
			order = append(order, n)
			c.InstanceGroups[name] = append(c.InstanceGroups[name], n)
		}
	}
	c.Order = order
	if len(c.InstanceGroups) == 0 {
		return
	}
	for _, s := range c.Services {
		var after []string
		for _, dep := range s.After {
			if g, ok := c.InstanceGroups[dep]; ok {
				after = append(after, g...)
			} else {
				after = append(after, dep)
			}
		}
		s.After = after
	}
}

// instance is the copy of s that is its instance number i, named name.
func (s *Service) instance(name string, i int) *Service {
	n := *s
	sub := func(v string) string { return strings.ReplaceAll(v, "{instance}", strconv.Itoa(i)) }
	n.Name, n.InstanceOf, n.Instance = name, s.Name, i
	// The count is the group's: changing it adds or removes instances and
	// leaves the others as they are (a reload restarts none of them).
	n.Instances, n.InstanceStart = 0, 0
	n.Command = make([]string, len(s.Command))
	for j, a := range s.Command {
		n.Command[j] = sub(a)
	}
	n.Directory = sub(s.Directory)
	n.Environment = make(map[string]string, len(s.Environment)+1)
	for k, v := range s.Environment {
		n.Environment[k] = sub(v)
	}
	n.Environment[InstanceVar] = strconv.Itoa(i)
	n.After = slices.Clone(s.After)
	return &n
}
