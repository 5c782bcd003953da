package shim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/cgroupfs"
)

// Kill modes (plugin.Spec.KillMode): what Stop signals, and what is killed
// of an incarnation once its main process has exited.
const (
	KillCgroup       = "cgroup"        // every process of the service's cgroup
	KillProcessGroup = "process-group" // the main process's group; nothing at the main's exit
	KillProcess      = "process"       // the main process only
)

// cgroupEmptyWait bounds how long a spawn waits for the service's cgroup to
// empty after its processes were killed: a process the kernel cannot kill (stuck in
// uninterruptible sleep) holds the cgroup for longer, and the spawn fails
// with an error that says so.
const cgroupEmptyWait = 5 * time.Second

// cgroupTree is the plugin's subtree of the cgroup v2 hierarchy:
// ROOT/TABLE, one cgroup per service below it (docs/cgroups.md).
type cgroupTree struct {
	dir string // absolute path of ROOT/TABLE
	rel string // ROOT/TABLE: dir in the hierarchy, as /proc/PID/cgroup names it
	mu  sync.Mutex
	fd  int // O_PATH|O_DIRECTORY of dir; guarded by mu
}

// replaceFD takes n's descriptor of the same directory (made again after
// it was removed) in place of t's.
func (t *cgroupTree) replaceFD(n *cgroupTree) {
	t.mu.Lock()
	old := t.fd
	t.fd, n.fd = n.fd, -1
	t.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}

// cgroupMode is how a Shim contains its services: with a tree, or with
// process groups and the reason why not.
type cgroupMode struct {
	tree   *cgroupTree
	mnt    string // the hierarchy's mount point, with a tree
	reason string // why there is no tree; "" with one
}

// String is what Info.Cgroups says.
func (m cgroupMode) String() string {
	if m.tree != nil {
		return "cgroup " + m.tree.dir
	}
	return "process-group: " + m.reason
}

// cgroup2Mount is cgroupfs.Mount.
func cgroup2Mount(mountinfo []byte) (string, error) { return cgroupfs.Mount(mountinfo) }

// cgroup2Path is cgroupfs.Path.
func cgroup2Path(procCgroup []byte) (string, error) { return cgroupfs.Path(procCgroup) }

// openCgroups finds the cgroup v2 hierarchy and makes (or opens) the
// subtree ROOT/TABLE in it, where ROOT is root (a path in the hierarchy,
// as /proc/self/cgroup shows one) or, when root is "", the plugin's own
// cgroup. Without a usable hierarchy it returns the process-group mode and
// says why.
func openCgroups(root, table string) cgroupMode {
	if os.Geteuid() != 0 {
		return cgroupMode{reason: "not running as root"}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return cgroupMode{reason: err.Error()}
	}
	mnt, err := cgroup2Mount(mi)
	if err != nil {
		return cgroupMode{reason: err.Error()}
	}
	if root == "" {
		pc, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return cgroupMode{reason: err.Error()}
		}
		if root, err = cgroup2Path(pc); err != nil {
			return cgroupMode{reason: err.Error()}
		}
	}
	if !strings.HasPrefix(root, "/") || filepath.Clean(root) != root {
		return cgroupMode{reason: fmt.Sprintf("cgroup_root %q: not a clean absolute path in the cgroup hierarchy", root)}
	}
	rootDir := filepath.Join(mnt, root)
	fd, err := openCgroupDir(rootDir, filepath.Join(root, table), mnt)
	if err != nil {
		return cgroupMode{reason: err.Error()}
	}
	dir := filepath.Join(rootDir, table)
	return cgroupMode{tree: &cgroupTree{dir: dir, rel: filepath.Join(root, table), fd: fd}, mnt: mnt}
}

// openCgroupDir walks from the mount point mnt down to sub (a path in the
// hierarchy), making the missing directories, and returns an O_PATH
// descriptor of the last. Every step is opened relative to the one before
// with O_NOFOLLOW, and each directory must belong to root and not be
// writable by group or others: nobody else can plant or move one under
// the plugin (cgroupfs has no symlinks; the checks keep a delegated
// subtree, which its user may rearrange, from being used).
func openCgroupDir(rootDir, sub, mnt string) (int, error) {
	fd, err := unix.Open(mnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("cgroup hierarchy %s: %w", mnt, err)
	}
	at := mnt
	for part := range strings.SplitSeq(strings.Trim(sub, "/"), "/") {
		if part == "" {
			continue
		}
		at = filepath.Join(at, part)
		next, err := unix.Openat(fd, part, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if errors.Is(err, unix.ENOENT) && strings.HasPrefix(at, rootDir+"/") {
			if err = unix.Mkdirat(fd, part, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, part, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("cgroup %s: %w", at, err)
		}
		fd = next
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("cgroup %s: %w", at, err)
		}
		if st.Uid != 0 || st.Mode&0o022 != 0 {
			unix.Close(fd)
			return -1, fmt.Errorf("cgroup %s: owned by uid %d with mode %04o: only a directory of root's, not writable by group or others, is used",
				at, st.Uid, st.Mode&0o7777)
		}
	}
	return fd, nil
}

// close releases the tree's descriptor; the directories stay.
func (t *cgroupTree) close() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
	}
}

// remove removes the tree's directory when no service cgroup is left in
// it (rmdir fails otherwise, and the directory stays).
func (t *cgroupTree) remove() error {
	if err := unix.Rmdir(t.dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", t.dir, err)
	}
	return nil
}

// svcCgroup is one service's cgroup, open for the plugin's life or until
// the service is freed.
type svcCgroup struct {
	path   string // absolute
	rel    string // in the hierarchy, as /proc/PID/cgroup names it
	dirfd  int    // O_RDONLY|O_DIRECTORY: CLONE_INTO_CGROUP's descriptor
	events int    // cgroup.events, O_RDONLY: read with pread
}

// service makes (or opens) the cgroup of the service called name.
func (t *cgroupTree) service(name string) (*svcCgroup, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	path := filepath.Join(t.dir, name)
	if err := unix.Mkdirat(t.fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	dirfd, err := unix.Openat(t.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil || st.Uid != 0 || st.Mode&0o022 != 0 {
		unix.Close(dirfd)
		if err == nil {
			err = fmt.Errorf("owned by uid %d with mode %04o, not root's alone", st.Uid, st.Mode&0o7777)
		}
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	events, err := unix.Openat(dirfd, "cgroup.events", unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		unix.Close(dirfd)
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return &svcCgroup{path: path, rel: filepath.Join(t.rel, name), dirfd: dirfd, events: events}, nil
}

// close releases the descriptors; the cgroup stays.
func (c *svcCgroup) close() {
	if c == nil {
		return
	}
	unix.Close(c.events)
	unix.Close(c.dirfd)
	c.events, c.dirfd = -1, -1
}

// populated reports whether a process is in the cgroup (cgroup.events'
// "populated 1"). An exited process leaves its cgroup as it exits, before
// it is reaped.
func (c *svcCgroup) populated() (bool, error) {
	var buf [256]byte
	n, err := unix.Pread(c.events, buf[:], 0)
	if err != nil {
		return false, fmt.Errorf("cgroup %s: cgroup.events: %w", c.path, err)
	}
	return bytes.Contains(buf[:n], []byte("populated 1")), nil
}

// pids lists the processes in the cgroup (cgroup.procs).
func (c *svcCgroup) pids() ([]int, error) {
	fd, err := unix.Openat(c.dirfd, "cgroup.procs", unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: cgroup.procs: %w", c.path, err)
	}
	f := os.NewFile(uintptr(fd), "cgroup.procs")
	defer f.Close()
	var out []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, sc.Err()
}

// kill SIGKILLs every process in the cgroup, sweeping cgroup.procs until a
// sweep finds none it has not killed: a process forked by one being killed
// shows up in the next sweep, and a process with SIGKILL pending forks no
// more, so the sweeps end. Not cgroup.kill: on Linux 6.18 (at least) a
// cgroup once killed through cgroup.kill SIGKILLs every process cloned into
// it afterwards with CLONE_INTO_CGROUP, so a service could never start
// there again (docs/cgroups.md).
func (c *svcCgroup) kill() error {
	killed := map[int]bool{}
	for range 1000 {
		pids, err := c.pids()
		if err != nil {
			return err
		}
		fresh := false
		for _, pid := range pids {
			if !killed[pid] {
				killed[pid], fresh = true, true
				c.signalMember(pid, unix.SIGKILL)
			}
		}
		if !fresh {
			return nil
		}
	}
	return fmt.Errorf("cgroup %s: processes are forked faster than they can be killed", c.path)
}

// signal sends sig to every process in the cgroup. Each PID read from
// cgroup.procs is opened as a pidfd and checked to be in the cgroup
// through /proc/PID/cgroup after that, so a PID recycled by a process
// elsewhere is never signalled. It returns how many were signalled.
func (c *svcCgroup) signal(sig unix.Signal) (int, error) {
	pids, err := c.pids()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, pid := range pids {
		if c.signalMember(pid, sig) {
			n++
		}
	}
	return n, nil
}

// signalMember sends sig to pid if it is in the cgroup: pid is opened as a
// pidfd first, and /proc/PID/cgroup read after that must name the cgroup,
// so a PID recycled by a process elsewhere is never signalled.
func (c *svcCgroup) signalMember(pid int, sig unix.Signal) bool {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false // gone
	}
	defer unix.Close(pfd)
	if !c.contains(pid) {
		return false
	}
	return unix.PidfdSendSignal(pfd, sig, nil, 0) == nil
}

// contains reports whether pid is in the cgroup now.
func (c *svcCgroup) contains(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	p, err := cgroup2Path(b)
	return err == nil && p == c.rel
}

// waitEmpty waits until the cgroup has no process, woken by the kernel's
// notification of a change to cgroup.events (inotify), for at most d.
func (c *svcCgroup) waitEmpty(d time.Duration) error {
	if pop, err := c.populated(); err != nil || !pop {
		return err
	}
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("cgroup %s: inotify: %w", c.path, err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, filepath.Join(c.path, "cgroup.events"), unix.IN_MODIFY); err != nil {
		return fmt.Errorf("cgroup %s: inotify: %w", c.path, err)
	}
	deadline := time.Now().Add(d)
	var buf [4096]byte
	for {
		// Checked after the watch is armed: a change from here on wakes
		// the poll.
		pop, err := c.populated()
		if err != nil || !pop {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			pids, _ := c.pids()
			return fmt.Errorf("cgroup %s still holds %d processes %v after %s: %w", c.path, len(pids), pids, d, errNotEmpty)
		}
		fds := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("cgroup %s: poll: %w", c.path, err)
		}
		for {
			if _, err := unix.Read(in, buf[:]); err != nil {
				break
			}
		}
	}
}

// errNotEmpty: a cgroup did not empty in time.
var errNotEmpty = errors.New("the cgroup did not empty")

// empty kills whatever is in the cgroup and waits for it to empty (at most
// d): what a spawn does first, so that no process of an earlier
// incarnation holds what the new one needs (a port, a lock).
func (c *svcCgroup) empty(d time.Duration) (left int, err error) {
	pop, err := c.populated()
	if err != nil || !pop {
		return 0, err
	}
	pids, _ := c.pids()
	if err := c.kill(); err != nil {
		return len(pids), err
	}
	return len(pids), c.waitEmpty(d)
}

// remove removes the cgroup once it is empty: it kills what is left and
// waits for that, at most d.
func (c *svcCgroup) remove(d time.Duration) error {
	if _, err := c.empty(d); err != nil {
		return err
	}
	if err := unix.Rmdir(c.path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", c.path, err)
	}
	return nil
}

// killMode is the kill mode in force for spec: its KillMode, the cgroup
// mode by default, and process groups whenever there is no cgroup.
func (m cgroupMode) killMode(spec plugin.Spec) string {
	switch spec.KillMode {
	case KillProcess, KillProcessGroup:
		return spec.KillMode
	}
	if m.tree == nil {
		return KillProcessGroup
	}
	return KillCgroup
}
