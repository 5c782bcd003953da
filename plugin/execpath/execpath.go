// Package execpath is the one rule for finding a service's executable: the
// plugin resolves a Spec's command with it before the spawn, and hbd's
// configuration check resolves [service] command with it, so a command that
// passes `hbd --check` is the one the plugin runs.
package execpath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrNotFound: no executable of that name in any PATH entry.
var ErrNotFound = errors.New("not found in PATH")

// Error says why a command cannot be executed. Err is ErrNotFound,
// syscall.ENOENT, syscall.EISDIR or syscall.EACCES (or what stat(2) said).
type Error struct {
	Path string // the command's path (as the caller sees it), or its name when not found
	Err  error
	why  string
}

// Reason is what is wrong, without the path: "is a directory".
func (e *Error) Reason() string { return e.why }

func (e *Error) Error() string {
	switch {
	case errors.Is(e.Err, ErrNotFound):
		return fmt.Sprintf("%q %s", e.Path, e.why)
	case strings.HasPrefix(e.why, "is "):
		return e.Path + " " + e.why
	}
	return e.Path + ": " + e.why
}

func (e *Error) Unwrap() error { return e.Err }

// Look resolves file as execvp(3) would in a child whose working directory
// is dir ("" for the caller's): a name with a slash is used as is;
// otherwise the first executable regular file named file in the
// colon-separated list path wins, an empty entry meaning ".". Where no entry
// has one, the first reason other than "no such file" is reported (as
// execvp reports EACCES), else ErrNotFound.
//
// It returns the path to exec in the child (relative to dir when relative)
// and the same path as seen by the caller (joined with dir).
func Look(file, dir, path string) (exec, local string, err error) {
	if strings.Contains(file, "/") {
		local = join(dir, file)
		if err := Check(local); err != nil {
			return "", "", err
		}
		return file, local, nil
	}
	var first error
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		l := join(dir, p)
		err := Check(l)
		if err == nil {
			return p, l, nil
		}
		if first == nil && !errors.Is(err, fs.ErrNotExist) {
			first = err
		}
	}
	if first != nil {
		return "", "", first
	}
	return "", "", &Error{Path: file, Err: ErrNotFound, why: fmt.Sprintf("not found in PATH %q", path)}
}

func join(dir, p string) string {
	if filepath.IsAbs(p) || dir == "" {
		return p
	}
	return filepath.Join(dir, p)
}

// Check reports why p cannot be executed (an *Error), or nil: it must be a
// regular file with an execute bit.
func Check(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return &Error{Path: p, Err: err, why: err.Error()}
	}
	switch {
	case st.IsDir():
		return &Error{Path: p, Err: syscall.EISDIR, why: "is a directory"}
	case !st.Mode().IsRegular():
		return &Error{Path: p, Err: syscall.EACCES, why: "is not a regular file"}
	case st.Mode().Perm()&0o111 == 0:
		return &Error{Path: p, Err: syscall.EACCES, why: fmt.Sprintf("is not executable (mode %v)", st.Mode().Perm())}
	}
	return nil
}
