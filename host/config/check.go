package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"

	"github.com/hbshim/hb/plugin/execpath"
)

// Resolved is what Resolve found for a service on this machine: the ids to
// run it as and the program to execute.
type Resolved struct {
	UID int // -1: keep hbd's user
	GID int // -1: keep hbd's group
	// Groups are the supplementary groups of User (nil when no user is set).
	Groups []int
	// Username and Home are from the user database when User is set and
	// found there; "" otherwise.
	Username string
	Home     string
	// Executable is the program Command[0] names: the match in PATH when it
	// has no slash; joined to Directory when relative with a slash.
	Executable string
}

// Resolve looks up s's user and group (os/user), checks its directory, and
// finds its executable: Command[0] is searched for in the PATH of s's
// Environment, or hbd's PATH when the service sets none, unless it holds a
// slash; a relative path is taken from Directory (or hbd's working
// directory). The file must be a regular file with an execute bit.
//
// Resolve depends on the machine, not on the file, so Load does not call
// it: hbd runs the services that resolve and marks the others fatal. The
// error is nil or [Errors] located at the command, user, group or directory
// key. A numeric user or group need not exist in the databases, but a
// numeric user without a passwd entry needs group set.
func Resolve(s *Service) (Resolved, error) {
	r := Resolved{UID: -1, GID: -1}
	var errs Errors
	fail := func(key string, sentinel error, format string, args ...any) {
		errs = append(errs, &Error{File: s.File, Line: s.KeyLine(key), Service: s.Name, Key: key,
			Msg: fmt.Sprintf(format, args...), Err: sentinel})
	}

	if s.User != "" {
		u, uid, err := lookupUser(s.User)
		switch {
		case err != nil:
			fail("user", ErrNoUser, "%v", err)
		case u == nil:
			r.UID = uid
			if s.Group == "" {
				fail("user", ErrNoUser, "user %s has no passwd entry, so it has no primary group: set group too", s.User)
			}
		default:
			r.UID = uid
			r.Username, r.Home = u.Username, u.HomeDir
			if gid, err := parseID(u.Gid); err == nil {
				r.GID = gid
			}
			if ids, err := u.GroupIds(); err == nil {
				for _, id := range ids {
					if g, err := parseID(id); err == nil {
						r.Groups = append(r.Groups, g)
					}
				}
			}
		}
	}
	if s.Group != "" {
		gid, err := lookupGroup(s.Group)
		if err != nil {
			fail("group", ErrNoGroup, "%v", err)
		} else {
			r.GID = gid
		}
	}
	if s.Directory != "" {
		if fi, err := os.Stat(s.Directory); err != nil {
			fail("directory", ErrNoDirectory, "%v", unwrapPath(err, s.Directory))
		} else if !fi.IsDir() {
			fail("directory", ErrNoDirectory, "%s is not a directory", s.Directory)
		}
	}
	checkPlacement(s, fail)
	if len(s.Command) == 0 || s.Command[0] == "" {
		fail("command", ErrNoExec, "empty command")
	} else if exe, err := findExecutable(s); err != nil {
		fail("command", ErrNoExec, "%v", err)
	} else {
		r.Executable = exe
	}
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return r, errs
	}
	return r, nil
}

// Check resolves every service (see Resolve) and [hbd] socket_group, and
// reports every problem at once: the check behind hbd --check. A nil error
// means every service can be started as configured.
func (c *Config) Check() error {
	var errs Errors
	if g := c.HBD.SocketGroup; g != "" {
		if _, err := lookupGroup(g); err != nil {
			errs = append(errs, &Error{File: c.Path, Line: c.hbdKeyLine("socket_group"), Key: "hbd.socket_group",
				Msg: err.Error(), Err: ErrNoGroup})
		}
	}
	errs = append(errs, c.checkCgroupRoot()...)
	errs = append(errs, c.checkBridges()...)
	for _, name := range c.Order {
		s := c.Services[name]
		if s == nil {
			continue
		}
		errs = append(errs, c.checkControllers(s)...)
		if _, err := Resolve(s); err != nil {
			var es Errors
			if errors.As(err, &es) {
				errs = append(errs, es...)
			}
		}
	}
	c.sortErrors(errs)
	return errs.orNil()
}

// parseID parses a numeric uid or gid.
func parseID(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == math.MaxUint32 {
		return 0, fmt.Errorf("%q is not a valid id", s)
	}
	return int(n), nil
}

func isNumeric(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// lookupUser finds a user by name or number. For a number with no passwd
// entry it returns a nil *user.User and the number.
func lookupUser(name string) (*user.User, int, error) {
	if isNumeric(name) {
		uid, err := parseID(name)
		if err != nil {
			return nil, 0, err
		}
		u, err := user.LookupId(name)
		if err != nil {
			var unknown user.UnknownUserIdError
			if errors.As(err, &unknown) {
				return nil, uid, nil
			}
			return nil, 0, fmt.Errorf("look up user %s: %w", name, err)
		}
		return u, uid, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, 0, fmt.Errorf("user %q does not exist", name)
		}
		return nil, 0, fmt.Errorf("look up user %q: %w", name, err)
	}
	uid, err := parseID(u.Uid)
	if err != nil {
		return nil, 0, fmt.Errorf("user %q: uid %w", name, err)
	}
	return u, uid, nil
}

// lookupGroup finds a group by name; a number is taken as is.
func lookupGroup(name string) (int, error) {
	if isNumeric(name) {
		return parseID(name)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("group %q does not exist", name)
		}
		return 0, fmt.Errorf("look up group %q: %w", name, err)
	}
	gid, err := parseID(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %w", name, err)
	}
	return gid, nil
}

// findExecutable resolves s's command as the plugin will exec it
// (execpath.Look, with the service's PATH, else hbd's), as seen from hbd.
func findExecutable(s *Service) (string, error) {
	path, ok := s.Environment["PATH"]
	if !ok {
		path = os.Getenv("PATH")
	}
	_, local, err := execpath.Look(s.Command[0], s.Directory, path)
	return local, err
}

// unwrapPath turns "stat /x: no such file or directory" into
// "/x: no such file or directory".
func unwrapPath(err error, p string) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", p, pe.Err)
	}
	return err
}
