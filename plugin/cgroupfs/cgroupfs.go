// Package cgroupfs reads where the cgroup v2 hierarchy is and which
// controllers it offers: the one home of those rules for hbd's --check and
// the plugin, which makes the cgroups (docs/cgroups.md).
package cgroupfs

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Mount returns the mount point of the cgroup v2 hierarchy in mountinfo
// (/proc/self/mountinfo's format): the mount of its root, /sys/fs/cgroup
// on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
func Mount(mountinfo []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 || g[0] != "cgroup2" || f[3] != "/" {
			continue
		}
		return unescape(f[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 file system is mounted")
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Path returns a process's cgroup v2 path ("0::PATH" in /proc/PID/cgroup's
// format).
func Path(procCgroup []byte) (string, error) {
	for line := range strings.SplitSeq(string(procCgroup), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("not in a cgroup v2 hierarchy")
}

// Where is the directory of the cgroup at path in the hierarchy (root "":
// the calling process's own cgroup), and the hierarchy's mount.
func Where(root string) (dir, mount string, err error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	if mount, err = Mount(mi); err != nil {
		return "", "", err
	}
	if root == "" {
		pc, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return "", "", err
		}
		if root, err = Path(pc); err != nil {
			return "", "", err
		}
	}
	return filepath.Join(mount, root), mount, nil
}

// Controllers lists the controllers a cgroup's children can be given
// (cgroup.controllers of dir).
func Controllers(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}
