// Package logdir opens hb's log directory and the log files in it the way a
// root process must: without following a symlink, without blocking, and only
// where nobody but the plugin's user can change the directory's entries.
package logdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The log directory belongs to hbd's user (root on a production machine):
// hb keeps one log_dir for every service, written by the plugin with its own
// credentials, not one directory per service user. The plugin creates,
// renames and removes files there as root, so nobody else may be able to
// change the directory's entries: a service user who could would plant a
// symlink or a hard link named like a log file and have root truncate or
// append to any file on the machine. So:
//
//   - log_dir and every directory above it are reached from / one component
//     at a time with O_NOFOLLOW: no component may be a symlink;
//   - log_dir itself must be owned by the plugin's effective uid and not be
//     writable by group or others; missing components are created 0755;
//   - a directory above it must be owned by root or that uid and not be
//     writable by group or others unless it is sticky (/tmp, /dev/shm),
//     where only an entry's owner may rename or remove it;
//   - every log file is opened relative to the directory's descriptor with
//     O_NOFOLLOW|O_NONBLOCK (no symlink is followed and the open never
//     waits: not for a FIFO's reader, nor for a lease), and only a regular
//     file with a single link, owned by that uid, is written to;
//   - renames and removals of the rotation are renameat/unlinkat on the
//     same descriptor, which never follow the last component.
//
// A directory that fails a check is refused with an error that names it and
// says how to fix it (Prepare at hbd's start; every spawn that opens
// or rotates a log file checks again).

// Prepare creates dir (absolute) and the directories above it that are
// missing (mode 0755), and checks that dir is fit for a root process to write its
// services' logs in (see the rules above). hbd calls it at start; the error
// names the directory and the fix.
func Prepare(dir string) error {
	fd, err := Open(dir, true)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// unsafeError is a log directory, or a file in it, that the plugin refuses
// to write to. It matches ErrUnsafe.
type unsafeError struct {
	dir string // the log_dir setting
	msg string // what is wrong
	fix string // a command or setting that fixes it; may be empty
}

// ErrUnsafe is matched by the errors of a log directory, or a file in
// it, that someone other than the plugin's user could have planted or could
// change.
var ErrUnsafe = errors.New("unsafe log directory")

func (e *unsafeError) Error() string {
	s := "log_dir " + e.dir + ": " + e.msg
	if e.fix != "" {
		s += "; fix: " + e.fix
	}
	return s
}

func (e *unsafeError) Is(target error) bool { return target == ErrUnsafe }

// ownerName is how a fix command names uid.
func ownerName(uid int) string {
	if uid == 0 {
		return "root:root"
	}
	return strconv.Itoa(uid)
}

// Open opens dir as an O_PATH descriptor, walking from / without
// following symlinks and vetting each component (vetDir); with create set,
// missing components are made (mode 0755, whatever the umask).
func Open(dir string, create bool) (int, error) {
	if !filepath.IsAbs(dir) {
		return -1, &unsafeError{dir: dir, msg: "not an absolute path"}
	}
	dir = filepath.Clean(dir)
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("log_dir %s: open /: %w", dir, err)
	}
	var parts []string
	if dir != "/" {
		parts = strings.Split(dir[1:], "/")
	}
	if err := vetDir(dir, "/", fd, len(parts) == 0); err != nil {
		unix.Close(fd)
		return -1, err
	}
	cur := "/"
	for i, name := range parts {
		next := filepath.Join(cur, name)
		nfd, err := openDirAt(fd, name)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, name, 0o755); err == nil {
				// 0755 whatever the umask: a umask of 002 must not
				// make a directory that vetDir then refuses. The
				// parent passed vetDir, so the name is still ours.
				if err = unix.Fchmodat(fd, name, 0o755, 0); err == nil {
					nfd, err = openDirAt(fd, name)
				}
			} else if errors.Is(err, unix.EEXIST) {
				nfd, err = openDirAt(fd, name)
			} else {
				err = fmt.Errorf("create: %w", err)
			}
		}
		if err != nil {
			err = componentError(dir, next, fd, name, err)
			unix.Close(fd)
			return -1, err
		}
		unix.Close(fd)
		fd, cur = nfd, next
		if err := vetDir(dir, cur, fd, i == len(parts)-1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func openDirAt(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// componentError explains why the component name (path next) of dir could
// not be opened as a directory in parent.
func componentError(dir, next string, parent int, name string, err error) error {
	var st unix.Stat_t
	if serr := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil {
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			what := "it"
			if next != dir {
				what = next
			}
			e := &unsafeError{dir: dir, msg: what + " is a symlink"}
			if target, rerr := os.Readlink(next); rerr == nil {
				e.msg += " (to " + target + ")"
			}
			e.msg += ", and the plugin follows none on the way to its log files"
			if real, rerr := filepath.EvalSymlinks(dir); rerr == nil && real != dir {
				e.fix = fmt.Sprintf("set log_dir = %q, the directory the link leads to", real)
			} else {
				e.fix = "set log_dir to the directory's real path"
			}
			return e
		case unix.S_IFDIR:
		default:
			return &unsafeError{dir: dir, msg: next + " is not a directory", fix: "remove it, or choose another log_dir"}
		}
	}
	return fmt.Errorf("log_dir %s: %s: %w", dir, next, err)
}

// vetDir checks the directory cur (a component of dir, or dir itself when
// last) open as fd against the rules at the top of this file.
func vetDir(dir, cur string, fd int, last bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("log_dir %s: stat %s: %w", dir, cur, err)
	}
	euid := os.Geteuid()
	uid := int(st.Uid)
	mode := st.Mode & 0o7777
	fix := fmt.Sprintf("chown %s %s && chmod go-w %s", ownerName(euid), cur, cur)
	if last {
		if uid != euid || mode&0o022 != 0 {
			return &unsafeError{dir: dir, fix: fix, msg: fmt.Sprintf(
				"owned by uid %d with mode %04o; the plugin (uid %d) writes its services' logs there itself, "+
					"so it must be owned by uid %d and not writable by group or others "+
					"(whoever can change its entries can make the plugin write to any file)",
				uid, mode, euid, euid)}
		}
		return nil
	}
	if uid != 0 && uid != euid {
		return &unsafeError{dir: dir, fix: fix, msg: fmt.Sprintf(
			"%s above it is owned by uid %d (mode %04o); every directory above log_dir must be owned by root or uid %d",
			cur, uid, mode, euid)}
	}
	if mode&0o022 != 0 && mode&unix.S_ISVTX == 0 {
		return &unsafeError{dir: dir, fix: "chmod go-w " + cur, msg: fmt.Sprintf(
			"%s above it is writable by group or others (mode %04o) and not sticky: anyone who can write it can replace log_dir",
			cur, mode)}
	}
	return nil
}

// OpenFile opens the log file name in the directory dirfd (log_dir dir)
// for appending, creating it (0644) if it does not exist. It follows no
// symlink and never blocks, and accepts only what vetLogFile accepts. The
// descriptor it returns is blocking again (the child inherits it).
func OpenFile(dirfd int, dir, name string) (*os.File, error) {
	var st unix.Stat_t
	// Look before opening: opening a device can act on it.
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if err := vetLogFile(dir, name, &st); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("log file %s: %w", filepath.Join(dir, name), err)
	}
	fd, err := openAt(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, openFileError(dirfd, dir, name, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("log file %s: %w", filepath.Join(dir, name), err)
	}
	if err := vetLogFile(dir, name, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("log file %s: %w", filepath.Join(dir, name), err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, name)), nil
}

// openAt is openat(2) retried on EINTR.
func openAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// vetLogFile accepts a regular file with one link, owned by the plugin's
// effective uid: one that the plugin (or the operator as that user) made.
func vetLogFile(dir, name string, st *unix.Stat_t) error {
	path := filepath.Join(dir, name)
	fix := "remove " + path
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return &unsafeError{dir: dir, fix: fix, msg: path + " is a symlink; the plugin never writes a log through a link"}
	case unix.S_IFIFO:
		return &unsafeError{dir: dir, fix: fix, msg: path + " is a named pipe (FIFO), not a regular file"}
	case unix.S_IFDIR:
		return &unsafeError{dir: dir, fix: fix, msg: path + " is a directory, not a regular file"}
	case unix.S_IFCHR, unix.S_IFBLK:
		return &unsafeError{dir: dir, fix: fix, msg: path + " is a device, not a regular file"}
	default:
		return &unsafeError{dir: dir, fix: fix, msg: fmt.Sprintf("%s is not a regular file (type %#o)", path, st.Mode&unix.S_IFMT)}
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return &unsafeError{dir: dir, fix: fix, msg: fmt.Sprintf("%s is owned by uid %d, not by the plugin's uid %d, which creates its log files itself", path, st.Uid, euid)}
	}
	if st.Nlink != 1 {
		return &unsafeError{dir: dir, fix: fix, msg: fmt.Sprintf("%s has %d names (hard links); the plugin writes only to a file that has no other", path, st.Nlink)}
	}
	return nil
}

// openFileError explains a failed open of a log file.
func openFileError(dirfd int, dir, name string, err error) error {
	path := filepath.Join(dir, name)
	var st unix.Stat_t
	if serr := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil {
		if verr := vetLogFile(dir, name, &st); verr != nil {
			return verr // a FIFO without a reader (ENXIO), a symlink (ELOOP), …
		}
	}
	if errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("log file %s: another process holds a lease on it (opening it would wait): %w", path, err)
	}
	return fmt.Errorf("log file %s: %w", path, err)
}

// OpenExisting opens name in dirfd read-only (no symlink followed, never
// blocking) and checks that it is the file want describes.
func OpenExisting(dirfd int, dir, name string, want *unix.Stat_t) (*os.File, error) {
	fd, err := openAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openFileError(dirfd, dir, name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		unix.Close(fd)
		return nil, fmt.Errorf("log file %s: replaced by another file", filepath.Join(dir, name))
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, name)), nil
}

// Create makes name in dirfd anew (removing what had that name) and opens
// it for writing; O_EXCL: a name planted meanwhile fails it.
func Create(dirfd int, dir, name string) (*os.File, error) {
	if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("log file %s: remove: %w", filepath.Join(dir, name), err)
	}
	fd, err := openAt(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file %s: %w", filepath.Join(dir, name), err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, name)), nil
}
