package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFile is the name, inside the state directory, of the file an hbd
// holds an exclusive flock on for its whole life (see LockStateDir).
const LockFile = "hbd.lock"

// maxRecordSize bounds what readRecord reads of plugin.json.
const maxRecordSize = 64 << 10

// PrepareStateDir makes dir (absolute or not) ready to hold plugin.json, the
// lock file and the plugin's socket, and returns its absolute path. A
// missing dir is created with mode 0700 (missing parents 0755). The
// directory is refused, with an error naming it and the fix, unless it is a
// real directory (not a symlink) owned by this process's euid and not
// writable by group or others, and every directory above it is owned by
// root or this euid and not writable by group or others unless sticky (like
// /tmp): nothing outside hbd's own user can replace what hbd reads there.
func PrepareStateDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("state directory: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("state directory %s: %w", dir, err)
	}
	if _, err := os.Lstat(abs); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			return "", fmt.Errorf("state directory %s: create its parent: %w", abs, err)
		}
		if err := os.Mkdir(abs, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("state directory %s: create: %w", abs, err)
		}
	}
	if err := CheckStateDir(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// CheckStateDir vets an existing state directory as PrepareStateDir does,
// without creating anything. The error wraps fs.ErrNotExist when dir is
// missing.
func CheckStateDir(dir string) error {
	euid := uint32(unix.Geteuid())
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("state directory %s: %w", dir, &fs.PathError{Op: "lstat", Path: dir, Err: err})
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("state directory %s: is a symlink; give state_dir the real directory", dir)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("state directory %s: not a directory", dir)
	case st.Uid != euid:
		return fmt.Errorf("state directory %s: owned by uid %d, not by hbd's uid %d: anyone who owns it can forge the plugin record; fix: chown %d %s (or remove it and let hbd create it)", dir, st.Uid, euid, euid, dir)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("state directory %s: mode %04o is writable by group or others, who could forge the plugin record; fix: chmod 0700 %s", dir, st.Mode&0o7777, dir)
	}
	// The directories above it: a writable one lets its writer swap dir.
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if err := checkAncestor(p, euid); err != nil {
			return fmt.Errorf("state directory %s: %w", dir, err)
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// checkAncestor vets a directory above the state directory. A symlink is
// followed only if it and its target pass (e.g. /var/run -> /run).
func checkAncestor(p string, euid uint32) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	if st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("%s above it is owned by uid %d, neither root nor hbd's uid %d; move state_dir to a directory only root controls", p, st.Uid, euid)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("%s above it: %w", p, err)
		}
		for q := target; ; q = filepath.Dir(q) {
			if err := checkAncestor(q, euid); err != nil {
				return err
			}
			if q == "/" || q == "." {
				return nil
			}
		}
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return fmt.Errorf("%s above it has mode %04o: writable by group or others and not sticky, so they could replace the state directory; fix: chmod go-w %s, or move state_dir", p, st.Mode&0o7777, p)
	}
	return nil
}

// openPrivate opens name in the vetted state directory dir without
// following a symlink and accepts only a regular file owned by this euid
// and not writable by group or others. flags are added to
// O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK.
func openPrivate(dir, name string, flags int, perm uint32) (*os.File, error) {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, perm)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: is a symlink; remove it", path)
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	euid := uint32(unix.Geteuid())
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file; remove it", path)
	case st.Uid != euid:
		unix.Close(fd)
		return nil, fmt.Errorf("%s: owned by uid %d, not by hbd's uid %d; remove it", path, st.Uid, euid)
	case st.Mode&0o022 != 0:
		unix.Close(fd)
		return nil, fmt.Errorf("%s: mode %04o is writable by group or others; remove it", path, st.Mode&0o7777)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// StateLock is an hbd's exclusive hold on its state directory.
type StateLock struct {
	f *os.File
}

// LockStateDir takes the exclusive flock on dir/hbd.lock (created 0600,
// never through a symlink) that one hbd holds for its whole life, and
// writes this process's PID into it. dir must have passed PrepareStateDir.
// When another process holds it, the error names the directory and that
// process's PID. The descriptor is close-on-exec: the plugin, which
// outlives hbd, never inherits the lock.
func LockStateDir(dir string) (*StateLock, error) {
	f, err := openPrivate(dir, LockFile, unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := io.ReadAll(io.LimitReader(f, 32)); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = fmt.Sprintf("another hbd (pid %d)", pid)
				}
			}
			return nil, fmt.Errorf("state directory %s is in use by %s, which holds %s: one hbd per state directory; stop it first, or give this hbd another state_dir", dir, holder, f.Name())
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(pid, 0)
	}
	return &StateLock{f: f}, nil
}

// Release gives the state directory up (its file stays: the next hbd
// reuses it). Release after Release does nothing.
func (l *StateLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = l.f.Close() // closing the only descriptor drops the flock
	l.f = nil
}

// readRecordFile reads plugin.json from the vetted state directory dir.
func readRecordFile(dir string) ([]byte, error) {
	f, err := openPrivate(dir, StateFile, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("%s: larger than %d bytes; remove it", f.Name(), maxRecordSize)
	}
	return bytes.TrimSpace(b), nil
}
