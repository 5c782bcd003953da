package config

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/hbshim/hb/shm"
)

// Validate checks every value of c against the rules of the reference
// (ranges, names, enumerations, the command, backoff_max >= restart_delay)
// and that Order and Services agree. Load and Parse already did; Validate
// is for a Config built or changed in code. The result is nil or [Errors].
func (c *Config) Validate() error {
	errs := c.validate(nil)
	c.sortErrors(errs)
	return errs.orNil()
}

// validate skips the keys in bad: they failed to decode and were reported.
func (c *Config) validate(bad map[string]bool) Errors {
	var errs Errors
	skip := func(svc, key string) bool { return bad[badKey(svc, key)] }

	hbd := func(key string, format string, args ...any) {
		if skip("", "hbd."+key) {
			return
		}
		errs = append(errs, &Error{File: c.Path, Line: c.hbdKeyLine(key), Key: "hbd." + key,
			Msg: fmt.Sprintf(format, args...), Err: ErrValue})
	}
	h := c.HBD
	if err := validShmName(h.Shm); err != "" {
		hbd("shm", "%s", err)
	}
	switch {
	case h.Socket == "":
		hbd("socket", "empty path")
	case len(h.Socket) > SocketPathMax:
		hbd("socket", "path is %d bytes; a unix socket path holds at most %d", len(h.Socket), SocketPathMax)
	}
	if h.StateDir == "" {
		hbd("state_dir", "empty path")
	}
	if h.LogDir == "" {
		hbd("log_dir", "empty path")
	}
	if h.DetectorPriority < 0 || h.DetectorPriority > 99 {
		hbd("detector_priority", "%d is out of range 0..99 (0: an ordinary thread)", h.DetectorPriority)
	}
	if h.Slots < 1 || h.Slots > MaxSlots {
		hbd("slots", "%d is out of range 1..%d", h.Slots, MaxSlots)
	}
	if !slices.Contains(Detectors, h.Detector) {
		hbd("detector", "want \"auto\", \"connector\", \"pidfd\" or \"tracepoint\", got %q", h.Detector)
	}
	if strings.ContainsAny(h.SocketGroup, "\x00:") {
		hbd("socket_group", "%q is not a group name", h.SocketGroup)
	}
	if r := h.CgroupRoot; r != "" && (!strings.HasPrefix(r, "/") || path.Clean(r) != r || strings.ContainsRune(r, 0)) {
		hbd("cgroup_root", "%q is not a clean absolute path in the cgroup hierarchy (as /proc/self/cgroup names one, e.g. \"/hb.slice\")", r)
	}

	for _, name := range c.Order {
		if c.Services[name] == nil {
			errs = append(errs, &Error{File: c.Path, Service: name, Msg: "listed in Order but not in Services", Err: ErrValue})
		}
	}
	if len(c.Order) != len(c.Services) {
		listed := make(map[string]int, len(c.Order))
		for _, n := range c.Order {
			listed[n]++
		}
		for name := range c.Services {
			if listed[name] != 1 {
				errs = append(errs, &Error{File: c.Path, Service: name,
					Msg: fmt.Sprintf("listed %d times in Order, want once", listed[name]), Err: ErrValue})
			}
		}
	}
	for _, name := range c.Order {
		if s := c.Services[name]; s != nil {
			errs = append(errs, s.validate(name, skip)...)
		}
	}
	return append(errs, c.validateAfter(skip)...)
}

// validateAfter checks every after list: names of defined services, not
// the service itself, and no cycle (reported once, at the service of the
// cycle defined first).
func (c *Config) validateAfter(skip func(svc, key string) bool) Errors {
	var errs Errors
	add := func(s *Service, format string, args ...any) {
		errs = append(errs, &Error{File: s.File, Line: s.KeyLine("after"), Service: s.Name, Key: "after",
			Msg: fmt.Sprintf(format, args...), Err: ErrValue})
	}
	for _, name := range c.Order {
		s := c.Services[name]
		if s == nil || skip(name, "after") {
			continue
		}
		for _, dep := range s.After {
			switch {
			case dep == name:
				add(s, "a service cannot start after itself")
			case c.Services[dep] == nil:
				add(s, "unknown service %q (define [service.%s] or remove it from after)", dep, dep)
			}
		}
	}
	// Depth-first search; 1: on the current path, 2: done.
	mark := map[string]int{}
	var path []string
	var visit func(name string) []string
	visit = func(name string) []string {
		switch mark[name] {
		case 1:
			i := slices.Index(path, name)
			return append(slices.Clone(path[i:]), name)
		case 2:
			return nil
		}
		mark[name] = 1
		path = append(path, name)
		if s := c.Services[name]; s != nil {
			for _, dep := range s.After {
				if dep == name || c.Services[dep] == nil {
					continue
				}
				if cyc := visit(dep); cyc != nil {
					return cyc
				}
			}
		}
		path = path[:len(path)-1]
		mark[name] = 2
		return nil
	}
	for _, name := range c.Order {
		if mark[name] != 0 {
			continue
		}
		path = path[:0]
		if cyc := visit(name); cyc != nil {
			add(c.Services[cyc[0]], "cycle: %s (each waits for the next to be running)", strings.Join(cyc, " after "))
			for n, m := range mark {
				if m == 1 {
					mark[n] = 2 // left on the path by the cycle's early return
				}
			}
		}
	}
	return errs
}

// validate checks one service defined under the key name.
func (s *Service) validate(name string, skip func(svc, key string) bool) Errors {
	var errs Errors
	if skip(name, "") {
		return nil
	}
	add := func(key string, sentinel error, format string, args ...any) {
		if key != "" && skip(name, key) {
			return
		}
		line := s.Line
		if key != "" {
			line = s.KeyLine(key)
		}
		errs = append(errs, &Error{File: s.File, Line: line, Service: name, Key: key,
			Msg: fmt.Sprintf(format, args...), Err: sentinel})
	}
	if err := validName(name); err != "" {
		add("", ErrValue, "invalid service name: %s", err)
	}
	if s.Name != name {
		add("", ErrValue, "Name is %q but the service is listed as %q", s.Name, name)
	}

	written := s.keys.has("command")
	switch {
	case len(s.Command) == 0 && !written:
		add("", ErrMissing, "missing required key \"command\"")
	case len(s.Command) == 0:
		add("command", ErrValue, "empty command")
	case s.Command[0] == "":
		add("command", ErrValue, "the program (first word) is empty")
	}
	for i, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			add("command", ErrValue, "argument %d contains a NUL byte", i)
			break
		}
	}
	if strings.IndexByte(s.Directory, 0) >= 0 {
		add("directory", ErrValue, "contains a NUL byte")
	}
	for k, v := range s.Environment {
		key := "environment." + k
		switch {
		case k == "":
			add(key, ErrValue, "empty variable name")
		case strings.ContainsAny(k, "=\x00"):
			add(key, ErrValue, "variable name %q contains '=' or NUL", k)
		case strings.IndexByte(v, 0) >= 0:
			add(key, ErrValue, "value contains a NUL byte")
		}
	}
	for _, id := range []struct{ key, v string }{{"user", s.User}, {"group", s.Group}} {
		if strings.ContainsAny(id.v, "\x00:") {
			add(id.key, ErrValue, "%q is not a name or number", id.v)
		}
	}
	if !s.Restart.Valid() {
		add("restart", ErrValue, "want \"always\", \"on-failure\" or \"never\", got %v", s.Restart)
	}
	for _, d := range []struct {
		key string
		v   int64
	}{
		{"restart_delay", int64(s.RestartDelay)},
		{"start_secs", int64(s.StartWindow)},
		{"backoff_max", int64(s.BackoffMax)},
		{"stop_timeout", int64(s.StopTimeout)},
	} {
		if d.v < 0 {
			add(d.key, ErrValue, "negative duration")
		}
	}
	if s.StopTimeout == 0 {
		add("stop_timeout", ErrValue, "must be more than 0s")
	}
	if s.BackoffMax < s.RestartDelay && s.RestartDelay >= 0 && !skip(name, "restart_delay") {
		add("backoff_max", ErrValue, "%s is less than restart_delay %s", s.BackoffMax, s.RestartDelay)
	}
	if s.StartRetries < 0 {
		add("start_retries", ErrValue, "%d is negative (0 means never give up)", s.StartRetries)
	}
	for i, code := range s.ExitCodes {
		if code < 0 || code > 255 {
			add("exit_codes", ErrValue, "element %d: %d is out of range 0..255", i, code)
		}
	}
	if s.StopSignal < 1 || s.StopSignal > MaxSignal {
		add("stop_signal", ErrValue, "signal %d is out of range 1..%d", int(s.StopSignal), MaxSignal)
	}
	for _, o := range []struct{ key, v string }{{"stdout", s.Stdout}, {"stderr", s.Stderr}} {
		switch o.v {
		case OutputFile, OutputInherit, OutputNull:
		default:
			add(o.key, ErrValue, "want \"file\", \"inherit\" or \"null\", got %q", o.v)
		}
	}
	if s.LogMaxBytes < 0 {
		add("log_max_bytes", ErrValue, "%d is negative (0 means never rotate)", s.LogMaxBytes)
	}
	if s.LogBackups < 0 {
		add("log_backups", ErrValue, "%d is negative", s.LogBackups)
	}
	switch {
	case s.Watchdog < 0:
		add("watchdog", ErrValue, "negative duration (0s or leave it out for no watchdog)")
	case s.Watchdog > 0 && s.Watchdog < MinWatchdog:
		add("watchdog", ErrValue, "%s is shorter than %s (0s: no watchdog)", s.Watchdog, MinWatchdog)
	}
	if s.WatchdogGrace <= 0 {
		add("watchdog_grace", ErrValue, "must be more than 0s (the time a hung service gets to dump core before SIGKILL)")
	}
	switch {
	case s.Ready == ReadySpawn, s.Ready == ReadyNotify, ReadyFDNumber(s.Ready) >= 0:
	default:
		add("ready", ErrValue, "want \"spawn\", \"notify\" or \"fd:N\" with N in %d..%d, got %q", MinReadyFD, MaxReadyFD, s.Ready)
	}
	if s.ReadyTimeout <= 0 {
		add("ready_timeout", ErrValue, "must be more than 0s")
	}
	if s.WatchdogSignal < 1 || s.WatchdogSignal > MaxSignal {
		add("watchdog_signal", ErrValue, "signal %d is out of range 1..%d", int(s.WatchdogSignal), MaxSignal)
	}
	switch s.KillMode {
	case KillCgroup, KillProcessGroup, KillProcess:
	default:
		add("kill_mode", ErrValue, "want \"cgroup\", \"process-group\" or \"process\", got %q", s.KillMode)
	}
	switch {
	case s.Type != TypeSimple && s.Type != TypeForking:
		add("type", ErrValue, "want \"simple\" or \"forking\", got %q", s.Type)
	case s.Type == TypeForking && s.PIDFile == "":
		add("type", ErrValue, "\"forking\" needs pid_file, the file the daemon writes its PID to")
	case s.Type == TypeForking && s.KillMode != KillCgroup:
		add("kill_mode", ErrValue, "type \"forking\" needs kill_mode \"cgroup\" (its processes are told from others by their cgroup)")
	case s.Type == TypeSimple && s.PIDFile != "":
		add("pid_file", ErrValue, "only used with type = \"forking\"")
	}
	validatePlacement(s, add)
	return errs
}

// validName checks a service name (the table's rule): what is wrong, or "".
func validName(name string) string { return shm.NameProblem(name) }

// validShmName checks [hbd] shm: one file name under /dev/shm.
func validShmName(name string) string { return shm.TableNameProblem(name) }
