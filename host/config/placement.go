package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin/cgroupfs"
)

// Placement and limits of a service ([service] cpus, nice, sched,
// rlimits, umask): what the plugin's spawner sets in the child before it
// execs (see docs/cgroups.md).

// RlimitSetting is one entry of [service] rlimits: a resource by its name
// (RlimitNames) and the value both its soft and hard limits get
// (RlimitUnlimited: no limit).
type RlimitSetting struct {
	Name  string
	Value uint64
}

// SCHED_* (sched(7)).
const (
	schedOther = 0
	schedFIFO  = 1
	schedRR    = 2
	schedBatch = 3
	schedIdle  = 5
)

// RlimitUnlimited is the value of an "unlimited" rlimit (RLIM_INFINITY).
const RlimitUnlimited = math.MaxUint64

// RlimitNames maps the names rlimits accepts to RLIMIT_* numbers.
var RlimitNames = map[string]int{
	"as": unix.RLIMIT_AS, "core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU, "data": unix.RLIMIT_DATA,
	"fsize": unix.RLIMIT_FSIZE, "locks": unix.RLIMIT_LOCKS, "memlock": unix.RLIMIT_MEMLOCK,
	"msgqueue": unix.RLIMIT_MSGQUEUE, "nice": unix.RLIMIT_NICE, "nofile": unix.RLIMIT_NOFILE,
	"nproc": unix.RLIMIT_NPROC, "rss": unix.RLIMIT_RSS, "rtprio": unix.RLIMIT_RTPRIO,
	"rttime": unix.RLIMIT_RTTIME, "sigpending": unix.RLIMIT_SIGPENDING, "stack": unix.RLIMIT_STACK,
}

// ParseCPUs parses a CPU list as cpus accepts it ("2-3", "0,2,4-7") into
// its CPU numbers, ascending, each once.
func ParseCPUs(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= 1<<16 {
			return nil, fmt.Errorf("%q is not a CPU list (e.g. \"2-3\" or \"0,2,4-7\")", s)
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ParseSched parses sched ("other", "batch", "idle", "fifo:N", "rr:N"
// with N 1..99) into a SCHED_* policy and priority.
func ParseSched(s string) (policy, priority int, err error) {
	name, prio, hasPrio := strings.Cut(s, ":")
	switch name {
	case "other", "batch", "idle":
		if hasPrio {
			return 0, 0, fmt.Errorf("%q: %s takes no priority", s, name)
		}
		return map[string]int{"other": schedOther, "batch": schedBatch, "idle": schedIdle}[name], 0, nil
	case "fifo", "rr":
		n, err := strconv.Atoi(prio)
		if !hasPrio || err != nil || n < 1 || n > 99 {
			return 0, 0, fmt.Errorf("%q: %s needs a priority 1..99, e.g. \"%s:10\"", s, name, name)
		}
		if name == "fifo" {
			return schedFIFO, n, nil
		}
		return schedRR, n, nil
	}
	return 0, 0, fmt.Errorf("want \"other\", \"batch\", \"idle\", \"fifo:N\" or \"rr:N\", got %q", s)
}

// ParseUmask parses umask ("022", "0027": octal) into its bits.
func ParseUmask(s string) (int, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("%q is not an octal umask 000..777 (e.g. \"022\")", s)
	}
	return int(n), nil
}

// wantRlimits decodes rlimits = { nofile = 65536, memlock = "unlimited" }.
func wantRlimits(v any) ([]RlimitSetting, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, typeErr("a table of limits, e.g. { nofile = 65536, memlock = \"unlimited\" }", v)
	}
	var out []RlimitSetting
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}) {
		if _, ok := RlimitNames[name]; !ok {
			return nil, valueErr("unknown limit %q (known: %s)", name, strings.Join(slices.Sorted(func(yield func(string) bool) {
				for k := range RlimitNames {
					if !yield(k) {
						return
					}
				}
			}), ", "))
		}
		switch x := m[name].(type) {
		case int64:
			if x < 0 {
				return nil, valueErr("%s = %d is negative", name, x)
			}
			out = append(out, RlimitSetting{Name: name, Value: uint64(x)})
		case string:
			if x != "unlimited" {
				return nil, valueErr("%s = %q: want a number or \"unlimited\"", name, x)
			}
			out = append(out, RlimitSetting{Name: name, Value: RlimitUnlimited})
		default:
			return nil, typeErr(fmt.Sprintf("%s: a number or \"unlimited\"", name), x)
		}
	}
	return out, nil
}

// validatePlacement checks the placement keys of s (add as in Validate).
func validatePlacement(s *Service, add func(key string, sentinel error, format string, args ...any)) {
	if s.CPUs != "" {
		if _, err := ParseCPUs(s.CPUs); err != nil {
			add("cpus", ErrValue, "%v", err)
		}
	}
	if s.SetNice && (s.Nice < -20 || s.Nice > 19) {
		add("nice", ErrValue, "%d is out of range -20..19", s.Nice)
	}
	if s.Sched != "" {
		if _, _, err := ParseSched(s.Sched); err != nil {
			add("sched", ErrValue, "%v", err)
		}
	}
	if s.Umask != "" {
		if _, err := ParseUmask(s.Umask); err != nil {
			add("umask", ErrValue, "%v", err)
		}
	}
}

// checkPlacement is what --check finds about s's placement on this
// machine: CPUs that are not online.
func checkPlacement(s *Service, fail func(key string, sentinel error, format string, args ...any)) {
	if s.CPUs == "" {
		return
	}
	cpus, err := ParseCPUs(s.CPUs)
	if err != nil {
		return // Validate's
	}
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return
	}
	online, err := ParseCPUs(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	for _, c := range cpus {
		if !slices.Contains(online, c) {
			fail("cpus", ErrValue, "CPU %d is not online here (online: %s)", c, strings.TrimSpace(string(b)))
			return
		}
	}
}

// wantMax decodes memory_max (a size, size true) or pids_max (a count):
// a positive number, or "max" (-1).
func wantMax(v any, size bool) (int64, error) {
	if s, ok := v.(string); ok && s == "max" {
		return -1, nil
	}
	var n int64
	var err error
	if size {
		n, err = wantSize(v)
	} else {
		n, err = wantInt(v)
	}
	if err != nil {
		return 0, err
	}
	if n < 1 {
		return 0, valueErr("%d: want more than 0, or \"max\"", n)
	}
	return n, nil
}

// checkControllers is what --check finds about s's cgroup limits on this
// machine: each needs its controller offered to hb's cgroups (the
// cgroup.controllers of cgroup_root, or of hbd's own cgroup), and hb uses
// cgroups only as root.
func (c *Config) checkControllers(s *Service) Errors {
	var errs Errors
	for _, k := range []struct {
		key, ctrl string
		set       bool
	}{{"memory_max", "memory", s.MemoryMax != 0}, {"pids_max", "pids", s.PidsMax != 0}, {"cpu_weight", "cpu", s.CPUWeight != 0}} {
		if !k.set {
			continue
		}
		fail := func(format string, args ...any) {
			errs = append(errs, &Error{File: s.File, Line: s.KeyLine(k.key), Service: s.Name, Key: k.key,
				Msg: fmt.Sprintf(format, args...), Err: ErrValue})
		}
		if os.Geteuid() != 0 {
			fail("needs the service's cgroup, which hbd makes only as root")
			continue
		}
		dir, _, err := cgroupfs.Where(c.HBD.CgroupRoot)
		if err != nil {
			fail("needs a cgroup v2 hierarchy: %v", err)
			continue
		}
		have, err := cgroupfs.Controllers(dir)
		if err != nil {
			fail("needs the service's cgroup: %v", err)
			continue
		}
		if !slices.Contains(have, k.ctrl) {
			fail("the %s controller is not offered to hb's cgroups: %s offers %q (a hybrid host keeps it in cgroup v1)",
				k.ctrl, dir, strings.Join(have, " "))
		}
	}
	return errs
}

// checkCgroupRoot is what --check finds about [hbd] cgroup_root on this
// machine: as root, it must be a cgroup of the v2 hierarchy (else the
// plugin falls back to process groups).
func (c *Config) checkCgroupRoot() Errors {
	if c.HBD.CgroupRoot == "" || os.Geteuid() != 0 {
		return nil
	}
	fail := func(format string, args ...any) Errors {
		return Errors{&Error{File: c.Path, Line: c.hbdKeyLine("cgroup_root"), Key: "hbd.cgroup_root",
			Msg: fmt.Sprintf(format, args...) + ": services would be contained by process groups only", Err: ErrValue}}
	}
	dir, _, err := cgroupfs.Where(c.HBD.CgroupRoot)
	if err != nil {
		return fail("%v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
		return fail("%s is not a cgroup (%v): create it first, or leave cgroup_root unset for hbd's own cgroup", dir, err)
	}
	return nil
}
