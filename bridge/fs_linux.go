package bridge

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CheckTrusted vets path and every directory above it as a root process
// must before it reads what is there: each is owned by root or by this
// process's euid, and none is writable by group or others (a directory
// above path may be, if sticky, like /tmp). Symlinks are refused for path
// itself and followed above it only when the link and its target pass. So
// nobody but root (or hb's own user) can swap what hb reads there.
func CheckTrusted(path string) error {
	euid := uint32(unix.Geteuid())
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s: is a symlink; give the real path", path)
	}
	if err := trusted(path, &st, euid, false); err != nil {
		return err
	}
	for p := filepath.Dir(path); ; p = filepath.Dir(p) {
		if err := checkAbove(p, euid); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// TrustedServiceDir vets a service directory as CheckTrusted does and
// returns the directory to read: path itself, or, when path is a symlink
// (runit's usual /etc/service/NAME -> /etc/sv/NAME), its target. A link
// must be owned by root or hb's euid and sit in a trusted directory, and
// its target must pass CheckTrusted, so nobody else can point hb
// elsewhere.
func TrustedServiceDir(path string) (string, error) {
	euid := uint32(unix.Geteuid())
	link := path
	// Every link of a chain is vetted, not only the first and the end: a
	// link in between in a directory someone else can write could be
	// pointed at another service's directory.
	for hops := 0; ; hops++ {
		var st unix.Stat_t
		if err := unix.Lstat(link, &st); err != nil {
			return "", fmt.Errorf("%s: %w", link, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			break
		}
		if hops == 8 {
			return "", fmt.Errorf("%s: more than 8 symlinks to its service directory", path)
		}
		if st.Uid != 0 && st.Uid != euid {
			return "", fmt.Errorf("%s: a symlink owned by uid %d, neither root nor hb's uid %d; fix: chown -h root %s", link, st.Uid, euid, link)
		}
		if err := CheckTrusted(filepath.Dir(link)); err != nil {
			return "", err
		}
		to, err := os.Readlink(link)
		if err != nil {
			return "", fmt.Errorf("%s: %w", link, err)
		}
		if !filepath.IsAbs(to) {
			to = filepath.Join(filepath.Dir(link), to)
		}
		link = to
	}
	if link == path {
		return path, CheckTrusted(path)
	}
	target, err := filepath.EvalSymlinks(link) // symlinks above it: CheckTrusted vets them
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if err := CheckTrusted(target); err != nil {
		return "", fmt.Errorf("%s -> %w", path, err)
	}
	return target, nil
}

func trusted(p string, st *unix.Stat_t, euid uint32, sticky bool) error {
	if st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("%s: owned by uid %d, neither root nor hb's uid %d: its owner could make hb publish any PID; fix: chown root %s", p, st.Uid, euid, p)
	}
	if st.Mode&0o022 != 0 && !(sticky && st.Mode&unix.S_ISVTX != 0) {
		return fmt.Errorf("%s: mode %04o is writable by group or others, who could make hb publish any PID; fix: chmod go-w %s", p, st.Mode&0o7777, p)
	}
	return nil
}

func checkAbove(p string, euid uint32) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if st.Uid != 0 && st.Uid != euid {
			return fmt.Errorf("%s above it: a symlink owned by uid %d", p, st.Uid)
		}
		target, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("%s above it: %w", p, err)
		}
		for q := target; ; q = filepath.Dir(q) {
			if err := checkAbove(q, euid); err != nil {
				return err
			}
			if q == "/" || q == "." {
				return nil
			}
		}
	}
	if err := trusted(p, &st, euid, true); err != nil {
		return fmt.Errorf("above it: %w", err)
	}
	return nil
}

// ReadStatusFile reads a supervise/status file of at most max bytes; the
// file itself must not be a symlink and must be a regular file owned by
// root or hb's euid and not writable by group or others. The directories
// above it are the caller's to vet (CheckTrusted).
func ReadStatusFile(path string, max int) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if err := trusted(path, &st, uint32(unix.Geteuid()), false); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s: longer than %d bytes", path, max)
	}
	return b, nil
}

// ErrNoHolder: nobody holds a lock on the file (the manager is not running).
var ErrNoHolder = errors.New("no process holds its lock")

// LockHolder returns the PID of the process that holds a lock (flock or
// POSIX) on the file at path, from /proc/locks. runsv and s6-supervise hold
// supervise/lock for as long as they run, so this is the manager's PID.
func LockHolder(path string) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0, err
	}
	pid := lockHolder(data, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if pid == 0 {
		return 0, fmt.Errorf("%s: %w", path, ErrNoHolder)
	}
	return pid, nil
}

// lockHolder parses /proc/locks ("1: FLOCK  ADVISORY  WRITE 24046
// fe:00:9988252 0 EOF"; "->" lines are waiters) for a lock on the inode.
func lockHolder(data []byte, major, minor uint32, ino uint64) int {
	want := fmt.Sprintf("%02x:%02x:%d", major, minor, ino)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] == "->" {
			continue
		}
		if f[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}

// CheckTCPListener vets the TCP socket listening on port (an http://
// server_url) as CheckTrusted vets a path: its owner, from /proc/net/tcp
// and tcp6, must be root or hb's euid, so no other user's server can stand
// in for supervisord.
func CheckTCPListener(port int) error {
	euid := unix.Geteuid()
	found := false
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		uids := listenerUIDs(data, port)
		for _, uid := range uids {
			found = true
			if uid != 0 && uid != euid {
				return fmt.Errorf("tcp port %d: listened on by uid %d, neither root nor hb's uid %d: it cannot stand for supervisord", port, uid, euid)
			}
		}
	}
	if !found {
		return fmt.Errorf("tcp port %d: nothing listens there", port)
	}
	return nil
}

// listenerUIDs are the uids of the sockets in LISTEN state (0A) on port in
// a /proc/net/tcp table.
func listenerUIDs(data []byte, port int) []int {
	var out []int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 || f[3] != "0A" {
			continue
		}
		_, p, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(p, 16, 16)
		if err != nil || int(n) != port {
			continue
		}
		if uid, err := strconv.Atoi(f[7]); err == nil {
			out = append(out, uid)
		}
	}
	return out
}
